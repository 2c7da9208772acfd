//! OCI images as releases (issue 31): an image read into the store ([`ImportedImage`]), and its
//! release directory, `rootfs/` (its layers applied in order) beside `image.json`
//! ([`ImageRecord`]).
//!
//! A layer is unpacked under the rules an artifact's entries follow (no path out, no device or
//! pipe, no name too long, no path twice, no path nested too deep, every entry whole, the size
//! and count limits for the whole rootfs), with what differs for a rootfs: symbolic links may
//! name any path (they are read inside the container), but nothing is ever written through a
//! link of the rootfs; hard links name a file of the rootfs; setuid, setgid and sticky bits are
//! dropped (the file is kept); and OCI whiteouts remove what lower layers wrote. The rootfs is
//! built in `tmp/`, so a refused layer leaves nothing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shipgate_core::Digest;
use shipgate_core::image::{Descriptor, ImageConfig};

use super::rootfs::Rootfs;
use super::{ArtifactError, ArtifactStore, UnpackLimits, io_err, make_read_only};

/// Why an image was refused; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageRefusal {
    /// The folder has no `oci-layout` marker or no readable `index.json`.
    #[error(
        "`{path}` is not an OCI image layout ({reason}); write one with `skopeo copy SOURCE oci:DIR:TAG`"
    )]
    NotALayout {
        /// The folder.
        path: String,
        /// What it lacks.
        reason: String,
    },
    /// The index names no image for this machine, or several (the message lists them).
    #[error("{0}")]
    NotChosen(String),
    /// An index, manifest or config larger than [`super::MAX_METADATA`].
    #[error(
        "the image's {what} {digest} is {size} bytes, larger than a sane limit of 4 MiB for a {what}; it was not read: this is not an image shipgate takes, check that the reference names a container image"
    )]
    TooLarge {
        /// `index`, `manifest` or `config`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The size it claims or has.
        size: u64,
    },
    /// A manifest that is not OCI's or Docker's schema 2.
    #[error(
        "the image's {what} {digest} is of type `{media_type}`, which shipgate does not read: convert the image to an OCI image with `skopeo copy --format oci`"
    )]
    MediaType {
        /// What it should be.
        what: &'static str,
        /// Its digest, as written.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// An index inside an index inside the layout's index.
    #[error(
        "the image's index nests indexes more than one deep; copy the image of one platform into a layout (`skopeo copy` without `--all`)"
    )]
    NestedIndex,
    /// The manifest's config is not a container image's.
    #[error(
        "the manifest {digest} has a config of type `{media_type}`: it is an OCI artifact, not a container image; name a container image"
    )]
    NotAnImage {
        /// The manifest's digest.
        digest: Digest,
        /// Its config's media type.
        media_type: String,
    },
    /// The image config is for another operating system or architecture.
    #[error(
        "the image is for {image}, and this machine is {here}: use the image built for {here} (build it for that platform, or `skopeo copy --override-arch` from a multi-platform image)"
    )]
    Platform {
        /// `os/architecture` of the image.
        image: String,
        /// `os/architecture` of this machine.
        here: String,
    },
    /// A blob whose bytes do not match its digest or size.
    #[error(
        "blob {digest} of the image {reason}: the image is damaged; copy it again (`skopeo copy`) and register that copy"
    )]
    Damaged {
        /// The digest it should have.
        digest: Digest,
        /// What does not match.
        reason: String,
    },
    /// A blob the image names is not in its layout (or a layer no longer in the store).
    #[error(
        "blob {digest} is missing from `{layout}`: the copy is incomplete; copy the image again"
    )]
    Missing {
        /// The blob.
        digest: Digest,
        /// The layout (or the store's layers).
        layout: String,
    },
    /// An index, manifest or config that does not parse.
    #[error(
        "the image's {what} {digest} cannot be read ({reason}): the image is damaged or is not a container image; copy it again"
    )]
    Unparsable {
        /// `index`, `manifest` or `config`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The parser's complaint.
        reason: String,
    },
    /// A digest other than sha256 (or not written `sha256:` and 64 lowercase hex digits).
    #[error(
        "`{digest}` is not a sha256 digest, the only kind shipgate verifies; copy the image with a tool that writes sha256 digests (`skopeo copy`)"
    )]
    DigestAlgorithm {
        /// The digest as written.
        digest: String,
    },
    /// A blob sent to this store by digest (a host's agent receiving it from its server) whose
    /// bytes hash to another digest.
    #[error(
        "blob {digest} was damaged in transit: the {size} bytes received hash to {actual}; it was refused and nothing was kept (the server sends it again at the next start)"
    )]
    DamagedInTransit {
        /// The digest it was sent as.
        digest: Digest,
        /// The digest of what arrived.
        actual: Digest,
        /// How many bytes arrived.
        size: u64,
    },
    /// A layer compressed with zstd.
    #[error(
        "layer {digest} is compressed with zstd, which shipgate does not unpack: copy the image with gzip layers (`skopeo copy --dest-compress-format gzip`)"
    )]
    Zstd {
        /// The layer.
        digest: Digest,
    },
    /// A layer that is not a tar or a gzip-compressed tar (a foreign layer, say).
    #[error(
        "layer {digest} is of type `{media_type}`; shipgate unpacks tar and tar+gzip layers only: copy the image with gzip layers (`skopeo copy --dest-compress-format gzip`)"
    )]
    LayerType {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// An entry of a layer that could escape the rootfs or is not a file, folder or link.
    #[error(
        "the image is refused, nothing was unpacked: entry `{entry}` of layer {layer} {reason}"
    )]
    Entry {
        /// The layer.
        layer: Digest,
        /// The entry's path as written in the layer.
        entry: String,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// The rootfs would pass the server's size or entry limit.
    #[error(
        "the image is refused, nothing was unpacked: it unpacks to more than the server's limit of {limit} (raise `{key}` in [server] if this is expected)"
    )]
    UnpacksTooLarge {
        /// The limit passed, as written in the config.
        limit: String,
        /// The config key that sets it.
        key: &'static str,
    },
}

