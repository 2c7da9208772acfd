//! The artifact store: an upload is hashed and checked before anything is stored, stored once
//! by digest, unpacked read-only, and a refused upload leaves nothing behind.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shipgate_core::ByteSize;
use shipgate_store::artifact::{ArtifactError, ArtifactStore};

use crate::fixtures::digest;
use crate::tar_entries::{Entry, Kind, ROOMY, digest_of, gzip, ordinary, tar};

const LIMIT: ByteSize = ByteSize(1 << 20);

struct DataDir {
    dir: tempfile::TempDir,
    artifacts: ArtifactStore,
}

impl DataDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = ArtifactStore::open(dir.path()).unwrap();
        Self { dir, artifacts }
    }

    /// The names in `data_dir/sub`.
    fn list(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[track_caller]
    fn assert_nothing_left(&self) {
        assert_eq!(
            self.list("tmp"),
            Vec::<String>::new(),
            "tmp/ holds nothing after the upload"
        );
    }

    #[track_caller]
    fn assert_nothing_stored(&self) {
        self.assert_nothing_left();
        assert_eq!(
            self.list("artifacts"),
            Vec::<String>::new(),
            "no artifact was stored"
        );
        assert_eq!(
            self.list("releases"),
            Vec::<String>::new(),
            "nothing was unpacked"
        );
    }

    /// Uploads `bytes` in small chunks, checks it against `claimed` and stores it.
    async fn upload(
        &self,
        bytes: &[u8],
        claimed: &shipgate_core::Digest,
    ) -> Result<PathBuf, ArtifactError> {
        let mut upload = self.artifacts.upload(LIMIT, ROOMY).await?;
        for chunk in bytes.chunks(700) {
            upload.write(chunk).await?;
        }
        let checked = upload.finish(claimed).await?;
        assert_eq!(&checked.digest, claimed);
        assert_eq!(checked.size, bytes.len() as u64);
        self.artifacts.store(checked).await
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn an_upload_is_stored_by_digest_and_unpacked_read_only() {
    let data = DataDir::new();
    let archive = gzip(&tar(&ordinary()));
    let digest = digest_of(&archive);

    let dir = data.upload(&archive, &digest).await.unwrap();
    assert_eq!(dir, data.artifacts.release_dir(&digest));
    assert_eq!(dir, data.dir.path().join("releases").join(digest.hex()));
    assert_eq!(data.list("artifacts"), [format!("{}.tar", digest.hex())]);
    assert_eq!(
        fs::read(
            data.dir
                .path()
                .join("artifacts")
                .join(format!("{}.tar", digest.hex()))
        )
        .unwrap(),
        archive,
        "the artifact is kept as uploaded"
    );
    data.assert_nothing_left();

    assert_eq!(fs::read_to_string(dir.join("VERSION")).unwrap(), "1.0.0\n");
    assert_eq!(
        fs::read_to_string(dir.join("static/style.css")).unwrap(),
        "h1 { color: teal }\n"
    );
    assert_eq!(
        fs::read_link(dir.join("run")).unwrap(),
        Path::new("bin/web")
    );
    assert_eq!(
        fs::read_to_string(dir.join("static/version")).unwrap(),
        "1.0.0\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("public/index.html")).unwrap(),
        "<h1>hello</h1>\n"
    );
    assert_eq!(
        fs::metadata(dir.join("index.html")).unwrap().ino(),
        fs::metadata(dir.join("static/index.html")).unwrap().ino(),
        "the hard link is one file"
    );

    assert_eq!(mode(&dir.join("VERSION")), 0o444);
    assert_eq!(
        mode(&dir.join("bin/web")),
        0o555,
        "executable and read-only"
    );
    assert_eq!(mode(&dir.join("bin")), 0o555);
    assert_eq!(mode(&dir.join("static")), 0o555);
    assert_eq!(mode(&dir), 0o555, "no file can be added to the release");
}

#[tokio::test]
async fn storing_the_same_artifact_again_changes_nothing() {
    let data = DataDir::new();
    let archive = tar(&ordinary());
    let digest = digest_of(&archive);
    let dir = data.upload(&archive, &digest).await.unwrap();
    let inode = fs::metadata(dir.join("VERSION")).unwrap().ino();

    let again = data.upload(&archive, &digest).await.unwrap();
    assert_eq!(again, dir);
    assert_eq!(
        fs::metadata(dir.join("VERSION")).unwrap().ino(),
        inode,
        "the release was not unpacked again"
    );
    assert_eq!(data.list("artifacts").len(), 1);
    assert_eq!(data.list("releases"), [digest.hex().to_owned()]);
    data.assert_nothing_left();
}

#[tokio::test]
async fn a_digest_mismatch_is_refused_and_leaves_nothing() {
    let data = DataDir::new();
    let archive = gzip(&tar(&ordinary()));
    let actual = digest_of(&archive);

    let err = data.upload(&archive, &digest(7)).await.unwrap_err();
    match &err {
        ArtifactError::DigestMismatch {
            claimed,
            actual: received,
        } => {
            assert_eq!(claimed, &digest(7));
            assert_eq!(received, &actual);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(digest(7).as_str()) && message.contains(actual.as_str()),
        "{message}"
    );
    data.assert_nothing_stored();
}

#[tokio::test]
async fn an_upload_over_the_limit_is_too_large_and_leaves_nothing() {
    let data = DataDir::new();
    let limit = ByteSize(1000);
    let mut upload = data.artifacts.upload(limit, ROOMY).await.unwrap();
    assert_eq!(
        data.list("tmp").len(),
        1,
        "the upload is received into tmp/"
    );
    upload.write(&[0; 600]).await.unwrap();
    upload.write(&[0; 400]).await.unwrap();
    let err = upload.write(&[0; 1]).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::TooLarge { limit: l } if l == limit),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("max_artifact_size"),
        "says what to change: {err}"
    );
    drop(upload);
    data.assert_nothing_stored();
}

#[tokio::test]
async fn an_upload_of_exactly_the_limit_is_accepted() {
    let data = DataDir::new();
    let archive = tar(&ordinary());
    let mut upload = data
        .artifacts
        .upload(ByteSize(archive.len() as u64), ROOMY)
        .await
        .unwrap();
    upload.write(&archive).await.unwrap();
    upload.finish(&digest_of(&archive)).await.unwrap();
}

#[tokio::test]
async fn an_unsafe_archive_is_refused_and_leaves_nothing() {
    let data = DataDir::new();
    let cases: Vec<Vec<Entry>> = vec![
        vec![
            Entry("VERSION", Kind::File(b"1\n")),
            Entry("../x", Kind::File(b"x")),
        ],
        vec![Entry("/abs", Kind::File(b"x"))],
        vec![Entry("etc", Kind::Symlink("../../etc"))],
        vec![Entry("x", Kind::HardLink("../x"))],
        vec![
            Entry("sub/", Kind::Dir),
            Entry("sub/up", Kind::Symlink("..")),
            Entry("sub/up/x", Kind::File(b"x")),
        ],
        vec![Entry("pipe", Kind::Fifo)],
    ];
    for entries in cases {
        let archive = gzip(&tar(&entries));
        let err = data
            .upload(&archive, &digest_of(&archive))
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err:?}");
        data.assert_nothing_stored();
    }
    let junk = b"not an archive".repeat(100);
    let err = data.upload(&junk, &digest_of(&junk)).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Unreadable(_)), "{err:?}");
    data.assert_nothing_stored();
}

