//! Chaos faults: each injected fault with its end, and when and by whom it ended (a person,
//! or `duration` when its time ran out). Each change is written with the event announcing it.

use shipgate_core::chaos::HttpFault;
use shipgate_core::{AppName, EnvName};

use super::*;

fn fault_from(row: &AnyRow) -> Result<FaultRecord> {
    let id: i64 = get(row, "id")?;
    let mut fault: HttpFault = serde_json::from_str(&get::<String>(row, "fault")?)
        .map_err(|e| StoreError::Corrupt(format!("chaos fault #{id}: {e}")))?;
    fault.id = id;
    Ok(FaultRecord {
        id,
        env: parse("environment", &get::<String>(row, "env")?, EnvName::parse)?,
        app: parse("app", &get::<String>(row, "app")?, AppName::parse)?,
        fault,
        created_by: get(row, "created_by")?,
        created_at: get_time(row, "created_at")?,
        ends_at: get_time(row, "ends_at")?,
        ended_at: get_time_opt(row, "ended_at")?,
        ended_by: get(row, "ended_by")?,
    })
}

impl SqlStore {
    pub(super) async fn insert_fault(
        &self,
        env: &EnvName,
        app: &AppName,
        fault: &HttpFault,
        ends_at: Timestamp,
        event: NewEvent,
    ) -> Result<FaultRecord> {
        let (_w, mut tx) = self.begin().await?;
        let text = serde_json::to_string(fault)
            .map_err(|e| StoreError::Corrupt(format!("a chaos fault: {e}")))?;
        let created_at = now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO chaos_faults (env, app, fault, created_by, created_at, ends_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(env.as_str())
        .bind(app.as_str())
        .bind(text)
        .bind(&event.actor)
        .bind(created_at.to_string())
        .bind(ends_at.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("recording a chaos fault"))?;
        let record = FaultRecord {
            id,
            env: env.clone(),
            app: app.clone(),
            fault: HttpFault {
                id,
                ..fault.clone()
            },
            created_by: event.actor.clone(),
            created_at,
            ends_at,
            ended_at: None,
            ended_by: None,
        };
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(record)
    }

    pub(super) async fn faults(
        &self,
        env: Option<&EnvName>,
        active_only: bool,
    ) -> Result<Vec<FaultRecord>> {
        sqlx::query(
            "SELECT * FROM chaos_faults WHERE ($1 IS NULL OR env = $1) AND ($2 = 0 OR ended_at IS NULL) ORDER BY id",
        )
        .bind(env.map(|e| e.as_str().to_owned()))
        .bind(i64::from(active_only))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading chaos faults"))?
        .iter()
        .map(fault_from)
        .collect()
    }

    pub(super) async fn end_faults(
        &self,
        by: &str,
        events: Vec<(i64, NewEvent)>,
    ) -> Result<Vec<FaultRecord>> {
        let (_w, mut tx) = self.begin().await?;
        let at = now().to_string();
        let mut ended = Vec::new();
        let mut appended = Vec::new();
        for (id, event) in events {
            let row = sqlx::query(
                "UPDATE chaos_faults SET ended_at = $1, ended_by = $2 WHERE id = $3 AND ended_at IS NULL RETURNING *",
            )
            .bind(&at)
            .bind(by)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("ending a chaos fault"))?;
            if let Some(row) = row {
                ended.push(fault_from(&row)?);
                appended.push(append(&mut tx, event).await?);
            }
        }
        if ended.is_empty() {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(ended);
        }
        self.commit(tx, appended).await?;
        Ok(ended)
    }
}
