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

/// What a release is made of: an artifact (a folder or an archive) or an image.
pub enum From {
    /// `--artifact`.
    Artifact(std::path::PathBuf),
    /// `--image`.
    Image(String),
    /// `--artifact DIR --base IMAGE`: the folder as a layer on the image, at `/app`.
    OnBase {
        /// The folder.
        artifact: std::path::PathBuf,
        /// The base image's reference.
        base: String,
    },
}

/// Where `--base` puts the artifact's folder in the image, and where its `run` starts.
const APP_DIR: &str = "app";

/// Copies the image `from` (any reference skopeo reads) into a new OCI layout at `layout`,
/// tagged `tag`; errors name the `option` it came from.
fn skopeo_to_layout(from: &str, layout: &Path, tag: &str, option: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", from])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running skopeo to read {from} (apt-get install -y skopeo)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{option}: skopeo could not read {from}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// An OCI layout in `work` of `base` (any reference skopeo reads; a registry's as
/// `docker://`) with the folder `dir` added as one layer at `/app`, its working directory;
/// `run` of the app (or the base's command) starts there.
fn pack_onto_base(dir: &Path, base: &str, work: &Path) -> anyhow::Result<std::path::PathBuf> {
    use shipgate_core::image::ImageRef;
    anyhow::ensure!(
        dir.is_dir(),
        "--artifact {} must be a folder with --base",
        dir.display()
    );
    let parsed = ImageRef::parse(base).map_err(|e| anyhow::anyhow!("--base: {e}"))?;
    let source = match &parsed {
        ImageRef::Registry { .. } if !base.starts_with("docker://") => format!("docker://{base}"),
        _ => base.to_owned(),
    };
    let base_layout = work.join("base");
    skopeo_to_layout(&source, &base_layout, "base", "--base")?;
    let mut layer = Vec::new();
    shipgate_store::artifact::pack_dir_under(dir, Path::new(APP_DIR), &mut layer)
        .with_context(|| format!("packing {}", dir.display()))?;
    let layout = work.join("layout");
    let run = shipgate_store::RunConfigJson {
        working_dir: Some(format!("/{APP_DIR}")),
        ..Default::default()
    };
    shipgate_store::write_layout(&layout, Some(&base_layout), &[layer], run, "release")
        .context("writing the image")?;
    Ok(layout)
}

/// Where a release comes from: its commit, when that was made, and free text.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The commit.
    pub commit: Option<String>,
    /// When it was made (RFC 3339); `release create` reads it from git for `commit` when not
    /// given ([`Source::with_git_time`]).
    pub commit_time: Option<String>,
    /// Free text.
    pub notes: Option<String>,
}

impl Source {
    /// This source with its commit's time read from git when a commit is named without one,
    /// and why git could not tell it, if it could not.
    pub fn with_git_time(mut self) -> (Self, Option<UnknownCommitTime>) {
        let (None, Some(commit)) = (&self.commit_time, &self.commit) else {
            return (self, None);
        };
        match git_commit_time(commit) {
            Ok(at) => {
                self.commit_time = Some(at);
                (self, None)
            }
            Err(why) => (self, Some(why)),
        }
    }
}

/// Why git could not tell when a release's commit was made: DORA's lead time, which counts
/// from it, is then not computed for that release.
#[derive(Debug, thiserror::Error)]
pub enum UnknownCommitTime {
    /// `git` could not be run at all.
    #[error("git could not be run to read the time of commit {commit} ({error})")]
    NoGit {
        /// The commit named.
        commit: String,
        /// Why it could not be run.
        error: String,
    },
    /// The current folder is in no git repository.
    #[error("the time of commit {commit} is unknown: {dir} is not inside a git repository")]
    NotARepository {
        /// The commit named.
        commit: String,
        /// The current folder.
        dir: String,
    },
    /// The repository has no such commit.
    #[error("the time of commit {commit} is unknown: git does not know commit {commit} in {dir}")]
    UnknownCommit {
        /// The commit named.
        commit: String,
        /// The current folder.
        dir: String,
    },
}

impl UnknownCommitTime {
    /// The commit named.
    pub fn commit(&self) -> &str {
        match self {
            Self::NoGit { commit, .. }
            | Self::NotARepository { commit, .. }
            | Self::UnknownCommit { commit, .. } => commit,
        }
    }

