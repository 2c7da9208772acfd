//! `verify.watch`: after the switch, the router's figures for the new release (and its
//! instance's health) are watched; `shipgate_core::gate::judge` decides.

use std::time::Duration;

use shipgate_core::gate::{Inconclusive, Stage, WatchVerdict, judge};
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
            .config
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
        let deadline = crate::clock::after(self.clock.now(), rule.watch.as_std());
        loop {
            let next = crate::clock::after(self.clock.now(), LOOK_EVERY).min(deadline);
            self.clock.sleep_until(next).await;
            let figures =
                Counters::of(&self.driver.router_metrics(env).await, app, &label).since(&before);
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
