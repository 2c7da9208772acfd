//! Backups of environments' data: each recorded as `running` before its files are written, then
//! `taken` (with its checksum, size and row counts) or `failed`, then `restorable` or
//! `not_restorable` by its drill; each change written with the event announcing it. A server
//! stopped mid-way leaves `running` rows, which its next start marks `interrupted`.

use std::collections::BTreeMap;

use shipgate_core::{AppName, EnvName};

use super::*;

fn backup_from(row: &AnyRow) -> Result<BackupRecord> {
    let id: i64 = get(row, "id")?;
    let counts: BTreeMap<String, i64> = serde_json::from_str(&get::<String>(row, "counts")?)
        .map_err(|e| StoreError::Corrupt(format!("backup #{id} counts: {e}")))?;
    let drill = get::<Option<String>>(row, "drill")?
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("backup #{id} drill: {e}")))?;
    Ok(BackupRecord {
        id,
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        state: get(row, "state")?,
        reason: get(row, "reason")?,
        kind: get(row, "kind")?,
        source: get(row, "source")?,
        checksum: get(row, "checksum")?,
        size: get(row, "size")?,
        duration_ms: get(row, "duration_ms")?,
        counts,
        drill,
        error: get(row, "error")?,
        created_at: get_time(row, "created_at")?,
        finished_at: get_time_opt(row, "finished_at")?,
        drilled_at: get_time_opt(row, "drilled_at")?,
        pruned_at: get_time_opt(row, "pruned_at")?,
    })
}

async fn backup_in(tx: &mut Transaction<'static, Any>, id: i64) -> Result<BackupRecord> {
    let row = sqlx::query("SELECT * FROM backups WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a backup"))?
        .ok_or_else(|| StoreError::NotFound(format!("backup {id}")))?;
    backup_from(&row)
}

impl SqlStore {
    pub(super) async fn start_backup(&self, b: NewBackup) -> Result<BackupRecord> {
        let (_w, mut tx) = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO backups (app, env, state, reason, kind, source, counts, created_at) \
             VALUES ($1, $2, 'running', $3, $4, $5, '{}', $6) RETURNING id",
        )
        .bind(b.app.as_str())
        .bind(b.env.as_str())
        .bind(&b.reason)
        .bind(&b.kind)
        .bind(&b.source)
        .bind(now().to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("recording a backup"))?;
        let record = backup_in(&mut tx, id).await?;
        self.commit(tx, vec![]).await?;
        Ok(record)
    }

    pub(super) async fn finish_backup(
        &self,
        id: i64,
        end: BackupEnd,
        event: NewEvent,
    ) -> Result<BackupRecord> {
        let (_w, mut tx) = self.begin().await?;
        let before = backup_in(&mut tx, id).await?;
        let at = now().to_string();
        let state_ok = match &end {
            BackupEnd::Taken { .. } | BackupEnd::Failed(_) | BackupEnd::Interrupted(_) => {
                before.state == "running"
            }
            BackupEnd::Drilled { .. } => {
                matches!(
                    before.state.as_str(),
                    "taken" | "restorable" | "not_restorable"
                ) && before.pruned_at.is_none()
            }
            BackupEnd::Pruned => before.pruned_at.is_none(),
        };
        if !state_ok {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "backup {id} is {} already",
                before.state
            )));
        }
        let query = match &end {
            BackupEnd::Taken {
                checksum,
                size,
                duration_ms,
                counts,
            } => sqlx::query("UPDATE backups SET state = 'taken', checksum = $1, size = $2, duration_ms = $3, counts = $4, finished_at = $5 WHERE id = $6")
                .bind(checksum.clone())
                .bind(*size)
                .bind(*duration_ms)
                .bind(serde_json::to_string(counts).unwrap_or_else(|_| "{}".into()))
                .bind(at)
                .bind(id),
            BackupEnd::Failed(error) => sqlx::query("UPDATE backups SET state = 'failed', error = $1, finished_at = $2 WHERE id = $3")
                .bind(error.clone())
                .bind(at)
                .bind(id),
            BackupEnd::Interrupted(error) => sqlx::query("UPDATE backups SET state = 'interrupted', error = $1, finished_at = $2 WHERE id = $3")
                .bind(error.clone())
                .bind(at)
                .bind(id),
            BackupEnd::Drilled { restorable, drill, error } => sqlx::query("UPDATE backups SET state = $1, drill = $2, error = $3, drilled_at = $4 WHERE id = $5")
                .bind(if *restorable { "restorable" } else { "not_restorable" })
                .bind(serde_json::to_string(drill).unwrap_or_else(|_| "null".into()))
                .bind(error.clone())
                .bind(at)
                .bind(id),
            BackupEnd::Pruned => sqlx::query("UPDATE backups SET pruned_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id),
        };
        query
            .execute(&mut *tx)
            .await
            .map_err(db("updating a backup"))?;
        let record = backup_in(&mut tx, id).await?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }

    pub(super) async fn backups(
        &self,
        app: Option<&AppName>,
        env: Option<&EnvName>,
    ) -> Result<Vec<BackupRecord>> {
        sqlx::query(
            "SELECT * FROM backups WHERE ($1 IS NULL OR app = $1) AND ($2 IS NULL OR env = $2) ORDER BY id DESC",
        )
        .bind(app.map(|a| a.as_str().to_owned()))
        .bind(env.map(|e| e.as_str().to_owned()))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading backups"))?
        .iter()
        .map(backup_from)
        .collect()
    }
}
