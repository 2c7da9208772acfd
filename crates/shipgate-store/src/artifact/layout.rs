//! OCI image layouts (issue 31): reading one into the store, every blob checked against its
//! digest and the layers kept once, content-addressed, in `layers/sha256/HEX`; and writing one
//! (the tests' images, and `release create --artifact DIR --base IMAGE`).
//!
//! Every refusal is decided before a byte of a layer is copied, except a layer's own digest,
//! which is only known once it is read: then the layers already copied stay (each was verified
//! and is named by its content), and nothing else of the image is kept.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shipgate_core::Digest;
use shipgate_core::image::{
    Descriptor, INDEX_TYPES, ImageConfig, Index, MANIFEST_TYPES, Platform, this_platform,
};

use super::image::{ImageRefusal, ImportedImage, layer_compression};
use super::{ArtifactError, ArtifactStore, UnpackLimits, io_err};

/// The most bytes an index, a manifest or an image config may have. Real ones take a few KiB;
/// anything near this is not an image, and is refused before it is read.
pub const MAX_METADATA: u64 = 4 << 20;

/// Image config media types: OCI's and Docker's.
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A manifest, as far as finding its blobs goes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// An OCI image layout directory, its `oci-layout` marker read.
struct Layout {
    dir: PathBuf,
}

/// The image a layout's index leads to on this machine's platform, each blob checked.
struct Resolved {
    digest: Digest,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    config: ImageConfig,
}

/// A descriptor's digest, refused unless it is sha256 (the only one shipgate verifies).
fn sha256_digest(digest: &str) -> Result<Digest, ImageRefusal> {
    Digest::parse(digest).map_err(|_| ImageRefusal::DigestAlgorithm {
        digest: digest.to_owned(),
    })
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

fn platform_name(p: &Platform) -> String {
    format!("{}/{}", p.os, p.architecture)
}

impl Layout {
    fn open(dir: &Path) -> Result<Self, ArtifactError> {
        let not_a_layout = |reason: String| ImageRefusal::NotALayout {
            path: dir.display().to_string(),
            reason,
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let marker = dir.join("oci-layout");
        let text = match read_capped(&marker, MAX_METADATA) {
            Ok(Some(text)) => text,
            Ok(None) => {
                return Err(not_a_layout("its `oci-layout` file is too large".into()).into());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_a_layout("it has no `oci-layout` file".into()).into());
            }
            Err(e) => return Err(io_err(format!("reading {}", marker.display()))(e)),
        };
        let marker: Marker = serde_json::from_slice(&text).map_err(|e| {
            not_a_layout(format!(
                "its `oci-layout` file does not say its version: {e}"
            ))
        })?;
        if !marker.image_layout_version.starts_with("1.") {
            return Err(not_a_layout(format!(
                "it is a layout of version {}, and shipgate reads version 1",
                marker.image_layout_version
            ))
            .into());
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// The blob of `digest`, open for reading, refused when it is missing or not a file.
    fn open_blob(&self, digest: &Digest) -> Result<File, ArtifactError> {
        let path = self.blob_path(digest);
        let missing = || ImageRefusal::Missing {
            digest: digest.clone(),
            layout: self.dir.display().to_string(),
        };
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(missing().into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing().into()),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        }
        File::open(&path).map_err(io_err(format!("reading {}", path.display())))
    }

    /// The index, a manifest or a config (`what`) that `desc` names, checked against its digest
    /// and size, and refused past [`MAX_METADATA`] without reading it whole.
    fn small_blob(
        &self,
        what: &'static str,
        desc: &Descriptor,
    ) -> Result<(Digest, Vec<u8>), ArtifactError> {
        let digest = sha256_digest(&desc.digest)?;
        if desc.size > MAX_METADATA {
            return Err(ImageRefusal::TooLarge {
                what,
                digest,
                size: desc.size,
            }
            .into());
        }
        let file = self.open_blob(&digest)?;
        let bytes = read_small(file, what, &digest, Some(desc.size))?;
        Ok((digest, bytes))
    }

    fn index(&self) -> Result<Index, ArtifactError> {
        let path = self.dir.join("index.json");
        let bytes = match read_capped(&path, MAX_METADATA) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(ImageRefusal::NotALayout {
                    path: self.dir.display().to_string(),
                    reason: "its index.json is larger than a sane limit of 4 MiB".into(),
                }
                .into());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageRefusal::NotALayout {
                    path: self.dir.display().to_string(),
                    reason: "it has no index.json".into(),
                }
                .into());
            }
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageRefusal::NotALayout {
                path: self.dir.display().to_string(),
                reason: format!("its index.json is not an image index: {e}"),
            }
            .into()
        })
    }

    /// The image named `name` (the only one without) for this machine's platform, through one
    /// nested index at most (a registry's manifest list, as `skopeo copy --all` keeps it).
    fn resolve(&self, name: Option<&str>) -> Result<Resolved, ArtifactError> {
        let here = this_platform();
        let mut chosen = self
            .index()?
            .choose(name, &here)
            .map_err(ImageRefusal::NotChosen)?
            .clone();
        if INDEX_TYPES.contains(&chosen.media_type.as_str()) {
            let (digest, bytes) = self.small_blob("index", &chosen)?;
            let nested: Index = parse("index", &digest, &bytes)?;
            chosen = nested
                .choose(None, &here)
                .map_err(ImageRefusal::NotChosen)?
                .clone();
            if INDEX_TYPES.contains(&chosen.media_type.as_str()) {
                return Err(ImageRefusal::NestedIndex.into());
            }
        }
        if !MANIFEST_TYPES.contains(&chosen.media_type.as_str()) {
            return Err(ImageRefusal::MediaType {
                what: "manifest",
                digest: chosen.digest.clone(),
                media_type: chosen.media_type.clone(),
            }
            .into());
        }
        let (digest, manifest_bytes) = self.small_blob("manifest", &chosen)?;
        let manifest: Manifest = parse("manifest", &digest, &manifest_bytes)?;
        let own_type = manifest.media_type.as_deref().unwrap_or(OCI_MANIFEST);
        if manifest.schema_version != 2 || !MANIFEST_TYPES.contains(&own_type) {
            return Err(ImageRefusal::MediaType {
                what: "manifest",
                digest: digest.to_string(),
                media_type: format!("{own_type} (schema version {})", manifest.schema_version),
            }
            .into());
        }
        if !CONFIG_TYPES.contains(&manifest.config.media_type.as_str()) {
            return Err(ImageRefusal::NotAnImage {
                digest,
                media_type: manifest.config.media_type.clone(),
            }
            .into());
        }
        let (config_digest, config_bytes) = self.small_blob("config", &manifest.config)?;
        let config: ImageConfig = parse("config", &config_digest, &config_bytes)?;
        if config.os != here.os || config.architecture != here.architecture {
            return Err(ImageRefusal::Platform {
                image: format!("{}/{}", config.os, config.architecture),
                here: platform_name(&here),
            }
            .into());
        }
        Ok(Resolved {
            digest,
            manifest_bytes,
            manifest,
            config_digest,
            config_bytes,
            config,
        })
    }
}

