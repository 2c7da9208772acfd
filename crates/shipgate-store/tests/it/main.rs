//! Integration tests of the store, each run twice: on a real SQLite file and on a real
//! PostgreSQL database (a cluster this process starts with initdb/pg_ctl); and of the artifact
//! store on real archives and directories, each test in its own temporary directory.
#![allow(clippy::unwrap_used, reason = "a test should fail loudly")]

/// Each `async fn` becomes a module of two tests, `sqlite` and `postgres`, which run its body
/// with [`fixtures::BACKEND`] set: one suite, both backends.
macro_rules! on_both_backends {
    ($( $(#[$meta:meta])* async fn $name:ident() $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$meta])*
                async fn body() $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    crate::fixtures::BACKEND.scope(shipgate_store::Backend::Sqlite, body()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    crate::fixtures::BACKEND.scope(shipgate_store::Backend::Postgres, body()).await
                }
            }
        )*
    };
}

mod archive_checks;
mod artifact_store;
mod artifacts_in_db;
mod copy;
mod deliveries;
mod event_log;
mod fixtures;
mod flags;
mod gates;
mod lease;
mod on_demand;
mod promotions;
mod releases;
mod reopen;
mod secrets;
mod signoffs;
mod tar_entries;