#[tokio::test]
async fn an_abandoned_upload_leaves_nothing() {
    let data = DataDir::new();
    let mut upload = data.artifacts.upload(LIMIT, ROOMY).await.unwrap();
    upload.write(b"the client went away").await.unwrap();
    drop(upload);
    data.assert_nothing_stored();

    // Checked but never stored (the release was refused after the upload).
    let archive = tar(&ordinary());
    let mut upload = data.artifacts.upload(LIMIT, ROOMY).await.unwrap();
    upload.write(&archive).await.unwrap();
    let checked = upload.finish(&digest_of(&archive)).await.unwrap();
    drop(checked);
    data.assert_nothing_stored();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_artifact_stored_concurrently_is_stored_once() {
    let data = DataDir::new();
    let archive = tar(&ordinary());
    let digest = digest_of(&archive);
    let mut stores = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (artifacts, archive, digest) =
            (data.artifacts.clone(), archive.clone(), digest.clone());
        stores.spawn(async move {
            let mut upload = artifacts.upload(LIMIT, ROOMY).await?;
            upload.write(&archive).await?;
            artifacts.store(upload.finish(&digest).await?).await
        });
    }
    while let Some(stored) = stores.join_next().await {
        assert_eq!(
            stored.unwrap().unwrap(),
            data.artifacts.release_dir(&digest)
        );
    }
    data.assert_nothing_left();
}

#[test]
fn opening_the_store_clears_what_a_killed_server_left_in_tmp() {
    let d = DataDir::new();
    fs::write(d.dir.path().join("tmp/upload-cut-off"), b"half an upload").unwrap();
    fs::create_dir_all(d.dir.path().join("tmp/unpack-half/bin")).unwrap();
    fs::write(d.dir.path().join("tmp/unpack-half/bin/web"), b"#!/bin/sh").unwrap();
    ArtifactStore::open(d.dir.path()).unwrap();
    assert!(d.list("tmp").is_empty(), "{:?}", d.list("tmp"));
}

