//! The agent protocol between hosts: the agent dials out to the server (so its host needs no
//! inbound port), the two authenticate each other with mutual TLS, and then the roles turn
//! round: over that one connection the server is the HTTP/2 client and the agent serves the same
//! `/v1/` operations it serves on its Unix socket. HTTP/2 keep-alive pings notice a host that
//! stopped answering within seconds.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::broadcast;

use crate::tls::{Identity, fingerprint};

/// How often each side pings the other, and how long an unanswered ping may wait: a host that
/// stops answering is unreachable within about 3 s.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Pause before an agent dials again after losing the server.
const REDIAL: Duration = Duration::from_secs(1);

/// Which hosts the server accepts: the host a certificate fingerprint was issued to, if it has
/// not been revoked.
#[async_trait::async_trait]
pub trait HostCheck: Send + Sync {
    /// The host name pinned to this fingerprint, or None.
    async fn host_of(&self, fingerprint: &str) -> Option<String>;
}

/// One host as the server sees it.
#[derive(Clone, Debug)]
pub struct LinkView {
    /// Its name.
    pub name: String,
    /// Whether its agent is connected now.
    pub connected: bool,
    /// Since when it is connected, or unreachable.
    pub since: jiff::Timestamp,
    /// The address it dialled from (how the server reaches its environments' routers).
    pub peer: Option<IpAddr>,
}

struct Link {
    sender: Option<SendRequest<Full<Bytes>>>,
    since: jiff::Timestamp,
    peer: Option<IpAddr>,
    /// Counts connections, so that the end of an old one does not mark a newer one gone.
    generation: u64,
    task: Option<tokio::task::AbortHandle>,
}

/// The server's side: the agents connected to it, by host name.
pub struct Hosts {
    links: Mutex<BTreeMap<String, Link>>,
    connected: broadcast::Sender<String>,
    /// The port agents dial.
    pub port: u16,
    /// The epoch of the engine's lease this server commands the hosts under (0: none yet).
    epoch: std::sync::atomic::AtomicI64,
}

impl Hosts {
    /// Every request to a host carries `epoch` from now on (the lease this server leads under):
    /// an agent that was commanded under a newer one refuses it.
    pub fn set_epoch(&self, epoch: i64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn epoch(&self) -> i64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Accepts agents on `addr` with `tls`, keeping those `check` knows.
    pub async fn listen(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        check: Arc<dyn HostCheck>,
    ) -> Result<Arc<Hosts>, String> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for agents (change `agent_listen` in [server]): {e}")
        })?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let (connected, _) = broadcast::channel(64);
        let hosts = Arc::new(Hosts {
            links: Mutex::default(),
            connected,
            port,
            epoch: std::sync::atomic::AtomicI64::new(0),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let weak = Arc::downgrade(&hosts);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(hosts) = weak.upgrade() else { return };
                let acceptor = acceptor.clone();
                let check = Arc::clone(&check);
                tokio::spawn(async move {
                    if let Err(e) = hosts.take(acceptor, tcp, peer, check).await {
                        tracing::warn!("an agent from {peer} was refused: {e}");
                    }
                });
            }
        });
        Ok(hosts)
    }

    async fn take(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        check: Arc<dyn HostCheck>,
    ) -> Result<(), String> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp))
            .await
            .map_err(|_| "the TLS handshake took too long".to_owned())?
            .map_err(|e| format!("TLS: {e}"))?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let print = fingerprint(cert);
        let name = check.host_of(&print).await.ok_or_else(|| {
            format!("its certificate ({print}) belongs to no host, or was revoked")
        })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let generation = {
            let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
            let generation = links.get(&name).map_or(1, |l| l.generation + 1);
            if let Some(old) = links.get(&name).and_then(|l| l.task.clone()) {
                old.abort();
            }
            let hosts = Arc::clone(&self);
            let ended = name.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!("host {ended}: the connection ended: {e}");
                }
                hosts.lost(&ended, generation);
            });
            links.insert(
                name.clone(),
                Link {
                    sender: Some(sender),
                    since: jiff::Timestamp::now(),
                    peer: Some(peer.ip()),
                    generation,
                    task: Some(task.abort_handle()),
                },
            );
            generation
        };
        // Removed while it was being let in: cut off now (`disconnect` ran before the link).
        if check.host_of(&print).await.as_deref() != Some(name.as_str()) {
            self.disconnect(&name);
            return Err(format!("host {name} was removed while it connected"));
        }
        tracing::info!("host {name} connected from {peer} (connection {generation})");
        let _ = self.connected.send(name);
        Ok(())
    }

    fn lost(&self, name: &str, generation: u64) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = links.get_mut(name)
            && link.generation == generation
            && link.sender.is_some()
        {
            tracing::warn!("host {name} is unreachable");
            link.sender = None;
            link.task = None;
            link.since = jiff::Timestamp::now();
        }
    }

    /// Cuts the connection of `name` (its certificate was revoked).
    pub fn disconnect(&self, name: &str) {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = links.get_mut(name) {
            if let Some(task) = link.task.take() {
                task.abort();
            }
            link.sender = None;
            link.since = jiff::Timestamp::now();
        }
    }

    /// Where to send the next request to `name`, or why it cannot be reached.
    pub(crate) fn sender(&self, name: &str) -> Result<SendRequest<Full<Bytes>>, String> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        match links.get(name) {
            Some(Link {
                sender: Some(s), ..
            }) if !s.is_closed() => Ok(s.clone()),
            Some(link) => Err(format!(
                "host {name} is unreachable (since {})",
                link.since.strftime("%Y-%m-%d %H:%M:%S UTC")
            )),
            None => Err(format!(
                "host {name} has not connected since the server started (is it added with `shipgate host add {name}`, and its agent running?)"
            )),
        }
    }

    /// Whether `name` is connected now.
    pub fn is_connected(&self, name: &str) -> bool {
        self.sender(name).is_ok()
    }

    /// Every host that has connected since the server started.
    pub fn views(&self) -> Vec<LinkView> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links
            .iter()
            .map(|(name, l)| LinkView {
                name: name.clone(),
                connected: l.sender.as_ref().is_some_and(|s| !s.is_closed()),
                since: l.since,
                peer: l.peer,
            })
            .collect()
    }

    /// The address `name` last dialled from.
    pub fn peer(&self, name: &str) -> Option<IpAddr> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.get(name).and_then(|l| l.peer)
    }

    /// Host names as they connect (or connect again).
    pub fn connections(&self) -> broadcast::Receiver<String> {
        self.connected.subscribe()
    }
}

