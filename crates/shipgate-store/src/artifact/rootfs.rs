//! A rootfs built from an image's layers, in order: each entry checked as it is read and
//! written without following a link of the rootfs, and OCI whiteouts applied (`DIR/.wh.NAME`
//! removes `DIR/NAME` of the lower layers, `DIR/.wh..wh..opq` what they put in `DIR`).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shipgate_core::Digest;

use super::archive::normalized;
use super::image::{Compression, ImageRefusal, LayerRecord, layer_compression};
use super::{ArtifactError, MAX_DEPTH, UnpackLimits, io_err};

/// The longest name of one path component, and of a whole path, that Linux file systems take.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;
/// An opaque whiteout: its folder holds nothing of the lower layers.
const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// A rootfs being built from layers.
pub(super) struct Rootfs {
    root: PathBuf,
    /// Where the content of regular files is kept once for every rootfs (`layers/files`): a
    /// file of the same bytes, mode and time is a hard link to it.
    files: Option<PathBuf>,
    limits: UnpackLimits,
    size: u64,
    entries: u64,
    /// Folders under the root known to be folders (not links), so each way is checked once.
    real_dirs: HashSet<PathBuf>,
}

/// Where a path of the rootfs leads, taken step by step without following links.
enum Way {
    /// Every step is a folder (or the path is the root).
    Clear,
    /// This step is a symbolic link.
    Link(PathBuf),
    /// This step is a file (or something else that holds nothing).
    File(PathBuf),
    /// This step is not there.
    Missing(PathBuf),
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Reads `r` to its end.
fn drain(mut r: impl Read) -> io::Result<()> {
    io::copy(&mut r, &mut io::sink()).map(|_| ())
}

impl Rootfs {
    /// An empty rootfs at `root` (made now), to hold at most `limits` of every layer together.
    pub(super) fn new(root: PathBuf, limits: UnpackLimits) -> Result<Self, ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir(&root)
            .and_then(|()| fs::set_permissions(&root, fs::Permissions::from_mode(0o755)))
            .map_err(io_err("creating the rootfs"))?;
        Ok(Self {
            root,
            files: None,
            limits,
            size: 0,
            entries: 0,
            real_dirs: HashSet::new(),
        })
    }

    /// Shares the content of this rootfs's regular files through `dir` (made if missing): see
    /// [`Rootfs::files`].
    pub(super) fn sharing_files(mut self, dir: PathBuf) -> Result<Self, ArtifactError> {
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        self.files = Some(dir);
        Ok(self)
    }

    /// Applies the layer kept at `path`, checking it against its digest as it is read. Any
    /// failure of a layer whose kept bytes no longer match its digest says so, whatever it was.
    pub(super) fn apply(&mut self, path: &Path, layer: &LayerRecord) -> Result<(), ArtifactError> {
        let digest = &layer.digest;
        let read = self.apply_read(path, layer);
        let whole = match &read {
            Ok((size, actual)) => *size == layer.size && actual == digest,
            Err(_) => super::digest_file(path).map_or(true, |actual| &actual == digest),
        };
        if !whole {
            return Err(ImageRefusal::Damaged {
                digest: digest.clone(),
                reason: format!(
                    "changed in the store since it was imported; remove {} and import the image again",
                    path.display()
                ),
            }
            .into());
        }
        read.map(|_| ())
    }

