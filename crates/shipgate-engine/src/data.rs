//! Staging data refreshed from production with masking (`shipgate data refresh`) and the leak
//! check on demand (`shipgate data check`). The copy runs on a thread of its own and reports
//! progress; its outcome is an audit event with the row counts.

pub use shipgate_api::data::DataMessage;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use shipgate_core::config::{DataConfig, DataLocation};
use shipgate_core::mask::MaskKey;
use shipgate_core::{AppName, EnvName, Grant, Role};
use shipgate_mask::LeakReport;
use shipgate_store::NewEvent;
use tokio::sync::mpsc;

use crate::{Engine, EngineError};

/// The masking key's file in the data dir.
pub const MASK_KEY_FILE: &str = "mask.key";

impl Engine {
    fn data_of(&self, app: &AppName) -> Result<DataConfig, EngineError> {
        let config = self.config();
        let config = config
            .app(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        config.data.clone().ok_or_else(|| {
            EngineError::DataRefused(format!(
                "app {app} has no [apps.{app}.data] section saying where its data lives"
            ))
        })
    }

    fn location(
        data: &DataConfig,
        app: &AppName,
        env: &EnvName,
    ) -> Result<DataLocation, EngineError> {
        data.locations.get(env).cloned().ok_or_else(|| {
            EngineError::DataRefused(format!(
                "[apps.{app}.data] says nothing about {env}: add {env} = \"sqlite://PATH\" or \"postgres://...\""
            ))
        })
    }

    /// The project's masking key, made on first use (32 random bytes, mode 0600).
    fn mask_key(&self) -> Result<MaskKey, EngineError> {
        let path = self.config().server.data_dir.join(MASK_KEY_FILE);
        let failed = |e: std::io::Error| {
            EngineError::DataRefused(format!("the masking key {}: {e}", path.display()))
        };
        if !path.exists() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| failed(std::io::Error::other(e.to_string())))?;
            // Written whole beside it, then linked into place: two refreshes making the key at
            // once both end up with the one that was linked first, and none reads half a key.
            let written = path.with_extension(format!("key.{}", hex::encode(&bytes[..8])));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&written)
                .map_err(failed)?;
            writeln!(file, "{}", hex::encode(bytes)).map_err(failed)?;
            file.sync_all().map_err(failed)?;
            let linked = std::fs::hard_link(&written, &path);
            let _ = std::fs::remove_file(&written);
            match linked {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(failed(e)),
                _ => {}
            }
        }
        let text = std::fs::read_to_string(&path).map_err(failed)?;
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                EngineError::DataRefused(format!(
                    "the masking key {} is not 64 hex digits",
                    path.display()
                ))
            })?;
        Ok(MaskKey::new(bytes))
    }

    /// Starts refreshing `to` from `from` with `app`'s masking rules; refused (before anything
    /// is read) unless `grant` has the data role, both environments are in its scope, and `to`
    /// comes before `from` in the flow: data only ever flows from production towards
    /// development, and the source is only read.
    pub fn refresh_data(
        self: &Arc<Self>,
        app: &AppName,
        from: &EnvName,
        to: &EnvName,
        grant: &Grant,
    ) -> Result<mpsc::UnboundedReceiver<DataMessage>, EngineError> {
        let data = self.data_of(app)?;
        let holds = |role| grant.has_role(role, Some(from)) && grant.has_role(role, Some(to));
        if !holds(Role::Admin) && !holds(data.role) {
            return Err(EngineError::DataRefused(format!(
                "token `{}` has the role {}; refreshing data needs the role {} (or admin)",
                grant.name, grant.role, data.role
            )));
        }
        if !self.comes_before(to, from) {
            return Err(EngineError::DataRefused(format!(
                "data flows only towards earlier environments: {to} does not come before {from} (refresh staging from production, never the other way)"
            )));
        }
        self.copy_masked(app, from, to, &grant.name)
    }

    /// Copies `app`'s data from `from` into `to` with its masking rules, on a thread of its
    /// own, recording the outcome as an event by `actor`; the caller checked that it may.
    pub(crate) fn copy_masked(
        self: &Arc<Self>,
        app: &AppName,
        from: &EnvName,
        to: &EnvName,
        actor: &str,
    ) -> Result<mpsc::UnboundedReceiver<DataMessage>, EngineError> {
        let data = self.data_of(app)?;
        let (source, target) = (
            Self::location(&data, app, from)?,
            Self::location(&data, app, to)?,
        );
        let key = self.mask_key()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Arc::clone(self);
        let (app, from, to, actor) = (app.clone(), from.clone(), to.clone(), actor.to_owned());
        // The copy holds database connections across awaits that are not `Send`: it gets a
        // thread and a runtime of its own.
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = tx.send(DataMessage::Failed("could not start the refresh".into()));
                return;
            };
            rt.block_on(async {
                let progress = tx.clone();
                let report = |p| {
                    let _ = progress.send(DataMessage::Progress(p));
                };
                let outcome = match (&source, &target) {
                    (DataLocation::Sqlite(s), DataLocation::Sqlite(t)) => {
                        shipgate_mask::refresh_sqlite(s, t, &data, &key, report).await
                    }
                    (DataLocation::Postgres(s), DataLocation::Postgres(t)) => {
                        shipgate_mask::refresh_postgres(s, t, &data, &key, report).await
                    }
                    _ => Err(shipgate_mask::MaskError::Unsupported(
                        "both environments' data must be SQLite, or both PostgreSQL".into(),
                    )),
                };
                let (kind, message, json, done) = match outcome {
                    Ok(report) => {
                        let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
                        (
                            shipgate_core::EventKind::DataRefreshed,
                            format!("{actor} refreshed {app} data in {to} from {from}: {rows} rows in {} tables, masked, no leak", report.tables.len()),
                            serde_json::to_value(&report).unwrap_or_default(),
                            DataMessage::Done(report),
                        )
                    }
                    Err(e) => (
                        shipgate_core::EventKind::DataRefreshFailed,
                        format!("{actor}'s refresh of {app} data in {to} from {from} failed; {to} keeps its previous data: {e}"),
                        serde_json::json!({ "error": e.to_string() }),
                        DataMessage::Failed(e.to_string()),
                    ),
                };
                let event = NewEvent {
                    actor: actor.clone(),
                    kind,
                    app: Some(app.to_string()),
                    env: Some(to.to_string()),
                    promotion_id: None,
                    message,
                    data: json,
                };
                if let Err(e) = engine.store.append_event(event).await {
                    tracing::error!("could not record a data refresh: {e}");
                }
                let _ = tx.send(done);
            });
        });
        Ok(rx)
    }

    /// Compares the masked columns of `env` with the environment its data comes from.
    pub async fn check_data(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<(EnvName, LeakReport), EngineError> {
        let data = self.data_of(app)?;
        let from = self
            .config()
            .environments
            .iter()
            .rev()
            .map(|e| &e.name)
            .find(|e| *e != env && data.locations.contains_key(*e) && self.comes_before(env, e))
            .cloned()
            .ok_or_else(|| {
                EngineError::DataRefused(format!(
                    "no environment after {env} holds {app} data to compare with"
                ))
            })?;
        let (source, target) = (
            Self::location(&data, app, &from)?,
            Self::location(&data, app, env)?,
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        match (&source, &target) {
                            (DataLocation::Sqlite(s), DataLocation::Sqlite(t)) => {
                                shipgate_mask::check_sqlite(s, t, &data).await
                            }
                            (DataLocation::Postgres(s), DataLocation::Postgres(t)) => {
                                shipgate_mask::check_postgres(s, t, &data).await
                            }
                            _ => Err(shipgate_mask::MaskError::Unsupported(
                                "both environments' data must be SQLite, or both PostgreSQL".into(),
                            )),
                        }
                    })
                    .map_err(|e| e.to_string())
                });
            let _ = tx.send(outcome);
        });
        let report = rx
            .await
            .map_err(|e| EngineError::DataRefused(e.to_string()))?
            .map_err(EngineError::DataRefused)?;
        Ok((from, report))
    }

    /// Whether `a` comes before `b` in the flow (`b` is reached from `a` by `after`).
    fn comes_before(&self, a: &EnvName, b: &EnvName) -> bool {
        let config = self.config();
        let mut at = config.environment(b).and_then(|e| e.after.as_ref());
        while let Some(env) = at {
            if env == a {
                return true;
            }
            at = config.environment(env).and_then(|e| e.after.as_ref());
        }
        false
    }
}
