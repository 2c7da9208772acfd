//! `shipgate-bench agent-kill`: requests lost when the process that serves an environment's
//! address is killed with SIGKILL under load, against nginx losing a worker the same way
//! (issue 29; see docs/BENCHMARKS.md).
//!
//! shipgate: the sample app live in `development`, the router in a local agent; the agent is
//! killed, the server hands its listening socket to the agent it starts next, which adopts the
//! instance. nginx: in front of the same instance (`worker_processes auto`), one worker is
//! killed; its master keeps the socket and starts another. The same keep-alive client drives
//! both; a request fails when its connection dies under it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::load::{Load, Report};
use crate::router::{APP, Nginx, OLD, find_nginx, live_port, promote, wait_serves};
use shipgate::demo::{SampleServer, SampleSetup, free_port, sample_release};

/// Load before the kill, and after it.
const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(3);

pub async fn run(runs: usize, connections: usize) -> anyhow::Result<ExitCode> {
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    let env_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let setup = SampleSetup {
        agent: true,
        ..SampleSetup::default()
    };
    let sample =
        SampleServer::start_with("shipgate-bench-agent-kill-", free_port(0)?, ports, setup).await?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("starting the load client's runtime")?;
    let result = measure(&sample, client_rt.handle(), env_addr, runs, connections).await;
    client_rt.shutdown_background();
    sample.stop().await?;
    result.map(|()| ExitCode::SUCCESS)
}

async fn measure(
    sample: &SampleServer,
    rt: &tokio::runtime::Handle,
    env_addr: SocketAddr,
    runs: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let dir = sample.work.path().join(format!("{APP}-{OLD}"));
    sample_release(&dir, OLD, false)?;
    shipgate::commands::upload(&sample.client, APP, OLD, &dir, Default::default()).await?;
    promote(&sample.client, OLD).await?;
    wait_serves(rt, env_addr, OLD).await?;
    let data_dir = sample.work.path().join("data");
    println!(
        "shipgate-bench agent-kill: {connections} keep-alive connections, GET / in a loop; SIGKILL after {BEFORE:?}, load {AFTER:?} more; {runs} runs each\n"
    );
    let mut rows = Vec::new();
    for run in 1..=runs {
        let pid = agent_pid(&data_dir)?;
        let instance = live_port(&sample.client).await?;
        let report = killed_under_load(rt, env_addr, connections, pid).await?;
        // The next agent adopted the instance, and serves the same address.
        wait_serves(rt, env_addr, OLD).await?;
        let adopted = live_port(&sample.client).await? == instance;
        rows.push(("shipgate, the agent killed", run, report, adopted));
    }
    let backend = live_port(&sample.client).await?;
    match find_nginx() {
        None => println!("nginx is not installed (apt-get install -y nginx): no anchor"),
        Some(exe) => {
            let nginx = Nginx::start(&exe, backend).await?;
            println!(
                "anchor: nginx {} in front of the same instance",
                nginx.version
            );
            for run in 1..=runs {
                let master = nginx.pid().context("nginx has no pid")?;
                let worker = workers_of(master)
                    .into_iter()
                    .next()
                    .context("nginx has no worker")?;
                let report = killed_under_load(rt, nginx.addr, connections, worker).await?;
                rows.push(("nginx, a worker killed", run, report, true));
            }
            nginx.stop().await;
        }
    }
    println!("\n| what | run | requests | failed | failed by kind |\n|---|---|---|---|---|");
    for (what, run, r, adopted) in &rows {
        let kinds: Vec<String> = r.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!(
            "| {what}{} | {run} | {} | {} | {} |",
            if *adopted {
                ""
            } else {
                " (instance NOT adopted)"
            },
            r.sent,
            r.failed,
            kinds.join(", ")
        );
    }
    Ok(())
}

/// Load on `addr`, SIGKILL to `victim` after [`BEFORE`], load [`AFTER`] more.
async fn killed_under_load(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    connections: usize,
    victim: i32,
) -> anyhow::Result<Report> {
    let load = Load::start(rt, addr, "/", connections, false);
    tokio::time::sleep(BEFORE).await;
    kill(Pid::from_raw(victim), Signal::SIGKILL).context("killing")?;
    tokio::time::sleep(AFTER).await;
    load.stop().await
}

fn agent_pid(data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let file = shipgate_agent::local::AgentFiles::of(data_dir).pid;
    std::fs::read_to_string(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .trim()
        .parse()
        .context("the agent's pid")
}

/// The children of `master` (nginx's workers).
fn workers_of(master: u32) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .is_some_and(|ppid| ppid == master.to_string())
            })
        })
        .collect()
}
