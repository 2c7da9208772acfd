//! What `status`, `history` and one promotion look like on the wire.

use serde::{Deserialize, Serialize};
use shipgate_core::gate::{Decision, Freeze, Wait, WatchCheck, WatchFigures};
use shipgate_core::{AppName, EnvName, Version};
use utoipa::ToSchema;

use crate::records::{Gate, LiveRelease, Promotion};

/// One app across every environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AppStatus {
    /// The app.
    pub app: AppName,
    /// Its environments in flow order.
    pub environments: Vec<EnvironmentStatus>,
}

/// One app in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EnvironmentStatus {
    /// The environment.
    pub env: EnvName,
    /// Its stable address.
    pub url: String,
    /// The live release, if any.
    pub live: Option<LiveRelease>,
    /// The instance serving it, if one runs.
    pub instance: Option<InstanceView>,
    /// Promotions not finished yet (pending, deploying, verifying), with what they wait on.
    pub in_progress: Vec<PromotionView>,
    /// The freezes in force here (its own and the one of every environment).
    pub frozen: Vec<Freeze>,
    /// The release `shipgate rollback` would go back to, if there is one.
    pub rollback_to: Option<Version>,
    /// The replaced release still running for an instant rollback, if any: always the one a
    /// rollback would go to.
    pub standby: Option<StandbyView>,
    /// Why the environment is unhealthy (its instance crash-looped), if it is.
    pub unhealthy: Option<String>,
    /// The live release's traffic through the router over the last minute.
    pub traffic: Option<Traffic>,
    /// What the last drift scan found here (empty: matches its record).
    pub drift: Vec<String>,
    /// Config changes (variables) made since the live release was deployed here, which the
    /// next deploy takes up (`shipgate redeploy`); not drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeployed: Vec<String>,
    /// How its instances are confined.
    pub isolation: IsolationView,
    /// The chaos faults in force on the app here, each with its end.
    #[serde(default)]
    pub faults: Vec<crate::records::FaultRecord>,
    /// The alerts firing for the app here: `high-errors: error_rate > 0.05 for 2m`.
    #[serde(default)]
    pub alerts: Vec<String>,
    /// A later environment runs a release that came there by hotfix and was never verified
    /// here: what it runs and the command that brings this environment up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<Behind>,
    /// The live release came here by hotfix (`shipgate promote --hotfix`).
    #[serde(default)]
    pub live_by_hotfix: bool,
}

/// An environment a hotfix went past.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Behind {
    /// The later environment the hotfix went into.
    pub env: EnvName,
    /// The release it runs.
    pub version: Version,
    /// The promotion that brings this environment up to date.
    pub command: String,
}

/// The warm standby of an app in an environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StandbyView {
    /// The version it runs.
    pub version: Version,
    /// Its instance.
    pub instance_id: shipgate_core::InstanceId,
    /// When it will be stopped (RFC 3339).
    pub until: jiff::Timestamp,
}

/// A running instance as the driver sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceView {
    /// Driver key.
    pub id: shipgate_core::InstanceId,
    /// Process id.
    pub pid: u32,
    /// Port.
    pub port: u16,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Whether it answers its health check.
    pub healthy: bool,
    /// How its last crash ended (`exit code 1`, `out of memory (limit 512MiB)`), if it crashed.
    pub last_crash: Option<String>,
    /// For an environment placed on hosts: the instance on each host that answers.
    #[serde(default)]
    pub hosts: Vec<HostInstanceView>,
    /// For an environment placed on hosts: those not connected now. Each is given the
    /// environment's live release when it connects again.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// An instance of an environment placed on hosts, on one of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostInstanceView {
    /// The host.
    pub host: String,
    /// Its process there.
    pub pid: u32,
    /// Its port there.
    pub port: u16,
    /// Whether it answers its health check there.
    pub healthy: bool,
    /// Its restarts there.
    pub restarts: u32,
}

/// How an environment's instances are confined.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IsolationView {
    /// Whether they run in a sandbox of the environment's own user.
    pub sandboxed: bool,
    /// The sandbox's user and limits, or why there is none.
    pub detail: String,
}

/// A promotion with its gates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HistoryEntry {
    /// The promotion.
    #[serde(flatten)]
    pub promotion: Promotion,
    /// Its recorded gates, in order.
    pub gates: Vec<Gate>,
    /// What it waits on now, if it waits.
    pub waiting_on: Vec<WaitView>,
    /// Approvals and rejections recorded for it.
    pub decisions: Vec<Decision>,
    /// Its watch, while one is under way.
    pub watch: Option<WatchView>,
    /// Its canary rollout, while one is under way.
    #[serde(default)]
    pub canary: Option<CanaryView>,
}

/// A promotion in progress with what it waits on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PromotionView {
    /// The promotion.
    #[serde(flatten)]
    pub promotion: Promotion,
    /// What it waits on; empty once it deploys.
    pub waiting_on: Vec<WaitView>,
    /// Its watch, while one is under way.
    pub watch: Option<WatchView>,
    /// Its canary rollout, while one is under way.
    #[serde(default)]
    pub canary: Option<CanaryView>,
}

