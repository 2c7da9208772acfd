//! A server restarted while one host of an environment is away, with `hosts_required` left at
//! every host. Each host is a network namespace the test makes (netns.rs) running its own
//! `shipgate agent`, joined as fleet.rs joins them; the server runs in the root namespace. The
//! host that answers keeps serving the live release through the kill -9 and the restart (the
//! restarted server adopts it, the same process), `status` names the host that is away, and
//! that host serves the live release too once it is back.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::fleet::Agents;
use crate::helpers::{
    env_status, free_port, http_get, load, load_ended_without_failures, root_or_skip, spawn_server,
    wait_for,
};
use crate::netns::Hosts;

/// Production on web-1 and web-2, every host required (the default).
fn config(hosts: &Hosts, port: u16) -> String {
    format!(
        "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n\
         [environments.production]\nlisten = \"0.0.0.0:{port}\"\nhosts = [\"web-1\", \"web-2\"]\n",
        hosts.root_addr,
        free_port()
    )
}

/// What `url` answers with 200, if it does.
fn version(url: &str) -> Option<String> {
    http_get(url, None)
        .filter(|r| r.status == 200)
        .map(|r| r.body.trim().to_owned())
}

/// Production's live instance as `status --output json` shows it.
fn instance(s: &crate::helpers::TestServer) -> Value {
    env_status(&s.json(&["status", "web"]), "production")["instance"].clone()
}

/// The pid of the live instance on host `name`, from `status`.
fn pid_on(instance: &Value, name: &str) -> Option<u64> {
    instance["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["host"] == name)
        .and_then(|h| h["pid"].as_u64())
}

#[test]
fn a_server_restarted_while_a_host_is_away_keeps_serving_on_the_others_and_gives_it_back() {
    if !root_or_skip("fleet_restart") {
        return;
    }
    let hosts = Hosts::make(2);
    let port = free_port();
    let mut s = spawn_server(&config(&hosts, port));
    let agents = Agents::join_servers(&hosts, &s, &s.api());
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let urls: Vec<String> = hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("http://{addr}:{port}/version")
        })
        .collect();
    for url in &urls {
        assert_eq!(version(url).as_deref(), Some("1.0.0"), "{url}");
    }
    let before = instance(&s);
    let pids: Vec<Option<u64>> = ["web-1", "web-2"]
        .iter()
        .map(|h| pid_on(&before, h))
        .collect();
    assert!(pids.iter().all(Option::is_some), "{before}");

    // web-2 is cut off, then the server is killed and started again without it: web-1's
    // router answers every request meanwhile, from the same web@1.0.0.
    hosts.set_link(2, false);
    hosts.assert_routed(&hosts.hosts[0].1);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(urls[0].clone(), Arc::clone(&stop));
    s.kill9();
    // (It is back once production is restored, after waiting for web-2 in vain.)
    s.restart();
    // Requests after the restore too: nothing it does later stops web-1's instance.
    thread::sleep(Duration::from_millis(500));
    let answered = load_ended_without_failures(
        &stop,
        traffic,
        "fleet_restart: web-1's router through a server kill -9 and restart with web-2 away",
    );
    eprintln!("fleet_restart: {answered} answers from web-1, none failed");
    assert_eq!(version(&urls[0]).as_deref(), Some("1.0.0"));

    // The restarted server adopted web-1's instance as the live one, and says what it does
    // about web-2.
    let after = instance(&s);
    assert_eq!(after["healthy"], true, "{after}");
    assert_eq!(
        pid_on(&after, "web-1"),
        pids[0],
        "web-1's instance was adopted, not started again: {after}\n{}",
        s.log()
    );
    assert_eq!(
        after["unreachable"],
        serde_json::json!(["web-2"]),
        "{after}"
    );
    let table = s.ok(&["status", "web"]);
    assert!(
        table.contains("web-2 UNREACHABLE (it is given web@1.0.0 when it connects again)"),
        "{table}"
    );
    assert!(
        s.messages_of("environment.unavailable").is_empty(),
        "{:?}",
        s.messages_of("environment.unavailable")
    );
    assert!(
        !s.log().contains("could not restore what was live"),
        "{}",
        s.log()
    );

    // web-2 back: it serves web@1.0.0 too, the instance it kept, and status shows both hosts.
    hosts.set_link(2, true);
    agents.wait_connected(&s, &[2]);
    hosts.assert_routed(&hosts.hosts[1].1);
    wait_for("web-2 to serve web@1.0.0", || {
        version(&urls[1]).as_deref() == Some("1.0.0")
    });
    wait_for("status to show web@1.0.0 on both hosts", || {
        let now = instance(&s);
        now["unreachable"] == serde_json::json!([])
            && now["hosts"].as_array().map(Vec::len) == Some(2)
    });
    let back = instance(&s);
    assert_eq!(
        (pid_on(&back, "web-1"), pid_on(&back, "web-2")),
        (pids[0], pids[1]),
        "{back}"
    );
    assert_eq!(back["healthy"], true, "{back}");

    // The environment is whole again: the next promotion switches both hosts.
    s.register("2.0.0", &[]);
    s.ok(&["promote", "web@2.0.0", "--to", "production", "--wait"]);
    for url in &urls {
        assert_eq!(version(url).as_deref(), Some("2.0.0"), "{url}");
    }
    drop(agents);
}
