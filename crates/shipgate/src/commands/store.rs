//! `shipgate store copy`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use shipgate_core::config::DataLocation;
use shipgate_store::{SqlStore, Store, copy_store};

use crate::output::Printer;

#[derive(Serialize)]
struct Copied {
    from: String,
    to: String,
    rows: Vec<(String, u64)>,
    artifacts: u64,
    artifact_bytes: u64,
    artifacts_missing: Vec<String>,
    events_verified: usize,
    /// Whether the agents' CA went along (their certificates stay valid on every server).
    agent_ca: bool,
}

fn location(what: &str, s: &str) -> anyhow::Result<DataLocation> {
    let here = std::env::current_dir().context("reading the current folder")?;
    DataLocation::parse(s, &here).with_context(|| {
        format!("--{what} `{s}` is neither sqlite://PATH nor postgres://USER:PASSWORD@HOST:PORT/DB")
    })
}

pub(super) async fn copy(
    out: Printer,
    from: &str,
    to: &str,
    artifacts: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (from, to) = (location("from", from)?, location("to", to)?);
    anyhow::ensure!(from != to, "--from and --to are the same store ({from})");
    if let DataLocation::Sqlite(path) = &from {
        anyhow::ensure!(
            path.exists(),
            "there is no SQLite store at {} (check --from)",
            path.display()
        );
    }
    // A server still running on the source would write what the copy misses: its data dir
    // is locked for the copy, which refuses while a server holds it.
    let _source_locked = match &from {
        DataLocation::Sqlite(path) => match path.parent() {
            Some(dir) if dir.join(shipgate_server::LOCK_FILE).exists() => Some(
                shipgate_server::DataDirLock::take(dir)
                    .context("the store of a running server is not copied")?,
            ),
            _ => None,
        },
        DataLocation::Postgres(_) => None,
    };
    let artifacts = artifacts.or_else(|| match &from {
        DataLocation::Sqlite(path) => path.parent().map(|dir| dir.join("artifacts")),
        DataLocation::Postgres(_) => None,
    });
    let source = SqlStore::open_at(&from)
        .await
        .with_context(|| format!("opening the source {from}"))?;
    let target = SqlStore::open_at(&to)
        .await
        .with_context(|| format!("opening the target {to}"))?;
    let report = copy_store(&source, &target, artifacts.as_deref())
        .await
        .with_context(|| format!("copying {from} into {to}; the target is left as it was"))?;
    // The hosts' agents trust the CA of the source server's data dir: every server of the
    // target takes that one, not a new one of its own.
    let ca = match &from {
        DataLocation::Sqlite(path) => path.parent().and_then(|dir| {
            let key = std::fs::read_to_string(dir.join("ca.key")).ok()?;
            let cert = std::fs::read_to_string(dir.join("ca.crt")).ok()?;
            Some(shipgate_server::ca_to_share(&key, &cert))
        }),
        DataLocation::Postgres(_) => source.shared(shipgate_server::AGENT_CA).await?,
    };
    let ca_kept = match ca {
        Some(ca) => {
            target.share_once(shipgate_server::AGENT_CA, &ca).await?;
            true
        }
        None => false,
    };
    let copied = Copied {
        from: from.to_string(),
        to: to.to_string(),
        rows: report
            .rows
            .iter()
            .map(|(t, n)| ((*t).to_owned(), *n))
            .collect(),
        artifacts: report.artifacts,
        artifact_bytes: report.artifact_bytes,
        artifacts_missing: report.artifacts_missing.clone(),
        events_verified: report.events_verified,
        agent_ca: ca_kept,
    };
    out.print(&copied, |c| {
        let rows: Vec<String> = c
            .rows
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let mut text = format!(
            "copied {} into {}: {}\nartifacts: {} ({} bytes)\naudit chain: {} events, verified on the target\n",
            c.from,
            c.to,
            rows.join(", "),
            c.artifacts,
            c.artifact_bytes,
            c.events_verified
        );
        if c.agent_ca {
            text.push_str("agents' CA: kept for every server of the target\n");
        }
        if !c.artifacts_missing.is_empty() {
            text.push_str(&format!(
                "not copied, no longer stored (pruned by retention): {}\n",
                c.artifacts_missing.join(", ")
            ));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}
