//! Alerts on live figures: every few seconds (on the engine's clock) each `[alerts.NAME]` is
//! judged for each app it watches from the router's figures for what its users met over the
//! last minute (the live release's responses and those a chaos fault answered instead) and from shipgate's own health and drift findings. An alert fires once when its
//! condition has held for its time and resolves once when it stops holding; each is an event
//! (`alert.firing`, `alert.resolved`), so it reaches notifications and the audit log, and
//! `status` shows the alerts firing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shipgate_core::alert::{AlertState, Condition, Observation, Transition};
use shipgate_core::{AppName, EnvName, EventKind};
use shipgate_store::NewEvent;

use crate::{Engine, EngineError};

/// How often alerts are judged.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Each alert's state per app, by (alert, app).
pub(crate) type Alerts = HashMap<(String, AppName), AlertState>;

impl Engine {
    /// Starts judging alerts.
    pub(crate) fn judge_alerts_periodically(self: &Arc<Self>) {
        if self.config().alerts.is_empty() {
            return;
        }
        let engine = Arc::downgrade(self);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                let next = crate::clock::after(clock.now(), LOOK_EVERY);
                clock.sleep_until(next).await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if let Err(e) = engine.judge_alerts().await {
                    tracing::warn!("alerts: {e}");
                }
            }
        });
    }

    /// What `app` in `env` looks like now, as far as `condition` needs: the figures that cost a
    /// read of the store (sign-offs, backups) are read only for the conditions on them.
    async fn observe_live(
        &self,
        app: &AppName,
        env: &EnvName,
        condition: &Condition,
    ) -> Observation {
        let slot = (app.clone(), env.clone());
        let metrics = self.driver.router_metrics(env.as_str()).await;
        // What users met, injected faults included: a fault can test an alert. (The watch of
        // a release judges its own responses only.)
        let live = shipgate_proxy::users_saw(&metrics, app.as_str());
        let healthy = match self.live_instance(&slot) {
            Some(i) => self.driver.status(&i.id).await.is_some_and(|s| s.healthy),
            None => true,
        };
        let signing_off = *condition == Condition::SigningOff && self.signing_off(app, env).await;
        let backup_age_secs = match condition {
            Condition::BackupAgeAbove(_) => self.backup_age_secs(app, env).await,
            _ => None,
        };
        Observation {
            signing_off,
            backup_age_secs,
            error_rate: live.map_or(0.0, |w| w.error_rate),
            p99_ms: live.and_then(|w| w.p99_ms),
            rps: live.map_or(0.0, |w| w.requests_per_second),
            unhealthy: !healthy,
            crash_loop: crate::locked(&self.unhealthy).contains_key(&slot),
            drifted: !self.drift_of_slot(app, env).is_empty(),
            canary_held: self.canary_held(&slot),
        }
    }

    /// Whether a release of `app` waits for its sign-off in `env`.
    async fn signing_off(&self, app: &AppName, env: &EnvName) -> bool {
        let waiting = shipgate_store::PromotionFilter {
            app: Some(app.clone()),
            env: Some(env.clone()),
            states: vec![shipgate_core::PromotionState::SigningOff],
            limit: Some(1),
            ..Default::default()
        };
        match self.store.promotions(waiting).await {
            Ok(p) => !p.is_empty(),
            Err(e) => {
                tracing::warn!("alerts: could not read the sign-offs of {app} in {env}: {e}");
                false
            }
        }
    }

    /// How old the newest restorable backup of `app`'s data in `env` is, in seconds: None
    /// without data there, infinite without a restorable backup.
    async fn backup_age_secs(&self, app: &AppName, env: &EnvName) -> Option<f64> {
        let has_data = self
            .config()
            .app(app)
            .and_then(|a| a.data.as_ref())
            .is_some_and(|d| d.locations.contains_key(env));
        if !has_data {
            return None;
        }
        Some(
            self.backup_age(app, env)
                .await
                .map_or(f64::INFINITY, |d| d.as_secs_f64()),
        )
    }

    /// One look at every alert. One look at a time; a transition is kept only once its event
    /// is written, so a failed write is tried again at the next look rather than lost.
    pub async fn judge_alerts(&self) -> Result<(), EngineError> {
        let _one = self.judging.lock().await;
        let config = self.config();
        let now = self.clock.now();
        for rule in &config.alerts {
            let apps: Vec<AppName> = match &rule.app {
                Some(a) => vec![a.clone()],
                None => config.apps.iter().map(|a| a.name.clone()).collect(),
            };
            for app in apps {
                let seen = self.observe_live(&app, &rule.env, &rule.condition).await;
                let holds = rule.condition.holds(&seen);
                let key = (rule.name.clone(), app.clone());
                let mut state = crate::locked(&self.alerts)
                    .get(&key)
                    .copied()
                    .unwrap_or_default();
                let transition = state.step(now, holds, rule.hold);
                let Some(t) = transition else {
                    crate::locked(&self.alerts).insert(key, state);
                    continue;
                };
                let measured = rule.condition.measured(&seen);
                let (kind, message) = match t {
                    Transition::Firing => (
                        EventKind::AlertFiring,
                        format!(
                            "alert {} firing for {app} in {}: `{}` ({measured})",
                            rule.name, rule.env, rule.when
                        ),
                    ),
                    Transition::Resolved => (
                        EventKind::AlertResolved,
                        format!(
                            "alert {} resolved for {app} in {}: `{}` no longer holds ({measured})",
                            rule.name, rule.env, rule.when
                        ),
                    ),
                };
                self.store
                    .append_event(NewEvent {
                        actor: "alerts".into(),
                        kind,
                        app: Some(app.to_string()),
                        env: Some(rule.env.to_string()),
                        promotion_id: None,
                        message,
                        data: serde_json::json!({ "alert": rule.name, "when": rule.when, "measured": measured }),
                    })
                    .await?;
                crate::locked(&self.alerts).insert(key, state);
            }
        }
        Ok(())
    }

    /// The alerts firing now, as lines: `high-errors for web in production: error_rate > 0.05`.
    pub fn firing_alerts(&self) -> Vec<(String, AppName, EnvName, String)> {
        let config = self.config();
        let alerts = crate::locked(&self.alerts);
        config
            .alerts
            .iter()
            .flat_map(|rule| {
                alerts
                    .iter()
                    .filter(|((name, _), s)| *name == rule.name && s.firing)
                    .map(|((name, app), _)| {
                        (
                            name.clone(),
                            app.clone(),
                            rule.env.clone(),
                            rule.when.clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
