//! Feature flags through the command line and OFREP: declared in the config, set per
//! environment at run time, evaluated by the real OpenFeature Python and Rust SDKs with their
//! OFREP providers (PyPI and crates.io, unchanged), by the instances themselves with the key they are given, in bulk
//! with ETag / 304, and announced over SSE; client keys select an environment and stop working
//! once revoked; roles and scopes apply.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestServer, four_envs_with, spawn_server, text};

const FLAGS: &str = r#"
[apps.web.flags.new-checkout]
type = "boolean"
default = false
description = "the one-page checkout"

[apps.web.flags.theme]
type = "string"
default = "light"
variants = { light = "light", dark = "dark" }

[apps.web.flags.limit]
type = "number"
default = 10
variants = { high = 100 }

[apps.web.flags.ratio]
type = "number"
default = 0.5
variants = { high = 0.9 }

[apps.web.flags.layout]
type = "object"
default = { columns = 2 }
variants = { wide = { columns = 3, sidebar = true } }
"#;

fn started() -> TestServer {
    let config = four_envs_with("", &[("production", "require.approvals = 1")]).replace(
        "health = \"/healthz\"\n",
        &format!("health = \"/healthz\"\n{FLAGS}"),
    );
    spawn_server(&config)
}

/// A Python with the OpenFeature SDK and its OFREP provider from PyPI, in a venv under target/.
fn sdk_python() -> PathBuf {
    crate::helpers::python_venv(
        "openfeature-venv",
        &["openfeature-sdk", "openfeature-provider-ofrep==0.3.0"],
    )
}

/// A new flag client key `name` for `env`.
fn flag_key(s: &TestServer, name: &str, env: &str) -> String {
    s.json(&["flag", "key", "create", name, "--env", env])["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST path` to the API address with an OFREP key and extra headers: status, headers, body.
fn ofrep(
    s: &TestServer,
    path: &str,
    key: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let host = s.api().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    })
}

/// The OpenFeature Rust SDK (`open-feature`) with its OFREP provider (`open-feature-ofrep`),
/// both from crates.io, evaluate what the Python SDK did in
/// [`the_openfeature_sdks_evaluate_every_type_a_rule_and_a_rollout_set_at_run_time`].
fn rust_sdk_evaluates(api: &str, key: &str) {
    use open_feature::{EvaluationContext, EvaluationErrorCode, OpenFeature, StructValue, Value};
    use open_feature_ofrep::{OfrepOptions, OfrepProvider};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("X-API-Key", key.parse().unwrap());
        let provider = OfrepProvider::new(OfrepOptions {
            base_url: api.to_owned(),
            headers,
            ..Default::default()
        })
        .await
        .unwrap();
        let client = {
            let mut sdk = OpenFeature::singleton_mut().await;
            sdk.set_named_provider("shipgate", provider).await;
            sdk.create_named_client("shipgate")
        };
        let pro = EvaluationContext::default()
            .with_targeting_key("user-1")
            .with_custom_field("plan", "pro");
        let free = EvaluationContext::default()
            .with_targeting_key("user-1")
            .with_custom_field("plan", "free");
        let on = client
            .get_bool_details("new-checkout", Some(&pro), None)
            .await
            .unwrap();
        assert_eq!((on.value, on.variant.as_deref()), (true, Some("on")));
        let off = client
            .get_bool_details("new-checkout", Some(&free), None)
            .await
            .unwrap();
        assert_eq!((off.value, off.variant.as_deref()), (false, Some("off")));
        assert_eq!(
            client.get_string_value("theme", Some(&pro), None).await,
            Ok("dark".to_owned())
        );
        assert_eq!(
            client.get_float_value("ratio", Some(&pro), None).await,
            Ok(0.9)
        );
        let layout: StructValue = client
            .get_struct_value("layout", Some(&pro), None)
            .await
            .unwrap();
        assert_eq!(layout.fields.get("columns"), Some(&Value::Int(3)));
        assert_eq!(layout.fields.get("sidebar"), Some(&Value::Bool(true)));
        let mut high = 0;
        for i in 0..1000 {
            let user = EvaluationContext::default().with_targeting_key(format!("user-{i}"));
            let limit = client
                .get_int_value("limit", Some(&user), None)
                .await
                .unwrap();
            assert!(limit == 100 || limit == 10, "{limit}");
            high += usize::from(limit == 100);
        }
        assert!((250..=350).contains(&high), "{high} of 1000 keys at 30%");
        // The provider maps OFREP's 400 (TARGETING_KEY_MISSING here) to INVALID_CONTEXT.
        let no_key = client
            .get_int_value("limit", Some(&EvaluationContext::default()), None)
            .await
            .unwrap_err();
        assert_eq!(no_key.code, EvaluationErrorCode::InvalidContext);
        let missing = client
            .get_bool_value("nonexistent", Some(&pro), None)
            .await
            .unwrap_err();
        assert_eq!(missing.code, EvaluationErrorCode::FlagNotFound);
    });
}

