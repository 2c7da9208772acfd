//! Regression tests of the defects that probing found (issue 11), each named after its defect.

use serde_json::Value;

use crate::helpers::{four_envs, spawn_server};

/// The name of the only admin token limited to no environment (the one in `admin.token`).
fn admin_token_name(tokens: &Value) -> String {
    let admins: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(admins.len(), 1, "{tokens}");
    admins[0].to_owned()
}

#[test]
fn defect_1_revoking_the_admin_token_never_bricks_the_server() {
    let mut s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "development");
    let first = admin_token_name(&s.json(&["token", "list"]));

    let refused = s.refused(&["token", "revoke", &first]);
    assert!(
        refused.contains("is the last admin token limited to no environment"),
        "{refused}"
    );

    let second = s.token("second-admin", "admin", &[]);
    s.ok_as(&second, &["token", "revoke", &first]);
    let old_file = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    assert!(s.terminate().success());

    s.restart();
    assert!(
        s.log().contains("was revoked; a new admin token"),
        "the server says what happened:\n{}",
        s.log()
    );
    let new_file = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    assert_ne!(old_file, new_file, "a new admin token was written");
    // The shipgate command finds the new token by itself; development serves again.
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    let tokens = s.json(&["token", "list"]);
    let active_admins = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "admin" && t["revoked_at"].is_null())
        .count();
    assert_eq!(active_admins, 2, "{tokens}");
    // The revoked token stays revoked.
    let old = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == first.as_str())
        .unwrap();
    assert!(!old["revoked_at"].is_null(), "{old}");
}
