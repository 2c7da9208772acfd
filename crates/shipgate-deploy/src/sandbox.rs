//! The sandbox an instance runs in: bubblewrap gives it mount, pid, IPC and UTS namespaces of its
//! own in which only the system (read-only), its release directory (read-only), a private `/tmp`
//! and its one data directory exist; `setpriv` then drops to the environment's own Unix user with
//! no capabilities and `no_new_privs`, so nothing in it can gain root again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Limits;

/// How one instance is confined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    /// The environment's own Unix user (`sg-production`); made if missing.
    pub user: String,
    /// The instance's one writable directory, kept across releases (`${DATA_DIR}`); made and
    /// given to `user` if missing.
    pub data_dir: PathBuf,
    /// Its resource limits.
    pub limits: Limits,
    /// What its processes may reach on the network; None: the network is not fenced.
    #[serde(default)]
    pub network: Option<crate::network::Reach>,
    /// Whether its environment was made on demand: its user goes when the environment does.
    #[serde(default)]
    pub on_demand: bool,
}

/// The only variables a sandboxed process starts with, before its environment's own: nothing
/// of the server's environment (its tokens, its secrets) reaches it.
pub const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
];

/// The system folders an instance sees, read-only, where they exist.
const SYSTEM: [&str; 8] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt",
];

/// A Unix account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Its own group's id.
    pub gid: u32,
}

/// The comment of the users of environments made on demand (`sg-pr-123`): they go with them.
const ON_DEMAND: &str = "shipgate on-demand environment";

/// The account of `sandbox`'s environment, made (a system user with its own group, no home, no
/// login shell) if it does not exist yet.
pub fn ensure_user(sandbox: &Sandbox) -> Result<Account, String> {
    let name = sandbox.user.as_str();
    if let Some(account) = lookup(name)? {
        return Ok(account);
    }
    let comment = if sandbox.on_demand {
        ON_DEMAND
    } else {
        "shipgate environment"
    };
    let made = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            comment,
            name,
        ])
        .output()
        .map_err(|e| format!("could not run useradd to make the user {name}: {e}"))?;
    // Another server making the same user at the same moment is not a failure.
    if !made.status.success() && lookup(name)?.is_none() {
        return Err(format!(
            "useradd could not make the user {name}: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    lookup(name)?.ok_or_else(|| format!("the user {name} was made but cannot be found"))
}

/// Removes the users made for on-demand environments (and their network fences) but those in
/// `keep`, unless a process still runs as one; says which it removed. Nothing without root.
pub fn remove_gone_users(keep: &[String]) -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut removed = Vec::new();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, _, comment, ..] = fields[..] else {
            continue;
        };
        let Ok(uid) = uid.parse::<u32>() else {
            continue;
        };
        if comment != ON_DEMAND || keep.iter().any(|k| k == name) || runs_as(uid) {
            continue;
        }
        match std::process::Command::new("userdel").arg(name).output() {
            Ok(out) if out.status.success() => {
                crate::network::forget_account(uid);
                removed.push(name.to_owned());
            }
            Ok(out) => tracing::warn!(
                "could not remove the user {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => tracing::warn!("could not run userdel for {name}: {e}"),
        }
    }
    removed
}

/// Whether a process runs as `uid`.
fn runs_as(uid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read_to_string(p.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .is_some_and(|real| real == uid.to_string())
        })
    })
}

fn lookup(name: &str) -> Result<Option<Account>, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Some(Account {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("could not look up the user {name}: {e}")),
    }
}

/// Makes the data directory if missing and gives it to `account`, mode 0700.
pub fn prepare_data_dir(dir: &Path, account: Account) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("could not make the data directory {}: {e}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(account.uid), Some(account.gid)).map_err(|e| {
        format!(
            "could not give {} to uid {}: {e}",
            dir.display(),
            account.uid
        )
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("could not make {} private: {e}", dir.display()))
}

