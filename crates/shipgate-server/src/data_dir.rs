//! The data dir belongs to one server at a time: an exclusive lock, and permissions that keep
//! other local users out of it (the database and logs hold secrets' neighbours).

use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

/// The lock file inside the data dir; it holds the pid of the server that has the lock.
pub const LOCK_FILE: &str = "server.lock";

/// An exclusive `flock` on `data_dir/server.lock`, released when dropped (or when the process
/// dies, however it dies, so a killed server never leaves a stale lock).
pub struct DataDirLock {
    _lock: Flock<std::fs::File>,
}

impl DataDirLock {
    /// Creates the data dir (mode 0700) and takes its lock; refuses, naming the other server's
    /// pid, while another server holds it.
    pub fn take(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        if !data_dir.is_dir() {
            bail!(
                "the data dir {} is not a folder; set `data_dir` in [server] to a folder",
                data_dir.display()
            );
        }
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making the data dir {} private", data_dir.display()))?;
        refuse_a_full_disk(data_dir)?;
        let path = data_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "another shipgate server (pid {}) is using the data dir {}; stop it first, or give this one another `data_dir` in [server]",
                    pid.trim(),
                    data_dir.display()
                );
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        };
        lock.set_len(0).context("writing the lock file")?;
        lock.rewind().context("writing the lock file")?;
        writeln!(lock, "{}", std::process::id()).context("writing the lock file")?;
        Ok(Self { _lock: lock })
    }
}

/// Less free space than this where the data dir is, and the server does not start: the store
/// could not record what it does.
const LEAST_FREE: u64 = 8 << 20;

/// Refuses, saying so, a data dir on a disk that is (nearly) full.
fn refuse_a_full_disk(data_dir: &Path) -> anyhow::Result<()> {
    let Ok(fs) = nix::sys::statvfs::statvfs(data_dir) else {
        return Ok(());
    };
    let free = fs.blocks_available().saturating_mul(fs.fragment_size());
    if free < LEAST_FREE {
        bail!(
            "the disk that holds the data dir {} is full ({} free, at least {} needed): free some space there (`shipgate gc` removes old releases once the server runs), then start again",
            data_dir.display(),
            shipgate_deploy::cgroup::bytes_text(free),
            shipgate_deploy::cgroup::bytes_text(LEAST_FREE)
        );
    }
    Ok(())
}
