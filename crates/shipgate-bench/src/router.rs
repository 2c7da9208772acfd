//! `shipgate-bench router`: the router under switches, the rollback time, and throughput and
//! latency against nginx, in one run (issue 3; see docs/BENCHMARKS.md).
//!
//! A server starts in this process on the built-in sample app (one environment is used:
//! `development`, no verification tests, the default `standby` of 10 minutes), with web@1.0.0
//! and web@1.1.0 registered and 1.0.0 live. Then:
//!
//! 1. Zero drops: constant load on the environment's address while promote/rollback cycles run.
//! 2. Rollback time: from just before `POST /api/v1/rollbacks` until a poller on its own
//!    keep-alive connection first gets `/version` answered by the old release.
//! 3. Throughput and latency: the live instance's port directly, the router in front of it, and
//!    Debian's nginx in front of the same port, each with the same client and settings.
//!
//! All client traffic goes through [`crate::load`], on a runtime of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shipgate_api::records::Promotion;
use shipgate_api::requests::RollbackRequest;
use shipgate_api::status::AppStatus;
use shipgate_core::PromotionState;

use crate::load::{self, Conn, Load, Report};
use crate::wrk::{self, Figures};
use shipgate::client::Client;
use shipgate::demo::{SampleServer, SampleSetup, free_port, minimal_release, sample_release};
use shipgate::output::table;

pub(crate) const APP: &str = "web";
pub(crate) const ENV: &str = "development";
pub(crate) const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";
/// The release of the minimal responder, promoted for part 3's minimal backend.
const MINIMAL: &str = "1.2.0";
/// Longest wait for the address to serve a version, or for a port to open.
const PATIENCE: Duration = Duration::from_secs(15);
/// Discarded run before each measured throughput run.
const WARM_UP: Duration = Duration::from_secs(1);

/// The command's options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of the zero-drops load.
    pub duration: Duration,
    /// Promote/rollback cycles during it.
    pub cycles: usize,
    /// Rollbacks timed.
    pub rollbacks: usize,
    /// Length of each throughput run.
    pub load_duration: Duration,
    /// Keep-alive connections of the load client.
    pub connections: usize,
    /// Worker threads of the load client's runtime.
    pub client_threads: usize,
    /// Run the instances and the router in a local agent process, as `shipgate server` does by
    /// default, instead of in the benchmark's own process.
    pub agent: bool,
    /// The backends of part 3, in order.
    pub backends: Vec<Backend>,
    /// The load clients of part 3, in order.
    pub clients: Vec<LoadClient>,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

pub async fn run(o: Options) -> anyhow::Result<ExitCode> {
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    let env_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let setup = SampleSetup {
        agent: o.agent,
        ..SampleSetup::default()
    };
    let sample =
        SampleServer::start_with("shipgate-bench-router-", free_port(0)?, ports, setup).await?;
    println!(
        "data plane: {}",
        if o.agent {
            "a local agent process (data_plane = \"agent\", the default of shipgate server)"
        } else {
            "the benchmark's own process (data_plane = \"server\")"
        }
    );
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("starting the load client's runtime")?;
    // Ctrl-C or SIGTERM ends the run cleanly: the instances (in process groups of their own)
    // and nginx are stopped, not left behind.
    let result = tokio::select! {
        r = all_parts(&o, &sample, client_rt.handle(), env_addr) => r,
        () = shipgate::commands::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    client_rt.shutdown_background();
    sample.stop().await?;
    result.map(|()| ExitCode::SUCCESS)
}

async fn all_parts(
    o: &Options,
    sample: &SampleServer,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
) -> anyhow::Result<()> {
    let client = &sample.client;
    for version in [OLD, NEW, MINIMAL] {
        let dir = sample.work.path().join(format!("{APP}-{version}"));
        match version {
            MINIMAL => minimal_release(&dir, version)?,
            _ => sample_release(&dir, version, false)?,
        }
        shipgate::commands::upload(client, APP, version, &dir, Default::default()).await?;
    }
    promote(client, OLD).await?;
    wait_serves(rt, env_addr, OLD).await?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "shipgate-bench router: the sample app `{APP}` in environment `{ENV}` (router on {env_addr}), \
         web@{OLD} and web@{NEW} registered"
    );
    println!(
        "client: {} keep-alive HTTP/1.1 connections on {} thread(s) of its own, GET / in a loop; {cores} CPU cores\n",
        o.connections, o.client_threads
    );
    zero_drops(o, client, rt, env_addr).await?;
    rollback_time(o, client, rt, env_addr).await?;
    throughput(o, client, rt, env_addr).await
}

