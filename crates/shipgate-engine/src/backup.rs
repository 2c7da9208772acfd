//! Backups of environments' data (`[apps.NAME.backup]`, `shipgate backup`), each proven by a
//! restore drill right after it is taken; retention; the schedule on the engine's clock;
//! `require.backup_within`; and the restore into an environment, by an admin with a reason.
//!
//! A backup is recorded `running` before its files are written into `backups/tmp/ID` under the
//! data dir, and moved to `backups/sha256/CHECKSUM` only once complete: a server killed
//! meanwhile leaves a `running` record and a temporary folder, which the next start marks
//! `interrupted` and removes, saying so in an event.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use shipgate_core::config::{BackupConfig, DataLocation};
use shipgate_core::{AppName, EnvName, EventKind};
use shipgate_mask::backup as data;
use shipgate_store::{BackupEnd, BackupRecord, NewBackup, NewEvent};

use crate::{Engine, EngineError, SYSTEM};

/// How often the schedule looks for a backup that is due.
const LOOK_EVERY: Duration = Duration::from_secs(30);

impl Engine {
    fn backups_dir(&self) -> PathBuf {
        self.config().server.data_dir.join("backups")
    }

    /// Where a taken backup's files are.
    pub fn backup_files(&self, b: &BackupRecord) -> Option<PathBuf> {
        b.checksum
            .as_ref()
            .map(|c| self.backups_dir().join("sha256").join(c))
    }

