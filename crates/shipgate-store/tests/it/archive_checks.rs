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
