//! Production data safety (issue 33): backups proven by a restore drill (a corrupted one is not,
//! and the alert on the age of the newest restorable backup fires), retention,
//! `require.backup_within`, restores by an admin with a reason, migrations as a gate before the
//! switch, the rollback that says the database was not rolled back, and kill -9 during a backup
//! and a migration. SQLite here, and a real PostgreSQL 15 for the dump, drill and restore.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::helpers::{
    TestServer, four_envs_with, load, load_ended_without_failures, postgres_database, python,
    spawn_server_after, wait_for,
};

/// The orders table of production's SQLite file, with `rows` rows.
fn seed_sqlite(path: &std::path::Path, rows: usize) {
    python(&format!(
        "import sqlite3\ndb = sqlite3.connect({path:?})\ndb.execute('CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT NOT NULL)')\ndb.executemany('INSERT INTO orders (sku) VALUES (?)', [('A%d' % i,) for i in range({rows})])\ndb.commit()\n",
        path = path.display().to_string()
    ));
}

fn sqlite_scalar(path: &std::path::Path, query: &str) -> String {
    python(&format!(
        "import sqlite3\nprint(sqlite3.connect({path:?}).execute({query:?}).fetchone()[0])\n",
        path = path.display().to_string()
    ))
    .trim()
    .to_owned()
}

/// A server whose web app keeps its production data in `production.db` (SQLite), with the
/// backup settings, production's extra lines and the server's.
fn with_data(backup: &str, production: &str, extra: &str) -> TestServer {
    let mut config = four_envs_with("", &[("production", production)]);
    config = config.replacen(
        "health = \"/healthz\"\n",
        &format!(
            "health = \"/healthz\"\nmigrate = \"python3 migrate.py ${{DATA_URL}}\"\n\n[apps.web.data]\nproduction = \"sqlite://production.db\"\n\n[apps.web.backup]\n{backup}\n"
        ),
        1,
    );
    config.push_str(extra);
    spawn_server_after(&config, |dir| seed_sqlite(&dir.join("production.db"), 1000))
}

/// The migration of the fixture app's releases: the first half always, the second half unless
/// the release holds a FAIL file.
const MIGRATE: &str = "import os, sqlite3, sys\npath = sys.argv[1][len('sqlite://'):]\ndb = sqlite3.connect(path)\ndb.isolation_level = None\ndb.execute('CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY, at TEXT)')\nif os.path.exists('FAIL'):\n    sys.exit('migration 2 failed halfway: orders.total is missing')\nif os.path.exists('HOLD'):\n    import time\n    while not os.path.exists(open('HOLD').read().strip()):\n        time.sleep(0.05)\ndb.execute('ALTER TABLE orders ADD COLUMN note TEXT')\nprint('orders.note added')\n";

fn release(s: &TestServer, version: &str, extra: &[(&str, &str)]) {
    let mut files = vec![("migrate.py", MIGRATE)];
    files.extend_from_slice(extra);
    let dir = s.app_release(version, &files);
    s.register_dir(version, &dir);
}

