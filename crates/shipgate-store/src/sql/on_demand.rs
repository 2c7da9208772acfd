//! On-demand environments' rows: each written together with the event that announces it, and
//! removed together with what the store holds of the environment (its live releases and
//! instances), so a deleted environment is never restored.

use jiff::Timestamp;
use shipgate_core::on_demand::OnDemandState;
use shipgate_core::{EnvName, ReleaseRef};

use super::*;

const COLUMNS: &str =
    "name, template, requester, port, state, ttl_secs, created_at, expires_at, releases, outcome";

fn on_demand_from(row: &AnyRow) -> Result<OnDemandRecord> {
    let releases: Vec<String> = serde_json::from_str(&get::<String>(row, "releases")?)
        .map_err(|e| StoreError::Corrupt(format!("an on-demand environment's releases: {e}")))?;
    let port: i64 = get(row, "port")?;
    Ok(OnDemandRecord {
        name: parse("environment", &get::<String>(row, "name")?, EnvName::parse)?,
        template: parse("template", &get::<String>(row, "template")?, EnvName::parse)?,
        requester: get(row, "requester")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt(format!("port {port}")))?,
        state: parse("state", &get::<String>(row, "state")?, OnDemandState::parse)?,
        ttl_secs: u64::try_from(get::<i64>(row, "ttl_secs")?).unwrap_or_default(),
        created_at: get_time(row, "created_at")?,
        expires_at: get_time(row, "expires_at")?,
        releases: releases
            .iter()
            .map(|r| parse("release", r, ReleaseRef::parse))
            .collect::<Result<_>>()?,
        outcome: get(row, "outcome")?,
    })
}

fn releases_text(r: &OnDemandRecord) -> String {
    let refs: Vec<String> = r.releases.iter().map(ToString::to_string).collect();
    serde_json::to_string(&refs).unwrap_or_else(|_| "[]".into())
}

fn ttl(r: &OnDemandRecord) -> i64 {
    i64::try_from(r.ttl_secs).unwrap_or(i64::MAX)
}

impl SqlStore {
    pub(super) async fn insert_on_demand(
        &self,
        r: OnDemandRecord,
        event: NewEvent,
    ) -> Result<OnDemandRecord> {
        let (_w, mut tx) = self.begin().await?;
        let clash: Option<(String, i64)> =
            sqlx::query_as("SELECT name, port FROM on_demand WHERE name = $1 OR port = $2 LIMIT 1")
                .bind(r.name.as_str())
                .bind(i64::from(r.port))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading on-demand environments"))?;
        if let Some((name, port)) = clash {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(if name == r.name.as_str() {
                format!(
                    "an environment `{name}` exists already; delete it first (shipgate env delete {name}) or pick another name"
                )
            } else {
                format!("port {port} is held by on-demand environment `{name}`")
            }));
        }
        sqlx::query(&format!(
            "INSERT INTO on_demand ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(r.name.as_str())
        .bind(r.template.as_str())
        .bind(&r.requester)
        .bind(i64::from(r.port))
        .bind(r.state.as_str())
        .bind(ttl(&r))
        .bind(r.created_at.to_string())
        .bind(r.expires_at.to_string())
        .bind(releases_text(&r))
        .bind(r.outcome.clone())
        .execute(&mut *tx)
        .await
        .map_err(db("recording an on-demand environment"))?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(r)
    }

    pub(super) async fn update_on_demand(
        &self,
        r: &OnDemandRecord,
        from: OnDemandState,
        event: Option<NewEvent>,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE on_demand SET state = $1, ttl_secs = $2, expires_at = $3, outcome = $4 WHERE name = $5 AND state = $6",
        )
        .bind(r.state.as_str())
        .bind(ttl(r))
        .bind(r.expires_at.to_string())
        .bind(r.outcome.clone())
        .bind(r.name.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("updating an on-demand environment"))?;
        if changed.rows_affected() == 0 {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Err(StoreError::Conflict(format!(
                "on-demand environment `{}` is gone or no longer {from} (shipgate env list shows where it is)",
                r.name
            )));
        }
        let mut events = Vec::new();
        if let Some(e) = event {
            events.push(append(&mut tx, e).await?);
        }
        self.commit(tx, events).await
    }

    pub(super) async fn touch_on_demand(
        &self,
        name: &EnvName,
        expires_at: Timestamp,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        sqlx::query("UPDATE on_demand SET expires_at = $1 WHERE name = $2 AND state <> 'deleting'")
            .bind(expires_at.to_string())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("pushing an expiry back"))?;
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn begin_deleting(
        &self,
        name: &EnvName,
        unless_changed: Option<(OnDemandState, Timestamp)>,
    ) -> Result<bool> {
        let (_w, mut tx) = self.begin().await?;
        let changed = match unless_changed {
            None => sqlx::query("UPDATE on_demand SET state = 'deleting' WHERE name = $1")
                .bind(name.as_str())
                .execute(&mut *tx)
                .await,
            Some((state, expires_at)) => sqlx::query(
                "UPDATE on_demand SET state = 'deleting' WHERE name = $1 AND state = $2 AND expires_at = $3",
            )
            .bind(name.as_str())
            .bind(state.as_str())
            .bind(expires_at.to_string())
            .execute(&mut *tx)
            .await,
        }
        .map_err(db("marking an on-demand environment deleting"))?;
        self.commit(tx, Vec::new()).await?;
        Ok(changed.rows_affected() > 0)
    }

    pub(super) async fn delete_on_demand(&self, name: &EnvName, event: NewEvent) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        for sql in [
            "DELETE FROM on_demand WHERE name = $1",
            "DELETE FROM live WHERE env = $1",
        ] {
            sqlx::query(sql)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db("removing an on-demand environment"))?;
        }
        sqlx::query("UPDATE instances SET state = 'stopped', updated_at = $1 WHERE env = $2 AND state <> 'stopped'")
            .bind(now_text())
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("marking an environment's instances stopped"))?;
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await
    }

    pub(super) async fn all_on_demand(&self) -> Result<Vec<OnDemandRecord>> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM on_demand ORDER BY created_at, name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("listing on-demand environments"))?
        .iter()
        .map(on_demand_from)
        .collect()
    }
}
