//! The network fence of an environment's processes: nftables rules keyed on the socket owner
//! (`meta skuid`), the environment's own Unix user. A process of the environment may open a
//! connection to this machine only on the ports its environment is given (its router, its
//! dependency proxies, shipgate's API for OFREP, `network.allow`, its own instances); to other
//! machines unless its egress is closed; and never to the agents' control port. Instances are
//! reached from other machines through their router only.
//!
//! Why nftables on the user, not a network namespace per environment: apps keep listening on
//! `127.0.0.1:${PORT}` and calling `127.0.0.1` for OFREP and their dependencies unchanged, the
//! router keeps connecting to them directly (no extra hop, nothing to forward), and the rules
//! hold for every process the user runs, whoever started it.
//!
//! Every server or agent on a machine shares one table (`inet shipgate`); each adds and removes
//! only its own elements, marked with its pid, so several of them never undo each other's
//! rules, and what a killed one left is removed by the next that fences anything. Only new TCP
//! connections (a SYN) and datagrams are judged: established traffic and replies pass untouched.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::sandbox::Account;

/// The table every fence lives in.
const TABLE: &str = "inet shipgate";

/// What an environment's processes may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// Ports on this machine they may connect to (besides their own instances').
    pub local_ports: BTreeSet<u16>,
    /// Whether they may reach other machines.
    pub egress: bool,
    /// Ports they may never connect to, on any machine (the agents' control port).
    #[serde(default)]
    pub denied_ports: BTreeSet<u16>,
}

/// Why `nft` is unavailable, if it is.
pub fn unavailable() -> Option<String> {
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(_) => Some("`nft` is not installed (Debian: apt-get install nftables)".into()),
    }
}

/// Puts `account`'s fence in place as `reach` says, adding `own_ports` (its instances' ports)
/// to what it may reach and marking them as instances' (reached from other machines only
/// through their router). Idempotent: asked again, it changes only what differs.
pub fn fence(account: Account, reach: &Reach, own_ports: &[u16]) -> Result<(), String> {
    let uid = account.uid;
    let mut script = skeleton();
    script.push_str(&format!(
        "add set {TABLE} reach_{uid} {{ type inet_service; }}\n\
         add chain {TABLE} env_{uid}\n\
         flush chain {TABLE} env_{uid}\n"
    ));
    for port in &reach.denied_ports {
        script.push_str(&format!(
            "add rule {TABLE} env_{uid} meta l4proto tcp tcp dport {port} reject with tcp reset\n"
        ));
    }
    script.push_str(&format!(
        "add rule {TABLE} env_{uid} fib daddr type local meta l4proto tcp tcp dport @reach_{uid} accept\n\
         add rule {TABLE} env_{uid} fib daddr type local meta l4proto udp udp dport 53 accept\n\
         add rule {TABLE} env_{uid} fib daddr type local meta l4proto tcp reject with tcp reset\n\
         add rule {TABLE} env_{uid} fib daddr type local reject\n"
    ));
    if !reach.egress {
        script.push_str(&format!(
            "add rule {TABLE} env_{uid} meta l4proto tcp reject with tcp reset\n\
             add rule {TABLE} env_{uid} reject\n"
        ));
    }
    let ports: BTreeSet<u16> = reach.local_ports.iter().chain(own_ports).copied().collect();
    if !ports.is_empty() {
        script.push_str(&format!(
            "add element {TABLE} reach_{uid} {{ {} }}\n",
            owned(&ports)
        ));
    }
    if !own_ports.is_empty() {
        script.push_str(&format!(
            "add element {TABLE} instances {{ {} }}\n",
            owned(&own_ports.iter().copied().collect())
        ));
    }
    script.push_str(&format!(
        "add element {TABLE} users {{ {uid} : jump env_{uid} }}\n"
    ));
    run(&script)
}

/// Forgets an instance's port: no longer an instance's, nor reachable by `account`.
pub fn forget_instance(account: Option<Account>, port: u16) {
    let mut script = format!("delete element {TABLE} instances {{ {port} }}\n");
    if let Some(a) = account {
        script.push_str(&format!(
            "delete element {TABLE} reach_{} {{ {port} }}\n",
            a.uid
        ));
    }
    // Each on its own: one that is already gone must not keep the other.
    for line in script.lines() {
        if let Err(e) = run(line) {
            tracing::debug!("{e}");
        }
    }
}

