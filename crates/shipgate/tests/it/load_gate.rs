//! A load test as a gate (issue 34): staging's `verify.load` stops a release 3× slower than the
//! one it replaces (and production refuses it), lets one of the same speed through, fails one
//! that errors on POSTs naming the request; the generator's corrected p99 shows a stall that
//! a closed loop (ab) hides; it holds 2,000 req/s counted at the app; a rate it cannot keep is
//! inconclusive; and production refuses `load run` without `load.allow` and an admin.

use crate::helpers::{TestServer, four_envs_with, spawn_server, text, wait_for};

const LOAD_APP: &str = include_str!("../fixtures/loadapp/server.py");

/// Staging's gate: 200 req/s for 3 s after a 1 s warmup, GETs and POSTs 8 to 2.
const GATE: &str = "[environments.staging.verify.load]\nrate = 200\nduration = \"3s\"\nwarmup = \"1s\"\nconnections = 16\nmax_error_rate = 0.001\nmax_p99 = \"1s\"\nmax_regression = 0.5\nrequests = [\n  { method = \"GET\", path = \"/\", weight = 8 },\n  { method = \"POST\", path = \"/api/orders\", body = '{\"sku\":\"A1\"}', headers = { \"content-type\" = \"application/json\" }, weight = 2 },\n]";

fn server(staging: &str, production: &str) -> TestServer {
    spawn_server(&four_envs_with(
        "",
        &[("staging", staging), ("production", production)],
    ))
}

/// Registers web@version running the load app, with these files beside it.
pub(crate) fn release(s: &TestServer, version: &str, files: &[(&str, &str)]) {
    let mut all = vec![("server.py", LOAD_APP)];
    all.extend_from_slice(files);
    let dir = s.app_release(version, &all);
    s.register_dir(version, &dir);
}

