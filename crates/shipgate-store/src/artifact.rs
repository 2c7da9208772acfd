//! Release artifacts: deterministic packing of a directory, checked receiving of an upload,
//! content-addressed storage and read-only unpacking.
//!
//! An upload is written to a temporary file while it is hashed, its digest compared with the
//! claimed one, and every entry checked (no absolute path, no `..`, no link leading outside,
//! nothing but files, folders and links) before anything is stored or extracted.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shipgate_core::{ByteSize, Digest};
use tokio::io::AsyncWriteExt;

/// Why an artifact was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Bigger than `server.max_artifact_size`.
    #[error(
        "the artifact is larger than the server's limit of {limit} (raise `max_artifact_size` in [server] if this is expected)"
    )]
    TooLarge {
        /// The limit.
        limit: ByteSize,
    },
    /// The bytes received do not hash to the digest the client computed.
    #[error(
        "the artifact was damaged in transit: the client computed {claimed} but the server received {actual}; upload it again"
    )]
    DigestMismatch {
        /// Digest the client sent.
        claimed: Digest,
        /// Digest of what arrived.
        actual: Digest,
    },
    /// An entry could escape the release directory or is not a plain file, folder or link.
    #[error("the artifact is refused, nothing was extracted: entry `{entry}` {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// It would unpack to more bytes or more entries than the server allows.
    #[error(
        "the artifact is refused, nothing was extracted: it unpacks to more than the server's limit of {limit} (raise `{key}` in [server] if this is expected)"
    )]
    UnpacksTooLarge {
        /// The limit passed, as written in the config.
        limit: String,
        /// The config key that sets it.
        key: &'static str,
    },
    /// Not a tar or tar.gz archive.
    #[error("the artifact is not a readable .tar or .tar.gz archive: {0}")]
    Unreadable(String),
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArtifactError {
    let context = context.into();
    move |source| ArtifactError::Io { context, source }
}

/// Packs a directory as a gzip-compressed tar whose bytes depend only on the files' paths,
/// contents, executable bits and link targets: entries sorted, times, owners and other mode
/// bits fixed.
pub fn pack_dir(dir: &Path, out: impl Write) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &rel, fs::read_link(&full)?)?;
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &rel, io::empty())?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let exec = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if exec { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            tar.append_data(&mut header, &rel, File::open(&full)?)?;
        }
    }
    tar.into_inner()?.finish()?.flush()
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        out.push(rel.clone());
        if is_dir {
            collect(root, &rel, out)?;
        }
    }
    Ok(())
}

/// sha256 of a file, as a [`Digest`].
pub fn digest_file(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(Digest::from_sha256(&hasher.finalize().into()))
}

/// Where artifacts and unpacked releases live inside the data dir.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// What an artifact may unpack to (`server.max_unpacked_size` and `server.max_files`),
/// checked while its entries are read, before anything is extracted.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Total bytes of every file together.
    pub max_size: ByteSize,
    /// Entries: files, folders and links.
    pub max_files: u64,
}

impl UnpackLimits {
    /// The limits of a server's config.
    pub fn of(server: &shipgate_core::config::ServerConfig) -> Self {
        Self {
            max_size: server.max_unpacked_size,
            max_files: server.max_files,
        }
    }
}

/// An upload being received: written to a temporary file while it is hashed and counted.
pub struct Upload {
    file: tokio::fs::File,
    temp: tempfile::TempPath,
    hasher: Sha256,
    size: u64,
    limit: ByteSize,
    unpack: UnpackLimits,
}

/// An upload that arrived whole, matches its digest and holds only safe entries; not yet stored.
pub struct CheckedArtifact {
    temp: tempfile::TempPath,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

impl ArtifactStore {
    /// Uses `data_dir/artifacts`, `data_dir/releases` and `data_dir/tmp`, creating them and
    /// emptying `tmp`.
    pub fn open(data_dir: &Path) -> Result<Self, ArtifactError> {
        for sub in ["artifacts", "releases", "tmp"] {
            fs::create_dir_all(data_dir.join(sub))
                .map_err(io_err(format!("creating {}", data_dir.join(sub).display())))?;
        }
        // Uploads and unpacks cut off by a previous stop; nothing refers to them.
        for leftover in fs::read_dir(data_dir.join("tmp"))
            .map_err(io_err("reading tmp/"))?
            .flatten()
        {
            let path = leftover.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!("could not remove {}: {e}", path.display());
            }
        }
        Ok(Self {
            root: data_dir.to_owned(),
        })
    }

