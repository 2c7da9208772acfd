//! `shipgate-bench promote`: shipgate's own overhead of a promotion.
//!
//! For each run: from the promote API call until the environment's address answers with the
//! new version. The anchor, measured in the same run: the sample app's own time from spawn to
//! its first 2xx health answer, polled every millisecond. Overhead = the difference of medians.
//! Measured on the embedded SQLite store and on PostgreSQL, side by side.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use shipgate::demo::{SampleServer, SampleSetup, free_port, sample_release};

pub(crate) fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) async fn answers(http: &reqwest::Client, url: &str, want: Option<&str>) -> bool {
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => match want {
            Some(w) => r.text().await.map(|t| t.trim() == w).unwrap_or(false),
            None => true,
        },
        _ => false,
    }
}

/// The app's own readiness: spawn the sample app and poll /healthz every millisecond.
pub(crate) async fn app_ready_time(
    exe: &std::path::Path,
    dir: &std::path::Path,
    http: &reqwest::Client,
) -> anyhow::Result<Duration> {
    let port = free_port(0)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("sample-app")
        .arg("--port")
        .arg(port.to_string())
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/healthz");
    while !answers(http, &url, None).await {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    child.kill().await?;
    Ok(took)
}

/// Medians of `runs` promotions on a sample server whose store is `database` (None: the
/// SQLite file): promote → the new version answers, and the app's own start.
async fn measure(runs: usize, database: Option<String>) -> anyhow::Result<(Duration, Duration)> {
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    let setup = SampleSetup {
        database,
        ..SampleSetup::default()
    };
    let sample = SampleServer::start_with("shipgate-bench-", free_port(0)?, ports, setup).await?;
    let (work, client) = (&sample.work, &sample.client);
    let exe = shipgate::shipgate_exe()?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let env_url = format!("http://127.0.0.1:{}/version", ports[0]);

    let mut totals = Vec::new();
    let mut app_ready = Vec::new();
    for i in 0..=runs {
        let version = format!("1.0.{i}");
        let dir = work.path().join(&version);
        sample_release(&dir, &version, false)?;
        shipgate::commands::upload(client, "web", &version, &dir, Default::default()).await?;
        let started = Instant::now();
        let p = client
            .promote(&format!("web@{version}"), "development")
            .await?;
        while !answers(&http, &env_url, Some(&version)).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = started.elapsed();
        client.wait_promotion(p.id, |_| {}).await?;
        let ready = app_ready_time(&exe, &dir, &http)
            .await
            .context("measuring the app's own start")?;
        // Run 0 warms caches (page cache, connection pools) and is not counted.
        if i > 0 {
            totals.push(took);
            app_ready.push(ready);
        }
    }
    sample.stop().await?;
    Ok((median(&mut totals), median(&mut app_ready)))
}

/// The same promotions on the embedded SQLite store and on PostgreSQL (a cluster started for
/// the run with initdb/pg_ctl), side by side.
pub async fn run(runs: usize) -> anyhow::Result<ExitCode> {
    let runs = runs.max(1);
    let cluster = shipgate_store::cluster::TempCluster::start().map_err(anyhow::Error::msg)?;
    let url = cluster.fresh_database("bench_promote").await?;
    let sqlite = measure(runs, None).await?;
    let postgres = measure(runs, Some(url)).await?;
    println!("promotion overhead, median of {runs} runs (sample app, one environment, no tests)");
    println!("  {:<58} {:>10} {:>12}", "", "SQLite", "PostgreSQL");
    let row = |what: &str, f: fn((Duration, Duration)) -> Duration| {
        println!(
            "  {what:<58} {:>7.2} ms {:>9.2} ms",
            ms(f(sqlite)),
            ms(f(postgres))
        );
    };
    row(
        "promote → new version answers on the environment address",
        |m| m.0,
    );
    row(
        "anchor: the app's own spawn → first 2xx health answer",
        |m| m.1,
    );
    row(
        "shipgate's own overhead (difference, target < 50 ms)",
        |m| m.0.saturating_sub(m.1),
    );
    println!(
        "  PostgreSQL / SQLite, shipgate's own overhead: {:.2}×",
        ms(postgres.0.saturating_sub(postgres.1)) / ms(sqlite.0.saturating_sub(sqlite.1)).max(1e-6)
    );
    Ok(ExitCode::SUCCESS)
}
