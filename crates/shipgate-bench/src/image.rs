//! `shipgate-bench image`: image releases (issue 31) against the tools teams use for images
//! today, side by side in one run (see docs/BENCHMARKS.md).
//!
//! 1. Start: spawn → first 2xx of the same image (busybox httpd, FROM scratch), the kinds
//!    taking turns each round: `podman run` with runc as its runtime (the anchor), shipgate's
//!    process driver running the image's runc bundle (without and with cgroup limits), and the
//!    same app as a directory release in today's bubblewrap sandbox. The driver is driven
//!    directly (as `shipgate-bench sandbox` does), with what the engine does per start
//!    (the release's record read, podman's seccomp profile converted) inside the timing.
//! 2. Register ([`crate::image_create`]): `shipgate release create --image oci-archive:` of a
//!    100 MiB image against `skopeo copy` of the same archive into an OCI layout.
//! 3. Disk ([`crate::image_create`]): ten releases sharing a 90 MiB base layer against ten
//!    `skopeo copy` layouts, and against podman's store.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shipgate::demo::free_port;
use shipgate::output::table;
use shipgate_core::Digest;
use shipgate_deploy::{
    CrashLoopPolicy, Driver, ImageRun, InstanceId, Limits, ProcessDriver, Sandbox, StartInstance,
    StopInstance,
};
use shipgate_store::artifact::{ArtifactStore, UnpackLimits};

use crate::image_create;
use crate::image_fixture::{self, INDEX, START, add_image, busybox_layer, run_tool};
use crate::promote::{median, ms};

/// The parts of the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Spawn → first 2xx: shipgate's runc bundle, podman run, a directory release.
    Start,
    /// `release create` of a 100 MiB image against `skopeo copy`.
    Create,
    /// Disk for ten releases sharing a 90 MiB base layer against ten copies.
    Disk,
}

/// The command's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub parts: Vec<Part>,
    /// Part 1: starts measured of each kind (one more warms up).
    pub runs: usize,
    /// Part 2: rounds of the two commands taking turns (one more warms up).
    pub rounds: usize,
    /// Part 3: releases sharing the base layer.
    pub releases: usize,
}

/// The limits the server would apply to a release (its defaults).
pub(crate) const LIMITS: UnpackLimits = UnpackLimits {
    max_size: shipgate_core::ByteSize(4 << 30),
    max_files: 100_000,
};

/// The sandbox's user for the instances of part 1.
const USER: &str = "sg-bench";

/// Longest wait for a start.
const PATIENCE: Duration = Duration::from_secs(30);

/// The health probes' schedule, the process driver's own (`probe_interval` in
/// shipgate-deploy), so podman's start is polled exactly as shipgate's are.
fn probe_interval(since_spawn: Duration) -> Duration {
    match since_spawn.as_millis() {
        0..200 => Duration::from_millis(2),
        200..2000 => Duration::from_millis(10),
        _ => Duration::from_millis(50),
    }
}

pub async fn run(o: Options) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("shipgate-bench image runs images with runc and podman: run it as root");
    }
    if let Some(why) = shipgate_deploy::image::unavailable() {
        bail!("images cannot run here: {why}");
    }
    for tool in ["podman", "skopeo"] {
        run_tool(tool, &["--version"])
            .with_context(|| format!("{tool} is needed (apt-get install -y {tool})"))?;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("shipgate-bench image: {cores} CPU cores, loopback only\n");
    for part in &o.parts {
        match part {
            Part::Start => start(o.runs.max(1)).await?,
            Part::Create => image_create::create(o.rounds.max(1)).await?,
            Part::Disk => image_create::disk(o.releases.max(1)).await?,
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// The ways part 1 starts the app, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Podman,
    Image,
    ImageLimits,
    Directory,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Podman,
        Kind::Image,
        Kind::ImageLimits,
        Kind::Directory,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Podman => "podman run, runtime runc (the anchor)",
            Kind::Image => "shipgate: the image's runc bundle",
            Kind::ImageLimits => "shipgate: runc bundle + cgroup limits",
            Kind::Directory => "shipgate: directory release, bubblewrap",
        }
    }
}

/// What part 1 starts, made once.
struct Setup {
    dir: tempfile::TempDir,
    driver: ProcessDriver,
    store: ArtifactStore,
    digest: Digest,
    release: PathBuf,
    podman: Podman,
    http: reqwest::Client,
}

/// podman with a store of its own in the run's folder (the machine's is left alone).
struct Podman {
    global: Vec<String>,
    image: String,
}

