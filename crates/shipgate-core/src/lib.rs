//! The domain of shipgate, free of I/O frameworks: the config model and its validation, the
//! names a user types (apps, environments, versions, digests), the environment graph, the
//! promotion state machine and the rules that decide whether a release may enter an
//! environment, plus the audit chain hash.
//!
//! This crate must not depend on tokio, SQL or HTTP: everything here is a pure function of its
//! inputs, so the rules can be unit- and property-tested without a server.
#![forbid(unsafe_code)]

pub mod access;
pub mod alert;
pub mod audit;
pub mod canary;
pub mod chaos;
pub mod config;
pub mod dora;
pub mod duration;
pub mod event_kind;
pub mod flag;
pub mod gate;
pub mod image;
pub mod load;
pub mod mask;
pub mod names;
pub mod network;
pub mod notify;
pub mod on_demand;
pub mod parity;
pub mod promotion;
pub mod reload;
pub mod seccomp;
pub mod secret;
pub mod signoff;
pub mod size;
pub mod sso;
pub mod template;
pub mod window;

pub use access::{Action, Binding, Denied, Grant, Role};
pub use config::{
    AppConfig, ApprovalRule, Config, ConfigError, ConfigProblem, CrashLoop, EnvironmentConfig,
    HttpCheck, Requirements, ServerConfig, WatchRule,
};
pub use duration::Duration;
pub use event_kind::EventKind;
pub use gate::Verdict;
pub use names::{
    AppName, Digest, EnvName, EnvScope, HostName, InstanceId, NameError, PromotionId, ReleaseRef,
    Version,
};
pub use promotion::{EntryRefusal, PromotionKind, PromotionState, Standing};
pub use size::ByteSize;
