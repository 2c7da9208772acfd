//! `shipgate-bench flags`: OFREP evaluation at a fixed concurrency with 350 flags, single
//! (`POST /ofrep/v1/evaluate/flags/{key}`) and bulk (`POST /ofrep/v1/evaluate/flags`), each
//! flag a sticky 10% rollout, measured with Debian's `wrk`. The anchor, in the same run and
//! with the same wrk: Unleash Edge 20.1.0 in offline mode with an equivalent bootstrap (350
//! features, each a 10% `flexibleRollout`), `GET /api/frontend/features/{name}` (single) and
//! `POST /api/frontend` (every toggle for a context). The benchmark installs Unleash Edge with
//! `cargo install` into `target/bench-tools` when it is not there yet (a long build, once).
//! flagd has no build on any registry this machine reaches, so it is not measured.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::wrk::{self, Figures};

const FLAGS: usize = 350;
const CONNECTIONS: usize = 32;
const THREADS: usize = 2;
const SECONDS: u64 = 10;
const UNLEASH_EDGE: &str = "20.1.0";

fn config() -> anyhow::Result<String> {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\ndata_plane = \"server\"\n\n[environments.production]\nlisten = \"127.0.0.1:{}\"\n\n[apps.web]\nrun = \"./web --port ${{PORT}}\"\n",
        shipgate::demo::free_port(0)?
    );
    for i in 0..FLAGS {
        toml.push_str(&format!(
            "\n[apps.web.flags.flag-{i:03}]\ntype = \"boolean\"\ndefault = false\n"
        ));
    }
    Ok(toml)
}

fn script(dir: &Path, name: &str, headers: &[(&str, &str)], body: &str) -> anyhow::Result<PathBuf> {
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    for (k, v) in headers {
        lua.push_str(&format!("wrk.headers[\"{k}\"] = \"{v}\"\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, lua)?;
    Ok(path)
}

async fn load(exe: &Path, url: &str, script: Option<&Path>) -> anyhow::Result<Figures> {
    let f = wrk::run_on(
        exe,
        url,
        script,
        THREADS,
        CONNECTIONS,
        Duration::from_secs(SECONDS),
    )
    .await?;
    anyhow::ensure!(
        f.failed == 0,
        "{url}: {} of {} requests failed",
        f.failed,
        f.requests
    );
    Ok(f)
}

/// How long a kill switch takes to reach an OFREP SSE client: from sending `flag off` (and
/// then back on) through the API to the `refetchEvaluation` event, `KILLS` times each.
async fn kill_switch(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
) -> anyhow::Result<Vec<Duration>> {
    use futures_util::StreamExt;
    let mut events = http
        .get(format!("{base}/ofrep/v1/events"))
        .header("X-API-Key", key)
        .send()
        .await?
        .error_for_status()?
        .bytes_stream();
    let mut seen = String::new();
    let mut took = Vec::new();
    for i in 0..KILLS * 2 {
        let state = if i % 2 == 0 {
            serde_json::json!({ "state": "off" })
        } else {
            serde_json::json!({ "state": "on", "variant": "on" })
        };
        let sent = std::time::Instant::now();
        let answer = http
            .post(format!("{base}/api/v1/flags"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "app": "web", "flag": "flag-000", "env": "production", "state": state }))
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "{}", answer.text().await?);
        loop {
            if let Some(at) = seen.find("refetchEvaluation") {
                seen.drain(..at + "refetchEvaluation".len());
                break;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .context("no refetchEvaluation within 10 s of a flag change")?
                .context("the event stream ended")??;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        took.push(sent.elapsed());
    }
    took.sort();
    Ok(took)
}

const KILLS: usize = 20;

/// shipgate's figures: single, bulk, and the kill switch's times to an SSE client (sorted).
async fn shipgate(exe: &Path, dir: &Path) -> anyhow::Result<(Figures, Figures, Vec<Duration>)> {
    let src = config()?;
    let config = shipgate_core::Config::parse(&src, dir)
        .map_err(|e| anyhow::anyhow!("{}", e.render("shipgate.toml", &src)))?;
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = shipgate_server::Server::start(Arc::new(config), async {
        let _ = stopped.await;
    })
    .await?;
    let base = format!("http://{}", server.addr);
    let token = std::fs::read_to_string(dir.join("data").join(shipgate_server::ADMIN_TOKEN_FILE))?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    for i in 0..FLAGS {
        let state = serde_json::json!({ "state": "rules", "rules": [{ "split": [{ "variant": "on", "weight": 10 }, { "variant": "off", "weight": 90 }] }] });
        let answer = http
            .post(format!("{base}/api/v1/flags"))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({ "app": "web", "flag": format!("flag-{i:03}"), "env": "production", "state": state }))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "setting flag {i}: {}",
            answer.text().await?
        );
    }
    let key: serde_json::Value = http
        .post(format!("{base}/api/v1/flag-keys"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "name": "bench", "env": "production" }))
        .send()
        .await?
        .json()
        .await?;
    let key = key["key"].as_str().context("no flag key made")?.to_owned();
    let body = r#"{"context":{"targetingKey":"user-42"}}"#;
    let s = script(dir, "shipgate.lua", &[("X-API-Key", &key)], body)?;
    let single = load(
        exe,
        &format!("{base}/ofrep/v1/evaluate/flags/flag-123"),
        Some(&s),
    )
    .await?;
    let bulk = load(exe, &format!("{base}/ofrep/v1/evaluate/flags"), Some(&s)).await?;
    let kills = kill_switch(&http, &base, token.trim(), &key).await?;
    Ok((single, bulk, kills))
}