#[test]
fn the_openfeature_sdks_evaluate_every_type_a_rule_and_a_rollout_set_at_run_time() {
    let s = started();
    let key = flag_key(&s, "web-staging", "staging");
    s.ok(&[
        "flag",
        "set",
        "web",
        "new-checkout",
        "--env",
        "staging",
        "--rule",
        r#"plan in ["pro","team"] -> on"#,
    ]);
    s.ok(&[
        "flag",
        "on",
        "web",
        "theme",
        "--env",
        "staging",
        "--variant",
        "dark",
    ]);
    s.ok(&[
        "flag",
        "set",
        "web",
        "limit",
        "--env",
        "staging",
        "--rollout",
        "30%",
    ]);
    s.ok(&["flag", "on", "web", "ratio", "--env", "staging"]);
    s.ok(&["flag", "on", "web", "layout", "--env", "staging"]);
    let shown = s.ok(&["flag", "show", "--env", "staging"]);
    assert!(shown.contains("rules: 30% high / 70% default"), "{shown}");
    let script = format!(
        r#"
import json
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.contrib.provider.ofrep import OFREPProvider

api.set_provider(OFREPProvider("{api}", headers_factory=lambda: {{"X-API-Key": "{key}"}}))
client = api.get_client()
pro = EvaluationContext(targeting_key="user-1", attributes={{"plan": "pro"}})
free = EvaluationContext(targeting_key="user-1", attributes={{"plan": "free"}})
out = {{}}
d = client.get_boolean_details("new-checkout", False, pro)
out["pro"] = [d.value, d.variant, str(d.reason)]
d = client.get_boolean_details("new-checkout", True, free)
out["free"] = [d.value, d.variant, str(d.reason)]
out["theme"] = client.get_string_value("theme", "?", pro)
out["ratio"] = client.get_float_value("ratio", 0.0, pro)
out["layout"] = client.get_object_value("layout", {{}}, pro)
out["limits"] = [client.get_integer_value("limit", 0, EvaluationContext(targeting_key=f"user-{{i}}")) for i in range(1000)]
again = [client.get_integer_value("limit", 0, EvaluationContext(targeting_key=f"user-{{i}}")) for i in range(1000)]
out["sticky"] = again == out["limits"]
d = client.get_integer_details("limit", 7, EvaluationContext())
out["no_key"] = [d.value, str(d.error_code)]
d = client.get_boolean_details("nonexistent", True, pro)
out["missing"] = [d.value, str(d.error_code)]
print(json.dumps(out))
"#,
        api = s.api()
    );
    let out = Command::new(sdk_python())
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["pro"],
        serde_json::json!([true, "on", "TARGETING_MATCH"]),
        "{got}"
    );
    assert_eq!(
        got["free"],
        serde_json::json!([false, "off", "DEFAULT"]),
        "{got}"
    );
    assert_eq!(got["theme"], "dark");
    assert_eq!(got["ratio"], 0.9);
    assert_eq!(
        got["layout"],
        serde_json::json!({"columns": 3, "sidebar": true})
    );
    let limits = got["limits"].as_array().unwrap();
    let high = limits.iter().filter(|v| **v == 100).count();
    assert!(limits.iter().all(|v| *v == 100 || *v == 10), "{got}");
    assert!((250..=350).contains(&high), "{high} of 1000 keys at 30%");
    assert_eq!(got["sticky"], true);
    assert_eq!(
        got["no_key"],
        serde_json::json!([7, "TARGETING_KEY_MISSING"])
    );
    assert_eq!(got["missing"], serde_json::json!([true, "FLAG_NOT_FOUND"]));
    rust_sdk_evaluates(&s.api(), &key);

    // Production is another environment: its flags are its own, and the key selects staging.
    let prod = s.json(&["flag", "show", "theme", "--env", "production"]);
    assert_eq!(prod[0]["summary"], "off");

    // Promoting flag state: the difference first, then one change; diff shows flags.
    let diff = s.cli(&["diff", "web", "staging", "testing"]);
    assert!(text(&diff).contains("flags.theme"), "{}", text(&diff));
    let dry = s.ok(&[
        "flag",
        "promote",
        "web",
        "--from",
        "staging",
        "--to",
        "testing",
        "--dry-run",
    ]);
    assert!(dry.contains("theme: off -> on (dark)"), "{dry}");
    assert_eq!(
        s.json(&["flag", "show", "theme", "--env", "testing"])[0]["summary"],
        "off"
    );
    let done = s.cli(&[
        "flag", "promote", "web", "--from", "staging", "--to", "testing",
    ]);
    assert!(
        text(&done).contains("testing now has staging's flag states of web"),
        "{}",
        text(&done)
    );
    for flag in ["theme", "new-checkout", "limit", "ratio", "layout"] {
        let a = s.json(&["flag", "show", flag, "--env", "staging"])[0]["state"].clone();
        let b = s.json(&["flag", "show", flag, "--env", "testing"])[0]["state"].clone();
        assert_eq!(a, b, "{flag}");
    }
    let again = s.ok(&[
        "flag", "promote", "web", "--from", "staging", "--to", "testing",
    ]);
    assert!(again.contains("already"), "{again}");
    let audit = s.ok(&["audit", "--env", "testing"]);
    assert_eq!(
        audit
            .matches("flags of web promoted from staging to testing")
            .count(),
        1,
        "{audit}"
    );
    // Production requires approvals: flag changes wait there (next test).
}

