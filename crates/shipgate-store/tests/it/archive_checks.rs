//! `check_archive` refuses every entry that could land outside the release directory or is not
//! a plain file, folder or link, and accepts ordinary archives.

use shipgate_store::artifact::{ArtifactError, check_archive};

use shipgate_core::ByteSize;
use shipgate_store::artifact::UnpackLimits;

use crate::tar_entries::{Entry, Kind, ROOMY, file, gzip, ordinary, tar};

fn check(entries: &[Entry]) -> Result<(), ArtifactError> {
    check_archive(file(&tar(entries)).path(), ROOMY)
}

/// Asserts the archive is refused because of `entry`, with a reason containing `because`.
#[track_caller]
fn assert_refused(entries: &[Entry], entry: &str, because: &str) {
    match check(entries) {
        Err(ArtifactError::UnsafeEntry { entry: e, reason }) => {
            assert_eq!(e, entry);
            assert!(
                reason.contains(because),
                "reason `{reason}` should contain `{because}`"
            );
            let message = ArtifactError::UnsafeEntry { entry: e, reason }.to_string();
            assert!(message.contains("nothing was extracted"), "{message}");
        }
        other => panic!("expected entry `{entry}` to be refused, got {other:?}"),
    }
}

#[test]
fn an_ordinary_archive_is_accepted() {
    check(&ordinary()).unwrap();
    check_archive(file(&gzip(&tar(&ordinary()))).path(), ROOMY).unwrap();
}

#[test]
fn an_archive_packed_by_shipgate_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/c.txt"), "c").unwrap();
    std::os::unix::fs::symlink("a/b/c.txt", dir.path().join("c")).unwrap();
    let mut packed = Vec::new();
    shipgate_store::artifact::pack_dir(dir.path(), &mut packed).unwrap();
    check_archive(file(&packed).path(), ROOMY).unwrap();
}

#[test]
fn a_path_climbing_out_is_refused() {
    assert_refused(&[Entry("../x", Kind::File(b"x"))], "../x", "`..`");
    let deeper = [Entry("a/", Kind::Dir), Entry("a/../../x", Kind::File(b"x"))];
    assert_refused(&deeper, "a/../../x", "`..`");
}

#[test]
fn an_escape_after_safe_entries_is_refused() {
    let mut entries = ordinary();
    entries.push(Entry("static/../../x", Kind::File(b"x")));
    assert_refused(&entries, "static/../../x", "`..`");
}

#[test]
fn an_absolute_path_is_refused() {
    assert_refused(&[Entry("/abs", Kind::File(b"x"))], "/abs", "absolute");
    assert_refused(
        &[Entry("/etc/cron.d/evil", Kind::File(b"x"))],
        "/etc/cron.d/evil",
        "absolute",
    );
}

#[test]
fn a_symlink_out_of_the_release_is_refused() {
    assert_refused(
        &[Entry("etc", Kind::Symlink("../../etc"))],
        "etc",
        "is a link to `../../etc`, outside the release",
    );
    assert_refused(
        &[
            Entry("a/", Kind::Dir),
            Entry("a/up", Kind::Symlink("../..")),
        ],
        "a/up",
        "outside the release",
    );
    assert_refused(
        &[Entry("passwd", Kind::Symlink("/etc/passwd"))],
        "passwd",
        "is a link to `/etc/passwd`, outside the release",
    );
    assert_refused(
        &[Entry("link", Kind::Symlink(".."))],
        "link",
        "outside the release",
    );
}

#[test]
fn a_hard_link_out_of_the_release_is_refused() {
    assert_refused(
        &[Entry("x", Kind::HardLink("../x"))],
        "x",
        "is a hard link to `../x`, outside the release",
    );
    assert_refused(
        &[Entry("shadow", Kind::HardLink("/etc/shadow"))],
        "shadow",
        "hard link",
    );
}

#[test]
fn a_link_inside_the_release_is_accepted() {
    check(&[
        Entry("sub/", Kind::Dir),
        Entry("sub/f", Kind::File(b"f")),
        Entry("link", Kind::Symlink("sub")),
    ])
    .unwrap();
    check(&[
        Entry("sub/", Kind::Dir),
        Entry("sub/up", Kind::Symlink("..")),
    ])
    .unwrap();
}