/// Promotes `version` into the environment and waits until it has succeeded.
pub(crate) async fn promote(client: &Client, version: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let p = client.promote(&format!("{APP}@{version}"), ENV).await?;
    let done = client.wait_promotion(p.id, |_| {}).await?.promotion;
    if done.state != PromotionState::Succeeded {
        bail!(
            "promotion of {APP}@{version} to {ENV} ended {}: {}",
            done.state,
            done.reason.unwrap_or_default()
        );
    }
    Ok(started.elapsed())
}

/// One rollback: (the API round trip, whether it answered already `succeeded`, i.e. switched
/// to the warm standby). A rollback that went through the deploy path is waited for.
async fn rollback(client: &Client) -> anyhow::Result<(Duration, bool)> {
    let started = Instant::now();
    let body = RollbackRequest {
        app: APP.to_owned(),
        env: ENV.to_owned(),
        to: None,
    };
    let p: Promotion = client.post("/rollbacks", &body).await?;
    let took = started.elapsed();
    if p.state == PromotionState::Succeeded {
        return Ok((took, true));
    }
    let done = client.wait_promotion(p.id, |_| {}).await?.promotion;
    if done.state != PromotionState::Succeeded {
        bail!(
            "rollback in {ENV} ended {}: {}",
            done.state,
            done.reason.unwrap_or_default()
        );
    }
    Ok((took, false))
}

