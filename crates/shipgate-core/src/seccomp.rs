//! The seccomp filter of an image's process: podman's default profile (the containers format,
//! with `archMap`, `includes` and `excludes`) turned into the OCI runtime spec's
//! `linux.seccomp`, which runc takes as it is.
//!
//! The process shipgate starts holds no capabilities, so every rule a capability would unlock
//! (`includes.caps`) is left out, and every rule that only a capability would lift
//! (`excludes.caps`) stays. Reading the profile is the caller's job; this is a pure function of
//! its text and the architecture.

use serde::{Deserialize, Serialize};

/// Where Debian's containers-common package (which podman pulls in) puts podman's default
/// profile.
pub const PODMAN_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// The actions runc knows (`SCMP_ACT_*` of the OCI runtime spec).
const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

/// The comparisons an argument rule may make (`SCMP_CMP_*` of the OCI runtime spec).
const OPERATORS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// `linux.seccomp` for a process without capabilities on `arch` (`std::env::consts::ARCH`),
/// from a profile in the containers format (`PODMAN_PROFILE`, or Docker's, which is the same
/// format).
///
/// The architectures are `architectures` plus this one's `archMap` entry (it and its
/// sub-architectures); none means the native one only, as podman does. A rule's `minKernel`
/// is taken as met: no kernel version is read here, and the ones the podman and Docker
/// profiles name (4.8 at most) are older than any kernel shipgate supports. The error says
/// which rule is wrong and how.
pub fn oci_seccomp(profile_json: &str, arch: &str) -> Result<serde_json::Value, String> {
    let profile: Profile = serde_json::from_str(profile_json)
        .map_err(|e| format!("the seccomp profile is not a containers seccomp profile: {e}"))?;
    let (go_arch, seccomp_arch) = arch_names(arch).ok_or_else(|| {
        format!("no seccomp architecture is known for `{arch}`, so the profile cannot be applied")
    })?;
    check_action(&profile.default_action, "defaultAction")?;

    let mut architectures = profile.architectures.clone();
    for entry in profile
        .arch_map
        .iter()
        .filter(|m| m.architecture == seccomp_arch)
    {
        architectures.push(entry.architecture.clone());
        architectures.extend(entry.sub_architectures.iter().cloned());
    }
    let mut seen = std::collections::BTreeSet::new();
    architectures.retain(|a| seen.insert(a.clone()));

    let mut syscalls = Vec::new();
    for (i, rule) in profile.syscalls.iter().enumerate() {
        if !rule.applies(go_arch) {
            continue;
        }
        let names: Vec<String> = rule
            .names
            .iter()
            .cloned()
            .chain(rule.name.clone())
            .collect();
        let which = format!("syscalls[{i}] ({})", names.join(", "));
        if names.is_empty() {
            return Err(format!("seccomp profile: {which} names no syscall"));
        }
        check_action(&rule.action, &which)?;
        let args = rule.args.clone().unwrap_or_default();
        for arg in &args {
            if !OPERATORS.contains(&arg.op.as_str()) {
                return Err(format!(
                    "seccomp profile: {which} compares with `{}`, which is not one of {}",
                    arg.op,
                    OPERATORS.join(", ")
                ));
            }
            if arg.index > 5 {
                return Err(format!(
                    "seccomp profile: {which} tests argument {}, but a syscall has 6 (0 to 5)",
                    arg.index
                ));
            }
        }
        syscalls.push(OciRule {
            names,
            action: rule.action.clone(),
            errno_ret: rule.errno_ret,
            args,
        });
    }

    let oci = OciSeccomp {
        default_action: profile.default_action,
        default_errno_ret: profile.default_errno_ret,
        architectures,
        flags: profile.flags,
        syscalls,
    };
    serde_json::to_value(oci).map_err(|e| format!("writing linux.seccomp: {e}"))
}

fn check_action(action: &str, which: &str) -> Result<(), String> {
    if ACTIONS.contains(&action) {
        Ok(())
    } else {
        Err(format!(
            "seccomp profile: {which} has the action `{action}`, which is not one of {}",
            ACTIONS.join(", ")
        ))
    }
}