    /// The unpacked, read-only directory of an artifact.
    pub fn release_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("releases").join(digest.hex())
    }

    fn archive_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("artifacts")
            .join(format!("{}.tar", digest.hex()))
    }

    /// The archive file of the artifact of `digest` (there or not).
    pub fn archive(&self, digest: &Digest) -> PathBuf {
        self.archive_path(digest)
    }

    /// Brings the artifact of `digest` out of the database into the data dir when it is not
    /// here (registered through another server), a chunk at a time, and checks that it hashes
    /// to `digest` before it is used. Whether it is here now.
    pub async fn fetch(
        &self,
        store: &dyn crate::Store,
        digest: &Digest,
    ) -> Result<bool, ArtifactError> {
        if self.has(digest) {
            return Ok(true);
        }
        if !store.is_shared() {
            return Ok(false);
        }
        let unstored = |e: crate::StoreError| ArtifactError::Io {
            context: format!("reading artifact {digest} from the database"),
            source: io::Error::other(e.to_string()),
        };
        let Some(chunks) = store.artifact_chunks(digest).await.map_err(unstored)? else {
            return Ok(false);
        };
        let temp = tempfile::Builder::new()
            .prefix("fetch-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(io_err("creating a file for a fetched artifact"))?
            .into_temp_path();
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(io_err("opening a fetched artifact"))?;
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        for seq in 0..chunks {
            let bytes = store.artifact_chunk(digest, seq).await.map_err(unstored)?;
            hasher.update(&bytes);
            size += bytes.len() as u64;
            file.write_all(&bytes)
                .await
                .map_err(io_err("writing a fetched artifact"))?;
        }
        file.flush()
            .await
            .map_err(io_err("writing a fetched artifact"))?;
        drop(file);
        let actual = Digest::from_sha256(&hasher.finalize().into());
        if &actual != digest {
            return Err(ArtifactError::Unreadable(format!(
                "artifact {digest} in the database hashes to {actual}: it was changed there; register the release's file again"
            )));
        }
        self.store(CheckedArtifact {
            temp,
            digest: digest.clone(),
            size,
        })
        .await?;
        Ok(true)
    }

    /// Whether the artifact of `digest` is on disk (retention may have removed it).
    pub fn has(&self, digest: &Digest) -> bool {
        self.archive_path(digest).exists()
    }

    /// The bytes the artifact of `digest` and its release directory take on disk.
    pub fn size_on_disk(&self, digest: &Digest) -> u64 {
        let archive = fs::metadata(self.archive_path(digest)).map_or(0, |m| m.len());
        archive + dir_size(&self.release_dir(digest))
    }

    /// Removes the artifact of `digest` and its release directory (retention); the bytes freed.
    /// Its record stays: registering the same file again brings it back.
    pub fn remove(&self, digest: &Digest) -> Result<u64, ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        let freed = self.size_on_disk(digest);
        let dir = self.release_dir(digest);
        if dir.exists() {
            // Read-only by design: made writable again only to be removed.
            let aside = tempfile::Builder::new()
                .prefix("pruned-")
                .tempdir_in(self.root.join("tmp"))
                .map_err(io_err("making room to remove a release"))?;
            let target = aside.path().join("release");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .and_then(|()| fs::rename(&dir, &target))
                .map_err(io_err(format!("moving {} aside", dir.display())))?;
            make_writable(&target).map_err(io_err("making a removed release writable"))?;
            drop(aside);
        }
        match fs::remove_file(self.archive_path(digest)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing an artifact")(e)),
        }
        Ok(freed)
    }

    /// Starts receiving an upload of at most `limit` bytes that unpacks within `unpack`.
    pub async fn upload(
        &self,
        limit: ByteSize,
        unpack: UnpackLimits,
    ) -> Result<Upload, ArtifactError> {
        let temp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(io_err("creating a temporary upload file"))?
            .into_temp_path();
        let file = tokio::fs::File::create(&temp)
            .await
            .map_err(io_err("opening the upload file"))?;
        Ok(Upload {
            file,
            temp,
            hasher: Sha256::new(),
            size: 0,
            limit,
            unpack,
        })
    }

    /// Moves a checked artifact into place and unpacks it read-only; does nothing for an
    /// artifact already stored. Returns the release directory.
    pub async fn store(&self, artifact: CheckedArtifact) -> Result<PathBuf, ArtifactError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.store_blocking(artifact))
            .await
            .map_err(|e| ArtifactError::Io {
                context: "unpacking the artifact".into(),
                source: io::Error::other(e),
            })?
    }

    fn store_blocking(&self, artifact: CheckedArtifact) -> Result<PathBuf, ArtifactError> {
        let dir = self.release_dir(&artifact.digest);
        let archive = self.archive_path(&artifact.digest);
        if !archive.exists() {
            artifact
                .temp
                .persist(&archive)
                .map_err(|e| ArtifactError::Io {
                    context: "storing the artifact".into(),
                    source: e.error,
                })?;
        }
        if dir.exists() {
            return Ok(dir);
        }
        let staging = self.unpacked(&archive)?;
        // Renamed while still writable (moving a folder needs write permission on it), made
        // read-only in place after.
        match fs::rename(staging.path(), &dir) {
            Ok(()) => {}
            // Another upload of the same content got there first: theirs is the same bytes.
            Err(_) if dir.exists() => return Ok(dir),
            Err(e) => return Err(io_err(format!("moving the release into {}", dir.display()))(e)),
        }
        make_read_only(&dir).map_err(io_err("making the release read-only"))?;
        Ok(dir)
    }
}

