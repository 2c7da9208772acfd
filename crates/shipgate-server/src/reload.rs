//! Reloading the config without a dropped request: `shipgate reload` (`POST /api/v1/reload`),
//! SIGHUP, or the file changing on disk. The new file is validated first; an invalid one leaves
//! the running config in place, and says why. A valid one is reported change by change, then the
//! server hands over to a fresh start of itself on it (the same process, `exec`): the data plane
//! lives in the agent, which keeps serving, and the new start adopts every instance and standby
//! there, so no request drops and no instance restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shipgate_core::Config;
use shipgate_core::PromotionState;
use shipgate_core::config::DataPlane;
use shipgate_engine::Engine;
use shipgate_store::PromotionFilter;

/// Reads and validates the config file: the config, or its problems, rendered.
pub type Loader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// How often the file is looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A reload asked for, and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file says what runs already.
    Unchanged,
    /// These changes are applied now: the server starts again on the new file.
    Applying(Vec<String>),
}

/// Why a reload was not done; the running config stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReloaded {
    /// The file is invalid (its problems, as `validate` prints them).
    Invalid(String),
    /// It cannot be applied now or at all (why).
    Refused(String),
}

/// Reloads a running server from elsewhere (a signal handler).
#[derive(Clone)]
pub struct Handle {
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) engine: Arc<Engine>,
}

impl Handle {
    /// As [`crate::Server::reload`].
    pub async fn reload(&self) -> Result<Reload, NotReloaded> {
        self.reloader.reload(&self.engine).await
    }
}

/// What the server needs to reload.
pub(crate) struct Reloader {
    loader: Option<Loader>,
    asked: AtomicBool,
    now: tokio::sync::Notify,
}

impl Reloader {
    pub(crate) fn new(loader: Option<Loader>) -> Arc<Reloader> {
        Arc::new(Reloader {
            loader,
            asked: AtomicBool::new(false),
            now: tokio::sync::Notify::new(),
        })
    }

    /// Whether a reload ended the server.
    pub(crate) fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// Resolves when a reload has been decided.
    pub(crate) async fn decided(&self) {
        let notified = self.now.notified();
        if self.asked() {
            return;
        }
        notified.await;
    }

    /// Validates the file and, if it changes something that can be applied, starts the
    /// hand-over.
    pub(crate) async fn reload(&self, engine: &Engine) -> Result<Reload, NotReloaded> {
        let Some(loader) = &self.loader else {
            return Err(NotReloaded::Refused(
                "this server was not started from a config file (`shipgate server`), so there is nothing to reload".into(),
            ));
        };
        let new = loader().map_err(NotReloaded::Invalid)?;
        // On-demand environments come from the store, not the file: they carry over.
        let old = &engine.config().configured();
        if let Some(why) = shipgate_core::reload::refused(old, &new) {
            return Err(NotReloaded::Refused(why));
        }
        let changes = shipgate_core::reload::changes(old, &new);
        if changes.is_empty() {
            // A secrets_file may have changed under the same name: read again.
            let imported = engine
                .import_secrets_files()
                .await
                .map_err(|e| NotReloaded::Refused(e.to_string()))?;
            for line in &imported {
                tracing::info!("reload: {line}");
            }
            return Ok(Reload::Unchanged);
        }
        if old.server.data_plane == DataPlane::Server {
            return Err(NotReloaded::Refused(
                "with data_plane = \"server\" the routers live in the server, so starting it again on the new config would drop requests: restart it yourself, or use the default data_plane = \"agent\"".into(),
            ));
        }
        if engine.restoring() {
            return Err(NotReloaded::Refused(
                "the server is still starting the live releases again; reload when `shipgate status` answers without `restoring`".into(),
            ));
        }
        let in_flight = PromotionFilter {
            states: vec![PromotionState::Deploying, PromotionState::Verifying],
            ..Default::default()
        };
        let busy = engine
            .store()
            .promotions(in_flight)
            .await
            .map_err(|e| NotReloaded::Refused(e.to_string()))?;
        if !busy.is_empty() {
            let which: Vec<String> = busy
                .iter()
                .map(|p| {
                    format!(
                        "#{} {}@{} → {} ({})",
                        p.id, p.app, p.version, p.env, p.state
                    )
                })
                .collect();
            return Err(NotReloaded::Refused(format!(
                "a reload waits until no promotion is deploying or verifying: {}; pending ones carry on across it",
                which.join(", ")
            )));
        }
        for line in &changes {
            tracing::info!("reload: {line}");
        }
        self.asked.store(true, Ordering::Release);
        self.now.notify_waiters();
        Ok(Reload::Applying(changes))
    }

    /// Reloads whenever the file's text changes (until the server stops). An invalid file is
    /// said once per text; a reload that must wait is tried again each second.
    pub(crate) fn watch(self: &Arc<Self>, engine: Arc<Engine>, path: std::path::PathBuf) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = std::fs::read(&path).ok();
            let mut said: Option<String> = None;
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if me.asked() {
                    return;
                }
                let now = std::fs::read(&path).ok();
                if now.is_none() || now == seen {
                    continue;
                }
                match me.reload(&engine).await {
                    Ok(Reload::Unchanged) => seen = now,
                    Ok(Reload::Applying(_)) => return,
                    Err(NotReloaded::Invalid(problems)) => {
                        if said.as_deref() != Some(problems.as_str()) {
                            tracing::error!(
                                "{} changed but is invalid; the running config stays:\n{problems}",
                                path.display()
                            );
                            said = Some(problems);
                        }
                    }
                    Err(NotReloaded::Refused(why)) => {
                        if said.as_deref() != Some(why.as_str()) {
                            tracing::warn!("{} changed: {why}", path.display());
                            said = Some(why);
                        }
                    }
                }
            }
        });
    }
}
