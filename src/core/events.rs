//! Events users watch, derived from task records: a state change, a
//! restart, a change of health. Pure: [`diff`] compares what was seen of a
//! task with its new record. `ClusterState` derives them as it stages a
//! record; the Manager numbers and publishes them once the record is
//! committed (`manager::events::EventLog`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::{TaskRecord, TaskState};
use crate::wire::HealthState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the manager's log since it started (1, 2, ...).
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub task: Uuid,
    pub name: String,
    pub node: Option<String>,
    pub attempt: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EventKind {
    /// The task's state changed.
    State {
        from: Option<TaskState>,
        to: TaskState,
        error: Option<String>,
        exit_code: Option<i64>,
        /// The token whose request this is (submitted, or stopped).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The restart policy restarted (or is about to restart) its container.
    Restart {
        restart_count: u32,
        exit_code: Option<i64>,
    },
    /// Its health check's verdict changed.
    Health {
        state: HealthState,
        last_probe: Option<String>,
    },
    /// A step of a service (created, scaled, an update's progress); `task`
    /// is nil and `name` the service's.
    Service { message: String },
}

/// What of a record the log compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    state: TaskState,
    restart_count: u32,
    attempt: u32,
    health: Option<HealthState>,
}

pub fn seen(record: &TaskRecord) -> Seen {
    Seen {
        state: record.state,
        restart_count: record.restart_count,
        attempt: record.attempt,
        health: record.health.as_ref().map(|h| h.state),
    }
}

/// The events between what was seen of a task and its record now.
pub fn diff(before: Option<&Seen>, record: &TaskRecord) -> Vec<EventKind> {
    let now = seen(record);
    let mut out = Vec::new();
    if before.map(|b| b.state) != Some(now.state) {
        // Who asked: the submitter when the task appears, the stopper
        // when a stopped task ends.
        let by = match before {
            None => record.submitted_by.clone(),
            Some(_) if now.state.is_terminal() => record.stopped_by.clone(),
            Some(_) => None,
        };
        out.push(EventKind::State {
            from: before.map(|b| b.state),
            to: now.state,
            error: record.error.clone(),
            exit_code: record.exit_code,
            by,
        });
    }
    let same_attempt = before.is_some_and(|b| b.attempt == now.attempt);
    let restarts_before = if same_attempt {
        before.map_or(0, |b| b.restart_count)
    } else {
        0
    };
    if now.restart_count > restarts_before {
        out.push(EventKind::Restart {
            restart_count: now.restart_count,
            exit_code: record.exit_code,
        });
    }
    if let Some(state) = now.health
        && before.and_then(|b| b.health) != Some(state)
    {
        out.push(EventKind::Health {
            state,
            last_probe: record.health.as_ref().and_then(|h| h.last_probe.clone()),
        });
    }
    out
}

/// An event not numbered yet: it gets its `seq` when its record is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    pub at: DateTime<Utc>,
    pub task: Uuid,
    pub name: String,
    pub node: Option<String>,
    pub attempt: u32,
    pub kind: EventKind,
}

impl EventDraft {
    pub fn new(record: &TaskRecord, kind: EventKind, at: DateTime<Utc>) -> Self {
        EventDraft {
            at,
            task: record.id,
            name: record.name.clone(),
            node: record.node.clone(),
            attempt: record.attempt,
            kind,
        }
    }

    /// An event of a service as a whole.
    pub fn service(name: &str, message: String, at: DateTime<Utc>) -> Self {
        EventDraft {
            at,
            task: Uuid::nil(),
            name: name.to_string(),
            node: None,
            attempt: 0,
            kind: EventKind::Service { message },
        }
    }

    pub fn numbered(self, seq: u64) -> Event {
        Event {
            seq,
            at: self.at,
            task: self.task,
            name: self.name,
            node: self.node,
            attempt: self.attempt,
            kind: self.kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Health, TaskStatus};

    fn record() -> TaskRecord {
        let spec = crate::task::spec::from_value(serde_json::json!({"name": "web", "image": "i"}))
            .unwrap();
        TaskRecord::new(spec, Utc::now())
    }

    fn status(r: &TaskRecord, state: TaskState, seq: u64) -> TaskStatus {
        TaskStatus {
            task_id: r.id,
            attempt: r.attempt,
            node: r.node.clone().unwrap(),
            state,
            container_id: Some("c".into()),
            host_ports: Default::default(),
            container_ip: None,
            exit_code: None,
            error: None,
            at: Utc::now(),
            seq,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
        }
    }

    /// Diffs each record against the one before, as `ClusterState` does.
    struct Tracker(Option<Seen>, Vec<String>);

    impl Tracker {
        fn observe(&mut self, r: &TaskRecord) {
            for kind in diff(self.0.as_ref(), r) {
                self.1.push(match kind {
                    EventKind::State { to, .. } => format!("state {to}"),
                    EventKind::Restart { restart_count, .. } => format!("restart {restart_count}"),
                    EventKind::Health { state, .. } => format!("health {state:?}"),
                    EventKind::Service { message } => message,
                });
            }
            self.0 = Some(seen(r));
        }
    }

    #[test]
    fn a_task_life_is_a_sequence_of_events_in_order() {
        let mut log = Tracker(None, vec![]);
        let mut r = record();
        log.observe(&r);
        r.place("w1", Utc::now()).unwrap();
        log.observe(&r);
        let mut running = status(&r, TaskState::Running, 1);
        running.health = Some(Health {
            state: HealthState::Starting,
            failures: 0,
            last_probe: None,
            checked_at: None,
        });
        r.apply_status(&running, Utc::now()).unwrap();
        log.observe(&r);
        // The same record again says nothing new.
        log.observe(&r);
        let mut waiting = status(&r, TaskState::Scheduled, 2);
        waiting.restart_count = 1;
        waiting.exit_code = Some(3);
        r.apply_status(&waiting, Utc::now()).unwrap();
        log.observe(&r);
        assert_eq!(
            log.1,
            vec![
                "state Pending",
                "state Scheduled",
                "state Running",
                "health Starting",
                "state Scheduled",
                "restart 1",
            ]
        );
    }
}
