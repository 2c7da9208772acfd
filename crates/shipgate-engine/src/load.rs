//! The load generator of `verify.load` and `shipgate load`: a constant arrival rate (an open
//! model), as wrk2 does it. Each of `connections` keeps one HTTP/1.1 connection and owns every
//! `connections`-th request of the schedule; a request is sent at its intended time, or at once
//! when its connection frees up later. When its connection was still busy, its latency counts
//! from the intended time, so a stall of the app shows in the figures instead of pausing the
//! generator (coordinated omission); when it was free, from the send, so the timer's own lag is
//! not counted as the app's (a send more than 10 ms late is counted `sent_late` instead). Nothing is ever sent before its time, so the rate is never exceeded. Latencies go
//! into an HDR histogram (microseconds, 3 significant digits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use shipgate_core::load::{LoadConfig, LoadFigures, LoadRequest};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long one request may take before it counts as failed (`timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A send later than this after its intended time, while its connection was free, is the
/// generator's own lateness.
const LATE: Duration = Duration::from_millis(10);

/// The quantiles kept for plotting.
const QUANTILES: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

/// What one connection saw.
struct Tally {
    latencies: Histogram<u64>,
    sent: u64,
    answered: u64,
    late: u64,
    errors: BTreeMap<String, u64>,
    by_request: BTreeMap<String, (u64, u64)>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            sent: 0,
            answered: 0,
            late: 0,
            errors: BTreeMap::new(),
            by_request: BTreeMap::new(),
        }
    }
}

/// The `i`-th request of the mix: spread by weight, the same order every run.
fn pick(requests: &[LoadRequest], i: u64) -> &LoadRequest {
    let total: u64 = requests.iter().map(|r| u64::from(r.weight.max(1))).sum();
    // A fixed stride coprime with most totals spreads each request's share evenly.
    let mut at = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % total.max(1);
    for r in requests {
        let w = u64::from(r.weight.max(1));
        if at < w {
            return r;
        }
        at -= w;
    }
    &requests[0]
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// Runs `cfg`'s load at `rate` for `duration` after `warmup` against `addr` (with `host` as
/// its Host header) and measures it.
pub async fn generate(addr: SocketAddr, host: &str, cfg: &LoadConfig) -> LoadFigures {
    let rate = f64::from(cfg.rate.max(1));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let measured_from = start + cfg.warmup;
    let end = measured_from + cfg.duration;
    let total = ((cfg.warmup + cfg.duration).as_secs_f64() * rate).floor() as u64;
    let connections = u64::from(cfg.connections.max(1)).min(total.max(1));
    let mut workers = tokio::task::JoinSet::new();
    for k in 0..connections {
        let requests = cfg.requests.clone();
        let host = host.to_owned();
        workers.spawn(async move {
            let mut tally = Tally::new();
            let mut sender: Option<Sender> = None;
            let mut i = k;
            while i < total {
                let intended = start + interval.mul_f64(i as f64);
                if intended >= end {
                    break;
                }
                // Late by the generator's own doing only when the connection was free in time:
                // a connection still busy with an answer is the app's time.
                let free_in_time = Instant::now() <= intended;
                tokio::time::sleep_until(intended).await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let counted = intended >= measured_from;
                let request = pick(&requests, i);
                let label = request.label();
                if counted {
                    tally.sent += 1;
                    if free_in_time && now.duration_since(intended) > LATE {
                        tally.late += 1;
                    }
                    tally.by_request.entry(label.clone()).or_default().0 += 1;
                }
                let outcome = send(&mut sender, addr, &host, request).await;
                let done = Instant::now();
                if counted {
                    // From the intended time when the connection was still busy (the app's
                    // time), else from the send: the timer's own lag (up to a millisecond)
                    // is not the app's, and a larger one is counted late above.
                    let from = if free_in_time { now } else { intended };
                    let micros = done.duration_since(from).as_micros() as u64;
                    let _ = tally.latencies.record(micros.max(1));
                    match outcome {
                        Ok(status) if status < 500 => tally.answered += 1,
                        Ok(status) => {
                            tally.answered += 1;
                            *tally.errors.entry(status.to_string()).or_default() += 1;
                            tally.by_request.entry(label).or_default().1 += 1;
                        }
                        Err(kind) => {
                            *tally.errors.entry(kind.to_owned()).or_default() += 1;
                            tally.by_request.entry(label).or_default().1 += 1;
                        }
                    }
                }
                i += connections;
            }
            tally
        });
    }
    let mut all = Tally::new();
    while let Some(done) = workers.join_next().await {
        let Ok(t) = done else { continue };
        let _ = all.latencies.add(&t.latencies);
        all.sent += t.sent;
        all.answered += t.answered;
        all.late += t.late;
        for (k, n) in t.errors {
            *all.errors.entry(k).or_default() += n;
        }
        for (k, (s, f)) in t.by_request {
            let e = all.by_request.entry(k).or_default();
            e.0 += s;
            e.1 += f;
        }
    }
    let scheduled = (cfg.duration.as_secs_f64() * rate).round() as u64;
    let ms = |q: f64| all.latencies.value_at_quantile(q) as f64 / 1000.0;
    LoadFigures {
        rate,
        achieved_rate: all.sent as f64 / cfg.duration.as_secs_f64().max(1e-9),
        scheduled,
        sent: all.sent,
        answered: all.answered,
        errors: all.errors,
        by_request: all.by_request,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: all.latencies.max() as f64 / 1000.0,
        distribution: QUANTILES.iter().map(|q| (*q, ms(*q))).collect(),
        sent_late: all.late,
    }
}

/// Sends one request on the connection (made again if it broke): its status, or what failed.
async fn send(
    sender: &mut Option<Sender>,
    addr: SocketAddr,
    host: &str,
    r: &LoadRequest,
) -> Result<u16, &'static str> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(addr).await;
    }
    let Some(s) = sender.as_mut() else {
        return Err("connect");
    };
    if s.ready().await.is_err() {
        *sender = None;
        return Err("connect");
    }
    let mut builder = hyper::Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str())
        .header(hyper::header::HOST, host);
    for (k, v) in &r.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = Full::new(Bytes::from(r.body.clone().unwrap_or_default()));
    let Ok(request) = builder.body(body) else {
        return Err("bad request");
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let response = s.send_request(request).await.map_err(|_| "connect")?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "connect")?;
        Ok::<u16, &'static str>(status)
    })
    .await;
    match answer {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(kind)) => {
            *sender = None;
            Err(kind)
        }
        Err(_) => {
            // The connection holds a request that never answered: it cannot be used again.
            *sender = None;
            Err("timeout")
        }
    }
}