    /// The warning `release create` gives: what is lost, and the two ways to keep it.
    pub fn warning(&self) -> String {
        format!(
            "{self}, so lead time will not be computed for this release (DORA counts it from the \
             commit's time). To keep it, run it inside the repository that holds the commit, or \
             pass the commit's time with --commit-time (`git show -s --format=%cI {}` prints it)",
            self.commit()
        )
    }
}

/// The commit time of `commit` in the git repository of the current folder.
fn git_commit_time(commit: &str) -> Result<String, UnknownCommitTime> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
    };
    let shown = git(&["show", "-s", "--format=%cI", "--end-of-options", commit]).map_err(|e| {
        UnknownCommitTime::NoGit {
            commit: commit.to_owned(),
            error: e.to_string(),
        }
    })?;
    let text = String::from_utf8_lossy(&shown.stdout).trim().to_owned();
    if shown.status.success() && !text.is_empty() {
        return Ok(text);
    }
    let dir = std::env::current_dir()
        .map_or_else(|_| "the current folder".into(), |d| d.display().to_string());
    let in_repository = git(&["rev-parse", "--git-dir"]).is_ok_and(|o| o.status.success());
    let commit = commit.to_owned();
    Err(if in_repository {
        UnknownCommitTime::UnknownCommit { commit, dir }
    } else {
        UnknownCommitTime::NotARepository { commit, dir }
    })
}

/// `--commit-time` as the server takes it, refused with an example when it is not RFC 3339.
fn checked_commit_time(t: Option<&str>) -> anyhow::Result<Option<String>> {
    t.map(|t| {
        let at: jiff::Timestamp = t.parse().map_err(|e| {
            anyhow::anyhow!(
                "--commit-time `{t}` is not an RFC 3339 time such as 2026-12-01T09:30:00Z: {e}"
            )
        })?;
        Ok(at.to_string())
    })
    .transpose()
}

/// Registers a release with the server; shared by the command, the demo and the benchmarks.
/// The commit's time is sent as given (see [`Source::with_git_time`]).
pub async fn upload(
    client: &Client,
    app: &str,
    version: &str,
    artifact: &Path,
    source: Source,
) -> anyhow::Result<CreatedRelease> {
    let commit_time = check_request(app, version, &source)?;
    let file = ArtifactFile::prepare(artifact)?;
    send(client, app, version, file.path(), source, commit_time, None).await
}

/// The app, version and commit time of a release to register, refused before anything is read
/// or sent; the commit time as the server takes it.
fn check_request(app: &str, version: &str, source: &Source) -> anyhow::Result<Option<String>> {
    AppName::parse(app).map_err(|e| anyhow::anyhow!(e.0))?;
    Version::parse(version).map_err(|e| anyhow::anyhow!(e.0))?;
    checked_commit_time(source.commit_time.as_deref())
}

/// Uploads `body` (an artifact, or an image layout's tar when `image` names where it came
/// from) with its digest, `source` and its checked `commit_time`.
async fn send(
    client: &Client,
    app: &str,
    version: &str,
    body: &Path,
    source: Source,
    commit_time: Option<String>,
    image: Option<String>,
) -> anyhow::Result<CreatedRelease> {
    let digest = shipgate_store::artifact::digest_file(body)
        .with_context(|| format!("hashing {}", body.display()))?;
    let query = ReleaseQuery {
        version: version.to_owned(),
        digest: digest.to_string(),
        commit: source.commit,
        commit_time,
        notes: source.notes,
        image,
    };
    client.upload_release(app, &query, body).await
}

