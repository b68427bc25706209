//! What a worker knows of one attempt of a task: its status (pushed to the
//! manager on every change) and its health. Crosses processes (see `wire`),
//! and is applied to the task record (`record`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::TaskState;

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
    /// The container's address on the node's network, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<IpAddr>,
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
