//! The release page's load test panel over plain HTTP: web@1.1.0, three times slower than
//! web@1.0.0, is stopped by staging's load gate, and its release page shows the verdict, both
//! releases' figures side by side (the same p99s as the gate's text report) and both latency
//! distributions drawn in one SVG.

use crate::dashboard::{raw, sign_in};
use crate::helpers::{four_envs_with, spawn_server, text};
use crate::load_gate::{gate_output, release};

const GATE: &str = "[environments.staging.verify.load]\nrate = 100\nduration = \"2s\"\nwarmup = \"1s\"\nconnections = 8\nmax_error_rate = 0.001\nmax_p99 = \"1s\"\nmax_regression = 0.5\nrequests = [\n  { method = \"GET\", path = \"/\", weight = 1 },\n]";

/// The report's `p99` row: this release's figure and the previous one's (`15.4 ms`).
fn p99s(report: &str) -> (String, String) {
    let line = report
        .lines()
        .find(|l| l.starts_with("p99 "))
        .unwrap_or_else(|| panic!("no p99 row: {report}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{line}");
    (
        format!("{} {}", words[1], words[2]),
        format!("{} {}", words[3], words[4]),
    )
}

#[test]
fn the_release_page_shows_the_load_gate_beside_the_previous_release_with_both_distributions() {
    let s = spawn_server(&four_envs_with("", &[("staging", GATE)]));
    release(&s, "1.0.0", &[("LATENCY_MS", "5")]);
    s.walk("1.0.0", "staging");
    release(&s, "1.1.0", &[("LATENCY_MS", "15")]);
    s.walk("1.1.0", "testing");
    let out = s.cli(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = gate_output(&s);
    assert!(report.contains("verdict: failed"), "{report}");
    let (now, then) = p99s(&report);

    let cookie = sign_in(&s, &s.admin_token());
    let (status, _, page) = raw(
        &s,
        "GET",
        "/apps/web/releases/1.1.0",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(status, 200, "{page}");
    let start = page
        .find("<section class=\"load\" data-env=\"staging\"")
        .unwrap_or_else(|| panic!("no load panel: {page}"));
    let panel = &page[start..];
    let panel = &panel[..panel.find("</section>").unwrap()];

    assert!(panel.contains("Load test"), "{panel}");
    assert!(panel.contains("▲</span> failed"), "the badge: {panel}");
    assert!(
        panel.contains("<p class=\"load-verdict\">failed: ")
            && panel.contains(&format!("p99 {now} is ")),
        "the verdict in words: {panel}"
    );
    assert!(panel.contains("web@1.1.0 (this release)"), "{panel}");
    assert!(panel.contains("web@1.0.0 (run #"), "{panel}");
    assert!(
        panel.contains(&format!(
            "<th scope=\"row\">p99</th><td>{now}</td><td>{then}</td>"
        )),
        "the p99s of the gate's report ({now} against {then}): {panel}"
    );
    for figure in ["achieved rate", "p50", "p90", "max", "errors"] {
        assert!(
            panel.contains(&format!("<th scope=\"row\">{figure}</th>")),
            "{figure}: {panel}"
        );
    }

    let svg = &panel[panel.find("<svg").expect("an inline SVG")..];
    assert_eq!(svg.matches("<polyline").count(), 2, "two series: {svg}");
    assert!(svg.contains("<g class=\"series\" data-release=\"web@1.1.0\">"));
    assert!(svg.contains("<g class=\"series\" data-release=\"web@1.0.0\">"));
    assert!(
        svg.contains(">web@1.1.0</text>") && svg.contains(">web@1.0.0</text>"),
        "the legend names both: {svg}"
    );
    assert!(svg.contains(">p99<") && svg.contains(">max<"), "{svg}");
    assert!(!panel.contains("<script"), "the panel needs no script");

    // 1.0.0's page shows its own gate run, with nothing to compare it with.
    let (status, _, first) = raw(
        &s,
        "GET",
        "/apps/web/releases/1.0.0",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        first.contains("<p class=\"load-verdict\">passed: "),
        "{first}"
    );
    assert!(first.contains("no earlier run with this config"), "{first}");
}
