//! What goes into the core (commands) and what comes out (replies and effects).

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::join_tokens::JoinTokenRecord;
use super::tokens::TokenRecord;
use crate::service::{ServiceRecord, ServiceSpec};
use crate::task::{TaskRecord, TaskSpec, TaskState};
use crate::wire::{
    Assignment, Heartbeat, HeartbeatReply, Registration, RegistrationReply, ReportReply, TaskStatus,
};

/// The time a command is applied at: the wall clock for records, and the
/// monotonic clock for liveness.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: DateTime<Utc>,
    pub mono: Instant,
}

impl Now {
    /// The clocks as they are (the actor's business, never the core's).
    pub fn read() -> Self {
        Now {
            at: Utc::now(),
            mono: Instant::now(),
        }
    }
}

/// Everything that changes the cluster's state.
#[derive(Debug, Clone)]
pub enum Command {
    /// A user submits a task; `id` is chosen by the caller.
    Submit {
        id: Uuid,
        spec: TaskSpec,
        /// The submitter's token.
        by: Option<String>,
    },
    /// A user stops a task.
    Stop {
        id: Uuid,
        /// The stopper's token.
        by: Option<String>,
    },
    /// A worker reports a change of one attempt of a task (pushed, or the
    /// answer to an assignment or a stop).
    Report {
        status: TaskStatus,
    },
    /// A worker refused an assignment.
    Refused {
        id: Uuid,
        attempt: u32,
        node: String,
        error: String,
    },
    /// A worker (re)registers (its namesake, if any, was found gone), with
    /// a certificate of its name's `generation`.
    Register {
        registration: Registration,
        generation: u64,
    },
    /// An admin removes a worker: its certificates are refused from now
    /// on, and its tasks move.
    RemoveNode {
        name: String,
        by: Option<String>,
    },
    Heartbeat {
        beat: Heartbeat,
    },
    /// After a restart of the manager: what a known worker says it holds.
    Sync {
        node: String,
        statuses: Vec<TaskStatus>,
    },
    /// Give every Pending task another try (after the manager starts).
    Retry,
    /// The store is full: remove the older half of the ended tasks, even
    /// within their retention, so that new work can be stored again.
    Relieve,
    /// The liveness clock: silent nodes go down and are drained; ended
    /// tasks past their retention are removed.
    Tick,
    /// An admin makes a token (its secret made and hashed by the caller).
    CreateToken {
        record: TokenRecord,
    },
    /// An admin revokes a token: refused from the next request on.
    RevokeToken {
        name: String,
    },
    /// An admin rotates a join token (the new one made by the caller):
    /// the old one is refused from then on, on every manager.
    RotateJoinToken {
        record: JoinTokenRecord,
    },
    /// A user creates a service; `id` is chosen by the caller.
    CreateService {
        id: Uuid,
        spec: ServiceSpec,
        by: Option<String>,
    },
    /// A new spec for a service: a rolling update.
    UpdateService {
        spec: ServiceSpec,
        by: Option<String>,
    },
    ScaleService {
        name: String,
        replicas: u32,
        by: Option<String>,
    },
    /// Back to the service's previous spec.
    RollbackService {
        name: String,
        by: Option<String>,
    },
    /// Every replica stops and the service goes.
    RemoveService {
        name: String,
        by: Option<String>,
    },
}

/// The answer to the command's sender, given once the command's changes
/// are committed.
#[derive(Debug, Clone)]
pub enum Reply {
    Task(TaskRecord),
    /// A stop was recorded; `worker` names the node whose worker must stop
    /// the container before the user is answered (none: nothing runs).
    Stopping {
        record: TaskRecord,
        worker: Option<String>,
        /// The task has ended, but its container may still run on a node
        /// that is down: the stop is not done until that node is back.
        unconfirmed: bool,
    },
    Registered(RegistrationReply),
    Reported(ReportReply),
    Beat(HeartbeatReply),
    Token(TokenRecord),
    JoinToken(JoinTokenRecord),
    Service(ServiceRecord),
    Done,
}

/// What the Manager actor must do once the changes are committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send an assignment to a node's worker.
    Dispatch {
        node: String,
        assignment: Box<Assignment>,
    },
    /// Tell a node's worker to stop (and remove) a task's container.
    StopOn { node: String, task: Uuid },
    /// The same, `after` this long (a replica draining: out of every
    /// balancer first).
    StopAfter {
        node: String,
        task: Uuid,
        after: std::time::Duration,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("no task with id {0}")]
    NotFound(Uuid),
    #[error("no token named {0:?}")]
    NoToken(String),
    #[error("no worker named {0:?} in the cluster")]
    NoNode(String),
    #[error("no service named {0:?}")]
    NoService(String),
    #[error(
        "worker {0} was removed from the cluster: its certificate is no longer accepted (join again to come back)"
    )]
    Revoked(String),
    #[error("{0}")]
    Conflict(String),
}

/// A page of `GET /tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub limit: usize,
    pub after: Option<Uuid>,
    pub state: Option<TaskState>,
    pub node: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    /// The cursor of the next page (`after=`), none on the last page.
    pub next: Option<Uuid>,
}
