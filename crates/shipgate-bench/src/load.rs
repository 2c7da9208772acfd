//! The load client of `shipgate-bench router`: K tasks, each with its own HTTP/1.1 keep-alive
//! connection, sending GET requests one after the other (the next as soon as the previous
//! response body has been read) until told to stop. Every measurement of the benchmark goes
//! through this code: the environment under switches, the rollback poll, and the backend, the
//! router and nginx. It runs on a tokio runtime of its own (see `router::run`), so the client
//! does not share worker threads with the in-process server it measures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// At most this many failures per connection are kept with their time and detail.
const KEEP_FAILURES: usize = 20;
/// At most this many distinct response bodies are counted (when asked); others are lumped.
const KEEP_BODIES: usize = 8;

/// One keep-alive HTTP/1.1 connection to a loopback address.
pub struct Conn {
    host: String,
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Connects (TCP_NODELAY) and starts the connection's task on the current runtime.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            host: addr.to_string(),
            sender,
        })
    }

    /// Waits until the connection can take the next request; false when the server has closed
    /// it cleanly (it answered `Connection: close`, or closed it while idle and the client saw
    /// that before sending).
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// GET `path`: the status and the whole body, or what went wrong.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let request = Request::get(path)
            .header(header::HOST, &self.host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {}", describe(&e)))?
            .to_bytes();
        Ok((status, body))
    }
}

/// hyper's message with its causes ("connection reset by peer" is in the source).
fn describe(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One failed request.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Since the load started.
    pub at: Duration,
    /// The kind (counted in [`Report::kinds`]) and any detail.
    pub what: String,
}

/// What one connection's task saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    failed: u64,
    reconnects: u64,
    latencies: Vec<u64>,
    kinds: BTreeMap<String, u64>,
    failures: Vec<Failure>,
    bodies: Option<BTreeMap<Bytes, u64>>,
}

impl Tally {
    fn fail(&mut self, started: Instant, kind: String, detail: &str) {
        self.failed += 1;
        if self.failures.len() < KEEP_FAILURES {
            let what = if detail.is_empty() {
                kind.clone()
            } else {
                format!("{kind}: {detail}")
            };
            self.failures.push(Failure {
                at: started.elapsed(),
                what,
            });
        }
        *self.kinds.entry(kind).or_default() += 1;
    }

    fn count_body(&mut self, body: Bytes) {
        let Some(bodies) = self.bodies.as_mut() else {
            return;
        };
        let key = if bodies.contains_key(&body) || bodies.len() < KEEP_BODIES {
            body
        } else {
            Bytes::from_static(b"(other bodies)")
        };
        *bodies.entry(key).or_default() += 1;
    }
}

/// The result of one load run.
#[derive(Debug)]
pub struct Report {
    /// Requests sent (a failed connection attempt counts as one request sent and failed).
    pub sent: u64,
    /// Answered with a status below 500 and read to the end.
    pub ok: u64,
    /// Connection errors, resets, bodies cut short and 5xx answers.
    pub failed: u64,
    /// Connections the server closed cleanly between two requests, after which the client
    /// opened a new one; not failures.
    pub reconnects: u64,
    /// From the start until the stop signal.
    pub elapsed: Duration,
    /// Failed requests by kind.
    pub kinds: BTreeMap<String, u64>,
    /// The first failures, by time.
    pub failures: Vec<Failure>,
    /// Successful responses by body (trimmed), when asked for.
    pub bodies: BTreeMap<String, u64>,
    /// Latency of every successful request, nanoseconds, sorted.
    latencies: Vec<u64>,
}

impl Report {
    /// One report of two runs against the same target: counts and times added, latencies pooled.
    pub fn merge(mut self, other: Report) -> Report {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        self.reconnects += other.reconnects;
        self.elapsed += other.elapsed;
        for (kind, n) in other.kinds {
            *self.kinds.entry(kind).or_default() += n;
        }
        self.failures.extend(other.failures);
        for (body, n) in other.bodies {
            *self.bodies.entry(body).or_default() += n;
        }
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self
    }

