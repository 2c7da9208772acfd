//! `server.retention`: old artifacts, release directories and idle logs go, per app, never one
//! that is live, a standby, where a rollback would go, or part of a promotion in progress.
//! Records stay: history is never rewritten, and registering the same file again brings a
//! pruned release back. Artifacts that no release refers to go too.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shipgate_api::answers::{GcReport, KeptRelease, OrphanArtifact, PrunedLog, PrunedRelease};
use shipgate_core::{Digest, PromotionState, Version};
use shipgate_store::artifact::ArtifactError;
use shipgate_store::{NewEvent, PromotionFilter, Release};

use crate::{Engine, EngineError, locked};

/// How often retention runs by itself.
const GC_EVERY: Duration = Duration::from_secs(3600);

impl Engine {
    /// Removes what `server.retention` no longer keeps (with `dry_run`, only says what would
    /// go). Each pruned release is an audit event by `actor`.
    pub async fn gc(&self, dry_run: bool, actor: &str) -> Result<GcReport, EngineError> {
        let keep = self.config().server.retention;
        // No promotion is recorded meanwhile (a dry run changes nothing, so it needs no lock).
        let _alone = if dry_run {
            None
        } else {
            Some(self.pruning.write().await)
        };
        let protected = self.protected_releases().await?;
        let mut report = GcReport {
            dry_run,
            releases: Vec::new(),
            logs: Vec::new(),
            kept: Vec::new(),
            orphans: Vec::new(),
            freed_bytes: 0,
        };
        let all = self.store.releases(None).await?;
        // A digest stays while any release kept on disk has it (the same file under two
        // versions or apps is stored once).
        let mut digests_kept: HashSet<Digest> = HashSet::new();
        let mut candidates = Vec::new();
        for app in &self.config().apps {
            // Newest first.
            for (i, r) in all.iter().filter(|r| r.app == app.name).enumerate() {
                let why = protected
                    .get(&(r.app.to_string(), r.version.clone()))
                    .cloned()
                    .unwrap_or_default();
                if i < keep.releases {
                    digests_kept.insert(r.digest.clone());
                } else if !why.is_empty() {
                    digests_kept.insert(r.digest.clone());
                    report.kept.push(KeptRelease {
                        app: r.app.clone(),
                        version: r.version.clone(),
                        why,
                    });
                } else if self.artifacts.has(&r.digest)
                    || (self.store.is_shared()
                        && self.store.artifact_chunks(&r.digest).await?.is_some())
                {
                    candidates.push(r.clone());
                }
            }
        }
        let mut removed: HashSet<Digest> = HashSet::new();
        for r in candidates {
            if digests_kept.contains(&r.digest) {
                continue;
            }
            let bytes = if removed.contains(&r.digest) {
                0
            } else if dry_run {
                self.artifacts.size_on_disk(&r.digest)
            } else {
                let artifacts = self.artifacts.clone();
                let digest = r.digest.clone();
                let freed = tokio::task::spawn_blocking(move || artifacts.remove(&digest))
                    .await
                    .map_err(|e| shipgate_store::artifact::ArtifactError::Io {
                        context: "removing a release".into(),
                        source: std::io::Error::other(e),
                    })??;
                // Shared by several servers: gone from the database too.
                if self.store.is_shared() {
                    self.store.remove_artifact(&r.digest).await?;
                }
                freed
            };
            if !dry_run {
                self.store
                    .append_event(NewEvent {
                        actor: actor.to_owned(),
                        kind: shipgate_core::EventKind::ReleasePruned,
                        app: Some(r.app.to_string()),
                        env: None,
                        promotion_id: None,
                        message: format!(
                            "{}@{}'s artifact and directory were removed by retention (server.retention.releases = {}); registering the same file again brings it back",
                            r.app, r.version, keep.releases
                        ),
                        data: serde_json::json!({ "version": r.version, "digest": r.digest, "bytes": bytes }),
                    })
                    .await?;
            }
            removed.insert(r.digest.clone());
            report.freed_bytes += bytes;
            report.releases.push(PrunedRelease {
                app: r.app,
                version: r.version,
                digest: r.digest,
                bytes,
            });
        }
        report.orphans = self.prune_orphans(&all, dry_run).await?;
        // Image layers no image still on disk uses (a layer shared with a kept one stays).
        let kept: std::collections::BTreeSet<Digest> = all
            .iter()
            .map(|r| r.digest.clone())
            .filter(|d| !removed.contains(d))
            .collect();
        let artifacts = self.artifacts.clone();
        let layers = blocking("pruning image layers", move || {
            artifacts.prune_layers(&kept, dry_run)
        })
        .await?;
        report.orphans.extend(
            layers
                .into_iter()
                .map(|(digest, bytes)| OrphanArtifact { digest, bytes }),
        );
        report.freed_bytes += report.orphans.iter().map(|o| o.bytes).sum::<u64>();
        report.logs = self.prune_logs(keep.logs.as_std(), dry_run).await;
        report.freed_bytes += report.logs.iter().map(|l| l.bytes).sum::<u64>();
        Ok(report)
    }

