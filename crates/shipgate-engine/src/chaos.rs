//! Chaos at run time: HTTP faults injected into an environment's router, each recorded with
//! its end, given to the data plane (which also ends it by itself at that time), and ended by
//! the engine when its duration runs out, on the engine's clock. A fault whose end passed while
//! no server ran is ended, with an event saying so, as soon as one starts: a fault is never
//! forgotten on, and never outlives a restart unnoticed.

use std::collections::HashMap;
use std::sync::Arc;

use shipgate_core::chaos::{self, DependencyProxy, FaultAsk, HttpFault, Toxic};
use shipgate_core::{AppName, Config, EnvName, EventKind, Grant, Role};
use shipgate_deploy::RouterSpec;
use shipgate_store::{FaultRecord, NewEvent};

use crate::{Engine, EngineError};

/// Who ends a fault whose duration ran out.
pub const DURATION: &str = "duration";

/// What was done to one dependency proxy through the Toxiproxy API or an experiment: whether
/// it is down, and its toxics, each with who made it and when it ends by itself. Kept in
/// memory: a server that starts gives every proxy none, up.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyState {
    down: Option<Held>,
    toxics: Vec<(Toxic, Held)>,
}

/// Who made one change to a proxy (a toxic, or taking it down), and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The token (or experiment) that made it.
    pub by: String,
    /// When it ends by itself: `chaos.max_duration` after it was made.
    pub until: jiff::Timestamp,
}

/// One change in force on a dependency proxy, as `shipgate chaos list` shows it.
#[derive(Debug, Clone)]
pub struct ProxyFault {
    /// The proxy (`staging.db`).
    pub proxy: String,
    /// Its environment.
    pub env: EnvName,
    /// Its toxic, or None: the proxy is down.
    pub toxic: Option<Toxic>,
    /// Who made it and until when.
    pub held: Held,
}

/// The dependency proxies' states, by name (`staging.db`).
pub(crate) type Proxies = HashMap<String, ProxyState>;

/// An environment's router as the config, the faults in force there and its dependency
/// proxies' states make it.
pub(crate) fn router_spec(
    config: &Config,
    env: &shipgate_core::EnvironmentConfig,
    faults: Vec<HttpFault>,
    proxies: &Proxies,
) -> RouterSpec {
    RouterSpec {
        env: env.name.to_string(),
        listen: env.listen,
        apps: config.apps.iter().map(|a| a.name.to_string()).collect(),
        request_timeout: env.request_timeout.map(|t| t.as_std()),
        faults,
        dependencies: env
            .dependencies
            .iter()
            .map(|d| {
                let name = format!("{}.{}", env.name, d.name);
                let state = proxies.get(&name).cloned().unwrap_or_default();
                DependencyProxy {
                    name,
                    listen: d.listen,
                    upstream: d.upstream.clone(),
                    enabled: state.down.is_none(),
                    toxics: state.toxics.into_iter().map(|(t, _)| t).collect(),
                }
            })
            .collect(),
    }
}

/// Why a call of the Toxiproxy API was refused: its status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRefusal {
    /// 400, 404 or 409, as Toxiproxy answers.
    pub status: u16,
    /// What to do.
    pub message: String,
}

fn refusal(status: u16, message: String) -> ProxyRefusal {
    ProxyRefusal { status, message }
}

/// The faults in force, by environment.
pub(crate) async fn active(
    store: &dyn shipgate_store::Store,
) -> Result<HashMap<String, Vec<HttpFault>>, EngineError> {
    let mut by_env: HashMap<String, Vec<HttpFault>> = HashMap::new();
    for r in store.faults(None, true).await? {
        by_env.entry(r.env.to_string()).or_default().push(r.fault);
    }
    Ok(by_env)
}

fn event(actor: &str, kind: EventKind, r: &FaultRecord, message: String) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        kind,
        app: Some(r.app.to_string()),
        env: Some(r.env.to_string()),
        promotion_id: None,
        message,
        data: serde_json::json!({ "fault": r.fault, "ends_at": r.ends_at.to_string() }),
    }
}

