//! On-demand environments: made from a template when asked (`shipgate env create`), seeded
//! with masked data, given their releases and tested on arrival; deleted when asked or when
//! their time is up, by a reaper that also finishes whatever a crash cut off. Every row lives
//! in the store, so a server that was down deletes what expired meanwhile as soon as it starts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use shipgate_core::config::DataLocation;
use shipgate_core::on_demand::{self, Holder, OnDemandState, TemplateConfig};
use shipgate_core::{Config, EnvName, EventKind, PromotionState, ReleaseRef};
use shipgate_store::{NewEvent, OnDemandRecord};

use crate::{Engine, EngineError, SYSTEM, locked};

/// How often the reaper looks for what expired or was cut off.
pub const REAP_EVERY: Duration = Duration::from_secs(5);
/// Requests through an environment's router push its expiry back at most this often.
pub const USE_REFRESH: Duration = Duration::from_secs(60);
/// The actor of a deletion because the TTL ran out.
pub const TTL: &str = "ttl";

/// An on-demand environment asked for.
#[derive(Debug, Clone)]
pub struct NewOnDemand {
    /// Its name.
    pub name: EnvName,
    /// The template it is made from.
    pub template: EnvName,
    /// The releases to deploy into it; none: those live in the template's `from`.
    pub releases: Vec<ReleaseRef>,
    /// Its TTL instead of the template's.
    pub ttl: Option<shipgate_core::Duration>,
}

/// What the engine keeps in memory about on-demand environments.
#[derive(Default)]
pub(crate) struct Tracking {
    /// Those this engine is making now (any other row `creating` was cut off by a crash).
    creating: HashSet<EnvName>,
    /// Per environment: its router's request count when last looked at, and when a request
    /// last pushed its expiry back.
    used: HashMap<EnvName, (u64, Timestamp)>,
}

fn event(
    actor: &str,
    kind: EventKind,
    env: &EnvName,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        kind,
        app: None,
        env: Some(env.to_string()),
        promotion_id: None,
        message,
        data,
    }
}

fn refused(message: impl Into<String>) -> EngineError {
    EngineError::OnDemand(message.into())
}

/// `config` with every on-demand environment of `rows` added (those whose template is gone
/// stay out: the reaper deletes them).
pub(crate) fn with_rows(config: &Config, rows: &[OnDemandRecord]) -> Config {
    let mut config = config.clone();
    for r in rows {
        if configured(&config, &r.name) {
            tracing::error!(
                "on-demand environment {} has the name of an environment of the config now; it is left alone (rename the configured one to get it back, or remove its row)",
                r.name
            );
            continue;
        }
        if let Some(env) = materialize(&config, r) {
            config = config.with_on_demand(env);
        }
    }
    config
}

/// Tells the data plane which hosts an on-demand environment runs on (those of the
/// environment its template copies), if any.
pub(crate) fn place(driver: &dyn shipgate_deploy::Driver, env: &shipgate_core::EnvironmentConfig) {
    if env.template.is_some() && !env.hosts.is_empty() {
        driver.place(
            env.name.as_str(),
            &env.hosts,
            env.batch.size(env.hosts.len()),
            env.hosts_required,
            env.listen.port(),
        );
    }
}

/// Whether `name` is an environment of the config file (not one made on demand).
fn configured(config: &Config, name: &EnvName) -> bool {
    config
        .environments
        .iter()
        .any(|e| &e.name == name && e.template.is_none())
}

fn materialize(config: &Config, r: &OnDemandRecord) -> Option<shipgate_core::EnvironmentConfig> {
    let template = config.template(&r.template)?;
    let base = config.environment(&template.from)?;
    let listen = std::net::SocketAddr::new(template.listen_range.ip, r.port);
    Some(template.environment(base, r.name.clone(), listen))
}

impl Engine {
    /// Every on-demand environment, oldest first.
    pub async fn on_demand(&self) -> Result<Vec<OnDemandRecord>, EngineError> {
        Ok(self.store.on_demand().await?)
    }

