//! Image releases on hosts (issue 31): a host is sent the blobs of an image (its layers, config
//! and manifest) it lacks, each once and by digest, and unpacks the rootfs from its own copies;
//! the start request is then pointed at the host's paths.

use std::path::Path;

use bytes::Bytes;
use shipgate_core::Digest;
use shipgate_deploy::ImageRun;
use shipgate_store::artifact::{ArtifactStore, Blob};

use super::{Placement, rebase};
use crate::AgentClient;
use crate::protocol::{BlobReceived, HostImage, ImageRootfs, LacksBlobs};

impl Placement {
    /// Makes `host` hold the image release of `digest` and its rootfs: the blobs it lacks are
    /// sent (one host's sends one at a time, so two starts at once send a blob once), then the
    /// host unpacks the rootfs. Returns the host's release directory and rootfs.
    pub(super) async fn ensure_image(
        &self,
        host: &str,
        client: &AgentClient,
        digest: &Digest,
    ) -> Result<HostImage, String> {
        let store = ArtifactStore::reader(&self.data_dir);
        let blobs = {
            let (store, image) = (store.clone(), digest.clone());
            tokio::task::spawn_blocking(move || {
                // The host is asked for a rootfs built under no limits of its own: the server
                // unpacked this image under its configured ones (the engine does before any
                // start), from the same blobs, so the host's copy cannot pass them.
                if store.image_record(&image)?.is_none() {
                    return Ok(None);
                }
                store.image_blobs(&image)
            })
            .await
            .map_err(|e| format!("reading the image {digest} failed: {e}"))?
            .map_err(|e| format!("reading the image {digest}: {e}"))?
        };
        let blobs = blobs.ok_or_else(|| {
            format!(
                "the image {digest} is not unpacked on the server ({} has no image.json); it is unpacked there before it is sent to a host",
                store.release_dir(digest).display()
            )
        })?;
        {
            let _one_at_a_time = match self.sending.get(host) {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            let lacking: Vec<Blob> = client
                .call(
                    "/v1/lacks_blobs",
                    &LacksBlobs {
                        blobs: blobs.clone(),
                    },
                )
                .await?;
            let mut bytes_sent = 0u64;
            for blob in &lacking {
                bytes_sent += self.send_blob(client, &store, blob).await?;
            }
            if !lacking.is_empty() {
                tracing::info!(
                    "host {host}: sent {} of the {} blobs of image {digest} ({bytes_sent} bytes)",
                    lacking.len(),
                    blobs.len()
                );
            }
        }
        client
            .call(
                "/v1/image_rootfs",
                &ImageRootfs {
                    digest: digest.clone(),
                },
            )
            .await
    }

    /// Sends one blob from the server's store; the bytes sent.
    async fn send_blob(
        &self,
        client: &AgentClient,
        store: &ArtifactStore,
        blob: &Blob,
    ) -> Result<u64, String> {
        let path = store.layer_path(&blob.digest);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("reading blob {} at {}: {e}", blob.digest, path.display()))?;
        let sent = bytes.len() as u64;
        let _: BlobReceived = client
            .send(
                "/v1/blob",
                "application/octet-stream",
                &[(crate::serve::DIGEST_HEADER, blob.digest.to_string())],
                Bytes::from(bytes),
            )
            .await
            .map_err(|e| format!("sending blob {}: {e}", blob.digest))?;
        Ok(sent)
    }
}

/// `run`'s paths moved from the server's data dir `from` to the host's `to`, its rootfs the
/// host's own.
pub(super) fn on_host_paths(run: &mut ImageRun, image: &HostImage, from: &Path, to: &Path) {
    run.rootfs = image.rootfs.clone();
    run.bundle = rebase(&run.bundle, from, to);
    run.data_dir = rebase(&run.data_dir, from, to);
}
