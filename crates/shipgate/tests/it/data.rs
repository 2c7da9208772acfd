//! `shipgate data refresh` and `shipgate data check` through the server: who may refresh,
//! which way data may flow, production only read, and the audit record.

use std::path::Path;
use std::process::Command;

use sha2::Digest as _;

use crate::helpers::{four_envs_with, spawn_server};

/// A production SQLite database made with Python's sqlite3 (not shipgate's own code).
pub(crate) fn production_db(path: &Path) {
    let script = format!(
        "import sqlite3\ndb = sqlite3.connect({path:?})\ndb.executescript('''CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, full_name TEXT, plan TEXT);''')\ndb.executemany('INSERT INTO users VALUES (?, ?, ?, ?)', [(i, f'user{{i}}@corp.example', f'Real Name {{i}}', 'pro') for i in range(200)])\ndb.commit()\n",
        path = path.display().to_string()
    );
    crate::helpers::python(&script);
}

fn sha(path: &Path) -> Vec<u8> {
    sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

#[test]
fn admins_refresh_staging_from_production_which_is_only_read() {
    let config = four_envs_with("", &[]).replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\n\n[apps.web.data]\nproduction = \"sqlite://production.db\"\nstaging = \"sqlite://staging.db\"\nunlisted = \"refuse\"\n\n[apps.web.data.mask.users]\nemail = \"email\"\nfull_name = \"name\"\n",
    );
    let s = spawn_server(&config);
    let production = s.dir.path().join("production.db");
    let staging = s.dir.path().join("staging.db");
    production_db(&production);
    std::fs::write(&staging, b"staging before").unwrap();
    let before = sha(&production);

    let deployer = s.token("ci", "deployer", &[]);
    let refused = s.refused_as(
        &deployer,
        &[
            "data",
            "refresh",
            "web",
            "--from",
            "production",
            "--to",
            "staging",
        ],
    );
    assert!(
        refused.contains("has the role deployer, which may not refresh data"),
        "{refused}"
    );
    let backwards = s.refused(&[
        "data",
        "refresh",
        "web",
        "--from",
        "staging",
        "--to",
        "production",
    ]);
    assert!(
        backwards.contains("data flows only towards earlier environments"),
        "{backwards}"
    );
    assert_eq!(
        std::fs::read(&staging).unwrap(),
        b"staging before",
        "nothing written"
    );

    let done = s.ok(&[
        "data",
        "refresh",
        "web",
        "--from",
        "production",
        "--to",
        "staging",
    ]);
    assert!(
        done.contains("refreshed web data in staging from production"),
        "{done}"
    );
    assert!(
        done.contains("email: email") && done.contains("full_name: name"),
        "{done}"
    );
    assert_eq!(sha(&production), before, "production is only ever read");

    let dump = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\nfor r in sqlite3.connect({:?}).execute('SELECT email, full_name, plan FROM users ORDER BY id LIMIT 3'): print('|'.join(r))",
            staging.display().to_string()
        ))
        .output()
        .unwrap();
    let rows = String::from_utf8(dump.stdout).unwrap();
    assert_eq!(rows.lines().count(), 3, "{rows}");
    assert!(
        !rows.contains("corp.example") && !rows.contains("Real Name"),
        "{rows}"
    );
    assert!(
        rows.lines()
            .all(|l| l.contains("@example.com|") && l.ends_with("|pro")),
        "{rows}"
    );

    let check = s.ok(&["data", "check", "web", "--env", "staging"]);
    assert!(
        check.contains("staging compared with production: 0 values equal their source"),
        "{check}"
    );
    let events = s.json(&["audit", "--limit", "1000"]);
    let refreshed: Vec<&serde_json::Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "data.refreshed")
        .collect();
    assert_eq!(refreshed.len(), 1, "{events}");
    assert!(
        refreshed[0]["message"]
            .as_str()
            .unwrap()
            .contains("200 rows in 1 tables")
    );
    assert_eq!(refreshed[0]["data"]["tables"][0]["rows"], 200);
}

#[test]
fn a_refresh_killed_with_the_server_leaves_staging_as_it_was() {
    let config = four_envs_with("", &[]).replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\n\n[apps.web.data]\nproduction = \"sqlite://production.db\"\nstaging = \"sqlite://staging.db\"\n\n[apps.web.data.mask.users]\nemail = \"email\"\nfull_name = \"name\"\n",
    );
    let mut s = spawn_server(&config);
    let production = s.dir.path().join("production.db");
    let staging = s.dir.path().join("staging.db");
    let script = format!(
        "import sqlite3\ndb = sqlite3.connect({:?})\ndb.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, full_name TEXT, plan TEXT)')\ndb.executemany('INSERT INTO users VALUES (?, ?, ?, ?)', ((i, f'user{{i}}@corp.example', f'Real Name {{i}}', 'pro') for i in range(300000)))\ndb.commit()\n",
        production.display().to_string()
    );
    crate::helpers::python(&script);
    std::fs::write(&staging, b"staging before").unwrap();

    let mut refresh = crate::helpers::command(s.dir.path())
        .arg("-c")
        .arg(&s.config)
        .args([
            "data",
            "refresh",
            "web",
            "--from",
            "production",
            "--to",
            "staging",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = s.dir.path().to_owned();
    let fresh = || {
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".staging.db.refresh-")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    crate::helpers::wait_for("the refresh to be writing", fresh);
    s.kill9();
    let status = refresh.wait().unwrap();
    assert!(!status.success(), "the refresh did not finish");
    assert_eq!(
        std::fs::read(&staging).unwrap(),
        b"staging before",
        "staging keeps its previous data"
    );

    s.restart();
    s.ok(&[
        "data",
        "refresh",
        "web",
        "--from",
        "production",
        "--to",
        "staging",
    ]);
    assert_ne!(std::fs::read(&staging).unwrap(), b"staging before");
    assert!(
        !fresh(),
        "the next refresh cleared what the killed one left"
    );
}
