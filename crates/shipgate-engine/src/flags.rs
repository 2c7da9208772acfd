//! Feature flags at run time: each environment's state of each declared flag, changed by a
//! deployer of that environment with an audit event, evaluated for OFREP clients, and the
//! client keys that select an environment (one of them made for the instances themselves).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::Digest as _;
use shipgate_core::Verdict;
use shipgate_core::flag::{self, EvalError, Evaluation, FlagConfig, FlagRefusal, FlagState};
use shipgate_core::gate::{Decision, DecisionAsk, Stage, check_decision, counted_approvers};
use shipgate_core::{AppName, EnvName, EventKind, Grant};
use shipgate_store::{
    FlagChange, FlagChangeRecord, FlagChangeStatus, FlagDecision, FlagKeyRecord, NewEvent,
};

use shipgate_core::config::WatchRule;
use shipgate_core::gate::{WatchFigures, WatchVerdict, judge};

use std::sync::Arc;

use shipgate_core::Config;

use crate::traffic::Counters;
use crate::{Engine, EngineError};

/// The shared secret from which each environment's instance key is derived.
const INSTANCE_SECRET: &str = "flags.instance_secret";
/// How a flag key starts: `sgf_` for keys people make, `sgfi_ENV_` for the instances'.
const KEY_PREFIX: &str = "sgf_";
const INSTANCE_PREFIX: &str = "sgfi_";

/// The actor of a revert by the watch.
const WATCH: &str = "watch";
/// How often the figures are looked at while a flag change is watched.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A flag change being watched.
struct Change {
    env: EnvName,
    app: AppName,
    key: String,
    before: FlagState,
    after: FlagState,
}

/// Each environment's flags as last read, with the config they were read under, and keys
/// already checked. Any flag change (here or, through the event log, on another server) drops
/// it; `generation` counts the drops, so a read that began before one is not kept.
#[derive(Default)]
pub(crate) struct Cache {
    generation: u64,
    envs: std::collections::HashMap<EnvName, (Arc<Config>, Arc<Flags>)>,
    keys: std::collections::HashMap<String, EnvName>,
}

/// Every flag of an environment, as evaluated by OFREP.
pub struct Flags {
    /// The environment.
    pub env: EnvName,
    /// Every declared flag with the app that declares it and its state there (off when
    /// never set).
    pub flags: BTreeMap<String, (AppName, FlagConfig, FlagState)>,
    /// [`Flags::etag`], worked out once.
    etag: std::sync::OnceLock<String>,
}

impl Flags {
    /// Evaluates `key` for `context`; None when no app declares it.
    pub fn evaluate(
        &self,
        key: &str,
        context: &Map<String, Value>,
    ) -> Option<Result<Evaluation, EvalError>> {
        let (_, config, state) = self.flags.get(key)?;
        Some(flag::evaluate(config, state, context))
    }

    /// A tag that changes whenever a flag or its declaration does (the bulk answer's ETag).
    pub fn etag(&self) -> &str {
        self.etag.get_or_init(|| self.work_out_etag())
    }

    fn work_out_etag(&self) -> String {
        let mut hash = sha2::Sha256::new();
        for (key, (_, config, state)) in &self.flags {
            hash.update(key.as_bytes());
            hash.update(serde_json::to_string(&config.variants).unwrap_or_default());
            hash.update(config.default_variant.as_bytes());
            hash.update(serde_json::to_string(state).unwrap_or_default());
            hash.update([0]);
        }
        format!("\"{}\"", &hex::encode(hash.finalize())[..32])
    }
}

/// What a flag change came to.
#[derive(Debug, Clone)]
pub enum FlagOutcome {
    /// It is in force (or, for a dry run, nothing was asked).
    Applied,
    /// It waits for approvals.
    Waiting(FlagChangeRecord),
}

/// `key: before -> after; ...`.
fn describe(changes: &[FlagChange]) -> String {
    changes
        .iter()
        .map(|c| format!("{}: {} -> {}", c.flag, c.before, c.after))
        .collect::<Vec<_>>()
        .join("; ")
}