/// What a release directory holds at one path, for comparison with its archive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Dir,
    File([u8; 32]),
    Link(PathBuf),
}

fn sha256_of(mut r: impl Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

fn walk(
    root: &Path,
    at: &Path,
    out: &mut std::collections::BTreeMap<PathBuf, Held>,
) -> io::Result<()> {
    for entry in fs::read_dir(at)? {
        let entry = entry?;
        let path = entry.path();
        let inside = path.strip_prefix(root).unwrap_or(&path).to_owned();
        let ty = entry.file_type()?;
        if ty.is_symlink() {
            out.insert(inside, Held::Link(fs::read_link(&path)?));
        } else if ty.is_dir() {
            out.insert(inside, Held::Dir);
            walk(root, &path, out)?;
        } else {
            out.insert(inside, Held::File(sha256_of(File::open(&path)?)?));
        }
    }
    Ok(())
}

impl ArtifactStore {
    /// How the release directory of `digest` differs from its archive: one line per changed,
    /// added or missing path. Empty when it is exactly what was uploaded.
    pub fn check_release_dir(&self, digest: &Digest) -> Result<Vec<String>, ArtifactError> {
        let unreadable = |e: io::Error| ArtifactError::Unreadable(e.to_string());
        let mut expected = std::collections::BTreeMap::new();
        let mut tar = open_archive(&self.archive_path(digest))?;
        for entry in tar.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let path = entry.path().map_err(unreadable)?.into_owned();
            let Some(inside) = normalized(&path).filter(|p| !p.as_os_str().is_empty()) else {
                continue;
            };
            let held = match entry.header().entry_type() {
                tar::EntryType::Directory => Held::Dir,
                tar::EntryType::Symlink => Held::Link(
                    entry
                        .link_name()
                        .map_err(unreadable)?
                        .map(|l| l.into_owned())
                        .unwrap_or_default(),
                ),
                _ => Held::File(sha256_of(&mut entry).map_err(unreadable)?),
            };
            // Parent folders are implied by their entries even when the archive omits them.
            for parent in inside
                .ancestors()
                .skip(1)
                .filter(|p| !p.as_os_str().is_empty())
            {
                expected.entry(parent.to_owned()).or_insert(Held::Dir);
            }
            expected.insert(inside, held);
        }
        let dir = self.release_dir(digest);
        let mut found = std::collections::BTreeMap::new();
        walk(&dir, &dir, &mut found).map_err(io_err(format!("reading {}", dir.display())))?;
        let mut drift = Vec::new();
        for (path, held) in &expected {
            match found.get(path) {
                None => drift.push(format!("missing: {}", path.display())),
                Some(f) if f != held => drift.push(format!("changed: {}", path.display())),
                Some(_) => {}
            }
        }
        for path in found.keys().filter(|p| !expected.contains_key(*p)) {
            drift.push(format!("added: {}", path.display()));
        }
        Ok(drift)
    }

    /// Puts the release directory of `digest` back as its archive holds it, in place: the folder
    /// itself stays (so instances of other environments running from it keep their working
    /// directory), and each of its entries is swapped for the fresh copy by a rename. What was
    /// there is moved aside into `tmp/`, so processes holding those files open keep them.
    /// Returns the folder the drifted entries were moved to (None if the release directory was
    /// missing altogether).
    pub fn restore_release_dir(&self, digest: &Digest) -> Result<Option<PathBuf>, ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.release_dir(digest);
        let staging = self.unpacked(&self.archive_path(digest))?;
        if !dir.exists() {
            fs::rename(staging.path(), &dir)
                .map_err(io_err(format!("moving the release into {}", dir.display())))?;
            make_read_only(&dir).map_err(io_err("making the release read-only"))?;
            return Ok(None);
        }
        // Moving entries in and out of a folder needs write permission on it.
        let mut perm = fs::metadata(&dir)
            .map_err(io_err("reading the release"))?
            .permissions();
        perm.set_mode(perm.mode() | 0o200);
        fs::set_permissions(&dir, perm).map_err(io_err("making the release writable"))?;
        let aside = tempfile::Builder::new()
            .prefix("drifted-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a folder for the drifted files"))?
            .keep();
        let fresh: Vec<std::ffi::OsString> = fs::read_dir(staging.path())
            .map_err(io_err("reading the fresh copy"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("reading the fresh copy"))?;
        for entry in fs::read_dir(&dir).map_err(io_err("reading the release"))? {
            let name = entry.map_err(io_err("reading the release"))?.file_name();
            fs::rename(dir.join(&name), aside.join(&name))
                .map_err(io_err("moving a drifted file aside"))?;
        }
        for name in &fresh {
            fs::rename(staging.path().join(name), dir.join(name))
                .map_err(io_err(format!("putting back {}", dir.join(name).display())))?;
        }
        make_read_only(&dir).map_err(io_err("making the release read-only"))?;
        Ok(Some(aside))
    }
}

