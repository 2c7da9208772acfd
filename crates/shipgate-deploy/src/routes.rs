//! The environments' routers as the process driver holds them: each environment's stable
//! address, and which instance each app's traffic goes to. The engine reaches them only through
//! the [`crate::Driver`], so the same calls can be served by an agent that outlives the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shipgate_proxy::{Canary, CanaryFigures, Router, Upstream, UpstreamMetrics};
use tokio::sync::Mutex;

use crate::{CanaryRoute, DriverError, InstanceId, RouteTarget, RouterSpec};

/// Every router of this driver, and the upstream of every instance they were sent to.
#[derive(Default)]
pub(crate) struct Routes {
    routers: Mutex<HashMap<String, Arc<Router>>>,
    /// One upstream per instance, kept so its in-flight count can be drained after a switch.
    upstreams: std::sync::Mutex<HashMap<InstanceId, (RouteTarget, Upstream)>>,
    /// The fronts of environments on several hosts.
    fronts: Mutex<HashMap<String, shipgate_proxy::Front>>,
    /// The TCP fault proxies of each environment, by their name (`staging.db`).
    dependencies: Mutex<HashMap<String, HashMap<String, shipgate_proxy::TcpProxy>>>,
    /// Listening sockets an earlier process of this data plane bound, handed over: a router
    /// bound at one of these addresses serves on it, and the connections queued there.
    inherited: std::sync::Mutex<HashMap<std::net::SocketAddr, std::net::TcpListener>>,
    /// Where each app's traffic went before this process took over (its instances adopted):
    /// a router bound again starts with these routes.
    restored: std::sync::Mutex<HashMap<(String, String), RouteTarget>>,
    /// The canaries set before this process took over, likewise.
    restored_canaries: std::sync::Mutex<HashMap<(String, String), CanaryRoute>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Routes {
    pub(crate) async fn front(
        &self,
        env: &str,
        listen: std::net::SocketAddr,
        backends: Vec<std::net::SocketAddr>,
    ) -> Result<(), DriverError> {
        let mut fronts = self.fronts.lock().await;
        let same = fronts.get(env).is_some_and(|f| f.local_addr() == listen);
        if !same {
            // Dropped first, so a front that stays at its address can be bound again.
            fronts.remove(env);
            let bound = shipgate_proxy::Front::bind(listen, env)
                .await
                .map_err(|e| DriverError::Router(e.to_string()))?;
            fronts.insert(env.to_owned(), bound);
        }
        if let Some(f) = fronts.get(env)
            && f.backends() != backends
        {
            tracing::info!("front of {env} at {listen}: spreading over {backends:?}");
            f.set_backends(backends);
        }
        Ok(())
    }

    pub(crate) async fn bind(&self, spec: RouterSpec) -> Result<(), DriverError> {
        let mut routers = self.routers.lock().await;
        let router = match routers.get(&spec.env) {
            Some(r) if r.local_addr() == spec.listen => r.clone(),
            _ => {
                let first: Vec<(String, RouteTarget)> = locked(&self.restored)
                    .iter()
                    .filter(|((env, _), _)| env == &spec.env)
                    .map(|((_, app), target)| (app.clone(), target.clone()))
                    .collect();
                let canaries: Vec<(String, CanaryRoute)> = locked(&self.restored_canaries)
                    .iter()
                    .filter(|((env, _), _)| env == &spec.env)
                    .map(|((_, app), canary)| (app.clone(), canary.clone()))
                    .collect();
                let first_routes = |router: &Router| {
                    for (app, target) in &first {
                        router.switch(app, Some(self.upstream_of(target)));
                    }
                    for (app, canary) in &canaries {
                        router.set_canary(app, Some(self.canary_of(canary.clone())));
                    }
                };
                let inherited = locked(&self.inherited).remove(&spec.listen);
                let bound = match inherited {
                    Some(listener) => {
                        tracing::info!(env = %spec.env, listen = %spec.listen, "serving on the socket handed over");
                        Router::serve(listener, spec.env.clone(), first_routes)
                    }
                    None => Router::bind(spec.listen, spec.env.clone())
                        .await
                        .inspect(|r| first_routes(r)),
                }
                .map_err(|e| DriverError::Router(e.to_string()))?;
                locked(&self.restored).retain(|(env, _), _| env != &spec.env);
                locked(&self.restored_canaries).retain(|(env, _), _| env != &spec.env);
                let bound = Arc::new(bound);
                if let Some(old) = routers.insert(spec.env.clone(), bound.clone()) {
                    old.shutdown().await;
                }
                bound
            }
        };
        router.set_apps(&spec.apps);
        router.set_request_timeout(spec.request_timeout);
        router.set_faults(spec.faults);
        drop(routers);
        self.proxies(&spec.env, spec.dependencies).await
    }

    /// Runs exactly these dependency proxies for `env`, each as its spec says.
    async fn proxies(
        &self,
        env: &str,
        specs: Vec<shipgate_core::chaos::DependencyProxy>,
    ) -> Result<(), DriverError> {
        let mut all = self.dependencies.lock().await;
        let running = all.entry(env.to_owned()).or_default();
        running.retain(|name, p| {
            specs
                .iter()
                .any(|s| &s.name == name && s.listen == p.spec().listen)
        });
        for spec in specs {
            let failed = |e: std::io::Error| {
                DriverError::Router(format!(
                    "dependency proxy {} cannot listen on {}: {e}; change `listen` of [environments.{env}.dependencies]",
                    spec.name, spec.listen
                ))
            };
            match running.get(&spec.name) {
                Some(p) if p.spec() == spec => {}
                Some(p) => p.set(spec.clone()).await.map_err(failed)?,
                None => {
                    let started = shipgate_proxy::TcpProxy::start(spec.clone())
                        .await
                        .map_err(failed)?;
                    running.insert(spec.name.clone(), started);
                }
            }
        }
        Ok(())
    }

    async fn router(&self, env: &str) -> Result<Arc<Router>, DriverError> {
        self.routers
            .lock()
            .await
            .get(env)
            .cloned()
            .ok_or_else(|| DriverError::Router(format!("no router is bound for environment {env}")))
    }

    fn upstream_of(&self, target: &RouteTarget) -> Upstream {
        let mut upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        upstreams
            .entry(target.instance_id.clone())
            .or_insert_with(|| {
                (
                    target.clone(),
                    Upstream::new(target.addr, target.label.clone()),
                )
            })
            .1
            .clone()
    }

    /// The router's description of a canary, on the upstream kept for its instance (so that
    /// draining it counts the requests the split sends it).
    fn canary_of(&self, canary: CanaryRoute) -> Canary {
        Canary {
            upstream: self.upstream_of(&canary.target),
            weight: canary.weight,
            mirror: canary.mirror,
            sticky: canary.sticky,
            window: canary.window,
        }
    }

    fn target_of(&self, upstream: &Upstream) -> Option<RouteTarget> {
        let upstreams = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        upstreams
            .values()
            .find(|(_, u)| u.addr() == upstream.addr() && u.label() == upstream.label())
            .map(|(t, _)| t.clone())
    }

    pub(crate) async fn switch(
        &self,
        env: &str,
        app: &str,
        to: Option<RouteTarget>,
    ) -> Result<Option<RouteTarget>, DriverError> {
        let router = self.router(env).await?;
        let upstream = to.as_ref().map(|t| self.upstream_of(t));
        Ok(router
            .switch(app, upstream)
            .and_then(|previous| self.target_of(&previous)))
    }

    pub(crate) async fn set_canary(
        &self,
        env: &str,
        app: &str,
        canary: Option<CanaryRoute>,
    ) -> Result<(), DriverError> {
        if let Some(c) = &canary
            && !(0.0..=100.0).contains(&c.weight)
        {
            return Err(DriverError::Router(format!(
                "a canary's weight is a percent from 0 to 100, not {} ({app} in {env})",
                c.weight
            )));
        }
        let router = self.router(env).await?;
        router.set_canary(app, canary.map(|c| self.canary_of(c)));
        Ok(())
    }

    pub(crate) async fn canary_figures(&self, env: &str, app: &str) -> Option<CanaryFigures> {
        self.router(env).await.ok()?.canary_figures(app)
    }

    pub(crate) async fn routed(&self, env: &str, app: &str) -> Option<RouteTarget> {
        let router = self.router(env).await.ok()?;
        router.current(app).and_then(|u| self.target_of(&u))
    }

    pub(crate) async fn set_starting(&self, env: &str, app: &str, label: &str) {
        if let Ok(router) = self.router(env).await {
            router.set_starting(app, label);
        }
    }

    pub(crate) async fn drain(&self, instance: &InstanceId, grace: Duration) -> bool {
        let upstream = self
            .upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(instance)
            .map(|(_, u)| u.clone());
        match upstream {
            Some(u) => Router::drain(&u, grace).await,
            None => true,
        }
    }

    /// Every router, by environment.
    async fn all(&self) -> Vec<(String, Arc<Router>)> {
        self.routers
            .lock()
            .await
            .iter()
            .map(|(e, r)| (e.clone(), r.clone()))
            .collect()
    }

    /// Takes over listening sockets handed over by an earlier process.
    pub(crate) fn inherit(&self, listeners: Vec<(std::net::SocketAddr, std::net::TcpListener)>) {
        locked(&self.inherited).extend(listeners);
    }

    /// Routes and canaries to set when their routers are bound again.
    pub(crate) fn restore(
        &self,
        routes: Vec<(String, String, RouteTarget)>,
        canaries: Vec<(String, String, CanaryRoute)>,
    ) {
        let mut restored = locked(&self.restored);
        for (env, app, target) in routes {
            restored.insert((env, app), target);
        }
        let mut restored = locked(&self.restored_canaries);
        for (env, app, canary) in canaries {
            restored.insert((env, app), canary);
        }
    }

    /// Each router's address and a handle to its listening socket.
    pub(crate) async fn listeners(&self) -> Vec<(std::net::SocketAddr, std::net::TcpListener)> {
        self.routers
            .lock()
            .await
            .values()
            .filter_map(|r| Some((r.local_addr(), r.listening()?)))
            .collect()
    }

    /// Where each app's traffic goes, by environment.
    pub(crate) async fn table(&self) -> Vec<(String, String, RouteTarget)> {
        let mut table = Vec::new();
        for (env, router) in self.all().await {
            for (app, upstream) in router.routed() {
                if let Some(target) = self.target_of(&upstream) {
                    table.push((env.clone(), app, target));
                }
            }
        }
        table
    }

    /// Every canary, by environment and app, on the instances this driver knows.
    pub(crate) async fn canaries(&self) -> Vec<(String, String, CanaryRoute)> {
        let mut table = Vec::new();
        for (env, router) in self.all().await {
            for (app, canary) in router.canaries() {
                if let Some(target) = self.target_of(&canary.upstream) {
                    let route = CanaryRoute {
                        target,
                        weight: canary.weight,
                        mirror: canary.mirror,
                        sticky: canary.sticky,
                        window: canary.window,
                    };
                    table.push((env.clone(), app, route));
                }
            }
        }
        table
    }

    /// Forgets a stopped instance's upstream.
    pub(crate) fn forget(&self, instance: &InstanceId) {
        self.upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance);
    }

