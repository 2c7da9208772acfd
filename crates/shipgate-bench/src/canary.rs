//! `shipgate-bench canary`: what a canary costs and what it saves, in one run (issue 30; see
//! docs/BENCHMARKS.md).
//!
//! 1. The split's cost (here): `shipgate_proxy::Router` in this process in front of two copies
//!    of the sample app's minimal responder, measured with wrk with no canary and with a 5%
//!    canary, the configurations taking turns; each run is compared with the no-canary run of
//!    its round, and the median of those ratios is the figure.
//! 2. Abort ([`crate::abort`]): a server with production's canary at 50% under load; from the
//!    `POST /api/v1/canary/abort` call until the router's own counter of the canary's answers
//!    stops growing, and until the call returns.
//! 3. Exposure ([`crate::exposure`]): a release failing half of its requests at a constant
//!    rate, switched all at once and watched, then as a canary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shipgate_core::PromotionState;
use shipgate_core::canary::Sticky;
use shipgate_proxy::{Canary, Router, Upstream};

use crate::wrk::{self, Figures};
use shipgate::client::Client;
use shipgate::demo::{SampleServer, SampleSetup, free_port, minimal_release, sample_release};
use shipgate::output::table;

pub(crate) const APP: &str = "web";
/// The environment the canaries of parts 2 and 3 run in; the sample config's last.
pub(crate) const PRODUCTION: &str = "production";
/// The environments a release passes before production, in order.
pub(crate) const BEFORE_PRODUCTION: [&str; 3] = ["development", "testing", "staging"];
pub(crate) const STABLE: &str = "1.0.0";
pub(crate) const CANARY: &str = "1.1.0";
/// Longest wait for a port to open or a canary to take its step.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// Discarded wrk run before each measured one.
const WARM_UP: Duration = Duration::from_secs(1);

/// The parts of the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Router throughput and p99 with a 5% split against none.
    Split,
    /// Abort latency over a number of aborts.
    Abort,
    /// Failed requests and time to decision: all at once with a watch, and as a canary.
    Exposure,
}

/// The command's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub parts: Vec<Part>,
    /// Part 1: rounds of the configurations taking turns.
    pub rounds: usize,
    /// Part 1: length of each wrk run.
    pub load_duration: Duration,
    /// Part 1: wrk's keep-alive connections.
    pub connections: usize,
    /// Part 2: aborts timed.
    pub aborts: usize,
    /// Part 2: keep-alive connections of the load on production.
    pub abort_connections: usize,
    /// Part 3: requests per second on production.
    pub rate: f64,
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

pub async fn run(o: Options) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("shipgate-bench canary: {cores} CPU cores, loopback only\n");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("starting the load client's runtime")?;
    let parts = async {
        for part in &o.parts {
            match part {
                // Interrupted, the backends (kill_on_drop) and the router go with the future.
                Part::Split => until_interrupted(split_cost(&o)).await?,
                Part::Abort => {
                    crate::abort::run(o.aborts, o.abort_connections, client_rt.handle()).await?
                }
                Part::Exposure => crate::exposure::run(o.rate, client_rt.handle()).await?,
            }
        }
        anyhow::Ok(())
    };
    let result = parts.await;
    client_rt.shutdown_background();
    result.map(|()| ExitCode::SUCCESS)
}

/// `work`, or an error as soon as Ctrl-C or SIGTERM arrives. A part that started a server
/// stops it after this returns, so that its instances (in process groups of their own) do not
/// outlive the run.
pub(crate) async fn until_interrupted<T>(
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = work => r,
        () = shipgate::commands::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    }
}

/// One copy of the sample app's minimal responder, a process of its own.
struct Backend {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl Backend {
    async fn start(work: &Path, version: &str) -> anyhow::Result<Backend> {
        let dir = work.join(version);
        minimal_release(&dir, version)?;
        let port = free_port(0)?;
        let child = tokio::process::Command::new(shipgate::shipgate_exe()?)
            .arg("sample-app")
            .arg("--port")
            .arg(port.to_string())
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the sample app")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the sample app did not listen on {addr} within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Backend {
            addr,
            _child: child,
        })
    }
}

/// A configuration of part 1's router.
struct Setting {
    name: &'static str,
    /// None: no canary.
    split: Option<(Sticky, SocketAddr)>,
    runs: Vec<Figures>,
    /// What the router itself saw of each run, with a canary.
    sides: Vec<Sides>,
}

/// The router's own figures of one run with a canary.
struct Sides {
    /// The canary's share of the requests, in percent.
    share: f64,
    /// p99 of each side, from the router's sample of latencies (ms).
    stable_p99: f64,
    canary_p99: f64,
}

