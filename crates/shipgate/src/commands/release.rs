//! `shipgate release create` and `release list`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use shipgate_api::answers::CreatedRelease;
use shipgate_api::records::Release;
use shipgate_api::requests::ReleaseQuery;
use shipgate_core::{AppName, Version};

use crate::cli::Global;
use crate::client::{Client, connect};
use crate::output::{Printer, dash, table};

/// The archive to upload: a directory packed into a temporary .tar.gz, or the user's own file.
pub enum ArtifactFile {
    /// Packed from a directory; deleted when dropped.
    Packed(tempfile::TempPath),
    /// A .tar or .tar.gz given as is.
    Given(std::path::PathBuf),
}

impl ArtifactFile {
    /// Packs a directory, or takes an archive file as it is.
    pub fn prepare(path: &Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            let temp = tempfile::Builder::new()
                .suffix(".tar.gz")
                .tempfile()
                .context("creating a temporary archive")?;
            shipgate_store::artifact::pack_dir(path, std::io::BufWriter::new(temp.as_file()))
                .with_context(|| format!("packing {}", path.display()))?;
            return Ok(Self::Packed(temp.into_temp_path()));
        }
        if !path.is_file() {
            anyhow::bail!(
                "{} is neither a directory nor a .tar/.tar.gz file",
                path.display()
            );
        }
        Ok(Self::Given(path.to_owned()))
    }

    /// Where the archive is.
    pub fn path(&self) -> &Path {
        match self {
            Self::Packed(p) => p,
            Self::Given(p) => p,
        }
    }
}

/// Where a release comes from: its commit, when that was made, and free text.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The commit.
    pub commit: Option<String>,
    /// When it was made (RFC 3339); read from git for `commit` when not given.
    pub commit_time: Option<String>,
    /// Free text.
    pub notes: Option<String>,
}

/// The commit time of `commit` in the git repository of the current folder, if it is one.
fn git_commit_time(commit: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["show", "-s", "--format=%cI", commit])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// Registers a release with the server; shared by the command, the demo and the benchmarks.
pub async fn upload(
    client: &Client,
    app: &str,
    version: &str,
    artifact: &Path,
    source: Source,
) -> anyhow::Result<CreatedRelease> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!(e.0))?;
    Version::parse(version).map_err(|e| anyhow::anyhow!(e.0))?;
    let commit_time = match (&source.commit_time, &source.commit) {
        (Some(t), _) => {
            let at: jiff::Timestamp = t.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--commit-time `{t}` is not an RFC 3339 time such as 2026-12-01T09:30:00Z: {e}"
                )
            })?;
            Some(at.to_string())
        }
        (None, Some(commit)) => git_commit_time(commit),
        (None, None) => None,
    };
    let file = ArtifactFile::prepare(artifact)?;
    let digest = shipgate_store::artifact::digest_file(file.path())
        .with_context(|| format!("hashing {}", artifact.display()))?;
    let query = ReleaseQuery {
        version: version.to_owned(),
        digest: digest.to_string(),
        commit: source.commit,
        commit_time,
        notes: source.notes,
    };
    client.upload_release(app, &query, file.path()).await
}

pub(super) async fn release_create(
    g: &Global,
    out: Printer,
    app: &str,
    version: &str,
    artifact: &Path,
    source: Source,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let answer = upload(&client, app, version, artifact, source).await?;
    out.print(&answer, |a| {
        let r = &a.release;
        if a.created {
            format!(
                "registered {}@{} ({}, {} bytes)",
                r.app, r.version, r.digest, r.size
            )
        } else {
            format!(
                "{}@{} is already registered with this content ({}); nothing changed",
                r.app, r.version, r.digest
            )
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn release_list(
    g: &Global,
    out: Printer,
    app: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let query = super::app_query(app);
    let releases: Vec<Release> = client.get("/releases", &query).await?;
    out.print(&releases, |rs| {
        let rows: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                vec![
                    r.app.to_string(),
                    r.version.to_string(),
                    format!("sha256:{}", r.digest.short()),
                    r.created_by.clone(),
                    r.created_at.to_string(),
                    dash(r.commit.as_deref()),
                ]
            })
            .collect();
        table(
            &["APP", "VERSION", "DIGEST", "BY", "CREATED", "COMMIT"],
            &rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}
