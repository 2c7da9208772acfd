//! Drift: what runs compared with what shipgate recorded. The release directory against its
//! archive, the running instance's variables and folder against those it was started with, and
//! the router still serving the recorded release. A periodic scan records changes as events;
//! `shipgate drift --heal` redeploys the recorded release from its artifact.

pub use shipgate_api::parity::DriftReport;

use std::collections::BTreeMap;
use std::sync::Arc;

use shipgate_core::{AppName, EnvName, PromotionKind, ReleaseRef};
use shipgate_store::{LiveRelease, NewEvent, Promotion};

use crate::{Engine, EngineError, SYSTEM, Slot, locked};

/// The gate a heal records on its redeploy: what was put back, and where the drifted files went.
pub const HEAL_GATE: &str = "heal";

impl Engine {
    /// Checks every live release now; records an event for each slot whose drift changed.
    pub async fn scan_drift(&self) -> Result<Vec<DriftReport>, EngineError> {
        let mut reports = Vec::new();
        // In the config's order: apps as written, environments along the pipeline.
        let mut lives = self.store.live(None).await?;
        let app_at = |a: &AppName| self.config().apps.iter().position(|x| &x.name == a);
        let env_at = |e: &EnvName| self.config().environments.iter().position(|x| &x.name == e);
        lives.sort_by_key(|l| (app_at(&l.app), env_at(&l.env)));
        for live in lives {
            if self.config().app(&live.app).is_none()
                || self.config().environment(&live.env).is_none()
            {
                continue;
            }
            let Found { drift, undeployed } = self.drift_of(&live).await;
            let slot: Slot = (live.app.clone(), live.env.clone());
            if undeployed.is_empty() {
                locked(&self.undeployed).remove(&slot);
            } else {
                locked(&self.undeployed).insert(slot, undeployed);
            }
            let report = DriftReport {
                app: live.app.clone(),
                env: live.env.clone(),
                version: live.version.clone(),
                drift,
                checked_at: self.clock.now(),
            };
            self.record_drift(&live, &report).await?;
            reports.push(report);
        }
        Ok(reports)
    }

