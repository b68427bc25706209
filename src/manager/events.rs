//! The manager's event log: every change of a task that users watch (its
//! state, a restart, its health), in order, numbered once the record that
//! holds it is committed. The log keeps the last [`KEEP`] events for
//! `GET /events` and hands each new one to the followers of
//! `GET /events?follow=true`. Events are derived in `core::events`.

use std::collections::VecDeque;

use tokio::sync::mpsc;

pub use crate::core::events::{Event, EventDraft, EventKind};

/// Events kept for a reader who does not follow.
pub const KEEP: usize = 1000;
/// Events a follower may fall behind by before it is dropped.
const FOLLOWER_BUFFER: usize = 1024;

pub struct EventLog {
    recent: VecDeque<Event>,
    next_seq: u64,
    followers: Vec<mpsc::Sender<Event>>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            recent: VecDeque::new(),
            next_seq: 1,
            followers: Vec::new(),
        }
    }
}

impl EventLog {
    /// Numbers committed events, keeps them, and sends them to followers.
    pub fn publish(&mut self, drafts: Vec<EventDraft>) {
        for draft in drafts {
            let event = draft.numbered(self.next_seq);
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
    use crate::task::{TaskRecord, TaskState};
    use chrono::Utc;

    fn draft() -> EventDraft {
        let spec = crate::task::spec::from_value(serde_json::json!({"name": "web", "image": "i"}))
            .unwrap();
        let r = TaskRecord::new(spec, Utc::now());
        let kind = EventKind::State {
            from: None,
            to: TaskState::Pending,
            error: None,
            exit_code: None,
            by: None,
        };
        EventDraft::new(&r, kind, Utc::now())
    }

    #[test]
    fn published_events_are_numbered_in_order_and_followed() {
        let mut log = EventLog::default();
        let mut follower = log.follow();
        log.publish(vec![draft(), draft(), draft()]);
        let seqs: Vec<u64> = log.recent().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        for want in 1..=3 {
            assert_eq!(follower.try_recv().unwrap().seq, want);
        }
    }

    #[test]
    fn the_log_keeps_the_last_events_and_drops_gone_followers() {
        let mut log = EventLog::default();
        drop(log.follow());
        for _ in 0..(KEEP + 5) {
            log.publish(vec![draft()]);
        }
        assert_eq!(log.recent().len(), KEEP);
        assert_eq!(log.recent()[0].seq, 6);
        assert!(log.followers.is_empty());
    }

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let mut log = EventLog::default();
        log.publish(vec![draft()]);
        let v = serde_json::to_value(&log.recent()[0]).unwrap();
        assert_eq!(v["kind"], "state");
        assert_eq!(v["to"], "Pending");
        assert_eq!(v["name"], "web");
    }
}
