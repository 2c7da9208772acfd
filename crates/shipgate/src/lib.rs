//! The parts of the `shipgate` command: its command line, the API client, the demo and its
//! sample app. The binary (`main.rs`) only runs them; `shipgate-bench` uses the client, the
//! demo's sample server and the output helpers to measure a real server.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod config_file;
pub mod credentials;
pub mod demo;
pub mod output;
pub mod sample;

/// The `shipgate` binary that starts the sample app (`shipgate sample-app`): the running
/// program when it is `shipgate`, else the `shipgate` beside it (as for `shipgate-bench`,
/// which cargo builds into the same folder).
pub fn shipgate_exe() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let me = std::env::current_exe().context("locating the running program")?;
    if me.file_stem().is_some_and(|n| n == "shipgate") {
        return Ok(me);
    }
    let beside = me.with_file_name("shipgate");
    anyhow::ensure!(
        beside.is_file(),
        "{} is missing: build it first (cargo build --release -p shipgate)",
        beside.display()
    );
    Ok(beside)
}

/// Runs a command on a multi-threaded tokio runtime: its exit code, or 1 with the error printed.
pub fn run_to_exit(
    command: impl std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
