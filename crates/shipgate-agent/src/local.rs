//! The agent on the server's own machine: started by the server in its data dir (or found there
//! running), reached on `agent.sock`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{AGENT_SOCKET, Agent, AgentClient};

/// How long a freshly started agent may take to answer on its socket.
const AGENT_START: Duration = Duration::from_secs(15);
/// How long the instances of an agent that is asked to stop may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The agent's files in a data dir.
pub struct AgentFiles {
    /// The socket it serves on.
    pub socket: PathBuf,
    /// Its pid, while it runs.
    pub pid: PathBuf,
    /// Held (flock) while it runs: one agent per data dir.
    pub lock: PathBuf,
    /// What it logs, when the server started it.
    pub log: PathBuf,
    /// Where it hands out its routers' listening sockets ([`crate::handover`]).
    pub listeners: PathBuf,
    /// What it runs (instances, routes), for the agent that takes over after it dies.
    pub kept: PathBuf,
}

/// Set on an agent started with listening sockets to take over on its standard input.
const HANDOVER: &str = "SHIPGATE_HANDOVER";

impl AgentFiles {
    /// The files of the agent of `data_dir`.
    pub fn of(data_dir: &Path) -> AgentFiles {
        AgentFiles {
            socket: data_dir.join(AGENT_SOCKET),
            pid: data_dir.join("agent.pid"),
            lock: data_dir.join("agent.lock"),
            log: data_dir.join("agent.log"),
            listeners: data_dir.join("agent-listeners.sock"),
            kept: data_dir.join("agent-state.json"),
        }
    }
}

/// Runs the agent of `data_dir` until SIGTERM or Ctrl-C, then stops its routers and instances.
/// Refused while another agent holds the data dir. With an `identity` (an agent of another
/// host that has joined), it also dials the server and serves it over that connection.
pub async fn run(
    data_dir: &Path,
    driver: Arc<dyn crate::Driver>,
    identity: Option<crate::tls::Identity>,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let files = AgentFiles::of(data_dir);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("could not make {}: {e}", data_dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&files.lock)
        .map_err(|e| format!("could not open {}: {e}", files.lock.display()))?;
    if lock.try_lock().is_err() {
        let pid = std::fs::read_to_string(&files.pid).unwrap_or_default();
        return Err(format!(
            "another agent (pid {}) already serves {}; stop it first",
            pid.trim(),
            data_dir.display()
        ));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&files.pid)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes())
        })
        .map_err(|e| format!("could not write {}: {e}", files.pid.display()))?;
    if std::env::var_os(HANDOVER).is_some() {
        match take_over_listeners() {
            Ok(listeners) => {
                tracing::info!("took over {} listening sockets", listeners.len());
                driver.inherit_listeners(listeners);
            }
            Err(e) => tracing::warn!("could not take over the listening sockets: {e}"),
        }
    }
    // What the agent before this one ran and still runs is adopted; anything else it left is
    // stopped.
    let adopted = driver.adopt().await;
    stop_orphans(data_dir, &adopted);
    let agent = Agent::new(Arc::clone(&driver), data_dir);
    agent.adopted(adopted.into_iter().map(|(id, _)| id));
    hand_out_listeners(&files.listeners, Arc::clone(&driver));
    if let Some(identity) = identity {
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            if let Err(e) = crate::link::dial_forever(identity, agent).await {
                tracing::error!("cannot dial the server: {e}");
            }
        });
    }
    tracing::info!(socket = %files.socket.display(), "agent serving");
    crate::serve(&files.socket, agent, stop_signal())
        .await
        .map_err(|e| format!("could not serve on {}: {e}", files.socket.display()))?;
    tracing::info!("agent stopping: routers, then instances");
    for (_, routed) in driver.close_routers().await {
        for id in routed {
            driver.drain(&id, STOP_GRACE).await;
        }
    }
    driver.stop_all(STOP_GRACE).await;
    let _ = std::fs::remove_file(&files.pid);
    let _ = std::fs::remove_file(&files.socket);
    drop(lock);
    Ok(())
}

/// The listening sockets handed over on standard input ([`crate::handover`]).
fn take_over_listeners() -> std::io::Result<Vec<(std::net::SocketAddr, std::net::TcpListener)>> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let stream = std::os::unix::net::UnixStream::from(stdin);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    crate::handover::receive(&stream)
}

/// Hands a handle to each router's listening socket to whoever connects at `path` (the server,
/// which keeps them while this agent is replaced).
fn hand_out_listeners(path: &Path, driver: Arc<dyn crate::Driver>) {
    let _ = std::fs::remove_file(path);
    use std::os::unix::fs::PermissionsExt;
    let bound = tokio::net::UnixListener::bind(path).and_then(|l| {
        // Only the agent's user (the server's) may take the sockets.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "cannot hand out listening sockets at {}: {e}",
                path.display()
            );
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let listeners = driver.listeners().await;
            let sent = stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                Ok(s)
            });
            tokio::task::spawn_blocking(move || {
                if let Err(e) = sent.and_then(|s| crate::handover::send(&s, &listeners)) {
                    tracing::warn!("could not hand out the listening sockets: {e}");
                }
            });
        }
    });
}

/// Handles to the listening sockets of the agent of `data_dir`'s routers.
pub fn listeners_of(
    data_dir: &Path,
) -> std::io::Result<Vec<(std::net::SocketAddr, std::net::TcpListener)>> {
    let stream = std::os::unix::net::UnixStream::connect(AgentFiles::of(data_dir).listeners)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    crate::handover::receive(&stream)
}

