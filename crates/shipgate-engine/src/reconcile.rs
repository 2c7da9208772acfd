//! Start-up after a stop of any kind, `kill -9` included: nothing stays in flight, every
//! environment serves its recorded live release again.

use std::sync::Arc;

use shipgate_core::PromotionState;
use shipgate_store::{LiveChange, LiveRelease, NewEvent, Promotion, PromotionFilter, Transition};

use crate::{Engine, EngineError, SYSTEM};

impl Engine {
    pub(crate) async fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        // Instances of a previous server process may still run; they are not ours to adopt.
        for old in self.store.running_instances().await? {
            let pid = old.pid.and_then(|p| u32::try_from(p).ok());
            self.stop_instance(&old.id, pid).await;
        }
        let in_flight = PromotionFilter {
            states: vec![PromotionState::Deploying, PromotionState::Verifying],
            ..Default::default()
        };
        for p in self.store.promotions(in_flight).await? {
            self.fail_interrupted(&p).await?;
        }
        // Restoring can take as long as the slowest instance takes to get healthy: the API
        // answers meanwhile, and each router says what it is starting.
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = engine.restore_and_resume().await {
                tracing::error!("could not restore what was live: {e}");
            }
            engine
                .restoring
                .store(false, std::sync::atomic::Ordering::Release);
        });
        Ok(())
    }

    /// Starts every recorded live release again, then resumes the pending promotions.
    async fn restore_and_resume(self: &Arc<Self>) -> Result<(), EngineError> {
        self.restore_live().await?;
        let pending = PromotionFilter {
            states: vec![PromotionState::Pending],
            ..Default::default()
        };
        let mut pending = self.store.promotions(pending).await?;
        pending.reverse();
        for p in pending {
            self.spawn_run(p.id);
        }
        Ok(())
    }

    /// A promotion cut off mid-way fails; a verifying one gives the environment back to the
    /// release verified there before it.
    async fn fail_interrupted(&self, p: &Promotion) -> Result<(), EngineError> {
        let live = if p.state == PromotionState::Verifying {
            let before = PromotionFilter {
                app: Some(p.app.clone()),
                env: Some(p.env.clone()),
                version: None,
                apps: Vec::new(),
                states: vec![PromotionState::Succeeded],
                limit: None,
            };
            let previous = self
                .store
                .promotions(before)
                .await?
                .into_iter()
                .find(|q| q.id < p.id);
            LiveChange::Restore(previous.map(|q| LiveRelease {
                app: q.app,
                env: q.env,
                version: q.version,
                digest: q.digest,
                promotion_id: q.id,
                since: q.updated_at,
            }))
        } else {
            LiveChange::Keep
        };
        let back = match &live {
            LiveChange::Restore(Some(l)) => format!("{} is back on {}@{}", p.env, l.app, l.version),
            LiveChange::Restore(None) => format!("{} is back to having nothing live", p.env),
            _ => format!("{} keeps what it had", p.env),
        };
        let reason = format!(
            "the server stopped while this promotion was {}; {back}",
            p.state
        );
        let t = Transition {
            promotion_id: p.id,
            from: vec![p.state],
            to: PromotionState::Failed,
            reason: Some(reason.clone()),
            live,
            actor: SYSTEM.into(),
            message: format!("{}@{} in {}: {reason}", p.app, p.version, p.env),
            roll_back_promotion: None,
        };
        self.store.transition(t).await?;
        Ok(())
    }

    /// Starts every recorded live release (in parallel) and points its router at it.
    async fn restore_live(self: &Arc<Self>) -> Result<(), EngineError> {
        let mut starts = tokio::task::JoinSet::new();
        for live in self.store.live(None).await? {
            if self.config.app(&live.app).is_none() || self.config.environment(&live.env).is_none()
            {
                continue;
            }
            let engine = Arc::clone(self);
            starts.spawn(async move {
                let result = engine.restore_one(&live).await;
                (live, result)
            });
        }
        while let Some(done) = starts.join_next().await {
            let Ok((live, result)) = done else { continue };
            if let Err(message) = result {
                let event = NewEvent {
                    actor: SYSTEM.into(),
                    kind: shipgate_core::EventKind::EnvironmentUnavailable,
                    app: Some(live.app.to_string()),
                    env: Some(live.env.to_string()),
                    promotion_id: Some(live.promotion_id),
                    message: format!(
                        "{}@{} could not be started again in {}: {message}",
                        live.app, live.version, live.env
                    ),
                    data: serde_json::json!({ "version": live.version }),
                };
                self.store.append_event(event).await?;
            }
        }
        Ok(())
    }

    async fn restore_one(&self, live: &LiveRelease) -> Result<(), String> {
        let p = self
            .store
            .promotion(live.promotion_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("its promotion is missing")?;
        let slot = (live.app.clone(), live.env.clone());
        // A promotion asked for meanwhile waits until the recorded release is back.
        let lock = self.slot_lock(&slot);
        let _slot = lock.lock().await;
        self.driver
            .set_starting(
                live.env.as_str(),
                live.app.as_str(),
                &format!("{}@{}", live.app, live.version),
            )
            .await;
        let instance = self.start_instance(&p, &slot).await?;
        self.route(&slot, Some(&instance))
            .await
            .map_err(|e| e.to_string())?;
        self.set_live_instance(slot, Some(instance));
        Ok(())
    }
}