fn summary(s: &TestServer, flag: &str, env: &str) -> String {
    s.json(&["flag", "show", flag, "--env", env])[0]["summary"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn where_approvals_are_required_flag_changes_wait_for_them_and_the_kill_switch_never_does() {
    let s = started();
    let dana = s.token("dana", "admin", &[]);
    let carol = s.token("carol", "deployer", &[]);
    let alice = s.token("alice", "approver", &[]);
    let bob = s.token("bob", "approver", &[]);
    let key = flag_key(&s, "web-production", "production");
    let theme = |s: &TestServer| {
        let (_, _, body) = ofrep(
            s,
            "/ofrep/v1/evaluate/flags/theme",
            &key,
            "",
            r#"{"context":{"targetingKey":"u1"}}"#,
        );
        serde_json::from_str::<Value>(&body).unwrap()["value"].clone()
    };

    // Turning a flag on waits; nothing is served differently meanwhile.
    let asked = s.ok_as(
        &dana,
        &[
            "flag",
            "on",
            "web",
            "theme",
            "--env",
            "production",
            "--variant",
            "dark",
        ],
    );
    assert!(
        asked.contains("flag change #1 of web in production waits for approvals (theme: off -> on (dark)): shipgate flag approve 1"),
        "{asked}"
    );
    assert_eq!(summary(&s, "theme", "production"), "off");
    assert_eq!(theme(&s), "light");
    let listed = s.ok(&["flag", "changes"]);
    assert!(
        listed.contains("#1") && listed.contains("pending"),
        "{listed}"
    );

    // The rules of promotion approvals: never the requester, never a deployer.
    let own = s.refused_as(&dana, &["flag", "approve", "1"]);
    assert!(
        own.contains("dana asked for this flag change, so dana may not approve it"),
        "{own}"
    );
    let deployer = s.refused_as(&carol, &["flag", "approve", "1"]);
    assert!(
        deployer.contains("has the role deployer, which may not approve"),
        "{deployer}"
    );
    let done = s.ok_as(&alice, &["flag", "approve", "1", "--comment", "checked"]);
    assert!(
        done.contains("flag change #1 approved and applied in production: theme: off -> on (dark)"),
        "{done}"
    );
    assert_eq!(summary(&s, "theme", "production"), "on (dark)");
    assert_eq!(theme(&s), "dark");
    let again = s.refused_as(&bob, &["flag", "approve", "1"]);
    assert!(again.contains("is applied already"), "{again}");

    // A kill switch never waits, and overtakes what waits for the same flag.
    let rollout = s.ok_as(
        &carol,
        &[
            "flag",
            "set",
            "web",
            "limit",
            "--env",
            "production",
            "--rollout",
            "10%",
        ],
    );
    assert!(rollout.contains("flag change #2"), "{rollout}");
    let off = s.ok_as(
        &dana,
        &["flag", "off", "web", "theme", "--env", "production"],
    );
    assert!(off.contains("web/theme in production: off"), "{off}");
    assert_eq!(theme(&s), "light");
    s.ok_as(
        &dana,
        &["flag", "off", "web", "limit", "--env", "production"],
    );
    let all = s.json(&["flag", "changes", "--all"]);
    assert_eq!(all[1]["id"], 2);
    assert_eq!(all[1]["status"], "superseded", "{all}");
    let late = s.refused_as(&alice, &["flag", "approve", "2"]);
    assert!(late.contains("is superseded already"), "{late}");
    assert_eq!(summary(&s, "limit", "production"), "off");

    // A rejection needs a comment and applies nothing.
    s.ok_as(
        &dana,
        &["flag", "on", "web", "ratio", "--env", "production"],
    );
    let bare = s.cli_as(&alice, &["flag", "reject", "3"]);
    assert!(!bare.status.success());
    let rejected = s.ok_as(
        &alice,
        &["flag", "reject", "3", "--comment", "not in the sale"],
    );
    assert!(rejected.contains("flag change #3 rejected"), "{rejected}");
    assert_eq!(summary(&s, "ratio", "production"), "off");

    // A flag promotion into production waits as one change, and applies as one.
    s.ok(&["flag", "on", "web", "new-checkout", "--env", "staging"]);
    let promoted = s.ok_as(
        &dana,
        &[
            "flag",
            "promote",
            "web",
            "--from",
            "staging",
            "--to",
            "production",
        ],
    );
    assert!(promoted.contains("flag change #4"), "{promoted}");
    assert_eq!(summary(&s, "new-checkout", "production"), "off");
    s.ok_as(&bob, &["flag", "approve", "4"]);
    assert_eq!(summary(&s, "new-checkout", "production"), "on (on)");
    assert!(s.ok(&["flag", "changes"]).contains("no flag change waits"));

    // Every step is in the audit log.
    assert_eq!(s.messages_of("flag.change_requested").len(), 4);
    let approved = s.messages_of("flag.change_approved");
    assert!(
        approved[0].contains(
            "flag change #1 of web in production approved by alice (1 of 1 approvals): checked"
        ),
        "{approved:?}"
    );
    assert_eq!(s.messages_of("flag.change_rejected").len(), 1);
    let changed = s.messages_of("flag.changed");
    assert!(
        changed
            .iter()
            .any(|m| m.contains("overtakes the waiting change #2")),
        "{changed:?}"
    );
}

#[test]
fn bulk_answers_304_to_a_matching_etag_sse_sees_the_kill_switch_and_keys_and_roles_hold() {
    let s = started();
    let key = flag_key(&s, "k1", "testing");
    let body = r#"{"context":{"targetingKey":"user-9"}}"#;
    let (status, head, first) = ofrep(&s, "/ofrep/v1/evaluate/flags", &key, "", body);
    assert_eq!(status, 200, "{head}{first}");
    let etag = header(&head, "etag").unwrap();
    let doc: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(doc["flags"].as_array().unwrap().len(), 5, "{doc}");
    assert_eq!(doc["eventStreams"][0]["type"], "sse");
    assert_eq!(
        doc["eventStreams"][0]["url"],
        format!("{}/ofrep/v1/events", s.api())
    );
    // Whatever `Host` a client (or a page through DNS rebinding) sends, the stream it is sent
    // to, with its key, is the configured API's.
    let forged = crate::helpers::raw_http(
        s.api().trim_start_matches("http://"),
        &format!(
            "POST /ofrep/v1/evaluate/flags HTTP/1.0\r\nHost: attacker.example\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(!forged.contains("attacker.example"), "{forged}");
    assert!(
        forged.contains(&format!("{}/ofrep/v1/events", s.api())),
        "{forged}"
    );
    let (status, _, _) = ofrep(
        &s,
        "/ofrep/v1/evaluate/flags",
        &key,
        &format!("If-None-Match: {etag}\r\n"),
        body,
    );
    assert_eq!(status, 304);

    // An SSE client of testing's flags, then the kill switch after turning a flag on.
    s.ok(&["flag", "on", "web", "new-checkout", "--env", "testing"]);
    let (status, _, _) = ofrep(
        &s,
        "/ofrep/v1/evaluate/flags",
        &key,
        &format!("If-None-Match: {etag}\r\n"),
        body,
    );
    assert_eq!(status, 200, "a changed flag changes the ETag");
    let host = s.api().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET /ofrep/v1/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    while line.trim() != "" {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    s.ok(&["flag", "off", "web", "new-checkout", "--env", "testing"]);
    let mut seen = String::new();
    while !seen.contains("refetchEvaluation") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended: {seen}"
        );
        seen.push_str(&line);
    }
    let (_, _, one) = ofrep(&s, "/ofrep/v1/evaluate/flags/new-checkout", &key, "", body);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(
        (one["value"].clone(), one["reason"].clone()),
        (Value::Bool(false), "DISABLED".into())
    );

    // Keys: a wrong one and a revoked one get 401; a bad body is PARSE_ERROR.
    assert_eq!(
        ofrep(&s, "/ofrep/v1/evaluate/flags/theme", "sgf_wrong", "", body).0,
        401
    );
    let (status, _, bad) = ofrep(&s, "/ofrep/v1/evaluate/flags/theme", &key, "", "{nope");
    assert_eq!(status, 400);
    assert!(bad.contains("PARSE_ERROR"), "{bad}");
    s.ok(&["flag", "key", "revoke", "k1"]);
    assert_eq!(
        ofrep(&s, "/ofrep/v1/evaluate/flags/theme", &key, "", body).0,
        401
    );
    assert!(s.ok(&["flag", "key", "list"]).contains("revoked"));

    // Roles, scopes, approvals and declarations.
    let viewer = s.token("ro", "viewer", &[]);
    assert!(
        s.refused_as(&viewer, &["flag", "on", "web", "theme", "--env", "testing"])
            .contains("viewer")
    );
    let dev = s.token("dev", "deployer", &["development"]);
    s.ok_as(
        &dev,
        &["flag", "on", "web", "theme", "--env", "development"],
    );
    let scoped = s.refused_as(&dev, &["flag", "on", "web", "theme", "--env", "testing"]);
    assert!(scoped.contains("development"), "{scoped}");
    s.ok(&["flag", "off", "web", "theme", "--env", "production"]);
    let unknown = s.refused(&["flag", "on", "web", "colour", "--env", "testing"]);
    assert!(
        unknown.contains("no app declares flag `colour`"),
        "{unknown}"
    );
    let bad_variant = s.refused(&[
        "flag",
        "on",
        "web",
        "theme",
        "--env",
        "testing",
        "--variant",
        "blue",
    ]);
    assert!(
        bad_variant.contains("has no variant `blue`"),
        "{bad_variant}"
    );
    let audit = s.ok(&["audit", "--env", "testing"]);
    assert!(
        audit.contains("flag web/new-checkout in testing: on (on) -> off"),
        "{audit}"
    );
}

#[test]
fn an_instance_reads_its_environments_flags_with_the_key_it_is_given() {
    let s = started();
    s.register("1.0.0", &[]);
    s.deploy("1.0.0", "development");
    s.ok(&[
        "flag",
        "on",
        "web",
        "theme",
        "--env",
        "development",
        "--variant",
        "dark",
    ]);
    let reply = s
        .get(&format!("{}/flag?key=theme&user=u1", s.url("development")))
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        (answer["value"].clone(), answer["reason"].clone()),
        ("dark".into(), "STATIC".into())
    );

    // The key is listed as a flag key of its own, and every deploy gets another: a retired
    // instance's key is revoked with it (the live one's and the standby's stay, for a
    // rollback).
    let keys = |s: &crate::helpers::TestServer| -> Vec<(String, bool)> {
        s.json(&["flag", "key", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_owned(),
                    k["revoked_at"].is_null(),
                )
            })
            .collect()
    };
    let first = keys(&s);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].0.starts_with("instance-development-web-"),
        "{first:?}"
    );
    for version in ["1.1.0", "1.2.0", "1.3.0"] {
        s.register(version, &[]);
        s.deploy(version, "development");
    }
    // 1.0.0's instance stopped when 1.2.0 went live, 1.1.0's when 1.3.0 did (a standby is
    // retired in the background, once its requests have drained).
    let mut later = keys(&s);
    crate::helpers::wait_for("the retired instances' keys to be revoked", || {
        later = keys(&s);
        later.iter().map(|(_, active)| *active).collect::<Vec<_>>() == [false, false, true, true]
    });
    assert_eq!(later.len(), 4, "{later:?}");
    let flag = || {
        s.get(&format!("{}/flag?key=theme&user=u1", s.url("development")))
            .unwrap()
    };
    assert_eq!(flag().status, 200);
    // Revoked by hand, the live instance's key stops working at once.
    s.ok(&["flag", "key", "revoke", &later[3].0]);
    let refused = flag();
    assert_ne!(refused.status, 200, "{}", refused.body);
}