/// The command line that runs `sh -c command` in the sandbox, as `account`, in `release_dir`.
pub fn command_line(
    release_dir: &Path,
    data_dir: &Path,
    account: Account,
    command: &str,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&std::ffi::OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
    for dir in SYSTEM {
        // A symlink (`/bin` -> `usr/bin` on merged-/usr systems) is bound as a symlink.
        match std::fs::read_link(dir) {
            Ok(target) => push(&["--symlink".as_ref(), target.as_os_str(), dir.as_ref()]),
            Err(_) if Path::new(dir).is_dir() => {
                push(&["--ro-bind".as_ref(), dir.as_ref(), dir.as_ref()]);
            }
            Err(_) => {}
        }
    }
    push(&[
        "--proc".as_ref(),
        "/proc".as_ref(),
        "--dev".as_ref(),
        "/dev".as_ref(),
        // Its own /tmp, writable by anyone in it as /tmp always is.
        "--perms".as_ref(),
        "1777".as_ref(),
        "--tmpfs".as_ref(),
        "/tmp".as_ref(),
    ]);
    // bwrap makes the folders above a bind mount 0700: make them 0755 first, so the user can
    // reach its release and data dir.
    let mut ancestors: Vec<&Path> = release_dir
        .ancestors()
        .skip(1)
        .chain(data_dir.ancestors().skip(1))
        .filter(|a| a.parent().is_some() && *a != Path::new("/tmp"))
        .collect();
    ancestors.sort_by_key(|a| (a.components().count(), *a));
    ancestors.dedup();
    for dir in ancestors {
        push(&[
            "--perms".as_ref(),
            "0755".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
        ]);
    }
    push(&[
        "--ro-bind".as_ref(),
        release_dir.as_os_str(),
        release_dir.as_os_str(),
        "--bind".as_ref(),
        data_dir.as_os_str(),
        data_dir.as_os_str(),
        "--chdir".as_ref(),
        release_dir.as_os_str(),
        "--unshare-pid".as_ref(),
        "--unshare-ipc".as_ref(),
        "--unshare-uts".as_ref(),
        "--unshare-cgroup-try".as_ref(),
        "--hostname".as_ref(),
        "sandbox".as_ref(),
        // No --die-with-parent: an instance outlives the server that started it (a restarted
        // server finds it by its SHIPGATE_INSTANCE marker). Killing bwrap's process group, or
        // its pid-1 child, ends the whole sandbox.
        "--".as_ref(),
        "setpriv".as_ref(),
    ]);
    let uid = account.uid.to_string();
    let gid = account.gid.to_string();
    push(&[
        "--reuid".as_ref(),
        uid.as_ref(),
        "--regid".as_ref(),
        gid.as_ref(),
        "--clear-groups".as_ref(),
        "--inh-caps=-all".as_ref(),
        "--bounding-set=-all".as_ref(),
        "--no-new-privs".as_ref(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        command.as_ref(),
    ]);
    args
}

/// The command line (`bwrap …`) that runs `sh -c command` in `sandbox` from `release_dir`,
/// after making its user and data directory and putting its network fence in place; start it
/// with a cleared environment ([`BASE_ENV`] and the environment's own variables). Its limits are left out: they need a cgroup, which
/// only the driver's instances get; a verification test or a fact runs under the test timeout.
pub fn wrapped(
    release_dir: &Path,
    sandbox: &Sandbox,
    command: &str,
) -> Result<Vec<OsString>, String> {
    let account = ensure_user(sandbox)?;
    prepare_data_dir(&sandbox.data_dir, account)?;
    if let Some(reach) = &sandbox.network {
        crate::network::fence(account, reach, &[])?;
    }
    let mut args = vec![OsString::from("bwrap")];
    args.extend(command_line(
        release_dir,
        &sandbox.data_dir,
        account,
        command,
    ));
    Ok(args)
}

/// Why this process cannot sandbox instances, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "the server does not run as root, so it can neither switch instances to their \
             environment's user nor give them namespaces and cgroups of their own"
                .into(),
        );
    }
    for tool in ["bwrap", "setpriv", "useradd"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (Debian: apt-get install {})",
                match tool {
                    "bwrap" => "bubblewrap",
                    "setpriv" => "util-linux",
                    _ => "passwd",
                }
            ));
        }
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_binds_only_the_system_the_release_and_the_data_dir() {
        let args = command_line(
            Path::new("/var/lib/shipgate/releases/abc"),
            Path::new("/var/lib/shipgate/data/web-staging"),
            Account { uid: 990, gid: 991 },
            "exec python3 app.py",
        );
        let text: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = text.join(" ");
        assert!(
            joined.contains(
                "--ro-bind /var/lib/shipgate/releases/abc /var/lib/shipgate/releases/abc"
            ),
            "{joined}"
        );
        assert!(
            joined.contains(
                "--bind /var/lib/shipgate/data/web-staging /var/lib/shipgate/data/web-staging"
            ),
            "{joined}"
        );
        assert!(joined.contains("--unshare-pid"), "{joined}");
        assert!(
            joined.contains(
                "--perms 0755 --dir /var --perms 0755 --dir /var/lib --perms 0755 --dir \
                 /var/lib/shipgate --perms 0755 --dir /var/lib/shipgate/data --perms 0755 --dir \
                 /var/lib/shipgate/releases --ro-bind"
            ),
            "{joined}"
        );
        assert!(
            joined.ends_with(
                "setpriv --reuid 990 --regid 991 --clear-groups --inh-caps=-all \
                 --bounding-set=-all --no-new-privs -- sh -c exec python3 app.py"
            ),
            "{joined}"
        );
        // Nothing writable but the data dir, and never the whole file system.
        let binds = text.iter().filter(|a| *a == "--bind").count();
        assert_eq!(binds, 1, "{joined}");
        assert!(!joined.contains("--ro-bind / /"), "{joined}");
        assert!(!joined.contains("--bind / "), "{joined}");
    }
}
