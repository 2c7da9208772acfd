//! Integration tests of the `shipgate` binary: the real binary as child processes, a real
//! server, real HTTP, and an app that is not shipgate's own (`tests/fixtures/app`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod access;
mod agent;
mod backups;
mod bad_input;
mod browser;
mod canary_hosts;
mod canary_panel;
mod canary_restart;
mod chaos;
mod dashboard;
mod data;
mod demo;
mod docs;
mod flags;
mod fleet;
mod fleet_restart;
mod flow;
mod gates;
mod getting_out;
mod hardening;
mod helpers;
mod hosts;
mod hotfix;
mod image_hosts;
mod images;
mod isolation;
mod load_gate;
mod load_panel;
mod netns;
mod notify;
mod oidc_provider;
mod on_demand;
mod parity;
mod reload;
mod restart;
mod retention;
mod schema_parity;
mod secrets;
mod servers;
mod signoff;
mod signoff_page;
mod sso;
mod standby;
mod supervision;