/// An image read into the store: its manifest, config and layers checked and kept.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// The digest of the manifest's bytes: the release's digest.
    pub digest: Digest,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// The image config, as far as running it needs.
    pub config: ImageConfig,
    /// The digest of the image config's bytes.
    pub config_digest: Digest,
    /// How many bytes the image config has.
    pub config_size: u64,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
    /// The layers' sizes together (compressed, as kept).
    pub size: u64,
    /// How many of the layers were new to this store.
    pub stored_layers: usize,
}

/// One layer of an image, as its release keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Its media type (tar or tar+gzip).
    pub media_type: String,
    /// The digest of its bytes as kept.
    pub digest: Digest,
    /// Its size as kept.
    pub size: u64,
}

/// What an image release holds, written beside its rootfs as `image.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest's digest (the release's).
    pub digest: Digest,
    /// The image config's digest.
    pub config_digest: Digest,
    /// The image config, whole: the JSON text of its blob.
    pub config: String,
    /// The layers, lowest first.
    pub layers: Vec<LayerRecord>,
    /// The layers' sizes together.
    pub size: u64,
}

impl ImageRecord {
    /// The image config, as far as running it needs.
    pub fn image_config(&self) -> Result<ImageConfig, serde_json::Error> {
        serde_json::from_str(&self.config)
    }
}

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
}

/// How a layer of `media_type` is compressed, refused unless it is a tar or tar+gzip layer
/// (OCI's names and Docker's).
pub(super) fn layer_compression(
    digest: &Digest,
    media_type: &str,
) -> Result<Compression, ImageRefusal> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        t if t.ends_with("+zstd") || t.ends_with(".zstd") => Err(ImageRefusal::Zstd {
            digest: digest.clone(),
        }),
        other => Err(ImageRefusal::LayerType {
            digest: digest.clone(),
            media_type: other.to_owned(),
        }),
    }
}

