//! A data plane on a host of its own: the agent runs in a network namespace the test makes (its
//! own address on a bridge, see netns.rs), and the environment's router listens on that host's
//! address. The server, in the root namespace, drives the agent through its socket; load comes
//! from the root namespace over the bridge, through a kill -9 and a restart of the server.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::{Duration, Instant};

use crate::helpers::{BIN, env_status, free_port, http_get, root_or_skip, spawn_server_after};
use crate::netns::Hosts;

#[test]
fn an_agent_on_a_host_of_its_own_keeps_serving_its_address_through_a_server_kill_9() {
    if !root_or_skip("hosts") {
        return;
    }
    let hosts = Hosts::make(1);
    let (_, host_addr) = hosts.hosts[0].clone();
    let listen = format!("{host_addr}:{}", free_port());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n[apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n[environments.development]\nlisten = \"{listen}\"\n",
        free_port()
    );
    let mut agent = None;
    let mut s = spawn_server_after(&config, |dir: &Path| {
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("host-agent.log")).unwrap();
        agent = Some(
            hosts
                .command_in(1, Path::new(BIN))
                .args(["agent", "--data-dir"])
                .arg(&data)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !data.join("agent.sock").exists() {
            assert!(Instant::now() < deadline, "the host's agent did not start");
            thread::sleep(Duration::from_millis(25));
        }
    });
    let mut agent = agent.unwrap();
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    let before = env_status(&s.json(&["status", "web"]), "development");

    hosts.assert_routed(&host_addr);
    let url = format!("http://{listen}/version");
    assert_eq!(
        http_get(&url, None)
            .map(|r| r.body.trim().to_owned())
            .as_deref(),
        Some("1.0.0")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = crate::helpers::load(url.clone(), Arc::clone(&stop));
    thread::sleep(Duration::from_millis(300));
    s.kill9();
    thread::sleep(Duration::from_millis(500));
    s.restart();
    thread::sleep(Duration::from_millis(300));
    crate::helpers::load_ended_without_failures(
        &stop,
        traffic,
        &format!("hosts: to {listen} over the bridge through a server kill -9 and restart"),
    );
    let after = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(
        after["instance"]["pid"], before["instance"]["pid"],
        "{after}"
    );

    // The address is the host's: nothing listens on it in the root namespace.
    assert!(
        std::net::TcpListener::bind((
            "127.0.0.1",
            listen.rsplit(':').next().unwrap().parse::<u16>().unwrap()
        ))
        .is_ok(),
        "the router's port is free on the root namespace's loopback"
    );
    let stopped = s.cli(&["agent", "--stop"]);
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "{}",
        crate::helpers::text(&stopped)
    );
    let _ = agent.wait();
}
