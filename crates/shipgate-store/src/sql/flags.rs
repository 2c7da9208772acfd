//! Feature flags' states per environment and the client keys that select an environment's
//! flags. Each change is written together with the event that announces it.

use shipgate_core::flag::FlagState;
use shipgate_core::{AppName, EnvName};

use super::*;

fn flag_from(row: &AnyRow) -> Result<FlagRecord> {
    Ok(FlagRecord {
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        flag: get(row, "flag")?,
        state: serde_json::from_str(&get::<String>(row, "state")?)
            .map_err(|e| StoreError::Corrupt(format!("a flag's state: {e}")))?,
        changed_at: get_time(row, "changed_at")?,
        changed_by: get(row, "changed_by")?,
    })
}

fn key_from(row: &AnyRow) -> Result<FlagKeyRecord> {
    Ok(FlagKeyRecord {
        name: get(row, "name")?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        created_at: get_time(row, "created_at")?,
        created_by: get(row, "created_by")?,
        revoked_at: get_time_opt(row, "revoked_at")?,
    })
}

const KEY_COLUMNS: &str = "name, env, created_at, created_by, revoked_at";

impl SqlStore {
    pub(super) async fn set_flags(
        &self,
        env: &EnvName,
        app: &AppName,
        states: &[(String, FlagState)],
        actor: &str,
        event: NewEvent,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        let at = now().to_string();
        for (flag, state) in states {
            let text = serde_json::to_string(state)
                .map_err(|e| StoreError::Corrupt(format!("a flag's state: {e}")))?;
            sqlx::query(
                "INSERT INTO flag_states (env, app, flag, state, changed_at, changed_by) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (env, app, flag) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at, changed_by = excluded.changed_by",
            )
            .bind(env.as_str())
            .bind(app.as_str())
            .bind(flag)
            .bind(text)
            .bind(&at)
            .bind(actor)
            .execute(&mut *tx)
            .await
            .map_err(db("setting a flag"))?;
        }
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await
    }

    pub(super) async fn flags(&self, env: Option<&EnvName>) -> Result<Vec<FlagRecord>> {
        let query = match env {
            Some(env) => sqlx::query("SELECT * FROM flag_states WHERE env = $1 ORDER BY app, flag")
                .bind(env.as_str()),
            None => sqlx::query("SELECT * FROM flag_states ORDER BY env, app, flag"),
        };
        query
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading flags"))?
            .iter()
            .map(flag_from)
            .collect()
    }

    pub(super) async fn insert_flag_key(
        &self,
        name: &str,
        env: &EnvName,
        hash: &str,
        event: NewEvent,
    ) -> Result<FlagKeyRecord> {
        let (_w, mut tx) = self.begin().await?;
        let taken: Option<String> =
            sqlx::query_scalar("SELECT name FROM flag_keys WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading flag keys"))?;
        if taken.is_some() {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "a flag key named `{name}` exists already; choose another name (revoked keys keep theirs)"
            )));
        }
        let record = FlagKeyRecord {
            name: name.to_owned(),
            env: env.clone(),
            created_at: now(),
            created_by: event.actor.clone(),
            revoked_at: None,
        };
        sqlx::query(&format!(
            "INSERT INTO flag_keys ({KEY_COLUMNS}, hash) VALUES ($1, $2, $3, $4, NULL, $5)"
        ))
        .bind(name)
        .bind(env.as_str())
        .bind(record.created_at.to_string())
        .bind(&record.created_by)
        .bind(hash)
        .execute(&mut *tx)
        .await
        .map_err(db("recording a flag key"))?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }

    pub(super) async fn flag_key_by_hash(&self, hash: &str) -> Result<Option<FlagKeyRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM flag_keys WHERE hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a flag key"))?;
        row.as_ref().map(key_from).transpose()
    }

    pub(super) async fn flag_keys(&self) -> Result<Vec<FlagKeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM flag_keys ORDER BY created_at, name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing flag keys"))?
        .iter()
        .map(key_from)
        .collect()
    }

    pub(super) async fn revoke_flag_key(
        &self,
        name: &str,
        event: NewEvent,
    ) -> Result<FlagKeyRecord> {
        let (_w, mut tx) = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE flag_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now().to_string())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("revoking a flag key"))?;
        if changed.rows_affected() == 0 {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::NotFound(format!(
                "an active flag key named `{name}` (shipgate flag key list shows them)"
            )));
        }
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM flag_keys WHERE name = $1"
        ))
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading a flag key"))?;
        let record = key_from(&row)?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }
}
