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

fn change_from(row: &AnyRow) -> Result<FlagChangeRecord> {
    let status: String = get(row, "status")?;
    Ok(FlagChangeRecord {
        id: get(row, "id")?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        changes: serde_json::from_str(&get::<String>(row, "changes")?)
            .map_err(|e| StoreError::Corrupt(format!("a flag change: {e}")))?,
        requested_by: get(row, "requested_by")?,
        requested_at: get_time(row, "requested_at")?,
        decisions: serde_json::from_str(&get::<String>(row, "decisions")?)
            .map_err(|e| StoreError::Corrupt(format!("a flag change's decisions: {e}")))?,
        status: FlagChangeStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("a flag change's status `{status}`")))?,
        closed_at: get_time_opt(row, "closed_at")?,
    })
}

fn json_text<T: serde::Serialize + ?Sized>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Writes flag states of `app` in `env` within `tx`.
async fn write_states(
    tx: &mut sqlx::Transaction<'_, Any>,
    env: &EnvName,
    app: &AppName,
    states: &[(String, FlagState)],
    actor: &str,
    at: &str,
) -> Result<()> {
    for (flag, state) in states {
        sqlx::query(
            "INSERT INTO flag_states (env, app, flag, state, changed_at, changed_by) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (env, app, flag) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at, changed_by = excluded.changed_by",
        )
        .bind(env.as_str())
        .bind(app.as_str())
        .bind(flag)
        .bind(json_text("a flag's state", state)?)
        .bind(at)
        .bind(actor)
        .execute(&mut **tx)
        .await
        .map_err(db("setting a flag"))?;
    }
    Ok(())
}

const KEY_COLUMNS: &str = "name, env, created_at, created_by, revoked_at";

impl SqlStore {
    pub(super) async fn set_flags(
        &self,
        env: &EnvName,
        app: &AppName,
        states: &[(String, FlagState)],
        actor: &str,
        supersede: &[i64],
        event: NewEvent,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        let at = now().to_string();
        write_states(&mut tx, env, app, states, actor, &at).await?;
        for id in supersede {
            sqlx::query(
                "UPDATE flag_changes SET status = $1, closed_at = $2 WHERE id = $3 AND status = $4",
            )
            .bind(FlagChangeStatus::Superseded.as_str())
            .bind(&at)
            .bind(id)
            .bind(FlagChangeStatus::Pending.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("superseding a flag change"))?;
        }
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await
    }

    pub(super) async fn request_flag_change(
        &self,
        env: &EnvName,
        app: &AppName,
        changes: &[FlagChange],
        event: NewEvent,
    ) -> Result<FlagChangeRecord> {
        let (_w, mut tx) = self.begin().await?;
        let requested_at = now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO flag_changes (env, app, changes, requested_by, requested_at, decisions, status) \
             VALUES ($1, $2, $3, $4, $5, '[]', $6) RETURNING id",
        )
        .bind(env.as_str())
        .bind(app.as_str())
        .bind(json_text("a flag change", changes)?)
        .bind(&event.actor)
        .bind(requested_at.to_string())
        .bind(FlagChangeStatus::Pending.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("recording a flag change"))?;
        let record = FlagChangeRecord {
            id,
            env: env.clone(),
            app: app.clone(),
            changes: changes.to_vec(),
            requested_by: event.actor.clone(),
            requested_at,
            decisions: Vec::new(),
            status: FlagChangeStatus::Pending,
            closed_at: None,
        };
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }

    pub(super) async fn flag_changes(
        &self,
        env: Option<&EnvName>,
        pending_only: bool,
    ) -> Result<Vec<FlagChangeRecord>> {
        let status = pending_only.then_some(FlagChangeStatus::Pending.as_str());
        sqlx::query(
            "SELECT * FROM flag_changes WHERE ($1 IS NULL OR env = $1) AND ($2 IS NULL OR status = $2) ORDER BY id",
        )
        .bind(env.map(|e| e.as_str().to_owned()))
        .bind(status)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading flag changes"))?
        .iter()
        .map(change_from)
        .collect()
    }

    pub(super) async fn flag_change(&self, id: i64) -> Result<Option<FlagChangeRecord>> {
        let row = sqlx::query("SELECT * FROM flag_changes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a flag change"))?;
        row.as_ref().map(change_from).transpose()
    }

    pub(super) async fn decide_flag_change(
        &self,
        decide: FlagDecision,
        events: Vec<NewEvent>,
    ) -> Result<FlagChangeRecord> {
        let (_w, mut tx) = self.begin().await?;
        let row = sqlx::query("SELECT * FROM flag_changes WHERE id = $1")
            .bind(decide.id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a flag change"))?;
        let Some(mut record) = row.as_ref().map(change_from).transpose()? else {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::NotFound(format!(
                "flag change #{} (shipgate flag changes lists them)",
                decide.id
            )));
        };
        if record.status != FlagChangeStatus::Pending
            || record.decisions.len() != decide.decided_before
        {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "flag change #{} is {} now, decided on meanwhile; look at it again (shipgate flag changes --all)",
                record.id,
                record.status.as_str()
            )));
        }
        let at = now();
        record.decisions.push(decide.decision);
        if let Some(status) = decide.close {
            record.status = status;
            record.closed_at = Some(at);
        }
        if record.status == FlagChangeStatus::Applied {
            let states: Vec<(String, FlagState)> = record
                .changes
                .iter()
                .map(|c| (c.flag.clone(), c.after.clone()))
                .collect();
            let actor = events.last().map_or("", |e| e.actor.as_str()).to_owned();
            write_states(
                &mut tx,
                &record.env,
                &record.app,
                &states,
                &actor,
                &at.to_string(),
            )
            .await?;
        }
        sqlx::query(
            "UPDATE flag_changes SET decisions = $1, status = $2, closed_at = $3 WHERE id = $4",
        )
        .bind(json_text("a flag change's decisions", &record.decisions)?)
        .bind(record.status.as_str())
        .bind(record.closed_at.map(|t| t.to_string()))
        .bind(record.id)
        .execute(&mut *tx)
        .await
        .map_err(db("deciding on a flag change"))?;
        let mut appended = Vec::new();
        for event in events {
            appended.push(append(&mut tx, event).await?);
        }
        self.commit(tx, appended).await?;
        Ok(record)
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
