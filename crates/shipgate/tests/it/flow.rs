//! A release through development → testing → staging → production, and what refuses it.

use serde_json::json;

use crate::helpers::{ENVS, four_envs, spawn_server};

#[test]
fn a_release_walks_all_the_way_to_production() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    s.register("1.1.0", &[]);
    s.walk("1.1.0", "production");
    for env in ENVS {
        assert_eq!(
            s.version(env).as_deref(),
            Some("1.1.0"),
            "{env} serves the new version"
        );
    }
    let status = s.json(&["status"]);
    for e in status[0]["environments"].as_array().unwrap() {
        assert_eq!(
            (
                &e["live"]["version"],
                &e["instance"]["healthy"],
                &e["in_progress"]
            ),
            (&json!("1.1.0"), &json!(true), &json!([])),
            "{e}"
        );
    }
    assert!(s.ok(&["audit", "--verify"]).contains("hash chain verified"));
    // Drift is reported along the pipeline, not alphabetically.
    let drift = s.json(&["drift", "web"]);
    let order: Vec<&str> = drift
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["env"].as_str())
        .collect();
    assert_eq!(order, ENVS, "{drift}");
}

#[test]
fn skipping_staging_is_refused_naming_staging() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    let refusal = s.refused(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    assert!(
        refusal.contains("web@1.0.0 is not verified in staging yet (promote it there first: shipgate promote web@1.0.0 --to staging)"),
        "{refusal}"
    );
    assert_eq!(s.version("production"), None);
    assert_eq!(
        s.json(&["history", "web", "--env", "production"]),
        json!([]),
        "no promotion was recorded"
    );
}

#[test]
fn a_failing_smoke_test_leaves_testing_on_its_previous_release() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    s.register("1.1.0", &[("BUG", "the front page answers 500\n")]);
    s.ok(&["promote", "web@1.1.0", "--to", "development", "--wait"]);

    let failed = s.refused(&["promote", "web@1.1.0", "--to", "testing", "--wait"]);
    assert!(failed.contains("failed: web@1.1.0 → testing"), "{failed}");
    assert_eq!(s.version("testing").as_deref(), Some("1.0.0"));
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));

    let smoke_output = format!(
        "smoke: GET {}/ answered 500, expected 200",
        s.url("testing")
    );
    let history = s.ok(&["history", "web", "--env", "testing"]);
    assert!(
        history.contains("FAILED  test: sh smoke.sh ${URL}") && history.contains(&smoke_output),
        "{history}"
    );
    let last = &s.json(&["history", "web", "--env", "testing"])[0];
    assert_eq!(
        (&last["version"], &last["state"]),
        (&json!("1.1.0"), &json!("failed"))
    );
    let live: Vec<_> = s.json(&["status"])[0]["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["live"]["version"].clone())
        .collect();
    assert_eq!(
        live,
        [json!("1.1.0"), json!("1.0.0"), json!(null), json!(null)]
    );

    let refusal = s.refused(&["promote", "web@1.1.0", "--to", "staging"]);
    assert!(
        refusal.contains("web@1.1.0 is not verified in testing yet"),
        "{refusal}"
    );
}

