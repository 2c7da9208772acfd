//! `shipgate-bench sandbox`: what the sandbox adds to an instance's start.
//!
//! The sample app is started through the process driver, from the start request until its
//! first 2xx health answer (what preparing the sandbox costs counts too; the same health
//! polling for every row), four ways in turn: as a bare child process (the anchor), in the
//! sandbox (bubblewrap namespaces, the environment's user), in the sandbox with its network
//! fence (nftables on its user), and in the sandbox with memory, cpu and pids limits (a cgroup of
//! its own). Needs root, bubblewrap and nftables, as sandboxed instances do.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use shipgate_deploy::{
    CrashLoopPolicy, Driver, InstanceId, Limits, ProcessDriver, Sandbox, StartInstance,
    StopInstance,
};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A release directory under `dir` holding the shipgate binary (its hidden sample-app
/// command), read-only for all, as a release directory is; `dir` made reachable by a sandbox's
/// user.
pub(crate) fn sample_release(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let release = dir.join("release");
    std::fs::create_dir_all(&release)?;
    let exe = shipgate::shipgate_exe().context("finding the shipgate binary")?;
    std::fs::copy(&exe, release.join("shipgate")).context("copying the shipgate binary")?;
    std::fs::set_permissions(
        release.join("shipgate"),
        std::fs::Permissions::from_mode(0o555),
    )?;
    std::fs::set_permissions(&release, std::fs::Permissions::from_mode(0o555))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(release)
}

/// The start of the sample app of `release` as instance `id`, logging under `dir`.
pub(crate) fn sample_start(
    id: &InstanceId,
    release: &std::path::Path,
    dir: &std::path::Path,
    sandbox: Option<Sandbox>,
) -> StartInstance {
    StartInstance {
        instance_id: id.clone(),
        release_dir: release.to_path_buf(),
        command: "exec ./shipgate sample-app --port ${PORT}".into(),
        template_vars: BTreeMap::new(),
        env: BTreeMap::new(),
        health_path: "/healthz".into(),
        health_timeout: Duration::from_secs(30),
        log_path: dir.join("logs").join(format!("{id}.log")),
        port: None,
        crash_loop: CrashLoopPolicy::default(),
        sandbox,
        image: None,
        secret_names: Vec::new(),
    }
}

pub async fn run(runs: usize) -> anyhow::Result<ExitCode> {
    if let Some(why) = shipgate_deploy::sandbox::unavailable() {
        bail!("the sandbox benchmark needs what sandboxed instances need: {why}");
    }
    let runs = runs.max(1);
    let dir = tempfile::tempdir()?;
    let release = sample_release(dir.path())?;

    let driver = ProcessDriver::new();
    let limits = Limits {
        memory: Some(shipgate_core::ByteSize(256 << 20)),
        cpu: Some(1.0),
        pids: Some(256),
    };
    let fence = shipgate_deploy::network::Reach {
        local_ports: [7300].into(),
        egress: true,
        denied_ports: Default::default(),
    };
    let kinds: [(
        &str,
        Option<Limits>,
        Option<&shipgate_deploy::network::Reach>,
    ); 4] = [
        ("bare child process (the anchor)", None, None),
        (
            "sandbox (namespaces, own user)",
            Some(Limits::default()),
            None,
        ),
        (
            "sandbox + network fence",
            Some(Limits::default()),
            Some(&fence),
        ),
        ("sandbox + cgroup limits", Some(limits), None),
    ];
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    // One start of each kind is warm-up, not counted.
    for run in 0..=runs {
        for (k, (_, sandbox_limits, network)) in kinds.iter().enumerate() {
            let id = InstanceId::recorded(format!("bench-sandbox-{k}-{run}"));
            let req = sample_start(
                &id,
                &release,
                dir.path(),
                sandbox_limits.map(|limits| Sandbox {
                    user: "sg-bench".into(),
                    data_dir: dir.path().join("data"),
                    limits,
                    network: network.cloned(),
                    on_demand: false,
                }),
            );
            let asked = std::time::Instant::now();
            driver
                .start(req)
                .await
                .with_context(|| format!("starting {}", kinds[k].0))?;
            if run > 0 {
                took[k].push(asked.elapsed());
            }
            driver
                .stop(StopInstance {
                    instance_id: id,
                    pid: None,
                    grace: Duration::from_secs(5),
                })
                .await?;
        }
    }
    let cgroups = shipgate_deploy::Hierarchy::detect()
        .map(|h| format!("cgroup {}", h.version()))
        .unwrap_or_else(|why| why);
    println!(
        "instance start, start request → first 2xx health answer, median of {runs} (sample app, {cgroups})"
    );
    let anchor = median(&mut took[0]);
    for (k, (name, _, _)) in kinds.iter().enumerate() {
        let m = median(&mut took[k]);
        if k == 0 {
            println!("  {name:<36} {:>8.2} ms", ms(m));
        } else {
            println!(
                "  {name:<36} {:>8.2} ms   +{:.2} ms over the bare start ({:.2}×)",
                ms(m),
                ms(m.saturating_sub(anchor)),
                m.as_secs_f64() / anchor.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