impl Sides {
    fn of(f: &shipgate_proxy::CanaryFigures) -> Sides {
        let p99 = |side: &shipgate_core::canary::Side| {
            let mut sorted = side.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            shipgate_core::canary::quantile(&sorted, 0.99).unwrap_or(0.0)
        };
        let all = f.canary.requests + f.stable.requests;
        Sides {
            share: 100.0 * f.canary.requests as f64 / all.max(1) as f64,
            stable_p99: p99(&f.stable),
            canary_p99: p99(&f.canary),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Part 1: the router with no canary against a 5% canary (pinned by cookie, or by a header wrk
/// does not send) on a second backend of the same kind, and a 5% canary whose upstream is the
/// stable's own backend (the split's work without a second process); wrk alternating them.
async fn split_cost(o: &Options) -> anyhow::Result<()> {
    let exe = wrk::find().context("wrk is not installed (apt-get install -y wrk)")?;
    let work = tempfile::Builder::new()
        .prefix("shipgate-bench-canary-")
        .tempdir()?;
    let stable = Backend::start(work.path(), STABLE).await?;
    let canary = Backend::start(work.path(), CANARY).await?;
    let router = Router::bind(SocketAddr::from(([127, 0, 0, 1], 0)), "bench").await?;
    router.set_apps(&[APP]);
    router.switch(
        APP,
        Some(Upstream::new(stable.addr, format!("{APP}@{STABLE}"))),
    );
    let addr = router.local_addr();
    let setting = |name, split| Setting {
        name,
        split,
        runs: Vec::new(),
        sides: Vec::new(),
    };
    let mut settings = [
        setting("no canary", None),
        setting(
            "5% canary, sticky = \"cookie\"",
            Some((Sticky::Cookie, canary.addr)),
        ),
        setting(
            "5% canary, sticky = \"header:x-user\"",
            Some((Sticky::Header("x-user".into()), canary.addr)),
        ),
        setting(
            "5% canary on the stable's own backend, \"cookie\"",
            Some((Sticky::Cookie, stable.addr)),
        ),
    ];
    let threads = 2;
    let rounds = o.rounds.max(1);
    eprintln!(
        "  running part 1 ({rounds} rounds × {} configurations × {:.0} s)…",
        settings.len(),
        (o.load_duration + WARM_UP).as_secs_f64()
    );
    let mut window = 0;
    let count = settings.len();
    for round in 0..rounds {
        // Each round starts with the next configuration, so none always runs first or last.
        for k in 0..count {
            let s = &mut settings[(round + k) % count];
            // A new window after the warm-up: the router's figures are the measured run's.
            let split = |window| {
                let canary = s.split.clone().map(|(sticky, to)| Canary {
                    upstream: Upstream::new(to, format!("{APP}@{CANARY}")),
                    weight: 5.0,
                    mirror: false,
                    sticky,
                    window,
                });
                router.set_canary(APP, canary);
            };
            window += 2;
            split(window - 1);
            wrk::run(&exe, addr, threads, o.connections, WARM_UP).await?;
            split(window);
            let f = wrk::run(&exe, addr, threads, o.connections, o.load_duration).await?;
            if s.split.is_some()
                && let Some(c) = router.canary_figures(APP)
            {
                s.sides.push(Sides::of(&c));
            }
            router.set_canary(APP, None);
            s.runs.push(f);
        }
    }
    router.shutdown().await;

    println!("1. Router throughput and latency: no canary against a 5% canary, the same backends");
    println!(
        "   shipgate_proxy::Router in this process; web@{STABLE} and web@{CANARY} are each the sample app's minimal responder (`shipgate sample-app` on a MINIMAL release), on two ports; the last configuration sends its 5% to web@{STABLE}'s own process"
    );
    println!(
        "   {}: {threads} threads, {} keep-alive connections, GET /, no cookie sent (every request is drawn; with \"cookie\" each answer gets a Set-Cookie); {:.0} s warm-up (not counted) then {:.0} s per run; the configurations take turns, each round starting with the next one, {rounds} rounds",
        wrk::version(&exe),
        o.connections,
        WARM_UP.as_secs_f64(),
        o.load_duration.as_secs_f64()
    );
    let mut rows = Vec::new();
    for round in 0..rounds {
        for s in &settings {
            let f = &s.runs[round];
            let sides = s.sides.get(round);
            rows.push(vec![
                (round + 1).to_string(),
                s.name.to_owned(),
                format!("{:.0}", f.per_second()),
                ms(f.p50),
                ms(f.p99),
                sides.map_or("-".into(), |x| format!("{:.2}%", x.share)),
                sides.map_or("-".into(), |x| {
                    format!("{:.2} / {:.2} ms", x.stable_p99, x.canary_p99)
                }),
                format!("{} / {}", f.failed, f.requests),
            ]);
        }
    }
    let head = [
        "round",
        "router",
        "requests/s",
        "p50",
        "p99",
        "canary's share",
        "router's p99, stable / canary side",
        "failed",
    ];
    print!("{}", table(&head, &rows));
    let medians = |s: &Setting| {
        (
            median(s.runs.iter().map(Figures::per_second).collect()),
            median(s.runs.iter().map(|f| f.p50.as_secs_f64()).collect()),
            median(s.runs.iter().map(|f| f.p99.as_secs_f64()).collect()),
        )
    };
    // Each run against the no-canary run of its own round, which ran next to it: whatever
    // drifts over the whole run weighs on both.
    let anchor = &settings[0].runs;
    let paired = |s: &Setting, f: fn(&Figures) -> f64| {
        median(
            s.runs
                .iter()
                .zip(anchor)
                .map(|(run, none)| f(run) / f(none).max(1e-9))
                .collect(),
        )
    };
    let mut rows = Vec::new();
    for s in &settings {
        let (rps, p50, p99) = medians(s);
        let tput = paired(s, Figures::per_second);
        let lat = paired(s, |f| f.p99.as_secs_f64());
        let target = if s.split.is_none() {
            "(the anchor)".to_owned()
        } else {
            format!(
                "throughput ≥ 0.95 {}, p99 ≤ 1.1 {}",
                verdict(tput >= 0.95),
                verdict(lat <= 1.1)
            )
        };
        let sides = if s.sides.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{:.2} / {:.2} ms",
                median(s.sides.iter().map(|x| x.stable_p99).collect()),
                median(s.sides.iter().map(|x| x.canary_p99).collect())
            )
        };
        rows.push(vec![
            s.name.to_owned(),
            format!("{rps:.0}"),
            format!("{:.3} ms", p50 * 1000.0),
            format!("{:.3} ms", p99 * 1000.0),
            sides,
            format!("{tput:.3}"),
            format!("{lat:.3}"),
            target,
        ]);
    }
    println!(
        "   medians of the {rounds} rounds; the ratios are the medians of each round's run over that round's run with no canary:"
    );
    let head = [
        "router",
        "requests/s",
        "p50",
        "p99",
        "router's p99, stable / canary side",
        "throughput ratio",
        "p99 ratio",
        "target",
    ];
    print!("{}", table(&head, &rows));
    println!();
    Ok(())
}

/// Promotes `web@version` into each of `envs` in turn, each until it has succeeded.
pub(crate) async fn walk(client: &Client, version: &str, envs: &[&str]) -> anyhow::Result<()> {
    for env in envs {
        let p = client.promote(&format!("{APP}@{version}"), env).await?;
        let done = client.wait_promotion(p.id, |_| {}).await?.promotion;
        if done.state != PromotionState::Succeeded {
            bail!(
                "promotion of {APP}@{version} to {env} ended {}: {}",
                done.state,
                done.reason.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// A sample server whose config ends with `extra`, with web@1.0.0 live in production and the
/// releases `canary` (web@1.1.0; `buggy`: its `/` answers 500) verified in staging.
pub(crate) async fn production_server(
    prefix: &str,
    extra: &str,
    buggy: bool,
) -> anyhow::Result<(SampleServer, SocketAddr)> {
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    let setup = SampleSetup {
        extra: extra.to_owned(),
        ..SampleSetup::default()
    };
    let sample = SampleServer::start_with(prefix, free_port(0)?, ports, setup).await?;
    let ready = async {
        for (version, bug) in [(STABLE, false), (CANARY, buggy)] {
            let dir = sample.work.path().join(format!("{APP}-{version}"));
            sample_release(&dir, version, bug)?;
            shipgate::commands::upload(&sample.client, APP, version, &dir, Default::default())
                .await?;
        }
        let mut all = BEFORE_PRODUCTION.to_vec();
        all.push(PRODUCTION);
        walk(&sample.client, STABLE, &all).await?;
        walk(&sample.client, CANARY, &BEFORE_PRODUCTION).await
    };
    match ready.await {
        Ok(()) => Ok((sample, SocketAddr::from(([127, 0, 0, 1], ports[3])))),
        Err(e) => {
            sample.stop().await?;
            Err(e)
        }
    }
}
