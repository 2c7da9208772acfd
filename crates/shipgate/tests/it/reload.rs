//! Reloading the config with the server running: `shipgate reload`, SIGHUP, and the file saved.
//! The new file is validated first; a valid one is applied by the server starting again on it
//! (the same process) while the agent keeps serving: no request fails, no instance restarts.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::helpers::{
    env_status, four_envs, four_envs_with, free_port, load, spawn_server, text, wait_for,
};

/// Whether `status` lists `env`, asked with the server and token given (the config file may
/// be invalid on purpose).
fn has_env(s: &crate::helpers::TestServer, env: &str) -> bool {
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let api = s.api();
    let out = s.cli(&[
        "--server",
        &api,
        "--token",
        admin.trim(),
        "status",
        "web",
        "--output",
        "json",
    ]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v[0]["environments"].as_array().cloned())
        .is_some_and(|envs| envs.iter().any(|e| e["env"] == env))
}

#[test]
fn reload_applies_a_new_environment_and_vars_under_load_and_refuses_an_invalid_file() {
    let mut s = spawn_server(&four_envs("watch_config = false"));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    let before = env_status(&s.json(&["status", "web"]), "development");
    let server_pid = s.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(
        format!("{}/version", s.url("development")),
        Arc::clone(&stop),
    );

    // A new environment, and a changed variable of a live one.
    let qa = free_port();
    let text_now = s.config_text().to_owned();
    let changed =
        text_now.replacen(
            "[environments.development]\n",
            "[environments.development]\nvars = { GREETING = \"hello\" }\n",
            1,
        ) + &format!("\n[environments.qa]\nafter = \"development\"\nlisten = \"127.0.0.1:{qa}\"\n");
    // The API is asked all along; a client of it waits through a reload, never told 503.
    let api_load = {
        let (url, token, stop) = (
            format!("{}/api/v1/status", s.api()),
            s.admin_token(),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let (mut answered, mut refused, mut unavailable) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match crate::helpers::http_get(&url, Some(&token)) {
                    Some(r) if r.status == 503 => unavailable += 1,
                    Some(_) => answered += 1,
                    None => refused += 1,
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (answered, refused, unavailable)
        })
    };
    s.rewrite_config(&changed);
    let said = s.ok(&["reload"]);
    // Right after it, the CLI reaches the server (it waits through the restart).
    s.ok(&["status"]);
    assert!(said.contains("environment qa is new"), "{said}");
    assert!(
        said.contains(
            "environments.development.vars.GREETING is set; it takes effect at the environment's next deploy"
        ),
        "{said}"
    );
    wait_for("the reloaded server to know qa", || {
        crate::helpers::http_get(&format!("{}/healthz", s.api()), None)
            .is_some_and(|r| r.status == 200 && r.body.starts_with("ok\n"))
            && has_env(&s, "qa")
    });
    assert_eq!(s.pid(), server_pid, "the same process, started again");
    // qa's router is bound: it answers (nothing is live there yet).
    assert!(crate::helpers::http_get(&format!("http://127.0.0.1:{qa}/"), None).is_some());

    // An invalid file changes nothing, and says why.
    s.rewrite_config(&(changed.clone() + "\n[environments.qa2]\nlisten = \"nowhere\"\n"));
    let refused = s.cli(&["reload"]);
    assert_ne!(refused.status.code(), Some(0));
    let why = text(&refused);
    assert!(
        why.contains("is invalid") && why.contains("nowhere"),
        "{why}"
    );
    // Asked with the server and token given, the server validates it and keeps what runs.
    let admin = std::fs::read_to_string(s.data_dir().join("admin.token")).unwrap();
    let api = s.api();
    let refused = s.cli(&["--server", &api, "--token", admin.trim(), "reload"]);
    assert_ne!(refused.status.code(), Some(0));
    let why = text(&refused);
    assert!(
        why.contains("the running config stays") && why.contains("nowhere"),
        "{why}"
    );
    assert!(has_env(&s, "qa") && !has_env(&s, "qa2"));

    // SIGHUP does the same as `shipgate reload`: qa goes.
    s.rewrite_config(&text_now);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server_pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("qa to be gone after SIGHUP", || {
        crate::helpers::http_get(&format!("{}/healthz", s.api()), None).is_some()
            && !has_env(&s, "qa")
    });

    std::thread::sleep(std::time::Duration::from_millis(300));
    crate::helpers::load_ended_without_failures(
        &stop,
        traffic,
        "reload: through two reloads and a refused one",
    );
    let (answered, refused, unavailable) = api_load.join().unwrap();
    eprintln!(
        "reload: the API answered {answered} requests through two reloads, refused {refused} connections (the restart's gap), answered 503 {unavailable} times"
    );
    assert_eq!(
        unavailable, 0,
        "a starting server holds requests, never 503"
    );
    let after = env_status(&s.json(&["status", "web"]), "development");
    assert_eq!(
        after["instance"]["pid"], before["instance"]["pid"],
        "no instance restarted: {after}"
    );
    assert!(
        s.log().contains("reload: environment qa is new"),
        "{}",
        s.log()
    );
}

