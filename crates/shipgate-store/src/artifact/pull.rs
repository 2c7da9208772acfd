//! Pulling an image from a registry into an OCI layout with skopeo, the registry client of the
//! containers tools: once, at `release create`; the tag is resolved there and never again.

use std::path::Path;
use std::process::Stdio;

use shipgate_core::config::RegistryConfig;
use shipgate_core::image::{ImageRef, RegistryAt};

use super::{ArtifactError, io_err};

/// The name the pulled image has in its layout.
pub const PULLED: &str = "pulled";

impl super::ArtifactStore {
    /// Copies `reference` (a registry's) into a new OCI layout under `tmp/`, this machine's
    /// platform only, its manifest's digest kept. `registry` says how to reach it: basic auth
    /// with the password read from the server's environment now (written to a 0600 file that
    /// goes with the pull, never to the command line), a CA, or plain HTTP on loopback.
    pub async fn pull(
        &self,
        reference: &ImageRef,
        registry: Option<&RegistryConfig>,
    ) -> Result<tempfile::TempDir, ArtifactError> {
        let ImageRef::Registry { host, name, at } = reference else {
            return Err(ArtifactError::Unreadable(
                "only a registry's image is pulled; a file or folder is uploaded".into(),
            ));
        };
        let work = tempfile::Builder::new()
            .prefix("pull-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("creating a folder to pull into"))?;
        let source = match at {
            RegistryAt::Tag(tag) => format!("docker://{host}/{name}:{tag}"),
            RegistryAt::Digest(d) => format!("docker://{host}/{name}@{d}"),
        };
        let layout = work.path().join("layout");
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.arg("copy")
            .arg("--quiet")
            .arg("--preserve-digests")
            .arg("--retry-times=0");
        let creds = registry
            .map(|r| auth_file(work.path(), host, r))
            .transpose()?
            .flatten();
        match creds {
            Some(file) => cmd.arg("--src-authfile").arg(file),
            // Nothing of the user's own logins is used: only what the config says.
            None => cmd.arg("--src-no-creds"),
        };
        if let Some(r) = registry {
            if r.insecure {
                cmd.arg("--src-tls-verify=false");
            }
            if let Some(ca) = &r.ca_file {
                let certs = work.path().join("certs");
                std::fs::create_dir_all(&certs).map_err(io_err("making a CA folder"))?;
                std::fs::copy(ca, certs.join("ca.crt")).map_err(io_err(format!(
                    "reading the registry's CA {}",
                    ca.display()
                )))?;
                cmd.arg("--src-cert-dir").arg(certs);
            }
        }
        let dest = format!("oci:{}:{PULLED}", layout.display());
        let out = cmd
            .arg(&source)
            .arg(dest)
            .stdin(Stdio::null())
            .env_remove("REGISTRY_AUTH_FILE")
            .output()
            .await
            .map_err(|e| {
                ArtifactError::Unreadable(format!(
                    "skopeo could not be run to pull {source} ({e}): apt-get install -y skopeo"
                ))
            })?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim().lines().last().unwrap_or("").trim().to_owned();
            return Err(ArtifactError::Unreadable(format!(
                "could not pull {host}/{name} from the registry: {said}; check that the registry answers at {host}, the name and tag, and [registries.\"{host}\"] in the config"
            )));
        }
        Ok(work)
    }
}

/// The layout a pull wrote into `work` ([`ArtifactStore::pull`]).
pub fn pulled_layout(work: &Path) -> std::path::PathBuf {
    work.join("layout")
}

/// A containers-auth.json in `dir` (0600) holding the registry's credentials, if it has any.
fn auth_file(
    dir: &Path,
    host: &str,
    r: &RegistryConfig,
) -> Result<Option<std::path::PathBuf>, ArtifactError> {
    let (Some(user), Some(var)) = (&r.username, &r.password_env) else {
        return Ok(None);
    };
    let password = std::env::var(var).map_err(|_| {
        ArtifactError::Unreadable(format!(
            "the password of registry {host} is read from ${var}, which the server's environment does not set: set it where the server starts"
        ))
    })?;
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    let path = dir.join("auth.json");
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("writing the registry's credentials"))?;
    std::io::Write::write_all(&mut f, json.to_string().as_bytes())
        .map_err(io_err("writing the registry's credentials"))?;
    Ok(Some(path))
}
