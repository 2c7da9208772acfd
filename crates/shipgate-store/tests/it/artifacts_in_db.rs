//! Artifacts kept in the database in chunks (PostgreSQL keeps them so every server has
//! every artifact): stored a chunk at a time, read back whole and checked against the digest.

use shipgate_core::Digest;
use shipgate_store::Store;
use shipgate_store::artifact::{ArtifactStore, digest_file};

use crate::fixtures::TestStore;

/// A tar of one file of `size` pseudo-random bytes, at `path`; its digest.
fn archive_of(path: &std::path::Path, size: usize) -> Digest {
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "blob.bin", data.as_slice())
        .unwrap();
    builder.finish().unwrap();
    digest_file(path).unwrap()
}

on_both_backends! {
    async fn an_artifact_is_stored_in_chunks_and_read_back_the_same() {
        let t = TestStore::open().await;
        let file = t.dir.path().join("a.tar");
        let digest = archive_of(&file, (5 << 20) / 2);
        assert_eq!(t.store.artifact_chunks(&digest).await.unwrap(), None);
        t.store.put_artifact(&digest, &file).await.unwrap();
        t.store.put_artifact(&digest, &file).await.unwrap();
        assert_eq!(t.store.artifact_chunks(&digest).await.unwrap(), Some(3), "1 MiB chunks");
        let mut back = Vec::new();
        for seq in 0..3 {
            back.extend(t.store.artifact_chunk(&digest, seq).await.unwrap());
        }
        assert!(back == std::fs::read(&file).unwrap(), "the same bytes come back");
        assert_eq!(t.store.is_shared(), t.store.backend() == shipgate_store::Backend::Postgres);
        t.store.remove_artifact(&digest).await.unwrap();
        assert_eq!(t.store.artifact_chunks(&digest).await.unwrap(), None, "retention removed it");
    }

    async fn another_servers_data_dir_gets_the_artifact_from_the_database() {
        let t = TestStore::open().await;
        let file = t.dir.path().join("a.tar");
        let digest = archive_of(&file, 300_000);
        t.store.put_artifact(&digest, &file).await.unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let artifacts = ArtifactStore::open(elsewhere.path()).unwrap();
        let fetched = artifacts.fetch(&t.store, &digest).await.unwrap();
        // SQLite is one server's: its artifacts live in its data dir, never fetched.
        assert_eq!(fetched, t.store.is_shared());
        if fetched {
            assert!(artifacts.has(&digest));
            let unpacked = artifacts.release_dir(&digest).join("blob.bin");
            assert_eq!(std::fs::metadata(unpacked).unwrap().len(), 300_000);
        }
    }
}

#[tokio::test]
async fn a_chunk_changed_in_the_database_is_refused_by_its_digest() {
    let t = crate::fixtures::BACKEND
        .scope(shipgate_store::Backend::Postgres, TestStore::open())
        .await;
    let file = t.dir.path().join("a.tar");
    let digest = archive_of(&file, 300_000);
    t.store.put_artifact(&digest, &file).await.unwrap();
    let mut raw = t.raw().await;
    sqlx::query("UPDATE artifact_chunks SET bytes = $1 WHERE digest = $2 AND seq = 0")
        .bind(vec![0u8; 1000])
        .bind(digest.as_str())
        .execute(&mut raw)
        .await
        .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(elsewhere.path()).unwrap();
    let refused = artifacts.fetch(&t.store, &digest).await.unwrap_err();
    assert!(
        refused.to_string().contains("was changed there"),
        "{refused}"
    );
    assert!(!artifacts.has(&digest), "nothing damaged is kept");
}
