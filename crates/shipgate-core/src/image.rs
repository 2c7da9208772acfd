//! Where an OCI image registered as a release comes from (issue 31): the references
//! `shipgate release create web --version 1.4.2 --image REF` takes, in the transports skopeo and
//! podman use. Only the reference is read here; fetching and unpacking are the store's.

use std::fmt;
use std::path::PathBuf;

/// An image reference, as `--image` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci-archive:PATH[:REF]`: a tar of an OCI image layout.
    OciArchive {
        /// The tar file.
        path: PathBuf,
        /// The image in it, by its `org.opencontainers.image.ref.name` (the only one without).
        name: Option<String>,
    },
    /// `oci:DIR[:REF]`: an OCI image layout directory.
    OciDir {
        /// The layout's directory.
        path: PathBuf,
        /// The image in it, by its `org.opencontainers.image.ref.name` (the only one without).
        name: Option<String>,
    },
    /// `docker-archive:PATH[:NAME:TAG]`: what `docker save` writes.
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// The image in it, by `NAME:TAG` (the only one without).
        name: Option<String>,
    },
    /// `HOST[:PORT]/NAME[:TAG]` or `HOST[:PORT]/NAME@sha256:HEX`: an image in a registry (also
    /// written `docker://...`).
    Registry {
        /// `HOST` or `HOST:PORT`.
        host: String,
        /// The repository (`team/web`).
        name: String,
        /// The tag or the digest asked for.
        at: RegistryAt,
    },
}

/// Which image of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryAt {
    /// A tag: resolved to a digest once, when the release is made.
    Tag(String),
    /// A manifest digest (`sha256:` and 64 hex digits).
    Digest(String),
}