/// Kills what an earlier agent of `data_dir` left running when it was killed (`kill -9`) and
/// that was not adopted: the processes marked with [`crate::AGENT_MARKER`] for this data dir
/// outside the process groups of `adopted`, and their cgroups.
fn stop_orphans(data_dir: &Path, adopted: &[(shipgate_deploy::InstanceId, u32)]) {
    let marker = format!("{}={}", crate::AGENT_MARKER, data_dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut stopped: Vec<String> = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        let group = nix::unistd::getpgid(Some(pid)).unwrap_or(pid);
        let adopted_pid = |p: i32| adopted.iter().any(|(_, a)| i32::try_from(*a) == Ok(p));
        // An image's container runs in a session of its own under its adopted runc.
        if group == nix::unistd::getpgrp()
            || adopted_pid(group.as_raw())
            || ancestors(pid.as_raw()).any(adopted_pid)
        {
            continue;
        }
        tracing::warn!("stopping process group {group}, left running by an earlier agent");
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let instance = environ.split(|b| *b == 0).find_map(|v| {
            std::str::from_utf8(v)
                .ok()?
                .strip_prefix("SHIPGATE_INSTANCE=")
                .map(str::to_owned)
        });
        stopped.extend(instance);
    }
    // Their cgroups go too, once their processes are gone.
    stopped.sort();
    stopped.dedup();
    if let (false, Ok(hierarchy)) = (
        stopped.is_empty(),
        shipgate_deploy::cgroup::Hierarchy::detect(),
    ) {
        std::thread::spawn(move || {
            for _ in 0..50 {
                stopped.retain(|id| !hierarchy.remove_named(id));
                if stopped.is_empty() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
}

/// The parents of process `pid`, nearest first, up to (not including) pid 1.
fn ancestors(pid: i32) -> impl Iterator<Item = i32> {
    std::iter::successors(Some(pid), |p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let after = stat.rsplit_once(')')?.1;
        let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
        (ppid > 1).then_some(ppid)
    })
    .skip(1)
}

async fn stop_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The `shipgate` binary that runs agents: this program if it is `shipgate`, else the
/// `shipgate` beside it (a benchmark or test binary that embeds the server).
pub fn agent_exe() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("locating the running program: {e}"))?;
    if me.file_stem().is_some_and(|n| n == "shipgate") {
        return Ok(me);
    }
    let beside = me.with_file_name("shipgate");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "the local agent is the `shipgate` binary, and {} is missing: build it (cargo build -p shipgate), or set data_plane = \"server\"",
        beside.display()
    ))
}

/// The agent of `data_dir`: the one running there, or one started now as `exe agent
/// --data-dir DATA_DIR`, in a process group of its own so that it outlives the server.
pub async fn connect_or_start(exe: &Path, data_dir: &Path) -> Result<Arc<AgentClient>, String> {
    connect_or_start_with(exe, data_dir, &[]).await
}

/// [`connect_or_start`], handing `listeners` (kept from an agent that died) to the agent it
/// starts.
pub async fn connect_or_start_with(
    exe: &Path,
    data_dir: &Path,
    listeners: &[(std::net::SocketAddr, std::net::TcpListener)],
) -> Result<Arc<AgentClient>, String> {
    let files = AgentFiles::of(data_dir);
    if let Ok(client) = AgentClient::connect(&files.socket).await {
        let hello = client.hello().await?;
        tracing::info!(
            pid = hello.pid,
            instances = hello.instances.len(),
            "reconnected to the local agent"
        );
        return Ok(client);
    }
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&files.log)
        .map_err(|e| format!("could not open {}: {e}", files.log.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("could not share {}: {e}", files.log.display()))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("could not make a socket pair for the hand-over: {e}"))?;
    let mut command = std::process::Command::new(exe);
    command.arg("agent").arg("--data-dir").arg(data_dir);
    for hidden in shipgate_deploy::hidden_from_children() {
        command.env_remove(hidden);
    }
    if listeners.is_empty() {
        command.stdin(std::process::Stdio::null());
    } else {
        command
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .env(HANDOVER, "1");
    }
    let mut child = command
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start the local agent ({}): {e}", exe.display()))?;
    use std::os::unix::process::CommandExt as _;
    let pid = child.id();
    if !listeners.is_empty() {
        match crate::handover::send(&ours, listeners) {
            Ok(()) => tracing::info!(
                pid,
                "handed {} listening sockets to the new agent",
                listeners.len()
            ),
            Err(e) => tracing::warn!("could not hand the listening sockets over: {e}"),
        }
    }
    drop(ours);
    // Reaped here if it stops while this server runs (after that, by whoever adopts it).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let deadline = tokio::time::Instant::now() + AGENT_START;
    loop {
        match AgentClient::connect(&files.socket).await {
            Ok(client) => {
                tracing::info!(pid, "started the local agent");
                return Ok(client);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                let tail = std::fs::read_to_string(&files.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                return Err(format!(
                    "the local agent (pid {pid}) did not answer within {AGENT_START:?}: {e}; its log ({}) ends:\n{}",
                    files.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Stops the agent of `data_dir` with SIGTERM and waits until it has exited (its routers stop
/// accepting, requests in flight finish, then its instances stop). Returns its pid, or why
/// there is none to stop.
pub async fn stop(data_dir: &Path) -> Result<u32, String> {
    let files = AgentFiles::of(data_dir);
    let pid: i32 = std::fs::read_to_string(&files.pid)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "no agent runs for {} (no {})",
                data_dir.display(),
                files.pid.display()
            )
        })?;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|_| {
        format!(
            "the agent (pid {pid}) of {} is not running",
            data_dir.display()
        )
    })?;
    // Gone, or a zombie its parent has not reaped yet.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    while running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(pid.as_raw().unsigned_abs())
}
