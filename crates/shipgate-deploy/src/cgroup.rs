//! Resource limits of one instance, as a cgroup of its own: v2 where the unified hierarchy offers
//! the memory, cpu and pids controllers, v1 (one directory per controller) otherwise. The two
//! differ only in file names and layout; everything else here is shared.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use shipgate_core::config::Limits;

/// The CPU period the quota is given over (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// The controllers shipgate needs.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The name of the folder under each hierarchy that holds shipgate's cgroups.
const PARENT: &str = "shipgate";

/// A cgroup hierarchy the limits can be enforced with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy (cgroup v2) mounted at this folder, with the three controllers.
    V2(PathBuf),
    /// The v1 controllers, each mounted at `<this folder>/<controller>`.
    V1(PathBuf),
}

impl Hierarchy {
    /// The hierarchy this machine offers under `/sys/fs/cgroup`, or why there is none.
    pub fn detect() -> Result<Self, String> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    /// As [`Hierarchy::detect`], with the cgroup file systems mounted under `root`.
    pub fn detect_at(root: &Path) -> Result<Self, String> {
        // The unified hierarchy is mounted at the root itself, or at `unified` beside the v1
        // controllers (the "hybrid" layout).
        for unified in [root.to_path_buf(), root.join("unified")] {
            if let Ok(listed) = fs::read_to_string(unified.join("cgroup.controllers")) {
                let offered: Vec<&str> = listed.split_whitespace().collect();
                if CONTROLLERS.iter().all(|c| offered.contains(c)) {
                    return Ok(Self::V2(unified));
                }
            }
        }
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !root.join(c).join("tasks").exists())
            .collect();
        if missing.is_empty() {
            return Ok(Self::V1(root.to_path_buf()));
        }
        Err(format!(
            "no cgroup hierarchy under {} offers the memory, cpu and pids controllers (cgroup v2 \
             lacks some, and v1 lacks {})",
            root.display(),
            missing.join(", ")
        ))
    }

    /// `v2` or `v1`, as `status` and the start-up message say it.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V2(_) => "v2",
            Self::V1(_) => "v1",
        }
    }

    /// Removes the cgroup `name` (an instance id) if it exists and no process is in it; true
    /// when it is gone.
    pub fn remove_named(&self, name: &str) -> bool {
        let dirs: Vec<PathBuf> = match self {
            Self::V2(root) => vec![root.join(PARENT).join(name)],
            Self::V1(root) => CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(PARENT).join(name))
                .collect(),
        };
        dirs.iter()
            .all(|d| fs::remove_dir(d).is_ok() || !d.exists())
    }

    /// Makes the cgroup `name` (an instance id) with these limits. An existing one of that name
    /// (left by a server that was killed) is reused and its limits rewritten.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        let dirs: Vec<PathBuf> = match self {
            Self::V2(root) => {
                // Each level must hand the controllers down to the next.
                enable_controllers(root)?;
                let parent = root.join(PARENT);
                fs::create_dir_all(&parent)?;
                enable_controllers(&parent)?;
                vec![parent.join(name)]
            }
            Self::V1(root) => CONTROLLERS
                .iter()
                .map(|c| root.join(c).join(PARENT).join(name))
                .collect(),
        };
        for dir in &dirs {
            fs::create_dir_all(dir)?;
        }
        let cgroup = Cgroup {
            hierarchy: self.clone(),
            dirs,
        };
        for (file, value) in cgroup.settings(limits) {
            fs::write(&file, value).map_err(|e| {
                io::Error::new(e.kind(), format!("writing {}: {e}", file.display()))
            })?;
        }
        Ok(cgroup)
    }
}

fn enable_controllers(dir: &Path) -> io::Result<()> {
    let wanted: String = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    fs::write(dir.join("cgroup.subtree_control"), wanted)
}