#[test]
fn a_saved_config_file_is_taken_up_by_itself() {
    let mut s = spawn_server(&four_envs(""));
    let uat = free_port();
    let changed = s.config_text().to_owned()
        + &format!("\n[environments.uat]\nafter = \"staging\"\nlisten = \"127.0.0.1:{uat}\"\n");
    s.rewrite_config(&changed);
    wait_for("the saved file to be taken up", || {
        crate::helpers::http_get(&format!("{}/healthz", s.api()), None).is_some()
            && has_env(&s, "uat")
    });
    // An invalid save is said in the log, and changes nothing.
    s.rewrite_config(&(changed + "\n[server.nonsense]\n"));
    wait_for("the invalid file to be reported", || {
        s.log()
            .contains("changed but is invalid; the running config stays")
    });
    assert!(has_env(&s, "uat"));
}

/// Reloads `s` and waits until the new start answers; what the reload said.
fn reloaded(s: &mut crate::helpers::TestServer, config: &str) -> String {
    s.rewrite_config(config);
    let said = s.ok(&["reload"]);
    wait_for("the reloaded server to answer", || {
        crate::helpers::http_get(&format!("{}/healthz", s.api()), None)
            .is_some_and(|r| r.status == 200 && r.body.starts_with("ok\n"))
            && s.cli(&["status"]).status.success()
    });
    said
}

#[test]
fn a_reload_applies_chaos_rules_templates_notify_and_alerts() {
    let mut s = spawn_server(&four_envs_with(
        "watch_config = false",
        &[("staging", "chaos.allow = true")],
    ));
    s.register("1.0.0", &[]);
    s.ok(&["promote", "web@1.0.0", "--to", "development", "--wait"]);
    let fault = crate::chaos::ABORT_STAGING;
    s.ok(fault);
    s.ok(&["chaos", "clear", "1"]);

    // Turning chaos off is applied: faults are refused at once.
    let text_now = s.config_text().to_owned();
    let off = text_now.replace("chaos.allow = true", "chaos.allow = false");
    let said = reloaded(&mut s, &off);
    assert!(
        said.contains("environments.staging.chaos.allow changed: true → false"),
        "{said}"
    );
    let refused = s.refused(fault);
    assert!(refused.contains("set `chaos.allow = true`"), "{refused}");

    // New templates, notify targets and alerts are named and applied.
    let (first, sink) = (free_port(), free_port());
    let more = format!(
        "{off}\n[templates.preview]\nfrom = \"staging\"\nlisten_range = \"127.0.0.1:{first}-{}\"\nmax = 2\n\n[notify.ops]\nurl = \"http://127.0.0.1:{sink}/hook\"\nevents = [\"promotion.*\"]\n\n[alerts.quiet]\nenv = \"development\"\nwhen = \"rps < 1000\"\n",
        first + 3
    );
    let refused = s.refused(&["env", "create", "pr-1", "--template", "preview"]);
    assert!(refused.contains("preview"), "{refused}");
    let said = reloaded(&mut s, &more);
    for named in [
        "templates.preview is new",
        "notify.ops is new",
        "alerts.quiet is new",
    ] {
        assert!(said.contains(named), "{named}: {said}");
    }
    s.ok(&["env", "create", "pr-1", "--template", "preview"]);
    assert_eq!(s.json(&["notify", "list"])["targets"][0]["name"], "ops");
    wait_for("the new alert to fire", || {
        s.ok(&["status"]).contains("alerts firing")
    });

    // Nothing changed: said so, and nothing restarts.
    let pid = s.pid();
    s.rewrite_config(&more);
    let same = s.ok(&["reload"]);
    assert!(same.contains("nothing to reload"), "{same}");
    assert_eq!(s.pid(), pid);
}

/// The variables of the live instance of web in `env`, as its process has them.
fn running_vars(s: &crate::helpers::TestServer, env: &str) -> String {
    let pid = env_status(&s.json(&["status", "web"]), env)["instance"]["pid"]
        .as_u64()
        .unwrap();
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned()
}

#[test]
fn a_changed_variable_is_a_change_not_deployed_and_redeploy_takes_it_live() {
    let mut s = spawn_server(&four_envs("watch_config = false\ndrift_scan = \"1s\""));
    s.register("1.0.0", &[]);
    s.deploy("1.0.0", "development");
    let changed = s.config_text().replacen(
        "[environments.development]\n",
        "[environments.development]\nvars = { GREETING = \"hello\" }\n",
        1,
    );
    reloaded(&mut s, &changed);
    wait_for("the scan to see the change", || {
        s.ok(&["status", "web"])
            .contains("config changed, not deployed (shipgate redeploy web --env development)")
    });
    let status = s.ok(&["status", "web"]);
    assert!(!status.contains("DRIFTED"), "{status}");
    // Not drift: `drift` passes, and heal says what to run instead.
    assert!(s.cli(&["drift"]).status.success());
    let heal = s.refused(&["drift", "web", "--env", "development", "--heal"]);
    assert!(
        heal.contains("shipgate redeploy web --env development"),
        "{heal}"
    );
    assert!(!running_vars(&s, "development").contains("GREETING=hello"));

    let said = s.ok(&["redeploy", "web", "--env", "development", "--wait"]);
    assert!(said.contains("web@1.0.0"), "{said}");
    assert!(running_vars(&s, "development").contains("GREETING=hello"));
    wait_for("the change to be live", || {
        !s.ok(&["status", "web"]).contains("config changed")
    });
    let nothing = s.refused(&["redeploy", "web", "--env", "staging"]);
    assert!(
        nothing.contains("nothing of web is live in staging"),
        "{nothing}"
    );
}
