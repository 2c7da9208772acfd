//! The `config.json` shipgate makes from an image (`shipgate_core::image::runtime_config`), run
//! by the real runc on a busybox root: a read-only root, no capabilities, the user asked, the
//! data folder the one writable place (issue 31, before images are wired into the driver).

use std::collections::BTreeMap;
use std::path::Path;

use shipgate_core::image::{ImageConfig, Instance, runtime_config};

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

#[test]
fn runc_runs_an_image_config_read_only_without_capabilities_writing_only_its_data() {
    if !runnable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "data", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(1000), Some(1000)).unwrap();
    let script = "echo $GREETING > /data/greeting; /bin/busybox id -u > /data/uid; \
                  (/bin/busybox touch /bin/x 2>/dev/null && echo root-writable || echo root-read-only) > /data/root; \
                  /bin/busybox grep CapEff /proc/self/status > /data/caps; echo $DATA_DIR > /data/where";
    let image: ImageConfig = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sh", "-c"], "Cmd": [script],
                   "Env": ["GREETING=from-the-image"], "WorkingDir": "/"}
    }))
    .unwrap();
    let env = BTreeMap::from([("GREETING".to_owned(), "from-shipgate".to_owned())]);
    let spec = runtime_config(
        &image,
        &Instance {
            env: &env,
            data_dir: &data,
            user: (1000, 1000),
            netns: None,
            hostname: "web-test",
        },
    )
    .unwrap();
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let id = format!("sg-test-{}", std::process::id());
    let out = std::process::Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
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
    let read = |f: &str| {
        std::fs::read_to_string(data.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(read("greeting"), "from-shipgate");
    assert_eq!(read("uid"), "1000");
    assert_eq!(read("root"), "root-read-only");
    assert_eq!(read("caps"), "CapEff:\t0000000000000000");
    assert_eq!(read("where"), "/data");
}
