//! `shipgate host install NAME --ssh USER@ADDR`: puts an agent on a machine with OpenSSH's own
//! `ssh` and `scp` (no SSH library of ours): adds the host, copies this binary, writes a start
//! script that needs no service manager, joins and starts the agent, and waits until it has
//! connected.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use shipgate_api::status::HostView;

use crate::cli::Global;
use crate::client::connect;
use crate::output::Printer;

/// How long the installed agent may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(60);

/// How to reach the machine.
pub(super) struct Ssh {
    /// USER@ADDRESS.
    pub target: String,
    /// `-i FILE`.
    pub identity: Option<PathBuf>,
    /// The SSH port.
    pub port: u16,
    /// More `-o` options.
    pub options: Vec<String>,
}

impl Ssh {
    /// The options `ssh` and `scp` share: no password prompts (a script runs this), a new host
    /// key accepted and remembered, a known one checked.
    fn common(&self) -> Vec<String> {
        let mut args = vec![
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            "StrictHostKeyChecking=accept-new".to_owned(),
            "-o".to_owned(),
            "ConnectTimeout=10".to_owned(),
        ];
        for o in &self.options {
            args.push("-o".to_owned());
            args.push(o.clone());
        }
        if let Some(i) = &self.identity {
            args.push("-i".to_owned());
            args.push(i.display().to_string());
        }
        args
    }

    /// Runs `script` with `sh -s` on the machine (fed on stdin, so nothing of it is quoted
    /// twice); returns its output, or its error output when it fails.
    fn run(&self, what: &str, script: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = std::process::Command::new("ssh")
            .args(self.common())
            .args(["-p", &self.port.to_string(), &self.target, "sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh (install OpenSSH's client)")?;
        child
            .stdin
            .take()
            .context("ssh's input")?
            .write_all(script.as_bytes())
            .context("sending the script to ssh")?;
        let out = child.wait_with_output().context("waiting for ssh")?;
        if !out.status.success() {
            bail!(
                "{what} on {} failed ({}): {}",
                self.target,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn copy(&self, from: &std::path::Path, to: &str) -> anyhow::Result<()> {
        let out = std::process::Command::new("scp")
            .args(self.common())
            .args(["-q", "-P", &self.port.to_string()])
            .arg(from)
            .arg(format!("{}:{to}", self.target))
            .output()
            .context("running scp (install OpenSSH's client)")?;
        if !out.status.success() {
            bail!(
                "copying {} to {}:{to} failed: {}",
                from.display(),
                self.target,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Quotes `s` for `sh`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) async fn install(
    g: &Global,
    out: Printer,
    name: &str,
    ssh: &Ssh,
    dir: &str,
) -> anyhow::Result<ExitCode> {
    let client = connect(g)?;
    // Reached first, so a machine that cannot be logged into adds no host.
    let arch = ssh.run("checking the machine", "uname -sm")?;
    if !arch.trim().starts_with("Linux") || !arch.contains(std::env::consts::ARCH) {
        bail!(
            "{} runs `{}`; this shipgate binary is for Linux {}",
            ssh.target,
            arch.trim(),
            std::env::consts::ARCH
        );
    }
    let exe = std::env::current_exe().context("locating this shipgate binary")?;
    let created = super::audit::added_host(&client, name).await?;
    let d = quoted(dir);
    ssh.run(
        "making the folder",
        &format!("set -e; umask 077; mkdir -p {d}/bin {d}/data"),
    )?;
    let upload = format!("{dir}/bin/shipgate.new");
    ssh.copy(&exe, &upload)?;
    let server = client.base().to_owned();
    let start = format!(
        "#!/bin/sh\n\
         # Starts the shipgate agent of host {name} (written by `shipgate host install`).\n\
         # It dials {server} with the certificate kept in {dir}/data; run it again after a reboot.\n\
         cd {d} || exit 1\n\
         setsid {d}/bin/shipgate agent --data-dir {d}/data \"$@\" >> {d}/agent.log 2>&1 < /dev/null &\n\
         echo $!\n"
    );
    // The one-time token goes to the first start on the command line only, never to a file.
    let script = format!(
        "set -e\n\
         mv -f {up} {d}/bin/shipgate\n\
         chmod 0755 {d}/bin/shipgate\n\
         cat > {d}/start.sh <<'SHIPGATE_START'\n{start}SHIPGATE_START\n\
         chmod 0700 {d}/start.sh\n\
         if [ -f {d}/data/agent.pid ]; then\n\
           old=\"$(cat {d}/data/agent.pid)\"\n\
           if kill \"$old\" 2>/dev/null; then\n\
             for _ in $(seq 120); do kill -0 \"$old\" 2>/dev/null || break; sleep 0.5; done\n\
           fi\n\
         fi\n\
         {d}/start.sh --server {server} --join {token} --name {name} --ca-fingerprint {ca}\n",
        up = quoted(&upload),
        server = quoted(&server),
        token = quoted(&created.token),
        ca = quoted(&created.ca_fingerprint),
        name = quoted(name),
    );
    let pid = ssh.run("starting the agent", &script)?;
    let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
    loop {
        let hosts: Vec<HostView> = client.get("/hosts", &[]).await?;
        if let Some(h) = hosts.iter().find(|h| h.name == name && h.connected) {
            out.print(h, |h| {
                format!(
                    "host {name} installed on {} and connected (agent pid {}, version {}); restart it there with {dir}/start.sh\n",
                    ssh.target,
                    h.pid.map_or_else(|| pid.trim().to_owned(), |p| p.to_string()),
                    h.version.as_deref().unwrap_or("?")
                )
            });
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            let log = ssh
                .run(
                    "reading the agent's log",
                    &format!("tail -n 20 {d}/agent.log"),
                )
                .unwrap_or_default();
            bail!(
                "the agent on {} did not connect within {CONNECT_WITHIN:?} (is {server} reachable from it?); its log ends:\n{log}",
                ssh.target
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
