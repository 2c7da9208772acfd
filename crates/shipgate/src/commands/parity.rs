//! `shipgate diff` and `drift`.

use std::process::ExitCode;

use shipgate_api::parity::{Diff, DriftReport};
use shipgate_api::records::Promotion;
use shipgate_api::requests::AppEnv;
use shipgate_core::parity::{DiffItem, ItemClass};

use super::promotion::finish_promotion;
use crate::cli::Global;
use crate::client::connect;
use crate::output::{Printer, dash, table};

/// The sections of a diff: what is being promoted, each environment's own gates, and the rest.
const SECTIONS: [(&str, &str); 3] = [
    ("releases", "release."),
    (
        "gates (each environment's own: require.*, verify.*)",
        "require.|verify.",
    ),
    ("settings", ""),
];

/// The section of an item's key (an index into [`SECTIONS`]).
fn section_of(key: &str) -> usize {
    if key.starts_with("release.") {
        0
    } else if key.starts_with("require.") || key.starts_with("verify.") {
        1
    } else {
        2
    }
}

pub(super) async fn diff(
    g: &Global,
    out: Printer,
    app: &str,
    a: &str,
    b: &str,
    strict: bool,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = [
        ("app", app.to_owned()),
        ("a", a.to_owned()),
        ("b", b.to_owned()),
    ];
    let diff: Diff = client.get("/diff", &query).await?;
    // Releases and gates differ in a healthy pipeline: they count only with --strict.
    let counted = |i: &&DiffItem| i.class.is_unexpected() && (strict || section_of(&i.key) == 2);
    let failing = diff.items.iter().filter(counted).count();
    out.print(&diff, |d| {
        let same = d.items.iter().filter(|i| i.class == ItemClass::Same).count();
        let mut text = format!("{app}: {a} (A) compared with {b} (B); {same} items the same\n");
        for (n, (title, _)) in SECTIONS.iter().enumerate() {
            let rows: Vec<Vec<String>> = d
                .items
                .iter()
                .filter(|i| i.class != ItemClass::Same && section_of(&i.key) == n)
                .map(|i| {
                    let class = match i.class {
                        ItemClass::Same => "same",
                        ItemClass::Expected => "expected",
                        ItemClass::Unexpected => "UNEXPECTED",
                        ItemClass::OnlyInA => "ONLY IN A",
                        ItemClass::OnlyInB => "ONLY IN B",
                    };
                    let (va, vb) = sides(i);
                    vec![class.to_owned(), i.key.clone(), short(&va), short(&vb)]
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            text.push_str(&format!("\n{title}:\n"));
            text.push_str(&table(
                &["CLASS", "ITEM", &format!("A: {a}"), &format!("B: {b}")],
                &rows,
            ));
        }
        text.push('\n');
        text.push_str(if failing > 0 {
            "unexpected differences in the settings: fix them, or declare them in `differs` of the environment that mirrors the other\n"
        } else if d.unexpected && !strict {
            "no unexpected difference in the settings (releases and gates differ, as they do in a pipeline; --strict counts them)\n"
        } else {
            "no unexpected difference\n"
        });
        text
    });
    Ok(if failing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A digest shortened for reading (`sha256:` and 12 hex digits); anything else as it is.
fn short(value: &str) -> String {
    match value.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => value.to_owned(),
    }
}

fn sides(i: &DiffItem) -> (String, String) {
    if i.secret {
        let hidden = "(secret, differs)".to_owned();
        (hidden.clone(), hidden)
    } else {
        (dash(i.a.as_deref()), dash(i.b.as_deref()))
    }
}

pub(super) async fn drift(
    g: &Global,
    out: Printer,
    app: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = super::app_query(app);
    let reports: Vec<DriftReport> = client.get("/drift", &query).await?;
    let drifted = reports.iter().any(|r| !r.drift.is_empty());
    out.print(&reports, |reports| {
        let mut text = String::new();
        for r in reports {
            let verdict = if r.drift.is_empty() {
                "matches its record"
            } else {
                "DRIFTED"
            };
            text.push_str(&format!(
                "{}@{} in {}: {verdict}\n",
                r.app, r.version, r.env
            ));
            for item in &r.drift {
                text.push_str(&format!("  - {item}\n"));
            }
        }
        if reports.is_empty() {
            text.push_str("nothing is live, so nothing can drift\n");
        } else if drifted {
            for r in reports.iter().filter(|r| !r.drift.is_empty()) {
                text.push_str(&format!(
                    "heal {}@{} in {}: shipgate drift {} --env {} --heal\n",
                    r.app, r.version, r.env, r.app, r.env
                ));
            }
        }
        text
    });
    Ok(if drifted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) async fn drift_heal(
    g: &Global,
    out: Printer,
    app: &str,
    env: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let body = AppEnv {
        app: app.to_owned(),
        env: env.to_owned(),
    };
    let promotion: Promotion = client.post("/drift/heal", &body).await?;
    finish_promotion(&client, out, promotion, true).await
}
