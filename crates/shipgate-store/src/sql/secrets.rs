//! Secrets, sealed: every version kept (a rollback gets the value its release had), the
//! versions each promotion's instances got, and the id of the key they are sealed with. Also
//! the dashboard's and the CLI's sessions, and sign-ins under way at the identity provider:
//! kept here so that a restart keeps them and every server of a cluster shares them.

use shipgate_core::{EnvName, EventKind, PromotionId};

use super::*;

fn secret_from(row: &AnyRow) -> Result<SecretVersion> {
    let sealed: Option<String> = get(row, "sealed")?;
    Ok(SecretVersion {
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        name: get(row, "name")?,
        version: get(row, "version")?,
        sealed: sealed
            .map(|s| {
                hex::decode(&s).map_err(|e| StoreError::Corrupt(format!("a sealed secret: {e}")))
            })
            .transpose()?,
        key_id: get(row, "key_id")?,
        source: get(row, "source")?,
        set_by: get(row, "set_by")?,
        set_at: get_time(row, "set_at")?,
    })
}

fn session_from(row: &AnyRow) -> Result<SessionRecord> {
    let grant: String = get(row, "grant_json")?;
    let refresh: Option<String> = get(row, "sealed_refresh")?;
    Ok(SessionRecord {
        id_hash: get(row, "id_hash")?,
        kind: get(row, "kind")?,
        token_hash: get(row, "token_hash")?,
        grant: serde_json::from_str(&grant)
            .map_err(|e| StoreError::Corrupt(format!("a session's roles: {e}")))?,
        email: get(row, "email")?,
        sealed_refresh: refresh
            .map(|s| hex::decode(&s).map_err(|e| StoreError::Corrupt(format!("a session: {e}"))))
            .transpose()?,
        idp_expires_at: get_time_opt(row, "idp_expires_at")?,
        csrf: get(row, "csrf")?,
        created_at: get_time(row, "created_at")?,
        expires_at: get_time(row, "expires_at")?,
    })
}

impl SqlStore {
    pub(super) async fn claim_secrets_key(&self, id: &str) -> Result<String> {
        let (_w, mut tx) = self.begin().await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT id FROM secrets_key ORDER BY created_at LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading the secrets key's id"))?;
        if let Some(known) = known {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(known);
        }
        sqlx::query("INSERT INTO secrets_key (id, created_at) VALUES ($1, $2)")
            .bind(id)
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording the secrets key's id"))?;
        self.commit(tx, Vec::new()).await?;
        Ok(id.to_owned())
    }

