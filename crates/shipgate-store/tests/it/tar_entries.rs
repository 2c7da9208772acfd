//! Archives built entry by entry with the raw header API, so they can hold what `tar::Builder`
//! itself refuses to write (`..`, absolute paths, links out, devices).

use std::io::Write;

use sha2::{Digest as _, Sha256};
use shipgate_core::{ByteSize, Digest};
use shipgate_store::artifact::UnpackLimits;

/// Limits no ordinary test archive comes near.
pub const ROOMY: UnpackLimits = UnpackLimits {
    max_size: ByteSize(1 << 30),
    max_files: 10_000,
};

/// What one archive entry is.
pub enum Kind {
    File(&'static [u8]),
    Executable(&'static [u8]),
    /// A file with these mode bits (setuid, world-writable, ...).
    Mode(u32, &'static [u8]),
    /// A folder with these mode bits (sticky, world-writable, ...).
    DirMode(u32),
    Dir,
    Symlink(&'static str),
    HardLink(&'static str),
    Fifo,
    CharDevice,
}

/// One entry: its path exactly as written in the header, and what it is.
pub struct Entry(pub &'static str, pub Kind);

/// A plain tar holding `entries` in order.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for Entry(path, kind) in entries {
        let mut header = tar::Header::new_gnu();
        put(&mut header.as_old_mut().name, path);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let (ty, mode, data): (tar::EntryType, u32, &[u8]) = match kind {
            Kind::File(data) => (tar::EntryType::Regular, 0o644, data),
            Kind::Executable(data) => (tar::EntryType::Regular, 0o755, data),
            Kind::Mode(mode, data) => (tar::EntryType::Regular, *mode, data),
            Kind::DirMode(mode) => (tar::EntryType::Directory, *mode, b""),
            Kind::Dir => (tar::EntryType::Directory, 0o755, b""),
            Kind::Symlink(target) => {
                put(&mut header.as_old_mut().linkname, target);
                (tar::EntryType::Symlink, 0o777, b"")
            }
            Kind::HardLink(target) => {
                put(&mut header.as_old_mut().linkname, target);
                (tar::EntryType::Link, 0o644, b"")
            }
            Kind::Fifo => (tar::EntryType::Fifo, 0o644, b""),
            Kind::CharDevice => {
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
                (tar::EntryType::Char, 0o666, b"")
            }
        };
        header.set_entry_type(ty);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `bytes` compressed with gzip.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// `bytes` in a temporary file.
pub fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

/// The sha256 digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

/// Writes `text` into a fixed-size header field, NUL-padded, bypassing the crate's path checks.
fn put(field: &mut [u8; 100], text: &str) {
    assert!(
        text.len() < field.len(),
        "`{text}` does not fit a header field"
    );
    field.fill(0);
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// An ordinary release: folders, files, an executable, links that stay inside.
pub fn ordinary() -> Vec<Entry> {
    vec![
        Entry("bin/", Kind::Dir),
        Entry("bin/web", Kind::Executable(b"#!/bin/sh\necho hello\n")),
        Entry("VERSION", Kind::File(b"1.0.0\n")),
        Entry("static/", Kind::Dir),
        Entry("static/index.html", Kind::File(b"<h1>hello</h1>\n")),
        Entry("./static/./style.css", Kind::File(b"h1 { color: teal }\n")),
        Entry("run", Kind::Symlink("bin/web")),
        Entry("static/version", Kind::Symlink("../VERSION")),
        Entry("public", Kind::Symlink("static")),
        Entry("index.html", Kind::HardLink("static/index.html")),
    ]
}
