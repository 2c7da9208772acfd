//! `data_plane = "agent"`: the instances and routers run in a local agent process that the
//! server starts and that outlives it. Killing the server with -9, or stopping it, and starting
//! it again drops no request, restarts no instance and keeps the warm standby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::helpers::{env_status, four_envs, load, spawn_server, text, wait_for};

#[test]
fn the_agent_keeps_serving_through_a_server_kill_9_and_restart_with_its_standby() {
    let mut s = spawn_server(&four_envs("data_plane = \"agent\""));
    let agent = s.agent_pid().expect("the server started a local agent");
    s.register("1.0.0", &[]);
    s.register("1.1.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    s.ok(&["promote", "web@1.1.0", "--to", "development", "--wait"]);
    let before = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(before["standby"]["version"], "1.0.0", "{before}");
    // The server's own machine is a host, served by its local agent (live and standby).
    wait_for("host list to count both instances", || {
        s.json(&["host", "list"])[0]["instances"] == 2
    });
    let hosts = s.json(&["host", "list"]);
    assert_eq!(hosts[0]["name"], "local", "{hosts}");
    assert_eq!(hosts[0]["data_plane"], "agent", "{hosts}");
    assert_eq!(hosts[0]["connected"], true, "{hosts}");
    assert_eq!(hosts[0]["pid"], agent, "{hosts}");
    let table = s.ok(&["host", "list"]);
    assert!(table.contains("connected since"), "{table}");

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(
        format!("{}/version", s.url("development")),
        Arc::clone(&stop),
    );
    thread::sleep(Duration::from_millis(300));
    s.kill9();
    // The server is gone; its environment still answers.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));
    s.restart();
    thread::sleep(Duration::from_millis(300));
    // A polite stop leaves the data plane serving too.
    assert!(s.terminate().success());
    thread::sleep(Duration::from_millis(300));
    s.restart();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = traffic.join().unwrap();
    eprintln!(
        "agent: {answered} requests answered through a kill -9, a SIGTERM and two restarts, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert!(answered > 100, "the load ran: {answered}");

    assert_eq!(s.agent_pid(), Some(agent), "the same agent serves");
    let after = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(
        after["instance"]["pid"], before["instance"]["pid"],
        "the live instance was not restarted: {after}"
    );
    assert_eq!(
        after["standby"]["instance_id"], before["standby"]["instance_id"],
        "the warm standby is kept: {after}"
    );
    // A rollback after the restarts is still a switch to the standby.
    s.ok(&["rollback", "web", "--env", "development", "--wait"]);
    let rollback = s.latest("development");
    let gate = rollback["gates"][0]["output"].as_str().unwrap_or_default();
    assert!(
        gate.starts_with("switched traffic back to standby instance"),
        "{rollback}"
    );
    wait_for("1.0.0 to answer", || {
        s.version("development").as_deref() == Some("1.0.0")
    });

    // A restart on a config without `production` closes its router in the agent.
    let production = s.url("production").trim_start_matches("http://").to_owned();
    assert!(std::net::TcpStream::connect(&production).is_ok());
    let start = s.config_text().find("\n[environments.production]").unwrap();
    let without = s.config_text()[..start].to_owned() + "\n";
    assert!(s.terminate().success());
    s.rewrite_config(&without);
    s.restart();
    assert!(
        std::net::TcpStream::connect(&production).is_err(),
        "the router of production is closed"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));

    // `shipgate agent --stop` stops it, and with it the environments' addresses and instances.
    let stopped = s.cli(&["agent", "--stop"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", text(&stopped));
    assert!(
        text(&stopped).contains("the agent stopped"),
        "{}",
        text(&stopped)
    );
    assert_eq!(s.agent_pid(), None);
    assert_eq!(s.version("development"), None, "nothing serves any more");
    assert_eq!(s.instance_processes(), [], "its instances were stopped");
}

#[test]
fn a_killed_agent_is_replaced_by_one_that_adopts_what_runs_and_no_request_fails() {
    let s = spawn_server(&four_envs("data_plane = \"agent\""));
    for version in ["1.0.0", "1.1.0"] {
        s.register(version, &[]);
        s.ok(&[
            "promote",
            &format!("web@{version}"),
            "--to",
            "development",
            "--wait",
        ]);
    }
    let before = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(before["standby"]["version"], "1.0.0", "{before}");
    let old_agent = s.agent_pid().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = crate::helpers::load(
        format!("{}/version", s.url("development")),
        std::sync::Arc::clone(&stop),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new agent", || {
        s.agent_pid().is_some_and(|pid| pid != old_agent)
    });
    wait_for("the new agent to be given the live releases", || {
        !s.restoring() && s.log().contains("the local agent is a new one")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Connections made while no agent ran waited in the sockets the server kept; only a
    // request the killed agent was answering at that instant can be lost.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, failed) = traffic.join().unwrap();
    eprintln!(
        "agent: {answered} requests answered through a kill -9 of the agent and its replacement, {} failed",
        failed.len()
    );
    assert!(answered > 50, "the load ran ({answered})");
    assert!(failed.len() <= 1, "{failed:?}");
    // The same instances: the live one and the warm standby, with their pids.
    let after = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(
        after["instance"]["pid"], before["instance"]["pid"],
        "{after}"
    );
    assert_eq!(
        after["standby"]["instance_id"], before["standby"]["instance_id"],
        "{after}"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));
    // A rollback is still a switch to the standby.
    let rollback = s.json(&["rollback", "web", "--env", "development"]);
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let said = s.log();
    assert!(said.contains("starting it again"), "{said}");
    let agent_log = std::fs::read_to_string(s.data_dir().join("agent.log")).unwrap_or_default();
    assert!(
        agent_log.contains("adopted a running instance"),
        "{agent_log}"
    );
    assert!(agent_log.contains("took over"), "{agent_log}");
}

/// One raw HTTP/1.1 POST to the agent's socket, with a command id; returns (status, body).
fn post_command(socket: &std::path::Path, path: &str, command: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nx-shipgate-command: {command}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn a_command_asked_twice_runs_once() {
    let s = spawn_server(&four_envs("data_plane = \"agent\"\nisolation = \"none\""));
    let socket = s.data_dir().join("agent.sock");
    let dir = s.dir.path().join("cmd");
    std::fs::create_dir_all(&dir).unwrap();
    let start = |id: &str| {
        serde_json::json!({
            "instance_id": id,
            "release_dir": dir,
            "command": "exec python3 -m http.server ${PORT} --bind 127.0.0.1",
            "template_vars": {},
            "env": {},
            "health_path": "/",
            "health_timeout": { "secs": 20, "nanos": 0 },
            "log_path": dir.join(format!("{id}.log")),
            "port": null,
            "crash_loop": { "crashes": 5, "within": { "secs": 60, "nanos": 0 } },
            "sandbox": null
        })
        .to_string()
    };
    let (status, first) = post_command(&socket, "/v1/start", "cmd-1", &start("web-cmd-1"));
    assert_eq!(status, 200, "{first}");
    // The same command id again, even with another body: the first answer, nothing started.
    let (status, again) = post_command(&socket, "/v1/start", "cmd-1", &start("web-cmd-2"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    let (_, hello) = post_command(&socket, "/v1/hello", "hello-1", "null");
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let ids: Vec<&str> = hello["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.as_str())
        .filter(|i| i.starts_with("web-cmd-"))
        .collect();
    assert_eq!(ids, vec!["web-cmd-1"], "{hello}");
    // A new id is a new command.
    let stop = serde_json::json!({ "instance_id": "web-cmd-1", "pid": null, "grace": { "secs": 5, "nanos": 0 } });
    let (status, body) = post_command(&socket, "/v1/stop", "cmd-2", &stop.to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn what_a_killed_agent_left_and_nobody_adopts_goes_with_its_cgroup() {
    if !crate::helpers::root_or_skip("agent::orphan_cgroups") {
        return;
    }
    let s = spawn_server(&crate::helpers::four_envs_with(
        "data_plane = \"agent\"\nisolation = \"sandbox\"",
        &[("development", "limits = { memory = \"256MiB\" }")],
    ));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    let before = env_status(&s.json(&["status", "web"]), "development");
    let id = before["instance"]["id"].as_str().unwrap().to_owned();
    let hierarchy = shipgate_deploy::cgroup::Hierarchy::detect().unwrap();
    let cgroup = match &hierarchy {
        shipgate_deploy::cgroup::Hierarchy::V2(root) => root.join("shipgate").join(&id),
        shipgate_deploy::cgroup::Hierarchy::V1(root) => root.join("memory/shipgate").join(&id),
    };
    assert!(cgroup.exists(), "{}", cgroup.display());
    // Without what it kept, the next agent adopts nothing: it stops what the dead one left.
    std::fs::remove_file(s.data_dir().join("agent-state.json")).unwrap();
    let old_agent = s.agent_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the orphan's cgroup to be removed", || !cgroup.exists());
    wait_for("development to serve again", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
}
