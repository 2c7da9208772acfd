//! Schema parity end to end: `shipgate diff` reads both environments' databases (SQLite files
//! declared in `[apps.web.data]`) and shows a column added in staging as one line; with
//! `parity.schema = true` production's parity gate waits on it until it is declared in
//! `differs`.

use serde_json::Value;

use crate::helpers::{four_envs_with, python, spawn_server, text, wait_for};

/// A SQLite database at `path` made by `sql`.
fn database(path: &std::path::Path, sql: &str) {
    python(&format!(
        "import sqlite3\nc = sqlite3.connect({path:?})\nc.executescript({sql:?})\nc.commit()",
        path = path.display().to_string(),
    ));
}

const SHOP: &str =
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL NOT NULL CHECK (amount > 0));
CREATE INDEX orders_amount_idx ON orders (amount);";

#[test]
fn a_column_added_in_staging_is_one_line_and_holds_production_until_declared() {
    let config = four_envs_with(
        "",
        &[
            (
                "staging",
                "mirrors = \"production\"\ndiffers = [\"listen\", \"require.*\"]",
            ),
            (
                "production",
                "require.parity = \"staging\"\nparity.schema = true",
            ),
        ],
    )
    .replace(
        "health = \"/healthz\"\n",
        "health = \"/healthz\"\n\n[apps.web.data]\nstaging = \"sqlite://staging.db\"\nproduction = \"sqlite://production.db\"\n",
    );
    let mut s = spawn_server(&config);
    database(&s.dir.path().join("production.db"), SHOP);
    database(
        &s.dir.path().join("staging.db"),
        &format!("{SHOP}\nALTER TABLE orders ADD COLUMN note TEXT NOT NULL DEFAULT '';"),
    );

    let out = s.cli(&["diff", "web", "staging", "production"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let schema_lines: Vec<&str> = shown.lines().filter(|l| l.contains("schema.")).collect();
    assert_eq!(schema_lines.len(), 1, "{shown}");
    assert!(
        schema_lines[0].contains("ONLY IN A")
            && schema_lines[0].contains("schema.orders.column.note")
            && schema_lines[0].contains("TEXT NOT NULL DEFAULT ''"),
        "{shown}"
    );
    let json = s.cli(&["diff", "web", "staging", "production", "--output", "json"]);
    let diff: Value = serde_json::from_slice(&json.stdout).unwrap();
    let items = diff["items"].as_array().unwrap();
    let same = |key: &str| {
        items
            .iter()
            .find(|i| i["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {diff}"))["class"]
            == "same"
    };
    assert!(same("schema.orders.column.amount"));
    assert!(same("schema.orders.index.orders_amount_idx"));
    assert!(same("schema.orders.constraint.orders_amount_check"));

    s.register("1.0.0", &[]);
    s.walk("1.0.0", "staging");
    s.ok(&["promote", "web@1.0.0", "--to", "production"]);
    wait_for(
        "the parity gate to hold the promotion on the schema",
        || {
            s.waits("production").first().is_some_and(|w| {
                w.starts_with(
                    "parity with staging: 1 unexpected difference(s): schema.orders.column.note",
                )
            })
        },
    );
    assert_eq!(
        s.version("production"),
        None,
        "nothing deployed while they differ"
    );

    let declared = s.config_text().replace(
        "parity.schema = true",
        "parity.schema = true\ndiffers = [\"schema.orders.column.note\"]",
    );
    s.rewrite_config(&declared);
    s.ok(&["reload"]);
    wait_for(
        "the promotion to proceed once the difference is declared",
        || s.cli(&["status"]).status.success() && s.latest("production")["state"] == "succeeded",
    );
    let diff = s.cli(&["diff", "web", "staging", "production"]);
    let note = text(&diff)
        .lines()
        .find(|l| l.contains("schema.orders.column.note"))
        .map(str::to_owned);
    assert!(
        note.as_deref().is_some_and(|l| l.starts_with("expected")),
        "{}",
        text(&diff)
    );
}