    /// Applies the layer kept at `path`; the size and digest of what was read.
    fn apply_read(
        &mut self,
        path: &Path,
        layer: &LayerRecord,
    ) -> Result<(u64, Digest), ArtifactError> {
        let digest = &layer.digest;
        let compression = layer_compression(digest, &layer.media_type)?;
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageRefusal::Missing {
                digest: digest.clone(),
                layout: path.parent().unwrap_or(path).display().to_string(),
            }
            .into(),
            _ => io_err(format!("reading {}", path.display()))(e),
        })?;
        let mut hashing = Hashing {
            inner: BufReader::with_capacity(256 << 10, file),
            hasher: Sha256::new(),
            count: 0,
        };
        let damaged = |e: io::Error| -> ArtifactError {
            ImageRefusal::Damaged {
                digest: digest.clone(),
                reason: format!("is not a readable tar+gzip ({e})"),
            }
            .into()
        };
        match compression {
            Compression::Gzip => {
                let mut gz = flate2::read::MultiGzDecoder::new(&mut hashing);
                self.apply_tar(&mut gz, digest)?;
                drain(gz).map_err(damaged)?;
            }
            Compression::None => {
                self.apply_tar(&mut hashing, digest)?;
            }
        }
        drain(&mut hashing).map_err(io_err(format!("reading {}", path.display())))?;
        let actual = Digest::from_sha256(&hashing.hasher.finalize().into());
        Ok((hashing.count, actual))
    }

    fn apply_tar(&mut self, reader: impl Read, layer: &Digest) -> Result<(), ArtifactError> {
        let unreadable = |e: io::Error| -> ArtifactError {
            ImageRefusal::Damaged {
                digest: layer.clone(),
                reason: format!("is not a readable tar ({e})"),
            }
            .into()
        };
        let mut archive = tar::Archive::new(reader);
        // This layer's own paths (the folders it made on the way too): its whiteouts spare them.
        let mut written: HashSet<PathBuf> = HashSet::new();
        // The paths its entries name, to refuse one twice.
        let mut named: HashSet<PathBuf> = HashSet::new();
        for entry in archive.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let kind = entry.header().entry_type();
            if kind == tar::EntryType::XGlobalHeader {
                continue;
            }
            let raw = entry.path().map_err(unreadable)?.into_owned();
            let refuse = |reason: String| -> ArtifactError {
                ImageRefusal::Entry {
                    layer: layer.clone(),
                    entry: raw.display().to_string(),
                    reason,
                }
                .into()
            };
            let depth = raw
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .count();
            if depth > MAX_DEPTH {
                return Err(refuse(format!(
                    "has {depth} path components; a rootfs may nest at most {MAX_DEPTH} deep (rebuild the image flatter)"
                )));
            }
            let name = raw.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let whiteout = name.strip_prefix(WHITEOUT);
            let Some(inside) = normalized(&raw) else {
                return Err(refuse(match whiteout {
                    Some(_) => "is a whiteout that escapes the rootfs (it climbs out with `..` or is absolute); the layer is not a valid image layer: rebuild the image".into(),
                    None => "has an absolute path or climbs out with `..`; the layer is not a valid image layer: rebuild the image".into(),
                }));
            };
            let too_long = inside.as_os_str().len() > PATH_MAX
                || inside.components().any(|c| c.as_os_str().len() > NAME_MAX);
            if too_long {
                return Err(refuse(format!(
                    "has a name longer than the file system allows ({NAME_MAX} bytes a name, {PATH_MAX} a path)"
                )));
            }
            let parent = inside.parent().unwrap_or(Path::new("")).to_owned();
            let folders_named_wh = parent
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with(WHITEOUT));
            if folders_named_wh {
                // aufs keeps its own records under `.wh..wh.*` folders; they are not the image's.
                if inside
                    .components()
                    .next()
                    .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(".wh..wh."))
                {
                    continue;
                }
                return Err(refuse(
                    "lies in a folder named as a whiteout (`.wh.`); rebuild the image".into(),
                ));
            }
            if inside.as_os_str().is_empty() {
                if kind == tar::EntryType::Directory {
                    continue;
                }
                return Err(refuse(
                    "names the rootfs itself, and is not a folder".into(),
                ));
            }
            if !named.insert(inside.clone()) {
                return Err(refuse(
                    "appears twice in the layer: which one is unpacked would depend on their order; rebuild the image so each path is in a layer once".into(),
                ));
            }
            self.count(entry.size())?;

            if let Some(target) = whiteout {
                self.whiteout(&parent, target, &written)
                    .map_err(|e| e.refusal(&refuse))?;
                continue;
            }
            match kind {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse
                | tar::EntryType::Directory
                | tar::EntryType::Symlink
                | tar::EntryType::Link => {}
                tar::EntryType::Char | tar::EntryType::Block => {
                    return Err(refuse(
                        "is a device; an image's rootfs may hold files, folders and links only (runc gives the container its own /dev): remove it from the image".into(),
                    ));
                }
                tar::EntryType::Fifo => {
                    return Err(refuse(
                        "is a named pipe; an image's rootfs may hold files, folders and links only: remove it from the image".into(),
                    ));
                }
                other => {
                    return Err(refuse(format!(
                        "is a {other:?} entry; only files, folders and links are allowed: rebuild the image"
                    )));
                }
            }
            self.make_way(&parent, &mut written)
                .map_err(|e| e.refusal(&refuse))?;
            self.write(&mut entry, kind, &inside)
                .map_err(|e| e.refusal(&refuse))?;
            written.insert(inside);
        }
        Ok(())
    }

    fn count(&mut self, size: u64) -> Result<(), ArtifactError> {
        self.entries += 1;
        if self.entries > self.limits.max_files {
            return Err(ImageRefusal::UnpacksTooLarge {
                limit: format!("{} entries", self.limits.max_files),
                key: "max_files",
            }
            .into());
        }
        self.size = self.size.saturating_add(size);
        if self.size > self.limits.max_size.0 {
            return Err(ImageRefusal::UnpacksTooLarge {
                limit: self.limits.max_size.to_string(),
                key: "max_unpacked_size",
            }
            .into());
        }
        Ok(())
    }

    /// Where `path` leads, step by step, without following a link.
    fn way(&mut self, path: &Path) -> io::Result<Way> {
        let mut at = PathBuf::new();
        for c in path.components() {
            at.push(c);
            if self.real_dirs.contains(&at) {
                continue;
            }
            match fs::symlink_metadata(self.root.join(&at)) {
                Ok(m) if m.is_dir() => {
                    self.real_dirs.insert(at.clone());
                }
                Ok(m) if m.file_type().is_symlink() => return Ok(Way::Link(at)),
                Ok(_) => return Ok(Way::File(at)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Way::Missing(at)),
                Err(e) => return Err(e),
            }
        }
        Ok(Way::Clear)
    }

    /// Makes the folders on the way to `dir`, refusing a way through a link or a file.
    fn make_way(&mut self, dir: &Path, written: &mut HashSet<PathBuf>) -> Result<(), Refusal> {
        use std::os::unix::fs::PermissionsExt;
        loop {
            match self.way(dir)? {
                Way::Clear => return Ok(()),
                Way::Link(link) => {
                    return Err(Refusal::Said(format!(
                        "is written through the link `{}` of the rootfs; rebuild the image so no layer writes below a link",
                        link.display()
                    )));
                }
                Way::File(file) => {
                    return Err(Refusal::Said(format!(
                        "is written below `{}`, which is a file in the rootfs; rebuild the image",
                        file.display()
                    )));
                }
                Way::Missing(missing) => {
                    let full = self.root.join(&missing);
                    fs::create_dir(&full)?;
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))?;
                    self.real_dirs.insert(missing.clone());
                    written.insert(missing);
                }
            }
        }
    }

    /// Writes one file, folder or link at `inside`, whose folder is there, replacing what lower
    /// layers put there (a folder stays a folder, and keeps what it holds).
    fn write(
        &mut self,
        entry: &mut tar::Entry<'_, impl Read>,
        kind: tar::EntryType,
        inside: &Path,
    ) -> Result<(), Refusal> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let full = self.root.join(inside);
        // Setuid, setgid and sticky bits are dropped; the rootfs is made read-only at the end,
        // and its folders stay open to this process until then.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let existing = match fs::symlink_metadata(&full) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if kind == tar::EntryType::Directory {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                if let Some(m) = &existing {
                    self.remove(inside, m)?;
                }
                fs::create_dir(&full)?;
            }
            fs::set_permissions(&full, fs::Permissions::from_mode(mode | 0o700))?;
            self.real_dirs.insert(inside.to_owned());
            return Ok(());
        }
        let link_target = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => Some(
                entry
                    .link_name()?
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| Refusal::Said("is a link without a target".into()))?
                    .into_owned(),
            ),
            _ => None,
        };
        let hard_target = match (kind, &link_target) {
            (tar::EntryType::Link, Some(target)) => Some(self.hard_link_target(target, inside)?),
            _ => None,
        };
        if let Some(m) = &existing {
            self.remove(inside, m)?;
        }
        match (kind, link_target, hard_target) {
            (tar::EntryType::Symlink, Some(target), _) => {
                // Read inside the container only; the store never follows it.
                std::os::unix::fs::symlink(target, &full)?;
            }
            (tar::EntryType::Link, _, Some(target)) => {
                // linkat without AT_SYMLINK_FOLLOW: a link to a symbolic link links the link.
                fs::hard_link(self.root.join(target), &full)?;
            }
            _ => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&full)?;
                let claimed = entry.size();
                let (present, hash) = {
                    let mut out = HashingWriter {
                        inner: io::BufWriter::with_capacity(128 << 10, &mut file),
                        hasher: Sha256::new(),
                    };
                    let present = io::copy(entry, &mut out)?;
                    out.inner.flush()?;
                    (present, out.hasher.clone().finalize())
                };
                if present < claimed {
                    return Err(Refusal::Said(format!(
                        "claims {claimed} bytes while the layer ends after {present} of them: the layer is cut short; rebuild the image"
                    )));
                }
                file.set_permissions(fs::Permissions::from_mode(mode))?;
                // Kept because programs compare them (Python's cached bytecode with its
                // source), and the rootfs is read-only: a cache found stale stays stale.
                let mtime = entry.header().mtime().unwrap_or(0);
                file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
                drop(file);
                if let Some(files) = &self.files {
                    share(
                        files,
                        &full,
                        &format!("{}-{mode:o}-{mtime}", hex::encode(hash)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Where a hard link at `inside` to `target` (a path of the archive) leads: a file (or a
    /// symbolic link) already in the rootfs, reached through folders only.
    fn hard_link_target(&mut self, target: &Path, inside: &Path) -> Result<PathBuf, Refusal> {
        let out = || {
            Refusal::Said(format!(
                "is a hard link to `{}`, outside the rootfs; rebuild the image",
                target.display()
            ))
        };
        let resolved = normalized(target)
            .filter(|t| !t.as_os_str().is_empty())
            .ok_or_else(out)?;
        if resolved == inside {
            return Err(Refusal::Said(
                "is a hard link to itself; rebuild the image".into(),
            ));
        }
        let parent = resolved.parent().unwrap_or(Path::new(""));
        match self.way(parent)? {
            Way::Clear => {}
            Way::Link(link) => {
                return Err(Refusal::Said(format!(
                    "is a hard link to `{}`, which passes through the link `{}` and could lead outside the rootfs; rebuild the image",
                    target.display(),
                    link.display()
                )));
            }
            Way::File(_) | Way::Missing(_) => {
                return Err(Refusal::Said(format!(
                    "is a hard link to `{}`, which is not in the rootfs; rebuild the image",
                    target.display()
                )));
            }
        }
        match fs::symlink_metadata(self.root.join(&resolved)) {
            Ok(m) if !m.is_dir() => Ok(resolved),
            Ok(_) => Err(Refusal::Said(format!(
                "is a hard link to the folder `{}`; rebuild the image",
                target.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Refusal::Said(format!(
                "is a hard link to `{}`, which is not in the rootfs; rebuild the image",
                target.display()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies the whiteout `.wh.{target}` of folder `dir`: removes `dir/target` (the folder
    /// `dir`'s lower content, for the opaque one), sparing what this layer wrote.
    fn whiteout(
        &mut self,
        dir: &Path,
        target: &str,
        written: &HashSet<PathBuf>,
    ) -> Result<(), Refusal> {
        let escapes = |how: String| {
            Refusal::Said(format!(
                "is a whiteout that escapes the rootfs ({how}); the layer is not a valid image layer: rebuild the image"
            ))
        };
        let opaque = format!("{WHITEOUT}{target}") == OPAQUE;
        if !opaque && target.starts_with(WHITEOUT) {
            // aufs' own records (`.wh..wh.plnk`, `.wh..wh.aufs`): nothing of the image.
            return Ok(());
        }
        match target {
            "" | "." => {
                return Err(Refusal::Said(
                    "is a whiteout that names nothing; rebuild the image".into(),
                ));
            }
            ".." => return Err(escapes("it names `..`".into())),
            _ => {}
        }
        match self.way(dir)? {
            Way::Clear => {}
            Way::Link(link) => {
                return Err(escapes(format!("through the link `{}`", link.display())));
            }
            // Nothing below to remove.
            Way::File(_) | Way::Missing(_) => return Ok(()),
        }
        if opaque {
            for child in fs::read_dir(self.root.join(dir))? {
                self.remove_lower(&dir.join(child?.file_name()), written)?;
            }
        } else {
            self.remove_lower(&dir.join(target), written)?;
        }
        Ok(())
    }

    /// Removes what lower layers put at `path`: all of it, or, for a path this layer wrote,
    /// the lower layers' part of what a folder holds.
    fn remove_lower(&mut self, path: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
        let meta = match fs::symlink_metadata(self.root.join(path)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if !written.contains(path) {
            return self.remove(path, &meta);
        }
        if meta.is_dir() {
            for child in fs::read_dir(self.root.join(path))? {
                self.remove_lower(&path.join(child?.file_name()), written)?;
            }
        }
        Ok(())
    }

    /// Removes `path` of the rootfs (a folder with all it holds; a link, not what it names).
    fn remove(&mut self, path: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let full = self.root.join(path);
        if meta.is_dir() {
            self.real_dirs.retain(|d| !d.starts_with(path));
            fs::remove_dir_all(full)
        } else {
            fs::remove_file(full)
        }
    }
}

/// Why one entry could not be applied: a refusal, or the file system failing.
enum Refusal {
    /// What is wrong with the entry, and what to do.
    Said(String),
    /// A file-system operation failed.
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

impl Refusal {
    fn refusal(self, refuse: &impl Fn(String) -> ArtifactError) -> ArtifactError {
        match self {
            Refusal::Said(reason) => refuse(reason),
            Refusal::Io(e) => io_err("unpacking a layer of the image")(e),
        }
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Makes the file just written at `full` one with the kept file `key` (`SHA256-MODE-MTIME`) of
/// `files`: a hard link to it when it is there and still holds those bytes, else kept there as
/// it. A kept file changed since (by a hand in a release folder: the same inode) is replaced.
fn share(files: &Path, full: &Path, key: &str) -> io::Result<()> {
    let kept = files.join(key);
    let intact = match fs::File::open(&kept) {
        Ok(mut f) => {
            let mut hasher = Sha256::new();
            io::copy(&mut f, &mut hasher)?;
            key.starts_with(&hex::encode(hasher.finalize()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if intact {
        fs::remove_file(full)?;
        return fs::hard_link(&kept, full);
    }
    match fs::remove_file(&kept) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::hard_link(full, &kept)
}