impl ArtifactStore {
    /// An archive unpacked into a fresh folder of `tmp/` (removed when dropped).
    fn unpacked(&self, archive: &Path) -> Result<tempfile::TempDir, ArtifactError> {
        let staging = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating an unpack folder"))?;
        let mut tar = open_archive(archive)?;
        tar.set_preserve_permissions(true);
        // No setuid, setgid or sticky bit, nothing group- or world-writable; and no extended
        // attributes (file capabilities are one) or owners taken from the archive.
        tar.set_mask(0o7022);
        tar.set_unpack_xattrs(false);
        tar.set_preserve_ownerships(false);
        tar.set_preserve_mtime(false);
        tar.unpack(staging.path())
            .map_err(io_err("unpacking the artifact"))?;
        Ok(staging)
    }
}

impl Upload {
    /// Appends a chunk; refuses once the limit is passed.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit.0 {
            return Err(ArtifactError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err("writing the upload"))
    }

    /// Ends the upload: compares digests and checks every entry.
    pub async fn finish(mut self, claimed: &Digest) -> Result<CheckedArtifact, ArtifactError> {
        self.file
            .flush()
            .await
            .map_err(io_err("writing the upload"))?;
        self.file
            .sync_all()
            .await
            .map_err(io_err("syncing the upload"))?;
        let actual = Digest::from_sha256(&self.hasher.finalize().into());
        if &actual != claimed {
            return Err(ArtifactError::DigestMismatch {
                claimed: claimed.clone(),
                actual,
            });
        }
        let temp = self.temp;
        let path = temp.to_path_buf();
        let unpack = self.unpack;
        tokio::task::spawn_blocking(move || check_archive(&path, unpack))
            .await
            .map_err(|e| ArtifactError::Io {
                context: "checking the artifact".into(),
                source: io::Error::other(e),
            })??;
        Ok(CheckedArtifact {
            temp,
            digest: actual,
            size: self.size,
        })
    }
}

