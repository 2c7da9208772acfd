//! `shipgate-bench image`, parts 2 and 3: what registering an image costs in time and disk.
//!
//! 2. `shipgate release create web --image oci-archive:X` (the whole command: the CLI hashes
//!    and uploads the archive; the server unpacks it, checks every blob against its digest,
//!    keeps the layers and unpacks the rootfs) against `skopeo copy oci-archive:X oci:Y:t` of
//!    the same file, in turns, each round against a server of its own (a store that already
//!    holds a layer only checks it) and a new layout folder. A third row diagnoses the gap:
//!    the same upload sent in large pieces.
//! 3. Ten releases sharing a 90 MiB base layer, registered through the CLI from one layout:
//!    the store's layers and the ten rootfs `release create` unpacks, against ten `skopeo copy`
//!    layouts (independent copies) and podman's store of the same ten images.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use shipgate::demo::{SampleServer, SampleSetup, free_port};
use shipgate::output::table;
use shipgate_store::artifact::ArtifactStore;

use crate::image::LIMITS;
use crate::image_fixture::{
    add_image, archive, busybox_layer, disk_usage, disk_usage_of, mib, random_layer, run_tool,
    version_layer,
};
use crate::promote::{median, ms};

/// Part 2's image: busybox and this many random bytes.
const BIG: usize = 100 << 20;
/// Part 3's shared base layer: this many random bytes (busybox beside it, in a layer of its own).
const BASE: usize = 90 << 20;

/// A server of the sample config in a folder of its own (image releases need no more).
async fn server() -> anyhow::Result<SampleServer> {
    let ports = [free_port(0)?, free_port(0)?, free_port(0)?, free_port(0)?];
    SampleServer::start_with(
        "shipgate-bench-image-",
        free_port(0)?,
        ports,
        SampleSetup::default(),
    )
    .await
}

/// Runs `program args` to its end (without blocking the runtime the server runs on): how long
/// it took, failing with its output unless it succeeded.
async fn timed(program: &Path, args: &[String]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{} {}: {}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// `shipgate release create web --version VERSION --image REFERENCE` against `server`.
async fn release_create(
    server: &SampleServer,
    version: &str,
    reference: &str,
) -> anyhow::Result<Duration> {
    let exe = shipgate::shipgate_exe()?;
    let args = [
        "--config",
        &server.config_path.display().to_string(),
        "release",
        "create",
        "web",
        "--version",
        version,
        "--image",
        reference,
    ]
    .map(str::to_owned);
    timed(&exe, &args).await
}

/// Diagnosis, not a figure of shipgate: what `release create` would take if the CLI sent the
/// archive in 1 MiB pieces. It hashes the file and posts it to the same endpoint, with the query
/// the CLI sends; reqwest's `Body::from(tokio::fs::File)`, which the CLI uses, reads and sends
/// 4 KiB at a time, each read a hop to tokio's blocking pool. Runs in this process (no start
/// of a process of its own, which the CLI's figure includes: about 10 ms).
async fn upload_in_large_pieces(
    server: &SampleServer,
    version: &str,
    archive: &Path,
    reference: &str,
) -> anyhow::Result<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let path = archive.to_owned();
    let digest =
        tokio::task::spawn_blocking(move || shipgate_store::artifact::digest_file(&path)).await??;
    let token_file = server
        .work
        .path()
        .join("data")
        .join(shipgate_server::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file)?;
    let file = tokio::fs::File::open(archive).await?;
    let len = file.metadata().await?.len();
    let pieces = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut piece = vec![0u8; 1 << 20];
        let n = file.read(&mut piece).await?;
        piece.truncate(n);
        Ok::<_, std::io::Error>((n > 0).then(|| (bytes::Bytes::from(piece), file)))
    });
    let digest = digest.to_string();
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .post(format!(
            "http://{}/api/v1/apps/web/releases",
            server.api_addr()
        ))
        .query(&[
            ("version", version),
            ("digest", &digest),
            ("image", reference),
        ])
        .bearer_auth(token.trim())
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await?;
    let took = started.elapsed();
    anyhow::ensure!(
        answer.status().is_success(),
        "the upload was refused: {}",
        answer.text().await.unwrap_or_default()
    );
    Ok(took)
}

async fn skopeo_copy(from: &str, to: &str) -> anyhow::Result<Duration> {
    let args = ["copy", "--quiet", from, to].map(str::to_owned);
    timed(Path::new("skopeo"), &args).await
}