/// A canary rollout under way (`[environments.NAME.canary]`): where it stands, and both sides'
/// figures in the current step's window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CanaryView {
    /// The promotion it belongs to.
    pub promotion_id: shipgate_core::PromotionId,
    /// The new release (`web@1.4.2`).
    pub canary: String,
    /// The release it is judged against, which serves the other requests.
    pub stable: String,
    /// The steps, as the config writes them.
    pub steps: Vec<String>,
    /// The current step, from 1.
    pub step: usize,
    /// The canary's share of the requests now, in percent.
    pub weight: f64,
    /// Whether the share is mirrored (users meet only the stable release).
    pub mirror: bool,
    /// Where it stands.
    pub state: CanaryState,
    /// When the current step began.
    pub step_started_at: jiff::Timestamp,
    /// When the current step is judged; None while paused or held.
    pub step_ends_at: Option<jiff::Timestamp>,
    /// The canary's figures in the current window.
    pub canary_figures: SideFigures,
    /// The stable release's figures in the same window.
    pub stable_figures: SideFigures,
    /// The last judgement, with its figures, or why it holds.
    pub last: Option<String>,
    /// Where it stands in a sentence.
    pub message: String,
}

/// Where a canary rollout stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CanaryState {
    /// A step is under way; it is judged at its end.
    Running,
    /// A `pause` step: it waits for `shipgate canary resume`.
    Paused,
    /// Its judgement was inconclusive: too few requests. It holds at its weight and is judged
    /// again as they arrive.
    Held,
}

/// What one side of a canary answered in a window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct SideFigures {
    /// Responses.
    pub requests: u64,
    /// 5xx responses among them.
    pub errors: u64,
    /// Their share, 0 to 1.
    pub error_rate: f64,
    /// Median latency to the response head, ms; None without responses.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms; None without responses.
    pub p99_ms: Option<f64>,
}

/// A watch under way (`verify.watch`): when it ends, and the figures so far against each
/// threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WatchView {
    /// When it began (the switch).
    pub started_at: jiff::Timestamp,
    /// When it ends.
    pub ends_at: jiff::Timestamp,
    /// What the router counted for the new release so far.
    pub figures: WatchFigures,
    /// Each threshold against the figures so far.
    pub checks: Vec<WatchCheck>,
    /// The same in a sentence.
    pub message: String,
}

/// One thing a promotion waits on, with a sentence for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WaitView {
    /// The wait, as data (`gate` says which kind).
    #[serde(flatten)]
    pub wait: Wait,
    /// The same in a sentence (`2 of 3 approvals (alice, bob)`).
    pub message: String,
}

impl From<Wait> for WaitView {
    fn from(wait: Wait) -> Self {
        Self {
            message: wait.to_string(),
            wait,
        }
    }
}

/// An environment's traffic through its router over the last minute.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Traffic {
    /// Responses per second over the minute, or over the time since counting started if shorter.
    pub requests_per_second: f64,
    /// The share of responses that were 5xx, from 0 to 1; 0 when there were none.
    pub error_rate: f64,
    /// Median latency to the response head, estimated; None without responses.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency to the response head, estimated; None without responses.
    pub p99_ms: Option<f64>,
    /// Responses in the window.
    pub requests: u64,
    /// While chaos faults answered some of its requests: the share of 5xx among everything its
    /// users met, the faults' answers included (what alerts judge); None otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_with_faults: Option<f64>,
}

impl Traffic {
    /// The volume in words: `2 req, 0.03 req/s`; the rate keeps two significant digits, so a
    /// quiet minute does not read as none.
    pub fn volume(&self) -> String {
        let r = self.requests_per_second;
        let rate = if r >= 10.0 {
            format!("{r:.0}")
        } else if r >= 1.0 {
            format!("{r:.1}")
        } else {
            format!("{r:.2}")
        };
        format!("{} req, {rate} req/s", self.requests)
    }
}

/// A machine that runs instances and routers: today the server's own (`local`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct HostView {
    /// Its name (`local` for the server's own machine).
    pub name: String,
    /// Where its data plane runs: `agent` (a local agent process) or `server` (the server's own).
    pub data_plane: String,
    /// Whether its agent answers.
    pub connected: bool,
    /// Since when it is connected, or unreachable.
    pub since: jiff::Timestamp,
    /// The agent's process id (the server's own for `server`).
    pub pid: Option<u32>,
    /// The version of shipgate the agent runs.
    pub version: Option<String>,
    /// The instances it runs.
    pub instances: usize,
    /// The address it dialled in from (other hosts; none for `local`).
    #[serde(default)]
    pub address: Option<String>,
}

/// Which server runs the engine: the holder of the engine's lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LeaderView {
    /// The server holding the lease (its host name and data dir).
    pub server: String,
    /// Where its API answers.
    pub address: String,
    /// Since when it leads.
    pub since: jiff::Timestamp,
    /// The lease's epoch: raised each time the lease changes hands.
    pub epoch: i64,
    /// When the lease ends unless renewed (the database's clock).
    pub expires_at: jiff::Timestamp,
}

#[cfg(test)]
mod tests {
    use super::Traffic;

    #[test]
    fn a_quiet_minute_does_not_read_as_no_traffic() {
        let t = |requests, requests_per_second| {
            Traffic {
                requests_per_second,
                error_rate: 0.0,
                p50_ms: None,
                p99_ms: None,
                requests,
                error_rate_with_faults: None,
            }
            .volume()
        };
        assert_eq!(t(2, 2.0 / 60.0), "2 req, 0.03 req/s");
        assert_eq!(t(240, 4.0), "240 req, 4.0 req/s");
        assert_eq!(t(3000, 50.0), "3000 req, 50 req/s");
    }
}
