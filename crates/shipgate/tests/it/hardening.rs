//! Regression tests of the defects that probing found (issue 11), each named after its defect.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::helpers::{
    command, describe_process, four_envs, four_envs_with, spawn_server, text, wait_for,
};

/// The name of the only admin token limited to no environment (the one in `admin.token`).
fn admin_token_name(tokens: &Value) -> String {
    let admins: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(admins.len(), 1, "{tokens}");
    admins[0].to_owned()
}

#[test]
fn defect_1_revoking_the_admin_token_never_bricks_the_server() {
    let mut s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let first = admin_token_name(&s.json(&["token", "list"]));

    let refused = s.refused(&["token", "revoke", &first]);
    assert!(
        refused.contains("is the last admin token limited to no environment"),
        "{refused}"
    );

    let second = s.token("second-admin", "admin", &[]);
    let itself = s.refused_as(&second, &["token", "revoke", "second-admin"]);
    assert!(itself.contains("a token never revokes itself"), "{itself}");
    s.ok_as(&second, &["token", "revoke", &first]);
    let old_file = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    assert!(s.terminate().success());

    s.restart();
    assert!(
        s.log().contains("was revoked; a new admin token"),
        "the server says what happened:\n{}",
        s.log()
    );
    let new_file = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    assert_ne!(old_file, new_file, "a new admin token was written");
    // The shipgate command finds the new token by itself; development serves again.
    wait_for("development to serve 1.0.0 again", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
    let tokens = s.json(&["token", "list"]);
    let active_admins = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
        .count();
    assert_eq!(active_admins, 2, "{tokens}");
    // The revoked token stays revoked.
    let old = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == first.as_str())
        .unwrap();
    assert!(!old["revoked_at"].is_null(), "{old}");
}

#[test]
fn defect_6_a_second_server_on_the_same_data_dir_refuses_and_harms_nothing() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let before = s.instance_processes();
    assert!(!before.is_empty());

    let second = command(s.dir.path())
        .args(["server", "-c"])
        .arg(&s.config)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let expected = format!(
        "another shipgate server (pid {}) is using the data dir",
        s.pid()
    );
    assert!(text(&second).contains(&expected), "{}", text(&second));

    assert_eq!(
        s.instance_processes(),
        before,
        "the first server's instances live on"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let mode = std::fs::metadata(s.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the data dir is private: {mode:o}");
}

/// Every file below `dir` but the unpacked releases, with its mode.
fn modes_below(dir: &std::path::Path, out: &mut Vec<(String, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            if path.file_name().is_some_and(|n| n != "releases") {
                modes_below(&path, out);
            }
        } else if meta.is_file() {
            out.push((
                path.display().to_string(),
                meta.permissions().mode() & 0o777,
            ));
        }
    }
}

#[test]
fn defect_5_the_database_and_logs_are_readable_by_the_server_user_only() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    let mut files = Vec::new();
    modes_below(&s.data_dir(), &mut files);
    assert!(
        files.iter().any(|(f, _)| f.ends_with("shipgate.db-wal")),
        "{files:?}"
    );
    assert!(files.iter().any(|(f, _)| f.ends_with(".log")), "{files:?}");
    let open: Vec<_> = files.iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
}

#[test]
fn defect_7_sigterm_lets_requests_in_flight_finish_within_drain() {
    let mut s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let url = format!("{}/slow?ms=1500", s.url("development"));
    let clients: Vec<_> = (0..11)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || crate::helpers::http_get(&url, None))
        })
        .collect();
    // Every request is inside the app, half-way through, when the server is told to stop.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = s.terminate();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for answer in &answers {
        let answer = answer.as_ref().expect("the request got an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body, "slow answer, first half; second half\n");
    }
    assert!(
        status.success(),
        "the server exits 0: {status}\n{}",
        s.log()
    );
}

#[test]
fn defect_8_a_test_still_running_at_kill_9_is_stopped_at_restart() {
    let config = four_envs_with("", &[("staging", "verify.tests = [\"sleep 300\"]")]);
    let mut s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    s.ok(&["promote", "web@1.0.0", "--to", "staging"]);
    let sleeping = |s: &crate::helpers::TestServer| -> Vec<i32> {
        s.instance_processes()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| describe_process(*pid).contains("sleep 300"))
            .collect()
    };
    wait_for("the staging test to run", || !sleeping(&s).is_empty());
    s.kill9();
    assert!(
        !sleeping(&s).is_empty(),
        "the test outlives a killed server"
    );
    s.restart();
    wait_for("the restarted server to stop the orphaned test", || {
        sleeping(&s).is_empty()
    });
    let staging = s.latest("staging");
    assert_eq!(staging["state"], "failed", "{staging}");
}