#[test]
fn a_file_written_through_an_earlier_symlink_is_refused() {
    // `sub/up` points at the release's own root, which is allowed, but nothing may be written
    // through it: its target is only known once it exists on disk.
    let entries = [
        Entry("sub/", Kind::Dir),
        Entry("sub/up", Kind::Symlink("..")),
        Entry("sub/up/x", Kind::File(b"x")),
    ];
    assert_refused(&entries, "sub/up/x", "is written through the link `sub/up`");
    // Even through a link to a folder inside the release.
    let entries = [
        Entry("sub/", Kind::Dir),
        Entry("link", Kind::Symlink("sub")),
        Entry("link/x", Kind::File(b"x")),
    ];
    assert_refused(&entries, "link/x", "is written through the link `link`");
    let entries = [
        Entry("link", Kind::Symlink("sub")),
        Entry("link/deeper/", Kind::Dir),
    ];
    assert_refused(
        &entries,
        "link/deeper/",
        "is written through the link `link`",
    );
}

#[test]
fn a_fifo_or_device_is_refused() {
    assert_refused(
        &[Entry("pipe", Kind::Fifo)],
        "pipe",
        "only files, folders and links are allowed",
    );
    assert_refused(
        &[Entry("null", Kind::CharDevice)],
        "null",
        "only files, folders and links are allowed",
    );
}

#[test]
fn something_that_is_no_archive_is_unreadable() {
    assert!(
        matches!(check(&[]), Err(ArtifactError::Unreadable(_))),
        "an archive holding nothing"
    );
    let text = "this is not a tar archive, just text. ".repeat(40);
    let err = check_archive(file(text.as_bytes()).path(), ROOMY).unwrap_err();
    assert!(matches!(err, ArtifactError::Unreadable(_)), "{err:?}");
    let err = check_archive(file(&gzip(text.as_bytes())).path(), ROOMY).unwrap_err();
    assert!(matches!(err, ArtifactError::Unreadable(_)), "{err:?}");
}

#[test]
fn a_symlink_out_of_the_release_through_an_earlier_symlink_is_refused() {
    // `sub/up` leads to the release root, so `sub/up/..` is the folder above the release,
    // although it reads as `sub` when resolved without looking at the links on the way.
    let entries = [
        Entry("sub/", Kind::Dir),
        Entry("sub/up", Kind::Symlink("..")),
        Entry("esc", Kind::Symlink("sub/up/..")),
    ];
    assert_refused(&entries, "esc", "outside the release");
}

#[test]
fn defect_3_an_archive_unpacking_past_max_unpacked_size_is_refused() {
    // Ten MiB of zeros compress to a few KiB: only the unpacked size tells.
    static ZEROS: [u8; 10 << 20] = [0; 10 << 20];
    let archive = gzip(&tar(&[Entry("zeros", Kind::File(&ZEROS))]));
    assert!(archive.len() < 64 << 10, "{} bytes", archive.len());
    let limits = UnpackLimits {
        max_size: ByteSize(1 << 20),
        ..ROOMY
    };
    let err = check_archive(file(&archive).path(), limits).unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::UnpacksTooLarge {
                key: "max_unpacked_size",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("1MiB"), "{err}");
    check_archive(file(&archive).path(), ROOMY).unwrap();
}

#[test]
fn defect_3_an_archive_with_more_entries_than_max_files_is_refused() {
    let limits = UnpackLimits {
        max_files: 3,
        ..ROOMY
    };
    let err = check_archive(file(&tar(&ordinary())).path(), limits).unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::UnpacksTooLarge {
                key: "max_files",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("3 entries"), "{err}");
}

#[test]
fn defect_3_a_gzip_with_a_wrong_or_missing_trailer_is_refused() {
    let good = gzip(&tar(&ordinary()));
    let mut wrong_crc = good.clone();
    let at = wrong_crc.len() - 8;
    wrong_crc[at] ^= 0xff;
    let mut wrong_length = good.clone();
    let at = wrong_length.len() - 1;
    wrong_length[at] ^= 0x01;
    let missing = &good[..good.len() - 8];
    for (what, bytes) in [
        ("a wrong CRC", &wrong_crc[..]),
        ("a wrong length", &wrong_length[..]),
        ("no trailer", missing),
    ] {
        let err = check_archive(file(bytes).path(), ROOMY).unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Unreadable(m) if m.contains("damaged or cut short")),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn defect_3_a_name_too_long_for_the_file_system_is_refused() {
    let long = "a".repeat(300);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, format!("dir/{long}"), &b"x"[..])
        .unwrap();
    let archive = builder.into_inner().unwrap();
    match check_archive(file(&archive).path(), ROOMY) {
        Err(ArtifactError::UnsafeEntry { reason, .. }) => {
            assert!(
                reason.contains("longer than the file system allows"),
                "{reason}"
            );
        }
        other => panic!("expected the long name to be refused, got {other:?}"),
    }
}

/// The plain tar of `entries` without its end-of-archive marker (two zero blocks), so that
/// more can be appended by hand.
fn without_end(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = tar(entries);
    assert!(
        bytes.ends_with(&[0; 1024]),
        "a tar ends with two zero blocks"
    );
    bytes.truncate(bytes.len() - 1024);
    bytes
}