    /// Where `app`'s data lives in `env`, and its backup settings (defaults without
    /// `[apps.NAME.backup]`).
    fn backup_plan(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<(DataLocation, BackupConfig), EngineError> {
        let config = self.config();
        let app_config = config
            .app(app)
            .ok_or_else(|| EngineError::UnknownApp(app.to_string()))?;
        if config.environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        let location = app_config
            .data
            .as_ref()
            .and_then(|d| d.locations.get(env).cloned())
            .ok_or_else(|| {
                EngineError::DataRefused(format!(
                    "{app} has no data declared in {env}, so there is nothing to back up (add {env} = \"postgres://…\" or \"sqlite://…\" to [apps.{app}.data])"
                ))
            })?;
        let settings = app_config.backup.clone().unwrap_or(BackupConfig {
            envs: vec![],
            every: None,
            keep: None,
            keep_for: None,
            before_promotion: false,
            verify: vec![],
            jobs: 2,
        });
        Ok((location, settings))
    }

    /// Takes a backup of `app`'s data in `env` for `reason`, then proves it by a restore drill.
    /// Answers the record as it ended: `restorable`, `not_restorable` or `failed`.
    pub async fn take_backup(
        self: &Arc<Self>,
        app: &AppName,
        env: &EnvName,
        reason: &str,
    ) -> Result<BackupRecord, EngineError> {
        let (location, settings) = self.backup_plan(app, env)?;
        let source = match &location {
            DataLocation::Postgres(url) => DataLocation::redacted_url(url),
            DataLocation::Sqlite(path) => path.display().to_string(),
        };
        let record = self
            .store
            .start_backup(NewBackup {
                app: app.clone(),
                env: env.clone(),
                reason: reason.to_owned(),
                kind: data::kind_of(&location).to_owned(),
                source,
            })
            .await?;
        let tmp = self.backups_dir().join("tmp").join(record.id.to_string());
        let _ = std::fs::remove_dir_all(&tmp);
        let started = Instant::now();
        let taken = async {
            let (at, into, jobs) = (location.clone(), tmp.clone(), settings.jobs);
            let counts = off_thread(move || async move { data::take(&at, &into, jobs).await })
                .await
                .map_err(|e| shipgate_mask::MaskError::Unsupported(e.to_string()))??;
            let (checksum, size) = data::checksum(&tmp)?;
            let dest = self.backups_dir().join("sha256").join(&checksum);
            // The same bytes kept already (and still intact) serve both; a copy that changed
            // since is replaced.
            let intact =
                dest.exists() && data::checksum(&dest).is_ok_and(|(now, _)| now == checksum);
            if intact {
                std::fs::remove_dir_all(&tmp).ok();
            } else {
                if dest.exists() {
                    std::fs::remove_dir_all(&dest).ok();
                }
                std::fs::create_dir_all(self.backups_dir().join("sha256")).map_err(|e| {
                    shipgate_mask::MaskError::Io {
                        context: "making the backups folder".into(),
                        source: e,
                    }
                })?;
                std::fs::rename(&tmp, &dest).map_err(|e| shipgate_mask::MaskError::Io {
                    context: format!("keeping the backup in {}", dest.display()),
                    source: e,
                })?;
            }
            Ok::<_, shipgate_mask::MaskError>((counts, checksum, size))
        }
        .await;
        let took = started.elapsed().as_millis() as i64;
        let what = format!("backup {} of {app} in {env}", record.id);
        let record = match taken {
            Ok((counts, checksum, size)) => {
                let rows: i64 = counts.values().sum();
                let message = format!(
                    "{what} taken ({reason}): {} in {took} ms, {} tables, {rows} rows",
                    shipgate_core::ByteSize(size),
                    counts.len()
                );
                self.store
                    .finish_backup(
                        record.id,
                        BackupEnd::Taken {
                            checksum,
                            size: size as i64,
                            duration_ms: took,
                            counts,
                        },
                        self.backup_event(app, env, EventKind::BackupTaken, message, record.id),
                    )
                    .await?
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                let error = self.redactor(env).redact(&e.to_string());
                let message = format!("{what} failed ({reason}): {error}");
                return Ok(self
                    .store
                    .finish_backup(
                        record.id,
                        BackupEnd::Failed(error),
                        self.backup_event(app, env, EventKind::BackupFailed, message, record.id),
                    )
                    .await?);
            }
        };
        let record = self.drill_backup(&record).await?;
        self.prune_backups(app, env).await?;
        Ok(record)
    }

    /// Restores `b` into scratch and records whether it is restorable, with the figures.
    pub async fn drill_backup(&self, b: &BackupRecord) -> Result<BackupRecord, EngineError> {
        let (location, settings) = self.backup_plan(&b.app, &b.env)?;
        let (Some(dir), Some(checksum)) = (self.backup_files(b), b.checksum.as_ref()) else {
            return Err(EngineError::DataRefused(format!(
                "backup {} was never taken ({}), so there is nothing to drill",
                b.id, b.state
            )));
        };
        let (checksum, counts, scratch) = (
            checksum.clone(),
            b.counts.clone(),
            format!("shipgate_drill_{}", b.id),
        );
        let drill = off_thread(move || async move {
            data::drill(
                &location,
                &dir,
                &checksum,
                &counts,
                &settings.verify,
                settings.jobs,
                &scratch,
            )
            .await
        })
        .await?;
        let rows: i64 = drill.tables.iter().filter_map(|t| t.restored).sum();
        let (kind, message) = if drill.restorable {
            (
                EventKind::BackupRestorable,
                format!(
                    "backup {} of {} in {} is restorable: {} tables and {rows} rows restored as at its snapshot, {} verify queries passed, in {} ms",
                    b.id,
                    b.app,
                    b.env,
                    drill.tables.len(),
                    drill.queries.len(),
                    drill.took_ms
                ),
            )
        } else {
            (
                EventKind::BackupNotRestorable,
                format!(
                    "backup {} of {} in {} is NOT restorable: {}",
                    b.id,
                    b.app,
                    b.env,
                    drill.error.as_deref().unwrap_or("")
                ),
            )
        };
        let error = drill
            .error
            .clone()
            .map(|e| self.redactor(&b.env).redact(&e));
        let drill_json = serde_json::to_value(&drill).unwrap_or_default();
        Ok(self
            .store
            .finish_backup(
                b.id,
                BackupEnd::Drilled {
                    restorable: drill.restorable,
                    drill: drill_json,
                    error,
                },
                self.backup_event(&b.app, &b.env, kind, message, b.id),
            )
            .await?)
    }

    /// Replaces `app`'s data in the backup's environment with backup `id`. An admin asks, with
    /// a reason; refused while a promotion is in flight there, and for a backup not proven
    /// restorable.
    pub async fn restore_backup(
        self: &Arc<Self>,
        id: i64,
        actor: &str,
        reason: &str,
    ) -> Result<BackupRecord, EngineError> {
        let b = self.backup_record(id).await?;
        if b.state != "restorable" || b.pruned_at.is_some() {
            return Err(EngineError::DataRefused(format!(
                "backup {id} is {}{}; restore only a backup its drill proved restorable (shipgate backup list {} --env {})",
                b.state,
                if b.pruned_at.is_some() {
                    ", and retention removed its files"
                } else {
                    ""
                },
                b.app,
                b.env
            )));
        }
        if let Some(p) = self.in_flight(&b.app, &b.env).await? {
            return Err(EngineError::DataRefused(format!(
                "promotion {} of {}@{} is {} in {}; restore once it has ended (shipgate status {})",
                p.id, p.app, p.version, p.state, p.env, p.app
            )));
        }
        let (location, settings) = self.backup_plan(&b.app, &b.env)?;
        let dir = self.backup_files(&b).unwrap_or_default();
        let (now, _) = data::checksum(&dir).map_err(|e| EngineError::DataRefused(e.to_string()))?;
        if Some(&now) != b.checksum.as_ref() {
            return Err(EngineError::DataRefused(format!(
                "backup {id}'s files changed since it was taken; nothing was restored (take a new backup, or restore another one)"
            )));
        }
        let jobs = settings.jobs;
        off_thread(move || async move { data::restore(&location, &dir, jobs).await })
            .await?
            .map_err(|e| EngineError::DataRefused(format!("nothing was restored: {e}")))?;
        let rows: i64 = b.counts.values().sum();
        let event = self.backup_event(
            &b.app,
            &b.env,
            EventKind::BackupRestored,
            format!(
                "{actor} restored backup {id} of {} into {} ({rows} rows as at {}): {reason}",
                b.app, b.env, b.created_at
            ),
            id,
        );
        let event = NewEvent {
            actor: actor.to_owned(),
            ..event
        };
        self.store.append_event(event).await?;
        Ok(b)
    }

    /// One backup's record.
    pub async fn backup_record(&self, id: i64) -> Result<BackupRecord, EngineError> {
        self.store
            .backups(None, None)
            .await?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| {
                EngineError::DataRefused(format!(
                    "there is no backup {id} (shipgate backup list APP --env ENV)"
                ))
            })
    }