impl Engine {
    /// Injects a fault into `ask.env`'s router for `ask.duration`, as `grant` (the caller
    /// checked that it may change the environment). Refused where `chaos.allow` is not set,
    /// beyond `chaos.max_duration`, and at the end of the flow (production) without an admin.
    pub async fn inject_fault(
        self: &Arc<Self>,
        grant: &Grant,
        ask: FaultAsk<'_>,
    ) -> Result<FaultRecord, EngineError> {
        let config = self.config();
        let Some(env_config) = config.environment(ask.env) else {
            return Err(EngineError::UnknownEnvironment(ask.env.to_string()));
        };
        if config.app(ask.app).is_none() {
            return Err(EngineError::UnknownApp(ask.app.to_string()));
        }
        let header = chaos::check(&ask, env_config.chaos).map_err(|e| match e {
            chaos::FaultRefusal::NotAllowed(why) => EngineError::ChaosNotAllowed(why),
            chaos::FaultRefusal::Malformed(why) => EngineError::Chaos(why),
        })?;
        let grant = &grant.in_env(ask.env, &[Role::Admin]);
        if chaos::needs_admin(&config, ask.env) && grant.role != Role::Admin {
            return Err(EngineError::ChaosForbidden(format!(
                "{env} ends the flow (it is production), so faults there need an admin; token `{}` has the role {}",
                grant.name,
                grant.role,
                env = ask.env
            )));
        }
        let ends_at = crate::clock::after(self.clock.now(), ask.duration);
        let fault = HttpFault {
            id: 0,
            app: ask.app.to_string(),
            action: ask.action.clone(),
            percent: ask.percent,
            path: ask.path.map(str::to_owned),
            header,
            until_ms: ends_at.as_millisecond(),
        };
        let lasts = shipgate_core::Duration::from_std(ask.duration);
        let new = NewEvent {
            actor: grant.name.clone(),
            kind: EventKind::ChaosInjected,
            app: Some(ask.app.to_string()),
            env: Some(ask.env.to_string()),
            promotion_id: None,
            message: format!(
                "chaos in {}: {fault} for {lasts}, until {}",
                ask.env,
                ends_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            ),
            data: serde_json::json!({ "fault": fault, "ends_at": ends_at.to_string() }),
        };
        let record = self
            .store
            .insert_fault(ask.env, ask.app, &fault, ends_at, new)
            .await?;
        self.push_faults(ask.env).await?;
        self.end_later(record.ends_at);
        Ok(record)
    }

    /// Ends the faults in force that match: of `env`, of `app`, or the one numbered `id`
    /// (every one with none of them), as `grant`. Answers those it ended.
    pub async fn clear_faults(
        &self,
        grant: &Grant,
        env: Option<&EnvName>,
        app: Option<&AppName>,
        id: Option<i64>,
    ) -> Result<Vec<FaultRecord>, EngineError> {
        let matching: Vec<FaultRecord> = self
            .store
            .faults(env, true)
            .await?
            .into_iter()
            .filter(|r| app.is_none_or(|a| r.app == *a) && id.is_none_or(|i| r.id == i))
            .filter(|r| {
                grant
                    .check(shipgate_core::Action::Promote, Some(&r.env))
                    .is_ok()
            })
            .collect();
        if let Some(id) = id
            && matching.is_empty()
        {
            return Err(EngineError::UnknownFault(format!(
                "no fault #{id} is in force where token `{}` may act (shipgate chaos list shows them)",
                grant.name
            )));
        }
        let events = matching
            .iter()
            .map(|r| {
                let said = format!(
                    "chaos fault #{} in {} ended by {}: {}",
                    r.id, r.env, grant.name, r.fault
                );
                (r.id, event(&grant.name, EventKind::ChaosEnded, r, said))
            })
            .collect();
        let ended = self.store.end_faults(&grant.name, events).await?;
        self.push_faults_of(&ended).await?;
        Ok(ended)
    }