impl ImageRef {
    /// Reads a reference; the error says what to write instead.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let hint = "write oci-archive:PATH, oci:DIR, docker-archive:PATH, or a registry's HOST[:PORT]/NAME:TAG (or NAME@sha256:DIGEST)";
        let s = s.trim();
        if s.is_empty() {
            return Err(format!("the image reference is empty; {hint}"));
        }
        let local = |rest: &str, what: &str| -> Result<(PathBuf, Option<String>), String> {
            // The reference after the path, when the part after the last ':' names no folder.
            let (path, name) = match rest.rsplit_once(':') {
                Some((p, n)) if !p.is_empty() && !n.is_empty() && !n.contains('/') => {
                    (p, Some(n.to_owned()))
                }
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("`{s}` names no {what}; {hint}"));
            }
            Ok((PathBuf::from(path), name))
        };
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, name) = local(rest, "file")?;
            return Ok(ImageRef::OciArchive { path, name });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            // NAME:TAG after the path: the path is what comes before the first ':'.
            let (path, name) = match rest.split_once(':') {
                Some((p, n)) if !p.is_empty() && !n.is_empty() => (p, Some(n.to_owned())),
                _ => (rest, None),
            };
            if path.is_empty() {
                return Err(format!("`{s}` names no file; {hint}"));
            }
            return Ok(ImageRef::DockerArchive {
                path: PathBuf::from(path),
                name,
            });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, name) = local(rest, "folder")?;
            return Ok(ImageRef::OciDir { path, name });
        }
        let remote = s.strip_prefix("docker://").unwrap_or(s);
        if remote.contains("://") || remote.starts_with('/') || remote.starts_with('.') {
            return Err(format!("`{s}` is not an image reference; {hint}"));
        }
        let Some((host, path)) = remote.split_once('/') else {
            return Err(format!(
                "`{s}` names no registry: shipgate never guesses one (no docker.io by default); {hint}"
            ));
        };
        let host_ok = !host.is_empty()
            && (host.contains('.') || host.contains(':') || host == "localhost")
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
        if !host_ok {
            return Err(format!(
                "`{host}` in `{s}` is not a registry's host: write it whole (registry.example.com/team/web:1.4.2, or 127.0.0.1:5000/web:1.4.2); {hint}"
            ));
        }
        let (name, at) = if let Some((name, digest)) = path.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{digest}` in `{s}` is not a digest: write sha256: and 64 hex digits"
                ));
            }
            (name, RegistryAt::Digest(digest.to_ascii_lowercase()))
        } else {
            match path.rsplit_once(':') {
                Some((name, tag)) => {
                    let tag_ok = !tag.is_empty()
                        && tag.len() <= 128
                        && tag
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                    if !tag_ok {
                        return Err(format!("`{tag}` in `{s}` is not a tag"));
                    }
                    (name, RegistryAt::Tag(tag.to_owned()))
                }
                None => {
                    return Err(format!(
                        "`{s}` names no tag or digest: a release is one image, so write NAME:TAG or NAME@sha256:DIGEST (no `latest` is assumed)"
                    ));
                }
            }
        };
        let name_ok = !name.is_empty()
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !name_ok {
            return Err(format!(
                "`{name}` in `{s}` is not a repository name: lowercase letters, digits, `.`, `_`, `-`, parts joined by `/`"
            ));
        }
        Ok(ImageRef::Registry {
            host: host.to_owned(),
            name: name.to_owned(),
            at,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with =
            |f: &mut fmt::Formatter<'_>, kind: &str, path: &PathBuf, name: &Option<String>| {
                write!(f, "{kind}:{}", path.display())?;
                match name {
                    Some(n) => write!(f, ":{n}"),
                    None => Ok(()),
                }
            };
        match self {
            ImageRef::OciArchive { path, name } => with(f, "oci-archive", path, name),
            ImageRef::OciDir { path, name } => with(f, "oci", path, name),
            ImageRef::DockerArchive { path, name } => with(f, "docker-archive", path, name),
            ImageRef::Registry { host, name, at } => match at {
                RegistryAt::Tag(t) => write!(f, "{host}/{name}:{t}"),
                RegistryAt::Digest(d) => write!(f, "{host}/{name}@{d}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_reads_and_writes_back() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (written, want) in [
            (
                "oci-archive:/tmp/web.tar".to_owned(),
                ImageRef::OciArchive {
                    path: "/tmp/web.tar".into(),
                    name: None,
                },
            ),
            (
                "oci:./layout:1.4.2".to_owned(),
                ImageRef::OciDir {
                    path: "./layout".into(),
                    name: Some("1.4.2".into()),
                },
            ),
            (
                "docker-archive:web.tar:team/web:1.4.2".to_owned(),
                ImageRef::DockerArchive {
                    path: "web.tar".into(),
                    name: Some("team/web:1.4.2".into()),
                },
            ),
            (
                "127.0.0.1:5000/team/web:1.4.2".to_owned(),
                ImageRef::Registry {
                    host: "127.0.0.1:5000".into(),
                    name: "team/web".into(),
                    at: RegistryAt::Tag("1.4.2".into()),
                },
            ),
            (
                format!("registry.example.com/web@{digest}"),
                ImageRef::Registry {
                    host: "registry.example.com".into(),
                    name: "web".into(),
                    at: RegistryAt::Digest(digest.clone()),
                },
            ),
        ] {
            let got = ImageRef::parse(&written).unwrap();
            assert_eq!(got, want, "{written}");
            assert_eq!(got.to_string(), written);
        }
        assert_eq!(
            ImageRef::parse("docker://localhost/web:1")
                .unwrap()
                .to_string(),
            "localhost/web:1"
        );
    }

    #[test]
    fn a_reference_that_would_be_guessed_is_refused_with_what_to_write() {
        for (bad, said) in [
            ("", "empty"),
            ("web:1.4.2", "names no registry"),
            ("nginx/nginx:1", "is not a registry's host"),
            ("localhost/web", "names no tag or digest"),
            ("localhost/web@sha256:12", "is not a digest"),
            ("localhost/Web:1", "is not a repository name"),
            ("localhost/web:a b", "is not a tag"),
            ("oci-archive:", "names no file"),
            ("http://localhost/web:1", "is not an image reference"),
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.contains(said), "{bad}: {err}");
        }
    }
}

/// One blob an index or a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What it is (`application/vnd.oci.image.manifest.v1+json`, a layer's type, ...).
    pub media_type: String,
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// For a manifest in an index: the platform it is for.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name`).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The platform of one manifest of a multi-platform index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` for arm64, ...
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index (`index.json` of a layout, or a registry's manifest list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Index {
    /// The manifests (or nested indexes) it lists.
    pub manifests: Vec<Descriptor>,
}

/// Manifest media types shipgate reads: OCI's and Docker's schema 2.
pub const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Index media types: OCI's and Docker's manifest list.
pub const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// This machine's platform as OCI names it (`amd64`, `arm64`, ...).
pub fn this_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: std::env::consts::OS.to_owned(),
        variant: None,
    }
}

impl Index {
    /// The manifest of `platform` in this index, chosen by `name`
    /// (`org.opencontainers.image.ref.name`) first when given. A single manifest without a
    /// platform is taken as it is; the error lists what the index holds.
    pub fn choose(&self, name: Option<&str>, platform: &Platform) -> Result<&Descriptor, String> {
        let named: Vec<&Descriptor> = self
            .manifests
            .iter()
            .filter(|d| {
                name.is_none_or(|n| {
                    d.annotations
                        .get("org.opencontainers.image.ref.name")
                        .map(String::as_str)
                        == Some(n)
                })
            })
            .collect();
        let listed = || {
            self.manifests
                .iter()
                .map(|d| {
                    let p = d.platform.as_ref().map_or("any platform".to_owned(), |p| {
                        format!("{}/{}", p.os, p.architecture)
                    });
                    match d.annotations.get("org.opencontainers.image.ref.name") {
                        Some(n) => format!("{n} ({p})"),
                        None => p,
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if named.is_empty() {
            return Err(match name {
                Some(n) => format!("the image has no `{n}`; it holds: {}", listed()),
                None => "the image's index lists no manifest".to_owned(),
            });
        }
        let fits = |d: &&Descriptor| match &d.platform {
            Some(p) => p.os == platform.os && p.architecture == platform.architecture,
            None => true,
        };
        let fitting: Vec<&Descriptor> = named.iter().copied().filter(fits).collect();
        match fitting.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "the image has no manifest for {}/{}, this machine's platform; it holds: {}",
                platform.os,
                platform.architecture,
                listed()
            )),
            [first, ..] if fitting.iter().all(|d| d.digest == first.digest) => Ok(first),
            _ => Err(format!(
                "the image holds several manifests for {}/{}: name one (oci-archive:PATH:NAME); it holds: {}",
                platform.os,
                platform.architecture,
                listed()
            )),
        }
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    fn index(json: &str) -> Index {
        serde_json::from_str(json).unwrap()
    }

    const MULTI: &str = r#"{"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aa", "size": 10,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bb", "size": 10,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]}"#;

    #[test]
    fn a_multi_platform_index_resolves_to_the_platform_asked() {
        let i = index(MULTI);
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(i.choose(None, &amd64).unwrap().digest, "sha256:aa");
        let riscv = Platform {
            architecture: "riscv64".into(),
            ..amd64.clone()
        };
        let err = i.choose(None, &riscv).unwrap_err();
        assert!(
            err.contains("no manifest for linux/riscv64") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn a_layout_picks_its_image_by_name_and_says_what_it_holds() {
        let i = index(
            r#"{"manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aa", "size": 1,
             "annotations": {"org.opencontainers.image.ref.name": "1.4.2"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bb", "size": 1,
             "annotations": {"org.opencontainers.image.ref.name": "1.4.3"}}]}"#,
        );
        let here = this_platform();
        assert_eq!(i.choose(Some("1.4.3"), &here).unwrap().digest, "sha256:bb");
        let err = i.choose(None, &here).unwrap_err();
        assert!(err.contains("name one") && err.contains("1.4.2"), "{err}");
        let err = i.choose(Some("2.0"), &here).unwrap_err();
        assert!(err.contains("has no `2.0`"), "{err}");
    }
}

/// How an image says it runs: the `config` of its image config (Docker's and OCI's names).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// What runs first.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Its arguments (or the command, without an entrypoint).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` lines.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Where it starts.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid`, `name` or `name:group`.
    #[serde(default)]
    pub user: Option<String>,
    /// `8080/tcp` and the like.
    #[serde(default)]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// An image config (the blob a manifest's `config` points at), as far as running it needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageConfig {
    /// `amd64`, ...
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// How it runs.
    #[serde(default)]
    pub config: RunConfig,
}

/// What shipgate adds to an image to run it as an instance.
#[derive(Debug, Clone)]
pub struct Instance<'a> {
    /// Its variables (`PORT`, the environment's `vars` and secrets, `SHIPGATE_*`); they win over
    /// the image's own `Env`.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// The environment's data folder on the host, mounted at [`DATA_MOUNT`], the one writable
    /// place that outlives the instance.
    pub data_dir: &'a std::path::Path,
    /// The user and group it runs as, resolved ([`resolve_user`]).
    pub user: (u32, u32),
    /// The network namespace it joins, if any; the machine's otherwise (fenced by its user).
    pub netns: Option<&'a std::path::Path>,
    /// Its host name.
    pub hostname: &'a str,
}

/// Where an instance of an image finds its data folder (`DATA_DIR`).
pub const DATA_MOUNT: &str = "/data";

/// The OCI runtime `config.json` that runs `image` as `instance` with runc: its own mount, pid,
/// IPC and UTS namespaces, a read-only root, no capabilities, `no_new_privs`, and the data
/// folder as its one writable mount that outlives it (`/tmp` is a small tmpfs). The error says
/// what the image lacks.
pub fn runtime_config(
    image: &ImageConfig,
    instance: &Instance<'_>,
) -> Result<serde_json::Value, String> {
    if image.os != "linux" {
        return Err(format!("the image is for {}, not linux", image.os));
    }
    let c = &image.config;
    let args: Vec<String> = c
        .entrypoint
        .iter()
        .flatten()
        .chain(c.cmd.iter().flatten())
        .cloned()
        .collect();
    if args.is_empty() {
        return Err("the image says nothing to run: it has neither Entrypoint nor Cmd".to_owned());
    }
    let cwd = c
        .working_dir
        .as_deref()
        .filter(|w| !w.is_empty())
        .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err(format!(
            "the image's WorkingDir `{cwd}` is not an absolute path"
        ));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for line in c.env.iter().flatten() {
        let (k, v) = line.split_once('=').unwrap_or((line.as_str(), ""));
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v.to_owned()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ));
    }
    let ours = instance
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([("DATA_DIR".to_owned(), DATA_MOUNT.to_owned())]);
    for (k, v) in ours {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "ipc"}),
        serde_json::json!({"type": "uts"}),
        serde_json::json!({"type": "mount"}),
    ];
    // Without one, it stays in the machine's network, where the environment's fence (by its
    // user) decides what it reaches and the router reaches it on loopback.
    if let Some(path) = instance.netns {
        namespaces.push(serde_json::json!({"type": "network", "path": path.display().to_string()}));
    }
    let none: [&str; 0] = [];
    Ok(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": instance.user.0, "gid": instance.user.1},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": none, "effective": none, "inheritable": none,
                "permitted": none, "ambient": none
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": instance.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
            {"destination": DATA_MOUNT, "type": "bind",
             "source": instance.data_dir.display().to_string(),
             "options": ["rbind", "rw", "nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    }))
}

/// The uid and gid of an image's `User` (`1000`, `1000:1000`, `app`, `app:staff`, empty for
/// root), names looked up in the image's own `/etc/passwd` and `/etc/group` texts.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    let user = user.trim();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let find = |text: &str, name: &str, field: usize| -> Option<u32> {
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field)?.parse().ok())
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => (
            find(passwd, u, 2).ok_or_else(|| {
                format!("the image's User `{u}` is not in its /etc/passwd; write a number instead")
            })?,
            find(passwd, u, 3),
        ),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => find(group, g, 2).ok_or_else(|| {
                format!("the image's group `{g}` is not in its /etc/group; write a number instead")
            })?,
        },
        // A user by number without a group runs in group 0, as runc and Docker do.
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    fn image(json: &str) -> ImageConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_image_runs_read_only_without_capabilities_with_our_variables_over_its_own() {
        let i = image(
            r#"{"architecture": "amd64", "os": "linux", "config": {
                "Entrypoint": ["/usr/bin/web"], "Cmd": ["--serve"],
                "Env": ["PATH=/usr/bin", "PORT=80", "MODE=image"], "WorkingDir": "/app",
                "User": "1000:1000", "ExposedPorts": {"80/tcp": {}}}}"#,
        );
        let env = std::collections::BTreeMap::from([
            ("PORT".to_owned(), "8080".to_owned()),
            ("SHIPGATE_ENV".to_owned(), "staging".to_owned()),
        ]);
        let inst = Instance {
            env: &env,
            data_dir: std::path::Path::new("/var/lib/shipgate/data/staging/web"),
            user: (1000, 1000),
            netns: Some(std::path::Path::new("/run/netns/sg-staging")),
            hostname: "web-staging",
        };
        let spec = runtime_config(&i, &inst).unwrap();
        assert_eq!(
            spec["process"]["args"],
            serde_json::json!(["/usr/bin/web", "--serve"])
        );
        assert_eq!(spec["process"]["cwd"], "/app");
        let env: Vec<&str> = spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PORT=8080") && !env.contains(&"PORT=80"),
            "{env:?}"
        );
        assert!(
            env.contains(&"MODE=image") && env.contains(&"DATA_DIR=/data"),
            "{env:?}"
        );
        assert!(env.contains(&"PATH=/usr/bin"), "{env:?}");
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            serde_json::json!([])
        );
        let writable: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind")
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(writable, ["/data"]);
        let ns = &spec["linux"]["namespaces"];
        assert!(
            ns.as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/netns/sg-staging")
        );
    }

    #[test]
    fn an_image_that_says_nothing_to_run_is_refused() {
        let i = image(r#"{"architecture": "amd64", "os": "linux", "config": {}}"#);
        let env = std::collections::BTreeMap::new();
        let inst = Instance {
            env: &env,
            data_dir: std::path::Path::new("/d"),
            user: (0, 0),
            netns: None,
            hostname: "h",
        };
        assert!(
            runtime_config(&i, &inst)
                .unwrap_err()
                .contains("neither Entrypoint nor Cmd")
        );
        let w = image(r#"{"architecture": "amd64", "os": "windows", "config": {"Cmd": ["x"]}}"#);
        assert!(runtime_config(&w, &inst).unwrap_err().contains("not linux"));
    }

    #[test]
    fn a_user_by_name_is_looked_up_in_the_image() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group), Ok((0, 0)));
        assert_eq!(resolve_user("app", passwd, group), Ok((1001, 1002)));
        assert_eq!(resolve_user("app:staff", passwd, group), Ok((1001, 50)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 0)));
        assert_eq!(resolve_user("1000:1000", passwd, group), Ok((1000, 1000)));
        assert!(
            resolve_user("nobody", passwd, group)
                .unwrap_err()
                .contains("not in its /etc/passwd")
        );
    }
}