#[test]
fn registering_the_same_release_twice_is_a_no_op() {
    let s = spawn_server(&four_envs(""));
    let create = |dir: std::path::PathBuf| {
        s.ok(&[
            "release",
            "create",
            "web",
            "--version",
            "1.0.0",
            "--artifact",
            dir.to_str().unwrap(),
        ])
    };
    let first = create(s.app_release("1.0.0", &[]));
    assert!(
        first.starts_with("registered web@1.0.0 (sha256:"),
        "{first}"
    );
    // The same files written again (new mtimes) pack to the same digest.
    let again = create(s.app_release("1.0.0", &[]));
    assert!(
        again.contains("web@1.0.0 is already registered with this content"),
        "{again}"
    );
    assert_eq!(s.json(&["release", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn rollback_returns_production_to_the_previous_version() {
    let s = spawn_server(&four_envs(""));
    for version in ["1.0.0", "1.1.0"] {
        s.register(version, &[]);
        s.walk(version, "production");
    }
    assert_eq!(s.version("production").as_deref(), Some("1.1.0"));
    s.ok(&["rollback", "web", "--env", "production", "--wait"]);
    assert_eq!(s.version("production").as_deref(), Some("1.0.0"));
    assert_eq!(
        s.version("staging").as_deref(),
        Some("1.1.0"),
        "other environments keep theirs"
    );
    let history = s.json(&["history", "web", "--env", "production"]);
    let states: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {} {}", p["kind"], p["version"], p["state"]))
        .collect();
    assert_eq!(
        states,
        [
            r#""rollback" "1.0.0" "succeeded""#,
            r#""promote" "1.1.0" "rolled_back""#,
            r#""promote" "1.0.0" "succeeded""#
        ]
    );
}

#[test]
fn logs_print_the_apps_output() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let logs = s.ok(&["logs", "web", "--env", "development"]);
    assert!(
        logs.contains("fixture app 1.0.0 listening on port")
            && logs.contains("\"GET /version HTTP/1.1\" 200"),
        "{logs}"
    );
}

#[test]
fn an_instance_that_never_becomes_healthy_fails_with_its_last_log_lines() {
    let config = four_envs("").replace(
        "health = \"/healthz\"",
        "health = \"/healthz\"\nhealth_timeout = \"1s\"",
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    // The gate file never appears, so 2.0.0 never listens.
    let digest = s.register("2.0.0", &[("SLOW", "never")]);
    let release_dir = digest.trim_start_matches("sha256:").to_owned();

    let failed = s.refused(&["promote", "web@2.0.0", "--to", "development", "--wait"]);
    assert!(failed.contains("failed"), "{failed}");
    assert!(failed.contains("did not become healthy within"), "{failed}");
    assert!(
        failed.contains("fixture app 2.0.0: waiting for"),
        "the instance's own last log lines are shown: {failed}"
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let stray: Vec<_> = s
        .instance_processes()
        .into_iter()
        .filter(|(pid, _)| crate::helpers::describe_process(*pid).contains(&release_dir))
        .collect();
    assert_eq!(stray, [], "the unhealthy instance was stopped");
}

#[test]
fn an_instance_whose_port_was_taken_before_it_bound_it_is_started_again() {
    // The marker is in ${DATA_DIR}, the one folder a sandboxed instance may write.
    let config = crate::helpers::four_envs("")
        .replace(
            "run = \"python3 server.py --port ${PORT}\"",
            "run = \"if [ ! -e ${DATA_DIR}/failed-once ]; then touch ${DATA_DIR}/failed-once; echo 'OSError: [Errno 98] Address already in use' >&2; exit 1; fi; exec python3 server.py --port ${PORT}\"",
        );
    let s = crate::helpers::spawn_server(&config);
    let once = s.app_data("development").join("failed-once");
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    assert!(once.exists(), "the first start failed as arranged");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
}

#[test]
fn tests_find_the_config_folder_and_the_release_and_a_failure_says_where_it_ran() {
    let s = spawn_server(&crate::helpers::four_envs_with(
        "isolation = \"none\"",
        &[(
            "development",
            "verify.tests = [\"sh ${CONFIG_DIR}/check.sh ${RELEASE_DIR}\", \"./smoke.sh-missing\"]",
        )],
    ));
    // A script next to shipgate.toml, given the release's folder.
    std::fs::write(
        s.dir.path().join("check.sh"),
        "test -f \"$1/VERSION\" && echo \"release at $1\"\n",
    )
    .unwrap();
    s.register("1.0.0", &[]);
    let out = s.cli(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    assert_ne!(out.status.code(), Some(0), "the second test fails");
    let latest = s.latest("development");
    let gates = latest["gates"].as_array().unwrap();
    let first = gates
        .iter()
        .find(|g| g["name"].as_str().unwrap_or("").contains("check.sh"))
        .unwrap();
    assert_eq!(first["passed"], true, "{first}");
    assert!(
        first["output"].as_str().unwrap().contains("release at /"),
        "{first}"
    );
    let second = gates
        .iter()
        .find(|g| {
            g["name"]
                .as_str()
                .unwrap_or("")
                .contains("smoke.sh-missing")
        })
        .unwrap();
    assert_eq!(second["passed"], false, "{second}");
    let said = second["output"].as_str().unwrap();
    assert!(
        said.contains("run in the release directory ") && said.contains("${CONFIG_DIR} = "),
        "{said}"
    );
}

#[test]
fn promote_wait_prints_a_line_per_change_when_not_on_a_terminal() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    // The test's stderr is a pipe, as in CI.
    let out = s.cli(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::helpers::text(&out));
    let progress = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = progress.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("web@1.0.0 → development: succeeded")),
        "{progress}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.len() > 20 && l.as_bytes()[4] == b'-'),
        "each line starts with its time: {progress}"
    );
}