fn parse<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    digest: &Digest,
    bytes: &[u8],
) -> Result<T, ImageRefusal> {
    serde_json::from_slice(bytes).map_err(|e| ImageRefusal::Unparsable {
        what,
        digest: digest.clone(),
        reason: e.to_string(),
    })
}

/// Refuses a blob of `size` bytes hashing to `actual` that should be `expected_size` bytes
/// hashing to `digest`.
fn check_blob(
    digest: &Digest,
    expected_size: u64,
    size: u64,
    actual: &Digest,
) -> Result<(), ImageRefusal> {
    if size != expected_size {
        return Err(ImageRefusal::Damaged {
            digest: digest.clone(),
            reason: format!("is {size} bytes, and the image says {expected_size}"),
        });
    }
    if actual != digest {
        return Err(ImageRefusal::Damaged {
            digest: digest.clone(),
            reason: format!("hashes to {actual}"),
        });
    }
    Ok(())
}

/// An index, a manifest or a config (`what`) read from `file`, refused past [`MAX_METADATA`]
/// and unless it hashes to `digest` (and has `size` bytes, when known).
fn read_small(
    file: File,
    what: &'static str,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Vec<u8>, ArtifactError> {
    let len = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    file.take(MAX_METADATA + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading blob {digest}")))?;
    if bytes.len() as u64 > MAX_METADATA {
        return Err(ImageRefusal::TooLarge {
            what,
            digest: digest.clone(),
            size: len,
        }
        .into());
    }
    let read = bytes.len() as u64;
    check_blob(digest, size.unwrap_or(read), read, &digest_of(&bytes))?;
    Ok(bytes)
}

/// The file at `path` if it has at most `limit` bytes; None if it has more.
fn read_capped(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    // Checked before it is opened: opening a named pipe would wait for a writer.
    if !fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file", path.display()),
        ));
    }
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