/// Forgets an account's fence (its user was removed): its chain and the set of what it reached.
pub fn forget_account(uid: u32) {
    let script = format!(
        "delete element {TABLE} users {{ {uid} }}\n\
         delete chain {TABLE} env_{uid}\n\
         delete set {TABLE} reach_{uid}\n"
    );
    for line in script.lines() {
        if let Err(e) = run(line) {
            tracing::debug!("{e}");
        }
    }
}

/// The table, its sets and its two hooks, made once; `add` leaves what exists alone.
fn skeleton() -> String {
    format!(
        "add table {TABLE}\n\
         add map {TABLE} users {{ type uid : verdict; }}\n\
         add set {TABLE} instances {{ type inet_service; }}\n\
         add chain {TABLE} output {{ type filter hook output priority 0; policy accept; }}\n\
         add chain {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n"
    )
}

/// The rules of the two hooks, written once: the first process to fence anything writes them
/// (under a lock, so two never write them twice).
fn hooks() -> String {
    format!(
        "add rule {TABLE} output meta l4proto tcp tcp flags & (syn | ack) != syn accept\n\
         add rule {TABLE} output meta skuid vmap @users\n\
         add rule {TABLE} input iifname != \"lo\" meta l4proto tcp tcp dport @instances drop\n"
    )
}

/// The elements for `ports`, each marked as this process's.
fn owned(ports: &BTreeSet<u16>) -> String {
    let me = std::process::id();
    ports
        .iter()
        .map(|p| format!("{p} comment \"{OWNER}{me}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How an element names the process that added it.
const OWNER: &str = "pid ";

/// The `delete element` lines for the elements of the table whose process is gone.
fn orphans(listing: &str) -> String {
    let mut script = String::new();
    let Ok(json) = serde_json::from_str::<serde_json::Value>(listing) else {
        return script;
    };
    let sets = json["nftables"].as_array().into_iter().flatten();
    for set in sets.filter_map(|item| item.get("set")) {
        let Some(name) = set["name"].as_str() else {
            continue;
        };
        for elem in set["elem"].as_array().into_iter().flatten() {
            let (Some(port), Some(pid)) = (
                elem["elem"]["val"].as_u64(),
                elem["elem"]["comment"]
                    .as_str()
                    .and_then(|c| c.strip_prefix(OWNER))
                    .and_then(|p| p.parse::<u32>().ok()),
            ) else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                script.push_str(&format!("delete element {TABLE} {name} {{ {port} }}\n"));
            }
        }
    }
    script
}

/// Runs `script` with `nft -f -` as one transaction, writing the hooks' rules first if the
/// table has none yet.
fn run(script: &str) -> Result<(), String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("shipgate-nft.lock"))
        .map_err(|e| format!("could not open the nftables lock: {e}"))?;
    lock.lock()
        .map_err(|e| format!("could not take the nftables lock: {e}"))?;
    // One listing tells both whether the hooks' rules are there and what gone processes left.
    let listing = Command::new("nft")
        .args(["-j", "list", "table", "inet", "shipgate"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut full = String::new();
    if listing.contains("\"vmap\"") {
        full.push_str(&orphans(&listing));
    } else {
        full.push_str(&skeleton());
        full.push_str(&hooks());
    }
    full.push_str(script);
    let result = nft(&full);
    drop(lock);
    result
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("could not give nft its rules: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft did not finish: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the network fence: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_gone_process_added_is_removed_and_nothing_else() {
        let me = std::process::id();
        let listing = format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}},
              {{"set": {{"name": "reach_990", "elem": [
                 {{"elem": {{"val": 8101, "comment": "pid {me}"}}}},
                 {{"elem": {{"val": 8102, "comment": "pid 4294967294"}}}},
                 8103]}}}}]}}"#
        );
        assert_eq!(
            orphans(&listing),
            "delete element inet shipgate reach_990 { 8102 }\n"
        );
    }

    #[test]
    fn the_hooks_judge_only_new_connections_and_keep_instances_behind_their_router() {
        let hooks = hooks();
        assert!(
            hooks.contains("tcp flags & (syn | ack) != syn accept"),
            "{hooks}"
        );
        assert!(hooks.contains("meta skuid vmap @users"), "{hooks}");
        assert!(
            hooks.contains("iifname != \"lo\" meta l4proto tcp tcp dport @instances drop"),
            "{hooks}"
        );
    }
}
