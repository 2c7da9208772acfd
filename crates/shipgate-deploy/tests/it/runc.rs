//! The `config.json` shipgate makes from an image (`shipgate_core::image::runtime_config`), run
//! by the real runc on a busybox root: a read-only root, no capabilities, the user asked, the
//! data folder the one writable place, and podman's seccomp profile (issue 31, before images
//! are wired into the driver).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shipgate_core::image::{ImageConfig, Instance, runtime_config};
use shipgate_core::seccomp::{PODMAN_PROFILE, oci_seccomp};

/// Skips (never passes) without root or without runc and busybox-static.
fn runnable() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: runc needs root here");
        return false;
    }
    for tool in ["/usr/sbin/runc", "/usr/bin/busybox"] {
        if !Path::new(tool).exists() {
            eprintln!("SKIPPED: {tool} is not installed (apt-get install -y runc busybox-static)");
            return false;
        }
    }
    true
}

/// A runtime bundle whose root holds busybox alone, and beside it the data folder, owned by
/// uid 1000 as an environment's would be.
struct Bundle {
    _dir: tempfile::TempDir,
    path: PathBuf,
    data: PathBuf,
}

impl Bundle {
    fn new() -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle");
        let rootfs = path.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "data", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(1000), Some(1000)).unwrap();
        Bundle {
            _dir: dir,
            path,
            data,
        }
    }

    /// The config of an image whose command is `sh -c script`, run as uid 1000 with `env`.
    fn spec(&self, script: &str, env: &BTreeMap<String, String>) -> serde_json::Value {
        let image: ImageConfig = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox", "sh", "-c"], "Cmd": [script],
                       "Env": ["GREETING=from-the-image"], "WorkingDir": "/"}
        }))
        .unwrap();
        runtime_config(
            &image,
            &Instance {
                env,
                data_dir: &self.data,
                user: (1000, 1000),
                netns: None,
                hostname: "web-test",
            },
        )
        .unwrap()
    }

    /// Runs `spec` to its end with runc as container `name` (unique to the test, since tests
    /// run in parallel), and asserts that it succeeded.
    fn run(&self, name: &str, spec: &serde_json::Value) {
        std::fs::write(self.path.join("config.json"), spec.to_string()).unwrap();
        let id = format!("sg-test-{name}-{}", std::process::id());
        let out = std::process::Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&self.path)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let _ = std::process::Command::new("runc")
            .args(["delete", "--force", &id])
            .output();
        assert!(
            out.status.success(),
            "runc: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file the process wrote into its data folder, trimmed.
    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.data.join(file))
            .unwrap()
            .trim()
            .to_owned()
    }
}

#[test]
fn runc_runs_an_image_config_read_only_without_capabilities_writing_only_its_data() {
    if !runnable() {
        return;
    }
    let bundle = Bundle::new();
    let script = "echo $GREETING > /data/greeting; /bin/busybox id -u > /data/uid; \
                  (/bin/busybox touch /bin/x 2>/dev/null && echo root-writable || echo root-read-only) > /data/root; \
                  /bin/busybox grep CapEff /proc/self/status > /data/caps; echo $DATA_DIR > /data/where";
    let env = BTreeMap::from([("GREETING".to_owned(), "from-shipgate".to_owned())]);
    bundle.run("plain", &bundle.spec(script, &env));
    assert_eq!(bundle.read("greeting"), "from-shipgate");
    assert_eq!(bundle.read("uid"), "1000");
    assert_eq!(bundle.read("root"), "root-read-only");
    assert_eq!(bundle.read("caps"), "CapEff:\t0000000000000000");
    assert_eq!(bundle.read("where"), "/data");
}

/// With podman's profile in `linux.seccomp` the filter is loaded, and sethostname, which it
/// grants only to holders of CAP_SYS_ADMIN, is refused even in a user and UTS namespace of the
/// process's own, where the kernel alone would let it rename its host.
#[test]
fn runc_loads_podmans_seccomp_profile_which_refuses_what_needs_a_capability() {
    if !runnable() {
        return;
    }
    let Ok(profile) = std::fs::read_to_string(PODMAN_PROFILE) else {
        eprintln!("SKIPPED: {PODMAN_PROFILE} is missing (apt-get install -y podman)");
        return;
    };
    let seccomp = oci_seccomp(&profile, std::env::consts::ARCH).unwrap();

    let script = "/bin/busybox grep Seccomp: /proc/self/status > /data/seccomp; \
                  /bin/busybox unshare -r -u /bin/busybox sh -c \
                      '/bin/busybox hostname elsewhere && /bin/busybox hostname' > /data/hostname 2>&1; \
                  /bin/busybox hostname >> /data/hostname";
    let env = BTreeMap::new();
    let bundle = Bundle::new();
    let plain = bundle.spec(script, &env);
    bundle.run("without-seccomp", &plain);
    // Without the section, the process has what runc itself had (none, unless the tests run
    // filtered).
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = ours.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    assert_eq!(bundle.read("seccomp"), ours);
    assert_eq!(
        bundle.read("hostname"),
        "elsewhere\nweb-test",
        "without seccomp, a capless process renames the host of a user namespace of its own \
         (does this kernel refuse unprivileged user namespaces?)"
    );

    let mut filtered = plain;
    filtered["linux"]["seccomp"] = seccomp;
    bundle.run("with-seccomp", &filtered);
    assert_eq!(bundle.read("seccomp"), "Seccomp:\t2");
    assert_eq!(
        bundle.read("hostname"),
        "hostname: sethostname: Operation not permitted\nweb-test"
    );
}
