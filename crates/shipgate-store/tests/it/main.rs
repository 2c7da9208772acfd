//! Integration tests of the store on real SQLite files and of the artifact store on real
//! archives and directories, each test in its own temporary directory.
#![allow(clippy::unwrap_used, reason = "a test should fail loudly")]

mod archive_checks;
mod artifact_store;
mod event_log;
mod fixtures;
mod gates;
mod promotions;
mod releases;
mod reopen;
mod tar_entries;
