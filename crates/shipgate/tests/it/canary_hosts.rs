//! A canary on an environment placed on two hosts. Each host is a network namespace the test
//! makes (netns.rs) running its own `shipgate agent`, joined as fleet.rs joins them; the server
//! runs in the root namespace. At every step the test asks each host's router directly (not a
//! front) with the same 200 pinned clients: both hosts send the same clients to the canary, the
//! share the step's weight gives them; after an abort neither host sends anyone there. And
//! through a server kill -9 both routers keep the split; the restarted server ends it on the
//! host that answers and, once it is back, on the host that was cut off meanwhile.

use serde_json::Value;
use shipgate_core::canary::to_canary;

use crate::fleet::Agents;
use crate::helpers::{TestServer, free_port, raw_http, root_or_skip, spawn_server, wait_for};
use crate::netns::Hosts;

/// The pinned clients asked at each step (`shipgate-canary=user-0` … `user-199`).
pub(crate) const PINS: usize = 200;

/// Production's canary held at each step: a pause waits for a person, and a weight step
/// (judged after 1 s) always holds, for it never has a million requests.
const HELD_AT_EACH_STEP: &str =
    "steps = [\"pause\", \"30%\", \"pause\", \"60%\"]\nstep = \"1s\"\nmin_requests = 1000000";

/// Production on web-1 and web-2, with `extra` lines and `[environments.production.canary]` of
/// `canary`.
fn config(hosts: &Hosts, port: u16, canary: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n\
         [environments.production]\nlisten = \"0.0.0.0:{port}\"\nhosts = [\"web-1\", \"web-2\"]\n{extra}\n\n\
         [environments.production.canary]\n{canary}\n",
        hosts.root_addr,
        free_port()
    )
}

/// The version `addr` answers to `GET /version` with `headers` (each ending in CRLF).
pub(crate) fn version(addr: &str, headers: &str) -> String {
    let answer = raw_http(
        addr,
        &format!("GET /version HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"),
    );
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer from {addr}: {answer:?}"));
    assert!(
        head.split_whitespace().nth(1) == Some("200"),
        "{addr}: {answer}"
    );
    body.trim().to_owned()
}

/// The pins (0 … PINS-1) that the router at `addr` sends to web@2.0.0, the canary.
pub(crate) fn canary_pins(addr: &str) -> Vec<usize> {
    (0..PINS)
        .filter(|n| {
            match version(addr, &format!("Cookie: shipgate-canary=user-{n}\r\n")).as_str() {
                "2.0.0" => true,
                "1.0.0" => false,
                other => panic!("{addr} answered {other:?} to user-{n}"),
            }
        })
        .collect()
}

/// Asks every host's router with the same pins: they must send the same pins to the canary,
/// the ones `weight` gives them. Returns those pins.
fn same_split_on_every_host(hosts: &Hosts, addrs: &[String], weight: f64, at: &str) -> Vec<usize> {
    let expected: Vec<usize> = (0..PINS)
        .filter(|n| to_canary(weight, None, Some(&format!("user-{n}")), 0.0))
        .collect();
    let each: Vec<Vec<usize>> = addrs
        .iter()
        .zip(&hosts.hosts)
        .map(|(addr, (_, host))| {
            hosts.assert_routed(host);
            canary_pins(addr)
        })
        .collect();
    for (n, pins) in each.iter().enumerate() {
        assert_eq!(
            pins,
            &each[0],
            "{at}: web-{} sends other clients to the canary than web-1",
            n + 1
        );
    }
    assert_eq!(each[0], expected, "{at}: the pins {weight}% gives");
    let share = 100.0 * each[0].len() as f64 / PINS as f64;
    eprintln!(
        "{at}: {} of {PINS} pins ({share:.1}%) on the canary, on each of {} hosts",
        each[0].len(),
        addrs.len()
    );
    assert!(
        (share - weight).abs() <= 5.0,
        "{at}: {share:.1}% of the pins on the canary at {weight}%"
    );
    // A tester's header picks a side at any weight, on every host.
    for addr in addrs {
        assert_eq!(version(addr, "x-shipgate-canary: always\r\n"), "2.0.0");
        assert_eq!(version(addr, "x-shipgate-canary: never\r\n"), "1.0.0");
    }
    each[0].clone()
}

/// The rollout as `shipgate canary status --output json` shows it.
fn rollout(s: &TestServer) -> Value {
    s.json(&["canary", "status", "web", "--env", "production"])
}

/// Waits until the rollout is at `step` (1-based) in `state` (paused, held), at `weight`; its
/// `canary status` text.
fn wait_at(s: &TestServer, step: u64, state: &str, weight: f64) -> String {
    wait_for(&format!("the canary {state} at step {step}"), || {
        let latest = s.latest("production");
        assert_ne!(latest["state"], "failed", "the rollout ended: {latest}");
        latest["canary"]["step"] == step && latest["canary"]["state"] == state
    });
    let view = rollout(s);
    assert_eq!(view["weight"].as_f64(), Some(weight), "{view}");
    let text = s.ok(&["canary", "status", "web", "--env", "production"]);
    for said in [
        format!("step {step} of 4"),
        format!("at {weight}%"),
        "pause → 30% → pause → 60%".to_owned(),
    ] {
        assert!(text.contains(&said), "{said} in: {text}");
    }
    text
}