#[test]
fn defect_11_audit_limit_shows_the_newest_events_of_a_long_log() {
    let mut s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    assert!(s.terminate().success());
    // A log longer than one page of /events (10,000), filled while the server is stopped.
    let db = s.data_dir().join("shipgate.db");
    let fill = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1])\n\
             start = db.execute('SELECT MAX(id) FROM events').fetchone()[0]\n\
             db.executemany(\"INSERT INTO events (id, at, actor, kind, message, data, prev_hash, hash) VALUES (?, '2026-01-01T00:00:00Z', 'filler', 'environment.frozen', 'filler', '{}', '', '')\", [(start + i,) for i in range(1, 10051)])\n\
             db.commit()\n",
        )
        .arg(&db)
        .output()
        .unwrap();
    assert!(fill.status.success(), "{}", text(&fill));
    s.restart();
    s.token("latest", "viewer", &[]);
    let events = s.json(&["audit", "--limit", "3"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 3, "{events}");
    assert_eq!(
        kinds[2], "token.created",
        "the newest event comes last: {events}"
    );
    let ids: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");

    let usage = s.cli(&["audit", "--limit", "0"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a usage error: {}",
        text(&usage)
    );
    assert!(
        text(&usage).contains("0 is not in 1..=10000"),
        "{}",
        text(&usage)
    );
    let (status, body) = {
        let token = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
        let reply = crate::helpers::http_get(
            &format!("{}/api/v1/events?limit=-1", s.api()),
            Some(token.trim()),
        )
        .unwrap();
        (reply.status, reply.body)
    };
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`limit` must be between 1 and 10000, not -1"),
        "{body}"
    );
}