impl ArtifactStore {
    /// The release directory of `image`: `rootfs/`, its layers (kept by
    /// [`ArtifactStore::import_layout`]) applied in order, whiteouts and all, and `image.json`.
    /// Built in `tmp/`, moved into place and made read-only; a release directory already there
    /// is returned as it is. Each layer is checked against its digest again as it is read, and
    /// refused as [`ImageRefusal::Entry`] for an entry that climbs out, is a device or a pipe,
    /// is written through a link, is a hard link to no file of the rootfs, or is a whiteout
    /// that escapes the rootfs; `limits` count every layer's entries and bytes together.
    pub fn unpack_image(
        &self,
        image: &ImportedImage,
        limits: UnpackLimits,
    ) -> Result<PathBuf, ArtifactError> {
        let dir = self.release_dir(&image.digest);
        if dir.exists() {
            return Ok(dir);
        }
        let staging = tempfile::Builder::new()
            .prefix("image-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a folder for an image's rootfs"))?;
        self.build_image(staging.path(), image, limits)?;
        // Renamed while still writable, made read-only in place after, as an artifact's.
        match fs::rename(staging.path(), &dir) {
            Ok(()) => {}
            Err(_) if dir.exists() => return Ok(dir),
            Err(e) => return Err(io_err(format!("moving the release into {}", dir.display()))(e)),
        }
        if let Err(e) = make_read_only(&dir) {
            if let Err(e) = self.remove_release_dir(&dir) {
                tracing::warn!(
                    "could not remove the partial release {}: {e}",
                    dir.display()
                );
            }
            return Err(io_err("making the release read-only")(e));
        }
        Ok(dir)
    }

    pub(super) fn build_image(
        &self,
        staging: &Path,
        image: &ImportedImage,
        limits: UnpackLimits,
    ) -> Result<(), ArtifactError> {
        let mut layers = Vec::with_capacity(image.layers.len());
        for desc in &image.layers {
            let digest =
                Digest::parse(&desc.digest).map_err(|_| ImageRefusal::DigestAlgorithm {
                    digest: desc.digest.clone(),
                })?;
            layers.push(LayerRecord {
                media_type: desc.media_type.clone(),
                digest,
                size: desc.size,
            });
        }
        let mut rootfs = Rootfs::new(staging.join("rootfs"), limits)?
            .sharing_files(self.root.join("layers").join("files"))?;
        for layer in &layers {
            rootfs.apply(&self.layer_path(&layer.digest), layer)?;
        }
        let config_path = self.layer_path(&image.config_digest);
        let config_bytes = fs::read(&config_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageRefusal::Missing {
                digest: image.config_digest.clone(),
                layout: self.layers_dir().display().to_string(),
            }
            .into(),
            _ => io_err(format!("reading {}", config_path.display()))(e),
        })?;
        let actual = Digest::from_sha256(&Sha256::digest(&config_bytes).into());
        if actual != image.config_digest {
            return Err(ImageRefusal::Damaged {
                digest: image.config_digest.clone(),
                reason: format!("hashes to {actual} in the store"),
            }
            .into());
        }
        let config = String::from_utf8(config_bytes).map_err(|e| ImageRefusal::Unparsable {
            what: "config",
            digest: image.config_digest.clone(),
            reason: e.to_string(),
        })?;
        let record = ImageRecord {
            digest: image.digest.clone(),
            config_digest: image.config_digest.clone(),
            config,
            layers,
            size: image.size,
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| io_err("writing image.json")(io::Error::other(e)))?;
        fs::write(staging.join("image.json"), json).map_err(io_err("writing image.json"))
    }

    /// The record and the rootfs of the image release of `digest`, unpacked now from the
    /// store's layers if it is not yet (see [`ArtifactStore::unpack_image`]); None when
    /// `digest` is not an image the store holds (a directory release).
    pub fn image_rootfs(
        &self,
        digest: &Digest,
        limits: UnpackLimits,
    ) -> Result<Option<(ImageRecord, PathBuf)>, ArtifactError> {
        let rootfs = self.release_dir(digest).join("rootfs");
        if let Some(record) = self.image_record(digest)? {
            return Ok(Some((record, rootfs)));
        }
        let Some(image) = self.stored_image(digest)? else {
            return Ok(None);
        };
        self.unpack_image(&image, limits)?;
        let record = self.image_record(digest)?.ok_or_else(|| {
            io_err(format!(
                "reading the image release {digest}: its folder holds no image.json (remove {} and try again)",
                self.release_dir(digest).display()
            ))(io::Error::from(io::ErrorKind::NotFound))
        })?;
        Ok(Some((record, rootfs)))
    }

    /// What the image release of `digest` holds, from its `image.json`; None when there is no
    /// such release directory, or it is an artifact's.
    pub fn image_record(&self, digest: &Digest) -> Result<Option<ImageRecord>, ArtifactError> {
        let path = self.release_dir(digest).join("image.json");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io_err(format!(
                "reading {} (changed outside shipgate: remove the release directory and register the image again)",
                path.display()
            ))(io::Error::new(io::ErrorKind::InvalidData, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use shipgate_core::ByteSize;
    use shipgate_core::image::this_platform;

    use super::super::{RunConfigJson, write_layout};
    use super::*;

    const ROOMY: UnpackLimits = UnpackLimits {
        max_size: ByteSize(1 << 30),
        max_files: 10_000,
    };

    /// What one layer entry is.
    enum Kind {
        File(&'static [u8]),
        Bytes(Vec<u8>, u32),
        Mode(u32, &'static [u8]),
        Dir,
        Symlink(&'static str),
        HardLink(&'static str),
        CharDevice,
        Fifo,
    }

    /// One entry: its path exactly as written in the header, and what it is.
    struct E(&'static str, Kind);

    /// A gzip-compressed tar of `entries` in order, names written raw (so `..` goes in too).
    fn layer(entries: Vec<E>) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for E(path, kind) in entries {
            let mut header = tar::Header::new_gnu();
            put(&mut header.as_old_mut().name, path);
            header.set_mtime(0);
            let (ty, mode, data): (tar::EntryType, u32, Vec<u8>) = match kind {
                Kind::File(data) => (tar::EntryType::Regular, 0o644, data.to_vec()),
                Kind::Bytes(data, mode) => (tar::EntryType::Regular, mode, data),
                Kind::Mode(mode, data) => (tar::EntryType::Regular, mode, data.to_vec()),
                Kind::Dir => (tar::EntryType::Directory, 0o755, Vec::new()),
                Kind::Symlink(target) => {
                    put(&mut header.as_old_mut().linkname, target);
                    (tar::EntryType::Symlink, 0o777, Vec::new())
                }
                Kind::HardLink(target) => {
                    put(&mut header.as_old_mut().linkname, target);
                    (tar::EntryType::Link, 0o644, Vec::new())
                }
                Kind::CharDevice => {
                    header.set_device_major(1).unwrap();
                    header.set_device_minor(3).unwrap();
                    (tar::EntryType::Char, 0o666, Vec::new())
                }
                Kind::Fifo => (tar::EntryType::Fifo, 0o644, Vec::new()),
            };
            header.set_entry_type(ty);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, &data[..]).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn put(field: &mut [u8; 100], text: &str) {
        field.fill(0);
        field[..text.len()].copy_from_slice(text.as_bytes());
    }

    /// busybox-static's binary, or None (the test says it is skipped).
    fn busybox() -> Option<Vec<u8>> {
        match fs::read("/bin/busybox") {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                eprintln!(
                    "SKIPPED: /bin/busybox cannot be read ({e}); apt-get install busybox-static"
                );
                None
            }
        }
    }

    /// A FROM-scratch base layer: busybox, and `sh` linked to it.
    fn base_layer(busybox: Vec<u8>) -> Vec<u8> {
        layer(vec![
            E("./", Kind::Dir),
            E("./bin/", Kind::Dir),
            E("./bin/busybox", Kind::Bytes(busybox, 0o755)),
            E("./bin/sh", Kind::Symlink("/bin/busybox")),
            E("./etc/", Kind::Dir),
            E(
                "./etc/passwd",
                Kind::File(b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"),
            ),
        ])
    }

    fn start_layer(version: &'static str) -> Vec<u8> {
        let script: &'static [u8] = match version {
            "1" => b"#!/bin/sh\necho v1\n",
            _ => b"#!/bin/sh\necho v2\n",
        };
        layer(vec![
            E("./app/", Kind::Dir),
            E("./app/start", Kind::Mode(0o755, script)),
        ])
    }

    fn run() -> RunConfigJson {
        RunConfigJson {
            entrypoint: Some(vec!["/app/start".into()]),
            user: Some("1000".into()),
            exposed_ports: Some([("8080/tcp".to_owned(), serde_json::json!({}))].into()),
            ..RunConfigJson::default()
        }
    }

    fn store() -> (tempfile::TempDir, ArtifactStore) {
        let data = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(data.path()).unwrap();
        (data, store)
    }

    /// A layout holding one image, tagged `tag`, of `layers`.
    fn layout_of(layers: &[Vec<u8>], tag: &str) -> (tempfile::TempDir, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let digest = write_layout(dir.path(), None, layers, run(), tag).unwrap();
        (dir, digest)
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn sha(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes).into())
    }

    /// Asserts `data`'s store kept none of the image: no release, nothing in tmp/, and
    /// exactly `layers` in the shared layers.
    #[track_caller]
    fn nothing_kept_but(data: &Path, layers: &[&Digest]) {
        assert_eq!(files_in(&data.join("releases")), Vec::<String>::new());
        assert_eq!(files_in(&data.join("tmp")), Vec::<String>::new());
        let mut want: Vec<String> = layers.iter().map(|d| d.hex().to_owned()).collect();
        want.sort();
        assert_eq!(files_in(&data.join("layers/sha256")), want);
    }

    #[track_caller]
    fn refused(err: ArtifactError, says: &[&str]) {
        let message = err.to_string();
        for s in says {
            assert!(message.contains(s), "`{message}` should say `{s}`");
        }
    }

    /// An image of `layers` imported into a new store, and that store.
    fn imported(layers: &[Vec<u8>]) -> (tempfile::TempDir, ArtifactStore, ImportedImage) {
        let (layout, _) = layout_of(layers, "1");
        let (data, store) = store();
        let image = store.import_layout(layout.path(), None, ROOMY).unwrap();
        (data, store, image)
    }

    fn unpack_refused(layers: &[Vec<u8>], says: &[&str]) {
        let (data, store, image) = imported(layers);
        let err = store.unpack_image(&image, ROOMY).unwrap_err();
        refused(err, says);
        assert!(!store.release_dir(&image.digest).exists());
        assert_eq!(files_in(&data.path().join("tmp")), Vec::<String>::new());
    }

    /// A layout written by hand: `config` and `layers` (media type, bytes) under one manifest.
    fn hand_layout(config: &serde_json::Value, layers: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(dir.path(), "application/vnd.oci.image.config.v1+json",
                &serde_json::to_vec(config).unwrap()),
            "layers": layers.iter().map(|(t, b)| blob(dir.path(), t, b)).collect::<Vec<_>>(),
        });
        let manifest = blob(
            dir.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        index(dir.path(), &[manifest]);
        dir
    }

    /// Writes `bytes` as a blob of `layout`; its descriptor.
    fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let digest = sha(bytes);
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(digest.hex()), bytes).unwrap();
        serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
    }

    fn index(layout: &Path, manifests: &[serde_json::Value]) {
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion": "1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    fn config_for(architecture: &str) -> serde_json::Value {
        serde_json::json!({
            "architecture": architecture, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        })
    }

    #[test]
    fn two_image_versions_share_their_base_layer_stored_once() {
        let Some(busybox) = busybox() else { return };
        let base = base_layer(busybox);
        let layout = tempfile::tempdir().unwrap();
        let v1 = write_layout(
            layout.path(),
            None,
            &[base.clone(), start_layer("1")],
            run(),
            "1.0",
        )
        .unwrap();
        let v2 = write_layout(
            layout.path(),
            None,
            &[base.clone(), start_layer("2")],
            run(),
            "2.0",
        )
        .unwrap();
        assert_ne!(v1, v2);
        let (data, store) = store();
        let first = store
            .import_layout(layout.path(), Some("1.0"), ROOMY)
            .unwrap();
        let second = store
            .import_layout(layout.path(), Some("2.0"), ROOMY)
            .unwrap();
        assert_eq!((first.digest.clone(), second.digest.clone()), (v1, v2));
        assert_eq!((first.stored_layers, second.stored_layers), (2, 1));
        assert_eq!(first.layers[0], second.layers[0]);
        assert_eq!(first.size, first.layers.iter().map(|l| l.size).sum::<u64>());
        // Three layers, and each image's manifest and config.
        let kept = files_in(&data.path().join("layers/sha256"));
        assert_eq!(kept.len(), 3 + 2 + 2, "{kept:?}");
        let base_hex = sha(&base).hex().to_owned();
        assert_eq!(kept.iter().filter(|k| **k == base_hex).count(), 1);
        // Importing again copies nothing.
        let again = store
            .import_layout(layout.path(), Some("2.0"), ROOMY)
            .unwrap();
        assert_eq!(again.stored_layers, 0);
        assert_eq!(again.digest, second.digest);
        // Without a name, a layout of two images says which it holds.
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["name one", "1.0", "2.0"]);
    }

    #[test]
    fn an_unpacked_image_holds_its_layers_read_only_with_its_record() {
        let Some(busybox) = busybox() else { return };
        let (_data, store, image) = imported(&[base_layer(busybox), start_layer("1")]);
        let dir = store.unpack_image(&image, ROOMY).unwrap();
        assert_eq!(dir, store.release_dir(&image.digest));
        let rootfs = dir.join("rootfs");
        let meta = fs::metadata(rootfs.join("bin/busybox")).unwrap();
        assert!(meta.is_file() && meta.permissions().mode() & 0o111 != 0);
        assert_eq!(meta.permissions().mode() & 0o222, 0, "read-only");
        assert_eq!(
            fs::read_link(rootfs.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let out = std::process::Command::new(rootfs.join("bin/busybox"))
            .args(["sh", "-c", "echo from-the-image"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-image\n");
        assert_eq!(
            fs::read_to_string(rootfs.join("app/start")).unwrap(),
            "#!/bin/sh\necho v1\n"
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o555
        );

        let record = store.image_record(&image.digest).unwrap().unwrap();
        assert_eq!(record.digest, image.digest);
        assert_eq!(record.config_digest, image.config_digest);
        assert_eq!(record.size, image.size);
        assert_eq!(record.layers.len(), 2);
        assert_eq!(record.image_config().unwrap(), image.config);
        assert_eq!(
            record.image_config().unwrap().config.entrypoint,
            Some(vec!["/app/start".to_owned()])
        );
        // The config as its blob has it, byte for byte.
        assert_eq!(sha(record.config.as_bytes()), image.config_digest);
        // Unpacked once.
        assert_eq!(store.unpack_image(&image, ROOMY).unwrap(), dir);
        let (again, rootfs_again) = store.image_rootfs(&image.digest, ROOMY).unwrap().unwrap();
        assert_eq!((again, rootfs_again), (record, rootfs));
    }

    #[test]
    fn an_image_is_unpacked_from_the_store_alone_and_a_directory_release_is_not_one() {
        let (_data, store, image) = imported(&[layer(vec![E("hello", Kind::File(b"hi\n"))])]);
        let stored = store.stored_image(&image.digest).unwrap().unwrap();
        assert_eq!(
            (stored.manifest.clone(), stored.layers.clone()),
            (image.manifest.clone(), image.layers.clone())
        );
        let (record, rootfs) = store.image_rootfs(&image.digest, ROOMY).unwrap().unwrap();
        assert_eq!(record.digest, image.digest);
        assert_eq!(fs::read_to_string(rootfs.join("hello")).unwrap(), "hi\n");
        let unknown = Digest::from_sha256(&[7; 32]);
        assert!(store.image_rootfs(&unknown, ROOMY).unwrap().is_none());
        assert!(store.image_record(&unknown).unwrap().is_none());
    }

    #[test]
    fn whiteouts_remove_a_file_a_tree_and_an_opaque_image_folders_lower_content() {
        let lower = layer(vec![
            E("./etc/", Kind::Dir),
            E("./etc/keep", Kind::File(b"keep")),
            E("./etc/gone", Kind::File(b"gone")),
            E("./srv/", Kind::Dir),
            E("./srv/tree/", Kind::Dir),
            E("./srv/tree/deep/", Kind::Dir),
            E("./srv/tree/deep/file", Kind::File(b"x")),
            E("./var/", Kind::Dir),
            E("./var/cache/", Kind::Dir),
            E("./var/cache/old", Kind::File(b"old")),
            E("./var/cache/sub/", Kind::Dir),
            E("./var/cache/sub/older", Kind::File(b"older")),
            E("./var/other", Kind::File(b"stays")),
        ]);
        let upper = layer(vec![
            // Folders repeat across layers; `./` or not, they are the same folder.
            E("etc/", Kind::Dir),
            E("etc/.wh.gone", Kind::File(b"")),
            E("srv/.wh.tree", Kind::File(b"")),
            E("./var/cache/", Kind::Dir),
            // This layer's own entry, written before its opaque marker, stays.
            E("./var/cache/new", Kind::File(b"new")),
            E("./var/cache/.wh..wh..opq", Kind::File(b"")),
            E("./var/cache/newer", Kind::File(b"newer")),
            // Whiting out what is not there removes nothing.
            E("./nowhere/.wh.nothing", Kind::File(b"")),
        ]);
        let (_data, store, image) = imported(&[lower, upper]);
        let rootfs = store.unpack_image(&image, ROOMY).unwrap().join("rootfs");
        assert_eq!(files_in(&rootfs.join("etc")), ["keep"]);
        assert_eq!(files_in(&rootfs.join("srv")), Vec::<String>::new());
        assert_eq!(files_in(&rootfs.join("var/cache")), ["new", "newer"]);
        assert_eq!(
            fs::read_to_string(rootfs.join("var/other")).unwrap(),
            "stays"
        );
        assert!(!rootfs.join("nowhere").exists());
    }

    #[test]
    fn a_layer_whose_bytes_do_not_match_its_digest_is_refused_and_only_verified_layers_stay() {
        let good = layer(vec![E("a", Kind::File(b"a"))]);
        let bad = layer(vec![E("b", Kind::File(b"b"))]);
        let (layout, _) = layout_of(&[good.clone(), bad.clone()], "1");
        let blob = layout.path().join("blobs/sha256").join(sha(&bad).hex());
        let mut bytes = fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&blob, &bytes).unwrap();
        let (data, store) = store();
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &[sha(&bad).as_str(), "damaged", "copy it again"]);
        nothing_kept_but(data.path(), &[&sha(&good)]);

        // A blob cut short is damaged too.
        bytes.truncate(last);
        fs::write(&blob, &bytes).unwrap();
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &[sha(&bad).as_str(), "damaged"]);
        nothing_kept_but(data.path(), &[&sha(&good)]);

        // A missing one is named.
        fs::remove_file(&blob).unwrap();
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(
            err,
            &[sha(&bad).as_str(), "missing", "copy the image again"],
        );
    }

    #[test]
    fn a_layer_changed_in_the_store_is_refused_when_unpacked_and_replaced_when_imported_again() {
        let one = layer(vec![E("a", Kind::File(b"a"))]);
        let (layout, _) = layout_of(std::slice::from_ref(&one), "1");
        let (data, store) = store();
        let image = store.import_layout(layout.path(), None, ROOMY).unwrap();
        let kept = store.layer_path(&sha(&one));
        let mut bytes = fs::read(&kept).unwrap();
        bytes[20] ^= 0xff;
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&kept, &bytes).unwrap();
        let err = store.unpack_image(&image, ROOMY).unwrap_err();
        refused(err, &["changed in the store", "import the image again"]);
        assert!(!store.release_dir(&image.digest).exists());
        assert_eq!(files_in(&data.path().join("tmp")), Vec::<String>::new());
        // A kept layer is reused only whole: importing again puts the right bytes back.
        let again = store.import_layout(layout.path(), None, ROOMY).unwrap();
        assert_eq!(again.stored_layers, 1);
        assert_eq!(fs::read(&kept).unwrap(), one);
        store.unpack_image(&again, ROOMY).unwrap();
    }

    #[test]
    fn a_whiteout_that_escapes_the_rootfs_is_refused() {
        let escapes = ["a whiteout that escapes the rootfs", "rebuild the image"];
        unpack_refused(
            &[layer(vec![E("../.wh.escape", Kind::File(b""))])],
            &escapes,
        );
        unpack_refused(
            &[layer(vec![E("a/../../.wh.escape", Kind::File(b""))])],
            &escapes,
        );
        unpack_refused(&[layer(vec![E("etc/.wh...", Kind::File(b""))])], &escapes);
        // Through a link of the rootfs: `etc` leads to the host's /etc.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("passwd"), "host").unwrap();
        let target: &'static str = Box::leak(outside.path().display().to_string().into_boxed_str());
        unpack_refused(
            &[
                layer(vec![E("etc", Kind::Symlink(target))]),
                layer(vec![E("etc/.wh.passwd", Kind::File(b""))]),
            ],
            &["a whiteout that escapes the rootfs (through the link `etc`)"],
        );
        assert_eq!(
            fs::read_to_string(outside.path().join("passwd")).unwrap(),
            "host"
        );
    }

    #[test]
    fn an_image_for_another_platform_is_refused_naming_both() {
        let here = this_platform();
        let other = if here.architecture == "s390x" {
            "amd64"
        } else {
            "s390x"
        };
        let layout = hand_layout(&config_for(other), &[]);
        let (data, store) = store();
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(
            err,
            &[
                &format!("linux/{other}"),
                &format!("linux/{}", here.architecture),
                "use the image built for",
            ],
        );
        nothing_kept_but(data.path(), &[]);
        // An index without this platform's manifest says what it holds.
        let layout = tempfile::tempdir().unwrap();
        let mut manifest = blob(
            layout.path(),
            "application/vnd.oci.image.manifest.v1+json",
            b"{}",
        );
        manifest["platform"] = serde_json::json!({"os": "linux", "architecture": other});
        index(layout.path(), &[manifest]);
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["no manifest for", &format!("linux/{other}")]);
    }

    #[test]
    fn a_manifest_larger_than_a_sane_limit_is_refused() {
        let layout = tempfile::tempdir().unwrap();
        let padding = "x".repeat(5 << 20);
        let huge = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": [], "annotations": {"padding": padding},
        });
        let desc = blob(
            layout.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&huge).unwrap(),
        );
        index(layout.path(), std::slice::from_ref(&desc));
        let (data, store) = store();
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(
            err,
            &[
                "manifest",
                "larger than a sane limit of 4 MiB",
                "container image",
            ],
        );
        // A descriptor that claims a small size is not believed.
        let mut lying = desc;
        lying["size"] = serde_json::json!(300);
        index(layout.path(), &[lying]);
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["larger than a sane limit"]);
        nothing_kept_but(data.path(), &[]);
    }

    #[test]
    fn a_device_or_a_pipe_in_a_layer_is_refused() {
        unpack_refused(
            &[layer(vec![
                E("dev/", Kind::Dir),
                E("dev/null", Kind::CharDevice),
            ])],
            &["`dev/null`", "is a device", "remove it from the image"],
        );
        unpack_refused(
            &[layer(vec![E("run.pipe", Kind::Fifo)])],
            &["is a named pipe", "remove it from the image"],
        );
    }

    #[test]
    fn nothing_is_written_through_a_link_of_the_rootfs() {
        let outside = tempfile::tempdir().unwrap();
        let target: &'static str = Box::leak(outside.path().display().to_string().into_boxed_str());
        let says = [
            "`a/b`",
            "is written through the link `a`",
            "rebuild the image",
        ];
        // A link from a lower layer, or from the same one.
        unpack_refused(
            &[
                layer(vec![E("a", Kind::Symlink(target))]),
                layer(vec![E("a/b", Kind::File(b"x"))]),
            ],
            &says,
        );
        unpack_refused(
            &[layer(vec![
                E("a", Kind::Symlink("../../..")),
                E("a/b", Kind::File(b"x")),
            ])],
            &says,
        );
        assert_eq!(files_in(outside.path()), Vec::<String>::new());
        // A link replaced by a folder is no longer followed: the folder is made in its place.
        let (_data, store, image) = imported(&[
            layer(vec![E("a", Kind::Symlink(target))]),
            layer(vec![E("a/", Kind::Dir), E("a/b", Kind::File(b"x"))]),
        ]);
        let rootfs = store.unpack_image(&image, ROOMY).unwrap().join("rootfs");
        assert!(fs::symlink_metadata(rootfs.join("a")).unwrap().is_dir());
        assert_eq!(files_in(outside.path()), Vec::<String>::new());
    }

    #[test]
    fn setuid_bits_are_dropped_and_hard_links_stay_inside_the_image() {
        let (_data, store, image) = imported(&[
            layer(vec![
                E("bin/", Kind::Dir),
                E("bin/su", Kind::Mode(0o6755, b"su")),
            ]),
            layer(vec![
                E("bin/su-again", Kind::HardLink("./bin/su")),
                E("link", Kind::Symlink("/etc/shadow")),
            ]),
        ]);
        let rootfs = store.unpack_image(&image, ROOMY).unwrap().join("rootfs");
        let mode = fs::metadata(rootfs.join("bin/su"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o555, "{mode:o}");
        assert_eq!(fs::read(rootfs.join("bin/su-again")).unwrap(), b"su");
        // Its time is the layer's (0 here), not the unpacking's.
        let modified = fs::metadata(rootfs.join("bin/su"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(modified, std::time::UNIX_EPOCH);
        // A link may name any path: it is read inside the container, never by the store.
        assert_eq!(
            fs::read_link(rootfs.join("link")).unwrap(),
            Path::new("/etc/shadow")
        );

        unpack_refused(
            &[layer(vec![E("x", Kind::HardLink("../../etc/passwd"))])],
            &["is a hard link to `../../etc/passwd`, outside the rootfs"],
        );
        unpack_refused(
            &[layer(vec![E("x", Kind::HardLink("/etc/passwd"))])],
            &["is a hard link to `/etc/passwd`, outside the rootfs"],
        );
        unpack_refused(
            &[layer(vec![
                E("etc", Kind::Symlink("/etc")),
                E("x", Kind::HardLink("etc/passwd")),
            ])],
            &["passes through the link `etc`"],
        );
        unpack_refused(
            &[layer(vec![E("x", Kind::HardLink("nothing"))])],
            &["which is not in the rootfs"],
        );
    }

    #[test]
    fn a_path_twice_in_one_image_layer_is_refused_and_paths_out_too() {
        unpack_refused(
            &[layer(vec![
                E("a", Kind::File(b"1")),
                E("./a", Kind::File(b"2")),
            ])],
            &["appears twice in the layer"],
        );
        unpack_refused(
            &[layer(vec![E("../x", Kind::File(b"x"))])],
            &["climbs out with `..`"],
        );
        unpack_refused(
            &[layer(vec![E("/etc/x", Kind::File(b"x"))])],
            &["has an absolute path"],
        );
        // Across layers the same path is a change, not a conflict.
        let (_data, store, image) = imported(&[
            layer(vec![E("a", Kind::File(b"1"))]),
            layer(vec![E("a", Kind::File(b"2"))]),
        ]);
        let rootfs = store.unpack_image(&image, ROOMY).unwrap().join("rootfs");
        assert_eq!(fs::read(rootfs.join("a")).unwrap(), b"2");
    }

    #[test]
    fn the_image_limits_count_every_layer_together() {
        let layers = [
            layer(vec![E("a", Kind::File(b"12345678"))]),
            layer(vec![E("b", Kind::File(b"12345678"))]),
        ];
        let (_data, store, image) = imported(&layers);
        let small = UnpackLimits {
            max_size: ByteSize(12),
            max_files: 100,
        };
        refused(
            store.unpack_image(&image, small).unwrap_err(),
            &["max_unpacked_size"],
        );
        let few = UnpackLimits {
            max_size: ByteSize(1 << 20),
            max_files: 1,
        };
        refused(store.unpack_image(&image, few).unwrap_err(), &["max_files"]);
        assert!(!store.release_dir(&image.digest).exists());
        store.unpack_image(&image, ROOMY).unwrap();
    }

    #[test]
    fn unsupported_image_layers_and_digests_are_refused_with_what_to_do() {
        let (data, store) = store();
        let bytes = layer(vec![E("a", Kind::File(b"a"))]);
        let here = this_platform().architecture;
        for (media_type, says) in [
            ("application/vnd.oci.image.layer.v1.tar+zstd", "use gzip"),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "tar and tar+gzip layers only",
            ),
        ] {
            let layout = hand_layout(&config_for(&here), &[(media_type, bytes.clone())]);
            let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("--dest-compress-format gzip"), "{message}");
            assert!(
                message.contains(says) || media_type.contains("zstd"),
                "{message}"
            );
        }
        let layout = hand_layout(&config_for(&here), &[]);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(layout.path(), "application/vnd.oci.image.config.v1+json",
                &serde_json::to_vec(&config_for(&here)).unwrap()),
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha512:{}", "ab".repeat(64)), "size": 3}],
        });
        let desc = blob(
            layout.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        index(layout.path(), &[desc]);
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["sha512:", "not a sha256 digest"]);
        // A manifest list where a manifest should be, and a Helm chart's config.
        let layout = tempfile::tempdir().unwrap();
        let odd = blob(
            layout.path(),
            "application/vnd.docker.distribution.manifest.v1+json",
            b"{}",
        );
        index(layout.path(), &[odd]);
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["manifest.v1+json", "skopeo copy --format oci"]);
        let layout = tempfile::tempdir().unwrap();
        let chart = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": blob(layout.path(), "application/vnd.cncf.helm.config.v1+json", b"{}"),
            "layers": [],
        });
        let desc = blob(
            layout.path(),
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&chart).unwrap(),
        );
        index(layout.path(), &[desc]);
        let err = store.import_layout(layout.path(), None, ROOMY).unwrap_err();
        refused(err, &["not a container image"]);
        let err = store.import_layout(data.path(), None, ROOMY).unwrap_err();
        refused(err, &["is not an OCI image layout", "skopeo copy"]);
        nothing_kept_but(data.path(), &[]);
    }

    #[test]
    fn a_nested_image_index_resolves_to_this_platform() {
        let here = this_platform().architecture;
        let layout = hand_layout(&config_for(&here), &[]);
        let index_json: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
        let mut ours = index_json["manifests"][0].clone();
        ours["platform"] = serde_json::json!({"os": "linux", "architecture": here});
        let theirs = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
            "platform": {"os": "linux", "architecture": "riscv64-elsewhere"},
        });
        let list = serde_json::json!({"schemaVersion": 2, "manifests": [theirs, ours.clone()]});
        let mut list = blob(
            layout.path(),
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&list).unwrap(),
        );
        list["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "1.0"});
        index(layout.path(), &[list]);
        let (_data, store) = store();
        let image = store
            .import_layout(layout.path(), Some("1.0"), ROOMY)
            .unwrap();
        assert_eq!(image.digest.as_str(), ours["digest"].as_str().unwrap());
    }

    #[test]
    fn write_layout_gives_the_same_image_digest_for_the_same_input_and_builds_on_a_base() {
        let base = layer(vec![
            E("bin/", Kind::Dir),
            E("bin/tool", Kind::Mode(0o755, b"tool")),
        ]);
        let app = layer(vec![
            E("app/", Kind::Dir),
            E("app/start", Kind::Mode(0o755, b"go")),
        ]);
        let (a, first) = layout_of(std::slice::from_ref(&base), "base");
        let (_b, second) = layout_of(std::slice::from_ref(&base), "base");
        assert_eq!(first, second);

        let on_base = tempfile::tempdir().unwrap();
        let run = RunConfigJson {
            cmd: Some(vec!["/app/start".into()]),
            env: Some(vec!["MODE=app".into(), "USER_SET=1".into()]),
            ..RunConfigJson::default()
        };
        let digest = write_layout(
            on_base.path(),
            Some(a.path()),
            std::slice::from_ref(&app),
            run,
            "web",
        )
        .unwrap();
        let (_data, store) = store();
        let image = store
            .import_layout(on_base.path(), Some("web"), ROOMY)
            .unwrap();
        assert_eq!(image.digest, digest);
        let layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(layers, [sha(&base).as_str(), sha(&app).as_str()]);
        let c = &image.config.config;
        assert_eq!(
            c.entrypoint,
            Some(vec!["/app/start".to_owned()]),
            "the base's kept"
        );
        assert_eq!(c.cmd, Some(vec!["/app/start".to_owned()]));
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(
            c.env,
            Some(vec!["MODE=app".to_owned(), "USER_SET=1".to_owned()])
        );
        assert_eq!(
            (image.config.os.as_str(), image.config.architecture.as_str()),
            ("linux", this_platform().architecture.as_str())
        );
        let record: serde_json::Value =
            serde_json::from_slice(&fs::read(store.layer_path(&image.config_digest)).unwrap())
                .unwrap();
        let unzipped = |gz: &[u8]| {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_end(&mut tar)
                .unwrap();
            sha(&tar).to_string()
        };
        assert_eq!(
            record["rootfs"]["diff_ids"],
            serde_json::json!([unzipped(&base), unzipped(&app)])
        );
        let rootfs = store.unpack_image(&image, ROOMY).unwrap().join("rootfs");
        assert_eq!(fs::read(rootfs.join("bin/tool")).unwrap(), b"tool");
        assert_eq!(fs::read(rootfs.join("app/start")).unwrap(), b"go");
    }
}
