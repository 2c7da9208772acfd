//! `shipgate-bench hosts`: a promotion into an environment on three hosts against the same
//! promotion into an environment on the server's own machine, in one run, on one server.
//!
//! The hosts are network namespaces made here (as the tests make them, netns.rs), each running a
//! `shipgate agent` joined with a token and talking mutual TLS to the server. Each run registers a
//! new version and promotes it into both environments in turn; a promotion is timed from the
//! promote call until every address of the environment answers the new version. For the hosts
//! that includes sending the release to each of them. Both run unisolated, so the figure is the
//! cost of placement (the sandbox's own is `shipgate-bench sandbox`).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shipgate::client::Client;
use shipgate::demo::{free_port, sample_release};
use shipgate_api::answers::CreatedHost;
use shipgate_api::requests::HostRequest;
use shipgate_api::status::HostView;

use crate::netns::Hosts;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn all_answer(http: &reqwest::Client, urls: &[String], version: &str) -> bool {
    for url in urls {
        let ok = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                r.text().await.map(|t| t.trim() == version).unwrap_or(false)
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

async fn timed_promotion(
    client: &Client,
    http: &reqwest::Client,
    version: &str,
    env: &str,
    urls: &[String],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    client.promote(&format!("web@{version}"), env).await?;
    let deadline = started + Duration::from_secs(60);
    while !all_answer(http, urls, version).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{env} did not answer {version} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

pub async fn run(runs: usize) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("shipgate-bench hosts needs root: it makes network namespaces for its hosts");
        return Ok(ExitCode::FAILURE);
    }
    let runs = runs.max(1);
    let hosts = Hosts::make(3);
    let work = tempfile::Builder::new()
        .prefix("shipgate-bench-hosts-")
        .tempdir()?;
    let exe = shipgate::shipgate_exe()?;
    let (api, local_port, fleet_port) = (free_port(0)?, free_port(0)?, free_port(0)?);
    let src = format!(
        "[server]\nlisten = \"{root}:{api}\"\ndata_dir = \"data\"\nisolation = \"none\"\n\n\
         [apps.web]\nrun = \"'{exe}' sample-app --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n\
         [environments.local]\nlisten = \"127.0.0.1:{local_port}\"\n\n\
         [environments.fleet]\nlisten = \"0.0.0.0:{fleet_port}\"\nhosts = [\"b-1\", \"b-2\", \"b-3\"]\n",
        root = hosts.root_addr,
        exe = exe.display()
    );
    let config = shipgate_core::Config::parse(&src, work.path())
        .map_err(|e| anyhow::anyhow!("{}", e.render("shipgate.toml", &src)))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = shipgate_server::Server::start(Arc::new(config), async {
        let _ = stopped.await;
    })
    .await?;
    let data = work.path().join("data");
    let token = std::fs::read_to_string(data.join(shipgate_server::ADMIN_TOKEN_FILE))?;
    let base = format!("http://{}", server.addr);
    let client = Client::new(&base, token.trim())?;

    let mut agents = Vec::new();
    for n in 1..=3 {
        hosts.assert_routed_from(n, &hosts.root_addr);
        let name = format!("b-{n}");
        let created: CreatedHost = client
            .post("/hosts", &HostRequest { name: name.clone() })
            .await?;
        let dir = work.path().join(&name);
        let log = std::fs::File::create(work.path().join(format!("{name}.log")))?;
        let child = hosts
            .command_in(n, &exe)
            .args(["agent", "--server", &base, "--join", &created.token])
            .args(["--name", &name, "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting an agent in a test host")?;
        agents.push((child, dir));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Vec<HostView> = client.get("/hosts", &[]).await?;
        if list.iter().filter(|h| h.connected).count() == 4 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agents did not connect: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let local_urls = vec![format!("http://127.0.0.1:{local_port}/version")];
    let fleet_urls: Vec<String> = hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("http://{addr}:{fleet_port}/version")
        })
        .collect();
    let (mut local, mut fleet) = (Vec::new(), Vec::new());
    // Run 0 warms both up (the first start of the sample app, the first connections).
    for i in 0..=runs {
        let version = format!("1.0.{i}");
        let dir = work.path().join("src").join(&version);
        sample_release(&dir, &version, false)?;
        shipgate::commands::upload(&client, "web", &version, &dir, Default::default()).await?;
        let l = timed_promotion(&client, &http, &version, "local", &local_urls).await?;
        let f = timed_promotion(&client, &http, &version, "fleet", &fleet_urls).await?;
        if i > 0 {
            local.push(l);
            fleet.push(f);
        }
    }
    let (l, f) = (median(&mut local), median(&mut fleet));
    println!(
        "promotion, from the promote call until every address answers the new version ({runs} runs, medians):"
    );
    println!(
        "  on the server's machine:      {:8.1} ms   (anchor)",
        ms(l)
    );
    println!(
        "  on 3 hosts (agents, mTLS):    {:8.1} ms   ({:.2}× the local one; +{:.1} ms, the release sent to each host included)",
        ms(f),
        f.as_secs_f64() / l.as_secs_f64(),
        ms(f) - ms(l)
    );
    println!(
        "  fastest/slowest on 3 hosts:   {:8.1} / {:.1} ms",
        ms(fleet[0]),
        ms(fleet[fleet.len() - 1])
    );

    let _ = stop.send(());
    server.wait().await?;
    for (mut child, dir) in agents {
        let _ = Command::new(&exe)
            .args(["agent", "--stop", "--data-dir"])
            .arg(&dir)
            .output();
        let _ = child.wait();
    }
    if Path::new(&data.join("agent.pid")).exists() {
        shipgate_agent::local::stop(&data)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(ExitCode::SUCCESS)
}
