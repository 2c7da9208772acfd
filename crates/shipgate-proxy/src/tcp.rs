//! The TCP fault proxy: one listener in front of one dependency of an environment's apps (a
//! database, a cache), forwarding each connection to it and applying Toxiproxy's toxics with
//! their parameters, `stream` and `toxicity`: latency (with jitter), bandwidth, slow_close,
//! timeout, reset_peer, slicer and limit_data, and `down` (the proxy disabled: no listener,
//! every connection closed). Toxics added or removed act on open connections too. Whether a
//! toxic acts on a connection is rolled once per connection against its toxicity.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use shipgate_core::chaos::{DependencyProxy, Stream, Toxic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CHUNK: usize = 32 * 1024;

/// A running TCP fault proxy.
#[derive(Debug)]
pub struct TcpProxy {
    shared: Arc<Shared>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    spec: RwLock<DependencyProxy>,
    /// Bumped on every change of the spec, so open connections look at their toxics again.
    changed: watch::Sender<u64>,
    /// Bumped when the proxy goes down: every open connection closes.
    down: watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts the proxy as `spec` says (listening unless it is disabled).
    pub async fn start(spec: DependencyProxy) -> io::Result<TcpProxy> {
        let proxy = TcpProxy {
            shared: Arc::new(Shared {
                spec: RwLock::new(spec.clone()),
                changed: watch::channel(0).0,
                down: watch::channel(0).0,
            }),
            accepting: Mutex::new(None),
        };
        if spec.enabled {
            proxy.listen(spec.listen).await?;
        }
        Ok(proxy)
    }

    /// What the proxy does now.
    pub fn spec(&self) -> DependencyProxy {
        self.shared
            .spec
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes `spec` (the same address): new toxics act at once on open connections too; a
    /// proxy disabled closes its listener and every connection, and enabled listens again.
    pub async fn set(&self, spec: DependencyProxy) -> io::Result<()> {
        let was = self.spec();
        *self
            .shared
            .spec
            .write()
            .unwrap_or_else(PoisonError::into_inner) = spec.clone();
        self.shared.changed.send_modify(|n| *n += 1);
        match (was.enabled, spec.enabled) {
            (true, false) => self.close().await,
            (false, true) => self.listen(spec.listen).await?,
            _ => {}
        }
        Ok(())
    }

    /// Stops listening and closes every connection.
    pub async fn close(&self) {
        let task = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.shared.down.send_modify(|n| *n += 1);
    }

    async fn listen(&self, at: std::net::SocketAddr) -> io::Result<()> {
        let listener = TcpListener::bind(at).await?;
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(serve(client, shared.clone()));
            }
        });
        *self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        self.shared.down.send_modify(|n| *n += 1);
    }
}

/// One client connection and its dependency's, as the toxics see them.
struct Link {
    shared: Arc<Shared>,
    /// Whether each toxic (by stream and name) acts on this connection, rolled once.
    rolled: Mutex<HashMap<(Stream, String), bool>>,
    /// Set to end both directions; `reset` says to end them with a TCP reset.
    end: watch::Sender<bool>,
    reset: std::sync::atomic::AtomicBool,
}

impl Link {
    /// The toxics of `stream` that act on this connection, in the order they were added.
    fn toxics(&self, stream: Stream) -> Vec<Toxic> {
        let spec = self
            .shared
            .spec
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rolled = self.rolled.lock().unwrap_or_else(PoisonError::into_inner);
        spec.toxics
            .iter()
            .filter(|t| t.stream == stream)
            .filter(|t| {
                *rolled
                    .entry((stream, t.name.clone()))
                    .or_insert_with(|| crate::faults::roll() < t.toxicity)
            })
            .cloned()
            .collect()
    }