/// Unleash Edge on the machine: installed into `target/bench-tools` when missing.
fn unleash_edge() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tools");
    let exe = root.join("bin/unleash-edge");
    if !exe.exists() {
        eprintln!(
            "installing unleash-edge {UNLEASH_EDGE} into {} (cargo install, once; a long build)",
            root.display()
        );
        let status = std::process::Command::new("cargo")
            .args([
                "install",
                "unleash-edge",
                "--locked",
                "--version",
                UNLEASH_EDGE,
                "--root",
            ])
            .arg(&root)
            .status()?;
        anyhow::ensure!(status.success(), "cargo install unleash-edge failed");
    }
    Ok(exe)
}

/// Unleash Edge's figures: single, bulk.
async fn anchor(exe: &Path, dir: &Path) -> anyhow::Result<(Figures, Figures)> {
    let edge = unleash_edge()?;
    let features: Vec<serde_json::Value> = (0..FLAGS)
        .map(|i| {
            let name = format!("flag-{i:03}");
            serde_json::json!({ "name": name, "enabled": true, "project": "default",
                "strategies": [{ "name": "flexibleRollout", "parameters": { "rollout": "10", "stickiness": "default", "groupId": name }, "constraints": [] }] })
        })
        .collect();
    let bootstrap = dir.join("features.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({ "version": 2, "features": features, "segments": [], "query": null })
            .to_string(),
    )?;
    let port = shipgate::demo::free_port(0)?;
    let frontend = "*:development.bench-frontend";
    let mut child = tokio::process::Command::new(&edge)
        .args([
            "--port",
            &port.to_string(),
            "--interface",
            "127.0.0.1",
            "offline",
            "-b",
        ])
        .arg(&bootstrap)
        .args(["-c", "*:development.bench-client", "-f", frontend])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting unleash-edge")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut ready = false;
    for _ in 0..200 {
        if http
            .get(format!("{base}/internal-backstage/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(ready, "unleash-edge did not answer its health check");
    let body = r#"{"context":{"userId":"user-42"}}"#;
    let s = script(dir, "edge.lua", &[("Authorization", frontend)], body)?;
    let get = dir.join("edge-get.lua");
    std::fs::write(
        &get,
        format!("wrk.headers[\"Authorization\"] = \"{frontend}\"\n"),
    )?;
    let single = load(
        exe,
        &format!("{base}/api/frontend/features/flag-123?userId=user-42"),
        Some(&get),
    )
    .await?;
    let bulk = load(exe, &format!("{base}/api/frontend/all"), Some(&s)).await?;
    let _ = child.kill().await;
    Ok((single, bulk))
}

fn row(what: &str, f: &Figures) -> String {
    format!(
        "| {what} | {:.0} | {:.2} | {:.2} |",
        f.per_second(),
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0
    )
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let exe = wrk::find().context("wrk is not installed (apt-get install wrk)")?;
    let dir = tempfile::Builder::new()
        .prefix("shipgate-bench-flags-")
        .tempdir()?;
    let (single, bulk, kills) = shipgate(&exe, dir.path()).await?;
    println!(
        "{} flags, each a sticky 10% rollout; {} with {THREADS} threads and {CONNECTIONS} connections for {SECONDS} s each",
        FLAGS,
        wrk::version(&exe)
    );
    println!("| evaluation | req/s | p50 ms | p99 ms |\n|---|---|---|---|");
    println!(
        "{}",
        row(
            "shipgate OFREP single (POST /ofrep/v1/evaluate/flags/flag-123)",
            &single
        )
    );
    println!(
        "{}",
        row(
            "shipgate OFREP bulk, 350 flags (POST /ofrep/v1/evaluate/flags)",
            &bulk
        )
    );
    match anchor(&exe, dir.path()).await {
        Ok((edge_single, edge_bulk)) => {
            println!(
                "{}",
                row(
                    "Unleash Edge single (GET /api/frontend/features/flag-123)",
                    &edge_single
                )
            );
            println!(
                "{}",
                row("Unleash Edge all 350 (POST /api/frontend/all)", &edge_bulk)
            );
            println!(
                "ratio shipgate/Unleash Edge, req/s: single {:.2}, bulk {:.2}",
                single.per_second() / edge_single.per_second(),
                bulk.per_second() / edge_bulk.per_second()
            );
        }
        Err(e) => println!("Unleash Edge was not measured: {e:#}"),
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!(
        "kill switch to an OFREP SSE client (API call sent -> refetchEvaluation received), {} changes: median {:.1} ms, max {:.1} ms (target: within 1000 ms)",
        kills.len(),
        ms(&kills[kills.len() / 2]),
        ms(&kills[kills.len() - 1])
    );
    Ok(ExitCode::SUCCESS)
}