fn open_archive(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ArtifactError> {
    let mut file = File::open(path).map_err(io_err("opening the artifact"))?;
    let mut magic = [0u8; 2];
    let n = file
        .read(&mut magic)
        .map_err(io_err("reading the artifact"))?;
    file.rewind().map_err(io_err("reading the artifact"))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(tar::Archive::new(reader))
}

/// Refuses archives whose entries could land outside the release directory, that unpack past
/// `limits`, that hold a name too long for the file system, or whose gzip stream is cut short
/// or fails its checksum.
pub fn check_archive(path: &Path, limits: UnpackLimits) -> Result<(), ArtifactError> {
    let entries = read_entries(path, limits)?;
    if entries.is_empty() {
        return Err(ArtifactError::Unreadable("it holds no file".into()));
    }
    let links: Vec<&Path> = entries
        .iter()
        .filter(|e| e.kind == tar::EntryType::Symlink)
        .map(|e| e.inside.as_path())
        .collect();
    for entry in &entries {
        let unsafe_entry = |reason: String| ArtifactError::UnsafeEntry {
            entry: entry.path.display().to_string(),
            reason,
        };
        if let Some(link) = through_link(&entry.inside, &links) {
            return Err(unsafe_entry(format!(
                "is written through the link `{}`",
                link.display()
            )));
        }
        let Some(target) = &entry.target else {
            continue;
        };
        // A link is judged by the path it names, taken step by step: it may not climb above the
        // release, and may not pass through another link (whose own target could lead anywhere).
        let from = match entry.kind {
            tar::EntryType::Symlink => entry.inside.parent().unwrap_or(Path::new("")).to_owned(),
            _ => PathBuf::new(),
        };
        let mut at = from;
        for c in target.components() {
            match c {
                Component::Normal(p) => at.push(p),
                Component::CurDir => {}
                Component::ParentDir if at.pop() => {}
                _ => {
                    let kind = if entry.kind == tar::EntryType::Link {
                        "hard link"
                    } else {
                        "link"
                    };
                    return Err(unsafe_entry(format!(
                        "is a {kind} to `{}`, outside the release",
                        target.display()
                    )));
                }
            }
            if links.contains(&at.as_path()) {
                return Err(unsafe_entry(format!(
                    "is a link to `{}`, which passes through the link `{}` and could lead outside the release",
                    target.display(),
                    at.display()
                )));
            }
        }
    }
    Ok(())
}

/// One archive entry as far as safety goes.
struct EntryInfo {
    /// As written in the archive.
    path: PathBuf,
    /// Normalized, inside the release.
    inside: PathBuf,
    kind: tar::EntryType,
    /// Link target (symbolic or hard).
    target: Option<PathBuf>,
}

/// The longest name of one path component, and of a whole path, that Linux file systems take.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;

/// Reads every entry, refusing paths outside the release, kinds other than files, folders and
/// links, names too long to create, and more bytes or entries than `limits` allow; then reads
/// the compressed stream to its end, so a missing or wrong gzip trailer is refused too.
fn read_entries(path: &Path, limits: UnpackLimits) -> Result<Vec<EntryInfo>, ArtifactError> {
    let unreadable = |e: io::Error| ArtifactError::Unreadable(e.to_string());
    let mut tar = open_archive(path)?;
    let mut out = Vec::new();
    let mut unpacked_size: u64 = 0;
    for entry in tar.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.into_owned();
        let unsafe_entry = |reason: &str| ArtifactError::UnsafeEntry {
            entry: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let inside = normalized(&path)
            .ok_or_else(|| unsafe_entry("has an absolute path or climbs out with `..`"))?;
        let too_long = inside.as_os_str().len() > PATH_MAX
            || inside.components().any(|c| c.as_os_str().len() > NAME_MAX);
        if too_long {
            return Err(unsafe_entry(&format!(
                "has a name longer than the file system allows ({NAME_MAX} bytes a name, {PATH_MAX} a path)"
            )));
        }
        unpacked_size = unpacked_size.saturating_add(entry.size());
        if unpacked_size > limits.max_size.0 {
            return Err(ArtifactError::UnpacksTooLarge {
                limit: limits.max_size.to_string(),
                key: "max_unpacked_size",
            });
        }
        if out.len() as u64 >= limits.max_files {
            return Err(ArtifactError::UnpacksTooLarge {
                limit: format!("{} entries", limits.max_files),
                key: "max_files",
            });
        }
        let kind = entry.header().entry_type();
        let target = match kind {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::GNUSparse => None,
            tar::EntryType::Symlink | tar::EntryType::Link => Some(
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| unsafe_entry("is a link without a target"))?
                    .into_owned(),
            ),
            other => {
                return Err(unsafe_entry(&format!(
                    "is a {other:?} entry; only files, folders and links are allowed"
                )));
            }
        };
        out.push(EntryInfo {
            path,
            inside,
            kind,
            target,
        });
    }
    // The tar ends before the gzip trailer (CRC and length), which is checked only when read.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(|e| {
        ArtifactError::Unreadable(format!(
            "its compressed stream is damaged or cut short ({e}); upload it again"
        ))
    })?;
    Ok(out)
}

