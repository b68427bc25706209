//! What a worker keeps of each task in its own LMDB, so that a restarted
//! worker re-adopts its containers instead of starting copies.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::store::Stored;
use crate::task::TaskState;
use crate::wire::{Assignment, TaskStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerTaskRecord {
    /// Bumped on every change of one attempt's record (a new attempt starts
    /// at 1); the Store never replaces a record by an older one.
    pub version: u64,
    pub assignment: Assignment,
    pub status: TaskStatus,
    /// The manager asked to stop it; a restarted worker finishes the stop.
    pub stop_requested: bool,
}

impl WorkerTaskRecord {
    pub fn new(assignment: Assignment, node: &str) -> Self {
        let status = TaskStatus {
            task_id: assignment.task_id,
            attempt: assignment.attempt,
            node: node.to_string(),
            state: TaskState::Scheduled,
            container_id: None,
            host_ports: Default::default(),
            container_ip: None,
            exit_code: None,
            error: None,
            at: Utc::now(),
            seq: 0,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
        };
        WorkerTaskRecord {
            version: 1,
            assignment,
            status,
            stop_requested: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.status.state.is_terminal()
    }
}

impl Stored for WorkerTaskRecord {
    const TABLE: &'static str = "worker_tasks";
    fn key(&self) -> String {
        self.assignment.task_id.to_string()
    }
    /// A newer attempt always replaces an older one, whatever their
    /// versions; within one attempt, the newer version does.
    fn supersedes(&self, old: &Self) -> bool {
        (self.assignment.attempt, self.version) >= (old.assignment.attempt, old.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(attempt: u32, version: u64) -> WorkerTaskRecord {
        let assignment = Assignment {
            task_id: uuid::Uuid::nil(),
            attempt,
            spec: serde_json::from_value(serde_json::json!({"name": "t", "image": "i"})).unwrap(),
        };
        WorkerTaskRecord {
            version,
            ..WorkerTaskRecord::new(assignment, "n")
        }
    }

    #[test]
    fn a_newer_attempt_supersedes_an_older_one_whatever_the_versions() {
        // Attempt 1 went through several changes; attempt 3 starts at 1.
        assert!(record(3, 1).supersedes(&record(1, 6)));
        assert!(!record(1, 6).supersedes(&record(3, 1)));
        // Within an attempt, the newer version wins (a rewrite is fine).
        assert!(record(3, 2).supersedes(&record(3, 1)));
        assert!(record(3, 2).supersedes(&record(3, 2)));
        assert!(!record(3, 1).supersedes(&record(3, 2)));
    }

    #[actix_rt::test]
    async fn the_store_keeps_the_newer_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::start(dir.path()).unwrap();
        let put = |r| store.send(crate::store::Put(r));
        put(record(1, 6)).await.unwrap().unwrap();
        put(record(3, 1)).await.unwrap().unwrap();
        put(record(2, 9)).await.unwrap().unwrap();
        let stored = store
            .send(crate::store::LoadAll::<WorkerTaskRecord>::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!((stored[0].assignment.attempt, stored[0].version), (3, 1));
    }
}