/// Registers an image release: an `oci-archive:` is uploaded as it is, an `oci:` folder packed,
/// a `docker-archive:` turned into an OCI layout by skopeo first; a registry's image is pulled
/// by the server (with the credentials its config names), so nothing is uploaded.
pub async fn upload_image(
    client: &Client,
    app: &str,
    version: &str,
    reference: &str,
    source: Source,
) -> anyhow::Result<CreatedRelease> {
    use shipgate_core::image::ImageRef;
    let commit_time = check_request(app, version, &source)?;
    let parsed = ImageRef::parse(reference).map_err(|e| anyhow::anyhow!("--image: {e}"))?;
    let work = tempfile::tempdir().context("creating a temporary folder")?;
    let body = match &parsed {
        ImageRef::OciArchive { path, .. } => {
            anyhow::ensure!(
                path.is_file(),
                "--image: {} is not a file (an oci-archive is a tar of an OCI layout)",
                path.display()
            );
            path.clone()
        }
        ImageRef::OciDir { path, .. } => {
            anyhow::ensure!(
                path.join("index.json").is_file(),
                "--image: {} is not an OCI layout (it has no index.json)",
                path.display()
            );
            let tar = work.path().join("layout.tar");
            shipgate_store::artifact::pack_layout(path, &tar)
                .with_context(|| format!("packing {}", path.display()))?;
            tar
        }
        ImageRef::DockerArchive { path, name } => {
            let layout = work.path().join("layout");
            let from = match name {
                Some(n) => format!("docker-archive:{}:{n}", path.display()),
                None => format!("docker-archive:{}", path.display()),
            };
            skopeo_to_layout(&from, &layout, "image", "--image")?;
            let tar = work.path().join("layout.tar");
            shipgate_store::artifact::pack_layout(&layout, &tar)
                .with_context(|| format!("packing {}", layout.display()))?;
            tar
        }
        ImageRef::Registry { .. } => {
            let empty = work.path().join("empty");
            std::fs::write(&empty, b"").context("writing an empty body")?;
            empty
        }
    };
    send(
        client,
        app,
        version,
        &body,
        source,
        commit_time,
        Some(reference.to_owned()),
    )
    .await
}

pub(super) async fn release_create(
    g: &Global,
    out: Printer,
    app: &str,
    version: &str,
    from: &From,
    source: Source,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let (source, unknown) = source.with_git_time();
    if let Some(unknown) = unknown {
        out.warn(&unknown.warning());
    }
    let answer = match from {
        From::Artifact(artifact) => upload(&client, app, version, artifact, source).await?,
        From::Image(reference) => upload_image(&client, app, version, reference, source).await?,
        From::OnBase { artifact, base } => {
            let work = tempfile::tempdir().context("creating a temporary folder")?;
            let layout = pack_onto_base(artifact, base, work.path())?;
            let reference = format!("oci:{}:release", layout.display());
            upload_image(&client, app, version, &reference, source).await?
        }
    };
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

pub(super) async fn release_show(
    g: &Global,
    out: Printer,
    release: &shipgate_core::ReleaseRef,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    let detail: shipgate_api::answers::ReleaseDetail = client
        .get(
            &format!("/apps/{}/releases/{}", release.app, release.version),
            &[],
        )
        .await?;
    out.print(&detail, |d| {
        let r = &d.release;
        let mut lines = vec![
            format!("{}@{}", r.app, r.version),
            format!("digest   {}", r.digest),
            format!("created  {} by {}", r.created_at, r.created_by),
            format!("commit   {}", dash(r.commit.as_deref())),
        ];
        match &d.image {
            None => lines.push(format!("artifact {} bytes (a directory release)", r.size)),
            Some(i) => {
                let user = if i.user.is_empty() {
                    "root in the image (shipgate never runs it as root)"
                } else {
                    &i.user
                };
                lines.extend([
                    format!(
                        "image    {}, {} layers, {}",
                        i.platform,
                        i.layers.len(),
                        size(i.size)
                    ),
                    format!("user     {user}"),
                    format!("command  {}", i.command.join(" ")),
                    format!(
                        "workdir  {}",
                        if i.workdir.is_empty() {
                            "/"
                        } else {
                            &i.workdir
                        }
                    ),
                    format!(
                        "ports    {}",
                        if i.exposed_ports.is_empty() {
                            "-".to_owned()
                        } else {
                            i.exposed_ports.join(" ")
                        }
                    ),
                    String::new(),
                ]);
                let rows: Vec<Vec<String>> = i
                    .layers
                    .iter()
                    .map(|l| vec![l.digest.clone(), size(l.size), l.media_type.clone()])
                    .collect();
                lines.push(table(&["LAYER", "SIZE", "TYPE"], &rows));
            }
        }
        lines.join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// Bytes as people read them: `1.2 MiB`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
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