    /// Ends every fault whose end has passed on the engine's clock, as [`DURATION`]; one that
    /// should have ended more than a few seconds ago (no server ran then) says so.
    pub(crate) async fn end_due_faults(&self) -> Result<Vec<FaultRecord>, EngineError> {
        let now = self.clock.now();
        let late_after = jiff::SignedDuration::from_secs(5);
        let events = self
            .store
            .faults(None, true)
            .await?
            .into_iter()
            .filter(|r| r.ends_at <= now)
            .map(|r| {
                let at = r.ends_at.strftime("%Y-%m-%d %H:%M:%S UTC");
                let late = if now.duration_since(r.ends_at) > late_after {
                    format!(
                        " (no server ran then; ended when this one started at {})",
                        now.strftime("%H:%M:%S UTC")
                    )
                } else {
                    String::new()
                };
                let said = format!(
                    "chaos fault #{} in {} ended: its duration ran out at {at}{late}: {}",
                    r.id, r.env, r.fault
                );
                (r.id, event(DURATION, EventKind::ChaosEnded, &r, said))
            })
            .collect::<Vec<_>>();
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ended = self.store.end_faults(DURATION, events).await?;
        self.push_faults_of(&ended).await?;
        Ok(ended)
    }

    /// At start: ends what ran out meanwhile, and waits for the end of what is still in force.
    pub(crate) async fn resume_faults(self: &Arc<Self>) -> Result<(), EngineError> {
        self.end_due_faults().await?;
        for r in self.store.faults(None, true).await? {
            self.end_later(r.ends_at);
        }
        Ok(())
    }

