//! Messages that cross process boundaries as JSON (manager <-> worker).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::TaskSpec;
pub use crate::task::status::{Health, HealthState, TaskStatus};

/// The manager asks a worker to run attempt `attempt` of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: Uuid,
    pub attempt: u32,
    pub spec: TaskSpec,
}

/// A node's resources, as sysinfo reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// Whether the worker can talk to its container engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub up: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

/// A machine's resources and their use, as sysinfo reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineStats {
    pub capacity: Capacity,
    pub cpu_usage_percent: f64,
    pub memory_available_mb: u64,
    pub disk_free_mb: u64,
    pub load_1m: f64,
    /// When the Stats actor took this sample (`None`: never sampled).
    #[serde(default)]
    pub sampled_at: Option<DateTime<Utc>>,
}

/// A worker's live view of itself (worker `GET /stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub node: String,
    /// This worker process (a new one on every start).
    pub instance: Uuid,
    /// What the worker offers for placement (the machine's, or the config's override).
    pub capacity: Capacity,
    pub machine: MachineStats,
    pub engine: EngineStatus,
    /// Tasks whose container runs or is being started.
    pub active_tasks: usize,
}

/// A worker introduces itself to the manager, with what it runs now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    /// This worker process (a new one on every start): the manager tells a
    /// restart (the old process is gone) from a second live worker of one name.
    pub instance: Uuid,
    /// Base URL the manager uses to reach the worker.
    pub address: String,
    pub capacity: Capacity,
    pub tasks: Vec<TaskStatus>,
    pub stats: MachineStats,
}

/// The manager's answer to a registration: the assignments the worker should
/// hold (it starts those it lacks) and the tasks it should stop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrationReply {
    pub assignments: Vec<Assignment>,
    pub stop: Vec<Uuid>,
}

/// A worker tells the manager it is alive, with its latest stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub instance: Uuid,
    pub stats: MachineStats,
}

/// The manager's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The manager does not hold this worker as live (it was marked down,
    /// the manager lost it, or another process registered under its name):
    /// it must register again, which reconciles its tasks.
    pub reregister: bool,
    /// The managers' URLs, the one answering first (said by a manager of
    /// several; the worker asks them in turn from then on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
}

/// The manager's answer to a worker's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportReply {
    /// The reported attempt is not the task's current one on this worker:
    /// the worker stops it, removes its container and forgets it.
    #[serde(default)]
    pub stop: bool,
}

/// The query of the streaming routes (`/events`, `/tasks/{id}/logs`):
/// `?follow=true` keeps the stream open.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    #[serde(default)]
    pub follow: bool,
}

/// The cluster's CA certificate (PEM), which a joining node checks against
/// the digest in its join token before it sends anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCertificate {
    pub ca: String,
}

/// A worker asks to join: a certificate for its name and addresses, for
/// the key of its certificate signing request (the key stays with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub name: String,
    /// The secret part of the join token.
    pub secret: String,
    /// Where the manager will reach it: DNS names or IP addresses.
    pub hosts: Vec<String>,
    /// PEM.
    pub csr: String,
}

/// A joined worker asks for a new certificate before its own expires
/// (the caller's certificate says who it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub hosts: Vec<String>,
    /// PEM.
    pub csr: String,
}

/// The worker's certificate (PEM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinReply {
    pub certificate: String,
}

/// A manager asks to join a cluster with the manager join token's secret;
/// it has checked the CA against the token already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerJoinRequest {
    pub secret: String,
}

/// What every manager of a cluster holds: the CA (certificate and key, to
/// issue certificates), the join tokens and the first admin token's
/// secret (PEM and token texts).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerJoinReply {
    pub ca_cert: String,
    pub ca_key: String,
    pub worker_token: String,
    pub manager_token: String,
    pub admin_secret: String,
}

/// Secrets stay out of logs and debug output.
impl std::fmt::Debug for ManagerJoinReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagerJoinReply { .. }")
    }
}

/// A manager that holds the cluster's keys asks to be made a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddManager {
    pub id: u64,
    /// Where the other managers reach it.
    pub url: String,
}

/// The managers as one of them sees them (`GET /cluster`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The manager that answered.
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// The last entry of its log, and the last applied to its state.
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub url: String,
    /// A voter (else a learner, catching up).
    pub voter: bool,
    pub leader: bool,
    /// Since it last answered the manager that answered (itself: 0); the
    /// leader hears from every member, a follower from none but itself.
    pub last_contact_ms: Option<u64>,
    /// The last entry the leader knows it holds (leader's view only).
    pub matched_index: Option<u64>,
}