    fn finish(&self, reset: bool) {
        if reset {
            self.reset.store(true, std::sync::atomic::Ordering::Release);
        }
        self.end.send_replace(true);
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let upstream = shared
        .spec
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .upstream
        .clone();
    let Ok(dependency) = TcpStream::connect(&upstream).await else {
        tracing::debug!(%upstream, "the dependency does not answer; closing the client");
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = dependency.set_nodelay(true);
    let link = Arc::new(Link {
        shared: shared.clone(),
        rolled: Mutex::default(),
        end: watch::channel(false).0,
        reset: std::sync::atomic::AtomicBool::new(false),
    });
    let mut down = shared.down.subscribe();
    let (client_read, client_write) = client.into_split();
    let (dep_read, dep_write) = dependency.into_split();
    let both = async {
        tokio::join!(
            pipe(client_read, dep_write, Stream::Upstream, &link),
            pipe(dep_read, client_write, Stream::Downstream, &link),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = down.changed() => {}
    }
}

/// Copies one direction of a link through its toxics until its source ends or the link does.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, stream: Stream, link: &Link) {
    let mut changed = link.shared.changed.subscribe();
    let mut end = link.end.subscribe();
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    // Ending with a reset: no FIN first (dropping a write half would send one), and no
    // lingering, so the socket's close is a RST.
    let ended = |to: OwnedWriteHalf| {
        if link.reset.load(std::sync::atomic::Ordering::Acquire) {
            let _ = to.as_ref().set_zero_linger();
            to.forget();
        }
    };
    loop {
        let toxics = link.toxics(stream);
        let find = |kind: &str| toxics.iter().find(|t| t.kind == kind);
        // timeout: nothing passes; after `timeout` ms (never with 0) the connection closes.
        // reset_peer: after `timeout` ms the connection is reset.
        for (kind, reset) in [("reset_peer", true), ("timeout", false)] {
            if let Some(t) = find(kind) {
                let wait = t.attribute("timeout");
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = end.changed() => { ended(to); return }
                    () = sleep_or_never(wait) => {
                        link.finish(reset);
                        ended(to);
                        return;
                    }
                }
            }
        }
        if find("reset_peer").is_some() || find("timeout").is_some() {
            continue;
        }
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = changed.changed() => continue,
            _ = end.changed() => { ended(to); return }
        };
        let n = match read {
            Ok(0) => {
                if let Some(t) = find("slow_close") {
                    tokio::time::sleep(Duration::from_millis(t.attribute("delay"))).await;
                }
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => {
                link.finish(false);
                return;
            }
        };
        let mut data = &buf[..n];
        let mut last = false;
        if let Some(t) = find("limit_data") {
            let left = t.attribute("bytes").saturating_sub(sent);
            if (data.len() as u64) >= left {
                data = &data[..left as usize];
                last = true;
            }
        }
        if let Some(t) = find("latency") {
            let (latency, jitter) = (t.attribute("latency") as f64, t.attribute("jitter") as f64);
            let ms = (latency + (crate::faults::roll() * 2.0 - 1.0) * jitter).max(0.0);
            tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
        }
        if write_out(&mut to, data, find("slicer"), find("bandwidth"))
            .await
            .is_err()
        {
            link.finish(false);
            return;
        }
        sent += data.len() as u64;
        if last {
            link.finish(false);
            let _ = to.shutdown().await;
            return;
        }
    }
}

async fn sleep_or_never(ms: u64) {
    if ms == 0 {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Writes `data`, in slices (slicer: `average_size` ± `size_variation` bytes, `delay` µs
/// apart) and at a rate (bandwidth: `rate` KB/s) when those toxics act.
async fn write_out(
    to: &mut OwnedWriteHalf,
    data: &[u8],
    slicer: Option<&Toxic>,
    bandwidth: Option<&Toxic>,
) -> io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let size = match slicer {
            Some(s) => {
                let average = s.attribute("average_size").max(1) as f64;
                let variation = s.attribute("size_variation") as f64;
                let size = average + (crate::faults::roll() * 2.0 - 1.0) * variation;
                (size.round().max(1.0) as usize).min(rest.len())
            }
            None => rest.len(),
        };
        let (piece, after) = rest.split_at(size);
        to.write_all(piece).await?;
        if let Some(b) = bandwidth {
            let rate = b.attribute("rate").max(1) as f64 * 1000.0;
            tokio::time::sleep(Duration::from_secs_f64(piece.len() as f64 / rate)).await;
        }
        rest = after;
        if let Some(s) = slicer
            && !rest.is_empty()
        {
            tokio::time::sleep(Duration::from_micros(s.attribute("delay"))).await;
        }
    }
    Ok(())
}