impl Podman {
    /// A store under `dir`, holding the image of `archive` (pulled now, not timed).
    fn new(dir: &Path, archive: &Path) -> anyhow::Result<Self> {
        let global = vec![
            "--root".to_owned(),
            dir.join("root").display().to_string(),
            "--runroot".to_owned(),
            dir.join("run").display().to_string(),
            "--runtime".to_owned(),
            "runc".to_owned(),
        ];
        let mut args: Vec<&str> = global.iter().map(String::as_str).collect();
        let from = format!("oci-archive:{}", archive.display());
        args.extend(["pull", "--quiet", &from]);
        let out = run_tool("podman", &args)?;
        let image = out
            .lines()
            .last()
            .context("podman pull printed no image id")?
            .trim()
            .to_owned();
        Ok(Self { global, image })
    }

    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("podman");
        command.args(&self.global);
        command
    }

    /// `podman run --rm` of the image on `port`, in the foreground as a supervisor runs it.
    /// `--network host` (loopback only here), so podman makes no network; the rlimits named
    /// because podman's defaults for root (a million files) need CAP_SYS_RESOURCE, which this
    /// machine's root lacks.
    fn run(
        &self,
        name: &str,
        port: u16,
        log: std::fs::File,
    ) -> anyhow::Result<tokio::process::Child> {
        self.command()
            .args(["run", "--rm", "--network", "host"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["--name", name, "-e", &format!("PORT={port}"), &self.image])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("running podman")
    }

    async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let status = self
            .command()
            .args(["stop", "--time", "0", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "podman stop {name} failed");
        Ok(())
    }
}

impl Setup {
    /// The image (one busybox layer) as a layout, an archive, in podman's store and in a
    /// shipgate store with its rootfs unpacked (timed: what `release create` does once per
    /// release, after the layers are stored); and the same app as a release directory.
    fn new() -> anyhow::Result<(Self, Duration)> {
        let dir = tempfile::Builder::new()
            .prefix("shipgate-bench-image-")
            .tempdir()?;
        // The sandbox's user reaches the release directory through it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let layout = dir.path().join("layout");
        let digest = add_image(&layout, &[busybox_layer()?], "app")?;
        let archive = dir.path().join("app.tar");
        image_fixture::archive(&layout, "app", &archive)?;
        let podman = Podman::new(&dir.path().join("podman"), &archive)?;

        let store = ArtifactStore::open(&dir.path().join("data"))?;
        store.import_layout(&layout, Some("app"), LIMITS)?;
        let unpacking = Instant::now();
        store
            .image_rootfs(&digest, LIMITS)?
            .context("the store does not know the image it imported")?;
        let unpacked = unpacking.elapsed();

        let release = dir.path().join("release");
        std::fs::create_dir_all(release.join("www"))?;
        std::fs::write(release.join("start"), START)?;
        std::fs::write(release.join("www/index.html"), INDEX)?;
        for (path, mode) in [
            (release.join("start"), 0o555),
            (release.join("www/index.html"), 0o444),
            (release.join("www"), 0o555),
            (release.clone(), 0o555),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()?;
        let setup = Self {
            dir,
            driver: ProcessDriver::new(),
            store,
            digest,
            release,
            podman,
            http,
        };
        Ok((setup, unpacked))
    }

    fn sandbox(&self, limits: Limits) -> Sandbox {
        Sandbox {
            user: USER.into(),
            data_dir: self.dir.path().join("sandbox-data"),
            limits,
            network: None,
            on_demand: false,
        }
    }

    fn request(&self, id: &InstanceId, release_dir: &Path, command: &str) -> StartInstance {
        StartInstance {
            instance_id: id.clone(),
            release_dir: release_dir.to_owned(),
            command: command.into(),
            template_vars: BTreeMap::new(),
            env: BTreeMap::new(),
            health_path: "/".into(),
            health_timeout: PATIENCE,
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
            port: None,
            crash_loop: CrashLoopPolicy::default(),
            sandbox: None,
            image: None,
            secret_names: Vec::new(),
        }
    }

    /// What the engine does for each start of an image (`Engine::image_run`): the release's
    /// record and rootfs (unpacked already), and podman's seccomp profile made runc's.
    fn image_run(&self, id: &InstanceId) -> anyhow::Result<ImageRun> {
        use shipgate_core::seccomp::{PODMAN_PROFILE, oci_seccomp};
        let (record, rootfs) = self
            .store
            .image_rootfs(&self.digest, LIMITS)?
            .context("the image is gone from the store")?;
        let profile = std::fs::read_to_string(PODMAN_PROFILE)
            .with_context(|| format!("reading {PODMAN_PROFILE} (apt-get install -y podman)"))?;
        let seccomp = oci_seccomp(&profile, std::env::consts::ARCH).map_err(anyhow::Error::msg)?;
        Ok(ImageRun {
            config: record.config,
            rootfs,
            bundle: self.dir.path().join("bundles").join(id.as_str()),
            command: None,
            data_dir: self.dir.path().join("image-data"),
            seccomp: Some(seccomp),
        })
    }

    /// Spawn → first 2xx of `kind`, and the instance stopped after.
    async fn measure(&self, kind: Kind, run: usize) -> anyhow::Result<Duration> {
        let id = InstanceId::recorded(format!("bench-image-{kind:?}-{run}").to_lowercase());
        let limits = Limits {
            memory: Some(shipgate_core::ByteSize(256 << 20)),
            cpu: Some(1.0),
            pids: Some(256),
        };
        let (req, asked) = match kind {
            Kind::Podman => return self.podman(run).await,
            Kind::Image | Kind::ImageLimits => {
                let asked = Instant::now();
                let mut req = self.request(&id, &self.store.release_dir(&self.digest), "");
                req.image = Some(self.image_run(&id)?);
                req.sandbox = Some(self.sandbox(if kind == Kind::Image {
                    Limits::default()
                } else {
                    limits
                }));
                (req, asked)
            }
            Kind::Directory => {
                let mut req = self.request(&id, &self.release, "exec busybox sh ./start");
                req.sandbox = Some(self.sandbox(Limits::default()));
                (req, Instant::now())
            }
        };
        self.driver
            .start(req)
            .await
            .with_context(|| format!("starting {}", kind.name()))?;
        let took = asked.elapsed();
        self.driver
            .stop(StopInstance {
                instance_id: id,
                pid: None,
                grace: Duration::from_secs(5),
            })
            .await?;
        Ok(took)
    }

    async fn podman(&self, run: usize) -> anyhow::Result<Duration> {
        let port = free_port(0)?;
        let name = format!("shipgate-bench-{run}");
        let log_path = self.dir.path().join("logs").join(format!("{name}.log"));
        std::fs::create_dir_all(self.dir.path().join("logs"))?;
        let log = std::fs::File::create(&log_path)?;
        let url = format!("http://127.0.0.1:{port}/");
        let asked = Instant::now();
        let mut child = self.podman.run(&name, port, log)?;
        loop {
            if matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "podman run ended ({status}) before answering: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if asked.elapsed() > PATIENCE {
                bail!("podman's container did not answer {url} within {PATIENCE:?}");
            }
            tokio::time::sleep(probe_interval(asked.elapsed())).await;
        }
        let took = asked.elapsed();
        self.podman.stop(&name).await?;
        tokio::time::timeout(PATIENCE, child.wait())
            .await
            .context("podman run did not end after its container was stopped")??;
        Ok(took)
    }
}

