//! Reconciling the manager's records with what one worker says it holds
//! (at registration, or when the manager restarts). Pure: it changes records
//! and says what the worker must do; the Manager actor persists and sends.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::task::{DesiredState, TaskRecord, TaskState};
use crate::wire::{Assignment, RegistrationReply, TaskStatus};

/// The outcome: the records that changed (to persist) and the worker's orders.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub changed: Vec<Uuid>,
    pub reply: RegistrationReply,
}

pub fn reconcile_node(
    tasks: &mut HashMap<Uuid, TaskRecord>,
    node: &str,
    statuses: &[TaskStatus],
    now: DateTime<Utc>,
) -> Reconciled {
    let mut out = Reconciled::default();
    let mut held = HashSet::new();
    for status in statuses {
        let Some(record) = tasks.get_mut(&status.task_id) else {
            if !status.state.is_terminal() {
                log::warn!(
                    "manager: {node} runs unknown task {}; telling it to stop",
                    status.task_id
                );
                out.reply.stop.push(status.task_id);
            }
            continue;
        };
        let current = record.node.as_deref() == Some(node) && record.attempt == status.attempt;
        if !current {
            if !status.state.is_terminal() {
                log::warn!(
                    "manager: {node} holds attempt {} of task {}, which is at attempt {} on {:?}; telling it to stop",
                    status.attempt,
                    status.task_id,
                    record.attempt,
                    record.node
                );
                out.reply.stop.push(status.task_id);
            }
            continue;
        }
        held.insert(status.task_id);
        match record.apply_status(status, now) {
            Ok(true) => out.changed.push(record.id),
            Ok(false) => {}
            Err(e) => log::warn!("manager: task {}: {e}", record.id),
        }
        if record.desired_state == DesiredState::Stopped && !status.state.is_terminal() {
            out.reply.stop.push(record.id);
        }
    }
    for record in tasks.values_mut() {
        if record.node.as_deref() != Some(node)
            || record.state.is_terminal()
            || held.contains(&record.id)
        {
            continue;
        }
        match (record.state, record.desired_state) {
            (TaskState::Scheduled, DesiredState::Running) => {
                out.reply.assignments.push(Assignment {
                    task_id: record.id,
                    attempt: record.attempt,
                    spec: record.spec.clone(),
                });
            }
            (TaskState::Scheduled, DesiredState::Stopped) => {
                // The worker never got it: stopping it is immediate.
                let status = record.verdict(record.attempt, node, TaskState::Completed, None, now);
                if record.apply_status(&status, now).unwrap_or(false) {
                    out.changed.push(record.id);
                }
            }
            (TaskState::Running, _) => {
                let error = format!("worker {node} no longer knows this task");
                let status =
                    record.verdict(record.attempt, node, TaskState::Failed, Some(error), now);
                if record.apply_status(&status, now).unwrap_or(false) {
                    out.changed.push(record.id);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state_on: Option<&str>) -> TaskRecord {
        let spec =
            crate::task::spec::from_value(serde_json::json!({"name": "t", "image": "i"})).unwrap();
        let mut r = TaskRecord::new(spec, Utc::now());
        if let Some(node) = state_on {
            r.place(node, Utc::now()).unwrap();
        }
        r
    }

    fn status(r: &TaskRecord, node: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: r.id,
            attempt: r.attempt,
            node: node.into(),
            state,
            container_id: Some("c".into()),
            host_ports: Default::default(),
            container_ip: None,
            exit_code: None,
            error: None,
            at: Utc::now(),
            seq: r.status_seq,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
        }
    }

    #[test]
    fn reports_are_applied_and_missing_assignments_resent() {
        let running = record(Some("w1"));
        let unsent = record(Some("w1"));
        let elsewhere = record(Some("w2"));
        let reports = vec![status(&running, "w1", TaskState::Running)];
        let mut tasks: HashMap<_, _> = [&running, &unsent, &elsewhere]
            .into_iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        let out = reconcile_node(&mut tasks, "w1", &reports, Utc::now());
        assert_eq!(out.changed, vec![running.id]);
        assert_eq!(tasks[&running.id].state, TaskState::Running);
        let resent: Vec<_> = out.reply.assignments.iter().map(|a| a.task_id).collect();
        assert_eq!(resent, vec![unsent.id]);
        assert!(out.reply.stop.is_empty());
    }

    #[test]
    fn unknown_stale_and_stopped_tasks_are_stopped() {
        let unknown = record(Some("w1"));
        let mut moved = record(Some("w1"));
        let stale = status(&moved, "w1", TaskState::Running);
        moved.unplace("gone", Utc::now()).unwrap();
        moved.place("w2", Utc::now()).unwrap();
        let mut stopping = record(Some("w1"));
        stopping.request_stop(Utc::now());
        let reports = vec![
            status(&unknown, "w1", TaskState::Running),
            stale,
            status(&stopping, "w1", TaskState::Running),
        ];
        let mut tasks: HashMap<_, _> = [&moved, &stopping]
            .into_iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        let out = reconcile_node(&mut tasks, "w1", &reports, Utc::now());
        assert_eq!(out.reply.stop, vec![unknown.id, moved.id, stopping.id]);
        assert_eq!(tasks[&moved.id].node.as_deref(), Some("w2"));
    }

    #[test]
    fn a_running_task_the_worker_lost_fails_and_an_unsent_stopped_one_completes() {
        let mut lost = record(Some("w1"));
        lost.apply_status(&status(&lost, "w1", TaskState::Running), Utc::now())
            .unwrap();
        let mut unsent_stopped = record(Some("w1"));
        unsent_stopped.request_stop(Utc::now());
        let mut tasks: HashMap<_, _> = [&lost, &unsent_stopped]
            .into_iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        let out = reconcile_node(&mut tasks, "w1", &[], Utc::now());
        assert_eq!(out.changed.len(), 2);
        assert_eq!(tasks[&lost.id].state, TaskState::Failed);
        assert!(
            tasks[&lost.id]
                .error
                .as_deref()
                .unwrap()
                .contains("no longer knows")
        );
        assert_eq!(tasks[&unsent_stopped.id].state, TaskState::Completed);
        assert!(out.reply.assignments.is_empty());
    }
}
