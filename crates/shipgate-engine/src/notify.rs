//! Notifications that never lose an event. Every event the store appends gets an outbox row in
//! the same transaction. The sender (on the leading server) fans each outbox row out into one
//! delivery per `[notify.NAME]` target that wants it, then delivers them: POST with retries
//! and backoff, every attempt recorded, and after `max_attempts` the dead-letter list that
//! `shipgate notify list` shows and `notify retry` sends again. A server killed between the
//! write and the send finds the outbox row or the delivery at its next start and sends it then.
//! Receivers deduplicate by `webhook-id`, which stays the same across attempts. A target's
//! deliveries go one at a time, in the order of their events: the next only once the one
//! before was delivered or went to the dead letters.

use std::sync::Arc;
use std::time::Duration;

use shipgate_core::notify::{self, Target};
use shipgate_core::{EventKind, Grant};
use shipgate_store::{AttemptOutcome, Delivery, DeliveryAttempt, NewDelivery, NewEvent};

use crate::{Engine, EngineError};

/// How often the sender looks for work.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// How long one POST may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Events fanned out, and attempts made, per look.
const BATCH: i64 = 200;

impl Engine {
    /// Starts the sender.
    pub(crate) fn deliver_periodically(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .no_proxy()
                .timeout(SEND_TIMEOUT)
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("notifications: no HTTP client: {e}");
                    return;
                }
            };
            loop {
                tokio::time::sleep(LOOK_EVERY).await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if let Err(e) = engine.deliver_once(&client).await {
                    tracing::warn!("notifications: {e}");
                }
            }
        });
    }

    /// One pass: fans out what the outbox holds, then sends what is due.
    async fn deliver_once(&self, client: &reqwest::Client) -> Result<(), EngineError> {
        let targets = self.config().notify.clone();
        loop {
            let pending = self.store.pending_outbox(BATCH).await?;
            if pending.is_empty() {
                break;
            }
            let ids: Vec<i64> = pending.iter().map(|e| e.id).collect();
            let mut deliveries = Vec::new();
            for e in &pending {
                let kind = e.kind.to_string();
                let only = (e.kind == EventKind::NotifyTest)
                    .then(|| {
                        e.data
                            .get("target")
                            .and_then(|t| t.as_str())
                            .map(str::to_owned)
                    })
                    .flatten();
                for t in &targets {
                    let wanted = match &only {
                        Some(name) => *name == t.name,
                        None => t.wants(&kind, e.app.as_deref(), e.env.as_deref()),
                    };
                    if wanted {
                        deliveries.push(NewDelivery {
                            target: t.name.clone(),
                            event_id: e.id,
                            webhook_id: format!("msg_{}", &e.hash[..24.min(e.hash.len())]),
                        });
                    }
                }
            }
            self.store.fan_out(&ids, deliveries).await?;
        }
        // Each target's first pending delivery alone may go: the next waits until it is
        // delivered or dead, so a receiver that was down gets the events in order, not the new
        // ones first while the old back off. What one settles lets the next go in this pass.
        let now = self.clock.now();
        let mut attempts = 0;
        while attempts < BATCH {
            let due: Vec<Delivery> = self
                .store
                .first_pending_deliveries()
                .await?
                .into_iter()
                .filter(|d| d.next_at <= now)
                .collect();
            if due.is_empty() {
                break;
            }
            for d in due {
                attempts += 1;
                let Some(target) = targets.iter().find(|t| t.name == d.target) else {
                    // The config no longer has it: kept as dead, so nothing is dropped unseen.
                    let attempt = DeliveryAttempt {
                        at: now,
                        status: None,
                        error: Some(format!("target `{}` is no longer in the config", d.target)),
                        took_ms: 0,
                    };
                    self.store
                        .record_attempt(d.id, attempt, AttemptOutcome::Dead)
                        .await?;
                    continue;
                };
                self.send(client, target, &d).await?;
            }
        }
        Ok(())
    }

    /// One attempt of delivery `d` to `target`, recorded.
    async fn send(
        &self,
        client: &reqwest::Client,
        target: &Target,
        d: &Delivery,
    ) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let at = self.clock.now();
        let result = self.post(client, target, d).await;
        let took_ms = started.elapsed().as_millis() as i64;
        let (status, error) = match result {
            Ok(status) if (200..300).contains(&status) => (Some(status), None),
            Ok(status) => (
                Some(status),
                Some(format!("the receiver answered {status}")),
            ),
            Err(e) => (None, Some(e)),
        };
        let attempts = d.attempts + 1;
        let outcome = if error.is_none() {
            AttemptOutcome::Delivered
        } else if attempts >= target.max_attempts {
            AttemptOutcome::Dead
        } else {
            AttemptOutcome::Retry {
                next_at: crate::clock::after(at, notify::backoff(attempts)),
            }
        };
        let attempt = DeliveryAttempt {
            at,
            status,
            error,
            took_ms,
        };
        self.store.record_attempt(d.id, attempt, outcome).await?;
        Ok(())
    }

    /// POSTs delivery `d`'s event to `target`; answers the status.
    async fn post(
        &self,
        client: &reqwest::Client,
        target: &Target,
        d: &Delivery,
    ) -> Result<u16, String> {
        let event = self
            .store
            .event(d.event_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("event {} is not in the log", d.event_id))?;
        let json = serde_json::to_value(&event).map_err(|e| e.to_string())?;
        let source = format!("shipgate://{}", self.config().server.listen);
        let body = notify::body(target.format, &d.webhook_id, &source, &json);
        let timestamp = jiff::Timestamp::now().as_second();
        let mut req = client
            .post(&target.url)
            .header("content-type", body.content_type)
            .header(
                "user-agent",
                concat!("shipgate/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &d.webhook_id)
            .header("webhook-timestamp", timestamp.to_string());
        let secret = match (&target.secret, &target.secret_env) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                format!(
                    "the variable {var} (secret_env of [notify.{}]) is not set",
                    target.name
                )
            })?),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            let signature = notify::sign(&secret, &d.webhook_id, timestamp, &body.text)?;
            req = req.header("webhook-signature", signature);
        }
        let answer = req.body(body.text).send().await.map_err(|e| {
            format!(
                "POST {}: {}",
                shipgate_core::notify::shown_url(&target.url),
                e.without_url()
            )
        })?;
        Ok(answer.status().as_u16())
    }

    /// Appends a `notify.test` event for target `name` only; it is delivered like any event.
    pub async fn notify_test(&self, grant: &Grant, name: &str) -> Result<i64, EngineError> {
        if !self.config().notify.iter().any(|t| t.name == name) {
            let names: Vec<String> = self
                .config()
                .notify
                .iter()
                .map(|t| t.name.clone())
                .collect();
            return Err(EngineError::UnknownTarget(format!(
                "no [notify.{name}] in the config{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!("; its targets are {}", names.join(", "))
                }
            )));
        }
        let event = self
            .store
            .append_event(NewEvent {
                actor: grant.name.clone(),
                kind: EventKind::NotifyTest,
                app: None,
                env: None,
                promotion_id: None,
                message: format!("a test notification for {name}"),
                data: serde_json::json!({ "target": name }),
            })
            .await?;
        Ok(event.id)
    }
}
