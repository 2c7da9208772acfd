//! An image's blobs moved between stores by digest (issue 31): a server lists the blobs of an
//! image release ([`ArtifactStore::image_blobs`]), a host's store says which it lacks
//! ([`ArtifactStore::lacking`]) and receives each of those once ([`BlobUpload`]), written to
//! `tmp/`, hashed on the way and kept in `layers/sha256/HEX` only when the bytes are the
//! digest's. The host then unpacks the rootfs from its own copies
//! ([`ArtifactStore::image_rootfs`]), each layer checked again as it is read.

use std::fs;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shipgate_core::Digest;
use tokio::io::AsyncWriteExt;

use super::image::ImageRefusal;
use super::{ArtifactError, ArtifactStore, io_err};

/// One blob of an image (its manifest, its config or a layer): its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// The digest of its bytes.
    pub digest: Digest,
    /// How many bytes it has.
    pub size: u64,
}

/// What became of a blob received whole and matching its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobReceipt {
    /// It is kept now in `layers/sha256`.
    Stored,
    /// The store held it whole already (a second send of it); the copy received was dropped.
    AlreadyHeld,
}

/// A blob being received by digest: written to a temporary file while it is hashed.
pub struct BlobUpload {
    store: ArtifactStore,
    digest: Digest,
    temp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

impl ArtifactStore {
    /// Every blob the image release of `digest` is made of, as this store keeps them: its
    /// layers lowest first, then its config, then its manifest (so that a host sent them in
    /// this order never holds a manifest whose blobs did not arrive). None when `digest` is not
    /// an image this store holds (a directory release).
    pub fn image_blobs(&self, digest: &Digest) -> Result<Option<Vec<Blob>>, ArtifactError> {
        let Some(image) = self.stored_image(digest)? else {
            return Ok(None);
        };
        let mut blobs = Vec::with_capacity(image.layers.len() + 2);
        for layer in &image.layers {
            let digest =
                Digest::parse(&layer.digest).map_err(|_| ImageRefusal::DigestAlgorithm {
                    digest: layer.digest.clone(),
                })?;
            blobs.push(Blob {
                digest,
                size: layer.size,
            });
        }
        blobs.push(Blob {
            digest: image.config_digest,
            size: image.config_size,
        });
        blobs.push(Blob {
            digest: image.digest,
            size: image.manifest.len() as u64,
        });
        Ok(Some(blobs))
    }

    /// Those of `blobs` this store does not hold with their size (a blob of the right size
    /// that is damaged is found when the rootfs is built, which checks every digest again).
    pub fn lacking(&self, blobs: &[Blob]) -> Vec<Blob> {
        blobs
            .iter()
            .filter(|b| !self.has_layer(&b.digest, b.size))
            .cloned()
            .collect()
    }

    /// Starts receiving the blob of `digest`.
    pub fn receive_blob(&self, digest: &Digest) -> Result<BlobUpload, ArtifactError> {
        let dir = self.layers_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let temp = self.blob_temp()?;
        let file = temp
            .as_file()
            .try_clone()
            .map_err(io_err("opening a file for a blob"))?;
        Ok(BlobUpload {
            store: self.clone(),
            digest: digest.clone(),
            temp,
            file: tokio::fs::File::from_std(file),
            hasher: Sha256::new(),
            size: 0,
        })
    }
}

impl BlobUpload {
    /// Appends a chunk.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.size += chunk.len() as u64;
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err(format!("writing blob {}", self.digest)))
    }

    /// Ends the upload: refused as [`ImageRefusal::DamagedInTransit`] (and nothing kept) unless
    /// the bytes hash to the digest; otherwise kept, read-only, unless the store holds the blob
    /// whole already. The bytes received count as the blob's size.
    pub async fn finish(mut self) -> Result<(Blob, BlobReceipt), ArtifactError> {
        let writing = format!("writing blob {}", self.digest);
        self.file.flush().await.map_err(io_err(writing.clone()))?;
        self.file.sync_all().await.map_err(io_err(writing))?;
        let actual = Digest::from_sha256(&self.hasher.finalize().into());
        if actual != self.digest {
            return Err(ImageRefusal::DamagedInTransit {
                digest: self.digest,
                actual,
                size: self.size,
            }
            .into());
        }
        let Self {
            store,
            digest,
            temp,
            size,
            ..
        } = self;
        let blob = Blob { digest, size };
        tokio::task::spawn_blocking(move || {
            if store.holds_whole(&blob.digest, blob.size)? {
                return Ok((blob, BlobReceipt::AlreadyHeld));
            }
            store.keep_blob(temp, &blob.digest)?;
            Ok((blob, BlobReceipt::Stored))
        })
        .await
        .map_err(|e| io_err("keeping a blob")(std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes).into())
    }

    async fn send(
        store: &ArtifactStore,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<BlobReceipt, ArtifactError> {
        let mut upload = store.receive_blob(digest)?;
        for chunk in bytes.chunks(3) {
            upload.write(chunk).await?;
        }
        upload.finish().await.map(|(_, receipt)| receipt)
    }

    #[tokio::test]
    async fn a_blob_is_kept_by_its_digest_once_and_wrong_bytes_are_refused_leaving_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let bytes = b"a layer's bytes".to_vec();
        let digest = digest_of(&bytes);
        let blob = Blob {
            digest: digest.clone(),
            size: bytes.len() as u64,
        };
        assert_eq!(
            store.lacking(std::slice::from_ref(&blob)),
            vec![blob.clone()]
        );

        let refused = send(&store, &digest, b"other bytes").await.unwrap_err();
        let said = refused.to_string();
        assert!(
            said.contains("damaged in transit") && said.contains(&digest.to_string()),
            "{said}"
        );
        assert!(!store.layer_path(&digest).exists(), "nothing is kept");
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "nor left in tmp/"
        );

        assert_eq!(
            send(&store, &digest, &bytes).await.unwrap(),
            BlobReceipt::Stored
        );
        assert_eq!(fs::read(store.layer_path(&digest)).unwrap(), bytes);
        assert!(store.lacking(std::slice::from_ref(&blob)).is_empty());
        assert_eq!(
            send(&store, &digest, &bytes).await.unwrap(),
            BlobReceipt::AlreadyHeld,
            "sent again, it is held already"
        );
        // A blob claimed with the wrong size is still lacking.
        let bigger = Blob {
            size: blob.size + 1,
            ..blob
        };
        assert_eq!(store.lacking(std::slice::from_ref(&bigger)).len(), 1);
    }
}