#[tokio::test]
async fn defect_2_setuid_setgid_sticky_and_group_or_world_write_bits_are_stripped() {
    let data = DataDir::new();
    let archive = gzip(&tar(&[
        Entry("shared/", Kind::DirMode(0o1777)),
        Entry("shared/rootid", Kind::Mode(0o6755, b"#!/bin/sh\nid\n")),
        Entry("setgid", Kind::Mode(0o2711, b"#!/bin/sh\nid\n")),
        Entry("open.txt", Kind::Mode(0o666, b"anyone may write\n")),
        Entry("VERSION", Kind::File(b"1\n")),
    ]));
    let dir = data.upload(&archive, &digest_of(&archive)).await.unwrap();
    for (path, expected) in [
        ("shared", 0o555),
        ("shared/rootid", 0o555),
        ("setgid", 0o511),
        ("open.txt", 0o444),
        ("VERSION", 0o444),
    ] {
        assert_eq!(
            mode(&dir.join(path)),
            expected,
            "{path}: mode {:o}",
            mode(&dir.join(path))
        );
    }
    let no_xattrs = std::process::Command::new("getfattr")
        .args(["-d", "-m", "-", "-R"])
        .arg(&dir)
        .output();
    if let Ok(out) = no_xattrs {
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "no extended attributes: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[tokio::test]
async fn defect_3_a_name_too_long_leaves_no_partial_directory() {
    let data = DataDir::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_gnu();
    ok.set_size(2);
    ok.set_mode(0o644);
    builder
        .append_data(&mut ok, "VERSION", &b"1\n"[..])
        .unwrap();
    let mut long = tar::Header::new_gnu();
    long.set_size(1);
    long.set_mode(0o644);
    builder
        .append_data(&mut long, "a".repeat(256), &b"x"[..])
        .unwrap();
    let archive = gzip(&builder.into_inner().unwrap());
    let err = data
        .upload(&archive, &digest_of(&archive))
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err:?}");
    data.assert_nothing_stored();
}

#[tokio::test]
async fn issue_29_cut_short_duplicate_and_deep_archives_are_refused_and_leave_nothing() {
    let data = DataDir::new();
    let mut cut = tar(&ordinary());
    cut.truncate(cut.len() - 1024);
    let mut twice = ordinary();
    twice.push(Entry("VERSION", Kind::File(b"2.0.0\n")));
    let mut deep = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    deep.append_data(&mut header, format!("{}f", "d/".repeat(2000)), &b"x"[..])
        .unwrap();
    for (what, archive) in [
        ("cut short", gzip(&cut)),
        ("a path twice", gzip(&tar(&twice))),
        ("2,000 folders deep", gzip(&deep.into_inner().unwrap())),
    ] {
        let refused = data.upload(&archive, &digest_of(&archive)).await;
        assert!(refused.is_err(), "{what}: accepted");
        data.assert_nothing_stored();
    }
}

#[tokio::test]
async fn issue_29_an_upload_whose_unpack_fails_keeps_nothing() {
    let data = DataDir::new();
    // Where the release would be moved cannot be written (a full disk fails the same way,
    // only later); even root cannot make a folder inside a file.
    let releases = data.dir.path().join("releases");
    fs::remove_dir(&releases).unwrap();
    fs::write(&releases, b"not a folder").unwrap();
    let archive = gzip(&tar(&ordinary()));
    let digest = digest_of(&archive);
    let err = data.upload(&archive, &digest).await.unwrap_err();
    assert!(matches!(err, ArtifactError::Io { .. }), "{err:?}");
    assert_eq!(
        data.list("artifacts"),
        Vec::<String>::new(),
        "the artifact was not kept"
    );
    data.assert_nothing_left();
    assert!(!data.artifacts.has(&digest));

    // Once there is room, the same upload goes through.
    fs::remove_file(&releases).unwrap();
    fs::create_dir(&releases).unwrap();
    let dir = data.upload(&archive, &digest).await.unwrap();
    assert_eq!(fs::read_to_string(dir.join("VERSION")).unwrap(), "1.0.0\n");
}

#[tokio::test]
async fn issue_29_the_artifacts_on_disk_are_listed_by_digest() {
    let data = DataDir::new();
    let archive = tar(&ordinary());
    let stored = digest_of(&archive);
    data.upload(&archive, &stored).await.unwrap();
    // A release directory whose artifact is gone, and names shipgate never writes.
    let left = digest(9);
    fs::create_dir(data.dir.path().join("releases").join(left.hex())).unwrap();
    fs::write(data.dir.path().join("artifacts/notes.txt"), "mine").unwrap();
    fs::write(
        data.dir.path().join("artifacts").join(left.hex()),
        "no .tar",
    )
    .unwrap();
    let on_disk: Vec<_> = data.artifacts.on_disk().unwrap().into_iter().collect();
    let mut expected = vec![stored.clone(), left.clone()];
    expected.sort();
    assert_eq!(on_disk, expected);

    data.artifacts.remove(&left).unwrap();
    assert_eq!(data.artifacts.on_disk().unwrap().len(), 1);
}
