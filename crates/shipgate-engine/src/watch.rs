//! `verify.watch`: after the switch, the router's figures for the new release (and its
//! instance's health) are watched; `shipgate_core::gate::judge` decides.

use std::time::Duration;

use jiff::Timestamp;
use shipgate_api::status::WatchView;
use shipgate_core::PromotionId;
use shipgate_core::config::WatchRule;
use shipgate_core::gate::{Inconclusive, Stage, WatchFigures, WatchVerdict, judge, watch_checks};
use shipgate_store::Promotion;

use crate::traffic::Counters;
use crate::{Engine, EngineError, LiveInstance};

/// How often the figures are looked at during a watch.
const LOOK_EVERY: Duration = Duration::from_millis(500);

impl Engine {
    /// Watches the new release for `verify.watch`; returns why it must be rolled back, if so.
    pub(crate) async fn watch(
        &self,
        p: &Promotion,
        instance: &LiveInstance,
    ) -> Result<Option<String>, EngineError> {
        let Some(rule) = self
            .config()
            .environment(&p.env)
            .and_then(|e| e.verify.watch.clone())
        else {
            return Ok(None);
        };
        let label = instance.target.label.clone();
        let app = p.app.as_str();
        let env = p.env.as_str();
        let before = Counters::of(&self.driver.router_metrics(env).await, app, &label);
        let started_at = self.clock.now();
        // Stopped when the watch ends, however it ends (the guard aborts it on drop).
        let _traffic = self.synthetic_traffic(&p.env);
        let deadline = crate::clock::after(self.clock.now(), rule.watch.as_std());
        let progress = Progress {
            engine: self,
            id: p.id,
        };
        progress.show(&rule, started_at, deadline, &WatchFigures::default());
        loop {
            let next = crate::clock::after(self.clock.now(), LOOK_EVERY).min(deadline);
            self.clock.sleep_until(next).await;
            let figures =
                Counters::of(&self.driver.router_metrics(env).await, app, &label).since(&before);
            progress.show(&rule, started_at, deadline, &figures);
            let decisions = self.store.decisions(p.id, Stage::Watch).await?;
            if let Some(rejection) = decisions
                .iter()
                .find(|d| d.verdict == shipgate_core::Verdict::Reject)
            {
                let why = format!(
                    "rejected by {} during the watch: {}",
                    rejection.actor,
                    rejection.comment.as_deref().unwrap_or("")
                );
                let output = format!("{why}\nmeasured since the switch: {figures}");
                self.gate(p, "watch", false, output, started_at).await?;
                return Ok(Some(why));
            }
            let healthy = self
                .driver
                .status(&instance.id)
                .await
                .is_some_and(|s| s.healthy);
            if !healthy {
                let why = format!(
                    "instance {} stopped answering (crashed or exited) during the watch; {figures}",
                    instance.id
                );
                self.gate(p, "watch", false, why.clone(), started_at)
                    .await?;
                return Ok(Some(why));
            }
            let ended = self.clock.now() >= deadline;
            match judge(&rule, &figures, ended) {
                WatchVerdict::Continue => {}
                WatchVerdict::Breach(why) => {
                    let output = format!("{why}\nmeasured since the switch: {figures}");
                    self.gate(p, "watch", false, output, started_at).await?;
                    return Ok(Some(why));
                }
                WatchVerdict::Pass(why) => {
                    self.gate(p, "watch", true, why, started_at).await?;
                    return Ok(None);
                }
                WatchVerdict::Inconclusive(why) => {
                    return match rule.inconclusive {
                        Inconclusive::Pass => {
                            let output =
                                format!("{why}; verify.inconclusive = \"pass\" accepts it");
                            self.gate(p, "watch", true, output, started_at).await?;
                            Ok(None)
                        }
                        Inconclusive::Fail => {
                            let why =
                                format!("{why}; verify.inconclusive = \"fail\" rolls it back");
                            self.gate(p, "watch", false, why.clone(), started_at)
                                .await?;
                            Ok(Some(why))
                        }
                        Inconclusive::Hold => {
                            drop(progress);
                            let output = format!(
                                "{why}; held for a person (verify.inconclusive = \"hold\")"
                            );
                            self.gate(p, "watch", true, output, started_at).await?;
                            self.await_watch_decision(p, why).await
                        }
                    };
                }
            }
        }
    }
}

impl Engine {
    /// The watch under way for a promotion, if one is.
    pub fn watch_of(&self, id: PromotionId) -> Option<WatchView> {
        crate::locked(&self.watching).get(&id).cloned()
    }
}

/// A watch's figures so far, shown in `status` while it runs; gone when it ends, however.
struct Progress<'a> {
    engine: &'a Engine,
    id: PromotionId,
}

impl Progress<'_> {
    fn show(
        &self,
        rule: &WatchRule,
        started_at: Timestamp,
        ends_at: Timestamp,
        figures: &WatchFigures,
    ) {
        let checks = watch_checks(rule, figures);
        let each: Vec<String> = checks.iter().map(ToString::to_string).collect();
        let message = format!(
            "watch ends at {}: {}",
            ends_at.strftime("%H:%M:%S UTC"),
            each.join(", ")
        );
        let view = WatchView {
            started_at,
            ends_at,
            figures: *figures,
            checks,
            message,
        };
        crate::locked(&self.engine.watching).insert(self.id, view);
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        crate::locked(&self.engine.watching).remove(&self.id);
    }
}

/// Aborts its task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Engine {
    /// `verify.watch_traffic` of `env`, sent until the guard is dropped; None where it has none.
    pub(crate) fn synthetic_traffic(&self, env: &shipgate_core::EnvName) -> Option<AbortOnDrop> {
        let config = self.config();
        let e = config.environment(env)?;
        let t = e.verify.watch.as_ref()?.traffic.as_ref()?;
        let urls: Vec<String> = self
            .driver
            .endpoints(env.as_str(), e.listen)
            .iter()
            .map(|a| format!("http://{a}{}", t.path))
            .collect();
        Some(AbortOnDrop(tokio::spawn(send_traffic(urls, t.rps))))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `verify.watch_traffic`: GETs to the environment's addresses, `rps` a second in all, taking
/// the addresses in turn, until aborted. Their answers count in the router like any request.
async fn send_traffic(urls: Vec<String>, rps: f64) {
    if urls.is_empty() {
        return;
    }
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return;
    };
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for url in urls.iter().cycle() {
        every.tick().await;
        let client = client.clone();
        let url = url.clone();
        // Each on its own, so a slow answer does not lower the rate.
        tokio::spawn(async move {
            let _ = client
                .get(&url)
                .header("user-agent", "shipgate-watch")
                .send()
                .await;
        });
    }
}