    pub(crate) async fn metrics(&self, env: &str) -> Vec<UpstreamMetrics> {
        match self.router(env).await {
            Ok(router) => router.metrics(),
            Err(_) => Vec::new(),
        }
    }

    pub(crate) async fn retain(&self, envs: &[String]) -> Vec<String> {
        let gone: Vec<(String, Arc<Router>)> = {
            let mut routers = self.routers.lock().await;
            let names: Vec<String> = routers
                .keys()
                .filter(|e| !envs.contains(e))
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|e| routers.remove(&e).map(|r| (e, r)))
                .collect()
        };
        for (env, router) in &gone {
            tracing::info!(%env, "closing the router of an environment no longer in the config");
            router.shutdown().await;
            self.dependencies.lock().await.remove(env);
        }
        gone.into_iter().map(|(e, _)| e).collect()
    }

    /// Stops every router accepting; returns, per environment, the instances they routed to.
    pub(crate) async fn close(&self) -> Vec<(String, Vec<InstanceId>)> {
        let mut closed = Vec::new();
        for (env, router) in self.all().await {
            let canaries = router.canaries().into_iter().map(|(_, c)| c.upstream);
            let routed: Vec<InstanceId> = router
                .upstreams()
                .into_iter()
                .chain(canaries)
                .filter_map(|u| self.target_of(&u))
                .map(|t| t.instance_id)
                .collect();
            router.shutdown().await;
            closed.push((env, routed));
        }
        closed
    }
}
