//! Image releases (issue 31): OCI images built here with umoci from busybox-static, FROM
//! scratch, registered from a layout folder, an archive and a registry, promoted through four
//! environments and run by runc: the image's userland, read-only, not root, its data kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{
    TestServer, free_port, load, load_ended_without_failures, root_or_skip, spawn_server,
    spawn_server_with_env, wait_for,
};

/// The start script: busybox's httpd on `$PORT`, ended cleanly by SIGTERM (as pid 1 it would
/// ignore it otherwise).
const START: &str = "#!/bin/sh\n\
    busybox httpd -f -p 127.0.0.1:$PORT -h /www &\n\
    pid=$!\n\
    trap 'kill $pid; exit 0' TERM\n\
    wait $pid\n";

/// What the app says of where it runs, from inside (a CGI script of httpd).
const INFO: &str = "#!/bin/sh\n\
    echo 'Content-Type: text/plain'\n\
    echo\n\
    echo \"uid=$(busybox id -u)\"\n\
    if [ -e /usr ]; then echo usr=present; else echo usr=absent; fi\n\
    if busybox touch /bin/written 2>/dev/null; then echo root=writable; else echo root=read-only; fi\n\
    echo \"busybox=$(busybox --help | busybox head -n 1 | busybox cut -d' ' -f1)\"\n\
    echo \"count=$(busybox cat $DATA_DIR/count 2>/dev/null || echo 0)\"\n\
    echo \"$(( $(busybox cat $DATA_DIR/count 2>/dev/null || echo 0) + 1 ))\" > $DATA_DIR/count\n\
    echo \"data_dir=$DATA_DIR\"\n\
    echo \"greeting=$GREETING\"\n";

/// Tries `?addr=HOST:PORT` from inside (a CGI script of httpd): `connected` or `refused`.
const CONNECT: &str = "#!/bin/sh\n\
    echo 'Content-Type: text/plain'\n\
    echo\n\
    addr=${QUERY_STRING#addr=}\n\
    if busybox nc -w 1 ${addr%:*} ${addr##*:} </dev/null >/dev/null 2>&1; then echo connected; else echo refused; fi\n";

/// Skips (never passes) where images cannot be built or run here.
pub fn runnable(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    for tool in ["umoci", "runc", "skopeo"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED {test}: {tool} is not installed (apt-get install -y {tool})");
            return false;
        }
    }
    if !Path::new("/usr/bin/busybox").exists() {
        eprintln!("SKIPPED {test}: busybox-static is not installed");
        return false;
    }
    true
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An OCI layout at `dir/layout` holding `base` (busybox and the start script, one layer) and
/// one image per version, each `base` plus a layer of its own with its page.
pub fn build_images(dir: &Path, versions: &[&str]) -> PathBuf {
    let layout = dir.join("layout");
    let l = layout.to_str().unwrap();
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &format!("{l}:base")]);
    let bundle = dir.join("bundle-base");
    let b = bundle.to_str().unwrap();
    umoci(&["unpack", "--image", &format!("{l}:base"), b]);
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    write_exec(&root.join("bin/start"), START);
    for d in ["etc", "tmp", "data", "proc", "dev", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    umoci(&["repack", "--image", &format!("{l}:base"), b]);
    umoci(&[
        "config",
        "--image",
        &format!("{l}:base"),
        "--config.entrypoint",
        "/bin/start",
        "--config.env",
        "GREETING=from-the-image",
        "--config.exposedports",
        "8080/tcp",
    ]);
    for v in versions {
        let bundle = dir.join(format!("bundle-{v}"));
        let b = bundle.to_str().unwrap();
        umoci(&["unpack", "--image", &format!("{l}:base"), b]);
        let root = bundle.join("rootfs");
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::write(root.join("www/index.html"), format!("{v}\n")).unwrap();
        std::fs::write(root.join("www/version"), format!("{v}\n")).unwrap();
        write_exec(&root.join("www/cgi-bin/info"), INFO);
        write_exec(&root.join("www/cgi-bin/connect"), CONNECT);
        umoci(&["repack", "--image", &format!("{l}:{v}"), b]);
    }
    layout
}

