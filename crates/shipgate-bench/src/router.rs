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
use shipgate::client::Client;
use shipgate::demo::{SampleServer, free_port, sample_release};
use shipgate::output::table;

const APP: &str = "web";
const ENV: &str = "development";
const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";
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
    let sample = SampleServer::start_on(
        "shipgate-bench-router-",
        free_port(0)?,
        ports,
        false,
        o.agent,
    )
    .await?;
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
    for version in [OLD, NEW] {
        let dir = sample.work.path().join(format!("{APP}-{version}"));
        sample_release(&dir, version, false)?;
        shipgate::commands::upload(client, APP, version, &dir, None, None).await?;
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
async fn promote(client: &Client, version: &str) -> anyhow::Result<Duration> {
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
async fn wait_serves(
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

/// Part 3: the same backend process directly, through the router and through nginx.
async fn throughput(
    o: &Options,
    client: &Client,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
) -> anyhow::Result<()> {
    let status: Vec<AppStatus> = client.get("/status", &[("app", APP.to_owned())]).await?;
    let env = status
        .iter()
        .flat_map(|a| &a.environments)
        .find(|e| e.env.as_str() == ENV)
        .context("the status has no development environment")?;
    let port = env
        .instance
        .as_ref()
        .map(|i| i.port)
        .context("the status shows no instance serving development")?;
    let live = env
        .live
        .as_ref()
        .map_or("?".to_owned(), |l| l.version.to_string());
    let backend = SocketAddr::from(([127, 0, 0, 1], port));

    let measure = |addr: SocketAddr, duration: Duration| async move {
        Load::run_for(rt, addr, "/", o.connections, WARM_UP).await?;
        Load::run_for(rt, addr, "/", o.connections, duration).await
    };
    eprintln!(
        "  running part 3 ({:.0} s each, after {:.0} s of warm-up)…",
        o.load_duration.as_secs_f64(),
        WARM_UP.as_secs_f64()
    );
    let direct = measure(backend, o.load_duration).await?;
    let nginx = match find_nginx() {
        None => Err(
            "nginx is not installed: install it with `apt-get install -y nginx` (Debian) to compare; the nginx row is skipped"
                .to_owned(),
        ),
        Some(exe) => Nginx::start(&exe, port)
            .await
            .map_err(|e| format!("nginx did not start ({e:#}); the nginx row is skipped")),
    };
    // Router and nginx take turns, router–nginx–nginx–router, each half the time: whatever drifts
    // during the run (caches, the CPU's clock, the backend warming up) weighs on both alike.
    let half = o.load_duration / 2;
    let router_first = measure(env_addr, half).await?;
    let nginx = match nginx {
        Err(why) => Err(why),
        Ok(nginx) => {
            let measured = async {
                let first = measure(nginx.addr, half).await?;
                let second = measure(nginx.addr, half).await?;
                anyhow::Ok(first.merge(second))
            }
            .await;
            let (label, addr) = (nginx.version.clone(), nginx.addr);
            nginx.stop().await;
            Ok((label, addr, measured?))
        }
    };
    let router = router_first.merge(measure(env_addr, half).await?);

    println!(
        "3. Throughput and latency: one sample-app process (web@{live}, port {port}) hit directly, through shipgate's router and through nginx"
    );
    println!(
        "   same client for each: {} keep-alive connections, GET /, {:.0} s warm-up (not counted) then {:.0} s (router and nginx: two halves, in the order router, nginx, nginx, router)",
        o.connections,
        WARM_UP.as_secs_f64(),
        o.load_duration.as_secs_f64()
    );
    let row = |name: &str, addr: SocketAddr, r: &Report| {
        vec![
            name.to_owned(),
            addr.to_string(),
            format!("{:.0}", r.per_second()),
            ms(r.latency(0.5)),
            ms(r.latency(0.99)),
            format!("{} / {}", r.failed, r.sent),
            r.reconnects.to_string(),
        ]
    };
    let mut rows = vec![
        row("backend directly (the limit)", backend, &direct),
        row("shipgate router", env_addr, &router),
    ];
    if let Ok((label, addr, r)) = &nginx {
        rows.push(row(
            &format!("{label} (proxy_pass, keepalive 64)"),
            *addr,
            r,
        ));
    }
    print!(
        "{}",
        table(
            &[
                "target",
                "address",
                "requests/s",
                "p50",
                "p99",
                "failed/sent",
                "reconnects"
            ],
            &rows
        )
    );
    for (name, r) in [("backend", &direct), ("router", &router)]
        .into_iter()
        .chain(nginx.as_ref().ok().map(|(_, _, r)| ("nginx", r)))
    {
        if r.failed > 0 {
            println!("   {name}:");
            print_failures(r);
        }
    }
    match &nginx {
        Err(why) => println!("   {why}"),
        Ok((_, _, n)) => {
            let tput = router.per_second() / n.per_second().max(f64::EPSILON);
            let p99 = router.latency(0.99).as_secs_f64()
                / n.latency(0.99).as_secs_f64().max(f64::EPSILON);
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
                        router.latency(0.5).as_secs_f64()
                            / n.latency(0.5).as_secs_f64().max(f64::EPSILON)
                    ),
                    String::new(),
                ],
                vec![
                    "throughput router / backend directly".into(),
                    format!(
                        "{:.2}",
                        router.per_second() / direct.per_second().max(f64::EPSILON)
                    ),
                    String::new(),
                ],
                vec![
                    "throughput nginx / backend directly".into(),
                    format!(
                        "{:.2}",
                        n.per_second() / direct.per_second().max(f64::EPSILON)
                    ),
                    String::new(),
                ],
            ];
            println!();
            print!("{}", table(&["ratio", "value", "target"], &rows));
        }
    }
    Ok(())
}

/// nginx on `PATH`, or where Debian puts it (root's PATH has /usr/sbin, other users' often not).
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx in front of the backend, with its config, pid file and logs in a temporary folder.
struct Nginx {
    child: tokio::process::Child,
    addr: SocketAddr,
    version: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(exe: &Path, backend_port: u16) -> anyhow::Result<Self> {
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
        // As given in issue 3, plus: pid file and temp paths inside the folder (nothing of the
        // system's nginx is touched), and keep-alive connections not closed after 1000 requests
        // (nginx's default), since the router closes none either.
        let conf = format!(
            "worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream b {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
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
    async fn stop(mut self) {
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