/// The link among `links` that `path` would be written through, if any.
fn through_link<'a>(path: &Path, links: &[&'a Path]) -> Option<&'a Path> {
    links
        .iter()
        .find(|l| path.starts_with(l) && path != **l)
        .copied()
}

/// The path with `.` removed, or None if it is absolute or climbs above its root.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Makes a release folder read-only for everyone. Its top folder (made 0700 as a temp dir) is
/// made 0555, so that the environments' own users, whose sandboxes see it, may enter it.
/// The bytes of the files under `dir` (0 when it is missing).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn make_writable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

fn make_read_only(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    make_entries_read_only(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555))
}

fn make_entries_read_only(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            make_entries_read_only(&entry.path())?;
            let mut perm = entry.metadata()?.permissions();
            perm.set_mode(perm.mode() & 0o555);
            fs::set_permissions(entry.path(), perm)?;
        } else if !ty.is_symlink() {
            let mut perm = entry.metadata()?.permissions();
            perm.set_mode(perm.mode() & 0o555);
            fs::set_permissions(entry.path(), perm)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/web"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(dir.join("VERSION"), "1.0.0\n").unwrap();
        std::os::unix::fs::symlink("bin/web", dir.join("run")).unwrap();
    }

    #[test]
    fn packing_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        tree(a.path());
        tree(b.path());
        let (mut x, mut y) = (Vec::new(), Vec::new());
        pack_dir(a.path(), &mut x).unwrap();
        pack_dir(b.path(), &mut y).unwrap();
        assert_eq!(x, y);
        fs::write(b.path().join("VERSION"), "1.0.1\n").unwrap();
        let mut z = Vec::new();
        pack_dir(b.path(), &mut z).unwrap();
        assert_ne!(x, z);
    }

    #[test]
    fn normalized_refuses_escapes() {
        assert_eq!(
            normalized(Path::new("a/./b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(normalized(Path::new("a/../../c")), None);
        assert_eq!(normalized(Path::new("/etc/passwd")), None);
    }
}