use shipgate_core::load::{LoadVerdict, judge};
use shipgate_core::{AppName, EnvName, EventKind, Grant, Role};
use shipgate_store::{LoadRun, NewEvent, NewLoadRun, Promotion};

use crate::{Engine, EngineError, SYSTEM};

impl Engine {
    /// Where a load goes: the environment's router, as `${URL}` names it.
    fn load_target(&self, env: &EnvName) -> Result<(SocketAddr, String), EngineError> {
        let url = self.env_url(env);
        let host = url.trim_start_matches("http://").to_owned();
        let addr = host
            .parse::<SocketAddr>()
            .map_err(|e| EngineError::LoadRefused(format!("{env} answers at {url}: {e}")))?;
        Ok((addr, host))
    }

    /// The run `version` is compared with: the newest of the same config in `env` that a
    /// release before it passed the gate with, or that seeded a baseline.
    async fn previous_load(
        &self,
        app: &AppName,
        env: &EnvName,
        fingerprint: &str,
        version: &str,
    ) -> Result<Option<LoadRun>, EngineError> {
        Ok(self.store.load_runs(app, env).await?.into_iter().find(|r| {
            r.fingerprint == fingerprint
                && r.version != version
                && (r.kind == "baseline"
                    || (r.kind == "gate" && matches!(r.verdict, LoadVerdict::Pass(_))))
        }))
    }

    /// Runs `cfg` against what `env` serves now and judges it; records the run.
    async fn measure(
        &self,
        app: &AppName,
        env: &EnvName,
        version: &str,
        promotion: Option<shipgate_core::PromotionId>,
        kind: &str,
        cfg: &LoadConfig,
    ) -> Result<LoadRun, EngineError> {
        let (addr, host) = self.load_target(env)?;
        let fingerprint = cfg.fingerprint();
        let previous = if cfg.compare_previous {
            self.previous_load(app, env, &fingerprint, version).await?
        } else {
            None
        };
        let figures = generate(addr, &host, cfg).await;
        let verdict = judge(&figures, previous.as_ref().map(|r| &r.figures), cfg);
        let message = format!(
            "load test ({kind}) of {app}@{version} in {env}: {} req/s asked, {:.1} achieved, p99 {:.1} ms: {}",
            cfg.rate,
            figures.achieved_rate,
            figures.p99_ms,
            verdict_text(&verdict)
        );
        let event = NewEvent {
            actor: SYSTEM.into(),
            kind: EventKind::LoadRan,
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            promotion_id: promotion,
            message,
            data: serde_json::json!({ "version": version, "kind": kind }),
        };
        let run = NewLoadRun {
            app: app.clone(),
            env: env.clone(),
            version: version.to_owned(),
            promotion_id: promotion,
            kind: kind.to_owned(),
            fingerprint,
            verdict,
            figures,
            compared_with: previous.as_ref().map(|r| r.id),
        };
        Ok(self.store.record_load_run(run, event).await?)
    }

    /// The `verify.load` gate of `p`: why it failed, or None.
    pub(crate) async fn load_gate(
        &self,
        p: &Promotion,
        cfg: &LoadConfig,
    ) -> Result<Option<String>, EngineError> {
        let started = self.clock.now();
        let run = self
            .measure(&p.app, &p.env, p.version.as_str(), Some(p.id), "gate", cfg)
            .await?;
        let previous = match run.compared_with {
            Some(id) => self
                .store
                .load_runs(&p.app, &p.env)
                .await?
                .into_iter()
                .find(|r| r.id == id),
            None => None,
        };
        let output = report(&run, previous.as_ref(), cfg);
        let passed = matches!(run.verdict, LoadVerdict::Pass(_));
        self.gate(p, "load", passed, output, started).await?;
        Ok((!passed).then(|| format!("load test {}", verdict_text(&run.verdict))))
    }