fn random_hex(bytes: usize) -> Result<String, EngineError> {
    shipgate_core::secret::random_hex(bytes).map_err(EngineError::DataPlane)
}

impl Engine {
    /// The flags every app declares, by key, with the app. Keys are unique across apps (the
    /// config refuses one declared twice).
    fn declared_flags(&self) -> BTreeMap<String, (AppName, FlagConfig)> {
        self.config()
            .apps
            .iter()
            .flat_map(|a| {
                a.flags
                    .values()
                    .map(|f| (f.key.clone(), (a.name.clone(), f.clone())))
            })
            .collect()
    }

    /// Every declared flag of `env` with its state there, from the cache when nothing changed
    /// since it was read.
    pub async fn cached_flags(&self, env: &EnvName) -> Result<Arc<Flags>, EngineError> {
        let config = self.config();
        let generation = {
            let cache = crate::locked(&self.flag_cache);
            if let Some((seen, flags)) = cache.envs.get(env)
                && Arc::ptr_eq(seen, &config)
            {
                return Ok(flags.clone());
            }
            cache.generation
        };
        let flags = Arc::new(self.flags_of(env).await?);
        let mut cache = crate::locked(&self.flag_cache);
        if cache.generation == generation {
            cache.envs.insert(env.clone(), (config, flags.clone()));
        }
        Ok(flags)
    }

    /// Drops what the cache holds, after a change of flags or keys.
    fn forget_flags(&self) {
        let mut cache = crate::locked(&self.flag_cache);
        cache.generation += 1;
        cache.envs.clear();
        cache.keys.clear();
    }