    /// Successful requests per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The latency at quantile `q` (0..=1) of the successful requests, nearest rank.
    pub fn latency(&self, q: f64) -> Duration {
        match nearest_rank(self.latencies.len(), q) {
            Some(i) => Duration::from_nanos(self.latencies[i]),
            None => Duration::ZERO,
        }
    }
}

/// Index of the nearest-rank quantile `q` in a sorted list of `n` values.
pub fn nearest_rank(n: usize, q: f64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let rank = (q * n as f64).ceil() as usize;
    Some(rank.clamp(1, n) - 1)
}

/// A running load: K connections sending GET `path` until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    /// Starts `connections` tasks on `runtime`, each with its own connection to `addr`;
    /// `count_bodies` also counts the successful responses by body (which release answered).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        addr: SocketAddr,
        path: &str,
        connections: usize,
        count_bodies: bool,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let path: Arc<str> = path.into();
        let workers = (0..connections.max(1))
            .map(|_| {
                let tally = Tally {
                    bodies: count_bodies.then(BTreeMap::new),
                    ..Tally::default()
                };
                runtime.spawn(worker(addr, path.clone(), stop.clone(), started, tally))
            })
            .collect();
        Self {
            stop,
            started,
            workers,
        }
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops sending; each task finishes the request it is on. Returns the merged report.
    pub async fn stop(self) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Release);
        let elapsed = self.started.elapsed();
        let mut report = Report {
            sent: 0,
            ok: 0,
            failed: 0,
            reconnects: 0,
            elapsed,
            kinds: BTreeMap::new(),
            failures: Vec::new(),
            bodies: BTreeMap::new(),
            latencies: Vec::new(),
        };
        for worker in self.workers {
            let t = worker.await.context("a load task panicked")?;
            report.sent += t.sent;
            report.ok += t.ok;
            report.failed += t.failed;
            report.reconnects += t.reconnects;
            report.latencies.extend(t.latencies);
            for (kind, n) in t.kinds {
                *report.kinds.entry(kind).or_default() += n;
            }
            report.failures.extend(t.failures);
            for (body, n) in t.bodies.into_iter().flatten() {
                let body = String::from_utf8_lossy(&body).trim().to_owned();
                *report.bodies.entry(body).or_default() += n;
            }
        }
        report.latencies.sort_unstable();
        report.failures.sort_by_key(|f| f.at);
        report.failures.truncate(KEEP_FAILURES);
        Ok(report)
    }

    /// Runs a load for `duration` and returns its report.
    pub async fn run_for(
        runtime: &tokio::runtime::Handle,
        addr: SocketAddr,
        path: &str,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<Report> {
        let load = Self::start(runtime, addr, path, connections, false);
        tokio::time::sleep(duration).await;
        load.stop().await
    }
}

/// One connection's loop: (re)connect when needed, GET, record, until stopped.
async fn worker(
    addr: SocketAddr,
    path: Arc<str>,
    stop: Arc<AtomicBool>,
    started: Instant,
    mut t: Tally,
) -> Tally {
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Acquire) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    t.sent += 1;
                    let cause = e.root_cause().to_string();
                    t.fail(started, format!("connect: {cause}"), "");
                    // Do not spin on a refused port.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        if !c.ready().await {
            t.reconnects += 1;
            conn = None;
            continue;
        }
        t.sent += 1;
        let begun = Instant::now();
        match c.get(&path).await {
            Ok((status, body)) if status.is_server_error() => {
                let body = String::from_utf8_lossy(&body);
                let excerpt: String = body.trim().chars().take(160).collect();
                t.fail(started, format!("HTTP {status}"), &excerpt);
            }
            Ok((_, body)) => {
                t.ok += 1;
                t.latencies
                    .push(u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX));
                t.count_body(body);
            }
            Err(e) => {
                t.fail(started, e, "");
                conn = None;
            }
        }
    }
    t
}
