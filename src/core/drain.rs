//! Taking the tasks off a node that is down. Pure: it changes records and
//! says which; the Manager actor logs, persists and places them again.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::nodes::holds_resources;
use crate::task::{DesiredState, TaskRecord, TaskState};

/// Why a node's tasks move.
#[derive(Debug, Clone, Copy)]
pub enum Lost {
    /// No heartbeat for this long.
    Silent(Duration),
    /// An admin removed the node from the cluster.
    Removed,
}

/// Moves every Scheduled or Running task of `node` back to Pending (the next
/// placement is a new attempt elsewhere), and ends the ones the user was
/// stopping. Returns the changed tasks with the state each had before.
pub fn drain_node(
    tasks: &mut HashMap<Uuid, TaskRecord>,
    node: &str,
    why: Lost,
    now: DateTime<Utc>,
) -> Vec<(Uuid, TaskState)> {
    let (moving, stopped) = match why {
        Lost::Silent(silent_for) => (
            format!(
                "worker {node} is down (no heartbeat for {:.1} s); moving",
                silent_for.as_secs_f64()
            ),
            format!(
                "stopped while worker {node} was down; its container is removed if it comes back"
            ),
        ),
        Lost::Removed => (
            format!("worker {node} was removed from the cluster; moving"),
            format!("stopped as worker {node} was removed from the cluster"),
        ),
    };
    let mut changed = Vec::new();
    for record in tasks.values_mut() {
        if record.node.as_deref() != Some(node) || !holds_resources(record) {
            continue;
        }
        let before = record.state;
        let result = match record.desired_state {
            DesiredState::Running => record.lose(&moving, now),
            DesiredState::Stopped => record.end_on_lost_node(&stopped, now),
        };
        match result {
            Ok(()) => changed.push((record.id, before)),
            Err(e) => log::error!("manager: task {}: {e}", record.id),
        }
    }
    changed.sort_by_key(|(id, _)| *id);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TaskStatus;

    fn placed(node: &str, running: bool) -> TaskRecord {
        let spec =
            crate::task::spec::from_value(serde_json::json!({"name": "t", "image": "i"})).unwrap();
        let mut r = TaskRecord::new(spec, Utc::now());
        r.place(node, Utc::now()).unwrap();
        if running {
            let status = TaskStatus {
                task_id: r.id,
                attempt: r.attempt,
                node: node.into(),
                state: TaskState::Running,
                container_id: Some("c".into()),
                host_ports: [(80, 32000)].into(),
                container_ip: None,
                exit_code: None,
                error: None,
                at: Utc::now(),
                seq: 1,
                restart_count: 0,
                started_at: None,
                next_restart_at: None,
                health: None,
            };
            r.apply_status(&status, Utc::now()).unwrap();
        }
        r
    }

    #[test]
    fn tasks_of_the_down_node_go_back_to_pending_and_others_stay() {
        let running = placed("w1", true);
        let scheduled = placed("w1", false);
        let mut stopping = placed("w1", true);
        stopping.request_stop(Utc::now());
        let mut ended = placed("w1", true);
        ended.lose("x", Utc::now()).unwrap();
        ended.request_stop(Utc::now());
        let elsewhere = placed("w2", true);
        let mut tasks: HashMap<_, _> = [&running, &scheduled, &stopping, &ended, &elsewhere]
            .into_iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        let changed = drain_node(
            &mut tasks,
            "w1",
            Lost::Silent(Duration::from_secs(3)),
            Utc::now(),
        );
        let mut expected = vec![
            (running.id, TaskState::Running),
            (scheduled.id, TaskState::Scheduled),
            (stopping.id, TaskState::Running),
        ];
        expected.sort_by_key(|(id, _)| *id);
        assert_eq!(changed, expected);

        let r = &tasks[&running.id];
        assert_eq!((r.state, r.node.as_deref()), (TaskState::Pending, None));
        assert_eq!(r.attempt, 1, "the next placement makes attempt 2");
        assert!(r.host_ports.is_empty() && r.container_id.is_none());
        assert_eq!(
            r.error.as_deref(),
            Some("worker w1 is down (no heartbeat for 3.0 s); moving")
        );
        assert_eq!(tasks[&scheduled.id].state, TaskState::Pending);
        let s = &tasks[&stopping.id];
        assert_eq!(s.state, TaskState::Completed);
        assert!(
            s.error
                .as_deref()
                .unwrap()
                .contains("stopped while worker w1")
        );
        assert_eq!(tasks[&ended.id], ended);
        assert_eq!(tasks[&elsewhere.id], elsewhere);
    }
}