impl ArtifactStore {
    /// The shared, content-addressed store of layers (and of images' manifests and configs).
    pub(super) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers").join("sha256")
    }

    /// Where the layer (or manifest, or config) of `digest` is kept, there or not.
    pub fn layer_path(&self, digest: &Digest) -> PathBuf {
        self.layers_dir().join(digest.hex())
    }

    /// Whether the layer of `digest` is in the store with `size` bytes.
    pub fn has_layer(&self, digest: &Digest, size: u64) -> bool {
        fs::symlink_metadata(self.layer_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Reads the OCI image layout `layout` into the store: the image `name`
    /// (`org.opencontainers.image.ref.name`; the only one without) for this machine's platform,
    /// through one nested index at most. Its manifest, config and every layer are checked
    /// against their digests and sizes, and kept in `layers/sha256/HEX`, shared by every image
    /// that holds them: a layer already kept (and still whole) is not copied again.
    ///
    /// Refused, with what to do: a layout without its marker or index, an index, manifest or
    /// config larger than [`MAX_METADATA`], a manifest that is not OCI's or Docker's schema 2, an
    /// image for another platform, a blob missing or not matching its digest or size, a digest
    /// other than sha256, and layers other than tar or tar+gzip. Layers whose compressed bytes
    /// alone pass `limits.max_size` are refused before any is copied. On a refusal the layers
    /// copied and verified so far stay; nothing else does.
    pub fn import_layout(
        &self,
        layout: &Path,
        name: Option<&str>,
        limits: UnpackLimits,
    ) -> Result<ImportedImage, ArtifactError> {
        let layout = Layout::open(layout)?;
        let image = layout.resolve(name)?;
        let mut layers = Vec::with_capacity(image.manifest.layers.len());
        for desc in &image.manifest.layers {
            let digest = sha256_digest(&desc.digest)?;
            layer_compression(&digest, &desc.media_type)?;
            layers.push((digest, desc));
        }
        let size = layers
            .iter()
            .fold(0u64, |sum, (_, d)| sum.saturating_add(d.size));
        if size > limits.max_size.0 {
            return Err(ImageRefusal::UnpacksTooLarge {
                limit: limits.max_size.to_string(),
                key: "max_unpacked_size",
            }
            .into());
        }
        let dir = self.layers_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut stored_layers = 0;
        for (digest, desc) in &layers {
            if self.put_layer(&layout, digest, desc.size)? {
                stored_layers += 1;
            }
        }
        self.put_small_blob(&image.config_digest, &image.config_bytes)?;
        self.put_small_blob(&image.digest, &image.manifest_bytes)?;
        Ok(ImportedImage {
            digest: image.digest,
            manifest: image.manifest_bytes,
            config_size: image.config_bytes.len() as u64,
            config: image.config,
            config_digest: image.config_digest,
            layers: image.manifest.layers,
            size,
            stored_layers,
        })
    }

    /// The image whose manifest has `digest`, as the store keeps it since it was imported: its
    /// manifest and config read back and checked against their digests (`stored_layers` is 0).
    /// None when the store does not hold that manifest (a directory release's digest).
    pub fn stored_image(&self, digest: &Digest) -> Result<Option<ImportedImage>, ArtifactError> {
        let path = self.layer_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        let manifest_bytes = read_small(file, "manifest", digest, None)?;
        let manifest: Manifest = parse("manifest", digest, &manifest_bytes)?;
        let config_digest = sha256_digest(&manifest.config.digest)?;
        let config_path = self.layer_path(&config_digest);
        let file = File::open(&config_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageRefusal::Missing {
                digest: config_digest.clone(),
                layout: self.layers_dir().display().to_string(),
            }
            .into(),
            _ => io_err(format!("reading {}", config_path.display()))(e),
        })?;
        let config_bytes = read_small(file, "config", &config_digest, Some(manifest.config.size))?;
        let config: ImageConfig = parse("config", &config_digest, &config_bytes)?;
        let size = manifest
            .layers
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.size));
        Ok(Some(ImportedImage {
            digest: digest.clone(),
            manifest: manifest_bytes,
            config_size: config_bytes.len() as u64,
            config,
            config_digest,
            layers: manifest.layers,
            size,
            stored_layers: 0,
        }))
    }

    /// Whether the store holds the blob of `digest` whole: `size` bytes hashing to it. A kept
    /// blob that no longer does is warned about, and replaced by the caller.
    pub(super) fn holds_whole(&self, digest: &Digest, size: u64) -> Result<bool, ArtifactError> {
        let path = self.layer_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => {}
            Ok(_) => {
                tracing::warn!(
                    "{} is not the {size}-byte blob it is named after; it is replaced",
                    path.display()
                );
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        }
        let actual =
            super::digest_file(&path).map_err(io_err(format!("reading {}", path.display())))?;
        if &actual != digest {
            tracing::warn!(
                "{} hashes to {actual}, not to its name; it is replaced",
                path.display()
            );
        }
        Ok(&actual == digest)
    }

    /// Copies the layer of `digest` from `layout` into the store, verified on the way, unless
    /// the store holds it whole already; whether it was copied.
    fn put_layer(
        &self,
        layout: &Layout,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, ArtifactError> {
        if self.holds_whole(digest, size)? {
            return Ok(false);
        }
        // A layout the store unpacked itself (an upload, a pull) gives its blobs up: checked,
        // then moved, not copied. Only a plain file is moved (a link stays where it is).
        let own = layout.blob_path(digest);
        let movable = layout.dir.starts_with(self.root.join("tmp"))
            && fs::symlink_metadata(&own).is_ok_and(|m| m.file_type().is_file());
        let source = layout.open_blob(digest)?;
        let mut temp = if movable {
            None
        } else {
            Some(self.blob_temp()?)
        };
        let (mut hasher, mut read) = (Sha256::new(), 0u64);
        let mut reader = source.take(size.saturating_add(1));
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(format!("reading layer {digest}"))(e)),
            };
            hasher.update(&buf[..n]);
            read += n as u64;
            if let Some(temp) = temp.as_mut() {
                temp.write_all(&buf[..n])
                    .map_err(io_err(format!("copying layer {digest}")))?;
            }
        }
        let actual = Digest::from_sha256(&hasher.finalize().into());
        check_blob(digest, size, read, &actual)?;
        match temp {
            Some(temp) => self.keep_blob(temp, digest)?,
            None => {
                use std::os::unix::fs::PermissionsExt;
                // Kept from now on: on disk before the release that needs it is recorded.
                File::open(&own)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(format!("syncing layer {digest}")))?;
                fs::set_permissions(&own, fs::Permissions::from_mode(0o444))
                    .map_err(io_err("making a layer read-only"))?;
                fs::rename(&own, self.layer_path(digest))
                    .map_err(io_err(format!("storing layer {digest}")))?;
            }
        }
        Ok(true)
    }

    /// Keeps an index, manifest or config blob already checked, unless the store holds it.
    fn put_small_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ArtifactError> {
        if self.holds_whole(digest, bytes.len() as u64)? {
            return Ok(());
        }
        let mut temp = self.blob_temp()?;
        temp.write_all(bytes)
            .map_err(io_err(format!("writing blob {digest}")))?;
        self.keep_blob(temp, digest)
    }

    pub(super) fn blob_temp(&self) -> Result<tempfile::NamedTempFile, ArtifactError> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.root.join("tmp"))
            .map_err(io_err("creating a file for a layer"))
    }

    /// Moves a verified blob into its place, read-only.
    pub(super) fn keep_blob(
        &self,
        temp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<(), ArtifactError> {
        use std::os::unix::fs::PermissionsExt;
        // Kept from now on: on disk before the release that needs it is recorded.
        temp.as_file()
            .sync_all()
            .map_err(io_err(format!("syncing blob {digest}")))?;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("making a layer read-only"))?;
        let path = self.layer_path(digest);
        temp.persist(&path).map_err(|e| ArtifactError::Io {
            context: format!("storing {}", path.display()),
            source: e.error,
        })?;
        Ok(())
    }
}