/// Part 2: the two commands taking turns, the order swapped each round.
pub(crate) async fn create(rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shipgate-bench-image-")
        .tempdir()?;
    let layout = dir.path().join("layout");
    add_image(
        &layout,
        &[busybox_layer()?, random_layer("random", BIG, 31)?],
        "big",
    )?;
    let archive_path = dir.path().join("big.tar");
    archive(&layout, "big", &archive_path)?;
    let size = std::fs::metadata(&archive_path)?.len();
    let source = format!("oci-archive:{}", archive_path.display());

    // The three take turns, each round starting with the next.
    let mut took: [Vec<Duration>; 3] = Default::default();
    // Round 0 warms up (the page cache holds the archive for all), not counted.
    for round in 0..=rounds {
        for k in 0..3 {
            let k = (k + round) % 3;
            let d = match k {
                0 => {
                    let out = dir.path().join(format!("copy-{round}"));
                    let d = skopeo_copy(&source, &format!("oci:{}:big", out.display())).await?;
                    std::fs::remove_dir_all(&out)?;
                    d
                }
                1 => {
                    let server = server().await?;
                    let d = release_create(&server, "1.0.0", &source).await?;
                    server.stop().await?;
                    d
                }
                _ => {
                    let server = server().await?;
                    let d =
                        upload_in_large_pieces(&server, "1.0.0", &archive_path, &source).await?;
                    server.stop().await?;
                    d
                }
            };
            if round > 0 {
                took[k].push(d);
            }
        }
    }
    let [anchor, ours, pieces] = took.map(|mut t| median(&mut t));
    let ratio = ours.as_secs_f64() / anchor.as_secs_f64();
    println!(
        "2. registering a {} image (oci-archive of busybox + one layer of random bytes), median of {rounds}, in turns",
        mib(size)
    );
    let row = |what: &str, d: Duration| {
        vec![
            what.to_owned(),
            format!("{:.0} ms", ms(d)),
            format!("{:.2}×", d.as_secs_f64() / anchor.as_secs_f64()),
        ]
    };
    let rows = [
        row("skopeo copy oci-archive:X oci:Y:t (the anchor)", anchor),
        row("shipgate release create web --image oci-archive:X", ours),
        row(
            "diagnosis: the same upload sent in 1 MiB pieces, not 4 KiB",
            pieces,
        ),
    ];
    print!("{}", table(&["", "median", "× skopeo"], &rows));
    println!(
        "target ≤ 1.2× skopeo: {} ({ratio:.2}×)",
        if ratio <= 1.2 { "met" } else { "MISSED" }
    );
    Ok(())
}

/// Part 3: the disk of `releases` images sharing a base layer, four ways.
pub(crate) async fn disk(releases: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shipgate-bench-image-")
        .tempdir()?;
    let layout = dir.path().join("layout");
    let (busybox, base) = (busybox_layer()?, random_layer("base", BASE, 90)?);
    let mut digests = Vec::new();
    for k in 0..releases {
        let tag = format!("v{k}");
        let own = version_layer(&format!("2.0.{k}"))?;
        digests.push(add_image(
            &layout,
            &[busybox.clone(), base.clone(), own],
            &tag,
        )?);
    }

    let server = server().await?;
    for k in 0..releases {
        let reference = format!("oci:{}:v{k}", layout.display());
        release_create(&server, &format!("2.0.{k}"), &reference).await?;
    }
    let data = server.work.path().join("data");
    let layers = disk_usage(&data.join("layers"))?;
    // `release create` unpacks each release's rootfs already; this only proves it.
    let store = ArtifactStore::open(&data)?;
    for digest in &digests {
        store
            .image_rootfs(digest, LIMITS)?
            .context("the store lost a release it registered")?;
    }
    // Counted with the layers, each file once: a rootfs's files are hard links to the copies
    // kept in layers/files.
    let rootfs = disk_usage_of(&[data.join("layers"), data.join("releases")])? - layers;
    server.stop().await?;

    let copies = dir.path().join("copies");
    std::fs::create_dir_all(&copies)?;
    for k in 0..releases {
        let to = format!("oci:{}:v{k}", copies.join(k.to_string()).display());
        skopeo_copy(&format!("oci:{}:v{k}", layout.display()), &to).await?;
    }
    let copied = disk_usage(&copies)?;

    // podman's own store (containers/storage, overlay), written by skopeo: podman names an
    // image pulled from an `oci:` folder after its path, which a temporary folder's may not be.
    let podman = dir.path().join("podman");
    let storage = format!(
        "containers-storage:[overlay@{}+{}]",
        podman.join("root").display(),
        podman.join("run").display()
    );
    for k in 0..releases {
        let from = format!("oci:{}:v{k}", layout.display());
        skopeo_copy(&from, &format!("{storage}localhost/bench:v{k}")).await?;
    }
    let podman_store = disk_usage(&podman.join("root"))?;
    // containers/storage leaves its overlay folder mounted on itself (a private mount), which
    // would keep the run's folder from being removed.
    let overlay = podman.join("root").join("overlay");
    if let Err(e) = run_tool("umount", &[&overlay.display().to_string()]) {
        eprintln!("warning: {} is left mounted: {e}", overlay.display());
    }

    println!(
        "3. disk for {releases} images sharing a {} base layer (each adds a few bytes of its own)",
        mib(BASE as u64)
    );
    let row = |what: &str, bytes: u64| {
        vec![
            what.to_owned(),
            mib(bytes),
            format!("{:.2}×", bytes as f64 / copied as f64),
        ]
    };
    let rows = [
        row(
            &format!("{releases} skopeo copy into {releases} OCI layouts (the anchor)"),
            copied,
        ),
        row(
            "shipgate: layers/ (each layer once, and its files unpacked once)",
            layers,
        ),
        row(
            &format!("shipgate: layers/ + the {releases} rootfs (hard links to those files)"),
            layers + rootfs,
        ),
        row(
            &format!("podman's store (containers/storage), the {releases} images"),
            podman_store,
        ),
    ];
    print!("{}", table(&["", "on disk", "× copies"], &rows));
    Ok(())
}
