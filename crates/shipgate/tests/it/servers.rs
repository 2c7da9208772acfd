//! Several servers on one PostgreSQL database (a cluster the test starts with initdb/pg_ctl):
//! one leads and runs the engine, the others stand by and take over when its lease ends; a
//! leader that lost its lease has none of its writes accepted.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::helpers::{
    TestServer, free_port, http_get, postgres_database, spawn_server, spawn_standby, text, wait_for,
};

/// The config of one server of `database`: its own API port and environment port (servers on
/// one machine without hosts each serve the environment on an address of their own).
fn server_config(database: &str, lease: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\ndatabase = \"{database}\"\nlease = \"{lease}\"\ndata_plane = \"server\"\nisolation = \"none\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.development]\nlisten = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port()
    )
}

/// Runs the CLI of `s` against every server of `servers`, whichever leads.
fn cli_any(s: &TestServer, servers: &str, token: &str, args: &[&str]) -> std::process::Output {
    s.cli(&[&["--server", servers, "--token", token], args].concat())
}

/// [`cli_any`] on a thread of its own, for a command that waits while the test goes on.
fn cli_any_meanwhile(
    s: &TestServer,
    servers: &str,
    token: &str,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let mut command = crate::helpers::command(s.dir.path());
    command
        .args(["--server", servers, "--token", token])
        .args(args);
    std::thread::spawn(move || command.output().unwrap())
}