    /// The on-demand environment `name`.
    pub async fn on_demand_env(&self, name: &EnvName) -> Result<OnDemandRecord, EngineError> {
        self.store
            .on_demand()
            .await?
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| refused_missing(name))
    }

    /// Where on-demand environment `name` is reached: its own address, and its host name on
    /// the template's address.
    pub fn on_demand_urls(&self, r: &OnDemandRecord) -> (String, Option<String>) {
        let config = self.config();
        let own = self.env_url(&r.name);
        let named = config.template(&r.template).and_then(|t| {
            Some(format!(
                "http://{}:{}",
                t.host_name(&r.name)?,
                t.listen?.port()
            ))
        });
        (own, named)
    }

    /// Makes on-demand environment `req.name` for `requester`: refused (with nothing made)
    /// unless the template exists, the name is free, the releases are registered and the
    /// template's quotas allow it. Recorded `creating` at once; its data, releases and tests
    /// follow in the background, and it ends `ready` or `failed`.
    pub async fn create_on_demand(
        self: &Arc<Self>,
        req: NewOnDemand,
        requester: &str,
    ) -> Result<OnDemandRecord, EngineError> {
        let config = self.config();
        let Some(template) = config.template(&req.template).cloned() else {
            let known: Vec<&str> = config.templates.iter().map(|t| t.name.as_str()).collect();
            return Err(refused(if known.is_empty() {
                format!(
                    "there is no template `{}`: the config has no [templates.NAME] section",
                    req.template
                )
            } else {
                format!(
                    "there is no template `{}`; the config has: {}",
                    req.template,
                    known.join(", ")
                )
            }));
        };
        if configured(&config, &req.name) {
            return Err(refused(format!(
                "`{}` is an environment of the config; give the on-demand environment another name (pr-123, preview-alice)",
                req.name
            )));
        }
        let mut apps = HashSet::new();
        for r in &req.releases {
            if !apps.insert(r.app.clone()) {
                return Err(refused(format!(
                    "{} is asked for twice; name one release per app",
                    r.app
                )));
            }
            self.registered(r).await?;
        }
        let ttl = req.ttl.unwrap_or(template.ttl);
        let record = {
            let _one_at_a_time = self.on_demand_lock.lock().await;
            let rows = self.store.on_demand().await?;
            if rows.iter().any(|r| r.name == req.name) {
                return Err(refused(format!(
                    "an on-demand environment `{}` exists already; delete it first (shipgate env delete {}) or pick another name",
                    req.name, req.name
                )));
            }
            let holders: Vec<Holder> = rows
                .iter()
                .filter(|r| r.template == template.name && r.state != OnDemandState::Deleting)
                .map(|r| Holder {
                    env: r.name.clone(),
                    requester: r.requester.clone(),
                    expires_at: r.expires_at,
                })
                .collect();
            on_demand::admit(&template, requester, &holders)
                .map_err(|q| EngineError::Quota(q.to_string()))?;
            let port = free_port(&template, &rows)?;
            let now = self.clock.now();
            let record = OnDemandRecord {
                name: req.name.clone(),
                template: template.name.clone(),
                requester: requester.to_owned(),
                port,
                state: OnDemandState::Creating,
                ttl_secs: ttl.as_std().as_secs(),
                created_at: now,
                expires_at: on_demand::later(now, ttl),
                releases: req.releases.clone(),
                outcome: None,
            };
            locked(&self.on_demand_tracking)
                .creating
                .insert(req.name.clone());
            let message = format!(
                "{requester} made {} from template {} on port {port}; it expires {} unless used",
                req.name,
                template.name,
                record.expires_at.strftime("%Y-%m-%d %H:%M UTC")
            );
            let data = serde_json::to_value(&record).unwrap_or_default();
            match self
                .store
                .insert_on_demand(
                    record,
                    event(
                        requester,
                        EventKind::EnvironmentCreated,
                        &req.name,
                        message,
                        data,
                    ),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    locked(&self.on_demand_tracking).creating.remove(&req.name);
                    return Err(e.into());
                }
            }
        };
        // In the config and listening before the answer: its URL works from now on.
        let bound = self.add_to_config(&record).await;
        let engine = Arc::clone(self);
        let made = record.clone();
        tokio::spawn(async move { engine.arrive(made, bound).await });
        Ok(record)
    }

    /// Puts the environment in the running config and binds its router.
    async fn add_to_config(&self, r: &OnDemandRecord) -> Result<(), String> {
        let config = self.config();
        let env = materialize(&config, r)
            .ok_or_else(|| format!("template {} is no longer in the config", r.template))?;
        let spec =
            crate::chaos::router_spec(&config, &env, Vec::new(), &crate::chaos::Proxies::new());
        place(self.driver.as_ref(), &env);
        self.change_config(|now| now.with_on_demand(env));
        self.driver
            .bind_router(spec)
            .await
            .map_err(|e| format!("its router could not listen: {e}"))
    }

    /// Seeds, deploys and tests a new environment, and records how that went.
    async fn arrive(self: Arc<Self>, mut r: OnDemandRecord, bound: Result<(), String>) {
        let mut said = Vec::new();
        let outcome = match bound {
            Ok(()) => self.make(&r, &mut said).await,
            Err(why) => Err(why),
        };
        // No reaper pass in between: one that read the row `creating` must not find it
        // missing from those being made before its new state is written.
        let _not_reaping = self.reaping.lock().await;
        let done = || locked(&self.on_demand_tracking).creating.remove(&r.name);
        // Deleted meanwhile: nothing to record.
        let Ok(now) = self.on_demand_env(&r.name).await else {
            done();
            return;
        };
        if now.state != OnDemandState::Creating {
            done();
            return;
        }
        let (own, _) = self.on_demand_urls(&r);
        let (kind, message) = match outcome {
            Ok(()) => {
                r.state = OnDemandState::Ready;
                (
                    EventKind::EnvironmentReady,
                    format!("{} is ready at {own}: {}", r.name, said.join("; ")),
                )
            }
            Err(why) => {
                r.state = OnDemandState::Failed;
                said.push(why.clone());
                (
                    EventKind::EnvironmentCreateFailed,
                    format!("{} could not be made: {why}", r.name),
                )
            }
        };
        r.outcome = Some(said.join("\n"));
        r.expires_at = now.expires_at;
        let data = serde_json::json!({ "state": r.state, "outcome": r.outcome });
        if let Err(e) = self
            .store
            .update_on_demand(
                &r,
                OnDemandState::Creating,
                Some(event(SYSTEM, kind, &r.name, message, data)),
            )
            .await
        {
            tracing::error!("could not record how making {} went: {e}", r.name);
        }
        done();
    }

    async fn make(
        self: &Arc<Self>,
        r: &OnDemandRecord,
        said: &mut Vec<String>,
    ) -> Result<(), String> {
        self.add_to_config(r).await?;
        let config = self.config();
        let template = config
            .template(&r.template)
            .cloned()
            .ok_or_else(|| format!("template {} is no longer in the config", r.template))?;
        if let Some(from) = &template.data_from {
            for app in &config.apps {
                let Some(data) = &app.data else { continue };
                let Some(target) = data.locations.get(&r.name) else {
                    continue;
                };
                prepare(target).await?;
                let rows = self
                    .seed(&app.name, from, &r.name, &r.requester)
                    .await
                    .map_err(|e| format!("seeding {} data from {from} failed: {e}", app.name))?;
                said.push(format!(
                    "{} data seeded from {from}, masked: {rows} rows",
                    app.name
                ));
            }
        }
        let releases = if r.releases.is_empty() {
            self.store
                .live(None)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|l| l.env == template.from)
                .map(|l| ReleaseRef {
                    app: l.app,
                    version: l.version,
                })
                .collect()
        } else {
            r.releases.clone()
        };
        if releases.is_empty() {
            said.push(format!(
                "no release asked for, and none is live in {}",
                template.from
            ));
        }
        for release in releases {
            let p = self
                .promote(&release, &r.name, &r.requester, None)
                .await
                .map_err(|e| format!("{release} was refused: {e}"))?;
            let done = loop {
                let now = self
                    .store
                    .promotion(p.id)
                    .await
                    .map_err(|e| e.to_string())?;
                match now {
                    Some(p) if p.state.is_terminal() => break p,
                    Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    None => return Err(format!("promotion {} of {release} vanished", p.id)),
                }
            };
            let gates = self.store.gates(p.id).await.map_err(|e| e.to_string())?;
            let tests: Vec<String> = gates
                .iter()
                .filter(|g| g.name != "deploy")
                .map(|g| format!("{} {}", g.name, if g.passed { "passed" } else { "failed" }))
                .collect();
            let tests = if tests.is_empty() {
                String::new()
            } else {
                format!(" ({})", tests.join(", "))
            };
            if done.state != PromotionState::Succeeded {
                return Err(format!(
                    "{release} {} (promotion #{}){tests}: {}",
                    done.state,
                    done.id,
                    done.reason.unwrap_or_default()
                ));
            }
            said.push(format!(
                "{release} deployed and verified (promotion #{}){tests}",
                done.id
            ));
        }
        Ok(())
    }

    /// Copies `from`'s data of `app` into `to`, masked; the rows copied.
    async fn seed(
        self: &Arc<Self>,
        app: &shipgate_core::AppName,
        from: &EnvName,
        to: &EnvName,
        actor: &str,
    ) -> Result<u64, String> {
        let mut progress = self
            .copy_masked(app, from, to, actor)
            .map_err(|e| e.to_string())?;
        while let Some(m) = progress.recv().await {
            match m {
                crate::DataMessage::Done(report) => {
                    return Ok(report.tables.iter().map(|t| t.rows).sum());
                }
                crate::DataMessage::Failed(why) => return Err(why),
                crate::DataMessage::Progress(_) => {}
            }
        }
        Err("the copy stopped without a word".into())
    }

    /// Gives `name` until `ttl` from now (and makes `ttl` its TTL from now on).
    pub async fn extend_on_demand(
        &self,
        name: &EnvName,
        ttl: shipgate_core::Duration,
        actor: &str,
    ) -> Result<OnDemandRecord, EngineError> {
        let mut r = self.on_demand_env(name).await?;
        if r.state == OnDemandState::Deleting {
            return Err(refused(format!("{name} is being deleted")));
        }
        r.ttl_secs = ttl.as_std().as_secs();
        r.expires_at = on_demand::later(self.clock.now(), ttl);
        let message = format!(
            "{actor} extended {name}: it expires {} unless used",
            r.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        );
        let data = serde_json::json!({ "ttl_secs": r.ttl_secs, "expires_at": r.expires_at });
        let state = r.state;
        self.store
            .update_on_demand(
                &r,
                state,
                Some(event(
                    actor,
                    EventKind::EnvironmentExtended,
                    name,
                    message,
                    data,
                )),
            )
            .await?;
        Ok(r)
    }

    /// Deletes `name` and everything of it: its instances, router, data and folders, then its
    /// row, with an event naming `actor` (`ttl` when its time ran out).
    pub async fn delete_on_demand(&self, name: &EnvName, actor: &str) -> Result<(), EngineError> {
        let r = self.on_demand_env(name).await?;
        if !self.store.begin_deleting(name, None).await? {
            return Err(refused_missing(name));
        }
        self.finish_deleting(&r, actor).await
    }

    /// Tears down `r`, already marked `deleting`, and removes its row with the event.
    async fn finish_deleting(&self, r: &OnDemandRecord, actor: &str) -> Result<(), EngineError> {
        let name = &r.name;
        let gone = self.tear_down(r).await;
        let message = match actor {
            TTL => format!("{name} expired and was deleted ({gone})"),
            SYSTEM => {
                format!("{name} was deleted: its creation or deletion had been cut off ({gone})")
            }
            _ => format!("{actor} deleted {name} ({gone})"),
        };
        self.store
            .delete_on_demand(
                name,
                event(
                    actor,
                    EventKind::EnvironmentDeleted,
                    name,
                    message,
                    serde_json::json!({ "template": r.template, "requester": r.requester }),
                ),
            )
            .await?;
        locked(&self.on_demand_tracking).used.remove(name);
        Ok(())
    }

    /// Removes everything of `r` there is, whatever was removed before: asked twice, or after
    /// a crash midway, it finishes the job. Says what it removed.
    async fn tear_down(&self, r: &OnDemandRecord) -> String {
        let name = &r.name;
        // The data's whereabouts, before the environment leaves the config.
        let config = self.config();
        let locations: Vec<DataLocation> = config
            .apps
            .iter()
            .filter_map(|a| a.data.as_ref()?.locations.get(name).cloned())
            .collect();
        let locations = if locations.is_empty() {
            // Its template is gone from the config: the data is where it would have been.
            config
                .template(&r.template)
                .map(|t| {
                    config
                        .apps
                        .iter()
                        .filter_map(|a| on_demand::data_location(&config, t, &a.name, name))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            locations
        };
        let drain = config
            .environment(name)
            .map_or(crate::STOP_GRACE, |e| e.drain.as_std());
        self.change_config(|now| now.without(name));
        // No new request from now on; those in flight finish (within `drain`) first.
        let envs: Vec<String> = self
            .config()
            .environments
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        self.driver.retain_routers(&envs).await;
        let mut stopped = 0;
        let slots: Vec<crate::Slot> = config
            .apps
            .iter()
            .map(|a| (a.name.clone(), name.clone()))
            .collect();
        for slot in &slots {
            if let Some(live) = self.set_live_instance(slot.clone(), None) {
                if !self.driver.drain(&live.id, drain).await {
                    tracing::warn!(
                        "requests were still in flight on {} when `drain` ran out; stopping anyway",
                        live.id
                    );
                }
                self.stop_instance(&live.id, None).await;
                stopped += 1;
            }
            let standby = locked(&self.standby).remove(slot);
            if let Some(standby) = standby {
                self.stop_instance(&standby.instance.id, None).await;
                stopped += 1;
            }
        }
        // Whatever else runs there (a test, an instance a crash left).
        if let Ok(running) = self.store.running_instances().await {
            let here: Vec<_> = running.into_iter().filter(|i| &i.env == name).collect();
            for i in here {
                let pid = i.pid.and_then(|p| u32::try_from(p).ok());
                self.stop_instance(&i.id, pid).await;
                stopped += 1;
            }
        }
        for l in &locations {
            if let DataLocation::Postgres(url) = l {
                let url = url.clone();
                if let Some(Err(e)) =
                    apart(move || async move { shipgate_mask::drop_database(&url).await }).await
                {
                    tracing::warn!("could not drop {l} of {name}: {e}");
                }
            }
        }
        let data_dir = &config.server.data_dir;
        let mut folders = vec![
            data_dir.join(on_demand::DATA_FOLDER).join(name.as_str()),
            data_dir.join("data").join(name.as_str()),
        ];
        folders.extend(config.apps.iter().map(|a| {
            data_dir
                .join("logs")
                .join(a.name.as_str())
                .join(name.as_str())
        }));
        for f in &folders {
            remove_folder(f);
        }
        // Its Unix user, on every machine it ran on, once nothing runs as it: the processes
        // just stopped may take a moment to be gone, so it is tried again for a while. Another
        // server on this machine may remove it first; gone is gone, whoever removed it.
        let user = crate::isolation::env_user(name);
        let existed = local_user_exists(&user);
        let mut users = Vec::new();
        for _ in 0..50 {
            users.extend(crate::remove_gone_users(&self.config(), self.driver.as_ref()).await);
            if !local_user_exists(&user) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let removed_here = users
            .iter()
            .any(|u| u.split(' ').next() == Some(user.as_str()));
        let user_gone = if removed_here || (existed && !local_user_exists(&user)) {
            format!(", user {user} removed")
        } else {
            String::new()
        };
        self.driver.unplace(name.as_str());
        let databases = locations.len();
        format!(
            "{stopped} {} stopped, port {} freed, {databases} {} and its folders removed{user_gone}",
            if stopped == 1 {
                "instance"
            } else {
                "instances"
            },
            r.port,
            if databases == 1 {
                "database"
            } else {
                "databases"
            },
        )
    }

    /// A deploy into `env` succeeded: if it is on demand, its expiry moves back.
    pub(crate) async fn used_by_deploy(&self, env: &EnvName) {
        if self
            .config()
            .environment(env)
            .is_none_or(|e| e.template.is_none())
        {
            return;
        }
        if let Err(e) = self.push_expiry_back(env).await {
            tracing::warn!("could not push the expiry of {env} back: {e}");
        }
    }

    async fn push_expiry_back(&self, env: &EnvName) -> Result<(), EngineError> {
        let r = self.on_demand_env(env).await?;
        let config = self.config();
        let Some(template) = config.template(&r.template) else {
            return Ok(());
        };
        let ttl = shipgate_core::Duration::from_std(Duration::from_secs(r.ttl_secs));
        let expires =
            on_demand::expiry_after_use(template.ttl_from, ttl, self.clock.now(), r.expires_at);
        if expires != r.expires_at && r.state != OnDemandState::Deleting {
            self.store.touch_on_demand(env, expires).await?;
        }
        Ok(())
    }

    /// One pass of the reaper: deletes what expired (actor `ttl`), finishes creations and
    /// deletions a crash cut off, pushes back the expiry of environments requests went
    /// through (at most once a [`USE_REFRESH`]), and removes leftovers no row owns. Returns
    /// the environments it deleted.
    pub async fn reap(&self) -> Result<Vec<EnvName>, EngineError> {
        let _one_pass_at_a_time = self.reaping.lock().await;
        let now = self.clock.now();
        let rows = self.store.on_demand().await?;
        let mut deleted = Vec::new();
        let config = self.config();
        // One the config file took the name of is never torn down: its folders are the
        // configured environment's now.
        for r in rows.iter().filter(|r| !configured(&config, &r.name)) {
            let cut_off = match r.state {
                OnDemandState::Deleting => true,
                OnDemandState::Creating => {
                    !locked(&self.on_demand_tracking).creating.contains(&r.name)
                }
                _ => false,
            };
            let actor = if cut_off {
                SYSTEM
            } else if r.expires_at <= now && r.state != OnDemandState::Creating {
                TTL
            } else {
                self.count_requests(r, now).await;
                continue;
            };
            // The row as read a moment ago: deleted only if it is still so (a creation that
            // ended, an expiry pushed back meanwhile, and it stays).
            let unless_changed = match r.state {
                OnDemandState::Deleting => None,
                state => Some((state, r.expires_at)),
            };
            match self.store.begin_deleting(&r.name, unless_changed).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!("could not delete {}: {e}", r.name);
                    continue;
                }
            }
            match self.finish_deleting(r, actor).await {
                Ok(()) => deleted.push(r.name.clone()),
                Err(e) => tracing::error!("could not delete {}: {e}", r.name),
            }
        }
        self.remove_leftovers().await;
        Ok(deleted)
    }

    /// Pushes `r`'s expiry back if requests went through its router since it last did so,
    /// a [`USE_REFRESH`] ago or more.
    async fn count_requests(&self, r: &OnDemandRecord, now: Timestamp) {
        if r.state == OnDemandState::Creating {
            return;
        }
        let requests: u64 = self
            .driver
            .router_metrics(r.name.as_str())
            .await
            .iter()
            .map(|m| m.requests.total())
            .sum();
        let due = {
            let mut tracking = locked(&self.on_demand_tracking);
            let seen = tracking
                .used
                .entry(r.name.clone())
                .or_insert((requests, now));
            let refresh = jiff::SignedDuration::try_from(USE_REFRESH).unwrap_or_default();
            let due = requests > seen.0 && now.duration_since(seen.1) >= refresh;
            if due {
                *seen = (requests, now);
            } else {
                seen.0 = seen.0.min(requests);
            }
            due
        };
        if due && let Err(e) = self.push_expiry_back(&r.name).await {
            tracing::warn!("could not push the expiry of {} back: {e}", r.name);
        }
    }

    /// Folders and databases of on-demand environments that no row owns (a crash between
    /// making them and recording them, or a row removed by hand).
    async fn remove_leftovers(&self) {
        let Ok(rows) = self.store.on_demand().await else {
            return;
        };
        let owned: HashSet<String> = rows.iter().map(|r| r.name.to_string()).collect();
        let config = self.config();
        let folder = config.server.data_dir.join(on_demand::DATA_FOLDER);
        if let Ok(entries) = std::fs::read_dir(&folder) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !owned.contains(&name) {
                    tracing::info!(
                        "removing {}, left by an on-demand environment that is gone",
                        e.path().display()
                    );
                    remove_folder(&e.path());
                }
            }
        }
        // Only databases named after one of this config's own: `shop__od_pr_1` is a preview of
        // `shop`; another installation's on the same server are not ours to drop.
        let owned_dbs: HashSet<String> = config
            .apps
            .iter()
            .flat_map(|a| a.data.iter().flat_map(|d| d.locations.values()))
            .filter_map(|l| match l {
                DataLocation::Postgres(url) => {
                    Some(url.split('?').next().unwrap_or(url).to_owned())
                }
                DataLocation::Sqlite(_) => None,
            })
            .collect();
        let mut sources: Vec<String> = Vec::new();
        for app in &config.configured().apps {
            for l in app.data.iter().flat_map(|d| d.locations.values()) {
                if let DataLocation::Postgres(url) = l
                    && !sources.contains(url)
                {
                    sources.push(url.clone());
                }
            }
        }
        for url in sources {
            let Some(db) = url
                .split('?')
                .next()
                .and_then(|u| u.rsplit_once('/'))
                .map(|(_, db)| db.to_owned())
            else {
                continue;
            };
            let prefix = format!("{db}{}", on_demand::DATABASE_MARK);
            let Some(Ok(found)) =
                apart(move || async move { shipgate_mask::databases_named(&url, &prefix).await })
                    .await
            else {
                continue;
            };
            for db in found {
                if owned_dbs.contains(&db) {
                    continue;
                }
                tracing::info!(
                    "dropping {}, left by an on-demand environment that is gone",
                    DataLocation::redacted_url(&db)
                );
                if let Some(Err(e)) =
                    apart(move || async move { shipgate_mask::drop_database(&db).await }).await
                {
                    tracing::warn!("could not drop a leftover database: {e}");
                }
            }
        }
    }

    /// Runs the reaper every [`REAP_EVERY`] until the engine goes.
    pub(crate) fn reap_periodically(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                {
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    if !engine.restoring()
                        && let Err(e) = engine.reap().await
                    {
                        tracing::warn!("the reaper could not look at on-demand environments: {e}");
                    }
                }
                tokio::time::sleep(REAP_EVERY).await;
            }
        });
    }
}