/// The agent's side: dials the server named in `identity` and serves `agent` over the
/// connection, dialling again whenever it is lost, until the process ends.
pub async fn dial_forever(identity: Identity, agent: Arc<crate::Agent>) -> Result<(), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(identity.client_config()?));
    let app = crate::serve::routes(agent);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut said = String::new();
    let mut last: Option<SocketAddr> = None;
    loop {
        match dial_once(&identity, &connector, &http, app.clone(), &mut last).await {
            Ok(()) => said.clear(),
            Err(e) if e != said => {
                tracing::warn!("could not reach the server {}: {e}", identity.server);
                said = e;
            }
            Err(_) => {}
        }
        tokio::time::sleep(REDIAL).await;
    }
}

/// Asks the server's API which port agents dial (`GET /api/v1/hosts/endpoint`), for the
/// server at the API address `server` (`http://HOST:PORT`).
pub async fn endpoint(http: &reqwest::Client, server: &str) -> Result<SocketAddr, String> {
    let url = format!("{}/api/v1/hosts/endpoint", server.trim_end_matches('/'));
    let answer: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let port = answer["agent_port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("GET {url}: no agent_port in {answer}"))?;
    let host = reqwest::Url::parse(server)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .ok_or_else(|| format!("{server} is not an http://HOST:PORT address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {host}"))
}

/// The agent-protocol address of the first server of `servers` (one API address, or several
/// comma-separated) that answers with one: only the server leading hands it out, the others
/// stand by (503), so the agent finds the leader.
async fn leader_endpoint(
    http: &reqwest::Client,
    servers: &str,
) -> Result<(SocketAddr, tokio::net::TcpStream), String> {
    let mut failed = Vec::new();
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let found = match endpoint(http, server).await {
            Ok(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map(|tcp| (addr, tcp))
                .map_err(|e| format!("connecting to {addr}: {e}")),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => return Ok(found),
            Err(e) => failed.push(e),
        }
    }
    Err(failed.join("; "))
}

async fn dial_once(
    identity: &Identity,
    connector: &tokio_rustls::TlsConnector,
    http: &reqwest::Client,
    app: axum::Router,
    last: &mut Option<SocketAddr>,
) -> Result<(), String> {
    // The address that answered last time first: a restarting server keeps its agent port,
    // and its API may not answer yet.
    let tried = match *last {
        Some(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .ok()
            .map(|tcp| (addr, tcp)),
        None => None,
    };
    let (addr, tcp) = match tried {
        Some(found) => found,
        None => leader_endpoint(http, &identity.server).await?,
    };
    *last = Some(addr);
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE, connector.connect(Identity::server_name(), tcp))
        .await
        .map_err(|_| format!("the TLS handshake with {addr} took too long"))?
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    tracing::info!(
        "connected to the server at {addr} as host {}",
        identity.name
    );
    let service = hyper_util::service::TowerToHyperService::new(app);
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| format!("the connection to {addr} ended: {e}"))?;
    Err(format!("the server at {addr} closed the connection"))
}
