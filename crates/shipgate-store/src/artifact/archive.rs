//! Reading an archive's entries, and the rules an archive must follow before anything of it is
//! stored or extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};

use super::{ArtifactError, UnpackLimits, io_err};

/// The archive at `path`, decompressed on the way when it is gzip.
pub(super) fn open_archive(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ArtifactError> {
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
/// `limits`, that hold a name too long for the file system, a path twice or a path nested
/// deeper than [`MAX_DEPTH`], that end before their entries do or hold data after their end, or
/// whose gzip stream is cut short or fails its checksum.
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
/// The most path components an entry may have. Unpacking checks every folder on an entry's
/// way, so a path thousands of folders deep took minutes before it failed; no release needs
/// more than this.
pub const MAX_DEPTH: usize = 64;
/// A tar block; an archive ends with two empty ones.
const BLOCK: u64 = 512;

/// Reads every entry, refusing paths outside the release, kinds other than files, folders and
/// links, names too long to create, paths nested deeper than [`MAX_DEPTH`], a path twice, an
/// entry holding fewer bytes than it claims, and more bytes or entries than `limits` allow;
/// then reads the archive to its end (see [`read_end`]).
fn read_entries(path: &Path, limits: UnpackLimits) -> Result<Vec<EntryInfo>, ArtifactError> {
    let unreadable = |e: io::Error| ArtifactError::Unreadable(e.to_string());
    let mut tar = open_archive(path)?;
    let mut out: Vec<EntryInfo> = Vec::new();
    // Each normalized path, with the index in `out` of the entry that holds it.
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut unpacked_size: u64 = 0;
    for entry in tar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.into_owned();
        let unsafe_entry = |reason: &str| ArtifactError::UnsafeEntry {
            entry: shown(&path),
            reason: reason.to_owned(),
        };
        // Counted as written (`a/../a/..` costs unpacking as much as it is long).
        let depth = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .count();
        if depth > MAX_DEPTH {
            return Err(unsafe_entry(&format!(
                "has {depth} path components; a release may nest at most {MAX_DEPTH} deep (pack a flatter folder)"
            )));
        }
        let inside = normalized(&path)
            .ok_or_else(|| unsafe_entry("has an absolute path or climbs out with `..`"))?;
        let too_long = inside.as_os_str().len() > PATH_MAX
            || inside.components().any(|c| c.as_os_str().len() > NAME_MAX);
        if too_long {
            return Err(unsafe_entry(&format!(
                "has a name longer than the file system allows ({NAME_MAX} bytes a name, {PATH_MAX} a path)"
            )));
        }
        if let Some(&first) = seen.get(&inside) {
            let first = &out[first].path;
            let also = if first == &path {
                String::new()
            } else {
                format!(" (also as `{}`)", shown(first))
            };
            return Err(unsafe_entry(&format!(
                "appears twice in the archive{also}: which one is unpacked would depend on their order; pack the folder again so each path is there once"
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
        // Unpacking would write what is there and say nothing of the rest.
        let claimed = entry.size();
        let present = io::copy(&mut entry, &mut io::sink()).map_err(unreadable)?;
        if present < claimed {
            return Err(ArtifactError::CutShort {
                entry: shown(&path),
                reason: format!(
                    "claims {claimed} bytes while the archive ends after {present} of them"
                ),
            });
        }
        seen.insert(inside.clone(), out.len());
        out.push(EntryInfo {
            path,
            inside,
            kind,
            target,
        });
    }
    read_end(tar.into_inner(), out.last().map(|e| e.path.as_path()))?;
    Ok(out)
}

/// Reads what follows the entries to the end of the file. The entries end at an empty block;
/// a second one must follow, then nothing but empty blocks: a missing end, or data after it,
/// means an entry (`last`, or one before) claims more bytes than it holds, whose bytes were
/// taken from the end marker or from the entries after it. Reading to the end also checks the
/// gzip trailer (CRC and length).
fn read_end(mut rest: impl Read, last: Option<&Path>) -> Result<(), ArtifactError> {
    let mut buf = vec![0u8; 64 << 10];
    let (mut after, mut data_after_end) = (0u64, false);
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ArtifactError::Unreadable(format!(
                    "its compressed stream is damaged or cut short ({e}); upload it again"
                )));
            }
        };
        data_after_end |= buf[..n].iter().any(|b| *b != 0);
        after += n as u64;
    }
    // An archive of no entry is refused as empty by the caller.
    let Some(last) = last else {
        return Ok(());
    };
    let cut = |reason: &str| ArtifactError::CutShort {
        entry: shown(last),
        reason: reason.to_owned(),
    };
    if data_after_end {
        return Err(cut(
            "is followed by the archive's end and then by more data, which unpacking would ignore: an entry claims more bytes than it holds, or two archives were joined",
        ));
    }
    if after < BLOCK {
        return Err(cut(
            "is not followed by the archive's end (two empty blocks): the file stops early, or the entry claims more bytes than it holds",
        ));
    }
    Ok(())
}

/// An entry's path for a message: whole when it is short, else its start and end.
fn shown(path: &Path) -> String {
    let whole = path.display().to_string();
    let chars: Vec<char> = whole.chars().collect();
    if chars.len() <= 160 {
        return whole;
    }
    let start: String = chars[..80].iter().collect();
    let end: String = chars[chars.len() - 40..].iter().collect();
    format!("{start}…{end}")
}

/// The link among `links` that `path` would be written through, if any.
fn through_link<'a>(path: &Path, links: &[&'a Path]) -> Option<&'a Path> {
    links
        .iter()
        .find(|l| path.starts_with(l) && path != **l)
        .copied()
}

/// The path with `.` removed, or None if it is absolute or climbs above its root.
pub(super) fn normalized(path: &Path) -> Option<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