    /// Drops the cache on every flag and key event, this server's or another's.
    pub(crate) fn forget_flags_on_change(self: &Arc<Self>) {
        let mut events = self.store.subscribe();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let changed = match events.recv().await {
                    Ok(e) => matches!(
                        e.kind,
                        EventKind::FlagChanged
                            | EventKind::FlagKeyCreated
                            | EventKind::FlagKeyRevoked
                    ),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                if changed {
                    engine.forget_flags();
                }
            }
        });
    }

    /// Every declared flag of `env` with its state there.
    pub async fn flags_of(&self, env: &EnvName) -> Result<Flags, EngineError> {
        let mut set: BTreeMap<String, FlagState> = self
            .store
            .flags(Some(env))
            .await?
            .into_iter()
            .map(|r| (r.flag, r.state))
            .collect();
        let flags = self
            .declared_flags()
            .into_iter()
            .map(|(key, (app, config))| {
                let state = set.remove(&key).unwrap_or_default();
                (key, (app, config, state))
            })
            .collect();
        Ok(Flags {
            env: env.clone(),
            flags,
            etag: std::sync::OnceLock::new(),
        })
    }

    /// Sets `flag` of `app` in `env` to `state`, as `grant` (the caller checked that it may
    /// change `env`), with a `flag.changed` event; see [`Engine::change_flags`] for what
    /// waits.
    pub async fn set_flag(
        self: &Arc<Self>,
        grant: &Grant,
        env: &EnvName,
        app: &AppName,
        key: &str,
        state: FlagState,
    ) -> Result<FlagOutcome, EngineError> {
        let config = self.config();
        if config.environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        let Some(app_config) = config.app(app) else {
            return Err(EngineError::UnknownApp(app.to_string()));
        };
        let Some(declared) = app_config.flags.get(key) else {
            return Err(EngineError::UnknownFlag(format!(
                "app `{app}` declares no flag `{key}`; declare it first ([apps.{app}.flags.{key}] with type and default){}",
                if app_config.flags.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; its flags are {}",
                        app_config
                            .flags
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        };
        flag::check(declared, &state).map_err(|e| match e {
            FlagRefusal::Malformed(why) => EngineError::Flag(why),
            unknown @ FlagRefusal::UnknownVariant { .. } => {
                EngineError::UnknownVariant(unknown.to_string())
            }
        })?;
        let before = self.flag_state(env, key).await?;
        let message = format!("flag {app}/{key} in {env}: {before} -> {state}");
        let change = FlagChange {
            flag: key.to_owned(),
            before,
            after: state,
        };
        self.change_flags(grant, env, app, vec![change], message)
            .await
    }

    /// The state of flag `key` in `env` (off when never set).
    async fn flag_state(&self, env: &EnvName, key: &str) -> Result<FlagState, EngineError> {
        Ok(self
            .store
            .flags(Some(env))
            .await?
            .into_iter()
            .find(|r| r.flag == key)
            .map(|r| r.state)
            .unwrap_or_default())
    }

    /// Gives `to` the states of `app`'s flags (or of `only`) that `from` has, as one change
    /// with one event; each change is watched as `flag set` is. Answers what differed, and
    /// the change waiting for approvals when `to` requires them.
    pub async fn promote_flags(
        self: &Arc<Self>,
        grant: &Grant,
        app: &AppName,
        from: &EnvName,
        to: &EnvName,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<(Vec<FlagChange>, FlagOutcome), EngineError> {
        let config = self.config();
        for env in [from, to] {
            if config.environment(env).is_none() {
                return Err(EngineError::UnknownEnvironment(env.to_string()));
            }
        }
        if let Some(key) = only
            && !config.app(app).is_some_and(|a| a.flags.contains_key(key))
        {
            return Err(EngineError::UnknownFlag(format!(
                "app `{app}` declares no flag `{key}`"
            )));
        }
        let source = self.flags_of(from).await?.flags;
        let mut target = self.flags_of(to).await?.flags;
        let changes: Vec<FlagChange> = source
            .into_iter()
            .filter(|(key, (owner, _, _))| owner == app && only.is_none_or(|k| k == key))
            .filter_map(|(flag, (_, _, after))| {
                let before = target.remove(&flag).map(|(_, _, s)| s).unwrap_or_default();
                (before != after).then_some(FlagChange {
                    flag,
                    before,
                    after,
                })
            })
            .collect();
        if dry_run || changes.is_empty() {
            return Ok((changes, FlagOutcome::Applied));
        }
        let message = format!(
            "flags of {app} promoted from {from} to {to}: {}",
            describe(&changes)
        );
        let outcome = self
            .change_flags(grant, to, app, changes.clone(), message)
            .await?;
        Ok((changes, outcome))
    }

    /// Applies `changes` of `app`'s flags in `env` as one change with one event, and watches
    /// each under `verify.watch`. Where `env` requires approvals, a change that turns
    /// anything on is recorded as waiting instead (`flag approve` applies it); turning flags
    /// off never waits, and overtakes the waiting changes of those flags.
    async fn change_flags(
        self: &Arc<Self>,
        grant: &Grant,
        env: &EnvName,
        app: &AppName,
        changes: Vec<FlagChange>,
        message: String,
    ) -> Result<FlagOutcome, EngineError> {
        let config = self.config();
        let Some(env_config) = config.environment(env) else {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        };
        let data = serde_json::json!({ "changes": changes });
        let event = |kind, message| NewEvent {
            actor: grant.name.clone(),
            kind,
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            promotion_id: None,
            message,
            data: data.clone(),
        };
        if let Some(rule) = &env_config.require.approvals
            && changes.iter().any(|c| c.after != FlagState::Off)
        {
            let waits = format!(
                "{message}; waits for {} approval{} (shipgate flag approve)",
                rule.count,
                if rule.count == 1 { "" } else { "s" }
            );
            let record = self
                .store
                .request_flag_change(
                    env,
                    app,
                    &changes,
                    event(EventKind::FlagChangeRequested, waits),
                )
                .await?;
            return Ok(FlagOutcome::Waiting(record));
        }
        let turned_off: Vec<&str> = changes
            .iter()
            .filter(|c| c.after == FlagState::Off)
            .map(|c| c.flag.as_str())
            .collect();
        let supersede: Vec<i64> = if turned_off.is_empty() {
            Vec::new()
        } else {
            self.store
                .flag_changes(Some(env), true)
                .await?
                .into_iter()
                .filter(|r| {
                    r.app == *app
                        && r.changes
                            .iter()
                            .any(|c| turned_off.contains(&c.flag.as_str()))
                })
                .map(|r| r.id)
                .collect()
        };
        let message = if supersede.is_empty() {
            message
        } else {
            let ids: Vec<String> = supersede.iter().map(|id| format!("#{id}")).collect();
            format!("{message}; overtakes the waiting change {}", ids.join(", "))
        };
        let states: Vec<(String, FlagState)> = changes
            .iter()
            .map(|c| (c.flag.clone(), c.after.clone()))
            .collect();
        self.store
            .set_flags(
                env,
                app,
                &states,
                &grant.name,
                &supersede,
                event(EventKind::FlagChanged, message),
            )
            .await?;
        self.forget_flags();
        self.watch_changes(env_config.verify.watch.clone(), env, app, changes);
        Ok(FlagOutcome::Applied)
    }

    /// Approves or rejects the waiting flag change `id`, under the same rules as a promotion's
    /// approvals (never the requester, each person once, the rule's role); the approval that
    /// completes the count applies it, and the applied change is watched.
    pub async fn decide_flag_change(
        self: &Arc<Self>,
        grant: &Grant,
        id: i64,
        verdict: Verdict,
        comment: Option<&str>,
    ) -> Result<FlagChangeRecord, EngineError> {
        let Some(record) = self.store.flag_change(id).await? else {
            return Err(EngineError::UnknownFlag(format!(
                "there is no flag change #{id} (shipgate flag changes --all lists them)"
            )));
        };
        if record.status != FlagChangeStatus::Pending {
            return Err(EngineError::NothingToDecide(format!(
                "flag change #{id} is {} already; there is nothing left to decide",
                record.status.as_str()
            )));
        }
        let config = self.config();
        let Some(env_config) = config.environment(&record.env) else {
            return Err(EngineError::UnknownEnvironment(record.env.to_string()));
        };
        let rule = env_config.require.approvals.clone();
        let requested_by = (self.persons().await?)(&record.requested_by);
        let wanted = rule
            .as_ref()
            .and_then(|r| r.role)
            .unwrap_or(shipgate_core::Role::Approver);
        let grant = &self
            .as_person(&grant.in_env(&record.env, &[wanted, shipgate_core::Role::Admin]))
            .await?;
        let ask = DecisionAsk {
            subject: "flag change",
            stage: Stage::Entry,
            requested_by: &requested_by,
            caused_by: &[],
            grant,
            verdict,
            comment,
        };
        check_decision(rule.as_ref(), &record.env, &ask, &record.decisions)?;
        let decision = Decision {
            actor: grant.person().to_owned(),
            role: grant.role,
            verdict,
            comment: comment.map(str::to_owned),
            at: self.clock.now(),
        };
        let mut all = record.decisions.clone();
        all.push(decision.clone());
        let approvers = rule
            .as_ref()
            .map_or(1, |r| counted_approvers(r, &all).len());
        let needed = rule.as_ref().map_or(1, |r| r.count as usize);
        let close = match verdict {
            Verdict::Reject => Some(FlagChangeStatus::Rejected),
            Verdict::Approve => (approvers >= needed).then_some(FlagChangeStatus::Applied),
        };
        let (app, env) = (&record.app, &record.env);
        if close == Some(FlagChangeStatus::Applied) {
            let declared = config.app(app).map(|a| &a.flags);
            for c in &record.changes {
                let Some(flag_config) = declared.and_then(|d| d.get(&c.flag)) else {
                    return Err(EngineError::Flag(format!(
                        "flag change #{id} sets {app}/{}, which the config no longer declares; reject it",
                        c.flag
                    )));
                };
                flag::check(flag_config, &c.after).map_err(|e| {
                    EngineError::Flag(format!(
                        "flag change #{id} no longer fits the config ({e}); reject it"
                    ))
                })?;
            }
        }
        let said = comment.map(|c| format!(": {c}")).unwrap_or_default();
        let mut events = vec![NewEvent {
            actor: grant.name.clone(),
            kind: match verdict {
                Verdict::Approve => EventKind::FlagChangeApproved,
                Verdict::Reject => EventKind::FlagChangeRejected,
            },
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            promotion_id: None,
            message: format!(
                "flag change #{id} of {app} in {env} {} by {} ({approvers} of {needed} approvals){said}",
                verdict.past(),
                grant.name
            ),
            data: serde_json::json!({ "change": id, "verdict": verdict }),
        }];
        // What the flags are just before the change is applied, for the watch to go back to.
        let mut applied = record.changes.clone();
        if close == Some(FlagChangeStatus::Applied) {
            let now = self.store.flags(Some(env)).await?;
            for c in &mut applied {
                c.before = now
                    .iter()
                    .find(|r| r.flag == c.flag)
                    .map(|r| r.state.clone())
                    .unwrap_or_default();
            }
            events.push(NewEvent {
                actor: grant.name.clone(),
                kind: EventKind::FlagChanged,
                app: Some(app.to_string()),
                env: Some(env.to_string()),
                promotion_id: None,
                message: format!(
                    "flags of {app} in {env} changed as change #{id} asked by {} and approved: {}",
                    record.requested_by,
                    describe(&applied)
                ),
                data: serde_json::json!({ "change": id, "changes": applied }),
            });
        }
        let decided = self
            .store
            .decide_flag_change(
                FlagDecision {
                    id,
                    decided_before: record.decisions.len(),
                    decision,
                    close,
                },
                events,
            )
            .await?;
        if decided.status == FlagChangeStatus::Applied {
            self.forget_flags();
            self.watch_changes(env_config.verify.watch.clone(), env, app, applied);
        }
        Ok(decided)
    }

    /// Watches each of `changes` in the background, as [`Engine::watch_later`].
    fn watch_changes(
        self: &Arc<Self>,
        rule: Option<WatchRule>,
        env: &EnvName,
        app: &AppName,
        changes: Vec<FlagChange>,
    ) {
        for c in changes {
            self.watch_later(
                rule.clone(),
                Change {
                    env: env.clone(),
                    app: app.clone(),
                    key: c.flag,
                    before: c.before,
                    after: c.after,
                },
            );
        }
    }

    /// Watches `change` in the background when its environment has `verify.watch` and the
    /// change turns something on.
    fn watch_later(self: &Arc<Self>, rule: Option<WatchRule>, change: Change) {
        let Some(rule) = rule.filter(|_| change.after != FlagState::Off) else {
            return;
        };
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.watch_flag(&rule, change).await {
                tracing::warn!("watching a flag change: {e}");
            }
        });
    }

    /// Watches a flag change as a release is watched: the router's figures for the app's live
    /// release since the change, judged by `verify.watch`'s thresholds. A breach puts the
    /// previous state back (actor `watch`), unless someone changed the flag meanwhile.
    async fn watch_flag(&self, rule: &WatchRule, change: Change) -> Result<(), EngineError> {
        let slot = (change.app.clone(), change.env.clone());
        let Some(instance) = self.live_instance(&slot) else {
            return Ok(());
        };
        let (app, env) = (change.app.as_str(), change.env.as_str());
        let label = instance.target.label.clone();
        let before = Counters::of(&self.driver.router_metrics(env).await, app, &label);
        let deadline = crate::clock::after(self.clock.now(), rule.watch.as_std());
        loop {
            let next = crate::clock::after(self.clock.now(), LOOK_EVERY).min(deadline);
            self.clock.sleep_until(next).await;
            let figures =
                Counters::of(&self.driver.router_metrics(env).await, app, &label).since(&before);
            let ended = self.clock.now() >= deadline;
            match judge(rule, &figures, ended) {
                WatchVerdict::Continue => continue,
                WatchVerdict::Breach(why) => return self.revert_flag(change, why, figures).await,
                WatchVerdict::Pass(_) | WatchVerdict::Inconclusive(_) => return Ok(()),
            }
        }
    }

    async fn revert_flag(
        &self,
        change: Change,
        why: String,
        figures: WatchFigures,
    ) -> Result<(), EngineError> {
        let now = self
            .flags_of(&change.env)
            .await?
            .flags
            .remove(&change.key)
            .map(|(_, _, s)| s)
            .unwrap_or_default();
        if now != change.after {
            return Ok(());
        }
        let Change {
            env,
            app,
            key,
            before,
            after,
        } = change;
        let event = NewEvent {
            actor: WATCH.to_owned(),
            kind: EventKind::FlagChanged,
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            promotion_id: None,
            message: format!(
                "flag {app}/{key} in {env} reverted by the watch: {after} -> {before}: {why} (measured since the change: {figures})"
            ),
            data: serde_json::json!({ "flag": key, "from": after, "to": before, "reverted": why }),
        };
        self.store
            .set_flags(&env, &app, &[(key, before)], WATCH, &[], event)
            .await?;
        self.forget_flags();
        Ok(())
    }

    /// Makes a flag client key for `env`; the key is in the answer and nowhere else.
    pub async fn create_flag_key(
        &self,
        grant: &Grant,
        name: &str,
        env: &EnvName,
    ) -> Result<(FlagKeyRecord, String), EngineError> {
        if !shipgate_core::secret::is_credential_name(name) {
            return Err(EngineError::Flag(
                "a flag key name is 1 to 64 letters, digits, `-`, `_`, `.` or `@`, for example `web-frontend`".into(),
            ));
        }
        if self.config().environment(env).is_none() {
            return Err(EngineError::UnknownEnvironment(env.to_string()));
        }
        let key = format!("{KEY_PREFIX}{}", random_hex(24)?);
        let event = NewEvent {
            actor: grant.name.clone(),
            kind: EventKind::FlagKeyCreated,
            app: None,
            env: Some(env.to_string()),
            promotion_id: None,
            message: format!("flag key {name} for {env} created"),
            data: serde_json::json!({ "name": name }),
        };
        let record = self
            .store
            .insert_flag_key(name, env, &shipgate_core::secret::hash(&key), event)
            .await?;
        Ok((record, key))
    }

    /// Revokes the flag key `name`.
    pub async fn revoke_flag_key(
        &self,
        grant: &Grant,
        name: &str,
    ) -> Result<FlagKeyRecord, EngineError> {
        let event = NewEvent {
            actor: grant.name.clone(),
            kind: EventKind::FlagKeyRevoked,
            app: None,
            env: None,
            promotion_id: None,
            message: format!("flag key {name} revoked"),
            data: serde_json::json!({ "name": name }),
        };
        let revoked = self.store.revoke_flag_key(name, event).await?;
        self.forget_flags();
        Ok(revoked)
    }

    /// The environment a flag client key selects: a key made with `flag key create`, or one
    /// of the instances' own keys (recorded at their deploy, so revoked like any).
    pub async fn env_of_flag_key(&self, key: &str) -> Result<Option<EnvName>, EngineError> {
        let hash = shipgate_core::secret::hash(key);
        let generation = {
            let cache = crate::locked(&self.flag_cache);
            if let Some(env) = cache.keys.get(&hash) {
                return Ok(Some(env.clone()));
            }
            cache.generation
        };
        let env = self.store.flag_key_by_hash(&hash).await?.map(|r| r.env);
        let mut cache = crate::locked(&self.flag_cache);
        if let Some(env) = &env
            && cache.generation == generation
        {
            cache.keys.insert(hash, env.clone());
        }
        Ok(env)
    }

    /// Where instances reach the OFREP server (`SHIPGATE_OFREP_URL`): the API's address, on
    /// loopback when it listens on every address; None while its port is not fixed.
    pub fn api_url(&self) -> Option<String> {
        let at = self.api_addr();
        (at.port() != 0).then(|| format!("http://{at}"))
    }

    /// The API's address as this machine's processes reach it: on loopback when it listens on
    /// every address.
    pub(crate) fn api_addr(&self) -> std::net::SocketAddr {
        let mut at = self.config().server.listen;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        at
    }

    /// The key the instances and tests of promotion `id` of `app` in `env` get as
    /// `SHIPGATE_OFREP_KEY`: derived from a secret the store keeps, so every server (and every
    /// restart) gives the same one, and another for every deploy. It works while its record
    /// ([`Engine::rotate_instance_key`]) is not revoked.
    pub(crate) fn instance_flag_key(
        &self,
        env: &EnvName,
        app: &AppName,
        id: shipgate_core::PromotionId,
    ) -> String {
        let mac = sha2::Sha256::digest(format!("{}:{env}:{app}:{id}", self.flag_secret).as_bytes());
        format!("{INSTANCE_PREFIX}{env}_{}", &hex::encode(mac)[..40])
    }

    /// Records the instance key of promotion `p` as a flag key of its environment
    /// (`instance-ENV-APP-ID`: listed by `flag key list`, revoked by `flag key revoke`), and
    /// revokes those of the app's earlier deploys there whose instances no longer run: every
    /// deploy rotates the key, while a standby kept for a rollback keeps its own.
    pub(crate) async fn rotate_instance_key(
        &self,
        p: &shipgate_store::Promotion,
    ) -> Result<(), EngineError> {
        let prefix = format!("instance-{}-{}-", p.env, p.app);
        let name = format!("{prefix}{}", p.id);
        let keys = self.store.flag_keys().await?;
        if !keys.iter().any(|k| k.name == name) {
            let event = NewEvent {
                actor: crate::SYSTEM.into(),
                kind: EventKind::FlagKeyCreated,
                app: Some(p.app.to_string()),
                env: Some(p.env.to_string()),
                promotion_id: Some(p.id),
                message: format!(
                    "flag key {name} for {} created for the instances of {}@{}",
                    p.env, p.app, p.version
                ),
                data: serde_json::json!({ "name": name }),
            };
            let key = self.instance_flag_key(&p.env, &p.app, p.id);
            self.store
                .insert_flag_key(&name, &p.env, &shipgate_core::secret::hash(&key), event)
                .await?;
        }
        self.revoke_unused_instance_keys(&p.app, &p.env, &format!("{name} replaces it"), |k| {
            k != name
        })
        .await?;
        self.forget_flags();
        Ok(())
    }
}

impl Engine {
    /// Revokes the instance keys of `app` in `env` that `which` picks and whose instances no
    /// longer run, saying `why`.
    async fn revoke_unused_instance_keys(
        &self,
        app: &AppName,
        env: &EnvName,
        why: &str,
        which: impl Fn(&str) -> bool,
    ) -> Result<(), EngineError> {
        let prefix = format!("instance-{env}-{app}-");
        let running: Vec<String> = self
            .store
            .running_instances()
            .await?
            .into_iter()
            .filter(|i| &i.app == app && &i.env == env)
            .map(|i| format!("{prefix}{}", i.promotion_id))
            .collect();
        for old in self.store.flag_keys().await?.iter().filter(|k| {
            k.revoked_at.is_none()
                && k.name.starts_with(&prefix)
                && which(&k.name)
                && !running.contains(&k.name)
        }) {
            let event = NewEvent {
                actor: crate::SYSTEM.into(),
                kind: EventKind::FlagKeyRevoked,
                app: Some(app.to_string()),
                env: Some(env.to_string()),
                promotion_id: None,
                message: format!("flag key {} revoked: {why}", old.name),
                data: serde_json::json!({ "name": old.name }),
            };
            match self.store.revoke_flag_key(&old.name, event).await {
                // Revoked meanwhile by the other path (a retire and a deploy both look).
                Ok(_) | Err(shipgate_store::StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.forget_flags();
        Ok(())
    }

    /// After instance `r` was retired: its promotion's key goes too, unless another instance of
    /// that promotion still runs (on another host, or the same release restarted).
    pub(crate) async fn revoke_retired_instance_key(&self, r: &shipgate_store::InstanceRecord) {
        let name = format!("instance-{}-{}-{}", r.env, r.app, r.promotion_id);
        if let Err(e) = self
            .revoke_unused_instance_keys(&r.app, &r.env, "its instances were stopped", |k| {
                k == name
            })
            .await
        {
            tracing::warn!("could not revoke flag key {name}: {e}");
        }
    }
}

/// The secret instance keys are derived from: made by the first server, kept in the store.
pub(crate) async fn instance_secret(
    store: &dyn shipgate_store::Store,
) -> Result<String, EngineError> {
    Ok(store.share_once(INSTANCE_SECRET, &random_hex(32)?).await?)
}