fn config(extra: &str) -> String {
    config_of("", extra)
}

/// [`config`] with `server` lines in `[server]`.
fn config_with_server(server: &str) -> String {
    config_of(server, "")
}

/// Four environments (staging with limits and a variable), `server` lines in `[server]` and
/// `extra` at the end.
fn config_of(server: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n{server}\n\
         [apps.web]\nhealth = \"/\"\n\n\
         [environments.development]\nlisten = \"127.0.0.1:{}\"\n\n\
         [environments.testing]\nafter = \"development\"\nlisten = \"127.0.0.1:{}\"\n\n\
         [environments.staging]\nafter = \"testing\"\nlisten = \"127.0.0.1:{}\"\n\
         limits = {{ memory = \"64MiB\", pids = 64 }}\nvars.GREETING = \"from-staging\"\n\n\
         [environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:{}\"\n{extra}",
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port()
    )
}

/// What the instance's `/cgi-bin/info` says, as `key=value` lines.
fn info(s: &TestServer, env: &str) -> std::collections::BTreeMap<String, String> {
    let reply = s
        .get(&format!("{}/cgi-bin/info", s.url(env)))
        .unwrap_or_else(|| panic!("no answer from {env}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
        .body
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn layers_stored(s: &TestServer) -> usize {
    std::fs::read_dir(s.data_dir().join("layers/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn an_image_walks_four_environments_and_runs_its_own_userland_read_only_and_not_as_root() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config(""));
    let layout = build_images(s.dir.path(), &["1.0.0", "1.1.0"]);
    let l = layout.display();
    let created = register_image(&s, "1.0.0", &format!("oci:{l}:1.0.0"));
    assert!(
        created.contains("registered web@1.0.0 (sha256:"),
        "{created}"
    );
    // The digest is the manifest's, as the layout names it.
    let manifest = manifest_digest(&layout, "1.0.0");
    assert!(created.contains(&manifest), "{created} names {manifest}");
    let after_one = layers_stored(&s);
    let shown = s.ok(&["release", "show", "web@1.0.0"]);
    for said in [
        "linux/amd64, 2 layers",
        "command  /bin/start",
        "ports    8080/tcp",
        "user     root in the image (shipgate never runs it as root)",
        "LAYER",
    ] {
        assert!(shown.contains(said), "{said} in {shown}");
    }
    eprintln!("{shown}");

    s.walk("1.0.0", "production");
    for env in ["development", "testing", "staging", "production"] {
        assert_eq!(s.version(env).as_deref(), Some("1.0.0"), "{env}");
    }
    let seen = info(&s, "staging");
    assert_eq!(
        seen["usr"], "absent",
        "the host's /usr is not there: {seen:?}"
    );
    assert_eq!(seen["busybox"], "BusyBox", "{seen:?}");
    assert_eq!(seen["root"], "read-only", "{seen:?}");
    assert_ne!(seen["uid"], "0", "{seen:?}");
    assert_eq!(seen["data_dir"], "/data", "{seen:?}");
    // The bundles' config.json, which holds the instances' variables (secrets among them), is
    // gone once runc has made each container.
    let bundles = s.data_dir().join("bundles");
    let kept: Vec<_> = std::fs::read_dir(&bundles)
        .unwrap()
        .flatten()
        .map(|b| b.path().join("config.json"))
        .filter(|c| c.exists())
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
    // staging's limits hold the container: it is in the instance's cgroup.
    let status = s.json(&["status", "web"]);
    let runc_pid = crate::helpers::env_status(&status, "staging")["instance"]["pid"]
        .as_i64()
        .unwrap();
    let child = std::fs::read_dir(format!("/proc/{runc_pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .find_map(|c| c.split_whitespace().next().map(str::to_owned))
        .expect("runc has a child: the container");
    let cgroups = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap();
    let memory = cgroups
        .lines()
        .find(|l| l.contains("memory"))
        .unwrap_or_default();
    assert!(memory.contains("/shipgate/web-staging-"), "{cgroups}");
    // The environment's vars win over the image's Env; where none is set, the image's stays.
    assert_eq!(seen["greeting"], "from-staging", "{seen:?}");
    assert_eq!(info(&s, "production")["greeting"], "from-the-image");

    // The second version shares the base layer: only its own layer (and its config and
    // manifest) are new.
    register_image(&s, "1.1.0", &format!("oci:{l}:1.1.0"));
    assert_eq!(
        layers_stored(&s),
        after_one + 3,
        "one layer, one config and one manifest are new; the base layer is stored once"
    );
    // Unpacked, the base's files are one on disk too: both roots link the same busybox.
    let busyboxes: Vec<(u64, u64)> = std::fs::read_dir(s.data_dir().join("releases"))
        .unwrap()
        .flatten()
        .map(|r| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(r.path().join("rootfs/bin/busybox")).unwrap();
            (m.dev(), m.ino())
        })
        .collect();
    assert_eq!(busyboxes.len(), 2);
    assert_eq!(busyboxes[0], busyboxes[1], "one busybox for both releases");
    // The same version with another image is refused, and nothing changes.
    let again = image_refused(&s, "1.0.0", &format!("oci:{l}:1.1.0"));
    assert!(again.contains("1.0.0"), "{again}");

    // The data folder is kept across releases: the count goes on.
    let before = info(&s, "staging")["count"].parse::<u32>().unwrap();
    s.deploy("1.1.0", "development");
    s.ok(&["promote", "web@1.1.0", "--to", "testing", "--wait"]);
    s.ok(&["promote", "web@1.1.0", "--to", "staging", "--wait"]);
    assert_eq!(s.version("staging").as_deref(), Some("1.1.0"));
    let after = info(&s, "staging")["count"].parse::<u32>().unwrap();
    assert_eq!(after, before + 1, "the data folder outlived the release");

    // Parity sees the images: staging runs 1.1.0's, production 1.0.0's; their configs match.
    // (It exits 1: the digests differ.)
    let out = s.cli(&["diff", "web", "staging", "production", "--output", "json"]);
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = |key: &str| {
        diff["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {diff}"))
    };
    assert_eq!(item("image.digest")["class"], "unexpected", "{diff}");
    assert_eq!(item("image.entrypoint")["class"], "same", "{diff}");
    assert_eq!(item("image.entrypoint")["a"], "/bin/start", "{diff}");
    assert_eq!(item("image.env.GREETING")["class"], "same", "{diff}");
}

#[test]
fn an_image_archive_and_a_tls_registry_with_basic_auth_give_the_same_digest_and_a_registry_down_is_a_clear_error()
 {
    if !runnable("images") {
        return;
    }
    let registry = Registry::start();
    let s = spawn_server_with_env(
        &config(&format!(
            "\n[registries.\"{}\"]\nusername = \"ci\"\npassword_env = \"TEST_REGISTRY_PASSWORD\"\nca_file = \"{}\"\n",
            registry.host,
            registry.cert.display()
        )),
        &[("TEST_REGISTRY_PASSWORD", "s3cret")],
    );
    let layout = build_images(s.dir.path(), &["1.0.0"]);
    let l = layout.display();
    let archive = s.dir.path().join("web.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{l}:1.0.0"))
        .arg(format!("oci-archive:{}", archive.display())));
    let certs = s.dir.path().join("registry-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&registry.cert, certs.join("ca.crt")).unwrap();
    let from_archive =
        register_image_json(&s, "1.0.0", &format!("oci-archive:{}", archive.display()));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-creds", "ci:s3cret"])
        .arg("--dest-cert-dir")
        .arg(&certs)
        .arg(format!("oci:{l}:1.0.0"))
        .arg(format!("docker://{}/team/web:1.0.0", registry.host)));
    let from_registry =
        register_image_json(&s, "2.0.0", &format!("{}/team/web:1.0.0", registry.host));
    assert_eq!(
        from_archive["release"]["digest"], from_registry["release"]["digest"],
        "the same manifest from an archive and from a registry"
    );
    // Registered, the release never needs the registry again.
    drop(registry);
    s.deploy("2.0.0", "development");
    // (The same image as 1.0.0: its page says 1.0.0.)
    assert_eq!(info(&s, "development")["usr"], "absent");
    // A registry that is not there is a clear error.
    let down = image_refused(
        &s,
        "3.0.0",
        &format!("127.0.0.1:{}/team/web:1.0.0", free_port()),
    );
    assert!(down.contains("could not pull"), "{down}");
}

/// Debian's docker-registry on loopback with basic auth (htpasswd), stopped when dropped.
struct Registry {
    host: String,
    /// Its certificate (self-signed): the CA to trust it by.
    cert: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let htpasswd = dir.path().join("htpasswd");
        run(Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(&htpasswd)
            .args(["ci", "s3cret"]));
        // TLS with a certificate of its own, which the config gives as `ca_file`.
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n\
                 auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("storage").display(),
                cert.display(),
                key.display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let host = format!("127.0.0.1:{port}");
        wait_for("the registry to answer", || {
            std::net::TcpStream::connect(&host).is_ok()
        });
        Registry {
            host,
            cert,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn image_releases_switch_and_roll_back_without_a_failed_request() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config(""));
    let layout = build_images(s.dir.path(), &["1.0.0", "1.1.0"]);
    for v in ["1.0.0", "1.1.0"] {
        register_image(&s, v, &format!("oci:{}:{v}", layout.display()));
    }
    s.deploy("1.0.0", "development");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = load(format!("{}/version", s.url("development")), stop.clone());
    wait_for("load on 1.0.0", || s.version("development").is_some());
    // Long enough around the changes for the load to be a real one (not a timing check).
    std::thread::sleep(std::time::Duration::from_secs(1));
    s.deploy("1.1.0", "development");
    assert_eq!(s.version("development").as_deref(), Some("1.1.0"));
    let started = std::time::Instant::now();
    s.ok(&["rollback", "web", "--env", "development", "--wait"]);
    let took = started.elapsed();
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let answered = load_ended_without_failures(
        &stop,
        traffic,
        "an image switched and rolled back under load",
    );
    eprintln!(
        "image rollback to the warm standby: {} ms for `shipgate rollback --wait` ({answered} requests, 0 failed)",
        took.as_millis()
    );
}

/// A layout of `dir` whose image 1.0.0 is then broken by `spoil` (given the layout and its
/// manifest's JSON, as a file path); the release it would make is refused and nothing is kept.
fn refused_image(s: &TestServer, name: &str, spoil: impl FnOnce(&Path, &Path)) -> String {
    let dir = s.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let layout = build_images(&dir, &["1.0.0"]);
    let manifest = manifest_digest(&layout, "1.0.0")
        .trim_start_matches("sha256:")
        .to_owned();
    spoil(&layout, &layout.join("blobs/sha256").join(manifest));
    let before = layers_stored(s);
    let said = image_refused(s, "9.9.9", &format!("oci:{}:1.0.0", layout.display()));
    assert!(
        s.json(&["release", "list"]).as_array().unwrap().is_empty(),
        "{name}: no release is recorded"
    );
    assert!(
        layers_stored(s) <= before + 2,
        "{name}: at most the verified layers that came before the fault are kept"
    );
    said
}

#[test]
fn a_damaged_image_another_platform_or_a_huge_manifest_is_refused_with_nothing_recorded() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config(""));
    // A layer whose bytes are not those of its digest.
    let damaged = refused_image(&s, "damaged", |layout, manifest| {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        let layer = m["layers"][1]["digest"].as_str().unwrap();
        let path = layout
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:"));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    });
    assert!(damaged.contains("copy it again"), "{damaged}");
    // An image for another platform: its config says s390x (the manifest is rewritten to
    // point at the changed config, so only the platform is wrong).
    let foreign = refused_image(&s, "foreign", |layout, manifest| {
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        let blobs = layout.join("blobs/sha256");
        let config_digest = m["config"]["digest"].as_str().unwrap().to_owned();
        let config_path = blobs.join(config_digest.trim_start_matches("sha256:"));
        let mut c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        c["architecture"] = "s390x".into();
        let bytes = serde_json::to_vec(&c).unwrap();
        let hex = sha256_hex(&bytes);
        std::fs::write(blobs.join(&hex), &bytes).unwrap();
        m["config"]["digest"] = format!("sha256:{hex}").into();
        m["config"]["size"] = bytes.len().into();
        rewrite_manifest(layout, manifest, &m);
    });
    assert!(foreign.contains("s390x"), "{foreign}");
    // A manifest of 5 MiB.
    let huge = refused_image(&s, "huge", |layout, manifest| {
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
        m["annotations"] = serde_json::json!({"padding": "x".repeat(5 << 20)});
        rewrite_manifest(layout, manifest, &m);
    });
    assert!(huge.contains("MiB"), "{huge}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes manifest `m` as a new blob and points the layout's index at it (tag 1.0.0).
fn rewrite_manifest(layout: &Path, old: &Path, m: &serde_json::Value) {
    let bytes = serde_json::to_vec(m).unwrap();
    let hex = sha256_hex(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let old_hex = old.file_name().unwrap().to_str().unwrap();
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["digest"] == format!("sha256:{old_hex}") {
            d["digest"] = format!("sha256:{hex}").into();
            d["size"] = bytes.len().into();
        }
    }
    std::fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A gzip'd layer tar holding `entries`: (path, a symlink's target or a file's text).
fn layer(entries: &[(&str, Result<&str, &str>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, what) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        match what {
            Ok(text) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(text.len() as u64);
                tar.append_data(&mut h, path, text.as_bytes()).unwrap();
            }
            Err(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn a_whiteout_that_escapes_the_rootfs_is_refused_when_the_release_is_made() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config(""));
    let layout = s.dir.path().join("escape");
    let run = shipgate_store::RunConfigJson {
        cmd: Some(vec!["/bin/start".into()]),
        ..Default::default()
    };
    shipgate_store::write_layout(
        &layout,
        None,
        &[
            layer(&[("bin/start", Ok("#!/bin/sh\n")), ("up", Err("/"))]),
            // Removes the host's /etc, if it were followed.
            layer(&[("up/.wh.etc", Ok(""))]),
        ],
        run,
        "1.0.0",
    )
    .unwrap();
    let said = image_refused(&s, "1.0.0", &format!("oci:{}:1.0.0", layout.display()));
    assert!(
        said.contains("escapes the rootfs") || said.contains("through the link"),
        "{said}"
    );
    eprintln!("{said}");
    assert!(Path::new("/etc/passwd").exists());
    assert!(
        s.json(&["release", "list"]).as_array().unwrap().is_empty(),
        "no release is recorded"
    );
    let releases = std::fs::read_dir(s.data_dir().join("releases"))
        .unwrap()
        .count();
    assert_eq!(releases, 0, "no rootfs is left");
}

#[test]
fn an_image_changed_on_disk_is_drift_and_heal_puts_its_layers_back() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config(""));
    let layout = build_images(s.dir.path(), &["1.0.0"]);
    let created = register_image_json(&s, "1.0.0", &format!("oci:{}:1.0.0", layout.display()));
    let digest = created["release"]["digest"].as_str().unwrap().to_owned();
    s.walk("1.0.0", "testing");
    let www = s
        .data_dir()
        .join("releases")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs/www");
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [www.clone(), www.join("version")] {
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            perm.set_mode(perm.mode() | 0o200);
            std::fs::set_permissions(&path, perm).unwrap();
        }
    }
    std::fs::write(www.join("version"), "changed by hand\n").unwrap();
    let drift = s.cli(&["drift", "web"]);
    assert_ne!(drift.status.code(), Some(0));
    let said = crate::helpers::text(&drift);
    assert!(said.contains("rootfs/www/version"), "{said}");
    s.ok(&["drift", "web", "--env", "development", "--heal"]);
    assert_eq!(
        std::fs::read_to_string(www.join("version")).unwrap(),
        "1.0.0\n"
    );
    // Testing runs the same image from the same folder: its container still has the root that
    // heal put aside, which drift sees; healing testing starts it on the put-back root.
    let testing = s.cli(&["drift", "web"]);
    let said = crate::helpers::text(&testing);
    assert!(
        said.contains("the running instance's root is not the image's"),
        "{said}"
    );
    s.ok(&["drift", "web", "--env", "testing", "--heal"]);
    wait_for("the healed page", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
    let after = s.cli(&["drift", "web"]);
    assert_eq!(
        after.status.code(),
        Some(0),
        "{}",
        crate::helpers::text(&after)
    );
}

#[test]
fn a_folder_packed_onto_a_base_image_runs_with_the_apps_run_in_app() {
    if !runnable("images") {
        return;
    }
    let run = "busybox httpd -f -p 127.0.0.1:${PORT} -h /app/www & p=$!; trap 'kill $p; exit 0' TERM; wait $p";
    let s = spawn_server(&config("").replace(
        "[apps.web]\nhealth = \"/\"\n",
        &format!(
            "[apps.web]\nhealth = \"/\"\nrun = \"{}\"\n",
            run.replace('"', "\\\"")
        ),
    ));
    let layout = build_images(s.dir.path(), &[]);
    let build = s.dir.path().join("build");
    std::fs::create_dir_all(build.join("www")).unwrap();
    std::fs::write(build.join("www/version"), "3.0.0\n").unwrap();
    std::fs::write(build.join("www/index.html"), "ok\n").unwrap();
    s.ok(&[
        "release",
        "create",
        "web",
        "--version",
        "3.0.0",
        "--artifact",
        build.to_str().unwrap(),
        "--base",
        &format!("oci:{}:base", layout.display()),
    ]);
    let shown = s.ok(&["release", "show", "web@3.0.0"]);
    assert!(
        shown.contains("2 layers") && shown.contains("workdir  /app"),
        "{shown}"
    );
    s.deploy("3.0.0", "development");
    assert_eq!(s.version("development").as_deref(), Some("3.0.0"));
}

#[test]
fn an_image_in_staging_reaches_nothing_of_production_or_shipgate() {
    if !runnable("images") {
        return;
    }
    let (api, toxiproxy, staging, production) =
        (free_port(), free_port(), free_port(), free_port());
    let s = spawn_server(&format!(
        "[server]\nlisten = \"127.0.0.1:{api}\"\ndata_dir = \"data\"\ntoxiproxy_listen = \"127.0.0.1:{toxiproxy}\"\n\n\
         [apps.web]\nhealth = \"/\"\n\n\
         [environments.staging]\nlisten = \"127.0.0.1:{staging}\"\n\n\
         [environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:{production}\"\n"
    ));
    let layout = build_images(s.dir.path(), &["1.0.0"]);
    register_image(&s, "1.0.0", &format!("oci:{}:1.0.0", layout.display()));
    s.ok(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    let status = s.json(&["status", "web"]);
    let instance_port = |env: &str| {
        crate::helpers::env_status(&status, env)["instance"]["port"]
            .as_u64()
            .unwrap()
    };
    let from_staging = |addr: String| {
        let r = s
            .get(&format!("{}/cgi-bin/connect?addr={addr}", s.url("staging")))
            .unwrap();
        (addr, r.body.trim().to_owned())
    };
    // (Both listen: production's router and instance answer the test itself.)
    for port in [production as u64, instance_port("production")] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok());
        let (addr, said) = from_staging(format!("127.0.0.1:{port}"));
        assert_eq!(said, "refused", "{addr} from inside staging's image");
    }
    for port in [staging as u64, api as u64] {
        let (addr, said) = from_staging(format!("127.0.0.1:{port}"));
        assert_eq!(
            said, "connected",
            "{addr} from inside staging's image (the probe works)"
        );
    }
    assert_eq!(
        info(&s, "production")["usr"],
        "absent",
        "production answers throughout"
    );
}

#[test]
fn retention_removes_the_layers_no_kept_image_uses_and_keeps_a_shared_base() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config_with_server("retention = { releases = 1 }\n"));
    let layout = build_images(s.dir.path(), &["1.0.0", "1.1.0", "1.2.0"]);
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        register_image(&s, v, &format!("oci:{}:{v}", layout.display()));
    }
    // One base layer, and a layer, a config and a manifest of each version.
    assert_eq!(layers_stored(&s), 10);
    s.deploy("1.2.0", "development");
    let report = s.json(&["gc"]);
    assert_eq!(report["releases"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(layers_stored(&s), 4, "{report}");
    // What is kept still runs: 1.2.0 starts again from its layers.
    s.ok(&["redeploy", "web", "--env", "development", "--wait"]);
    assert_eq!(s.version("development").as_deref(), Some("1.2.0"));
    // A pruned image comes back by registering it again.
    register_image(&s, "1.0.0", &format!("oci:{}:1.0.0", layout.display()));
    assert_eq!(layers_stored(&s), 7);
}

#[test]
fn an_image_instance_is_restarted_after_a_crash_and_adopted_by_a_new_agent() {
    if !runnable("images") {
        return;
    }
    let s = spawn_server(&config_with_server("data_plane = \"agent\"\n"));
    let layout = build_images(s.dir.path(), &["1.0.0"]);
    register_image(&s, "1.0.0", &format!("oci:{}:1.0.0", layout.display()));
    s.deploy("1.0.0", "development");
    let status = || crate::helpers::env_status(&s.json(&["status", "web"]), "development");
    let runc_pid = status()["instance"]["pid"].as_i64().unwrap();
    // The container's first process, runc's child, dies: runc ends, and the instance starts
    // again.
    // (Any of runc's threads may have started it.)
    let child: i32 = std::fs::read_dir(format!("/proc/{runc_pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .find_map(|c| c.split_whitespace().next().map(|p| p.parse().unwrap()))
        .expect("runc has a child: the container");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a restart after the crash", || {
        let st = status();
        st["instance"]["restarts"] == 1 && st["instance"]["pid"].as_i64() != Some(runc_pid)
    });
    wait_for("the restarted instance to answer", || {
        s.version("development").as_deref() == Some("1.0.0")
    });
    // A new agent adopts it: same pid, still answering.
    let pid = status()["instance"]["pid"].clone();
    let old_agent = s.agent_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a new agent", || {
        s.agent_pid().is_some_and(|p| p != old_agent)
    });
    wait_for("the new agent to be given the live releases", || {
        !s.restoring() && s.log().contains("the local agent is a new one")
    });
    assert_eq!(
        status()["instance"]["pid"],
        pid,
        "adopted, not started again: {}",
        s.log()
    );
    assert_eq!(s.version("development").as_deref(), Some("1.0.0"));
}

/// `release create web --version VERSION --image REFERENCE`, which must succeed; its output.
pub fn register_image(s: &TestServer, version: &str, reference: &str) -> String {
    s.ok(&[
        "release",
        "create",
        "web",
        "--version",
        version,
        "--image",
        reference,
    ])
}

/// [`register_image`], its answer as JSON.
fn register_image_json(s: &TestServer, version: &str, reference: &str) -> serde_json::Value {
    s.json(&[
        "release",
        "create",
        "web",
        "--version",
        version,
        "--image",
        reference,
    ])
}

/// [`register_image`], which must be refused; what it said.
fn image_refused(s: &TestServer, version: &str, reference: &str) -> String {
    s.refused(&[
        "release",
        "create",
        "web",
        "--version",
        version,
        "--image",
        reference,
    ])
}

/// The manifest digest the layout's index gives the image tagged `tag`.
fn manifest_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}