fn refused_missing(name: &EnvName) -> EngineError {
    EngineError::Store(shipgate_store::StoreError::NotFound(format!(
        "an on-demand environment `{name}` (shipgate env list shows those there are)"
    )))
}

/// The first port of the template's range that no environment holds and nothing listens on.
fn free_port(template: &TemplateConfig, rows: &[OnDemandRecord]) -> Result<u16, EngineError> {
    let held: HashSet<u16> = rows.iter().map(|r| r.port).collect();
    template
        .listen_range
        .addresses()
        .filter(|a| !held.contains(&a.port()))
        .find(|a| std::net::TcpListener::bind(a).is_ok())
        .map(|a| a.port())
        .ok_or_else(|| {
            refused(format!(
                "every port of template {}'s range {} is taken; widen listen_range or delete an environment",
                template.name, template.listen_range
            ))
        })
}

/// Makes room for a data location: its folder (SQLite) or its database (PostgreSQL).
async fn prepare(target: &DataLocation) -> Result<(), String> {
    match target {
        DataLocation::Sqlite(path) => match path.parent() {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))
            }
            None => Ok(()),
        },
        DataLocation::Postgres(url) => {
            let url = url.clone();
            apart(move || async move { shipgate_mask::create_database(&url).await })
                .await
                .unwrap_or_else(|| {
                    Err(shipgate_mask::MaskError::Unsupported(
                        "the database could not be made".into(),
                    ))
                })
                .map_err(|e| e.to_string())
        }
    }
}

/// Removes a folder and everything in it, read-only parts included; absent is fine.
fn remove_folder(path: &std::path::Path) {
    if !path.exists() {
        return;
    }
    make_writable(path);
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!("could not remove {}: {e}", path.display());
    }
}

/// Gives the owner write permission on `path` and everything under it (release and data
/// folders may be read-only), so that it can be removed.
fn make_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o200 == 0 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Runs `work` on a thread and runtime of its own: PostgreSQL connections of the data crate
/// are held across awaits in a way that is not `Send`. None if that thread could not start.
async fn apart<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Option<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let _ = tx.send(rt.block_on(work()));
        }
    });
    rx.await.ok()
}

/// Whether this machine has a user named `name`.
fn local_user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|p| p.lines().any(|l| l.split(':').next() == Some(name)))
}
