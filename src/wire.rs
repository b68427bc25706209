//! Messages that cross process boundaries as JSON (manager <-> worker).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::{TaskSpec, TaskState};

/// The manager asks a worker to run attempt `attempt` of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: Uuid,
    pub attempt: u32,
    pub spec: TaskSpec,
}

/// What a worker knows of one attempt of a task; pushed to the manager on
/// every change and returned by the worker's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: Uuid,
    pub attempt: u32,
    pub node: String,
    pub state: TaskState,
    pub container_id: Option<String>,
    /// Container port -> host port.
    #[serde(default)]
    pub host_ports: BTreeMap<u16, u16>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
    /// Bumped by the worker on every change of this attempt's status, so a
    /// late answer never overwrites a newer report.
    #[serde(default)]
    pub seq: u64,
    /// Restarts of this attempt's container by its restart policy.
    #[serde(default)]
    pub restart_count: u32,
    /// When the container that runs now started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// While waiting to restart: when the restart is due.
    #[serde(default)]
    pub next_restart_at: Option<DateTime<Utc>>,
    /// The health check's view of the running container (tasks with a check).
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not passed yet since the container started.
    Starting,
    Healthy,
    /// Failed `retries` checks in a row.
    Unhealthy,
}

/// The health of a task's container, and its last check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub state: HealthState,
    /// Failed checks in a row.
    pub failures: u32,
    /// What the last check found ("HTTP 200", "connection refused", ...).
    pub last_probe: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
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
