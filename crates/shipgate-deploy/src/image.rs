//! Instances of image releases: an OCI runtime bundle (the image's unpacked root, read-only, and
//! a `config.json` made from its config and the instance's variables) run by runc in the
//! foreground, so the driver supervises, logs, stops and adopts it as any other process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shipgate_core::image::{ImageConfig, Instance, resolve_user, runtime_config};

use crate::InstanceId;
use crate::sandbox::Account;

/// What runs an instance of an image release instead of a command in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRun {
    /// The image config (the JSON blob its manifest points at), as the image has it.
    pub config: String,
    /// The image's unpacked root file system; mounted read-only.
    pub rootfs: PathBuf,
    /// The folder this instance's bundle (`config.json`) is written to; it holds the
    /// instance's variables, so it is the driver's alone (0700).
    pub bundle: PathBuf,
    /// The app's `run`, if set: replaces the image's Entrypoint and Cmd (run by `/bin/sh -c` in
    /// the image).
    pub command: Option<String>,
    /// The data folder mounted at `/data` (`DATA_DIR`) when no sandbox gives one.
    pub data_dir: PathBuf,
    /// The seccomp filter (`linux.seccomp` of the OCI runtime spec), if any.
    #[serde(default)]
    pub seccomp: Option<serde_json::Value>,
}

/// The user an image instance runs as when no sandbox says: the image's own if it names a
/// non-root one, else nobody. Never root.
const NOBODY: (u32, u32) = (65534, 65534);

/// The container's name for runc: the instance id (letters, digits, `-`, `_`, `.`).
pub fn container_id(id: &InstanceId) -> String {
    id.as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the bundle of `run` for instance `id`, running as the sandbox's `account` (or as the
/// image says, never root, without a sandbox), with `env` and `data_dir` mounted at `/data`,
/// joined to the cgroup `cgroup` (`/shipgate/ID`) if it has one. Returns runc's command line.
pub fn prepare(
    run: &ImageRun,
    id: &InstanceId,
    env: &BTreeMap<String, String>,
    account: Option<Account>,
    data_dir: &Path,
    cgroup: Option<&str>,
) -> Result<Vec<OsString>, String> {
    let mut image: ImageConfig = serde_json::from_str(&run.config)
        .map_err(|e| format!("the image's config cannot be read: {e}"))?;
    if let Some(command) = &run.command {
        image.config.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        image.config.cmd = Some(vec![command.clone()]);
    }
    let user = match account {
        // The environment's fence is by its user: what runs there runs as it.
        Some(a) => (a.uid, a.gid),
        None => {
            // An image's files may be links to anywhere: only a plain file of the image is read.
            // An image's files may be links to anywhere: only a file inside the image is read.
            let root = std::fs::canonicalize(&run.rootfs).unwrap_or_else(|_| run.rootfs.clone());
            let read = |f: &str| {
                std::fs::canonicalize(run.rootfs.join(f))
                    .ok()
                    .filter(|p| p.starts_with(&root))
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default()
            };
            match resolve_user(
                image.config.user.as_deref().unwrap_or(""),
                &read("etc/passwd"),
                &read("etc/group"),
            )? {
                (0, _) => NOBODY,
                named => named,
            }
        }
    };
    if account.is_none() {
        // Unsandboxed, the data folder is made by the server: given to the user it runs as.
        std::os::unix::fs::chown(data_dir, Some(user.0), Some(user.1)).map_err(|e| {
            format!(
                "could not give {} to uid {}: {e}",
                data_dir.display(),
                user.0
            )
        })?;
    }
    let hostname = container_id(id);
    let mut spec = runtime_config(
        &image,
        &Instance {
            env,
            data_dir,
            user,
            netns: None,
            hostname: &hostname,
        },
    )?;
    spec["root"]["path"] = run.rootfs.display().to_string().into();
    if let Some(cgroup) = cgroup {
        spec["linux"]["cgroupsPath"] = cgroup.into();
    }
    if let Some(seccomp) = &run.seccomp {
        spec["linux"]["seccomp"] = seccomp.clone();
    }
    let written = (|| {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run.bundle)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(run.bundle.join("config.json"))?;
        std::io::Write::write_all(&mut f, spec.to_string().as_bytes())
    })();
    written.map_err(|e| {
        format!(
            "could not write its bundle in {}: {e}",
            run.bundle.display()
        )
    })?;
    // What an earlier run of this instance left with runc (a crash, a killed runc).
    remove_container(id);
    Ok(vec![
        "runc".into(),
        "run".into(),
        "--bundle".into(),
        run.bundle.clone().into_os_string(),
        container_id(id).into(),
    ])
}

/// Forgets the runc container of instance `id` (its state and what is left of it).
pub fn remove_container(id: &InstanceId) {
    let _ = std::process::Command::new("runc")
        .args(["delete", "--force", &container_id(id)])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Why images cannot run on this machine, if they cannot: runc missing, or not root.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("running images needs root (runc makes their namespaces)".into());
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("runc").is_file()))
        .unwrap_or(false);
    (!found).then(|| "runc is not installed (apt-get install -y runc)".into())
}