    pub(super) async fn set_secret(&self, s: NewSecret, actor: &str) -> Result<SecretVersion> {
        let (_w, mut tx) = self.begin().await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM secrets WHERE env = $1 AND name = $2")
                .bind(s.env.as_str())
                .bind(&s.name)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading a secret's versions"))?;
        let version = last.unwrap_or(0) + 1;
        if version != s.version {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "secret {} of {} got version {} from someone else at the same moment; set it again",
                s.name,
                s.env,
                version - 1
            )));
        }
        let removed = s.sealed.is_none();
        sqlx::query(
            "INSERT INTO secrets (env, name, version, sealed, key_id, source, set_by, set_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(s.env.as_str())
        .bind(&s.name)
        .bind(version)
        .bind(s.sealed.as_deref().map(hex::encode))
        .bind(&s.key_id)
        .bind(&s.source)
        .bind(actor)
        .bind(now().to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("storing a secret"))?;
        let row =
            sqlx::query("SELECT * FROM secrets WHERE env = $1 AND name = $2 AND version = $3")
                .bind(s.env.as_str())
                .bind(&s.name)
                .bind(version)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading a secret"))?;
        let record = secret_from(&row)?;
        let (kind, message) = if removed {
            (
                EventKind::SecretRemoved,
                format!(
                    "secret {} of {} removed (version {version}); instances keep it until their next deploy",
                    s.name, s.env
                ),
            )
        } else {
            (
                EventKind::SecretSet,
                format!(
                    "secret {} of {} set to version {version} ({}); it reaches instances at their next deploy",
                    s.name, s.env, s.source
                ),
            )
        };
        let event = append(
            &mut tx,
            NewEvent {
                actor: actor.to_owned(),
                kind,
                env: Some(s.env.to_string()),
                message,
                data: serde_json::json!({ "name": s.name, "version": version, "source": s.source }),
                ..NewEvent::about_nothing()
            },
        )
        .await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }

    pub(super) async fn secrets(&self, env: &EnvName) -> Result<Vec<SecretVersion>> {
        sqlx::query("SELECT * FROM secrets WHERE env = $1 ORDER BY name, version")
            .bind(env.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading secrets"))?
            .iter()
            .map(secret_from)
            .collect()
    }

    pub(super) async fn record_deployed_secrets(
        &self,
        promotion: PromotionId,
        secrets: &[DeployedSecret],
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        insert_deployed(&mut tx, promotion, secrets).await?;
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn deployed_secrets(
        &self,
        promotion: PromotionId,
    ) -> Result<Vec<DeployedSecret>> {
        sqlx::query("SELECT * FROM deployed_secrets WHERE promotion_id = $1 ORDER BY var")
            .bind(promotion.0)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading a deploy's secrets"))?
            .iter()
            .map(|row| {
                Ok(DeployedSecret {
                    var: get(row, "var")?,
                    env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
                    name: get(row, "name")?,
                    version: get(row, "version")?,
                })
            })
            .collect()
    }

    pub(super) async fn insert_session(
        &self,
        s: &SessionRecord,
        event: Option<NewEvent>,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, kind, token_hash, grant_json, email, sealed_refresh, idp_expires_at, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.id_hash)
        .bind(&s.kind)
        .bind(s.token_hash.clone())
        .bind(grant_json(&s.grant)?)
        .bind(s.email.clone())
        .bind(s.sealed_refresh.as_deref().map(hex::encode))
        .bind(s.idp_expires_at.map(|t| t.to_string()))
        .bind(&s.csrf)
        .bind(s.created_at.to_string())
        .bind(s.expires_at.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db("storing a session"))?;
        // Who a signed-in person is, by the name they act under, kept for good: a promotion
        // they asked for stays theirs after the session ended.
        if let Some(person) = s.grant.person.as_ref().filter(|p| **p != s.grant.name) {
            sqlx::query(
                "INSERT INTO people (name, person, seen_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET person = excluded.person, seen_at = excluded.seen_at",
            )
            .bind(&s.grant.name)
            .bind(person)
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("recording who signed in"))?;
        }
        // Sessions that ended long ago go (their events stay).
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("removing ended sessions"))?;
        let events = match event {
            Some(e) => vec![append(&mut tx, e).await?],
            None => Vec::new(),
        };
        self.commit(tx, events).await
    }

    pub(super) async fn people(&self) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT name, person FROM people")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading people"))?
            .iter()
            .map(|row| Ok((get(row, "name")?, get(row, "person")?)))
            .collect()
    }

    pub(super) async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash)
            .bind(now().to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a session"))?;
        row.map(|r| session_from(&r)).transpose()
    }

    pub(super) async fn refresh_session(
        &self,
        id_hash: &str,
        grant: &shipgate_core::Grant,
        sealed_refresh: Option<&[u8]>,
        idp_expires_at: Option<Timestamp>,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query(
            "UPDATE sessions SET grant_json = $1, sealed_refresh = $2, idp_expires_at = $3 WHERE id_hash = $4",
        )
        .bind(grant_json(grant)?)
        .bind(sealed_refresh.map(hex::encode))
        .bind(idp_expires_at.map(|t| t.to_string()))
        .bind(id_hash)
        .execute(&mut *tx)
        .await
        .map_err(db("refreshing a session"))?;
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn end_session(&self, id_hash: &str, event: Option<NewEvent>) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await
            .map_err(db("ending a session"))?;
        let events = match event {
            Some(e) => vec![append(&mut tx, e).await?],
            None => Vec::new(),
        };
        self.commit(tx, events).await
    }

    pub(super) async fn insert_sign_in(
        &self,
        state_hash: &str,
        payload: &str,
        expires_at: Timestamp,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("DELETE FROM sign_ins WHERE expires_at < $1")
            .bind(now().to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("removing old sign-ins"))?;
        sqlx::query("INSERT INTO sign_ins (state_hash, payload, expires_at) VALUES ($1, $2, $3)")
            .bind(state_hash)
            .bind(payload)
            .bind(expires_at.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db("storing a sign-in"))?;
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn take_sign_in(&self, state_hash: &str) -> Result<Option<String>> {
        let (_w, mut tx) = self.begin().await?;
        let row = sqlx::query("SELECT payload, expires_at FROM sign_ins WHERE state_hash = $1")
            .bind(state_hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a sign-in"))?;
        sqlx::query("DELETE FROM sign_ins WHERE state_hash = $1")
            .bind(state_hash)
            .execute(&mut *tx)
            .await
            .map_err(db("taking a sign-in"))?;
        self.commit(tx, Vec::new()).await?;
        let Some(row) = row else { return Ok(None) };
        if get_time(&row, "expires_at")? < now() {
            return Ok(None);
        }
        Ok(Some(get(&row, "payload")?))
    }
}

/// Records which secret versions promotion `promotion`'s instances got (replacing what it had).
pub(super) async fn insert_deployed(
    tx: &mut Transaction<'static, Any>,
    promotion: PromotionId,
    secrets: &[DeployedSecret],
) -> Result<()> {
    sqlx::query("DELETE FROM deployed_secrets WHERE promotion_id = $1")
        .bind(promotion.0)
        .execute(&mut **tx)
        .await
        .map_err(db("recording a deploy's secrets"))?;
    for d in secrets {
        sqlx::query(
            "INSERT INTO deployed_secrets (promotion_id, var, env, name, version) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(promotion.0)
        .bind(&d.var)
        .bind(d.env.as_str())
        .bind(&d.name)
        .bind(d.version)
        .execute(&mut **tx)
        .await
        .map_err(db("recording a deploy's secrets"))?;
    }
    Ok(())
}

fn grant_json(grant: &shipgate_core::Grant) -> Result<String> {
    serde_json::to_string(grant).map_err(|e| StoreError::Corrupt(format!("a session's roles: {e}")))
}