/// One instance's cgroup (one folder in v2, one per controller in v1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// The files to write, and what, for these limits. A limit not set is written as "none" so
    /// a reused cgroup loses what an earlier run set.
    fn settings(&self, limits: &Limits) -> Vec<(PathBuf, String)> {
        match &self.hierarchy {
            Hierarchy::V2(_) => {
                let dir = &self.dirs[0];
                vec![
                    (
                        dir.join("memory.max"),
                        limits.memory.map_or("max".into(), |m| m.0.to_string()),
                    ),
                    (
                        dir.join("memory.swap.max"),
                        if limits.memory.is_some() { "0" } else { "max" }.into(),
                    ),
                    (
                        dir.join("cpu.max"),
                        match limits.cpu {
                            Some(cores) => format!("{} {CPU_PERIOD_US}", quota_us(cores)),
                            None => format!("max {CPU_PERIOD_US}"),
                        },
                    ),
                    (
                        dir.join("pids.max"),
                        limits.pids.map_or("max".into(), |p| p.to_string()),
                    ),
                ]
            }
            Hierarchy::V1(_) => {
                let [memory, cpu, pids] = [&self.dirs[0], &self.dirs[1], &self.dirs[2]];
                vec![
                    (
                        memory.join("memory.limit_in_bytes"),
                        limits.memory.map_or("-1".into(), |m| m.0.to_string()),
                    ),
                    (cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()),
                    (
                        cpu.join("cpu.cfs_quota_us"),
                        limits.cpu.map_or("-1".into(), |c| quota_us(c).to_string()),
                    ),
                    (
                        pids.join("pids.max"),
                        limits.pids.map_or("max".into(), |p| p.to_string()),
                    ),
                ]
            }
        }
    }

    /// The `cgroup.procs` files a process writes `0` to in order to join (itself, with all it
    /// starts later).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the kernel killed a process of this cgroup for going over its memory.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.hierarchy {
            Hierarchy::V2(_) => (self.dirs[0].join("memory.events"), "oom_kill"),
            Hierarchy::V1(_) => (self.dirs[0].join("memory.oom_control"), "oom_kill"),
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|text| counter(&text, key))
            .unwrap_or(0)
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(&self.procs_files()[0])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Removes it (the kernel refuses while a process is still in it; that is left to the next
    /// start of the same instance, which reuses it).
    pub fn remove(&self) {
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!("could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// `512MiB`, `2GiB`, `1500B`: the largest binary unit that divides `bytes`, as config sizes
/// are written.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(size, _)| bytes >= *size && bytes.is_multiple_of(*size))
        .map_or_else(
            || format!("{bytes}B"),
            |(size, unit)| format!("{}{unit}", bytes / size),
        )
}

fn quota_us(cores: f64) -> u64 {
    // At least 1 ms per period: the kernel refuses less.
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder laid out like a cgroup mount: the files the kernel would offer.
    fn fake_v2(controllers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        root
    }

    fn fake_v1(controllers: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for c in controllers {
            fs::create_dir_all(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("tasks"), "").unwrap();
        }
        fs::create_dir_all(root.path().join("unified")).unwrap();
        fs::write(root.path().join("unified/cgroup.controllers"), "hugetlb").unwrap();
        root
    }

    const LIMITS: Limits = Limits {
        memory: Some(shipgate_core::ByteSize(512 * 1024 * 1024)),
        cpu: Some(1.5),
        pids: Some(512),
    };

    fn read(path: PathBuf) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn v2_is_chosen_when_it_offers_every_controller_and_writes_its_own_files() {
        let root = fake_v2("cpuset cpu io memory hugetlb pids rdma");
        let h = Hierarchy::detect_at(root.path()).unwrap();
        assert_eq!(h, Hierarchy::V2(root.path().to_path_buf()));
        let cg = h.create("web-staging-3-1", &LIMITS).unwrap();
        let dir = root.path().join("shipgate/web-staging-3-1");
        assert_eq!(read(dir.join("memory.max")), "536870912");
        assert_eq!(read(dir.join("memory.swap.max")), "0");
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");
        assert_eq!(read(dir.join("pids.max")), "512");
        assert_eq!(
            read(root.path().join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            read(root.path().join("shipgate/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 1);
    }

    #[test]
    fn v1_is_chosen_when_v2_lacks_controllers_and_writes_one_folder_per_controller() {
        let root = fake_v1(&["memory", "cpu", "pids", "blkio"]);
        let h = Hierarchy::detect_at(root.path()).unwrap();
        assert_eq!(h, Hierarchy::V1(root.path().to_path_buf()));
        let cg = h.create("web-staging-3-1", &LIMITS).unwrap();
        let dir = |c: &str| root.path().join(c).join("shipgate/web-staging-3-1");
        assert_eq!(
            read(dir("memory").join("memory.limit_in_bytes")),
            "536870912"
        );
        assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "150000");
        assert_eq!(read(dir("cpu").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(dir("pids").join("pids.max")), "512");
        assert_eq!(cg.procs_files().len(), 3);
        fs::write(
            dir("memory").join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn unset_limits_are_written_as_none_so_a_reused_cgroup_loses_old_ones() {
        let root = fake_v2("memory cpu pids");
        let h = Hierarchy::detect_at(root.path()).unwrap();
        h.create("a", &LIMITS).unwrap();
        h.create("a", &Limits::default()).unwrap();
        let dir = root.path().join("shipgate/a");
        assert_eq!(read(dir.join("memory.max")), "max");
        assert_eq!(read(dir.join("cpu.max")), "max 100000");
        assert_eq!(read(dir.join("pids.max")), "max");
    }

    #[test]
    fn no_hierarchy_names_what_is_missing() {
        let root = fake_v1(&["memory", "cpu"]);
        let why = Hierarchy::detect_at(root.path()).unwrap_err();
        assert!(why.contains("v1 lacks pids"), "{why}");
    }

    #[test]
    fn sizes_are_written_as_in_the_config() {
        assert_eq!(bytes_text(512 * 1024 * 1024), "512MiB");
        assert_eq!(bytes_text(2 << 30), "2GiB");
        assert_eq!(bytes_text(1500), "1500B");
    }

    #[test]
    fn a_tiny_cpu_share_is_raised_to_what_the_kernel_accepts() {
        assert_eq!(quota_us(0.001), 1_000);
        assert_eq!(quota_us(2.0), 200_000);
    }
}
