//! The outbox and the deliveries of notifications. Every appended event has an outbox row,
//! written in the event's own transaction; fanning out turns it into a delivery per target
//! that wants it, in one transaction with removing the outbox row; every attempt of a
//! delivery is recorded with how it went.

use super::*;

const DELIVERY_COLUMNS: &str = "id, target, event_id, webhook_id, status, attempts, next_at, last_error, created_at, delivered_at";

fn delivery_from(row: &AnyRow) -> Result<Delivery> {
    let status: String = get(row, "status")?;
    Ok(Delivery {
        id: get(row, "id")?,
        target: get(row, "target")?,
        event_id: get(row, "event_id")?,
        webhook_id: get(row, "webhook_id")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("a delivery's status `{status}`")))?,
        attempts: u32::try_from(get::<i64>(row, "attempts")?).unwrap_or(u32::MAX),
        next_at: get_time(row, "next_at")?,
        last_error: get(row, "last_error")?,
        created_at: get_time(row, "created_at")?,
        delivered_at: get_time_opt(row, "delivered_at")?,
    })
}

impl SqlStore {
    pub(super) async fn pending_outbox(&self, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT e.* FROM outbox o JOIN events e ON e.id = o.event_id ORDER BY o.event_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the outbox"))?;
        rows.iter().map(event_from).collect()
    }

    pub(super) async fn fan_out(
        &self,
        event_ids: &[i64],
        deliveries: Vec<NewDelivery>,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        let at = now().to_string();
        for d in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (target, event_id, webhook_id, status, attempts, next_at, created_at) \
                 VALUES ($1, $2, $3, $4, 0, $5, $5) ON CONFLICT (target, event_id) DO NOTHING",
            )
            .bind(&d.target)
            .bind(d.event_id)
            .bind(&d.webhook_id)
            .bind(DeliveryStatus::Pending.as_str())
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(db("recording a delivery"))?;
        }
        for id in event_ids {
            sqlx::query("DELETE FROM outbox WHERE event_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db("emptying the outbox"))?;
        }
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn first_pending_deliveries(&self) -> Result<Vec<Delivery>> {
        let columns: Vec<String> = DELIVERY_COLUMNS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect();
        sqlx::query(&format!(
            "SELECT {} FROM deliveries d JOIN \
             (SELECT target, MIN(event_id) AS first FROM deliveries WHERE status = $1 GROUP BY target) f \
             ON d.target = f.target AND d.event_id = f.first ORDER BY d.event_id",
            columns.join(", ")
        ))
        .bind(DeliveryStatus::Pending.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading deliveries"))?
        .iter()
        .map(delivery_from)
        .collect()
    }

    pub(super) async fn record_attempt(
        &self,
        id: i64,
        attempt: DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> Result<()> {
        let (_w, mut tx) = self.begin().await?;
        let number: i64 = sqlx::query_scalar("SELECT attempts FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading a delivery"))?;
        let at = attempt.at.to_string();
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, at, status, error, took_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(number + 1)
        .bind(&at)
        .bind(attempt.status.map(i64::from))
        .bind(&attempt.error)
        .bind(attempt.took_ms)
        .execute(&mut *tx)
        .await
        .map_err(db("recording a delivery attempt"))?;
        let (status, next_at, delivered_at) = match outcome {
            AttemptOutcome::Delivered => (DeliveryStatus::Delivered, at.clone(), Some(at.clone())),
            AttemptOutcome::Retry { next_at } => {
                (DeliveryStatus::Pending, next_at.to_string(), None)
            }
            AttemptOutcome::Dead => (DeliveryStatus::Dead, at.clone(), None),
        };
        sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_at = $2, last_error = $3, delivered_at = $4 WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(next_at)
        .bind(&attempt.error)
        .bind(delivered_at)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("updating a delivery"))?;
        self.commit(tx, Vec::new()).await
    }

    pub(super) async fn deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE ($1 IS NULL OR status = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(status.map(|s| s.as_str().to_owned()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading deliveries"))?
        .iter()
        .map(delivery_from)
        .collect()
    }

    pub(super) async fn delivery_attempts(&self, id: i64) -> Result<Vec<DeliveryAttempt>> {
        let rows = sqlx::query(
            "SELECT at, status, error, took_ms FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading delivery attempts"))?;
        rows.iter()
            .map(|row| {
                Ok(DeliveryAttempt {
                    at: get_time(row, "at")?,
                    status: get::<Option<i64>>(row, "status")?.and_then(|s| u16::try_from(s).ok()),
                    error: get(row, "error")?,
                    took_ms: get(row, "took_ms")?,
                })
            })
            .collect()
    }

    pub(super) async fn retry_deliveries(
        &self,
        ids: &[i64],
        event: NewEvent,
    ) -> Result<Vec<Delivery>> {
        let (_w, mut tx) = self.begin().await?;
        let at = now().to_string();
        let mut again = Vec::new();
        for id in ids {
            let row = sqlx::query(&format!(
                "UPDATE deliveries SET status = $1, attempts = 0, next_at = $2 WHERE id = $3 AND status = $4 RETURNING {DELIVERY_COLUMNS}"
            ))
            .bind(DeliveryStatus::Pending.as_str())
            .bind(&at)
            .bind(id)
            .bind(DeliveryStatus::Dead.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("retrying a delivery"))?;
            if let Some(row) = row {
                again.push(delivery_from(&row)?);
            }
        }
        if again.is_empty() {
            tx.rollback().await.map_err(db("rolling back"))?;
            return Ok(again);
        }
        let event = append(&mut tx, event).await?;
        self.commit(tx, vec![event]).await?;
        Ok(again)
    }
}