/// `bytes` with one more file entry `name` whose header claims `claimed` bytes, followed by
/// `data` padded to a block, then by `end` (the end-of-archive marker or nothing).
fn with_last_entry(
    mut bytes: Vec<u8>,
    name: &str,
    claimed: u64,
    data: &[u8],
    end: &[u8],
) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_size(claimed);
    header.set_cksum();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    bytes.extend_from_slice(end);
    bytes
}

/// Asserts the archive is refused as cut short at `entry`, plain and compressed, before
/// anything is extracted.
#[track_caller]
fn assert_cut_short(archive: &[u8], entry: &str) {
    for (what, bytes) in [("plain", archive.to_vec()), ("gzip", gzip(archive))] {
        let err = match check_archive(file(&bytes).path(), ROOMY) {
            Err(err) => err,
            Ok(()) => panic!("{what}: an archive cut short in `{entry}` was accepted"),
        };
        let message = err.to_string();
        assert!(
            message.contains("nothing was extracted")
                && message.contains("cut short")
                && message.contains(&format!("`{entry}`")),
            "{what}: {message}"
        );
    }
}

#[test]
fn issue_29_a_last_entry_claiming_more_bytes_than_the_archive_holds_is_refused() {
    let head = without_end(&ordinary());
    // The file stops in the middle of the entry's data.
    assert_cut_short(
        &with_last_entry(head.clone(), "last.bin", 1000, b"ten bytes!", &[]),
        "last.bin",
    );
    // The entry claims more than is there, and the end-of-archive marker fills the rest:
    // only the missing marker tells.
    assert_cut_short(
        &with_last_entry(head.clone(), "last.bin", 1000, b"ten bytes!", &[0; 1024]),
        "last.bin",
    );
    assert_cut_short(
        &with_last_entry(head.clone(), "last.bin", 1500, b"ten bytes!", &[0; 1024]),
        "last.bin",
    );
    // Claiming what is there is fine, with or without the padding GNU tar adds.
    check_archive(
        file(&with_last_entry(
            head.clone(),
            "last.bin",
            10,
            b"ten bytes!",
            &[0; 1024],
        ))
        .path(),
        ROOMY,
    )
    .unwrap();
    check_archive(
        file(&with_last_entry(
            head,
            "last.bin",
            10,
            b"ten bytes!",
            &[0; 10240],
        ))
        .path(),
        ROOMY,
    )
    .unwrap();
}

#[test]
fn issue_29_an_archive_without_its_end_marker_is_refused() {
    // Every entry whole, but the file stops where the next header or the end marker belongs.
    assert_cut_short(&without_end(&ordinary()), "index.html");
}

#[test]
fn issue_29_the_same_path_twice_is_refused() {
    let mut twice = ordinary();
    twice.push(Entry("VERSION", Kind::File(b"2.0.0\n")));
    assert_refused(&twice, "VERSION", "appears twice");
    // Spelt differently, the same place.
    let mut twice = ordinary();
    twice.push(Entry("./bin//web", Kind::File(b"#!/bin/sh\necho other\n")));
    assert_refused(&twice, "./bin//web", "appears twice");
    assert_refused(
        &[Entry("a/", Kind::Dir), Entry("a", Kind::File(b"a"))],
        "a",
        "appears twice",
    );
}

/// An archive holding one file `depth` folders deep (each folder named `d`).
fn deep(depth: usize) -> Vec<u8> {
    let path = format!("{}f", "d/".repeat(depth));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    builder.append_data(&mut header, &path, &b"x"[..]).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn issue_29_a_path_deeper_than_64_components_is_refused() {
    // 64 components: 63 folders and the file.
    check_archive(file(&deep(63)).path(), ROOMY).unwrap();
    for depth in [64, 2000] {
        match check_archive(file(&deep(depth)).path(), ROOMY) {
            Err(ArtifactError::UnsafeEntry { reason, .. }) => {
                assert!(
                    reason.contains(&format!("{} path components", depth + 1))
                        && reason.contains("at most 64"),
                    "{reason}"
                );
            }
            other => panic!("expected a path {depth} folders deep to be refused, got {other:?}"),
        }
    }
}

#[test]
fn issue_29_data_after_the_end_of_the_archive_is_refused() {
    // Two archives joined: unpacking stops at the first one's end and drops the second's files.
    let mut joined = tar(&ordinary());
    joined.extend(tar(&[Entry("dropped", Kind::File(b"never unpacked"))]));
    assert_cut_short(&joined, "index.html");
    // Zeros after the end are padding (GNU tar fills its last 10 KiB record with them).
    let mut padded = tar(&ordinary());
    padded.extend([0; 8192]);
    check_archive(file(&padded).path(), ROOMY).unwrap();
}