    /// `shipgate load run|baseline`: the environment's `verify.load` (or the rate and duration
    /// given) against what it serves now. At the end of the flow, only an admin, and only with
    /// `load.allow`.
    pub async fn load_run(
        &self,
        app: &AppName,
        env: &EnvName,
        grant: &Grant,
        rate: Option<u32>,
        duration: Option<Duration>,
        baseline: bool,
    ) -> Result<(LoadRun, String), EngineError> {
        let config = self.config();
        let env_config = config
            .environment(env)
            .ok_or_else(|| EngineError::UnknownEnvironment(env.to_string()))?;
        if shipgate_core::chaos::needs_admin(&config, env)
            && (!env_config.load_allow || !grant.has_role(Role::Admin, Some(env)))
        {
            return Err(EngineError::LoadForbidden(format!(
                "{env} is at the end of the flow: load is sent there only by an admin, and only with [environments.{env}.load] allow = true in the config"
            )));
        }
        let mut cfg = match (&env_config.verify.load, baseline) {
            (Some(c), _) => c.clone(),
            (None, true) => {
                return Err(EngineError::LoadRefused(format!(
                    "{env} has no [environments.{env}.verify.load], so there is no gate to seed a baseline for"
                )));
            }
            (None, false) => LoadConfig::get_root(100, Duration::from_secs(10)),
        };
        if !baseline {
            if let Some(r) = rate {
                cfg.rate = r.clamp(1, 1_000_000);
            }
            if let Some(d) = duration {
                cfg.duration = d;
            }
        }
        let live = self.live_record(app, env).await?.ok_or_else(|| {
            EngineError::LoadRefused(format!("nothing of {app} is live in {env} to load"))
        })?;
        let kind = if baseline { "baseline" } else { "run" };
        let run = self
            .measure(app, env, live.version.as_str(), None, kind, &cfg)
            .await?;
        let previous = match run.compared_with {
            Some(id) => self
                .store
                .load_runs(app, env)
                .await?
                .into_iter()
                .find(|r| r.id == id),
            None => None,
        };
        let text = report(&run, previous.as_ref(), &cfg);
        Ok((run, text))
    }
}

fn verdict_text(v: &LoadVerdict) -> String {
    match v {
        LoadVerdict::Pass(why) => format!("passed: {why}"),
        LoadVerdict::Fail(why) => format!("failed: {why}"),
        LoadVerdict::Inconclusive(why) => format!("inconclusive: {why}"),
    }
}

/// A run as the gate and the commands show it: each figure beside the previous release's.
pub fn report(run: &LoadRun, previous: Option<&LoadRun>, cfg: &LoadConfig) -> String {
    let f = &run.figures;
    let mut out = format!(
        "{} req/s for {:?} after a {:?} warmup, {} connections, {} requests in the mix: {:.1} req/s achieved ({} of {} sent, {} late)\n",
        cfg.rate,
        cfg.duration,
        cfg.warmup,
        cfg.connections,
        cfg.requests.len(),
        f.achieved_rate,
        f.sent,
        f.scheduled,
        f.sent_late
    );
    let head = match previous {
        Some(p) => format!("{}@{} (run {})", run.app, p.version, p.id),
        None => "previous: none with this config".to_owned(),
    };
    out.push_str(&format!(
        "{:<10} {:>16} {:>28}\n",
        "",
        format!("{}@{}", run.app, run.version),
        head
    ));
    let row = |name: &str, now: String, then: Option<String>| {
        format!(
            "{name:<10} {now:>16} {:>28}\n",
            then.unwrap_or_else(|| "-".into())
        )
    };
    for (name, now, then) in [
        ("p50", f.p50_ms, previous.map(|p| p.figures.p50_ms)),
        ("p90", f.p90_ms, previous.map(|p| p.figures.p90_ms)),
        ("p99", f.p99_ms, previous.map(|p| p.figures.p99_ms)),
        ("max", f.max_ms, previous.map(|p| p.figures.max_ms)),
    ] {
        out.push_str(&row(
            name,
            format!("{now:.1} ms"),
            then.map(|t| format!("{t:.1} ms")),
        ));
    }
    let errors = |f: &LoadFigures| {
        let n: u64 = f.errors.values().sum();
        format!("{n} ({:.3}%)", f.error_rate() * 100.0)
    };
    out.push_str(&row(
        "errors",
        errors(f),
        previous.map(|p| errors(&p.figures)),
    ));
    for (status, n) in &f.errors {
        out.push_str(&format!("  {n}× {status}\n"));
    }
    for (label, (sent, failed)) in &f.by_request {
        out.push_str(&format!("  {label}: {sent} sent, {failed} failed\n"));
    }
    out.push_str(&format!("verdict: {}\n", verdict_text(&run.verdict)));
    out
}
