//! A real PostgreSQL cluster started by the test itself: `initdb` and `pg_ctl` into a temp dir
//! on a free loopback port (as the `postgres` user when the tests run as root, since PostgreSQL
//! refuses to run as root), stopped when dropped.

use std::path::PathBuf;
use std::process::Command;

use sqlx::{Connection, PgConnection};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs Debian's postgresql as root)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn as_owner(program: &std::path::Path) -> Command {
    if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Starts a fresh cluster with databases `shop` and `shop_staging`.
    pub async fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("shipgate-pg-")
            .tempdir()
            .unwrap();
        if nix_is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let data = dir.path().join("data");
        let mut init = as_owner(&bin.join("initdb"));
        init.args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(init, "initdb");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut start = as_owner(&bin.join("pg_ctl"));
        start
            .args(["-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.path().join("log"))
            .args([
                "-o",
                &format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                    dir.path().display()
                ),
                "-w",
                "start",
            ]);
        run(start, "pg_ctl start");
        let pg = Postgres { dir, bin, port };
        let mut admin = PgConnection::connect(&pg.url("postgres")).await.unwrap();
        for db in ["shop", "shop_staging"] {
            sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        pg
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut stop = as_owner(&self.bin.join("pg_ctl"));
        stop.args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
    }
}