#[test]
fn a_flag_that_breaks_the_app_under_load_is_reverted_by_the_watch() {
    let config = four_envs_with(
        "",
        &[(
            "development",
            "verify.watch = \"3s\"\nverify.max_error_rate = 0.05\nverify.min_requests = 20\nverify.inconclusive = \"pass\"",
        )],
    )
    .replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\n[apps.web.flags.broken-page]\ntype = \"boolean\"\ndefault = false\n",
    );
    let s = spawn_server(&config);
    s.register("1.0.0", &[("BUG_FLAG", "broken-page")]);
    // The release's own watch (no traffic yet: inconclusive, passed) ends before the flag
    // changes.
    s.deploy("1.0.0", "development");
    let url = format!("{}/", s.url("development"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 20_000 {
                let _ = crate::helpers::http_get(&url, None);
                sent += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    s.ok(&["flag", "on", "web", "broken-page", "--env", "development"]);
    crate::helpers::wait_for("the watch to turn the flag back off", || {
        s.json(&["flag", "show", "broken-page", "--env", "development"])[0]["summary"] == "off"
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let audit = s.ok(&["audit", "--env", "development"]);
    assert!(
        audit.contains("reverted by the watch: on (on) -> off: error rate"),
        "{audit}"
    );
    assert_eq!(s.get(&url).unwrap().status, 200);
}

#[test]
fn the_environment_page_shows_flags_and_its_off_button_is_the_kill_switch() {
    use crate::dashboard::{csrf_of, raw, sign_in};
    let s = started();
    s.ok(&["flag", "on", "web", "new-checkout", "--env", "staging"]);
    let admin = std::fs::read_to_string(s.dir.path().join("data/admin.token")).unwrap();
    let cookie = sign_in(&s, admin.trim());
    let auth = [("Cookie", cookie.as_str())];
    let (status, _, page) = raw(&s, "GET", "/apps/web/environments/staging", &auth, "");
    assert_eq!(status, 200);
    assert!(
        page.contains("<code>new-checkout</code>") && page.contains("on (on)"),
        "{page}"
    );
    assert!(page.contains("id=\"flag-off-new-checkout\""), "{page}");
    let form = format!("csrf={}&to=off", csrf_of(&page));
    let (status, head, _) = raw(
        &s,
        "POST",
        "/apps/web/environments/staging/flags/new-checkout",
        &auth,
        &form,
    );
    assert_eq!(status, 303, "{head}");
    assert_eq!(
        s.json(&["flag", "show", "new-checkout", "--env", "staging"])[0]["summary"],
        "off"
    );
    // Production requires approvals: a deployer's change waits there, and the page's Approve
    // button applies it.
    let dana = s.token("dana", "deployer", &[]);
    s.ok_as(
        &dana,
        &["flag", "on", "web", "new-checkout", "--env", "production"],
    );
    let (_, _, page) = raw(&s, "GET", "/apps/web/environments/production", &auth, "");
    assert!(
        page.contains("Flag changes waiting for approval")
            && page.contains("new-checkout: off -&#62; on (on)")
            && page.contains("id=\"flag-change-approve-1\""),
        "{page}"
    );
    let form = format!("csrf={}&verdict=approve&comment=", csrf_of(&page));
    let (status, head, _) = raw(
        &s,
        "POST",
        "/apps/web/environments/production/flag-changes/1",
        &auth,
        &form,
    );
    assert_eq!(status, 303, "{head}");
    assert_eq!(summary(&s, "new-checkout", "production"), "on (on)");
    let (_, _, page) = raw(&s, "GET", "/apps/web/environments/production", &auth, "");
    assert!(
        !page.contains("Flag changes waiting for approval"),
        "{page}"
    );
    // A viewer sees the flags and no buttons.
    let viewer = s.token("look", "viewer", &[]);
    let cookie = sign_in(&s, &viewer);
    let (_, _, page) = raw(
        &s,
        "GET",
        "/apps/web/environments/staging",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert!(
        page.contains("<code>new-checkout</code>") && !page.contains("flag-off-"),
        "{page}"
    );
}
