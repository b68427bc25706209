//! The manager's event log: every change of a task that users watch (its
//! state, a restart, its health), in order, each with the task, its node and
//! the time. The log keeps the last [`KEEP`] events for `GET /events` and
//! hands each new one to the followers of `GET /events?follow=true`.
//! Deriving events from records is pure; the Manager feeds it every record
//! it stores.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::task::{TaskRecord, TaskState};
use crate::wire::HealthState;

/// Events kept for a reader who does not follow.
pub const KEEP: usize = 1000;
/// Events a follower may fall behind by before it is dropped.
const FOLLOWER_BUFFER: usize = 1024;

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
}

/// What of a record the log compares.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    state: TaskState,
    restart_count: u32,
    attempt: u32,
    health: Option<HealthState>,
}

fn seen(record: &TaskRecord) -> Seen {
    Seen {
        state: record.state,
        restart_count: record.restart_count,
        attempt: record.attempt,
        health: record.health.as_ref().map(|h| h.state),
    }
}

/// The events between what was seen of a task and its record now.
fn diff(before: Option<&Seen>, record: &TaskRecord) -> Vec<EventKind> {
    let now = seen(record);
    let mut out = Vec::new();
    if before.map(|b| b.state) != Some(now.state) {
        out.push(EventKind::State {
            from: before.map(|b| b.state),
            to: now.state,
            error: record.error.clone(),
            exit_code: record.exit_code,
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

#[derive(Default)]
pub struct EventLog {
    seen: HashMap<Uuid, Seen>,
    recent: VecDeque<Event>,
    next_seq: u64,
    followers: Vec<mpsc::Sender<Event>>,
}

impl EventLog {
    /// A log that knows these records already (no events for them).
    pub fn new<'a>(records: impl Iterator<Item = &'a TaskRecord>) -> Self {
        EventLog {
            seen: records.map(|r| (r.id, seen(r))).collect(),
            next_seq: 1,
            ..Default::default()
        }
    }

    /// Takes note of a task's record as stored now; logs and sends its events.
    pub fn observe(&mut self, record: &TaskRecord, at: DateTime<Utc>) {
        let kinds = diff(self.seen.get(&record.id), record);
        self.seen.insert(record.id, seen(record));
        for kind in kinds {
            let event = Event {
                seq: self.next_seq,
                at,
                task: record.id,
                name: record.name.clone(),
                node: record.node.clone(),
                attempt: record.attempt,
                kind,
            };
            self.next_seq += 1;
            // A follower that cannot keep up (or has gone) is dropped.
            self.followers
                .retain(|follower| follower.try_send(event.clone()).is_ok());
            if self.recent.len() == KEEP {
                self.recent.pop_front();
            }
            self.recent.push_back(event);
        }
    }

    /// The events kept, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.recent.iter().cloned().collect()
    }

    /// A new follower: it receives every event from now on.
    pub fn follow(&mut self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        self.followers.push(tx);
        rx
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

    fn kinds(log: &EventLog) -> Vec<String> {
        log.recent()
            .iter()
            .map(|e| match &e.kind {
                EventKind::State { to, .. } => format!("state {to}"),
                EventKind::Restart { restart_count, .. } => format!("restart {restart_count}"),
                EventKind::Health { state, .. } => format!("health {state:?}"),
            })
            .collect()
    }

    #[test]
    fn a_task_life_is_a_sequence_of_events_in_order() {
        let mut log = EventLog::new(std::iter::empty());
        let mut follower = log.follow();
        let mut r = record();
        log.observe(&r, Utc::now());
        r.place("w1", Utc::now()).unwrap();
        log.observe(&r, Utc::now());
        let mut running = status(&r, TaskState::Running, 1);
        running.health = Some(Health {
            state: HealthState::Starting,
            failures: 0,
            last_probe: None,
            checked_at: None,
        });
        r.apply_status(&running, Utc::now()).unwrap();
        log.observe(&r, Utc::now());
        // The same record again says nothing new.
        log.observe(&r, Utc::now());
        let mut waiting = status(&r, TaskState::Scheduled, 2);
        waiting.restart_count = 1;
        waiting.exit_code = Some(3);
        r.apply_status(&waiting, Utc::now()).unwrap();
        log.observe(&r, Utc::now());
        assert_eq!(
            kinds(&log),
            vec![
                "state Pending",
                "state Scheduled",
                "state Running",
                "health Starting",
                "state Scheduled",
                "restart 1",
            ]
        );
        let seqs: Vec<u64> = log.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        for want in 1..=6 {
            assert_eq!(follower.try_recv().unwrap().seq, want);
        }
        let e = &log.recent()[2];
        assert_eq!((e.node.as_deref(), e.attempt), (Some("w1"), 1));
    }

    #[test]
    fn the_log_keeps_the_last_events_and_drops_gone_followers() {
        let mut log = EventLog::new(std::iter::empty());
        drop(log.follow());
        for _ in 0..(KEEP + 5) {
            log.observe(&record(), Utc::now());
        }
        assert_eq!(log.recent().len(), KEEP);
        assert_eq!(log.recent()[0].seq, 6);
        assert!(log.followers.is_empty());
    }

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let mut log = EventLog::new(std::iter::empty());
        log.observe(&record(), Utc::now());
        let v = serde_json::to_value(&log.recent()[0]).unwrap();
        assert_eq!(v["kind"], "state");
        assert_eq!(v["to"], "Pending");
        assert_eq!(v["name"], "web");
    }
}
