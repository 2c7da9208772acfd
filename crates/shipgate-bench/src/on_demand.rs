//! `shipgate-bench on-demand`: on-demand environments made from a template.
//!
//! Time: from the `env create` call until the new environment's URL first answers 2xx, and
//! until it is `ready` (its tests passed), with the time of the template's own tests (their
//! gates' recorded durations) shown apart. Anchor, in the same run: the sample app's own
//! spawn → first 2xx health answer.
//!
//! Memory: `--idle` previews made at once and left idle; their instances' proportional set
//! size (PSS, from /proc/PID/smaps_rollup) plus what the server process grew by, per preview,
//! against the sample app's own PSS run bare; and how many such previews fit in 1 GiB.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shipgate::demo::{SampleServer, SampleSetup, free_port, sample_release};
use shipgate_api::answers::OnDemandView;
use shipgate_api::requests::OnDemandRequest;
use shipgate_api::status::HistoryEntry;
use shipgate_core::on_demand::OnDemandState;

use crate::promote::{answers, app_ready_time, median, ms};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The kilobytes a `/proc` file gives for `key` (`Pss:`, `VmRSS:`), 0 if it has none.
fn kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Kilobytes of PSS of `pid` (0 if it is gone).
fn pss_kib(pid: i32) -> u64 {
    kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// Kilobytes of resident memory of this process.
fn own_rss_kib() -> u64 {
    kib("/proc/self/status", "VmRSS:")
}

/// The processes whose environment says they belong to `env`.
fn processes_of(env: &str) -> Vec<i32> {
    let marker = format!("SHIPGATE_ENV={env}");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
                    let environ = std::fs::read(e.path().join("environ")).ok()?;
                    environ
                        .split(|b| *b == 0)
                        .any(|v| v == marker.as_bytes())
                        .then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn create(sample: &SampleServer, name: &str) -> anyhow::Result<OnDemandView> {
    let req = OnDemandRequest {
        name: name.to_owned(),
        template: "preview".into(),
        releases: vec!["web@1.0.0".into()],
        ttl: None,
    };
    sample.client.post("/envs", &req).await
}

async fn until_made(sample: &SampleServer, name: &str) -> anyhow::Result<OnDemandView> {
    loop {
        let env: OnDemandView = sample.client.get(&format!("/envs/{name}"), &[]).await?;
        if env.record.state != OnDemandState::Creating {
            anyhow::ensure!(
                env.record.state == OnDemandState::Ready,
                "{name}: {:?}",
                env.record.outcome
            );
            return Ok(env);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(runs: usize, idle: usize) -> anyhow::Result<ExitCode> {
    let runs = runs.max(1);
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    let first = free_port(0)?.min(60_000);
    let count = runs + idle + 2;
    let setup = SampleSetup {
        verify_testing: true,
        extra: format!(
            "\n[templates.preview]\nfrom = \"testing\"\nmax = {count}\nlisten_range = \"127.0.0.1:{first}-{}\"\n",
            first + u16::try_from(count).unwrap_or(u16::MAX)
        ),
        ..SampleSetup::default()
    };
    let sample = SampleServer::start_with("shipgate-bench-", free_port(0)?, ports, setup).await?;
    let dir = sample.work.path().join("1.0.0");
    sample_release(&dir, "1.0.0", false)?;
    shipgate::commands::upload(&sample.client, "web", "1.0.0", &dir, Default::default()).await?;
    let exe = shipgate::shipgate_exe()?;
    let http = reqwest::Client::builder().no_proxy().build()?;

    let (mut first_2xx, mut ready, mut tests, mut anchor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..=runs {
        let name = format!("pr-{i}");
        let started = Instant::now();
        let env = create(&sample, &name).await?;
        let url = format!("{}/healthz", env.url);
        let mut polls = 0u64;
        while !answers(&http, &url, None).await {
            polls += 1;
            if polls.is_multiple_of(200) {
                let now: OnDemandView = sample.client.get(&format!("/envs/{name}"), &[]).await?;
                anyhow::ensure!(
                    now.record.state == OnDemandState::Creating,
                    "{name} is {} and never answered: {:?}",
                    now.record.state,
                    now.record.outcome
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answered = started.elapsed();
        until_made(&sample, &name).await?;
        let made = started.elapsed();
        let history: Vec<HistoryEntry> = sample
            .client
            .get("/history", &[("app", "web".into()), ("env", name.clone())])
            .await?;
        let tested: Duration = history
            .iter()
            .flat_map(|h| &h.gates)
            .filter(|g| g.name != "deploy")
            .map(|g| g.finished_at.duration_since(g.started_at).unsigned_abs())
            .sum();
        let bare = app_ready_time(&exe, &dir, &http).await?;
        let _: OnDemandView = sample.client.delete(&format!("/envs/{name}")).await?;
        // Run 0 warms caches and is not counted.
        if i > 0 {
            first_2xx.push(answered);
            ready.push(made);
            tests.push(tested);
            anchor.push(bare);
        }
    }

    // Idle previews: made at once, then left alone for a moment.
    let before = own_rss_kib();
    let names: Vec<String> = (0..idle).map(|i| format!("idle-{i}")).collect();
    for n in &names {
        create(&sample, n).await?;
    }
    for n in &names {
        until_made(&sample, n).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let instances: u64 = names
        .iter()
        .flat_map(|n| processes_of(n))
        .map(pss_kib)
        .sum();
    let grew = own_rss_kib().saturating_sub(before);
    let bare_pss = {
        let port = free_port(0)?;
        let mut child = tokio::process::Command::new(&exe)
            .args(["sample-app", "--port", &port.to_string()])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}/healthz");
        while !answers(&http, &url, None).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pss = child
            .id()
            .map_or(0, |p| pss_kib(i32::try_from(p).unwrap_or(0)));
        child.kill().await?;
        pss
    };
    for n in &names {
        let _: OnDemandView = sample.client.delete(&format!("/envs/{n}")).await?;
    }
    sample.stop().await?;

    let (first_2xx, ready, tests, anchor) = (
        median(&mut first_2xx),
        median(&mut ready),
        median(&mut tests),
        median(&mut anchor),
    );
    println!(
        "on-demand environments from a template, median of {runs} runs (sample app, its smoke test on arrival, SQLite store)"
    );
    println!(
        "  {:<62} {:>9.1} ms",
        "env create → first 2xx on the environment's URL",
        ms(first_2xx)
    );
    println!(
        "  {:<62} {:>9.1} ms",
        "env create → ready (its tests passed)",
        ms(ready)
    );
    println!(
        "  {:<62} {:>9.1} ms",
        "  of which the template's own tests (their gates)",
        ms(tests)
    );
    println!(
        "  {:<62} {:>9.1} ms",
        "anchor: the app's own spawn → first 2xx health answer",
        ms(anchor)
    );
    println!(
        "  {:<62} {:>9.1} ms ({:.1}× the anchor)",
        "shipgate's own part of the first 2xx (difference)",
        ms(first_2xx.saturating_sub(anchor)),
        ms(first_2xx) / ms(anchor).max(1e-6)
    );
    let per = (instances + grew) as f64 / idle.max(1) as f64;
    println!("idle previews: {idle} made at once");
    println!(
        "  {:<62} {:>9.1} MiB",
        "their instances' PSS, per preview",
        instances as f64 / idle.max(1) as f64 / 1024.0
    );
    println!(
        "  {:<62} {:>9.1} MiB",
        "the server process grew by, per preview",
        grew as f64 / idle.max(1) as f64 / 1024.0
    );
    println!(
        "  {:<62} {:>9.1} MiB",
        "anchor: the sample app's own PSS, run bare",
        bare_pss as f64 / 1024.0
    );
    println!(
        "  {:<62} {:>9.0}   ({:.2}× the bare app's cost)",
        "idle previews that fit in 1 GiB",
        GIB / (per * 1024.0).max(1.0),
        per / (bare_pss as f64).max(1.0)
    );
    Ok(ExitCode::SUCCESS)
}
