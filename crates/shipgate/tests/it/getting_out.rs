//! Getting out fast: a rollback or a rejection ends the promotion in flight at once, whether it
//! deploys, runs its tests or is watched, and the environment goes back to what it had.

use crate::helpers::{four_envs_with, spawn_server, wait_for};

/// The state of the newest promotion of web into `env`.
fn latest_state(s: &crate::helpers::TestServer, env: &str) -> String {
    s.latest(env)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_rollback_during_the_watch_ends_it_at_once_and_puts_the_environment_back() {
    let mut s = spawn_server(&four_envs_with("watch_config = false", &[]));
    s.register("1.0.0", &[]);
    s.register("1.1.0", &[]);
    s.deploy("1.0.0", "development");
    // From now on development watches each release for ten minutes.
    let watched = s.config_text().replacen(
        "[environments.development]\n",
        "[environments.development]\nverify.watch = \"10m\"\n",
        1,
    );
    s.rewrite_config(&watched);
    s.ok(&["reload"]);
    wait_for("the reloaded server", || {
        s.cli(&["status"]).status.success()
    });

    s.ok(&["promote", "web@1.1.0", "--to", "development"]);
    wait_for("1.1.0 to be watched", || {
        latest_state(&s, "development") == "verifying"
            && s.version("development").as_deref() == Some("1.1.0")
    });
    let watched_id = s.latest("development")["id"].clone();

    let said = s.ok(&["rollback", "web", "--env", "development"]);
    // Back at once: the rollback does not wait out the watch.
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"), "{said}");
    let rollback = s.latest("development");
    assert_eq!(rollback["kind"], "rollback", "{rollback}");
    assert_eq!(rollback["state"], "succeeded", "{rollback}");
    assert_eq!(rollback["version"], "1.0.0");
    let history = s.json(&["history", "web", "--env", "development"]);
    let ended = history
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == watched_id)
        .unwrap();
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["reason"]
            .as_str()
            .unwrap()
            .starts_with("rolled back by"),
        "{ended}"
    );
    let failed = s.messages_of("promotion.failed");
    assert!(
        failed.iter().any(|m| m.contains(
            "web@1.1.0 was ended in development during its verification: rolled back by"
        ) && m.ends_with("development is back on web@1.0.0")),
        "{failed:?}"
    );
    // The release it went back to was not itself rolled back.
    let rolled_back = s.messages_of("promotion.rolled_back");
    assert!(
        !rolled_back.iter().any(|m| m.contains("web@1.0.0")),
        "{rolled_back:?}"
    );
    // Nothing is left in progress, and a second rollback has nothing newer to leave.
    assert!(s.waits("development").is_empty());
}

#[test]
fn a_rejection_during_the_tests_or_the_deploy_ends_the_promotion_and_says_so() {
    let s = spawn_server(&four_envs_with(
        "",
        &[(
            "development",
            "verify.tests = [\"test ! -f HANG || sleep 600\"]",
        )],
    ));
    let rita = s.token("rita", "approver", &[]);
    s.register("1.0.0", &[]);
    s.register("1.1.0", &[("HANG", "")]);
    s.register("1.2.0", &[("SLOW", "go")]);
    s.deploy("1.0.0", "development");
    let serving = s.instance_processes().len();
    let reject = |release: &str, why: &str| {
        s.ok_as(
            &rita,
            &["reject", release, "--env", "development", "--comment", why],
        )
    };

    // During the tests: ended, and development is back on 1.0.0.
    s.ok(&["promote", "web@1.1.0", "--to", "development"]);
    wait_for("1.1.0's tests to run", || {
        latest_state(&s, "development") == "verifying"
    });
    let said = reject("web@1.1.0", "checkout is broken");
    assert!(!said.contains("it will not deploy"), "{said}");
    assert!(
        said.contains("it was verifying and is failed now: rejected by rita: checkout is broken"),
        "{said}"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let failed = s.messages_of("promotion.failed");
    assert!(
        failed
            .iter()
            .any(|m| m.ends_with("development is back on web@1.0.0")
                && m.contains("rejected by rita")),
        "{failed:?}"
    );

    // During the deploy (its instance waits for a file before it listens): ended before the
    // switch, and development never served it.
    s.ok(&["promote", "web@1.2.0", "--to", "development"]);
    wait_for("1.2.0 to deploy", || {
        latest_state(&s, "development") == "deploying"
    });
    let said = reject("web@1.2.0", "wrong build");
    assert!(
        said.contains("it was deploying and is failed now: rejected by rita: wrong build"),
        "{said}"
    );
    assert_eq!(latest_state(&s, "development"), "failed");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let failed = s.messages_of("promotion.failed");
    assert!(
        failed.iter().any(|m| m.contains(
            "web@1.2.0 was stopped before its switch in development: rejected by rita: wrong build; development stays on web@1.0.0"
        )),
        "{failed:?}"
    );
    // Its instance goes once it is up.
    std::fs::write(s.app_data("development").join("go"), "").unwrap();
    wait_for("1.2.0's instance and 1.1.0's test to be stopped", || {
        s.instance_processes().len() == serving
    });
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));

    // A rejection of a pending promotion still says it will not deploy.
    s.ok(&["freeze", "--env", "development", "--reason", "hold"]);
    s.ok(&["promote", "web@1.1.0", "--to", "development"]);
    let said = reject("web@1.1.0", "not now");
    assert!(said.contains("it will not deploy"), "{said}");
}

#[test]
fn a_rollback_of_the_first_release_ends_it_and_says_nothing_is_left() {
    let s = spawn_server(&four_envs_with(
        "",
        &[("development", "verify.watch = \"10m\"")],
    ));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development"]);
    wait_for("1.0.0 to be watched", || {
        latest_state(&s, "development") == "verifying"
    });
    let said = s.ok(&["rollback", "web", "--env", "development"]);
    assert!(
        said.contains("failed: web@1.0.0 → development") && said.contains("rolled back by"),
        "{said}"
    );
    assert_eq!(s.version("development"), None, "nothing was live before it");
}
