//! A killed server restarts into a consistent state; a terminated one stops cleanly.

use std::path::PathBuf;

use serde_json::json;

use crate::helpers::{
    ENVS, TestServer, describe_process, env_status, four_envs, processes_in, spawn_server, wait_for,
};

/// web@1.0.0 live in development, testing and staging; web@2.0.0 deploying into development
/// (its process started, held before listening until the returned gate file exists) when the
/// server is killed with SIGKILL; then the server is started again. Also returns 2.0.0's
/// release folder.
fn killed_during_a_deploy_and_restarted() -> (TestServer, PathBuf, PathBuf) {
    let mut s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    let gate = s.app_data("development").join("let-2.0.0-listen");
    let digest = s.register("2.0.0", &[("SLOW", "let-2.0.0-listen")]);
    let slow_release = s
        .data_dir()
        .join("releases")
        .join(digest.trim_start_matches("sha256:"));
    s.ok(&["promote", "web@2.0.0", "--to", "development"]);
    wait_for(
        "web@2.0.0 deploying in development, its process started",
        || {
            env_status(&s.json(&["status"]), "development")["in_progress"][0]["state"]
                == "deploying"
                && !processes_in(&slow_release).is_empty()
        },
    );
    s.kill9();
    s.restart();
    (s, gate, slow_release)
}

#[test]
fn sigkill_during_a_deploy_then_restart_leaves_nothing_in_flight() {
    let (s, gate, _) = killed_during_a_deploy_and_restarted();
    let status = s.json(&["status"]);
    for env in ENVS {
        let e = env_status(&status, env);
        assert_eq!(e["in_progress"], json!([]), "nothing in flight in {env}");
        let expected = if env == "production" {
            None
        } else {
            Some("1.0.0")
        };
        assert_eq!(e["live"]["version"].as_str(), expected, "{env}");
        assert_eq!(
            s.version(env).as_deref(),
            expected,
            "{env} serves its live release"
        );
    }
    let interrupted = &s.json(&["history", "web", "--env", "development"])[0];
    assert_eq!(
        (&interrupted["version"], &interrupted["state"]),
        (&json!("2.0.0"), &json!("failed"))
    );
    let reason = interrupted["reason"].as_str().unwrap();
    assert!(
        reason.contains("the server stopped while this promotion was deploying"),
        "{reason}"
    );

    // The environment takes promotions again.
    std::fs::write(&gate, "").unwrap();
    s.ok(&["promote", "web@2.0.0", "--to", "development", "--wait"]);
    assert_eq!(s.version("development").as_deref(), Some("2.0.0"));
}

// An instance the killed server was still starting (before its health check passed) must not
// survive the restart.
#[test]
fn sigkill_during_a_deploy_then_restart_leaves_no_process_of_the_killed_server() {
    let (s, _, slow_release) = killed_during_a_deploy_and_restarted();
    let status = s.json(&["status"]);
    let instances: Vec<i64> = ENVS
        .iter()
        .filter_map(|env| env_status(&status, env)["instance"]["pid"].as_i64())
        .collect();
    // Every process running from a release belongs to an instance of the new server (its
    // process group): nothing of the killed one is left, live instance or half-deployed one.
    let orphans: Vec<String> = s
        .instance_processes()
        .into_iter()
        .filter(|(_, group)| !instances.contains(&i64::from(*group)))
        .map(|(pid, _)| describe_process(pid))
        .collect();
    assert_eq!(
        orphans,
        Vec::<String>::new(),
        "processes of the killed server survived; instances now: {instances:?}; web@2.0.0 is in {}",
        slow_release.display()
    );
}

#[test]
fn sigterm_stops_instances_and_exits_0() {
    // The server's own data plane: stopping the server stops its instances (with a local
    // agent, they keep serving; see agent.rs).
    let mut s = spawn_server(&four_envs("data_plane = \"server\""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    assert!(!s.instance_processes().is_empty());

    let exit = s.terminate();
    assert_eq!(exit.code(), Some(0), "{}", s.log());
    assert!(
        s.get(&s.url("development")).is_none(),
        "the environment's address still answers"
    );
    assert!(
        s.get(&format!("{}/healthz", s.api())).is_none(),
        "the API still answers"
    );
    assert_eq!(s.instance_processes(), [], "every instance was stopped");
}
