//! Release artifacts: deterministic packing of a directory, checked receiving of an upload,
//! content-addressed storage and read-only unpacking.
//!
//! An upload is written to a temporary file while it is hashed, its digest compared with the
//! claimed one, and every entry checked (no absolute path, no `..`, no link leading outside,
//! nothing but files, folders and links, no path twice or nested too deep, every entry whole)
//! before anything is stored or extracted. An artifact whose unpacking fails is not kept.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shipgate_core::{ByteSize, Digest};
use tokio::io::AsyncWriteExt;

mod archive;
mod pull;
pub use pull::{PULLED, pulled_layout};

pub use archive::{MAX_DEPTH, check_archive};
use archive::{normalized, open_archive};

mod blob;
mod image;
mod layout;
mod rootfs;
pub use blob::{Blob, BlobReceipt, BlobUpload};
pub use image::{ImageRecord, ImageRefusal, ImportedImage, LayerRecord};
pub use layout::{MAX_METADATA, RunConfigJson, write_layout};

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
    /// The archive ends before an entry does, or has data after its end: an entry claims more
    /// bytes than it holds, and unpacking it would silently cut or drop files.
    #[error(
        "the artifact is refused, nothing was extracted: it is cut short or damaged at entry `{entry}`, which {reason}; pack the folder again and upload the whole file"
    )]
    CutShort {
        /// The entry where the archive stops making sense, as written in the archive.
        entry: String,
        /// What is wrong there.
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
    /// An OCI image refused: the refusal says why and what to do.
    #[error(transparent)]
    Image(#[from] ImageRefusal),
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

/// Packs an OCI image layout folder as a plain tar at `out` (an `oci-archive:`): its blobs are
/// compressed already, so not again.
pub fn pack_layout(layout: &Path, out: &Path) -> io::Result<()> {
    let mut tar = tar::Builder::new(io::BufWriter::new(File::create(out)?));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", layout)?;
    tar.into_inner()?.flush()
}

/// Packs a directory as a gzip-compressed tar whose bytes depend only on the files' paths,
/// contents, executable bits and link targets: entries sorted, times, owners and other mode
/// bits fixed.
pub fn pack_dir(dir: &Path, out: impl Write) -> io::Result<()> {
    pack_dir_under(dir, Path::new(""), out)
}

/// [`pack_dir`] with every path under the folder `under` (`app`: an image layer that puts the
/// directory at `/app`).
pub fn pack_dir_under(dir: &Path, under: &Path, out: impl Write) -> io::Result<()> {
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    paths.sort();
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    if !under.as_os_str().is_empty() {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        tar.append_data(&mut header, under, io::empty())?;
    }
    for rel in paths {
        let full = dir.join(&rel);
        let rel = under.join(&rel);
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

    /// The store in `data_dir` as another [`ArtifactStore::open`] keeps it, for reading what it
    /// holds (an image's blobs, to send them to a host): nothing is made or emptied.
    pub fn reader(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_owned(),
        }
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

    /// Whether the artifact of `digest` is on disk (retention may have removed it): its archive,
    /// or for an image its manifest among the stored layers.
    pub fn has(&self, digest: &Digest) -> bool {
        self.archive_path(digest).exists() || self.layer_path(digest).is_file()
    }

    /// The bytes the artifact of `digest` and its release directory take on disk.
    pub fn size_on_disk(&self, digest: &Digest) -> u64 {
        let archive = fs::metadata(self.archive_path(digest)).map_or(0, |m| m.len());
        archive + dir_size(&self.release_dir(digest))
    }

    /// Removes the artifact of `digest` and its release directory (retention); the bytes freed.
    /// Its record stays: registering the same file again brings it back.
    pub fn remove(&self, digest: &Digest) -> Result<u64, ArtifactError> {
        let freed = self.size_on_disk(digest);
        self.remove_release_dir(&self.release_dir(digest))?;
        // An image's manifest goes too; its layers go with [`ArtifactStore::prune_layers`] once
        // no image kept refers to them.
        for file in [self.archive_path(digest), self.layer_path(digest)] {
            match fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing an artifact")(e)),
            }
        }
        Ok(freed)
    }

    /// Removes (unless `dry_run`) the stored blobs (layers, configs, manifests) that no image
    /// among `kept` (release digests) refers to; each with its size.
    pub fn prune_layers(
        &self,
        kept: &BTreeSet<Digest>,
        dry_run: bool,
    ) -> Result<Vec<(Digest, u64)>, ArtifactError> {
        let dir = self.root.join("layers").join("sha256");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut referenced: BTreeSet<Digest> = BTreeSet::new();
        for digest in kept {
            if let Some(image) = self.stored_image(digest)? {
                referenced.insert(image.digest.clone());
                referenced.insert(image.config_digest.clone());
                for layer in &image.layers {
                    if let Ok(d) = Digest::parse(&layer.digest) {
                        referenced.insert(d);
                    }
                }
            }
        }
        let mut pruned = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing the layers"))?;
            let name = entry.file_name();
            let Ok(digest) = Digest::parse(&format!("sha256:{}", name.to_string_lossy())) else {
                continue;
            };
            if referenced.contains(&digest) {
                continue;
            }
            let bytes = entry.metadata().map_or(0, |m| m.len());
            if !dry_run {
                fs::remove_file(entry.path()).map_err(io_err("removing a layer"))?;
            }
            pruned.push((digest, bytes));
        }
        // The content of rootfs files no rootfs links to any more.
        if let Ok(files) = fs::read_dir(self.root.join("layers").join("files")) {
            use std::os::unix::fs::MetadataExt;
            for entry in files.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.nlink() > 1 {
                    continue;
                }
                let hex = entry
                    .file_name()
                    .to_string_lossy()
                    .chars()
                    .take(64)
                    .collect::<String>();
                if !dry_run {
                    fs::remove_file(entry.path()).map_err(io_err("removing a rootfs file"))?;
                }
                if let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) {
                    pruned.push((digest, meta.len()));
                }
            }
        }
        Ok(pruned)
    }

    /// Removes a release directory, if it is there.
    fn remove_release_dir(&self, dir: &Path) -> Result<(), ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        if !dir.exists() {
            return Ok(());
        }
        // Read-only by design: made writable again only to be removed.
        let aside = tempfile::Builder::new()
            .prefix("pruned-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("making room to remove a release"))?;
        let target = aside.path().join("release");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .and_then(|()| fs::rename(dir, &target))
            .map_err(io_err(format!("moving {} aside", dir.display())))?;
        make_writable(&target).map_err(io_err("making a removed release writable"))?;
        drop(aside);
        Ok(())
    }

    /// The digests of the artifacts and release directories in the data dir, whatever refers
    /// to them. Names that are no digest (nothing shipgate wrote) are left out.
    pub fn on_disk(&self) -> Result<BTreeSet<Digest>, ArtifactError> {
        let mut digests = BTreeSet::new();
        for (sub, suffix) in [("artifacts", ".tar"), ("releases", "")] {
            let dir = self.root.join(sub);
            for entry in fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))? {
                let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
                let name = entry.file_name();
                let hex = name.to_str().and_then(|n| n.strip_suffix(suffix));
                if let Some(digest) = hex.and_then(|h| Digest::parse(&format!("sha256:{h}")).ok()) {
                    digests.insert(digest);
                }
            }
        }
        Ok(digests)
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
        let stored_now = !archive.exists();
        if stored_now {
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
        let unpacked = self.unpack_into(&archive, &dir);
        // An artifact that could not be unpacked (a full disk) goes with its failure: no release
        // is recorded for it, so nothing would ever refer to it or remove it. Unless another
        // upload of the same content unpacked it meanwhile.
        if unpacked.is_err()
            && stored_now
            && !dir.exists()
            && let Err(e) = fs::remove_file(&archive)
        {
            tracing::warn!("could not remove {}: {e}", archive.display());
        }
        unpacked
    }

    /// Unpacks `archive` as the read-only release directory `dir`; on failure nothing of it is
    /// left in `dir`.
    fn unpack_into(&self, archive: &Path, dir: &Path) -> Result<PathBuf, ArtifactError> {
        let staging = self.unpacked(archive)?;
        // Renamed while still writable (moving a folder needs write permission on it), made
        // read-only in place after.
        match fs::rename(staging.path(), dir) {
            Ok(()) => {}
            // Another upload of the same content got there first: theirs is the same bytes.
            Err(_) if dir.exists() => return Ok(dir.to_owned()),
            Err(e) => return Err(io_err(format!("moving the release into {}", dir.display()))(e)),
        }
        if let Err(e) = make_read_only(dir) {
            if let Err(e) = self.remove_release_dir(dir) {
                tracing::warn!(
                    "could not remove the partial release {}: {e}",
                    dir.display()
                );
            }
            return Err(io_err("making the release read-only")(e));
        }
        Ok(dir.to_owned())
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
        if let Some(fresh) = self.fresh_image(digest)? {
            walk(fresh.path(), fresh.path(), &mut expected)
                .map_err(io_err("reading the image's fresh copy"))?;
            return self.compare_release_dir(digest, &expected);
        }
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
        self.compare_release_dir(digest, &expected)
    }

    /// How the release directory of `digest` differs from `expected`, one line per path.
    fn compare_release_dir(
        &self,
        digest: &Digest,
        expected: &std::collections::BTreeMap<PathBuf, Held>,
    ) -> Result<Vec<String>, ArtifactError> {
        let dir = self.release_dir(digest);
        let mut found = std::collections::BTreeMap::new();
        walk(&dir, &dir, &mut found).map_err(io_err(format!("reading {}", dir.display())))?;
        let mut drift = Vec::new();
        for (path, held) in expected {
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
        let staging = match self.fresh_image(digest)? {
            Some(image) => image,
            None => self.unpacked(&self.archive_path(digest))?,
        };
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
    /// For an image release: its release directory built afresh from the stored layers in a
    /// folder of `tmp/` (removed when dropped), as drift compares and heal puts back. None for
    /// a directory release.
    fn fresh_image(&self, digest: &Digest) -> Result<Option<tempfile::TempDir>, ArtifactError> {
        let Some(image) = self.stored_image(digest)? else {
            return Ok(None);
        };
        let staging = tempfile::Builder::new()
            .prefix("image-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a folder for an image's rootfs"))?;
        // It was within the limits when it was registered.
        let limits = UnpackLimits {
            max_size: ByteSize(u64::MAX / 2),
            max_files: u64::MAX / 2,
        };
        self.build_image(staging.path(), &image, limits)?;
        Ok(Some(staging))
    }

    /// An archive unpacked into a fresh folder of `tmp/` (removed when dropped).
    /// Unpacks a checked upload into a folder of `tmp/` that goes when it is dropped (an image
    /// layout, whose blobs are then stored by digest); the upload itself is not kept.
    pub async fn unpack_upload(
        &self,
        artifact: CheckedArtifact,
    ) -> Result<tempfile::TempDir, ArtifactError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.unpacked(&artifact.temp))
            .await
            .map_err(|e| ArtifactError::Io {
                context: "unpacking the image".into(),
                source: io::Error::other(e),
            })?
    }

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
        if let Err(e) = tar.unpack(staging.path()) {
            // A folder unpacked read-only would keep what is in it from being removed with it.
            if let Err(e) = make_writable(staging.path()) {
                tracing::warn!("could not make {} writable: {e}", staging.path().display());
            }
            return Err(io_err("unpacking the artifact")(e));
        }
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
    pub async fn finish(self, claimed: &Digest) -> Result<CheckedArtifact, ArtifactError> {
        self.finish_as(claimed, true).await
    }

    /// [`Upload::finish`] for an upload that is read and dropped (an image layout: what is
    /// kept are its blobs, synced as they are stored), so not synced to disk itself.
    pub async fn finish_transient(
        self,
        claimed: &Digest,
    ) -> Result<CheckedArtifact, ArtifactError> {
        self.finish_as(claimed, false).await
    }

    async fn finish_as(
        mut self,
        claimed: &Digest,
        durable: bool,
    ) -> Result<CheckedArtifact, ArtifactError> {
        self.file
            .flush()
            .await
            .map_err(io_err("writing the upload"))?;
        if durable {
            self.file
                .sync_all()
                .await
                .map_err(io_err("syncing the upload"))?;
        }
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
}