    /// The config changes the last scan found not yet deployed in a slot (its variables).
    pub fn undeployed_of_slot(&self, app: &AppName, env: &EnvName) -> Vec<String> {
        locked(&self.undeployed)
            .get(&(app.clone(), env.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// The drift found by the last scan of a slot, if any.
    pub fn drift_of_slot(&self, app: &AppName, env: &EnvName) -> Vec<String> {
        locked(&self.drift)
            .get(&(app.clone(), env.clone()))
            .cloned()
            .unwrap_or_default()
    }

    async fn record_drift(
        &self,
        live: &LiveRelease,
        report: &DriftReport,
    ) -> Result<(), EngineError> {
        let slot: Slot = (live.app.clone(), live.env.clone());
        let before = locked(&self.drift).get(&slot).cloned().unwrap_or_default();
        if before == report.drift {
            return Ok(());
        }
        if report.drift.is_empty() {
            locked(&self.drift).remove(&slot);
        } else {
            locked(&self.drift).insert(slot, report.drift.clone());
        }
        let (kind, message) = if report.drift.is_empty() {
            (
                shipgate_core::EventKind::EnvironmentDriftCleared,
                format!(
                    "{}@{} in {} matches its record again",
                    live.app, live.version, live.env
                ),
            )
        } else {
            (
                shipgate_core::EventKind::EnvironmentDrifted,
                format!(
                    "{}@{} in {} drifted from its record: {}",
                    live.app,
                    live.version,
                    live.env,
                    report.drift.join("; ")
                ),
            )
        };
        self.store
            .append_event(NewEvent {
                actor: SYSTEM.into(),
                kind,
                app: Some(live.app.to_string()),
                env: Some(live.env.to_string()),
                promotion_id: Some(live.promotion_id),
                message,
                data: serde_json::json!({ "version": live.version, "drift": report.drift }),
            })
            .await?;
        Ok(())
    }

    async fn drift_of(&self, live: &LiveRelease) -> Found {
        let mut found = Found::default();
        let drift = &mut found.drift;
        let artifacts = self.artifacts.clone();
        let digest = live.digest.clone();
        match tokio::task::spawn_blocking(move || artifacts.check_release_dir(&digest)).await {
            Ok(Ok(files)) => {
                drift.extend(files.into_iter().map(|f| format!("release directory {f}")))
            }
            Ok(Err(e)) => drift.push(format!("release directory could not be checked: {e}")),
            Err(e) => drift.push(format!("release directory could not be checked: {e}")),
        }
        let slot: Slot = (live.app.clone(), live.env.clone());
        let label = format!("{}@{}", live.app, live.version);
        let served = self
            .driver
            .routed(live.env.as_str(), live.app.as_str())
            .await
            .map(|t| t.label);
        match served {
            Some(l) if l == label => {}
            Some(l) => drift.push(format!("the router serves {l}, not the recorded {label}")),
            None => drift.push(format!(
                "the router serves nothing, not the recorded {label}"
            )),
        }
        found
            .undeployed
            .extend(self.undeployed_secrets(live.promotion_id).await);
        let drift = &mut found.drift;
        let Some(instance) = self.live_instance(&slot) else {
            drift.push(format!("no instance of {label} runs"));
            return found;
        };
        match self.driver.status(&instance.id).await {
            Some(s) if s.healthy => self.process_drift(live, s.pid, &mut found),
            _ => drift.push(format!(
                "instance {} of {label} is not running healthy",
                instance.id
            )),
        }
        found
    }

    /// The running process's variables against the config's (a difference is a change not
    /// deployed yet), and its folder against the release's (drift).
    fn process_drift(&self, live: &LiveRelease, pid: u32, found: &mut Found) {
        let config = self.config();
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return;
        };
        let undeployed = &mut found.undeployed;
        let running: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        // Without its OFREP key, which each deploy gets anew (and a rollback keeps).
        let vars = self.template_vars(
            &live.app,
            &live.env,
            &live.version,
            live.digest.as_str(),
            None,
        );
        let expected = self.exported_env(&live.env, &vars);
        let secrets: Vec<&String> = config
            .environment(&live.env)
            .map(|e| e.secrets.iter().collect())
            .unwrap_or_default();
        for (k, v) in &expected {
            match running.get(k) {
                Some(r) if r == v => {}
                Some(r) => {
                    let secret = shipgate_core::parity::is_secret(k, &[Some(r), Some(v)], &secrets);
                    if secret {
                        undeployed.push(format!(
                            "variable {k} of the running instance differs from the recorded one"
                        ));
                    } else {
                        undeployed.push(format!(
                            "variable {k} of the running instance is `{r}`, recorded `{v}`"
                        ));
                    }
                }
                None => {
                    undeployed.push(format!("variable {k} is missing from the running instance"))
                }
            }
        }
        let dir = self.artifacts.release_dir(&live.digest);
        if self.artifacts.layer_path(&live.digest).is_file() {
            // An image's instance is runc; the container, its child, has the image's rootfs as
            // its root.
            let rootfs = dir.join("rootfs");
            // (Its root reads as `/` from its own namespace: compared as a folder, by device
            // and inode.)
            use std::os::unix::fs::MetadataExt;
            let id = |m: std::fs::Metadata| (m.dev(), m.ino());
            let root = first_child(pid)
                .and_then(|child| std::fs::metadata(format!("/proc/{child}/root")).ok())
                .map(id);
            if let Some(root) = root
                && std::fs::metadata(&rootfs).ok().map(id) != Some(root)
            {
                found.drift.push(format!(
                    "the running instance's root is not the image's {} (it was changed or put back since it started)",
                    rootfs.display()
                ));
            }
        } else if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd"))
            && cwd != dir
        {
            found.drift.push(format!(
                "the running instance works in {}, not in the release directory {}",
                cwd.display(),
                dir.display()
            ));
        }
    }

    /// Scans every `drift_scan` while the engine lives.
    pub(crate) fn scan_drift_periodically(self: &Arc<Self>) {
        let Some(every) = self.config().server.drift_scan else {
            return;
        };
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.as_std());
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if let Err(e) = engine.scan_drift().await {
                    tracing::warn!("drift scan failed: {e}");
                }
            }
        });
    }

    /// Puts the recorded live release of `app` in `env` back as recorded: its release directory
    /// unpacked again from the artifact, then deployed again (no tests: it was verified).
    pub async fn heal(
        self: &Arc<Self>,
        app: &AppName,
        env: &EnvName,
        actor: &str,
    ) -> Result<Promotion, EngineError> {
        let live = self.live_record(app, env).await?.ok_or_else(|| {
            EngineError::NothingToRollBack(format!(
                "nothing of {app} is live in {env}, so there is nothing to heal"
            ))
        })?;
        let Found { drift, undeployed } = self.drift_of(&live).await;
        if drift.is_empty() {
            let config = if undeployed.is_empty() {
                String::new()
            } else {
                format!(
                    "; its config changed and is not deployed yet ({}): shipgate redeploy {app} --env {env} deploys it through {env}'s gates",
                    undeployed.join("; ")
                )
            };
            return Err(EngineError::NothingToHeal(format!(
                "{app}@{} in {env} has not drifted: it runs as recorded, so there is nothing to heal (shipgate drift {app} shows what is checked){config}",
                live.version
            )));
        }
        // Only a changed release directory is unpacked again; any other drift (the process,
        // the router, variables) is healed by the redeploy alone.
        let started_at = self.clock.now();
        let mut restored = None;
        if drift.iter().any(|d| d.starts_with("release directory")) {
            let artifacts = self.artifacts.clone();
            let digest = live.digest.clone();
            let aside = tokio::task::spawn_blocking(move || artifacts.restore_release_dir(&digest))
                .await
                .map_err(|e| {
                    EngineError::Artifact(shipgate_store::artifact::ArtifactError::Unreadable(
                        e.to_string(),
                    ))
                })??;
            restored = Some(match aside {
                Some(aside) => format!(
                    "the release directory was put back from the artifact; what had drifted in it was moved to {} (delete it when you have looked)",
                    aside.display()
                ),
                None => {
                    "the release directory was missing; it was unpacked again from the artifact"
                        .to_owned()
                }
            });
        }
        let release = self
            .registered(&ReleaseRef {
                app: app.clone(),
                version: live.version.clone(),
            })
            .await?;
        let promotion = self
            .request(release, env, PromotionKind::Redeploy, actor, None)
            .await?;
        let output = restored.unwrap_or_else(|| {
            format!(
                "only the running side drifted ({}); the release directory is as recorded",
                drift.join("; ")
            )
        });
        self.gate(&promotion, HEAL_GATE, true, output, started_at)
            .await?;
        Ok(promotion)
    }
}

/// What differs from the record of a live release: drift, and the variables the config changed
/// since its instance started (a change not deployed yet, not drift).
#[derive(Default)]
struct Found {
    drift: Vec<String>,
    undeployed: Vec<String>,
}

/// A child of process `pid` (any of its threads may have started it), if it has one.
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .next()
}
