//! Roles and environment scopes: every endpoint × every role × an environment inside and one
//! outside the token's scope. A refusal is 403 with a problem+json body; anything else means
//! the request got past the permission check.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::helpers::{TestServer, four_envs, spawn_server};

/// What a role may do, as the README states it (the rule itself lives in shipgate-core).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Needs {
    Read,
    Deploy,
    /// Approve, reject, freeze one environment: approver or admin.
    Approve,
    /// Freeze or unfreeze every environment: approver or admin, limited to no environment.
    FreezeAll,
    /// Override windows and freezes, refresh data (by default): admin.
    Override,
    Tokens,
}

fn allowed(role: &str, scoped: bool, needs: Needs, env_in_scope: bool) -> bool {
    let role_ok = match needs {
        Needs::Read => true,
        Needs::Deploy => matches!(role, "deployer" | "admin"),
        Needs::Approve => matches!(role, "approver" | "admin"),
        Needs::FreezeAll => matches!(role, "approver" | "admin") && !scoped,
        Needs::Override => role == "admin",
        Needs::Tokens => role == "admin" && !scoped,
    };
    role_ok && env_in_scope
}

/// A raw HTTP/1.0 request; returns status, content type and body (only the head for streams).
fn request(
    s: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, String, String) {
    let api = s.api();
    let host = api.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // An event stream never ends: its head is enough.
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if n == 0 || (text.contains("text/event-stream") && text.contains("\r\n\r\n")) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[test]
fn every_endpoint_checks_role_and_environment_scope() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "production");
    let history = s.json(&["history", "web"]);
    let promotion_in = |env: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["env"] == env)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (dev_promotion, prod_promotion) = (promotion_in("development"), promotion_in("production"));

    // One token per role, limited to development, plus the unscoped admin of the data dir.
    let mut tokens: Vec<(String, bool, String)> = Vec::new();
    for role in ["viewer", "deployer", "approver", "admin"] {
        let created = s.json(&[
            "token",
            "create",
            &format!("{role}-dev"),
            "--role",
            role,
            "--env",
            "development",
        ]);
        tokens.push((
            role.to_owned(),
            true,
            created["token"].as_str().unwrap().to_owned(),
        ));
    }
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    tokens.push(("admin".to_owned(), false, admin.trim().to_owned()));

    let zero_digest = format!("sha256:{}", "0".repeat(64));
    let mut checked = 0;
    for (n, (role, scoped, token)) in tokens.iter().enumerate() {
        for (env, promotion) in [
            ("development", dev_promotion),
            ("production", prod_promotion),
        ] {
            let in_scope = !scoped || env == "development";
            let new_token = json!({ "name": format!("made-by-{n}-{env}"), "role": "viewer" });
            let endpoints: Vec<(&str, String, Option<Value>, Needs, bool)> = vec![
                ("GET", "/api/v1/releases".into(), None, Needs::Read, true),
                (
                    "POST",
                    format!("/api/v1/apps/web/releases?version=9.9.{n}&digest={zero_digest}"),
                    Some(json!("x")),
                    Needs::Deploy,
                    true,
                ),
                (
                    "POST",
                    "/api/v1/promotions".into(),
                    Some(json!({ "release": "web@1.0.0", "env": env })),
                    Needs::Deploy,
                    in_scope,
                ),
                (
                    "GET",
                    format!("/api/v1/promotions/{promotion}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/rollbacks".into(),
                    Some(json!({ "app": "web", "env": env })),
                    Needs::Deploy,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/promotions".into(),
                    Some(json!({ "release": "web@1.0.0", "env": env, "override": "matrix" })),
                    Needs::Override,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/approvals".into(),
                    Some(
                        json!({ "release": "web@1.0.0", "env": env, "verdict": "reject", "comment": "no" }),
                    ),
                    Needs::Approve,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/freezes".into(),
                    Some(json!({ "env": env, "reason": "matrix" })),
                    Needs::Approve,
                    in_scope,
                ),
                (
                    "DELETE",
                    format!("/api/v1/freezes?env={env}"),
                    None,
                    Needs::Approve,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/freezes".into(),
                    Some(json!({ "reason": "matrix" })),
                    Needs::FreezeAll,
                    true,
                ),
                (
                    "DELETE",
                    "/api/v1/freezes".into(),
                    None,
                    Needs::FreezeAll,
                    true,
                ),
                ("GET", "/api/v1/freezes".into(), None, Needs::Read, true),
                (
                    "GET",
                    format!("/api/v1/diff?app=web&a={env}&b={env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                ("GET", "/api/v1/drift".into(), None, Needs::Read, true),
                (
                    "POST",
                    "/api/v1/data/refresh".into(),
                    Some(json!({ "app": "web", "from": env, "to": env })),
                    Needs::Override,
                    in_scope,
                ),
                (
                    "GET",
                    format!("/api/v1/data/check?app=web&env={env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "POST",
                    "/api/v1/drift/heal".into(),
                    Some(json!({ "app": "web", "env": env })),
                    Needs::Deploy,
                    in_scope,
                ),
                ("GET", "/api/v1/status".into(), None, Needs::Read, true),
                (
                    "GET",
                    format!("/api/v1/history?app=web&env={env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "GET",
                    format!("/api/v1/logs?app=web&env={env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "GET",
                    format!("/api/v1/events?env={env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "GET",
                    "/api/v1/events/stream".into(),
                    None,
                    Needs::Read,
                    true,
                ),
                (
                    "GET",
                    "/api/v1/audit/verify".into(),
                    None,
                    Needs::Read,
                    true,
                ),
                (
                    "GET",
                    "/api/v1/openapi.json".into(),
                    None,
                    Needs::Read,
                    true,
                ),
                (
                    "POST",
                    "/api/v1/tokens".into(),
                    Some(new_token),
                    Needs::Tokens,
                    true,
                ),
                ("GET", "/api/v1/tokens".into(), None, Needs::Tokens, true),
                (
                    "DELETE",
                    "/api/v1/tokens/nobody".into(),
                    None,
                    Needs::Tokens,
                    true,
                ),
                ("GET", "/metrics".into(), None, Needs::Read, true),
                (
                    "GET",
                    format!("/api/v1/secrets/{env}"),
                    None,
                    Needs::Read,
                    in_scope,
                ),
                (
                    "PUT",
                    format!("/api/v1/secrets/{env}/API_KEY"),
                    Some(json!({ "value": format!("value-{n}") })),
                    Needs::Override,
                    in_scope,
                ),
                (
                    "DELETE",
                    format!("/api/v1/secrets/{env}/NO_SUCH_KEY"),
                    None,
                    Needs::Override,
                    in_scope,
                ),
            ];
            for (method, path, body, needs, env_ok) in endpoints {
                let (status, content_type, text) = request(&s, method, &path, token, body.as_ref());
                let what =
                    format!("{role} (scoped: {scoped}) {method} {path} [{env}] → {status} {text}");
                if allowed(role, *scoped, needs, env_ok) {
                    assert_ne!(status, 403, "allowed but refused: {what}");
                    assert_ne!(status, 401, "{what}");
                } else {
                    assert_eq!(status, 403, "should be refused: {what}");
                    assert_eq!(content_type, "application/problem+json", "{what}");
                    let problem: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(problem["status"], 403, "{what}");
                    assert!(
                        problem["detail"]
                            .as_str()
                            .unwrap()
                            .contains(&format!("token `{role}")),
                        "{what}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 31);
}

#[test]
fn scoped_tokens_see_only_their_environments_and_revoked_tokens_stop_working() {
    let s = spawn_server(&four_envs(""));
    s.register("1.0.0", &[]);
    s.walk("1.0.0", "testing");
    let created = s.json(&[
        "token",
        "create",
        "dev-viewer",
        "--role",
        "viewer",
        "--env",
        "development",
    ]);
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, _, body) = request(&s, "GET", "/api/v1/status", &token, None);
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let envs: Vec<&Value> = status[0]["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["env"])
        .collect();
    assert_eq!(envs, [&json!("development")], "{status}");
    let (_, _, body) = request(&s, "GET", "/api/v1/history?app=web", &token, None);
    let history: Value = serde_json::from_str(&body).unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["env"] == "development"),
        "{history}"
    );

    // Stored as a hash only: the secret appears nowhere in the database file.
    for file in ["shipgate.db", "shipgate.db-wal"] {
        let bytes = std::fs::read(s.data_dir().join(file)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&token),
            "the secret is in {file}"
        );
    }
    let hash = sha2::Sha256::digest(token.as_bytes());
    let wal = std::fs::read(s.data_dir().join("shipgate.db-wal")).unwrap_or_default();
    let db = [
        std::fs::read(s.data_dir().join("shipgate.db")).unwrap(),
        wal,
    ]
    .concat();
    assert!(
        String::from_utf8_lossy(&db).contains(&hex::encode(hash)),
        "its hash is stored"
    );
    let listed = s.json(&["token", "list"]);
    assert!(!listed.to_string().contains(&token));

    s.ok(&["token", "revoke", "dev-viewer"]);
    let (status, content_type, body) = request(&s, "GET", "/api/v1/status", &token, None);
    assert_eq!(
        (status, content_type.as_str()),
        (401, "application/problem+json")
    );
    // Told it was revoked, not sent to the admin token.
    assert!(
        body.contains("this token (`dev-viewer`) was revoked at") && !body.contains("admin.token"),
        "{body}"
    );
    let again = s.refused(&["token", "create", "dev-viewer", "--role", "viewer"]);
    assert!(
        again.contains("a token named `dev-viewer` already exists"),
        "{again}"
    );
    let events = s.json(&["audit", "--limit", "1000"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("token."))
        .collect();
    assert_eq!(
        kinds,
        ["token.created", "token.created", "token.revoked"],
        "the admin token, then ours"
    );
}

#[test]
fn a_token_made_to_expire_stops_working_then_and_says_so() {
    let s = spawn_server(&four_envs(""));
    let out = s.ok(&[
        "token",
        "create",
        "ci",
        "--role",
        "viewer",
        "--person",
        "team-ci",
        "--expires",
        "2s",
    ]);
    let token = out.lines().next().unwrap().trim().to_owned();
    s.ok_as(&token, &["status"]);
    let listed = s.ok(&["token", "list"]);
    assert!(listed.contains("active until"), "{listed}");
    crate::helpers::wait_for("the token to expire", || {
        !s.cli_as(&token, &["status"]).status.success()
    });
    let refused = s.refused_as(&token, &["status"]);
    assert!(
        refused.contains("expired at") && refused.contains("shipgate token create"),
        "{refused}"
    );
    assert!(s.ok(&["token", "list"]).contains("expired "));
    // Ten years at most: longer is refused with what to do.
    let refused = s.refused(&[
        "token",
        "create",
        "x",
        "--role",
        "viewer",
        "--expires",
        "4000d",
    ]);
    assert!(refused.contains("leave `expires` out"), "{refused}");
}
