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

/// Registers a release with the server; shared by the command, the demo and the benchmarks.
pub async fn upload(
    client: &Client,
    app: &str,
    version: &str,
    artifact: &Path,
    commit: Option<String>,
    notes: Option<String>,
) -> anyhow::Result<CreatedRelease> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!(e.0))?;
    Version::parse(version).map_err(|e| anyhow::anyhow!(e.0))?;
    let file = ArtifactFile::prepare(artifact)?;
    let digest = shipgate_store::artifact::digest_file(file.path())
        .with_context(|| format!("hashing {}", artifact.display()))?;
    let query = ReleaseQuery {
        version: version.to_owned(),
        digest: digest.to_string(),
        commit,
        notes,
    };
    client.upload_release(app, &query, file.path()).await
}

pub(super) async fn release_create(
    g: &Global,
    out: Printer,
    app: &str,
    version: &str,
    artifact: &Path,
    commit: Option<String>,
    notes: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let answer = upload(&client, app, version, artifact, commit, notes).await?;
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