/// Polls `/version` on a fresh connection until it answers `version`.
pub(crate) async fn wait_serves(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    version: &str,
) -> anyhow::Result<()> {
    let version = version.to_owned();
    rt.spawn(async move {
        let deadline = Instant::now() + PATIENCE;
        let mut conn = None;
        loop {
            if Instant::now() > deadline {
                bail!("{addr} did not serve {version} within {PATIENCE:?}");
            }
            if conn.is_none() {
                conn = Conn::open(addr).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                match c.get("/version").await {
                    Ok((s, body)) if s.is_success() && body.trim_ascii() == version.as_bytes() => {
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

/// What happened in one promote/rollback cycle, in seconds since the load started.
struct Cycle {
    promote_at: Duration,
    promote_took: Duration,
    rollback_at: Duration,
    rollback_took: Duration,
    instant: bool,
}

/// Part 1: failed requests out of requests sent under switches.
async fn zero_drops(
    o: &Options,
    client: &Client,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
) -> anyhow::Result<()> {
    let cycles_wanted = o.cycles.max(1);
    eprintln!(
        "  running part 1 ({:.0} s of load, {cycles_wanted} promote/rollback cycles)…",
        o.duration.as_secs_f64()
    );
    let load = Load::start(rt, env_addr, "/", o.connections, true);
    let t0 = load.started();
    let slot = o.duration / u32::try_from(cycles_wanted).unwrap_or(u32::MAX);
    let mut cycles: Vec<Cycle> = Vec::new();
    // A cycle: promote a quarter into its slot, roll back at three quarters, so the load sees
    // both releases and every switch happens under load.
    let run = async {
        for i in 0..u32::try_from(cycles_wanted).unwrap_or(u32::MAX) {
            sleep_until(t0 + slot * i + slot / 4).await;
            let promote_at = t0.elapsed();
            let promote_took = promote(client, NEW).await?;
            sleep_until(t0 + slot * i + slot * 3 / 4).await;
            let rollback_at = t0.elapsed();
            let (rollback_took, instant) = rollback(client).await?;
            cycles.push(Cycle {
                promote_at,
                promote_took,
                rollback_at,
                rollback_took,
                instant,
            });
        }
        sleep_until(t0 + o.duration).await;
        anyhow::Ok(())
    };
    let outcome = run.await;
    let report = load.stop().await?;

    let instant = cycles.iter().filter(|c| c.instant).count();
    let rows = vec![
        vec![
            "load".into(),
            format!(
                "{:.1} s, {} connections, GET /",
                report.elapsed.as_secs_f64(),
                o.connections
            ),
            String::new(),
        ],
        vec![
            "promote/rollback cycles done".into(),
            format!("{} / {cycles_wanted}", cycles.len()),
            String::new(),
        ],
        vec![
            "rollbacks answered already switched (standby)".into(),
            format!("{instant} / {}", cycles.len()),
            String::new(),
        ],
        vec![
            "requests sent".into(),
            report.sent.to_string(),
            String::new(),
        ],
        vec![
            "failed (connection errors, resets, 5xx)".into(),
            report.failed.to_string(),
            String::new(),
        ],
        vec![
            "failed / sent".into(),
            format!(
                "{} / {} ({:.4} %)",
                report.failed,
                report.sent,
                100.0 * report.failed as f64 / report.sent.max(1) as f64
            ),
            format!("0  {}", verdict(report.failed == 0)),
        ],
        vec![
            "connections closed cleanly by the server, reopened".into(),
            report.reconnects.to_string(),
            String::new(),
        ],
        vec![
            "throughput, p50, p99 during the run".into(),
            format!(
                "{:.0} req/s, {}, {}",
                report.per_second(),
                ms(report.latency(0.5)),
                ms(report.latency(0.99))
            ),
            String::new(),
        ],
    ];
    println!(
        "1. Zero drops: {cycles_wanted} cycles of promote web@{NEW} (until succeeded), then rollback to web@{OLD}, under constant load"
    );
    print!("{}", table(&["figure", "value", "target"], &rows));
    println!("   successful responses by body (which release answered):");
    for (body, n) in &report.bodies {
        println!("     {n:>8}  {body}");
    }
    if report.failed > 0 {
        print_failures(&report);
        println!("   the cycles (seconds since the load started):");
        for (i, c) in cycles.iter().enumerate() {
            println!(
                "     {:>2}: promote at {:7.3} s (took {}), rollback at {:7.3} s (took {}{})",
                i + 1,
                c.promote_at.as_secs_f64(),
                ms(c.promote_took),
                c.rollback_at.as_secs_f64(),
                ms(c.rollback_took),
                if c.instant { "" } else { ", deploy path" }
            );
        }
    }
    println!();
    outcome.context("during the zero-drops run")
}

fn print_failures(report: &Report) {
    println!("   failed requests by kind:");
    for (kind, n) in &report.kinds {
        println!("     {n:>8}  {kind}");
    }
    println!("   the first failures (seconds since the load started):");
    for f in &report.failures {
        println!("     {:7.3} s  {}", f.at.as_secs_f64(), f.what);
    }
}

/// Part 2: rollback API call → first response from the old release.
async fn rollback_time(
    o: &Options,
    client: &Client,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
) -> anyhow::Result<()> {
    let n = o.rollbacks.max(1);
    eprintln!("  running part 2 ({n} rollbacks)…");
    let mut conn = Some(rt.spawn(Conn::open(env_addr)).await??);
    let mut switch_times = Vec::new();
    let mut api_times = Vec::new();
    let mut instant = 0;
    let mut poll_errors = 0u64;
    for _ in 0..n {
        promote(client, NEW).await?;
        wait_serves(rt, env_addr, NEW).await?;
        let mut c = conn.take().context("the poll connection is gone")?;
        let t0 = Instant::now();
        let api = {
            let client = client.clone();
            tokio::spawn(async move { rollback(&client).await })
        };
        let poll = rt.spawn(async move {
            let mut errors = 0u64;
            loop {
                match c.get("/version").await {
                    Ok((s, body)) if s.is_success() && body.trim_ascii() == OLD.as_bytes() => {
                        return anyhow::Ok((t0.elapsed(), c, errors));
                    }
                    Ok((s, _)) if !s.is_success() => errors += 1,
                    Ok(_) => {}
                    Err(_) => {
                        errors += 1;
                        c = Conn::open(env_addr).await?;
                    }
                }
                if t0.elapsed() > PATIENCE {
                    bail!("{env_addr} did not serve {OLD} within {PATIENCE:?} of the rollback");
                }
            }
        });
        let (took, c, errors) = poll.await??;
        let (api_took, was_instant) = api.await??;
        conn = Some(c);
        switch_times.push(took);
        api_times.push(api_took);
        poll_errors += errors;
        instant += usize::from(was_instant);
    }
    switch_times.sort();
    api_times.sort();
    let q =
        |v: &[Duration], q: f64| load::nearest_rank(v.len(), q).map_or(Duration::ZERO, |i| v[i]);
    let median = q(&switch_times, 0.5);
    let rows = vec![
        vec![
            "rollback API call → first response from the old release".into(),
            ms(median),
            ms(q(&switch_times, 0.99)),
            format!(
                "median < 5 ms  {}",
                verdict(median < Duration::from_millis(5))
            ),
        ],
        vec![
            "rollback API call → API answer".into(),
            ms(q(&api_times, 0.5)),
            ms(q(&api_times, 0.99)),
            String::new(),
        ],
    ];
    println!(
        "2. Rollback time: {n} rollbacks; each after promoting web@{NEW} (succeeded, served), back to web@{OLD}"
    );
    print!("{}", table(&["figure", "median", "p99", "target"], &rows));
    println!(
        "   rollbacks answered already switched (warm standby): {instant} / {n}; poll errors or non-2xx answers: {poll_errors}"
    );
    println!(
        "   (p99 is the nearest rank: of {n} values, the {}th smallest)\n",
        load::nearest_rank(n, 0.99).map_or(0, |i| i + 1)
    );
    Ok(())
}

/// The backend of part 3: the release live in the environment while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The sample app's own server (axum), web@1.0.0.
    Sample,
    /// The sample app's minimal responder, which costs almost nothing per request, so that the
    /// proxies' own cost is what gets measured: web@1.2.0, promoted for it.
    Minimal,
}

/// The load client of part 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadClient {
    /// The benchmark's own client ([`crate::load`]), in this process.
    Builtin,
    /// Debian's `wrk`, a process of its own.
    Wrk,
}

/// One line of part 3's summary.
struct Verdict {
    backend: Backend,
    client: String,
    throughput: f64,
    p99: f64,
}

/// Part 3: the same backend process directly, through the router and through nginx, for each
/// backend and each client.
async fn throughput(
    o: &Options,
    client: &Client,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
) -> anyhow::Result<()> {
    let wrk = wrk::find();
    let mut verdicts = Vec::new();
    for (n, backend) in o.backends.iter().enumerate() {
        if *backend == Backend::Minimal {
            promote(client, MINIMAL).await?;
            wait_serves(rt, env_addr, MINIMAL).await?;
        } else {
            wait_serves(rt, env_addr, OLD).await?;
        }
        let part = format!("3{}", char::from(b'a' + u8::try_from(n).unwrap_or(25)));
        let nginx = match find_nginx() {
            None => Err(
                "nginx is not installed: install it with `apt-get install -y nginx` (Debian) to compare; the nginx row is skipped"
                    .to_owned(),
            ),
            Some(exe) => Nginx::start(&exe, live_port(client).await?)
                .await
                .map_err(|e| format!("nginx did not start ({e:#}); the nginx row is skipped")),
        };
        for load_client in &o.clients {
            let label = match (load_client, &wrk) {
                (LoadClient::Builtin, _) => "the built-in client".to_owned(),
                (LoadClient::Wrk, Some(exe)) => wrk::version(exe),
                (LoadClient::Wrk, None) => {
                    println!(
                        "{part}. wrk is not installed: install it with `apt-get install -y wrk` (Debian); its runs are skipped\n"
                    );
                    continue;
                }
            };
            let run = Run {
                o,
                rt,
                client: *load_client,
                wrk: wrk.as_deref(),
            };
            let verdict =
                one_comparison(&run, client, &part, *backend, &label, env_addr, &nginx).await?;
            verdicts.extend(verdict);
        }
        if let Ok(nginx) = nginx {
            nginx.stop().await;
        }
    }
    if !verdicts.is_empty() {
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|v| {
                vec![
                    format!("{:?}", v.backend).to_lowercase(),
                    v.client.clone(),
                    format!("{:.2}", v.throughput),
                    format!("{:.2}", v.p99),
                    verdict(v.throughput >= 1.0 && v.p99 <= 1.1).to_owned(),
                ]
            })
            .collect();
        println!("Summary of part 3: router / nginx (targets: throughput ≥ 1.0, p99 ≤ 1.1)");
        let head = ["backend", "client", "throughput", "p99", "both targets"];
        print!("{}", table(&head, &rows));
    }
    Ok(())
}

/// How part 3 loads a target.
struct Run<'a> {
    o: &'a Options,
    rt: &'a tokio::runtime::Handle,
    client: LoadClient,
    wrk: Option<&'a Path>,
}

impl Run<'_> {
    /// A discarded warm-up, then `duration` of load on `addr`.
    async fn measure(&self, addr: SocketAddr, duration: Duration) -> anyhow::Result<Figures> {
        let o = self.o;
        match (self.client, self.wrk) {
            (LoadClient::Wrk, Some(exe)) => {
                wrk::run(exe, addr, o.client_threads, o.connections, WARM_UP).await?;
                wrk::run(exe, addr, o.client_threads, o.connections, duration).await
            }
            _ => {
                Load::run_for(self.rt, addr, "/", o.connections, WARM_UP).await?;
                let report = Load::run_for(self.rt, addr, "/", o.connections, duration).await?;
                if report.failed > 0 {
                    print_failures(&report);
                }
                Ok(Figures::from(report))
            }
        }
    }
}

/// The port of the instance serving the environment now.
pub(crate) async fn live_port(client: &Client) -> anyhow::Result<u16> {
    let status: Vec<AppStatus> = client.get("/status", &[("app", APP.to_owned())]).await?;
    let env = status
        .iter()
        .flat_map(|a| &a.environments)
        .find(|e| e.env.as_str() == ENV)
        .context("the status has no development environment")?;
    env.instance
        .as_ref()
        .map(|i| i.port)
        .context("the status shows no instance serving development")
}

/// One backend with one client: directly, then router and nginx taking turns. The verdict is
/// None when nginx is missing.
async fn one_comparison(
    run: &Run<'_>,
    client: &Client,
    part: &str,
    backend: Backend,
    label: &str,
    env_addr: SocketAddr,
    nginx: &Result<Nginx, String>,
) -> anyhow::Result<Option<Verdict>> {
    let o = run.o;
    let port = live_port(client).await?;
    let backend_addr = SocketAddr::from(([127, 0, 0, 1], port));
    eprintln!(
        "  running part {part} ({backend:?} backend, {label}: {:.0} s each, after {:.0} s of warm-up)…",
        o.load_duration.as_secs_f64(),
        WARM_UP.as_secs_f64()
    );
    let direct = run.measure(backend_addr, o.load_duration).await?;
    // Router and nginx take turns, router–nginx–nginx–router, each half the time: whatever drifts
    // during the run (caches, the CPU's clock, the backend warming up) weighs on both alike.
    let half = o.load_duration / 2;
    let router_first = run.measure(env_addr, half).await?;
    let nginx = match nginx {
        Err(why) => Err(why.clone()),
        Ok(nginx) => {
            let first = run.measure(nginx.addr, half).await?;
            let second = run.measure(nginx.addr, half).await?;
            Ok((nginx.version.clone(), nginx.addr, first.merge(second)))
        }
    };
    let router = router_first.merge(run.measure(env_addr, half).await?);

    let what = match backend {
        Backend::Sample => format!("the sample app (web@{OLD}, axum)"),
        Backend::Minimal => format!("the minimal responder (web@{MINIMAL})"),
    };
    println!(
        "{part}. Throughput and latency, {label}: {what}, port {port}, hit directly, through shipgate's router and through nginx"
    );
    println!(
        "   {} keep-alive connections on {} client thread(s), GET /, {:.0} s warm-up (not counted) then {:.0} s (router and nginx: two halves, in the order router, nginx, nginx, router)",
        o.connections,
        o.client_threads,
        WARM_UP.as_secs_f64(),
        o.load_duration.as_secs_f64()
    );
    let row = |name: &str, addr: SocketAddr, f: &Figures| {
        vec![
            name.to_owned(),
            addr.to_string(),
            format!("{:.0}", f.per_second()),
            ms(f.p50),
            ms(f.p99),
            format!("{} / {}", f.failed, f.requests),
            f.reconnects.map_or("-".into(), |n| n.to_string()),
        ]
    };
    let mut rows = vec![
        row("backend directly (the limit)", backend_addr, &direct),
        row("shipgate router", env_addr, &router),
    ];
    if let Ok((version, addr, f)) = &nginx {
        rows.push(row(
            &format!("{version} (proxy_pass, keepalive 64)"),
            *addr,
            f,
        ));
    }
    let head = [
        "target",
        "address",
        "requests/s",
        "p50",
        "p99",
        "failed/requests",
        "reconnects",
    ];
    print!("{}", table(&head, &rows));
    let ratio = |a: f64, b: f64| a / b.max(f64::EPSILON);
    let Ok((_, _, n)) = &nginx else {
        if let Err(why) = &nginx {
            println!("   {why}\n");
        }
        return Ok(None);
    };
    let tput = ratio(router.per_second(), n.per_second());
    let p99 = ratio(router.p99.as_secs_f64(), n.p99.as_secs_f64());
    let rows = vec![
        vec![
            "throughput router / nginx".into(),
            format!("{tput:.2}"),
            format!("≥ 1.0  {}", verdict(tput >= 1.0)),
        ],
        vec![
            "p99 router / nginx".into(),
            format!("{p99:.2}"),
            format!("≤ 1.1  {}", verdict(p99 <= 1.1)),
        ],
        vec![
            "p50 router / nginx".into(),
            format!(
                "{:.2}",
                ratio(router.p50.as_secs_f64(), n.p50.as_secs_f64())
            ),
            String::new(),
        ],
        vec![
            "throughput router / backend directly".into(),
            format!("{:.2}", ratio(router.per_second(), direct.per_second())),
            String::new(),
        ],
        vec![
            "throughput nginx / backend directly".into(),
            format!("{:.2}", ratio(n.per_second(), direct.per_second())),
            String::new(),
        ],
    ];
    println!();
    print!("{}", table(&["ratio", "value", "target"], &rows));
    println!();
    Ok(Some(Verdict {
        backend,
        client: label.to_owned(),
        throughput: tput,
        p99,
    }))
}

/// nginx on `PATH`, or where Debian puts it (root's PATH has /usr/sbin, other users' often not).
pub(crate) fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx in front of the backend, with its config, pid file and logs in a temporary folder.
pub(crate) struct Nginx {
    child: tokio::process::Child,
    pub(crate) addr: SocketAddr,
    pub(crate) version: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub(crate) async fn start(exe: &Path, backend_port: u16) -> anyhow::Result<Self> {
        Self::start_with(exe, "auto", |addr| {
            format!(
                "upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}"
            )
        })
        .await
    }

    /// nginx with `workers` worker processes and the `http` blocks `blocks` writes for the
    /// address it listens on.
    pub(crate) async fn start_with(
        exe: &Path,
        workers: &str,
        blocks: impl FnOnce(SocketAddr) -> String,
    ) -> anyhow::Result<Self> {
        let version = std::process::Command::new(exe)
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .strip_prefix("nginx version: ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "nginx".into());
        let dir = tempfile::Builder::new()
            .prefix("shipgate-bench-nginx-")
            .tempdir()?;
        let port = free_port(0)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.path().display();
        let blocks = blocks(addr);
        // As given in issue 3, plus: pid file and temp paths inside the folder (nothing of the
        // system's nginx is touched), and keep-alive connections not closed after 1000 requests
        // (nginx's default), since neither the router nor the load generator closes any.
        let conf = format!(
            "worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {blocks}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let error_log = dir.path().join("error.log");
        let child = tokio::process::Command::new(exe)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut nginx = Self {
            child,
            addr,
            version,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                bail!("nginx exited with {status}: {}", log.trim());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                nginx.stop().await;
                bail!("nginx did not listen on {addr} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The master's pid.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM to the master (a fast shutdown: it stops its workers).
    fn terminate(&self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Stops nginx and waits for its master to exit; the folder goes with `self`.
    pub(crate) async fn stop(mut self) {
        self.terminate();
        if tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Nginx {
    /// On an early return: SIGTERM rather than kill_on_drop's SIGKILL, which would leave the
    /// workers running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}
