//! Image releases (issue 31): an OCI image registered as a release, its layers stored once by
//! digest, and its instances run by runc from a bundle made of its unpacked root.

use shipgate_core::image::ImageRef;
use shipgate_core::{AppName, EnvName, InstanceId, ReleaseRef};
use shipgate_deploy::ImageRun;
use shipgate_store::artifact::{ArtifactError, CheckedArtifact, UnpackLimits};
use shipgate_store::{NewRelease, Release};

use crate::flow::ReleaseRequest;
use crate::{Engine, EngineError};

use shipgate_core::seccomp::PODMAN_PROFILE as SECCOMP_PROFILE;

/// Where the image of a release being registered comes from.
pub enum ImageSource {
    /// An upload holding an OCI image layout (what `oci-archive:` is, or what the CLI made of
    /// a local reference), and the reference it came from.
    Upload(CheckedArtifact, ImageRef),
    /// A registry's image, pulled now by this server.
    Pull(ImageRef),
}

impl Engine {
    /// Registers an image release. Its digest is its manifest's: the same version with another
    /// manifest is refused before anything is recorded, and a tag is resolved once, now.
    pub async fn create_image_release(
        &self,
        req: ReleaseRequest,
        source: ImageSource,
        actor: &str,
    ) -> Result<(Release, bool), EngineError> {
        let ReleaseRef { app, version } = req.release;
        if self.config().app(&app).is_none() {
            return Err(EngineError::UnknownApp(app.to_string()));
        }
        // Until the release is recorded, retention would take its layers for orphans.
        let _not_pruning = self.pruning.read().await;
        let (work, layout, name) = match source {
            ImageSource::Upload(upload, reference) => {
                let name = match reference {
                    ImageRef::OciArchive { name, .. } | ImageRef::OciDir { name, .. } => name,
                    ImageRef::DockerArchive { .. } | ImageRef::Registry { .. } => None,
                };
                let work = self.artifacts.unpack_upload(upload).await?;
                let layout = work.path().to_owned();
                (work, layout, name)
            }
            ImageSource::Pull(reference) => {
                let host = match &reference {
                    ImageRef::Registry { host, .. } => host.clone(),
                    _ => String::new(),
                };
                let registry = self.config().registries.get(&host).cloned();
                let work = self.artifacts.pull(&reference, registry.as_ref()).await?;
                let layout = shipgate_store::artifact::pulled_layout(work.path());
                (
                    work,
                    layout,
                    Some(shipgate_store::artifact::PULLED.to_owned()),
                )
            }
        };
        let limits = UnpackLimits::of(&self.config().server);
        let artifacts = self.artifacts.clone();
        // Unpacked now, so a layer that cannot be (a whiteout out of the root, a device) is
        // refused before the release exists, and its first start does not wait for it.
        let image = tokio::task::spawn_blocking(move || {
            let imported = artifacts.import_layout(&layout, name.as_deref(), limits);
            drop(work);
            let imported = imported?;
            artifacts.unpack_image(&imported, limits)?;
            Ok::<_, ArtifactError>(imported)
        })
        .await
        .map_err(|e| ArtifactError::Unreadable(format!("reading the image failed: {e}")))??;
        if let Some(existing) = self.registered_as(&app, &version, &image.digest).await? {
            return Ok((existing, false));
        }
        let new = NewRelease {
            app,
            version,
            digest: image.digest,
            size: image.size as i64,
            commit: req.commit,
            commit_time: req.commit_time,
            notes: req.notes,
        };
        Ok(self.store.insert_release(new, actor).await?)
    }

    /// `release show`: the release and, for an image, its layers and how it runs.
    pub async fn release_detail(
        &self,
        release: &ReleaseRef,
    ) -> Result<shipgate_api::answers::ReleaseDetail, EngineError> {
        use shipgate_api::answers::{ImageLayer, ImageSummary, ReleaseDetail};
        let found = self.registered(release).await?;
        let image = self.artifacts.image_record(&found.digest)?;
        let image = match image {
            None => None,
            Some(r) => {
                let config = r
                    .image_config()
                    .map_err(|e| ArtifactError::Unreadable(format!("its image config: {e}")))?;
                let c = &config.config;
                Some(ImageSummary {
                    platform: format!("{}/{}", config.os, config.architecture),
                    config_digest: r.config_digest.to_string(),
                    layers: r
                        .layers
                        .iter()
                        .map(|l| ImageLayer {
                            digest: l.digest.to_string(),
                            size: l.size,
                            media_type: l.media_type.clone(),
                        })
                        .collect(),
                    size: r.size,
                    user: c.user.clone().unwrap_or_default(),
                    command: c
                        .entrypoint
                        .iter()
                        .flatten()
                        .chain(c.cmd.iter().flatten())
                        .cloned()
                        .collect(),
                    workdir: c.working_dir.clone().unwrap_or_default(),
                    exposed_ports: c
                        .exposed_ports
                        .as_ref()
                        .map(|p| p.keys().cloned().collect())
                        .unwrap_or_default(),
                })
            }
        };
        Ok(ReleaseDetail {
            release: found,
            image,
        })
    }

    /// How instance `id` of release `digest` of `app` in `env` runs if the release is an image:
    /// its root unpacked from the stored layers (once, shared by its instances), a bundle of its
    /// own. None for a directory release.
    pub(crate) async fn image_run(
        &self,
        app: &AppName,
        env: &EnvName,
        digest: &shipgate_core::Digest,
        id: &InstanceId,
    ) -> Result<Option<ImageRun>, String> {
        let artifacts = self.artifacts.clone();
        let limits = UnpackLimits::of(&self.config().server);
        let digest = digest.clone();
        let record = tokio::task::spawn_blocking(move || artifacts.image_rootfs(&digest, limits))
            .await
            .map_err(|e| format!("unpacking the image failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let Some((record, rootfs)) = record else {
            return Ok(None);
        };
        if let Some(why) = shipgate_deploy::image::unavailable() {
            return Err(format!("it is an image and cannot run here: {why}"));
        }
        let config = self.config();
        let run = config.app(app).map(|a| a.run.clone()).unwrap_or_default();
        Ok(Some(ImageRun {
            config: record.config,
            rootfs,
            bundle: config.server.data_dir.join("bundles").join(id.as_str()),
            command: (!run.trim().is_empty()).then_some(run),
            data_dir: self.app_data_dir(app, env),
            seccomp: seccomp()?,
        }))
    }
}

/// The default seccomp profile of podman, as runc reads it. An image never runs without it.
/// Read and converted once (a failure is tried again at the next start: the package may be
/// installed meanwhile).
fn seccomp() -> Result<Option<serde_json::Value>, String> {
    static CONVERTED: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    if let Some(done) = CONVERTED.get() {
        return Ok(Some(done.clone()));
    }
    let profile = std::fs::read_to_string(SECCOMP_PROFILE).map_err(|e| {
        format!(
            "it is an image, and images run with podman's default seccomp profile, which cannot be read at {SECCOMP_PROFILE} ({e}): apt-get install -y podman, which brings it"
        )
    })?;
    let converted = shipgate_core::seccomp::oci_seccomp(&profile, std::env::consts::ARCH)
        .map_err(|e| format!("the seccomp profile {SECCOMP_PROFILE} cannot be used: {e}"))?;
    Ok(Some(CONVERTED.get_or_init(|| converted).clone()))
}