    /// Ends what is due at `at`, in the background.
    fn end_later(self: &Arc<Self>, at: jiff::Timestamp) {
        let engine = Arc::downgrade(self);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            clock.sleep_until(at).await;
            let Some(engine) = engine.upgrade() else {
                return;
            };
            if let Err(e) = engine.end_due_faults().await {
                tracing::warn!("ending chaos faults: {e}");
            }
        });
    }

    /// Gives the routers of the environments of `ended` the faults still in force there.
    async fn push_faults_of(&self, ended: &[FaultRecord]) -> Result<(), EngineError> {
        let mut envs: Vec<&EnvName> = ended.iter().map(|r| &r.env).collect();
        envs.sort();
        envs.dedup();
        for env in envs {
            self.push_faults(env).await?;
        }
        Ok(())
    }

    /// Gives `env`'s router the faults in force there.
    async fn push_faults(&self, env: &EnvName) -> Result<(), EngineError> {
        let config = self.config();
        let Some(env_config) = config.environment(env) else {
            return Ok(());
        };
        let faults = self
            .store
            .faults(Some(env), true)
            .await?
            .into_iter()
            .map(|r| r.fault)
            .collect();
        let proxies = crate::locked(&self.proxies).clone();
        self.driver
            .bind_router(router_spec(&config, env_config, faults, &proxies))
            .await
            .map_err(|e| EngineError::DataPlane(e.to_string()))
    }

    /// Every dependency proxy, as the Toxiproxy API shows them.
    pub fn dependency_proxies(&self) -> Vec<DependencyProxy> {
        let config = self.config();
        let proxies = crate::locked(&self.proxies).clone();
        config
            .environments
            .iter()
            .flat_map(|e| router_spec(&config, e, Vec::new(), &proxies).dependencies)
            .collect()
    }

    /// The dependency proxies of the environments `grant` may read.
    pub fn readable_proxies(&self, grant: &Grant) -> Vec<DependencyProxy> {
        self.dependency_proxies()
            .into_iter()
            .filter(|p| may_read(grant, &p.name).is_ok())
            .collect()
    }

    /// The dependency proxy `name`, if `grant` may read its environment (403 if not).
    pub fn readable_proxy(
        &self,
        name: &str,
        grant: &Grant,
    ) -> Result<DependencyProxy, ProxyRefusal> {
        may_read(grant, name)?;
        self.dependency_proxy(name)
    }

    /// The dependency proxy `name`.
    pub fn dependency_proxy(&self, name: &str) -> Result<DependencyProxy, ProxyRefusal> {
        self.dependency_proxies()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let names: Vec<String> = self.dependency_proxies().into_iter().map(|p| p.name).collect();
                refusal(
                    404,
                    format!(
                        "proxy not found: `{name}`; proxies are ENV.NAME from [environments.ENV.dependencies.NAME] ({})",
                        if names.is_empty() { "none is declared".to_owned() } else { names.join(", ") }
                    ),
                )
            })
    }

    /// Changes the proxy `name` through `change` as `grant` (which must be allowed to fault its
    /// environment: [`chaos::may_fault`]), gives its environment's data plane the new state,
    /// and records `said` (what changed) as an audit event by the grant. Every toxic added and
    /// a proxy taken down end by themselves after the environment's `chaos.max_duration`.
    pub async fn change_proxy(
        &self,
        name: &str,
        grant: &Grant,
        change: impl FnOnce(&mut DependencyProxy) -> Result<(EventKind, String), ProxyRefusal>,
    ) -> Result<DependencyProxy, ProxyRefusal> {
        let mut proxy = self.dependency_proxy(name)?;
        let env = proxy_env(name)?;
        let config = self.config();
        chaos::may_fault(&config, &env, grant).map_err(|e| refusal(403, e))?;
        let max = config
            .environment(&env)
            .map_or(chaos::DEFAULT_MAX_DURATION, |e| e.chaos.max_duration);
        let (kind, said) = change(&mut proxy)?;
        let held = Held {
            by: grant.name.clone(),
            until: crate::clock::after(self.clock.now(), max),
        };
        {
            let mut proxies = crate::locked(&self.proxies);
            let before = proxies.get(name).cloned().unwrap_or_default();
            // What stays as it was keeps its maker and its end; what is new or changed is held
            // by this grant from now.
            let kept = |t: &Toxic| {
                before
                    .toxics
                    .iter()
                    .find(|(old, _)| old == t)
                    .map(|(_, h)| h.clone())
            };
            let state = ProxyState {
                down: (!proxy.enabled).then(|| before.down.clone().unwrap_or(held.clone())),
                toxics: proxy
                    .toxics
                    .iter()
                    .map(|t| (t.clone(), kept(t).unwrap_or(held.clone())))
                    .collect(),
            };
            proxies.insert(name.to_owned(), state);
        }
        self.apply_proxy_change(&env, name, &proxy, &grant.name, kind, said)
            .await?;
        Ok(proxy)
    }

    /// Gives `env`'s data plane its proxies as they are now and records what changed.
    async fn apply_proxy_change(
        &self,
        env: &EnvName,
        name: &str,
        proxy: &DependencyProxy,
        actor: &str,
        kind: EventKind,
        said: String,
    ) -> Result<(), ProxyRefusal> {
        let internal = |e: EngineError| refusal(500, e.to_string());
        self.push_faults(env).await.map_err(internal)?;
        let event = NewEvent {
            actor: actor.to_owned(),
            kind,
            app: None,
            env: Some(env.to_string()),
            promotion_id: None,
            message: format!("dependency proxy {name}: {said}"),
            data: serde_json::json!({ "proxy": name, "enabled": proxy.enabled, "toxics": proxy.toxics }),
        };
        self.store
            .append_event(event)
            .await
            .map_err(|e| internal(e.into()))?;
        Ok(())
    }

    /// Every proxy that `grant` may fault up and without toxics again (`POST /reset`),
    /// recorded once per proxy that had something to undo.
    pub async fn reset_proxies(&self, grant: &Grant) -> Result<(), ProxyRefusal> {
        let config = self.config();
        for p in self.dependency_proxies() {
            let allowed =
                proxy_env(&p.name).is_ok_and(|env| chaos::may_fault(&config, &env, grant).is_ok());
            if (p.enabled && p.toxics.is_empty()) || !allowed {
                continue;
            }
            self.change_proxy(&p.name, grant, |p| {
                p.enabled = true;
                p.toxics.clear();
                Ok((
                    EventKind::ChaosEnded,
                    "reset: up, without toxics".to_owned(),
                ))
            })
            .await?;
        }
        Ok(())
    }

    /// The toxics and downed proxies in force, with who made them and until when.
    pub fn proxy_faults(&self) -> Vec<ProxyFault> {
        let proxies = crate::locked(&self.proxies).clone();
        let mut all: Vec<ProxyFault> = proxies
            .into_iter()
            .filter_map(|(proxy, state)| Some((proxy_env(&proxy).ok()?, proxy, state)))
            .flat_map(|(env, proxy, state)| {
                let down = state.down.map(|held| ProxyFault {
                    proxy: proxy.clone(),
                    env: env.clone(),
                    toxic: None,
                    held,
                });
                let toxics = state.toxics.into_iter().map(move |(t, held)| ProxyFault {
                    proxy: proxy.clone(),
                    env: env.clone(),
                    toxic: Some(t),
                    held,
                });
                down.into_iter().chain(toxics).collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| (&a.proxy, a.held.until).cmp(&(&b.proxy, b.held.until)));
        all
    }

    /// Ends what is due on the proxies, every second on the engine's clock, in the background.
    pub(crate) fn end_toxics_periodically(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                let next = crate::clock::after(clock.now(), std::time::Duration::from_secs(1));
                clock.sleep_until(next).await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.end_due_toxics().await;
            }
        });
    }

    /// Removes every toxic, and brings up every proxy, whose end has passed, as [`DURATION`].
    pub(crate) async fn end_due_toxics(&self) {
        let now = self.clock.now();
        let mut ended = Vec::new();
        {
            let mut proxies = crate::locked(&self.proxies);
            for (name, state) in proxies.iter_mut() {
                let mut gone: Vec<String> = Vec::new();
                if state.down.as_ref().is_some_and(|h| h.until <= now) {
                    state.down = None;
                    gone.push("down".to_owned());
                }
                state.toxics.retain(|(t, h)| {
                    let due = h.until <= now;
                    if due {
                        gone.push(format!("toxic {}", t.name));
                    }
                    !due
                });
                if !gone.is_empty() {
                    ended.push((name.clone(), gone.join(", ")));
                }
            }
        }
        for (name, gone) in ended {
            let (Ok(env), Ok(proxy)) = (proxy_env(&name), self.dependency_proxy(&name)) else {
                continue;
            };
            let said = format!("{gone} ended: its duration ran out (`chaos.max_duration`)");
            if let Err(r) = self
                .apply_proxy_change(&env, &name, &proxy, DURATION, EventKind::ChaosEnded, said)
                .await
            {
                tracing::warn!("ending the toxics of {name}: {}", r.message);
            }
        }
    }
}

/// Refuses with 403 unless `grant` may read the environment of the proxy `name`.
fn may_read(grant: &Grant, name: &str) -> Result<(), ProxyRefusal> {
    let env = proxy_env(name)?;
    grant
        .check(shipgate_core::Action::Read, Some(&env))
        .map_err(|d| refusal(403, d.to_string()))
}

/// The environment of the proxy `ENV.NAME`.
fn proxy_env(name: &str) -> Result<EnvName, ProxyRefusal> {
    let env = name.split('.').next().unwrap_or_default();
    EnvName::parse(env).map_err(|e| refusal(404, format!("proxy not found: `{name}` ({e})")))
}

/// A toxic as sent to the Toxiproxy API, checked; a 400 says what is wrong.
pub fn toxic_from(json: serde_json::Value) -> Result<Toxic, ProxyRefusal> {
    let toxic: Toxic =
        serde_json::from_value(json).map_err(|e| refusal(400, format!("bad toxic: {e}")))?;
    toxic.checked().map_err(|e| refusal(400, e))
}
