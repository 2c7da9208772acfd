//! `check_archive` refuses every entry that could land outside the release directory or is not
//! a plain file, folder or link, and accepts ordinary archives.

use shipgate_store::artifact::{ArtifactError, check_archive};

use crate::tar_entries::{Entry, Kind, file, gzip, ordinary, tar};

fn check(entries: &[Entry]) -> Result<(), ArtifactError> {
    check_archive(file(&tar(entries)).path())
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
    check_archive(file(&gzip(&tar(&ordinary()))).path()).unwrap();
}

#[test]
fn an_archive_packed_by_shipgate_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/c.txt"), "c").unwrap();
    std::os::unix::fs::symlink("a/b/c.txt", dir.path().join("c")).unwrap();
    let mut packed = Vec::new();
    shipgate_store::artifact::pack_dir(dir.path(), &mut packed).unwrap();
    check_archive(file(&packed).path()).unwrap();
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
    let err = check_archive(file(text.as_bytes()).path()).unwrap_err();
    assert!(matches!(err, ArtifactError::Unreadable(_)), "{err:?}");
    let err = check_archive(file(&gzip(text.as_bytes())).path()).unwrap_err();
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
