//! The `shipgate` command: wires the crates together. Server commands run the engine in this
//! process; client commands talk to a server over its HTTP API.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use shipgate::{cli, commands};

fn main() -> ExitCode {
    shipgate::run_to_exit(commands::run(cli::Cli::parse()))
}