/// The architecture as the profile's `includes.arches` names it (Go's names) and as libseccomp
/// names it (`archMap`). For the architectures Debian builds in both byte orders, the
/// little-endian one, which is Debian's release port (ppc64el, mips64el).
fn arch_names(rust_arch: &str) -> Option<(&'static str, &'static str)> {
    Some(match rust_arch {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "x86" => ("386", "SCMP_ARCH_X86"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "arm" => ("arm", "SCMP_ARCH_ARM"),
        "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
        "mips64" => ("mips64le", "SCMP_ARCH_MIPSEL64"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "loongarch64" => ("loong64", "SCMP_ARCH_LOONGARCH64"),
        _ => return None,
    })
}

/// A profile in the containers format; fields runc has no use for (`comment`, `errno`) are
/// ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    /// The older, flat list of architectures, applied whatever the machine.
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchEntry>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

/// An architecture and the ones its processes may also use (x86 and x32 on x86_64).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchEntry {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

/// One rule of the profile, with the conditions under which it applies.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    /// The older spelling of a single-syscall rule.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Arg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// When a rule applies (`includes`: all of it must hold) or does not (`excludes`: any of it).
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

impl Rule {
    /// Whether the rule applies to a process without capabilities on `go_arch`, on a kernel at
    /// least as new as any `minKernel`.
    fn applies(&self, go_arch: &str) -> bool {
        let inc = &self.includes;
        let included = inc.caps.is_empty()
            && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == go_arch));
        let exc = &self.excludes;
        let excluded = exc.arches.iter().any(|a| a == go_arch) || exc.min_kernel.is_some();
        included && !excluded
    }
}

/// A condition on one argument of the syscall; the same in both formats.
#[derive(Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// `linux.seccomp` of the OCI runtime spec.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciSeccomp {
    default_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    architectures: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
    syscalls: Vec<OciRule>,
}

/// One rule of `linux.seccomp.syscalls`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciRule {
    names: Vec<String>,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<Arg>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// One rule of each kind the conversion must tell apart.
    const PROFILE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "defaultErrno": "ENOSYS",
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64",
             "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [],
             "comment": "", "includes": {}, "excludes": {}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"name": "arch_prctl", "action": "SCMP_ACT_ALLOW",
             "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
             "includes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "errno": "EPERM",
             "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
            {"names": ["sync_file_range"], "action": "SCMP_ACT_ALLOW",
             "excludes": {"arches": ["arm64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "args": null,
             "includes": {"minKernel": "4.8"}},
            {"names": ["old_ptrace"], "action": "SCMP_ACT_ERRNO",
             "excludes": {"minKernel": "4.8"}}
        ]
    }"#;

    #[test]
    fn keeps_what_applies_to_a_process_without_capabilities_on_x86_64() {
        assert_eq!(
            oci_seccomp(PROFILE, "x86_64").unwrap(),
            json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 38,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
                    {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                    {"names": ["sync_file_range"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW"}
                ]
            })
        );
    }

    #[test]
    fn another_architecture_drops_the_rules_of_x86_and_its_own_exclusions() {
        let spec = oci_seccomp(PROFILE, "aarch64").unwrap();
        assert_eq!(
            spec["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        let names: Vec<&str> = spec["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["names"][0].as_str().unwrap())
            .collect();
        assert_eq!(names, ["read", "personality", "chroot", "ptrace"]);
    }

    #[test]
    fn an_architecture_outside_the_arch_map_gets_the_native_one_only() {
        let spec = oci_seccomp(PROFILE, "riscv64").unwrap();
        assert!(spec.get("architectures").is_none(), "{spec}");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = oci_seccomp(PROFILE, "sparc64").unwrap_err();
        assert!(err.contains("`sparc64`"), "{err}");

        let err = oci_seccomp("[]", "x86_64").unwrap_err();
        assert!(err.contains("not a containers seccomp profile"), "{err}");

        let bad_action = r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_DENY"}]}"#;
        let err = oci_seccomp(bad_action, "x86_64").unwrap_err();
        assert!(err.contains("syscalls[0] (kill)"), "{err}");
        assert!(err.contains("`SCMP_ACT_DENY`"), "{err}");

        let bad_op = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"],
            "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}"#;
        let err = oci_seccomp(bad_op, "x86_64").unwrap_err();
        assert!(err.contains("compares with `EQ`"), "{err}");

        let nameless = r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#;
        let err = oci_seccomp(nameless, "x86_64").unwrap_err();
        assert!(err.contains("names no syscall"), "{err}");
    }

    /// podman's own profile, when this machine has it (apt-get install -y podman).
    #[test]
    fn converts_podmans_default_profile() {
        let Ok(text) = std::fs::read_to_string(PODMAN_PROFILE) else {
            eprintln!("SKIPPED: {PODMAN_PROFILE} is missing (apt-get install -y podman)");
            return;
        };
        let spec = oci_seccomp(&text, std::env::consts::ARCH).unwrap();
        assert_eq!(spec["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = spec["syscalls"].as_array().unwrap();
        let actions_of = |name: &str| -> Vec<&str> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .map(|r| r["action"].as_str().unwrap())
                .collect()
        };
        // Capability-gated: only the refusal is left.
        for name in ["bpf", "chroot", "init_module", "settimeofday"] {
            assert_eq!(actions_of(name), ["SCMP_ACT_ERRNO"], "{name}");
        }
        assert_eq!(actions_of("read"), ["SCMP_ACT_ALLOW"]);
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                spec["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
            assert_eq!(actions_of("arch_prctl"), ["SCMP_ACT_ALLOW"]);
        }
    }
}
