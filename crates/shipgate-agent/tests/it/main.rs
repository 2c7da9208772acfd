//! An environment placed on three hosts, each a real agent (a process driver with its routers)
//! that dials the server's agent port over mutual TLS, as `shipgate agent` does; the hosts share
//! this machine, so each environment's router listens on a port of its own here.
#![allow(clippy::unwrap_used, reason = "a test should fail loudly")]

mod canary;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shipgate_agent::link::HostCheck;
use shipgate_agent::tls::{Ca, Identity};
use shipgate_agent::{Agent, EnvPlacement, Hosts, Placement};
use shipgate_deploy::{
    Driver, InstanceId, ProcessDriver, RouteTarget, RouterSpec, StartInstance, StopInstance,
};
use tempfile::TempDir;

/// Only a guard against waiting forever; no test asserts on time.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The environment placed on the hosts.
pub const ENV: &str = "production";

/// A server's side of hosts: its agent port, the hosts' own drivers and their routers'
/// addresses, and the placement that makes them act as one.
pub struct Fleet {
    pub placement: Arc<Placement>,
    /// Each host's name, its driver (as its agent serves it) and its router's address.
    pub hosts: Vec<(String, Arc<ProcessDriver>, SocketAddr)>,
    dirs: Vec<TempDir>,
}

/// Which host a certificate belongs to.
struct Known(HashMap<String, String>);

#[async_trait::async_trait]
impl HostCheck for Known {
    async fn host_of(&self, fingerprint: &str) -> Option<String> {
        self.0.get(fingerprint).cloned()
    }
}

/// Answers `GET /api/v1/hosts/endpoint` as the server's API does, so an agent finds the port.
async fn endpoint_api(agent_port: u16) -> SocketAddr {
    let app = axum::Router::new().route(
        "/api/v1/hosts/endpoint",
        axum::routing::get(move || async move {
            axum::Json(serde_json::json!({ "agent_port": agent_port }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

impl Fleet {
    /// `count` hosts connected to a server, each with a router for [`ENV`] bound.
    pub async fn start(count: usize) -> Fleet {
        let server_dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(server_dir.path()).unwrap();
        let mut known = HashMap::new();
        let mut identities = Vec::new();
        for n in 1..=count {
            let name = format!("host{n}");
            let (key, public) = Identity::new_key().unwrap();
            let (cert, fingerprint) = ca.issue_host(&name, &public).unwrap();
            known.insert(fingerprint, name.clone());
            identities.push((name, key, cert));
        }
        let tls = ca.server_config().unwrap();
        let hosts = Hosts::listen("127.0.0.1:0".parse().unwrap(), tls, Arc::new(Known(known)))
            .await
            .unwrap();
        let api = endpoint_api(hosts.port).await;
        let mut fleet_hosts = Vec::new();
        let mut dirs = Vec::new();
        for (name, key, cert) in identities {
            let dir = tempfile::tempdir().unwrap();
            let server = format!("http://{api}");
            let identity =
                Identity::save(dir.path(), &name, &server, &key, &cert, &ca.cert_pem).unwrap();
            let driver = Arc::new(ProcessDriver::new());
            let agent = Agent::new(driver.clone(), dir.path());
            tokio::spawn(shipgate_agent::link::dial_forever(identity, agent));
            driver.bind_router(router_spec()).await.unwrap();
            let (router, _) = driver.listeners().await.pop().unwrap();
            fleet_hosts.push((name, driver, router));
            dirs.push(dir);
        }
        let connected = async {
            while !fleet_hosts.iter().all(|(h, _, _)| hosts.is_connected(h)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, connected).await.unwrap();
        let placed = EnvPlacement {
            hosts: fleet_hosts.iter().map(|(h, _, _)| h.clone()).collect(),
            batch: count,
            required: count,
            port: 0,
            front: None,
        };
        let local: Arc<dyn Driver> = Arc::new(ProcessDriver::new());
        let envs = HashMap::from([(ENV.to_owned(), placed)]);
        let placement = Placement::new(local, hosts, envs, server_dir.path(), None);
        dirs.push(server_dir);
        Fleet {
            placement,
            hosts: fleet_hosts,
            dirs,
        }
    }

    /// Starts instance `id` (a Python HTTP server) on the hosts named, each on the host's own
    /// driver; its target as the server names it (the address is the first host's).
    pub async fn start_instance(&self, id: &str, label: &str, on: &[&str]) -> RouteTarget {
        let mut addr = None;
        for (name, driver, _) in self
            .hosts
            .iter()
            .filter(|(h, _, _)| on.contains(&h.as_str()))
        {
            let started = driver
                .start(instance(id, &self.dirs[0].path().join(name)))
                .await;
            addr.get_or_insert(started.unwrap().addr);
        }
        RouteTarget {
            instance_id: InstanceId::recorded(id),
            addr: addr.unwrap(),
            label: label.into(),
        }
    }

    /// Stops instance `id` on `host`.
    pub async fn stop_instance(&self, id: &str, host: &str) {
        let (_, driver, _) = self.hosts.iter().find(|(h, _, _)| h == host).unwrap();
        let stop = StopInstance {
            instance_id: InstanceId::recorded(id),
            pid: None,
            grace: Duration::from_secs(5),
        };
        driver.stop(stop).await.unwrap();
    }
}

impl Drop for Fleet {
    /// Stops every instance on every host, whether the test passed or not (a driver dropped
    /// leaves its instances running).
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut self.hosts);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                for (_, driver, _) in hosts {
                    driver.stop_all(Duration::from_secs(5)).await;
                }
            });
        });
    }
}

/// The router of [`ENV`] on a host, on a free port.
pub fn router_spec() -> RouterSpec {
    RouterSpec {
        env: ENV.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        apps: vec!["web".into()],
        request_timeout: None,
        faults: Vec::new(),
        dependencies: Vec::new(),
    }
}

fn instance(id: &str, dir: &Path) -> StartInstance {
    std::fs::create_dir_all(dir).unwrap();
    StartInstance {
        instance_id: InstanceId::recorded(id),
        release_dir: dir.to_path_buf(),
        command: "exec python3 -m http.server ${PORT} --bind 127.0.0.1".into(),
        template_vars: BTreeMap::new(),
        env: BTreeMap::new(),
        health_path: "/".into(),
        health_timeout: PATIENCE,
        log_path: dir.join(format!("{id}.log")),
        port: None,
        crash_loop: shipgate_deploy::CrashLoopPolicy::default(),
        sandbox: None,
        image: None,
        secret_names: Vec::new(),
    }
}
