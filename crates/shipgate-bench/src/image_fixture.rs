//! The images `shipgate-bench image` measures, built here without any network: FROM scratch,
//! busybox-static and a start script (busybox's httpd), and for the size parts a layer of
//! random bytes that no compressor shrinks. Written with the store's `write_layout`, so the same
//! input gives the same digests; and the disk a folder takes, as `du` counts it.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use shipgate_core::Digest;
use shipgate_store::artifact::{RunConfigJson, write_layout};

/// The app: busybox's httpd serving `www` (relative, so the same script serves the image's
/// `/www` and a release directory's own `www`) on `$PORT`, ended cleanly by SIGTERM (as pid 1
/// in a container it would ignore it otherwise).
pub(crate) const START: &str = "#!/bin/sh\n\
    busybox httpd -f -p 127.0.0.1:$PORT -h www &\n\
    pid=$!\n\
    trap 'kill $pid; exit 0' TERM\n\
    wait $pid\n";

/// The page the health check asks for.
pub(crate) const INDEX: &str = "hello from busybox httpd\n";

/// Where busybox-static is installed.
pub(crate) const BUSYBOX: &str = "/usr/bin/busybox";

/// One entry of a layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A tar of `entries`, owned by root, every time 0, gzip-compressed at `level` (none for
/// random bytes: they would not shrink, and the layer is still a valid tar+gzip).
fn layer(entries: &[Entry<'_>], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), level);
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, path, io::empty())?;
            }
            Entry::File(path, mode, bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(bytes.len() as u64);
                tar.append_data(&mut header, path, *bytes)?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, path, target)?;
            }
        }
    }
    tar.into_inner()?.finish()
}

/// The base layer of every image here: busybox, `sh` linked to it, the start script and the
/// page, the folders a container expects.
pub(crate) fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (apt-get install -y busybox-static)"))?;
    let entries = [
        Entry::Dir("bin"),
        Entry::File("bin/busybox", 0o755, &busybox),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::File("bin/start", 0o755, START.as_bytes()),
        Entry::Dir("etc"),
        Entry::File("etc/passwd", 0o644, b"root:x:0:0:root:/:/bin/sh\n"),
        Entry::File("etc/group", 0o644, b"root:x:0:\n"),
        Entry::Dir("www"),
        Entry::File("www/index.html", 0o644, INDEX.as_bytes()),
        Entry::Dir("tmp"),
        Entry::Dir("data"),
        Entry::Dir("proc"),
        Entry::Dir("dev"),
        Entry::Dir("sys"),
    ];
    Ok(layer(&entries, flate2::Compression::default())?)
}

/// A layer holding one file, `data/NAME`, of `size` random bytes from `seed` (xorshift64*:
/// incompressible for gzip, and the same bytes for the same seed).
pub(crate) fn random_layer(name: &str, size: usize, seed: u64) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size + 8);
    let mut x = seed | 1;
    while bytes.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        bytes.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(size);
    let path = format!("data/{name}");
    let entries = [Entry::Dir("data"), Entry::File(&path, 0o444, &bytes)];
    Ok(layer(&entries, flate2::Compression::none())?)
}

/// A small layer of a release's own: `www/version`.
pub(crate) fn version_layer(version: &str) -> anyhow::Result<Vec<u8>> {
    let text = format!("{version}\n");
    let entries = [
        Entry::Dir("www"),
        Entry::File("www/version", 0o644, text.as_bytes()),
    ];
    Ok(layer(&entries, flate2::Compression::default())?)
}

/// How the images run: the start script, in `/`, with busybox on the PATH.
fn run_config() -> RunConfigJson {
    RunConfigJson {
        entrypoint: Some(vec!["/bin/start".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        exposed_ports: Some([("8080/tcp".to_owned(), serde_json::json!({}))].into()),
        ..RunConfigJson::default()
    }
}

/// Adds the image of `layers`, tagged `tag`, to the OCI layout `out`; its manifest's digest.
pub(crate) fn add_image(out: &Path, layers: &[Vec<u8>], tag: &str) -> anyhow::Result<Digest> {
    write_layout(out, None, layers, run_config(), tag)
        .with_context(|| format!("writing the image {tag} into {}", out.display()))
}

/// Runs `program` with `args`, failing with its output unless it succeeds; its stdout.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The layout `layout`'s image `tag` as an oci-archive at `archive`, written by skopeo.
pub(crate) fn archive(layout: &Path, tag: &str, archive: &Path) -> anyhow::Result<()> {
    run_tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("oci-archive:{}", archive.display()),
        ],
    )?;
    Ok(())
}

/// The bytes the files under `path` take on disk (allocated blocks, as `du` counts them), each
/// file once however many hard links it has; 0 if there is nothing there.
pub(crate) fn disk_usage(path: &Path) -> io::Result<u64> {
    disk_usage_of(std::slice::from_ref(&path.to_owned()))
}

/// [`disk_usage`] of several folders together: a file linked from two of them counts once.
pub(crate) fn disk_usage_of(paths: &[std::path::PathBuf]) -> io::Result<u64> {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> io::Result<u64> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut total = if seen.insert((meta.dev(), meta.ino())) {
            meta.blocks() * 512
        } else {
            0
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path)? {
                total += walk(&entry?.path(), seen)?;
            }
        }
        Ok(total)
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for path in paths {
        total += walk(path, &mut seen)?;
    }
    Ok(total)
}

/// `bytes` in MiB, for the tables.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