/// Part 1: the kinds taking turns, each round starting with the next kind.
async fn start(runs: usize) -> anyhow::Result<()> {
    if let Some(why) = shipgate_deploy::sandbox::unavailable() {
        bail!("the directory release's start needs what sandboxed instances need: {why}");
    }
    let (setup, unpacked) = Setup::new()?;
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); Kind::ALL.len()];
    // Round 0 warms up (page cache, podman's store, the sandbox's user), not counted.
    for run in 0..=runs {
        for k in 0..Kind::ALL.len() {
            let k = (k + run) % Kind::ALL.len();
            let d = setup.measure(Kind::ALL[k], run).await?;
            if run > 0 {
                took[k].push(d);
            }
        }
    }
    let medians: Vec<Duration> = took.iter_mut().map(|t| median(t)).collect();
    let anchor = medians[0];
    let mut rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .zip(&medians)
        .map(|(kind, m)| {
            vec![
                kind.name().to_owned(),
                format!("{:.1} ms", ms(*m)),
                format!("{:.2}×", m.as_secs_f64() / anchor.as_secs_f64()),
            ]
        })
        .collect();
    rows.push(vec![
        "once per release, in release create: rootfs unpacked".into(),
        format!("{:.1} ms", ms(unpacked)),
        String::new(),
    ]);
    println!(
        "1. start of the same image (busybox httpd, FROM scratch), spawn → first 2xx, median of {runs}, kinds taking turns"
    );
    print!("{}", table(&["", "median", "× podman"], &rows));
    let image = medians[1].as_secs_f64() / anchor.as_secs_f64();
    println!(
        "target ≤ 1.0× podman: {} ({image:.2}×)",
        if image <= 1.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
