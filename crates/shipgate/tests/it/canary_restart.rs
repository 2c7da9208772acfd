//! kill -9 of the server in the middle of a canary, with the local agent (the default data
//! plane): the agent's router keeps the split while the server is down, and the restarted
//! server ends the rollout and says so.

use crate::canary_hosts::{PINS, canary_pins, version};
use crate::helpers::{TestServer, env_status, free_port, processes_in, spawn_server, wait_for};

/// Production's router address, as `canary_hosts`' helpers take it.
fn production(s: &TestServer) -> String {
    s.url("production").trim_start_matches("http://").to_owned()
}

#[test]
fn a_server_killed_mid_canary_leaves_the_split_to_the_agent_and_ends_the_rollout_on_restart() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nrun = \"python3 server.py --port ${{PORT}}\"\nhealth = \"/healthz\"\n\n\
         [environments.production]\nlisten = \"127.0.0.1:{}\"\n\n\
         [environments.production.canary]\nsteps = [\"40%\"]\nstep = \"1h\"\n",
        free_port(),
        free_port()
    );
    let mut s = spawn_server(&config);
    s.register("1.0.0", &[]);
    let digest = s.register("2.0.0", &[]);
    let canary_release = s
        .data_dir()
        .join("releases")
        .join(digest.trim_start_matches("sha256:"));
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    s.ok(&["promote", "web@2.0.0", "--to", "production"]);
    wait_for("the canary of web@2.0.0 at 40%", || {
        let latest = s.latest("production");
        assert_ne!(latest["state"], "failed", "the rollout ended: {latest}");
        latest["canary"]["step"] == 1 && latest["canary"]["weight"].as_f64() == Some(40.0)
    });
    let expected: Vec<usize> = (0..PINS)
        .filter(|n| shipgate_core::canary::to_canary(40.0, None, Some(&format!("user-{n}")), 0.0))
        .collect();
    let before = canary_pins(&production(&s));
    assert_eq!(before, expected, "the pins 40% gives");
    eprintln!(
        "canary at 40%: {} of {PINS} pins on web@2.0.0",
        before.len()
    );
    assert!(!before.is_empty() && before.len() < PINS);
    assert!(
        !processes_in(&canary_release).is_empty(),
        "web@2.0.0's instance runs from {}",
        canary_release.display()
    );

    // The server is gone; the agent's router keeps the split, pins and testers' header alike.
    s.kill9();
    assert_eq!(
        canary_pins(&production(&s)),
        before,
        "while the server is down"
    );
    assert_eq!(
        version(&production(&s), "x-shipgate-canary: always\r\n"),
        "2.0.0"
    );
    assert_eq!(
        version(&production(&s), "x-shipgate-canary: never\r\n"),
        "1.0.0"
    );

    // The restarted server ends the rollout, and says which it did and why.
    s.restart();
    let ended = s.latest("production");
    assert_eq!(
        (&ended["version"], &ended["state"]),
        (&serde_json::json!("2.0.0"), &serde_json::json!("failed")),
        "{ended}"
    );
    let reason = ended["reason"].as_str().unwrap();
    for said in [
        "the server stopped during its canary (step 1, ",
        "the restarted server ended the canary, which no longer takes any request",
        "production keeps what it had",
    ] {
        assert!(reason.contains(said), "{said} in: {reason}");
    }
    let aborted = s.messages_of("canary.aborted");
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert!(
        aborted[0].contains("web@2.0.0 canary aborted in production: the server stopped")
            && aborted[0].ends_with("production stays on web@1.0.0"),
        "{aborted:?}"
    );

    // From now on nobody meets the canary, a tester neither; production serves 1.0.0.
    assert_eq!(
        canary_pins(&production(&s)),
        Vec::<usize>::new(),
        "after the restart"
    );
    assert_eq!(
        version(&production(&s), "x-shipgate-canary: always\r\n"),
        "1.0.0"
    );
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    let status = s.json(&["status", "web"]);
    let production = env_status(&status, "production");
    assert_eq!(production["live"]["version"], "1.0.0", "{production}");
    assert_eq!(
        production["in_progress"],
        serde_json::json!([]),
        "{production}"
    );
    let table = s.ok(&["status", "web"]);
    assert!(!table.contains("canary"), "{table}");
    let refused = s.refused(&["canary", "status", "web", "--env", "production"]);
    assert!(
        refused.contains("no canary of web is under way"),
        "{refused}"
    );
    // The canary's instance is stopped, not left running.
    wait_for("web@2.0.0's instance to stop", || {
        processes_in(&canary_release).is_empty()
    });
}