fn json_any(s: &TestServer, servers: &str, token: &str, args: &[&str]) -> Value {
    let out = cli_any(s, servers, token, &[&["--output", "json"], args].concat());
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn admin_token(s: &TestServer) -> String {
    std::fs::read_to_string(s.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The events of promotion `id`, oldest first.
fn events_of(s: &TestServer, servers: &str, token: &str, id: i64) -> Vec<Value> {
    let all = json_any(s, servers, token, &["audit", "--limit", "1000"]);
    let mut events: Vec<Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["promotion_id"] == id)
        .cloned()
        .collect();
    events.sort_by_key(|e| e["id"].as_i64());
    events
}

#[test]
fn a_leader_paused_past_its_lease_has_none_of_its_writes_accepted() {
    let database = postgres_database("fencing");
    let mut a = spawn_server(&server_config(&database, "2s"));
    let b = spawn_standby(&server_config(&database, "2s"));
    let health = http_get(&format!("{}/healthz", b.api()), None).unwrap();
    assert!(
        health.body.contains(&format!("{} leads since", a.api())),
        "the standby names the leader: {}",
        health.body
    );
    let servers = format!("{},{}", a.api(), b.api());
    let token = admin_token(&a);

    // The standby serves the dashboard too, passing it on to the leader.
    let cookie = crate::dashboard::sign_in(&b, &token);
    let (code, _, page) = crate::dashboard::raw(&b, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("development"), "{page}");

    // `status` through either says which server leads, and since when.
    let status = text(&cli_any(&a, &b.api(), &token, &["status"]));
    assert!(
        status.starts_with("leader: ") && status.contains(&format!("at {} since", a.api())),
        "{status}"
    );

    // A deploy held midway: its instance listens only once the gate file exists.
    a.register("1.0.0", &[("SLOW", "open-gate")]);
    let asked = json_any(
        &a,
        &servers,
        &token,
        &["promote", "web@1.0.0", "--to", "development"],
    );
    let id = asked["id"].as_i64().unwrap();
    wait_for("the promotion to deploy", || {
        json_any(
            &a,
            &servers,
            &token,
            &["history", "web", "--env", "development"],
        )[0]["state"]
            == "deploying"
    });

    kill(Pid::from_raw(a.pid() as i32), Signal::SIGSTOP).unwrap();
    let paused = Instant::now();
    wait_for("the standby to take over", || {
        http_get(&format!("{}/healthz", b.api()), None).is_some_and(|r| r.status == 200)
    });
    eprintln!(
        "fencing: the standby led {:?} after the leader paused",
        paused.elapsed()
    );
    let b_token = admin_token(&b);
    wait_for("the new leader to end the interrupted promotion", || {
        json_any(
            &b,
            &b.api(),
            &b_token,
            &["history", "web", "--env", "development"],
        )[0]["state"]
            == "failed"
    });
    let ended = events_of(&b, &b.api(), &b_token, id);

    // The old leader wakes up believing it leads; its deploy can now go on.
    std::fs::create_dir_all(a.app_data("development")).unwrap();
    std::fs::write(a.app_data("development").join("open-gate"), "").unwrap();
    // And a write is waiting for it on its own address, sent before it wakes.
    let late_write = cli_any_meanwhile(
        &a,
        &a.api(),
        &token,
        &["freeze", "--env", "development", "--reason", "written late"],
    );
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(a.pid() as i32), Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = a.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not stop:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "it stops with an error: {status}");
    let log = a.log();
    assert!(log.contains("lost the engine's lease"), "{log}");

    let late = late_write.join().unwrap();
    assert!(
        !late.status.success(),
        "the late write was refused: {}",
        text(&late)
    );
    eprintln!("fencing: the late write got: {}", text(&late).trim());

    // Nothing it tried after waking up was recorded: no freeze, the promotion ends as the new
    // leader ended it, and the chain holds.
    let status = json_any(&b, &b.api(), &b_token, &["status"]);
    assert!(
        !status.to_string().contains("written late"),
        "the late freeze was not recorded: {status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events_of(&b, &b.api(), &b_token, id), ended);
    let last = ended.last().unwrap();
    assert_eq!(last["kind"], "promotion.failed", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("the server stopped while this promotion was deploying"),
        "{last}"
    );
    let leading: Vec<Value> = json_any(&b, &b.api(), &b_token, &["audit", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "server.leading")
        .cloned()
        .collect();
    assert_eq!(
        leading.len(),
        2,
        "each lease taken is in the audit log: {leading:?}"
    );
    let verified = b.cli_as(&b_token, &["audit", "--verify"]);
    assert!(verified.status.success(), "{}", text(&verified));

    // A standby asked to stop stops at once, and cleanly: it never ran anything.
    let mut c = spawn_standby(&server_config(&database, "2s"));
    let stopped = c.terminate();
    assert!(stopped.success(), "{stopped}:\n{}", c.log());
}

/// Every instance id in a host agent's own record of the starts it was asked for, with how
/// many times each was asked.
fn starts_recorded(agent_dir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    let text = std::fs::read_to_string(agent_dir.join("starts.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let start: Value = serde_json::from_str(line).unwrap();
        *seen
            .entry(start["instance_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    seen
}

#[test]
fn the_standby_takes_over_a_deploy_from_a_leader_killed_9_while_the_hosts_keep_serving() {
    if !crate::helpers::root_or_skip("servers") {
        return;
    }
    let hosts = crate::netns::Hosts::make(2);
    let database = postgres_database("failover");
    let port = free_port();
    let config = || {
        format!(
            "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\ndatabase = \"{database}\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.staging]\nlisten = \"0.0.0.0:{port}\"\nhosts = [\"web-1\", \"web-2\"]\n",
            hosts.root_addr,
            free_port()
        )
    };
    let mut a = spawn_server(&config());
    let b = spawn_standby(&config());
    let servers = format!("{},{}", a.api(), b.api());
    let agents = crate::fleet::Agents::join_servers(&hosts, &a, &servers);

    // A release registered and promoted through the standby: it passes both on to the
    // leader, and `--wait` waits there too.
    let token = admin_token(&a);
    let dir = a.app_release("1.0.0", &[]);
    json_any(
        &a,
        &b.api(),
        &token,
        &[
            "release",
            "create",
            "web",
            "--version",
            "1.0.0",
            "--artifact",
            dir.to_str().unwrap(),
        ],
    );
    let waited = cli_any(
        &a,
        &b.api(),
        &token,
        &["promote", "web@1.0.0", "--to", "staging", "--wait"],
    );
    assert!(waited.status.success(), "{}", text(&waited));
    assert!(text(&waited).contains("succeeded"), "{}", text(&waited));
    let urls: Vec<String> = hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("http://{addr}:{port}/version")
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = urls
        .iter()
        .map(|u| crate::helpers::load(u.clone(), std::sync::Arc::clone(&stop)))
        .collect();

    // 1.1.0 is held midway through its deploy when the leader dies.
    // Asked with --wait through every server: the command rides out the failover.
    a.register("1.1.0", &[("SLOW", "never")]);
    let waiting = cli_any_meanwhile(
        &a,
        &servers,
        &token,
        &["promote", "web@1.1.0", "--to", "staging", "--wait"],
    );
    wait_for("1.1.0 to deploy", || {
        a.latest("staging")["state"] == "deploying"
    });
    let id = a.latest("staging")["id"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.kill9();
    let killed = Instant::now();
    wait_for("the standby to take over", || {
        http_get(&format!("{}/healthz", b.api()), None).is_some_and(|r| r.status == 200)
    });
    let took_over = killed.elapsed();
    eprintln!("failover: the standby leads {took_over:?} after the leader's kill -9");
    assert!(took_over < Duration::from_secs(10), "{took_over:?}");

    // It ends the promotion it found deploying, with a reason, and the hosts dial it.
    let b_token = admin_token(&b);
    wait_for("the promotion to end", || {
        let last = b.latest("staging");
        last["id"] == id && last["state"] == "failed"
    });
    eprintln!(
        "failover: the promotion that was deploying ended {:?} after the kill",
        killed.elapsed()
    );
    let last = b.latest("staging");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the server stopped while this promotion was deploying")),
        "{last}"
    );
    let waited = waiting.join().unwrap();
    assert!(
        !waited.status.success()
            && text(&waited).contains("the server stopped while this promotion was deploying"),
        "--wait saw the promotion end through the failover: {}",
        text(&waited)
    );
    agents.wait_connected(&b, &[1, 2]);
    std::thread::sleep(Duration::from_millis(500));
    for (n, t) in traffic.into_iter().enumerate() {
        if n == 0 {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        crate::helpers::load_ended_without_failures(
            &stop,
            t,
            &format!("failover: host {} through the leader's kill -9", n + 1),
        );
    }
    let versions: Vec<Option<String>> = urls
        .iter()
        .map(|u| http_get(u, None).map(|r| r.body.trim().to_owned()))
        .collect();
    assert_eq!(versions, vec![Some("1.0.0".to_owned()); 2]);

    // Each agent was asked once per instance, by whichever server led.
    for dir in &agents.dirs {
        let starts = starts_recorded(dir);
        assert!(!starts.is_empty(), "{} records its starts", dir.display());
        eprintln!("failover: {} was asked to start {starts:?}", dir.display());
        let twice: Vec<_> = starts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "started more than once: {twice:?}");
    }
    let verified = b.cli_as(&b_token, &["audit", "--verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    drop(agents);
}

#[test]
fn store_copy_moves_a_sqlite_store_to_postgres_and_the_server_goes_on_there() {
    let mut s = spawn_server(&crate::helpers::four_envs(""));
    s.register("1.0.0", &[]);
    s.deploy("1.0.0", "development");
    let history = s.json(&["history", "web"]);
    let ca = std::fs::read_to_string(s.data_dir().join("ca.crt")).unwrap();
    let database = postgres_database("copy_cli");
    let copy = |s: &TestServer| {
        s.cli(&[
            "store",
            "copy",
            "--from",
            "sqlite://data/shipgate.db",
            "--to",
            &database,
        ])
    };
    let running = copy(&s);
    assert!(
        !running.status.success() && text(&running).contains("stop it first"),
        "a running server's store is not copied: {}",
        text(&running)
    );
    s.terminate();

    let copied = copy(&s);
    assert!(copied.status.success(), "{}", text(&copied));
    let said = text(&copied);
    assert!(
        said.contains("releases 1, promotions 1")
            && said.contains("artifacts: 1")
            && said.contains("verified on the target")
            && said.contains("agents' CA: kept"),
        "{said}"
    );
    let again = copy(&s);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("the target is not empty"),
        "{}",
        text(&again)
    );

    // The same server on PostgreSQL: everything is there, and the chain goes on.
    let on_postgres = s.config_text().replace(
        "data_dir = \"data\"\n",
        &format!("data_dir = \"data\"\ndatabase = \"{database}\"\n"),
    );
    s.rewrite_config(&on_postgres);
    std::fs::rename(
        s.data_dir().join("shipgate.db"),
        s.data_dir().join("old.db"),
    )
    .unwrap();
    s.restart();
    assert_eq!(s.json(&["history", "web"]), history);
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    s.register("1.1.0", &[]);
    s.deploy("1.1.0", "development");
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));
    let verified = s.cli(&["audit", "--verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert_eq!(
        std::fs::read_to_string(s.data_dir().join("ca.crt")).unwrap(),
        ca
    );
}

#[test]
fn a_leader_that_stops_cleanly_hands_its_lease_over_at_once() {
    // A lease longer than the test waits (40 s against 30): only a lease handed back lets B
    // lead in time (it looks every quarter of the lease).
    let database = postgres_database("handover");
    let mut a = spawn_server(&server_config(&database, "40s"));
    let b = spawn_standby(&server_config(&database, "40s"));
    let stopped = a.terminate();
    assert!(stopped.success(), "{stopped}:\n{}", a.log());
    wait_for("the standby to take the lease handed back", || {
        http_get(&format!("{}/healthz", b.api()), None).is_some_and(|r| r.status == 200)
    });
}