pub(crate) fn gate_output(s: &TestServer) -> String {
    let latest = s.latest("staging");
    latest["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "load")
        .map(|g| g["output"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no load gate: {latest}"))
}

#[test]
fn a_release_three_times_slower_is_stopped_in_staging_and_one_of_the_same_speed_passes() {
    let s = server(GATE, "");
    release(&s, "1.0.0", &[("LATENCY_MS", "5")]);
    s.walk("1.0.0", "staging");
    let first = gate_output(&s);
    assert!(first.contains("previous: none with this config"), "{first}");
    assert!(first.contains("verdict: passed"), "{first}");

    release(&s, "1.1.0", &[("LATENCY_MS", "15")]);
    s.walk("1.1.0", "testing");
    let out = s.cli(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let output = gate_output(&s);
    assert!(output.contains("verdict: failed"), "{output}");
    assert!(
        output.contains("worse than the previous release's"),
        "the gate names both releases' latency: {output}"
    );
    assert!(output.contains("web@1.0.0 (run"), "{output}");
    assert_eq!(s.version("staging").as_deref(), Some("1.0.0"));
    let refused = s.refused(&["promote", "web@1.1.0", "--to", "production"]);
    assert!(refused.contains("not verified in staging"), "{refused}");

    release(&s, "1.2.0", &[("LATENCY_MS", "5")]);
    s.walk("1.2.0", "staging");
    let same = gate_output(&s);
    assert!(
        same.contains("verdict: passed: against the previous release"),
        "{same}"
    );
}

#[test]
fn a_release_that_errors_on_one_percent_of_requests_fails_naming_the_request() {
    let s = server(GATE, "");
    release(&s, "1.0.0", &[("ERR_EVERY", "5")]);
    s.walk("1.0.0", "testing");
    let out = s.cli(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let output = gate_output(&s);
    assert!(output.contains("is over max_error_rate"), "{output}");
    assert!(output.contains("POST /api/orders:"), "{output}");
    assert!(output.contains("× 500"), "{output}");
}

/// The 99th percentile of closed-loop ApacheBench (`ab -k -c 1`), in milliseconds. (Debian's
/// wrk 4.1 corrects its histogram for the time a connection waited, so it does not hide a stall.)
fn closed_loop_p99(url: &str) -> f64 {
    let out = std::process::Command::new("ab")
        .args(["-k", "-c", "1", "-t", "3", "-n", "1000000", url])
        .output()
        .expect("ab runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = said
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .unwrap_or_else(|| panic!("no 99% line: {said}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_stall_that_a_closed_loop_hides_shows_in_the_corrected_p99() {
    let s = server("isolation = \"none\"", "");
    release(&s, "1.0.0", &[("STALL", "")]);
    s.walk("1.0.0", "staging");
    let url = format!("{}/", s.url("staging"));
    let closed = closed_loop_p99(&url);
    let report = s.json(&[
        "load",
        "run",
        "web",
        "--env",
        "staging",
        "--rate",
        "200",
        "--duration",
        "3s",
    ]);
    let corrected = report["run"]["figures"]["p99_ms"].as_f64().unwrap();
    eprintln!(
        "a 500 ms stall once a second: closed-loop ab p99 {closed:.1} ms, the gate's p99 {corrected:.1} ms"
    );
    assert!(closed < 100.0, "closed-loop ab's p99: {closed} ms");
    assert!(corrected > 300.0, "the corrected p99: {corrected} ms");
}

#[test]
fn the_generator_holds_2000_requests_a_second_counted_at_the_app_and_a_rate_it_cannot_keep_is_inconclusive()
 {
    let s = server("isolation = \"none\"", "");
    release(&s, "1.0.0", &[]);
    s.walk("1.0.0", "staging");
    let count = || -> u64 {
        s.get(&format!("{}/count", s.url("staging")))
            .unwrap()
            .body
            .trim()
            .parse()
            .unwrap()
    };
    let before = count();
    let report = s.json(&[
        "load",
        "run",
        "web",
        "--env",
        "staging",
        "--rate",
        "2000",
        "--duration",
        "10s",
    ]);
    let at_app = count() - before;
    // 1 s of warmup and 10 s measured.
    let expected = 2000 * 11;
    let achieved = report["run"]["figures"]["achieved_rate"].as_f64().unwrap();
    eprintln!(
        "2,000 req/s asked: {at_app} requests at the app (expected {expected}), {achieved:.1} req/s sent in the measured 10 s"
    );
    assert!(
        (at_app as f64 - expected as f64).abs() <= expected as f64 * 0.01,
        "{at_app} at the app"
    );
    assert!((achieved - 2000.0).abs() <= 20.0, "{achieved}");

    // 200,000 req/s against an app that takes 20 ms: never a pass.
    release(&s, "1.1.0", &[("LATENCY_MS", "20")]);
    s.walk("1.1.0", "staging");
    let out = s.cli(&[
        "load",
        "run",
        "web",
        "--env",
        "staging",
        "--rate",
        "200000",
        "--duration",
        "2s",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("verdict: inconclusive"), "{said}");
    assert!(said.contains("the rate was not kept"), "{said}");
}

#[test]
fn production_refuses_load_without_load_allow_and_an_admin() {
    let s = server("", "");
    release(&s, "1.0.0", &[]);
    s.walk("1.0.0", "production");
    let deployer = s.token("dee", "deployer", &[]);
    let args = [
        "load",
        "run",
        "web",
        "--env",
        "production",
        "--duration",
        "1s",
    ];
    let by_deployer = s.refused_as(&deployer, &args);
    assert!(by_deployer.contains("only by an admin"), "{by_deployer}");
    let by_admin = s.refused(&args);
    assert!(
        by_admin.contains("[environments.production.load] allow = true"),
        "{by_admin}"
    );
    // Elsewhere a deployer may; the baseline needs the gate's config.
    s.ok_as(
        &deployer,
        &[
            "load",
            "run",
            "web",
            "--env",
            "staging",
            "--rate",
            "50",
            "--duration",
            "1s",
        ],
    );
    let no_gate = s.refused(&["load", "baseline", "web", "--env", "staging"]);
    assert!(
        no_gate.contains("no [environments.staging.verify.load]"),
        "{no_gate}"
    );
    wait_for("the runs to be listed", || {
        !s.messages_of("load.ran").is_empty()
    });
}
