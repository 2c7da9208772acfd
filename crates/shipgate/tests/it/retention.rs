//! `server.retention` and `shipgate gc`: old artifacts and idle logs go, never what is live, a
//! standby, or where a rollback goes; a pruned release comes back by registering it again.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{four_envs, spawn_server};

fn versions(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_owned())
        .collect()
}

/// Sets a file's modification time `days` back.
fn age(path: &std::path::Path, days: u32) {
    let status = Command::new("touch")
        .arg("-d")
        .arg(format!("{days} days ago"))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn gc_keeps_the_newest_and_whatever_runs_or_a_rollback_needs_and_a_pruned_release_comes_back() {
    let s = spawn_server(&four_envs("retention = { releases = 2, logs = \"7d\" }"));
    // 0.8.0 was live in development and replaced since; 0.9.0 never went anywhere.
    s.register("0.8.0", &[]);
    s.ok(&["promote", "web@0.8.0", "--to", "development", "--wait"]);
    let pruned_digest = s.register("0.9.0", &[]);
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    for version in ["1.1.0", "1.2.0"] {
        s.register(version, &[]);
        s.deploy(version, "development");
    }
    for version in ["1.3.0", "1.4.0"] {
        s.register(version, &[]);
    }
    // An idle log of an instance long gone, and the live instance's own log, both old.
    let logs = s.data_dir().join("logs/web/development");
    let idle = logs.join("web-development-old.log");
    std::fs::write(&idle, "old lines\n").unwrap();
    age(&idle, 30);
    let live_id = crate::helpers::env_status(&s.json(&["status"]), "development")["instance"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let live_log = logs.join(format!("{live_id}.log"));
    assert!(live_log.exists(), "{}", live_log.display());
    age(&live_log, 30);

    let dry = s.json(&["gc", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(versions(&dry["releases"]), ["0.9.0", "0.8.0"], "{dry}");
    let kept: Vec<(String, String)> = dry["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let why: Vec<&str> = k["why"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            (k["version"].as_str().unwrap().to_owned(), why.join(", "))
        })
        .collect();
    assert_eq!(
        kept,
        [
            ("1.2.0".to_owned(), "live in development".to_owned()),
            (
                "1.1.0".to_owned(),
                "where a rollback of development goes, standby in development".to_owned()
            ),
            (
                "1.0.0".to_owned(),
                "live in testing, live in staging, live in production".to_owned()
            ),
        ],
        "{dry}"
    );
    let paths: Vec<&str> = dry["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [idle.to_str().unwrap()],
        "the live instance's log stays"
    );
    let text = s.ok(&["gc", "--dry-run"]);
    assert!(text.contains("would go: web@0.9.0 ("), "{text}");
    assert!(
        text.contains(
            "kept: web@1.1.0 (where a rollback of development goes, standby in development)"
        ),
        "{text}"
    );
    let release_dir = s
        .data_dir()
        .join("releases")
        .join(pruned_digest.trim_start_matches("sha256:"));
    assert!(
        release_dir.is_dir() && idle.exists(),
        "a dry run removes nothing"
    );

    let done = s.json(&["gc"]);
    assert_eq!(versions(&done["releases"]), ["0.9.0", "0.8.0"]);
    assert!(done["freed_bytes"].as_u64().unwrap() > 0);
    assert!(!release_dir.exists() && !idle.exists() && live_log.exists());
    assert_eq!(
        versions(&s.json(&["gc", "--dry-run"])["releases"]),
        Vec::<String>::new()
    );

    // The record stays; deploying it says how to bring it back, and registering the same
    // file again does.
    let refused = s.refused(&["promote", "web@0.9.0", "--to", "development"]);
    assert!(
        refused.contains("web@0.9.0's artifact was removed by retention")
            && refused.contains("register the same file again"),
        "{refused}"
    );
    assert!(s.ok(&["release", "list", "web"]).contains("0.9.0"));
    assert_eq!(s.register("0.9.0", &[]), pruned_digest);
    s.ok(&["promote", "web@0.9.0", "--to", "development", "--wait"]);
    assert_eq!(s.version("development").as_deref(), Some("0.9.0"));

    let audit = s.json(&["audit", "--app", "web"]);
    let pruned = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "release.pruned")
        .count();
    assert_eq!(pruned, 2, "{audit}");
    s.ok(&["audit", "--verify"]);
    // Only an admin collects.
    let deployer = s.token("dana", "deployer", &[]);
    let denied = s.refused_as(&deployer, &["gc", "--dry-run"]);
    assert!(
        denied.contains("may not remove old releases and logs"),
        "{denied}"
    );
}

#[test]
fn issue_29_gc_removes_artifacts_no_release_refers_to() {
    let s = spawn_server(&four_envs(""));
    let kept = s.register("1.0.0", &[]);
    // What an upload that failed while unpacking left behind before issue 29: its artifact and
    // a partial release directory, and no release.
    let hex = "ab".repeat(32);
    let archive = s.data_dir().join("artifacts").join(format!("{hex}.tar"));
    std::fs::write(&archive, vec![0u8; 5000]).unwrap();
    let partial = s.data_dir().join("releases").join(&hex);
    std::fs::create_dir_all(partial.join("bin")).unwrap();
    std::fs::write(partial.join("bin/web"), "#!/bin/sh\n").unwrap();

    let dry = s.json(&["gc", "--dry-run"]);
    let orphans = dry["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{dry}");
    assert_eq!(orphans[0]["digest"], format!("sha256:{hex}"));
    assert!(orphans[0]["bytes"].as_u64().unwrap() >= 5000, "{dry}");
    assert!(
        archive.exists() && partial.exists(),
        "a dry run removes nothing"
    );
    let text = s.ok(&["gc", "--dry-run"]);
    assert!(
        text.contains("would remove 1 artifact that no release refers to"),
        "{text}"
    );

    let text = s.ok(&["gc"]);
    assert!(
        text.contains("removed 1 artifact that no release refers to"),
        "{text}"
    );
    assert!(!archive.exists() && !partial.exists());
    let kept_hex = kept.trim_start_matches("sha256:");
    assert!(
        s.data_dir()
            .join("artifacts")
            .join(format!("{kept_hex}.tar"))
            .exists()
            && s.data_dir().join("releases").join(kept_hex).is_dir(),
        "the registered release stays"
    );
    assert!(s.ok(&["gc"]).contains("nothing to remove"));
}