/// How an image built by [`write_layout`] runs: the `config` of its image config, in OCI's
/// (Docker's) names. Fields left `None` keep the base image's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfigJson {
    /// What runs first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Its arguments (or the command, without an entrypoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` lines; on a base image, each replaces the base's variable of that name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `uid`, `uid:gid`, `name` or `name:group`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `8080/tcp` and the like, each to `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobRef<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOut<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: BlobRef<'a>,
    layers: Vec<BlobRef<'a>>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Writes (or adds to) the OCI image layout `out`: an image tagged `tag`
/// (`org.opencontainers.image.ref.name`; an image of that tag already there is replaced) whose
/// layers are those of `base`'s image (an OCI layout, read and checked like an import) and then
/// `layers` (each a gzip-compressed tar), running as `run` says over the base's config. The
/// config is for linux on this machine's architecture, its `rootfs.diff_ids` the sha256 of each
/// layer's uncompressed tar. The JSON is written the same for the same input, so the same
/// input gives the same manifest digest, which is returned.
pub fn write_layout(
    out: &Path,
    base: Option<&Path>,
    layers: &[Vec<u8>],
    run: RunConfigJson,
    tag: &str,
) -> io::Result<Digest> {
    let blobs = out.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let put = |bytes: &[u8]| -> io::Result<Digest> {
        let digest = digest_of(bytes);
        let path = blobs.join(digest.hex());
        if fs::metadata(&path).map_or(true, |m| m.len() != bytes.len() as u64) {
            fs::write(&path, bytes)?;
        }
        Ok(digest)
    };

    let (mut config, mut descriptors) = match base {
        Some(base) => {
            let layout = Layout::open(base).map_err(invalid)?;
            let image = layout.resolve(None).map_err(invalid)?;
            for desc in &image.manifest.layers {
                let digest = sha256_digest(&desc.digest).map_err(invalid)?;
                let target = blobs.join(digest.hex());
                if fs::metadata(&target).map_or(true, |m| m.len() != desc.size) {
                    let mut source = layout.open_blob(&digest).map_err(invalid)?;
                    io::copy(&mut source, &mut File::create(&target)?)?;
                }
            }
            let config: serde_json::Value =
                serde_json::from_slice(&image.config_bytes).map_err(invalid)?;
            (config, image.manifest.layers)
        }
        None => (
            serde_json::json!({
                "architecture": this_platform().architecture,
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
            }),
            Vec::new(),
        ),
    };
    let Some(fields) = config.as_object_mut() else {
        return Err(invalid("the base image's config is not a JSON object"));
    };
    merge_run(fields, run)?;

    let mut diff_ids = Vec::with_capacity(layers.len());
    for layer in layers {
        let mut hasher = Sha256::new();
        io::copy(
            &mut flate2::read::MultiGzDecoder::new(&layer[..]),
            &mut hasher,
        )?;
        diff_ids.push(Digest::from_sha256(&hasher.finalize().into()).to_string());
        let digest = put(layer)?;
        descriptors.push(Descriptor {
            media_type: OCI_LAYER_GZIP.to_owned(),
            digest: digest.to_string(),
            size: layer.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        });
    }
    let rootfs = fields
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers"}));
    let Some(rootfs) = rootfs.as_object_mut() else {
        return Err(invalid("the base image's rootfs is not a JSON object"));
    };
    let ids = rootfs
        .entry("diff_ids")
        .or_insert_with(|| serde_json::json!([]));
    let Some(ids) = ids.as_array_mut() else {
        return Err(invalid("the base image's diff_ids are not a list"));
    };
    ids.extend(diff_ids.into_iter().map(serde_json::Value::String));
    // History is optional; a base that has it keeps one line per layer.
    if let Some(history) = fields.get_mut("history").and_then(|h| h.as_array_mut()) {
        history.extend(
            layers
                .iter()
                .map(|_| serde_json::json!({"created_by": "shipgate"})),
        );
    }

    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = put(&config_bytes)?;
    let config_text = config_digest.to_string();
    let manifest = ManifestOut {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: BlobRef {
            media_type: OCI_CONFIG,
            digest: &config_text,
            size: config_bytes.len() as u64,
        },
        layers: descriptors
            .iter()
            .map(|d| BlobRef {
                media_type: &d.media_type,
                digest: &d.digest,
                size: d.size,
            })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let digest = put(&manifest_bytes)?;

    let index_path = out.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match fs::read(&index_path) {
        Ok(bytes) => {
            let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    manifests.retain(|m| m["annotations"][REF_NAME] != tag);
    manifests.push(serde_json::json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest.to_string(),
        "size": manifest_bytes.len(),
        "annotations": {REF_NAME: tag},
    }));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(digest)
}

/// Sets the fields `run` names in the config's `config`, over the base's; `Env` by variable.
fn merge_run(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    run: RunConfigJson,
) -> io::Result<()> {
    let slot = fields
        .entry("config")
        .or_insert_with(|| serde_json::json!({}));
    if slot.is_null() {
        *slot = serde_json::json!({});
    }
    let Some(current) = slot.as_object_mut() else {
        return Err(invalid("the base image's `config` is not a JSON object"));
    };
    let mut env: Vec<String> = current
        .get("Env")
        .and_then(|e| e.as_array())
        .map(|e| {
            e.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let new_env = run.env.clone();
    let serde_json::Value::Object(set) = serde_json::to_value(RunConfigJson { env: None, ..run })?
    else {
        return Err(invalid("a run config serializes to an object"));
    };
    current.extend(set);
    if let Some(new_env) = new_env {
        for line in new_env {
            let name = line.split_once('=').map_or(line.as_str(), |(n, _)| n);
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != name);
            env.push(line);
        }
        current.insert("Env".into(), serde_json::json!(env));
    }
    Ok(())
}