fn backup_json(s: &TestServer, args: &[&str]) -> serde_json::Value {
    let out = s.cli(&[args, &["--output", "json"]].concat());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_backup_is_proven_by_its_drill_a_corrupted_one_is_not_and_the_age_alert_fires() {
    let s = with_data(
        "envs = [\"production\"]\nkeep = 2\nverify = [\"SELECT count(*) FROM orders\"]",
        "",
        "\n[alerts.no-backup]\nenv = \"production\"\nwhen = \"backup_age > 1h\"\n",
    );
    // No backup at all: the alert fires.
    wait_for("the alert on a missing backup", || {
        !s.messages_of("alert.firing").is_empty()
    });
    let b = backup_json(&s, &["backup", "create", "web", "--env", "production"]);
    assert_eq!(b["state"], "restorable", "{b}");
    assert_eq!(b["counts"]["orders"], 1000, "{b}");
    assert_eq!(b["drill"]["tables"][0]["restored"], 1000, "{b}");
    assert_eq!(b["drill"]["queries"][0]["answer"], "1000", "{b}");
    wait_for("the alert to resolve", || {
        !s.messages_of("alert.resolved").is_empty()
    });
    let shown = s.ok(&["backup", "show", &b["id"].to_string()]);
    assert!(
        shown.contains("restorable") && shown.contains("orders"),
        "{shown}"
    );

    // A byte changed in its files: the drill proves it not restorable, and the alert fires
    // again, since no restorable backup is left.
    let file = s
        .data_dir()
        .join("backups/sha256")
        .join(b["checksum"].as_str().unwrap())
        .join("data.sqlite");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let id = b["id"].to_string();
    let out = s.cli(&["backup", "drill", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a not restorable backup fails the command"
    );
    let b = backup_json(&s, &["backup", "show", &id]);
    assert_eq!(b["state"], "not_restorable", "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("its files changed since it was taken"),
        "{b}"
    );
    wait_for("the alert to fire again", || {
        s.messages_of("alert.firing").len() >= 2
    });
    assert_eq!(s.messages_of("backup.not_restorable").len(), 1);

    // Retention keeps 2: of three more, the oldest goes (its files too); the record stays.
    for _ in 0..3 {
        s.ok(&["backup", "create", "web", "--env", "production"]);
    }
    let all = backup_json(&s, &["backup", "list", "web", "--env", "production"]);
    let kept: Vec<&serde_json::Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["pruned_at"].is_null())
        .collect();
    assert_eq!(kept.len(), 2, "{all}");
    assert!(!s.messages_of("backup.pruned").is_empty());
}

#[test]
fn a_postgres_backup_is_dumped_drilled_and_restored_by_an_admin_with_a_reason() {
    let url = postgres_database("backup");
    python(&format!(
        "import subprocess\nsubprocess.run(['psql', {url:?}, '-q', '-c', \"CREATE TYPE status AS ENUM ('new', 'paid'); CREATE TABLE orders (id serial PRIMARY KEY, sku text NOT NULL, s status NOT NULL DEFAULT 'new'); INSERT INTO orders (sku) SELECT 'A' || g FROM generate_series(1, 5000) g; CREATE TABLE customers (id serial PRIMARY KEY, name text); INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300) g;\"], check=True)\n"
    ));
    let mut config = four_envs_with("", &[]);
    config = config.replacen(
        "health = \"/healthz\"\n",
        &format!(
            "health = \"/healthz\"\n\n[apps.web.data]\nproduction = \"{url}\"\n\n[apps.web.backup]\nenvs = [\"production\"]\njobs = 2\nverify = [\"SELECT count(*) FROM orders WHERE s = 'new'\"]\n"
        ),
        1,
    );
    let s = crate::helpers::spawn_server(&config);
    let b = backup_json(&s, &["backup", "create", "web", "--env", "production"]);
    assert_eq!(b["state"], "restorable", "{b}");
    assert_eq!(b["kind"], "postgres");
    assert_eq!(b["counts"]["orders"], 5000, "{b}");
    assert_eq!(b["counts"]["customers"], 300, "{b}");
    assert_eq!(b["drill"]["queries"][0]["answer"], "5000", "{b}");
    assert!(!b["source"].as_str().unwrap().contains("password"), "{b}");
    // Rows lost after it; an admin restores with a reason; a deployer may not.
    let psql = |sql: &str| {
        python(&format!(
            "import subprocess\nprint(subprocess.run(['psql', {url:?}, '-qtA', '-c', {sql:?}], check=True, capture_output=True, text=True).stdout.strip())\n"
        ))
        .trim()
        .to_owned()
    };
    psql("DELETE FROM orders WHERE id > 100");
    let deployer = s.token("dee", "deployer", &[]);
    let refused = s.refused_as(
        &deployer,
        &[
            "backup",
            "restore",
            "web",
            "--env",
            "production",
            "--reason",
            "oops",
        ],
    );
    assert!(refused.contains("may not restore backups"), "{refused}");
    let restored = s.ok(&[
        "backup",
        "restore",
        "web",
        "--env",
        "production",
        "--reason",
        "rows deleted by mistake",
    ]);
    assert!(restored.contains("restored backup"), "{restored}");
    assert_eq!(psql("SELECT count(*) FROM orders"), "5000");
    let audit = s.messages_of("backup.restored");
    assert!(
        audit.iter().any(|m| m.contains("rows deleted by mistake")),
        "{audit:?}"
    );
    // No scratch database is left behind.
    assert_eq!(
        psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'shipgate_drill_%'"),
        "0"
    );
}

#[test]
fn require_backup_within_waits_with_the_command_then_passes_once_a_backup_is_taken() {
    let s = with_data(
        "envs = [\"production\"]",
        "require.backup_within = \"1h\"\nisolation = \"none\"",
        "",
    );
    release(&s, "1.0.0", &[]);
    s.walk("1.0.0", "staging");
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("production to wait for a backup", || {
        s.waits("production").iter().any(|w| {
            w.contains("no restorable backup of web in production taken within 1h")
                && w.contains("shipgate backup create web --env production")
        })
    });
    s.ok(&["backup", "create", "web", "--env", "production"]);
    wait_for("the promotion to go live", || {
        s.version("production").as_deref() == Some("1.0.0")
    });
}

#[test]
fn a_migration_that_fails_halfway_fails_the_promotion_before_the_switch_and_production_serves_throughout()
 {
    let s = with_data(
        "envs = [\"production\"]\nbefore_promotion = true",
        "isolation = \"none\"",
        "",
    );
    let db = s.config_dir().join("production.db");
    release(&s, "1.0.0", &[]);
    s.walk("1.0.0", "production");
    // 1.0.0 migrated: note added, and a backup was taken before it.
    assert_eq!(
        sqlite_scalar(
            &db,
            "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'note'"
        ),
        "1"
    );
    release(&s, "1.1.0", &[("FAIL", "")]);
    s.walk("1.1.0", "staging");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(
        format!("{}/version", s.url("production")),
        Arc::clone(&stop),
    );
    // Long enough around the promotion for the load to count (a busy machine answers slower).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = s.cli(&["promote", "web@1.1.0", "--to", "production", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::helpers::text(&out));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let answered = load_ended_without_failures(&stop, traffic, "a failed migration");
    assert!(answered > 50);
    let latest = s.latest("production");
    assert_eq!(latest["state"], "failed", "{latest}");
    let gates = latest["gates"].to_string();
    assert!(gates.contains("migration 2 failed halfway"), "{gates}");
    assert!(
        !gates.contains("\"deploy\""),
        "nothing was started: {gates}"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    assert!(!s.messages_of("migration.failed").is_empty());

    // 1.2.0 migrates (a backup before it), then a rollback says the data was not rolled back,
    // and the restore of the backup before it is the explicit second step.
    python(&format!(
        "import sqlite3\ndb = sqlite3.connect({:?})\ndb.execute('ALTER TABLE orders DROP COLUMN note')\ndb.commit()\n",
        db.display().to_string()
    ));
    release(&s, "1.2.0", &[]);
    s.walk("1.2.0", "production");
    let latest = s.latest("production");
    let backup_gate = latest["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "backup")
        .unwrap_or_else(|| panic!("no backup gate: {latest}"))
        .clone();
    assert!(backup_gate["passed"].as_bool().unwrap());
    let out = s.cli(&["rollback", "web", "--env", "production", "--wait"]);
    let said = crate::helpers::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the database was not rolled back: web@1.2.0")
            && said.contains("shipgate backup restore web --env production --id"),
        "{said}"
    );
    assert_eq!(
        sqlite_scalar(
            &db,
            "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'note'"
        ),
        "1",
        "the rollback switched traffic only"
    );
    let id = said
        .split("--id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    s.ok(&[
        "backup",
        "restore",
        "web",
        "--env",
        "production",
        "--id",
        &id,
        "--reason",
        "undo 1.2.0's migration",
    ]);
    assert_eq!(
        sqlite_scalar(
            &db,
            "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'note'"
        ),
        "0",
        "the restore brought back the schema before 1.2.0's migration"
    );
    assert_eq!(sqlite_scalar(&db, "SELECT count(*) FROM orders"), "1000");
}

#[test]
fn kill_9_during_a_backup_and_a_migration_leaves_nothing_half_recorded_and_the_next_start_says_so()
{
    let mut s = with_data("envs = [\"production\"]", "isolation = \"none\"", "");
    let db = s.config_dir().join("production.db");
    // A writer holds the file: the backup waits for it, and is killed meanwhile.
    let holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, time\ndb = sqlite3.connect({:?}, isolation_level=None)\ndb.execute('BEGIN EXCLUSIVE')\nprint('held', flush=True)\ntime.sleep(30)\n",
            db.display().to_string()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cli = crate::helpers::command(&s.config_dir())
        .arg("-c")
        .arg(s.config_dir().join("shipgate.toml"))
        .args(["backup", "create", "web", "--env", "production"])
        .spawn()
        .unwrap();
    wait_for("the backup to be recorded running", || {
        s.json(&["backup", "list", "web"])
            .as_array()
            .is_some_and(|a| a.iter().any(|b| b["state"] == "running"))
    });
    s.kill9();
    let mut holder = holder;
    holder.kill().ok();
    holder.wait().ok();
    let _ = cli.wait_with_output();
    s.restart();
    let all = s.json(&["backup", "list", "web"]);
    assert_eq!(all[0]["state"], "interrupted", "{all}");
    assert!(
        s.messages_of("backup.interrupted")
            .iter()
            .any(|m| m.contains("the server stopped while it was being taken")),
        "{all}"
    );
    assert!(
        std::fs::read_dir(s.data_dir().join("backups/tmp"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "its partial files are gone"
    );

    // A migration held midway, then kill -9: the promotion fails on the next start, saying
    // so, and production keeps what it had.
    release(&s, "1.0.0", &[]);
    s.walk("1.0.0", "production");
    let go = s.config_dir().join("go");
    release(&s, "1.1.0", &[("HOLD", go.to_str().unwrap())]);
    s.walk("1.1.0", "staging");
    s.ok(&["promote", "web@1.1.0", "--to", "production"]);
    wait_for("the migration to run", || {
        s.latest("production")["state"] == "deploying" && !s.instance_processes().is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.kill9();
    s.restart();
    let latest = s.latest("production");
    assert_eq!(latest["state"], "failed", "{latest}");
    assert!(
        latest["reason"]
            .as_str()
            .unwrap()
            .contains("the server stopped during its migration (`python3 migrate.py ${DATA_URL}`), which may have changed the database partly; nothing was switched"),
        "{latest}"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
}