#[test]
fn two_hosts_apply_every_canary_step_together_and_the_abort_on_both() {
    if !root_or_skip("canary_hosts") {
        return;
    }
    let hosts = Hosts::make(2);
    let port = free_port();
    let s = spawn_server(&config(&hosts, port, HELD_AT_EACH_STEP, ""));
    let _agents = Agents::join_servers(&hosts, &s, &s.api());
    s.register("1.0.0", &[]);
    s.register("2.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let addrs: Vec<String> = hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("{addr}:{port}")
        })
        .collect();
    s.ok(&["promote", "web@2.0.0", "--to", "production"]);

    // Step 1, a pause before any weight: nobody but a tester meets the canary.
    wait_at(&s, 1, "paused", 0.0);
    assert_eq!(
        same_split_on_every_host(&hosts, &addrs, 0.0, "step 1 (pause at 0%)"),
        Vec::<usize>::new()
    );

    // Step 2, 30%: held once judged (too few requests), at its weight.
    s.ok(&["canary", "resume", "web", "--env", "production"]);
    wait_at(&s, 2, "held", 30.0);
    let at_30 = same_split_on_every_host(&hosts, &addrs, 30.0, "step 2 (30%)");

    // Step 3, a pause keeps 30%.
    s.ok(&["canary", "resume", "web", "--env", "production"]);
    wait_at(&s, 3, "paused", 30.0);
    assert_eq!(
        same_split_on_every_host(&hosts, &addrs, 30.0, "step 3 (pause at 30%)"),
        at_30
    );

    // Step 4, 60%: a client on the canary at 30% stays there.
    s.ok(&["canary", "resume", "web", "--env", "production"]);
    wait_at(&s, 4, "held", 60.0);
    let at_60 = same_split_on_every_host(&hosts, &addrs, 60.0, "step 4 (60%)");
    assert!(
        at_30.iter().all(|n| at_60.contains(n)),
        "a pinned client went back to the stable release: {at_30:?} then {at_60:?}"
    );
    // The step's figures are both hosts' together: each pin asked once on each host, and a
    // tester's `always` and `never` once on each.
    let view = rollout(&s);
    let (canary, stable) = (2 * (at_60.len() + 1), 2 * (PINS - at_60.len() + 1));
    assert_eq!(
        (
            view["canary_figures"]["requests"].as_u64(),
            view["stable_figures"]["requests"].as_u64()
        ),
        (Some(canary as u64), Some(stable as u64)),
        "{view}"
    );

    // Abort: no request reaches the canary on either host, a tester's included.
    let aborted = s.ok(&["canary", "abort", "web", "--env", "production"]);
    assert!(
        aborted.contains("aborted: web@2.0.0 takes no request"),
        "{aborted}"
    );
    for (addr, (_, host)) in addrs.iter().zip(&hosts.hosts) {
        hosts.assert_routed(host);
        assert_eq!(
            canary_pins(addr),
            Vec::<usize>::new(),
            "{addr} after the abort"
        );
        assert_eq!(
            version(addr, "x-shipgate-canary: always\r\n"),
            "1.0.0",
            "{addr}"
        );
    }
    let latest = s.latest("production");
    assert_eq!(latest["state"], "failed", "{latest}");
    let refused = s.refused(&["canary", "status", "web", "--env", "production"]);
    assert!(
        refused.contains("no canary of web is under way"),
        "{refused}"
    );
}

#[test]
fn two_hosts_keep_the_split_through_a_server_kill_9_and_the_restarted_server_ends_it_on_both() {
    if !root_or_skip("canary_hosts") {
        return;
    }
    let hosts = Hosts::make(2);
    let port = free_port();
    let mut s = spawn_server(&config(
        &hosts,
        port,
        "steps = [\"40%\"]\nstep = \"1h\"",
        "",
    ));
    let agents = Agents::join_servers(&hosts, &s, &s.api());
    s.register("1.0.0", &[]);
    s.register("2.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let addrs: Vec<String> = hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            format!("{addr}:{port}")
        })
        .collect();
    s.ok(&["promote", "web@2.0.0", "--to", "production"]);
    wait_for("the canary of web@2.0.0 at 40%", || {
        let latest = s.latest("production");
        assert_ne!(latest["state"], "failed", "the rollout ended: {latest}");
        latest["canary"]["step"] == 1 && latest["canary"]["weight"].as_f64() == Some(40.0)
    });
    let at_40 = same_split_on_every_host(&hosts, &addrs, 40.0, "40%");

    // The server is gone: both hosts' routers keep the split.
    s.kill9();
    assert_eq!(
        same_split_on_every_host(&hosts, &addrs, 40.0, "40%, the server killed"),
        at_40
    );

    // web-2 is cut off while the server starts again: the server ends the canary on web-1 …
    hosts.set_link(2, false);
    s.restart();
    let ended = s.latest("production");
    assert_eq!(
        (&ended["version"], &ended["state"]),
        (&serde_json::json!("2.0.0"), &serde_json::json!("failed")),
        "{ended}"
    );
    let reason = ended["reason"].as_str().unwrap();
    assert!(
        reason.contains("the server stopped during its canary")
            && reason.contains("ended the canary"),
        "{reason}"
    );
    assert_eq!(s.messages_of("canary.aborted").len(), 1);
    hosts.assert_routed(&hosts.hosts[0].1);
    assert_eq!(
        canary_pins(&addrs[0]),
        Vec::<usize>::new(),
        "web-1 after the restart"
    );
    assert_eq!(version(&addrs[0], "x-shipgate-canary: always\r\n"), "1.0.0");

    // … and on web-2 once it is back.
    hosts.set_link(2, true);
    agents.wait_connected(&s, &[2]);
    hosts.assert_routed(&hosts.hosts[1].1);
    wait_for("web-2 to end the canary", || {
        version(&addrs[1], "x-shipgate-canary: always\r\n") == "1.0.0"
    });
    assert_eq!(
        canary_pins(&addrs[1]),
        Vec::<usize>::new(),
        "web-2 once back"
    );
}
