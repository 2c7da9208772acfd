//! Staging mirrors production: `shipgate diff` classes every item and never prints a secret,
//! the parity gate holds a promotion until the difference is fixed, and drift in a live
//! release directory is found by the periodic scan and healed.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::helpers::{four_envs_with, spawn_server, text, wait_for};

/// The item `key` of a `diff` answer.
pub(crate) fn item<'a>(diff: &'a Value, key: &str) -> &'a Value {
    diff["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {diff}"))
}

fn class_of(diff: &Value, key: &str) -> String {
    item(diff, key)["class"].as_str().unwrap().to_owned()
}

#[test]
fn diff_classes_every_item_and_never_prints_a_secret() {
    let config = four_envs_with(
        "",
        &[
            (
                "staging",
                "mirrors = \"production\"\ndiffers = [\"listen\", \"vars.LOG_LEVEL\"]\nvars = { LOG_LEVEL = \"debug\", REGION = \"eu\", API_TOKEN = \"staging-secret-1\", DATABASE_URL = \"postgres://app:pw-staging@db/shop\", CANARY = \"1\" }",
            ),
            (
                "production",
                "vars = { LOG_LEVEL = \"info\", REGION = \"us\", API_TOKEN = \"prod-secret-2\", DATABASE_URL = \"postgres://app:pw-prod@db/shop\" }",
            ),
        ],
    )
    .replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\nfacts = { version_file = \"cat VERSION\", python = \"python3 -c 'print(1)'\" }\n",
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");

    let out = s.cli(&["diff", "web", "staging", "production"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "REGION differs unexpectedly: {}",
        text(&out)
    );
    let shown = text(&out);
    for secret in ["staging-secret-1", "prod-secret-2", "pw-staging", "pw-prod"] {
        assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
    }
    assert!(shown.contains("(secret, differs)"), "{shown}");
    let region = shown
        .lines()
        .find(|l| l.contains("vars.REGION"))
        .unwrap_or_default();
    assert!(
        region.contains("UNEXPECTED") && region.contains("eu") && region.contains("us"),
        "{shown}"
    );
    assert!(
        shown.contains("unexpected differences in the settings:"),
        "{shown}"
    );

    let json = s.cli(&["diff", "web", "staging", "production", "--output", "json"]);
    assert_eq!(json.status.code(), Some(1));
    let raw = String::from_utf8(json.stdout).unwrap();
    for secret in ["staging-secret-1", "prod-secret-2", "pw-staging", "pw-prod"] {
        assert!(!raw.contains(secret), "{secret} in the JSON");
    }
    let diff: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(class_of(&diff, "release.digest"), "same");
    assert_eq!(class_of(&diff, "facts.version_file"), "same");
    assert_eq!(class_of(&diff, "facts.python"), "same");
    assert_eq!(class_of(&diff, "listen"), "expected");
    assert_eq!(class_of(&diff, "vars.LOG_LEVEL"), "expected");
    assert_eq!(class_of(&diff, "vars.REGION"), "unexpected");
    assert_eq!(class_of(&diff, "vars.API_TOKEN"), "unexpected");
    assert_eq!(class_of(&diff, "vars.DATABASE_URL"), "unexpected");
    assert_eq!(class_of(&diff, "vars.CANARY"), "only_in_a");
    // testing has the smoke test and staging none: compared the other way round it is only in A.
    let t = s.cli(&["diff", "web", "testing", "staging", "--output", "json"]);
    let t: Value = serde_json::from_slice(&t.stdout).unwrap();
    assert_eq!(class_of(&t, "verify.tests"), "only_in_a");
    let same = s.cli(&["diff", "web", "development", "development"]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
}

#[test]
fn the_parity_gate_holds_production_until_the_difference_is_fixed() {
    // Each environment's flag is a file in its ${DATA_DIR}, which a fact sees in its sandbox.
    let config = four_envs_with(
        "",
        &[
            (
                "staging",
                "mirrors = \"production\"\ndiffers = [\"listen\", \"require.*\"]",
            ),
            ("production", "require.parity = \"staging\""),
        ],
    )
    .replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\nfacts = { feature = \"cat ${DATA_DIR}/feature\" }\n",
    );
    let s = spawn_server(&config);
    let flag = |env: &str, value: &str| {
        let dir = s.app_data(env);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("feature"), value).unwrap();
    };
    flag("staging", "new-checkout");
    flag("production", "old-checkout");
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for("the parity gate to hold the promotion", || {
        s.waits("production").first().is_some_and(|w| {
            w.starts_with("parity with staging: 1 unexpected difference(s): facts.feature")
        })
    });
    assert_eq!(
        s.version("production"),
        None,
        "nothing deployed while they differ"
    );
    // The release itself may differ: that is what is being promoted.
    flag("production", "new-checkout");
    wait_for("the promotion to proceed once production matches", || {
        s.latest("production")["state"] == "succeeded"
    });
    let p = s.latest("production");
    let gates: Vec<&str> = p["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(gates[..2], ["parity", "deploy"], "{p}");
}

#[test]
fn a_changed_file_in_a_live_release_is_found_by_the_scan_and_healed() {
    let s = spawn_server(&four_envs_with("drift_scan = \"1s\"", &[]));
    let digest = s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    s.ok(&["drift", "web"]);
    let dir = s
        .data_dir()
        .join("releases")
        .join(digest.trim_start_matches("sha256:"));
    let original = fs::read_to_string(dir.join("server.py")).unwrap();
    for path in [dir.clone(), dir.join("server.py")] {
        let mut perm = fs::metadata(&path).unwrap().permissions();
        perm.set_mode(perm.mode() | 0o200);
        fs::set_permissions(&path, perm).unwrap();
    }
    fs::write(
        dir.join("server.py"),
        format!("{original}\n# hot-fixed by hand\n"),
    )
    .unwrap();
    fs::write(dir.join("notes.txt"), "left behind\n").unwrap();

    wait_for("the scan to find the drift", || {
        let status = s.json(&["status", "web"]);
        crate::helpers::env_status(&status, "development")["drift"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    assert!(s.ok(&["status"]).contains("DRIFTED (see shipgate drift)"));
    let out = s.cli(&["drift", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("web@1.0.0 in development: DRIFTED"),
        "{shown}"
    );
    assert!(
        shown.contains("release directory changed: server.py"),
        "{shown}"
    );
    assert!(
        shown
            .contains("heal web@1.0.0 in development: shipgate drift web --env development --heal"),
        "the hint names the exact command: {shown}"
    );
    assert!(
        shown.contains("release directory added: notes.txt"),
        "{shown}"
    );
    let events = s.json(&["audit", "--limit", "1000"]);
    let drifted: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "environment.drifted")
        .collect();
    assert_eq!(
        drifted.len(),
        1,
        "recorded once, not at every scan: {events}"
    );

    let healed = s.ok(&["drift", "web", "--env", "development", "--heal"]);
    // The result says where the drifted files went, and they are there.
    let aside = healed
        .split("what had drifted in it was moved to ")
        .nth(1)
        .and_then(|rest| rest.split(" (delete it").next())
        .unwrap_or_else(|| panic!("the heal names the folder: {healed}"));
    let aside = std::path::Path::new(aside);
    assert!(aside.join("notes.txt").exists(), "{healed}");
    assert_ne!(
        fs::read_to_string(aside.join("server.py")).unwrap(),
        original
    );
    assert_eq!(fs::read_to_string(dir.join("server.py")).unwrap(), original);
    assert!(!dir.join("notes.txt").exists());
    assert_eq!(s.latest("development")["kind"], "redeploy");
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    s.ok(&["drift", "web"]);
    wait_for("the scan to clear the drift", || {
        s.json(&["audit", "--limit", "1000"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "environment.drift_cleared")
    });
}

#[test]
fn staging_ahead_of_production_is_the_normal_state_unless_strict() {
    let s = spawn_server(&four_envs_with(
        "",
        &[(
            "staging",
            "mirrors = \"production\"\ndiffers = [\"listen\"]",
        )],
    ));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    let digest = s.register("1.1.0", &[]);
    s.walk("1.1.0", "staging");
    let out = s.cli(&["diff", "web", "staging", "production"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("\nreleases:\n"), "{shown}");
    assert!(shown.contains("--strict counts them"), "{shown}");
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        shown.contains(&format!("sha256:{}", &hex[..12])) && !shown.contains(hex),
        "digests are shortened: {shown}"
    );
    let strict = s.cli(&["diff", "web", "staging", "production", "--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
}