/// The pid of the instance live in `env`.
fn live_pid(s: &crate::helpers::TestServer, env: &str) -> i64 {
    let status = s.json(&["status", "web"]);
    let e = crate::helpers::env_status(&status, env);
    e["instance"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid for {env}: {e}"))
}

#[test]
fn defect_4_a_heal_touches_only_its_own_environment() {
    let s = spawn_server(&four_envs(""));
    let digest = s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    let refused = s.refused(&["drift", "web", "--env", "development", "--heal"]);
    assert!(refused.contains("has not drifted"), "{refused}");

    // Both environments run from the one release directory of that digest; change a file in it.
    let dir = s
        .data_dir()
        .join("releases")
        .join(digest.trim_start_matches("sha256:"));
    let original = std::fs::read_to_string(dir.join("server.py")).unwrap();
    for path in [dir.clone(), dir.join("server.py")] {
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        perm.set_mode(perm.mode() | 0o200);
        std::fs::set_permissions(&path, perm).unwrap();
    }
    std::fs::write(dir.join("server.py"), format!("{original}\n# by hand\n")).unwrap();
    let testing_pid = live_pid(&s, "testing");

    s.ok(&["drift", "web", "--env", "development", "--heal"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("server.py")).unwrap(),
        original
    );
    let after = s.cli(&["drift", "web"]);
    assert_eq!(
        after.status.code(),
        Some(0),
        "nothing drifted: {}",
        text(&after)
    );
    assert_eq!(
        live_pid(&s, "testing"),
        testing_pid,
        "testing was not redeployed"
    );
    assert_eq!(s.version("testing").as_deref(), Some("1.0.0"));
    assert_eq!(s.latest("testing")["kind"], "promote");
}

#[test]
fn defect_9_the_api_answers_at_once_while_a_slow_instance_starts() {
    // The server's own data plane, so that a restart starts the live release again (a local
    // agent would still run it, and nothing would be starting).
    let mut s = spawn_server(&four_envs("data_plane = \"server\""));
    let gate = s.app_data("development").join("let-it-listen");
    std::fs::create_dir_all(gate.parent().unwrap()).unwrap();
    std::fs::write(&gate, "").unwrap();
    s.register("1.0.0", &[("SLOW", "let-it-listen")]);
    s.walk("1.0.0", "development");
    assert!(s.terminate().success());

    std::fs::remove_file(&gate).unwrap();
    s.restart_answering();
    // The API answers while development's instance is still held before listening.
    let status = s.json(&["status", "web"]);
    assert!(
        crate::helpers::env_status(&status, "development")["live"]["version"] == "1.0.0",
        "{status}"
    );
    let reply = s.get(&format!("{}/", s.url("development"))).unwrap();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("starting web@1.0.0"), "{reply:?}");

    assert!(s.restoring(), "the health check says it is restoring");
    std::fs::write(&gate, "").unwrap();
    wait_for("development to serve 1.0.0 again", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
    wait_for("the restore to end", || !s.restoring());
}

#[test]
fn defect_5_secret_values_are_replaced_before_they_are_stored_or_shown() {
    const SECRET: &str = "hunter2-in-staging";
    let config = four_envs_with(
        "",
        &[(
            "staging",
            "vars = { DB_PASSWORD = \"hunter2-in-staging\" }\nverify.tests = [\"printenv DB_PASSWORD\"]",
        )],
    )
    .replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\nfacts = { pw = \"printenv DB_PASSWORD\" }\n",
    )
    .replace(
        "run = \"python3 server.py",
        "run = \"echo connecting with $DB_PASSWORD; exec python3 server.py",
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");

    // The app printed it into its own log; `shipgate logs` does not show it.
    let logs = s.ok(&["logs", "web", "--env", "staging"]);
    assert!(
        logs.contains("connecting with [secret DB_PASSWORD]"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");

    let history = s.ok(&["history", "web", "--env", "staging", "--output", "json"]);
    assert!(!history.contains(SECRET), "{history}");
    assert!(history.contains("[secret DB_PASSWORD]"), "{history}");
    let diff = s.cli(&["diff", "web", "staging", "testing"]);
    assert!(!text(&diff).contains(SECRET), "{}", text(&diff));
    let viewer = s.token("viewer", "viewer", &[]);
    let page = crate::helpers::http_get(
        &format!("{}/api/v1/history?app=web", s.api()),
        Some(&viewer),
    )
    .unwrap();
    assert!(!page.body.contains(SECRET), "{}", page.body);
    for file in ["shipgate.db", "shipgate.db-wal"] {
        let bytes = std::fs::read(s.data_dir().join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the secret is stored in {file}"
        );
    }
}

#[test]
fn a_json_body_with_another_content_type_gets_415_as_problem_json() {
    use std::io::{Read, Write};
    let s = spawn_server(&four_envs(""));
    let token = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let host = s.api().trim_start_matches("http://").to_owned();
    let body = r#"{"name":"ci","role":"viewer"}"#;
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    write!(
        stream,
        "POST /api/v1/tokens HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 415"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains("Content-Type: application/json"),
        "{answer}"
    );
    let tokens = s.json(&["token", "list"]);
    assert_eq!(
        tokens.as_array().unwrap().len(),
        1,
        "nothing created: {tokens}"
    );
}

#[test]
fn a_refused_command_prints_its_problem_json_on_stdout_with_output_json() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    let out = s.cli(&[
        "promote",
        "web@1.0.0",
        "--to",
        "testing",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let problem: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out)));
    assert_eq!(problem["status"], 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("is not verified in development yet"),
        "{problem}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: "),
        "{}",
        text(&out)
    );
}

#[test]
fn a_server_on_a_full_disk_says_the_disk_is_full() {
    if !crate::helpers::root_or_skip("hardening::full_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n[apps.web]\nrun = \"x ${{PORT}}\"\n\n[environments.development]\nlisten = \"127.0.0.1:{}\"\n",
        crate::helpers::free_port(),
        disk.join("data").display(),
        crate::helpers::free_port()
    );
    std::fs::write(dir.path().join("shipgate.toml"), config).unwrap();
    let _ = std::fs::write(disk.join("filler"), vec![0u8; 8 << 20]);
    let out = crate::helpers::command(dir.path())
        .arg("server")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = crate::helpers::text(&out);
    assert!(
        said.contains("is full") && said.contains("free some space there"),
        "{said}"
    );
    assert!(!said.contains("engine's lease"), "{said}");
}
