//! Warm standby and instant rollback, rolled-back releases held back, crash loops.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::helpers::{env_status, four_envs, spawn_server, wait_for};

fn kill9(pid: &Value) {
    kill(
        Pid::from_raw(i32::try_from(pid.as_i64().unwrap()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn rollback_to_the_warm_standby_is_a_switch() {
    let mut s = spawn_server(&four_envs(""));
    for version in ["1.0.0", "1.1.0"] {
        s.register(version, &[]);
        s.walk(version, "development");
    }
    let development = env_status(&s.json(&["status"]), "development");
    assert_eq!(
        development["standby"]["version"],
        json!("1.0.0"),
        "{development}"
    );
    let standby_instance = development["standby"]["instance_id"].clone();

    // Without --wait: the answer itself says it is done, and 1.0.0 already serves.
    let rollback = s.json(&["rollback", "web", "--env", "development"]);
    assert_eq!(rollback["state"], json!("succeeded"), "{rollback}");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let development = env_status(&s.json(&["status"]), "development");
    assert_eq!(
        development["instance"]["id"], standby_instance,
        "the standby instance took over"
    );
    assert_eq!(
        development["standby"],
        Value::Null,
        "the rolled-back release is not kept warm"
    );

    let history = s.json(&["history", "web", "--env", "development", "--limit", "2"]);
    assert_eq!(history[0]["kind"], json!("rollback"));
    assert_eq!(history[0]["gates"][0]["name"], json!("switch"), "{history}");
    assert_eq!(history[1]["version"], json!("1.1.0"));
    assert_eq!(history[1]["state"], json!("rolled_back"));
    s.ok(&["audit", "--verify"]);

    // A restart of the server adopts the instance that serves since the rollback (started by
    // an earlier promotion than the rollback's): the same pid, not a new one.
    let pid = development["instance"]["pid"].clone();
    s.kill9();
    s.restart_answering();
    wait_for("the restarted server to restore", || !s.restoring());
    let after = env_status(&s.json(&["status"]), "development");
    assert_eq!(after["instance"]["pid"], pid, "{after}");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
}

#[test]
fn without_standby_rollback_deploys_the_previous_release_again() {
    let config = four_envs("").replace(
        "[environments.development]\n",
        "[environments.development]\nstandby = \"0s\"\n",
    );
    let s = spawn_server(&config);
    for version in ["1.0.0", "1.1.0"] {
        s.register(version, &[]);
        s.walk(version, "development");
    }
    assert_eq!(
        env_status(&s.json(&["status"]), "development")["standby"],
        Value::Null
    );
    let rollback = s.json(&["rollback", "web", "--env", "development", "--wait"]);
    assert_eq!(rollback["state"], json!("succeeded"), "{rollback}");
    assert_eq!(
        rollback["gates"][0]["name"],
        json!("deploy"),
        "a new instance was started: {rollback}"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
}

#[test]
fn a_rolled_back_release_goes_no_further_until_promoted_there_again() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    s.register("1.1.0", &[]);
    s.walk("1.1.0", "testing");
    s.ok(&["rollback", "web", "--env", "testing", "--wait"]);
    let refused = s.refused(&["promote", "web@1.1.0", "--to", "staging"]);
    assert!(
        refused.contains("web@1.1.0 was rolled back in testing, so it may not go further (promote it there again first: shipgate promote web@1.1.0 --to testing)"),
        "{refused}"
    );
    s.ok(&["promote", "web@1.1.0", "--to", "testing", "--wait"]);
    s.ok(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);
    assert_eq!(s.version("staging").as_deref(), Some("1.1.0"));
}

#[test]
fn a_crash_loop_marks_the_environment_unhealthy() {
    let config = four_envs("").replace(
        "health = \"/healthz\"",
        "health = \"/healthz\"\ncrash_loop = { crashes = 1, within = \"10m\" }",
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let first = env_status(&s.json(&["status"]), "development")["instance"]["pid"].clone();
    kill9(&first);
    // One crash is tolerated: it comes back under a new pid.
    let mut second = Value::Null;
    wait_for("the instance to restart", || {
        second = env_status(&s.json(&["status"]), "development")["instance"]["pid"].clone();
        !second.is_null() && second != first
    });
    kill9(&second);
    wait_for("the environment to be marked unhealthy", || {
        !env_status(&s.json(&["status"]), "development")["unhealthy"].is_null()
    });
    let events = s.json(&["audit", "--env", "development", "--limit", "1000"]);
    let unhealthy: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "environment.unhealthy")
        .collect();
    assert_eq!(unhealthy.len(), 1, "{events}");
    assert!(
        unhealthy[0]["message"]
            .as_str()
            .unwrap()
            .contains("crashed 2 times"),
        "{}",
        unhealthy[0]
    );
    let text = s.ok(&["status"]);
    assert!(text.contains("CRASH-LOOPING"), "{text}");

    // A new promotion brings it back to health.
    s.register("1.0.1", &[]);
    s.ok(&["promote", "web@1.0.1", "--to", "development", "--wait"]);
    let development = env_status(&s.json(&["status"]), "development");
    assert_eq!(development["unhealthy"], Value::Null);
    assert_eq!(
        development["standby"],
        Value::Null,
        "a crashed instance is not kept warm"
    );
}
