//! The README's quick start: `shipgate demo --exit` walks the sample app through the four
//! environments and ends with what is live where.

use crate::helpers::{command, text};

#[test]
fn the_demo_walks_the_sample_app_to_production_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["demo", "--exit"])
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("what is live where:"), "{said}");
    let production = said
        .lines()
        .find(|l| l.starts_with("web  production"))
        .unwrap_or_else(|| panic!("no production row: {said}"));
    assert!(
        production.contains("1.0.0") && production.contains("healthy"),
        "{production}"
    );
}