    /// The newest restorable backup of `app` in `env` whose files are kept.
    pub(crate) async fn newest_restorable(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<BackupRecord>, EngineError> {
        Ok(self
            .store
            .backups(Some(app), Some(env))
            .await?
            .into_iter()
            .find(|b| b.state == "restorable" && b.pruned_at.is_none()))
    }

    /// Removes the files retention no longer keeps (`keep`, `keep_for`); the newest restorable
    /// backup is always kept, and files another kept backup shares stay.
    async fn prune_backups(&self, app: &AppName, env: &EnvName) -> Result<(), EngineError> {
        let Some(settings) = self.config().app(app).and_then(|a| a.backup.clone()) else {
            return Ok(());
        };
        let all = self.store.backups(Some(app), Some(env)).await?;
        let newest_restorable = all.iter().find(|b| b.state == "restorable").map(|b| b.id);
        let now = self.clock.now();
        let mut kept = 0u32;
        let mut prune = Vec::new();
        for b in all
            .iter()
            .filter(|b| b.checksum.is_some() && b.pruned_at.is_none())
        {
            let too_old = settings.keep_for.is_some_and(|k| {
                b.created_at
                    .checked_add(k.as_std())
                    .is_ok_and(|until| until < now)
            });
            let too_many = settings.keep.is_some_and(|k| kept >= k);
            if Some(b.id) != newest_restorable && (too_old || too_many) {
                prune.push(b.clone());
            } else {
                kept += 1;
            }
        }
        let pruning: std::collections::HashSet<i64> = prune.iter().map(|b| b.id).collect();
        for b in prune {
            let shared = all.iter().any(|o| {
                !pruning.contains(&o.id) && o.pruned_at.is_none() && o.checksum == b.checksum
            });
            if !shared && let Some(dir) = self.backup_files(&b) {
                let _ = std::fs::remove_dir_all(dir);
            }
            let message = format!(
                "backup {} of {app} in {env} (taken {}) removed by retention",
                b.id, b.created_at
            );
            self.store
                .finish_backup(
                    b.id,
                    BackupEnd::Pruned,
                    self.backup_event(app, env, EventKind::BackupPruned, message, b.id),
                )
                .await?;
        }
        Ok(())
    }

    /// At start: a backup the last server left running is marked interrupted, its files gone.
    pub(crate) async fn interrupted_backups(&self) -> Result<(), EngineError> {
        for b in self.store.backups(None, None).await? {
            if b.state != "running" {
                continue;
            }
            let _ = std::fs::remove_dir_all(self.backups_dir().join("tmp").join(b.id.to_string()));
            let why = "the server stopped while it was being taken; its partial files were removed";
            let message = format!(
                "backup {} of {} in {} was interrupted: {why} (take another: shipgate backup create {} --env {})",
                b.id, b.app, b.env, b.app, b.env
            );
            self.store
                .finish_backup(
                    b.id,
                    BackupEnd::Interrupted(why.to_owned()),
                    self.backup_event(&b.app, &b.env, EventKind::BackupInterrupted, message, b.id),
                )
                .await?;
        }
        Ok(())
    }

    /// Takes the backups `every` makes due, on the engine's clock.
    pub(crate) fn back_up_periodically(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                let Some(e) = engine.upgrade() else { return };
                if let Err(err) = e.take_due_backups().await {
                    tracing::warn!("backups: {err}");
                }
                drop(e);
                clock
                    .sleep_until(crate::clock::after(clock.now(), LOOK_EVERY))
                    .await;
            }
        });
    }

    /// Takes each scheduled backup whose newest one (of any outcome) is `every` old.
    pub async fn take_due_backups(self: &Arc<Self>) -> Result<(), EngineError> {
        let config = self.config();
        let now = self.clock.now();
        for app in &config.apps {
            let Some(settings) = &app.backup else {
                continue;
            };
            let Some(every) = settings.every else {
                continue;
            };
            for env in &settings.envs {
                let all = self.store.backups(Some(&app.name), Some(env)).await?;
                let older = |b: &BackupRecord, d: Duration| {
                    b.created_at.checked_add(d).is_ok_and(|at| at <= now)
                };
                // Due `every` after the last one taken; one that failed is tried again after
                // five minutes (or `every`, if shorter), not at each look.
                let taken = all.iter().find(|b| b.checksum.is_some());
                let tried = all.first();
                let retry = every.as_std().min(Duration::from_secs(300));
                let due = taken.is_none_or(|b| older(b, every.as_std()))
                    && tried.is_none_or(|b| b.checksum.is_some() || older(b, retry));
                if due {
                    self.take_backup(&app.name, env, "schedule").await?;
                }
            }
        }
        Ok(())
    }

    /// With `require.backup_within`: what `p` still misses to enter, or None. An app without
    /// data there needs none; where `before_promotion` is set, the promotion takes its own
    /// before the switch, so nothing is waited for here.
    pub(crate) async fn backup_missing(
        &self,
        p: &shipgate_store::Promotion,
        within: Duration,
    ) -> Result<Option<String>, EngineError> {
        let Ok((_, settings)) = self.backup_plan(&p.app, &p.env) else {
            return Ok(None);
        };
        if settings.before_promotion && settings.envs.contains(&p.env) {
            return Ok(None);
        }
        let newest = self.newest_restorable(&p.app, &p.env).await?;
        if newest
            .as_ref()
            .is_some_and(|b| fresh_enough(b, within, self.clock.now()))
        {
            return Ok(None);
        }
        let within = shipgate_core::Duration::from_std(within);
        let newest = match newest {
            Some(b) => format!("the newest, backup {}, was taken at {}", b.id, b.created_at),
            None => "there is none".to_owned(),
        };
        Ok(Some(format!(
            "no restorable backup of {} in {} taken within {within} ({newest}); take one: shipgate backup create {} --env {}",
            p.app, p.env, p.app, p.env
        )))
    }

    /// How old the newest restorable backup of `app` in `env` is (None: there is none).
    pub(crate) async fn backup_age(&self, app: &AppName, env: &EnvName) -> Option<Duration> {
        let newest = self.newest_restorable(app, env).await.ok().flatten()?;
        Duration::try_from(self.clock.now().duration_since(newest.created_at)).ok()
    }

    fn backup_event(
        &self,
        app: &AppName,
        env: &EnvName,
        kind: EventKind,
        message: String,
        id: i64,
    ) -> NewEvent {
        NewEvent {
            actor: SYSTEM.into(),
            kind,
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            promotion_id: None,
            message,
            data: serde_json::json!({ "backup": id }),
        }
    }
}

/// Runs `work` on a thread and runtime of its own: the database clients hold connections across
/// awaits in ways that are not `Send`, as the data refresh's do.
pub(crate) async fn off_thread<T, F, Fut>(work: F) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let _ = tx.send(rt.block_on(work()));
            }
            Err(e) => tracing::error!("could not start a runtime for the data work: {e}"),
        }
    });
    rx.await
        .map_err(|_| EngineError::DataRefused("the data work stopped before it answered".into()))
}

/// When a backup older than `within` no longer counts.
pub(crate) fn fresh_enough(b: &BackupRecord, within: Duration, now: Timestamp) -> bool {
    b.created_at
        .checked_add(within)
        .is_ok_and(|until| until >= now)
}
