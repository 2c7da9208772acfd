//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` and `pg_ctl` from Debian's
//! postgresql into a temp dir on a free loopback port (run as the `postgres` user when the caller
//! is root, since PostgreSQL refuses to run as root), stopped when dropped. One cluster can also
//! be shared by every test of a process ([`TempCluster::shared`]): a watcher stops and removes
//! it when that process ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::{Connection, PgConnection};

/// A running cluster; it is stopped (immediately) and deleted when dropped.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL is not installed: apt-get install -y postgresql (scripts/test does it as root)".to_owned())?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TempCluster {
    /// Creates and starts a cluster (trust auth on loopback, fsync off: it is thrown away).
    pub fn start() -> Result<TempCluster, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("shipgate-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(dir.path());
            run(chown, "chown")?;
        }
        let data = dir.path().join("data");
        let mut init = as_owner(&bin.join("initdb"));
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(init, "initdb")?;
        // Below the kernel's ephemeral range (32768 and up), where instances' ports are picked,
        // so a cluster never takes the port a just-picked instance is about to bind.
        // Each call of this process starts elsewhere in the range, so two clusters started at
        // once do not both find the same port free before either binds it.
        static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (0..200u16)
            .map(|i| {
                let spread = (std::process::id() as u16)
                    .wrapping_mul(7)
                    .wrapping_add(call.wrapping_mul(1009))
                    .wrapping_add(i.wrapping_mul(37));
                20_000 + spread % 10_000
            })
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .ok_or("no free port between 20000 and 30000")?;
        let mut start = as_owner(&bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args([
                "-o",
                &format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_wal_size=4GB",
                    dir.path().display()
                ),
                "-w",
                "start",
            ]);
        run(start, "pg_ctl start")?;
        Ok(TempCluster { dir, bin, port })
    }

    /// The URL of a database of the cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database (optionally as a copy of another).
    pub async fn create_database(
        &self,
        name: &str,
        template: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let mut admin = PgConnection::connect(&self.url("postgres")).await?;
        let template = template
            .map(|t| format!(" TEMPLATE {t}"))
            .unwrap_or_default();
        sqlx::raw_sql(&format!("CREATE DATABASE {name}{template}"))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

impl TempCluster {
    /// One cluster for every test of this process, each of which makes a database of its own
    /// ([`TempCluster::fresh_database`]). A process that a `static` outlives runs no `Drop`, so
    /// a small shell watches this process and stops and removes the cluster once it is gone.
    pub fn shared() -> Result<&'static TempCluster, String> {
        static SHARED: std::sync::OnceLock<Result<TempCluster, String>> =
            std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cluster = TempCluster::start()?;
                let watch = format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf {dir}",
                    pid = std::process::id(),
                    stop = cluster.stop_command(),
                    dir = cluster.dir.path().display(),
                );
                Command::new("sh")
                    .args(["-c", &watch])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("starting the cluster's watcher: {e}"))?;
                Ok(cluster)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Creates a database with a name not used before in this process; its URL.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, sqlx::Error> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        self.create_database(&name, None).await?;
        Ok(self.url(&name))
    }

    fn stop_command(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.path().join("data");
        let stop = format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        );
        if is_root() {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let mut stop = as_owner(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}
