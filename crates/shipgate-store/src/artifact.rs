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

/// An upload being received: written to a temporary file while it is hashed and counted.
pub struct Upload {
    file: tokio::fs::File,
    temp: tempfile::TempPath,
    hasher: Sha256,
    size: u64,
    limit: ByteSize,
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
    /// Uses `data_dir/artifacts`, `data_dir/releases` and `data_dir/tmp`, creating them.
    pub fn open(data_dir: &Path) -> Result<Self, ArtifactError> {
        for sub in ["artifacts", "releases", "tmp"] {
            fs::create_dir_all(data_dir.join(sub))
                .map_err(io_err(format!("creating {}", data_dir.join(sub).display())))?;
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

    /// Starts receiving an upload of at most `limit` bytes.
    pub async fn upload(&self, limit: ByteSize) -> Result<Upload, ArtifactError> {
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
        let staging = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating an unpack folder"))?;
        let mut tar = open_archive(&archive)?;
        tar.set_preserve_permissions(true);
        tar.set_preserve_mtime(false);
        tar.unpack(staging.path())
            .map_err(io_err("unpacking the artifact"))?;
        make_read_only(staging.path()).map_err(io_err("making the release read-only"))?;
        let staged = staging.keep();
        fs::rename(&staged, &dir)
            .map_err(io_err(format!("moving the release into {}", dir.display())))?;
        Ok(dir)
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
        tokio::task::spawn_blocking(move || check_archive(&path))
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

/// Refuses archives whose entries could land outside the release directory.
pub fn check_archive(path: &Path) -> Result<(), ArtifactError> {
    let mut tar = open_archive(path)?;
    let mut links: Vec<PathBuf> = Vec::new();
    let mut count = 0usize;
    let entries = tar
        .entries()
        .map_err(|e| ArtifactError::Unreadable(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArtifactError::Unreadable(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| ArtifactError::Unreadable(e.to_string()))?
            .into_owned();
        let unsafe_entry = |reason: &str| ArtifactError::UnsafeEntry {
            entry: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let inside = normalized(&path)
            .ok_or_else(|| unsafe_entry("has an absolute path or climbs out with `..`"))?;
        if let Some(link) = links
            .iter()
            .find(|l| inside.starts_with(l) && inside != **l)
        {
            return Err(unsafe_entry(&format!(
                "is written through the link `{}`",
                link.display()
            )));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::GNUSparse => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| unsafe_entry("is a link without a target"))?;
                let resolved = inside.parent().unwrap_or(Path::new("")).join(&target);
                if target.is_absolute() || normalized(&resolved).is_none() {
                    return Err(unsafe_entry(&format!(
                        "is a link to `{}`, outside the release",
                        target.display()
                    )));
                }
                links.push(inside);
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| unsafe_entry("is a link without a target"))?;
                if normalized(&target).is_none() {
                    return Err(unsafe_entry(&format!(
                        "is a hard link to `{}`, outside the release",
                        target.display()
                    )));
                }
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "is a {other:?} entry; only files, folders and links are allowed"
                )));
            }
        }
        count += 1;
    }
    if count == 0 {
        return Err(ArtifactError::Unreadable("it holds no file".into()));
    }
    Ok(())
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

fn make_read_only(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            make_read_only(&entry.path())?;
        }
        if !ty.is_symlink() {
            let mut perm = entry.metadata()?.permissions();
            perm.set_mode(perm.mode() & !0o222);
            fs::set_permissions(entry.path(), perm)?;
        }
    }
    let mut perm = fs::metadata(dir)?.permissions();
    perm.set_mode(perm.mode() & !0o222);
    fs::set_permissions(dir, perm)
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
