//! `shipgate-bench fence`: what the network fence costs the traffic from a router to its
//! instance, throughput and p99, isolated against unisolated in one run.
//!
//! It runs itself again in a network namespace of its own (`unshare --net`), so the unisolated
//! rounds have no nftables table at all and no other shipgate's rules are touched. There, one
//! sample app runs in a sandbox (as `sg-bench`) behind one router, and wrk loads the router in
//! alternating rounds: without the `inet shipgate` table, then with the instance's user
//! fenced as an environment's is. The instance and the router stay the same process
//! throughout: only the rules differ. Needs root, bubblewrap, nftables, unshare and wrk.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use shipgate_deploy::network::{self, Reach};
use shipgate_deploy::{
    Driver, InstanceId, ProcessDriver, RouteTarget, RouterSpec, Sandbox, StopInstance,
};

use crate::wrk::{self, Figures};

/// Runs the benchmark in a network namespace of its own.
pub async fn run(rounds: usize, seconds: u64, inner: bool) -> anyhow::Result<ExitCode> {
    if inner {
        return measure(rounds.max(1), seconds.max(1)).await;
    }
    if let Some(why) = shipgate_deploy::sandbox::unavailable().or_else(network::unavailable) {
        bail!("the fence benchmark needs what fenced instances need: {why}");
    }
    let me = std::env::current_exe().context("finding shipgate-bench")?;
    let status = tokio::process::Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(me)
        .args(["fence", "--inner", "--rounds"])
        .arg(rounds.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .status()
        .await
        .context("running unshare --net (util-linux)")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn measure(rounds: usize, seconds: u64) -> anyhow::Result<ExitCode> {
    let lo = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running ip")?;
    if !lo.success() {
        bail!("could not bring up loopback in the benchmark's namespace");
    }
    let exe = wrk::find().context("wrk is not installed (apt-get install wrk)")?;
    let dir = tempfile::tempdir()?;
    let release = crate::sandbox::sample_release(dir.path())?;
    let driver = ProcessDriver::new();
    let sandbox = Sandbox {
        user: "sg-bench".into(),
        data_dir: dir.path().join("data"),
        limits: Default::default(),
        network: None,
        on_demand: false,
    };
    let id = InstanceId::recorded("bench-fence".to_owned());
    let started = driver
        .start(crate::sandbox::sample_start(
            &id,
            &release,
            dir.path(),
            Some(sandbox.clone()),
        ))
        .await
        .context("starting the sample app in its sandbox")?;
    let listen = SocketAddr::from(([127, 0, 0, 1], shipgate::demo::free_port(0)?));
    driver
        .bind_router(RouterSpec {
            env: "bench".into(),
            listen,
            apps: vec!["web".into()],
            request_timeout: None,
            faults: Vec::new(),
            dependencies: Vec::new(),
        })
        .await?;
    driver
        .switch(
            "bench",
            "web",
            Some(RouteTarget {
                instance_id: id.clone(),
                addr: started.addr,
                label: "web@bench".into(),
            }),
        )
        .await?;
    let account = shipgate_deploy::sandbox::ensure_user(&sandbox).map_err(anyhow::Error::msg)?;
    // What an environment's instance is given: its router and the API, and its own port.
    let reach = Reach {
        local_ports: [listen.port(), 7300].into(),
        egress: true,
        denied_ports: Default::default(),
    };
    let duration = Duration::from_secs(seconds);
    let mut figures: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 0..=rounds {
        for (k, fenced) in [false, true].into_iter().enumerate() {
            if fenced {
                network::fence(account, &reach, &[started.port]).map_err(anyhow::Error::msg)?;
            } else {
                // Its own namespace: the table is this benchmark's alone.
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", "inet", "shipgate"])
                    .output();
            }
            let run = wrk::run(&exe, listen, 2, 32, duration).await?;
            // The first round warms up, and is not counted.
            if round > 0 {
                figures[k].push(run);
            }
        }
    }
    driver
        .stop(StopInstance {
            instance_id: id,
            pid: None,
            grace: Duration::from_secs(5),
        })
        .await?;
    let median = |v: &mut Vec<Figures>| {
        v.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        let m = &v[v.len() / 2];
        (m.per_second(), m.p99)
    };
    let (open_rps, open_p99) = median(&mut figures[0]);
    let (fenced_rps, fenced_p99) = median(&mut figures[1]);
    println!(
        "router -> sandboxed instance, wrk -t2 -c32 {seconds}s per round, median of {rounds} alternating rounds ({})",
        wrk::version(&exe)
    );
    println!(
        "  unisolated (no nftables table)   {open_rps:>10.0} req/s   p99 {:>7.2} ms",
        open_p99.as_secs_f64() * 1000.0
    );
    println!(
        "  isolated (network fence)         {fenced_rps:>10.0} req/s   p99 {:>7.2} ms   throughput {:.3}x",
        fenced_p99.as_secs_f64() * 1000.0,
        fenced_rps / open_rps
    );
    Ok(ExitCode::SUCCESS)
}