    /// Releases that must stay on disk, with why: live, a standby, where a rollback would go,
    /// or in a promotion not finished.
    async fn protected_releases(
        &self,
    ) -> Result<BTreeMap<(String, Version), Vec<String>>, EngineError> {
        let mut why: BTreeMap<(String, Version), Vec<String>> = BTreeMap::new();
        let mut add = |app: &str, version: &Version, reason: String| {
            why.entry((app.to_owned(), version.clone()))
                .or_default()
                .push(reason);
        };
        let mut live_now = self.store.live(None).await?;
        // In pipeline order, as people read the environments.
        live_now.sort_by_key(|l| {
            self.config()
                .environments
                .iter()
                .position(|e| e.name == l.env)
        });
        let verified = self
            .store
            .promotions(crate::flow::rollback_history(Vec::new()))
            .await?;
        for live in live_now {
            add(
                live.app.as_str(),
                &live.version,
                format!("live in {}", live.env),
            );
            if let Ok(target) = crate::flow::rollback_choice(&verified, &live, None) {
                add(
                    live.app.as_str(),
                    &target.version,
                    format!("where a rollback of {} goes", live.env),
                );
            }
        }
        let standbys: Vec<_> = locked(&self.standby)
            .iter()
            .map(|(slot, s)| (slot.clone(), s.live.version.clone()))
            .collect();
        for ((app, env), version) in standbys {
            add(app.as_str(), &version, format!("standby in {env}"));
        }
        let unfinished = self
            .store
            .promotions(PromotionFilter {
                states: PromotionState::UNFINISHED.to_vec(),
                ..PromotionFilter::default()
            })
            .await?;
        for p in unfinished {
            add(
                p.app.as_str(),
                &p.version,
                format!("promotion {} in progress", p.id),
            );
        }
        Ok(why)
    }

    /// The artifacts of the data dir that none of `releases` refers to, removed unless
    /// `dry_run`. The caller holds `pruning` for writing, so no release being registered is
    /// among them. Their copies in a shared database stay: another server may be registering
    /// the same file right now, and a database copy without a release is only bytes.
    async fn prune_orphans(
        &self,
        releases: &[Release],
        dry_run: bool,
    ) -> Result<Vec<OrphanArtifact>, EngineError> {
        let referenced: HashSet<&Digest> = releases.iter().map(|r| &r.digest).collect();
        let artifacts = self.artifacts.clone();
        let on_disk = blocking("listing the artifacts", move || artifacts.on_disk()).await?;
        let mut orphans = Vec::new();
        for digest in on_disk.into_iter().filter(|d| !referenced.contains(d)) {
            let bytes = if dry_run {
                self.artifacts.size_on_disk(&digest)
            } else {
                let (artifacts, digest) = (self.artifacts.clone(), digest.clone());
                blocking("removing an artifact", move || artifacts.remove(&digest)).await?
            };
            orphans.push(OrphanArtifact { digest, bytes });
        }
        if !dry_run && !orphans.is_empty() {
            tracing::info!(
                "retention removed {} artifacts that no release refers to",
                orphans.len()
            );
        }
        Ok(orphans)
    }

    /// Log files under `data_dir/logs` not written for `idle`, except those of instances that
    /// run (live or standby).
    async fn prune_logs(&self, idle: Duration, dry_run: bool) -> Vec<PrunedLog> {
        let mut running: HashSet<std::path::PathBuf> = HashSet::new();
        for (slot, instance) in locked(&self.live).iter() {
            running.insert(self.log_path(slot, &instance.id));
        }
        for (slot, s) in locked(&self.standby).iter() {
            running.insert(self.log_path(slot, &s.instance.id));
        }
        let root = self.config().server.data_dir.join("logs");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let cutoff = SystemTime::now()
                .checked_sub(idle)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            idle_logs(&root, cutoff, &running, &mut out);
            if !dry_run {
                out.retain(|(path, _)| match std::fs::remove_file(path) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("retention could not remove {}: {e}", path.display());
                        false
                    }
                });
            }
            out.into_iter()
                .map(|(path, bytes)| PrunedLog {
                    path: path.display().to_string(),
                    bytes,
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Runs retention every [`GC_EVERY`] of the engine's clock while the engine lives.
    pub(crate) fn collect_garbage_periodically(self: &Arc<Self>) {
        self.every(GC_EVERY, |engine| async move {
            match engine.gc(false, crate::SYSTEM).await {
                Ok(r) if !r.releases.is_empty() || !r.logs.is_empty() => tracing::info!(
                    "retention removed {} releases and {} logs ({} bytes)",
                    r.releases.len(),
                    r.logs.len(),
                    r.freed_bytes
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("retention failed: {e}"),
            }
        });
    }
}

/// Runs `f`, which touches the disk, off the async threads.
async fn blocking<T: Send + 'static>(
    doing: &str,
    f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, EngineError> {
    let done = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArtifactError::Io {
            context: doing.to_owned(),
            source: std::io::Error::other(e),
        })??;
    Ok(done)
}

fn idle_logs(
    dir: &Path,
    cutoff: SystemTime,
    running: &HashSet<std::path::PathBuf>,
    out: &mut Vec<(std::path::PathBuf, u64)>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            idle_logs(&path, cutoff, running, out);
        } else if meta.is_file()
            && path.extension().is_some_and(|e| e == "log")
            && !running.contains(&path)
            && meta.modified().is_ok_and(|m| m < cutoff)
        {
            out.push((path, meta.len()));
        }
    }
}
