//! The hotfix lane (issue 32): a release verified in the lane's `from` goes straight to
//! production, skipping what the lane names (here the soak), never the approvals; refused
//! without the role, without a reason, from outside `from`, and where no lane is.

use crate::helpers::{env_status, four_envs_with, spawn_server, wait_for};

#[test]
fn a_hotfix_skips_the_soak_but_never_the_approvals_and_each_refusal_says_what_to_do() {
    let s = spawn_server(&four_envs_with(
        "",
        &[(
            "production",
            "require.soak = \"1h\"\nrequire.approvals = 1\n\
             [environments.production.hotfix]\nfrom = \"development\"\nskip = [\"require.soak\"]\nrole = \"admin\"",
        )],
    ));
    s.register("1.0.0", &[]);
    s.deploy("1.0.0", "development");
    let hotfix = |who: Option<&str>, release: &str, env: &str| {
        let args = [
            "promote",
            release,
            "--to",
            env,
            "--hotfix",
            "--reason",
            "INC-2291 checkout 500s",
        ];
        match who {
            Some(token) => s.refused_as(token, &args),
            None => s.refused(&args),
        }
    };

    // Refused: without a reason, without the role, not verified in `from`, and where no lane is.
    let no_reason = s.cli(&["promote", "web@1.0.0", "--to", "production", "--hotfix"]);
    assert_eq!(no_reason.status.code(), Some(2), "a usage error");
    let said = crate::helpers::text(&no_reason);
    assert!(said.contains("--reason"), "{said}");
    let deployer = s.token("dee", "deployer", &[]);
    let no_role = hotfix(Some(&deployer), "web@1.0.0", "production");
    assert!(
        no_role.contains("needs the role admin") && no_role.contains("deployer"),
        "{no_role}"
    );
    s.register("1.0.1", &[]);
    let unverified = hotfix(None, "web@1.0.1", "production");
    assert!(
        unverified.contains("not verified in development"),
        "{unverified}"
    );
    let no_lane = hotfix(None, "web@1.0.0", "staging");
    assert!(
        no_lane.contains("takes no hotfix") && no_lane.contains("[environments.staging.hotfix]"),
        "{no_lane}"
    );
    // Without --hotfix, production still wants staging first.
    let flow = s.refused(&["promote", "web@1.0.0", "--to", "production"]);
    assert!(flow.contains("not verified in staging"), "{flow}");

    // Allowed: it waits for the approval only (the soak is skipped), then goes live.
    let accepted = s.ok(&[
        "promote",
        "web@1.0.0",
        "--to",
        "production",
        "--hotfix",
        "--reason",
        "INC-2291 checkout 500s",
    ]);
    assert!(
        accepted.contains("web@1.0.0 → production (a hotfix)"),
        "{accepted}"
    );
    wait_for("the hotfix to wait for its approval", || {
        !s.waits("production").is_empty()
    });
    let waits = s.waits("production");
    assert!(
        waits.iter().all(|w| !w.contains("soak")) && waits.iter().any(|w| w.contains("approv")),
        "{waits:?}"
    );
    let approver = s.token("ann", "approver", &[]);
    s.ok_as(&approver, &["approve", "web@1.0.0", "--env", "production"]);
    wait_for("the hotfix to go live", || {
        s.version("production").as_deref() == Some("1.0.0")
    });
    let latest = s.latest("production");
    assert_eq!(latest["kind"], "hotfix", "{latest}");
    // Testing and staging were gone past: status says so, with the command; development, the
    // lane's `from`, verified it.
    let status = s.json(&["status", "web"]);
    for env in ["testing", "staging"] {
        assert_eq!(
            env_status(&status, env)["behind"]["command"],
            format!("shipgate promote web@1.0.0 --to {env}"),
            "{status}"
        );
    }
    assert!(env_status(&status, "development")["behind"].is_null());
    let table = s.ok(&["status", "web"]);
    assert!(
        table.contains(
            "web in staging is behind production (web@1.0.0 came there by hotfix): shipgate promote web@1.0.0 --to staging"
        ),
        "{table}"
    );
    // The board shows it: a hotfix badge on production, staging behind it.
    let cookie = crate::dashboard::sign_in(&s, s.admin_token().trim());
    let (code, _, board) =
        crate::dashboard::raw(&s, "GET", "/", &[("Cookie", cookie.as_str())], "");
    assert_eq!(code, 200);
    assert!(board.contains("⚡</span> hotfix"), "{board}");
    assert!(
        board.contains("behind production: shipgate promote web@1.0.0 --to staging"),
        "{board}"
    );
    // The normal promotions make the flow whole again.
    s.ok(&["promote", "web@1.0.0", "--to", "testing", "--wait"]);
    s.ok(&["promote", "web@1.0.0", "--to", "staging", "--wait"]);
    let status = s.json(&["status", "web"]);
    for env in ["testing", "staging"] {
        assert!(env_status(&status, env)["behind"].is_null(), "{status}");
    }
    let audit = s.ok(&["audit", "--env", "production"]);
    assert!(
        audit.contains("asked to hotfix web@1.0.0 in production: INC-2291 checkout 500s"),
        "{audit}"
    );
}
