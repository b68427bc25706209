//! The task record: the spec plus what the system learned about it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::spec::TaskSpec;
use super::state::{IllegalTransition, TaskState, check_transition};
use super::status::{Health, TaskStatus};

/// What the user wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: Uuid,
    pub name: String,
    pub state: TaskState,
    pub desired_state: DesiredState,
    /// The node of the current attempt.
    pub node: Option<String>,
    /// Placement attempt: 0 until placed, then 1, 2, ...
    pub attempt: u32,
    pub container_id: Option<String>,
    /// Container port -> host port.
    pub host_ports: BTreeMap<u16, u16>,
    /// The container's address on its node's network, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_ip: Option<std::net::IpAddr>,
    /// Restarts of the current attempt's container by its restart policy.
    pub restart_count: u32,
    /// When the current container started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// While waiting to restart: when the restart is due.
    #[serde(default)]
    pub next_restart_at: Option<DateTime<Utc>>,
    /// The health check's view of the running container.
    #[serde(default)]
    pub health: Option<Health>,
    /// The last exit code of the task's container (kept across restarts).
    pub exit_code: Option<i64>,
    /// Why the task is where it is, when that is not obvious (last error,
    /// or why it is still Pending).
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped on every change; the Store never replaces a record by an older one.
    pub version: u64,
    /// The `seq` of the last status applied for the current attempt.
    #[serde(default)]
    pub status_seq: u64,
    /// The token that submitted the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The token that stopped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// The service this task is a replica of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its slot in the service (1, 2, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// The version of the service's spec it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_version: Option<u64>,
    /// The id of the service (a service made again under the same name has
    /// another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<Uuid>,
    pub spec: TaskSpec,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error("report for attempt {reported} on {node}, but the task is at attempt {current}")]
    StaleAttempt {
        reported: u32,
        current: u32,
        node: String,
    },
    #[error("report from node {reported}, but the task is placed on {expected:?}")]
    WrongNode {
        reported: String,
        expected: Option<String>,
    },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

impl TaskRecord {
    /// A new task with a fresh random id.
    pub fn new(spec: TaskSpec, now: DateTime<Utc>) -> Self {
        Self::with_id(Uuid::new_v4(), spec, now)
    }

    /// A new task with the id its submitter chose.
    pub fn with_id(id: Uuid, spec: TaskSpec, now: DateTime<Utc>) -> Self {
        TaskRecord {
            id,
            name: spec.name.clone(),
            state: TaskState::Pending,
            desired_state: DesiredState::Running,
            node: None,
            attempt: 0,
            container_id: None,
            host_ports: BTreeMap::new(),
            container_ip: None,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
            exit_code: None,
            error: None,
            created_at: now,
            updated_at: now,
            version: 1,
            status_seq: 0,
            submitted_by: None,
            stopped_by: None,
            service: None,
            slot: None,
            service_version: None,
            service_id: None,
            spec,
        }
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        self.updated_at = now;
        self.version += 1;
    }

    fn transition(&mut self, to: TaskState) -> Result<(), IllegalTransition> {
        check_transition(self.state, to)?;
        self.state = to;
        Ok(())
    }

    /// Pending -> Scheduled on `node`, as a new attempt.
    pub fn place(&mut self, node: &str, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(TaskState::Scheduled)?;
        self.node = Some(node.to_string());
        self.attempt += 1;
        self.status_seq = 0;
        self.restart_count = 0;
        self.started_at = None;
        self.next_restart_at = None;
        self.health = None;
        self.container_id = None;
        self.host_ports.clear();
        self.container_ip = None;
        self.error = None;
        self.touch(now);
        Ok(())
    }

    /// Records why a Pending task could not be placed. Returns whether the
    /// record changed.
    pub fn note_unplaceable(&mut self, reason: &str, now: DateTime<Utc>) -> bool {
        if self.error.as_deref() == Some(reason) {
            return false;
        }
        self.error = Some(reason.to_string());
        self.touch(now);
        true
    }

    /// Scheduled -> Pending: the chosen node refused the task.
    pub fn unplace(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(TaskState::Pending)?;
        self.node = None;
        self.error = Some(reason.to_string());
        self.touch(now);
        Ok(())
    }

    /// Scheduled | Running -> Pending: its node was lost. The attempt on
    /// that node is over (a report from it is stale from now on); the next
    /// placement is a new attempt.
    pub fn lose(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.transition(TaskState::Pending)?;
        self.node = None;
        self.container_id = None;
        self.host_ports.clear();
        self.container_ip = None;
        self.exit_code = None;
        self.started_at = None;
        self.next_restart_at = None;
        self.health = None;
        self.error = Some(reason.to_string());
        self.touch(now);
        Ok(())
    }

    /// A task the user was stopping, whose node was lost, ends Completed
    /// (its container is removed if the node comes back).
    pub fn end_on_lost_node(
        &mut self,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        self.transition(TaskState::Completed)?;
        self.host_ports.clear();
        self.container_ip = None;
        self.error = Some(reason.to_string());
        self.touch(now);
        Ok(())
    }

    /// The user asked to stop the task. A task that never reached a node ends
    /// here (Completed); one on a node ends when its worker reports.
    /// Returns whether the record changed.
    pub fn request_stop(&mut self, now: DateTime<Utc>) -> bool {
        if self.state.is_terminal() || self.desired_state == DesiredState::Stopped {
            return false;
        }
        self.desired_state = DesiredState::Stopped;
        if self.state == TaskState::Pending {
            // Pending -> Completed is in the table; it cannot fail.
            let _ = self.transition(TaskState::Completed);
            self.error = None;
        }
        self.touch(now);
        true
    }

    /// A status the manager decides for attempt `attempt` on `node` when no
    /// worker said it (the worker refused the attempt, or no longer holds
    /// it): applied like a report, at the last `seq` applied.
    pub fn verdict(
        &self,
        attempt: u32,
        node: &str,
        state: TaskState,
        error: Option<String>,
        at: DateTime<Utc>,
    ) -> TaskStatus {
        TaskStatus {
            task_id: self.id,
            attempt,
            node: node.to_string(),
            state,
            container_id: self.container_id.clone(),
            host_ports: Default::default(),
            container_ip: None,
            exit_code: None,
            error,
            at,
            seq: self.status_seq,
            restart_count: self.restart_count,
            started_at: None,
            next_restart_at: None,
            health: None,
        }
    }

    /// Applies a worker's report. Reports of other attempts or nodes are
    /// refused; one older than the last applied (a lower `seq`) is ignored;
    /// a report in the current state only updates the details.
    /// Returns whether the record changed.
    pub fn apply_status(
        &mut self,
        status: &TaskStatus,
        now: DateTime<Utc>,
    ) -> Result<bool, ApplyError> {
        if status.attempt != self.attempt {
            return Err(ApplyError::StaleAttempt {
                reported: status.attempt,
                current: self.attempt,
                node: status.node.clone(),
            });
        }
        if self.node.as_deref() != Some(status.node.as_str()) {
            return Err(ApplyError::WrongNode {
                reported: status.node.clone(),
                expected: self.node.clone(),
            });
        }
        if status.seq < self.status_seq {
            return Ok(false);
        }
        let before = (
            self.state,
            self.container_id.clone(),
            self.host_ports.clone(),
            self.container_ip,
            self.exit_code,
            self.error.clone(),
            (self.restart_count, self.started_at, self.next_restart_at),
            self.health.clone(),
        );
        if status.state != self.state {
            self.transition(status.state)?;
        }
        // A task waiting to restart has no container.
        if status.container_id.is_some() || status.state == TaskState::Scheduled {
            self.container_id = status.container_id.clone();
        }
        if !status.host_ports.is_empty() || status.state != TaskState::Running {
            self.host_ports = status.host_ports.clone();
        }
        // Always the latest report's: an address the container may have
        // lost is never kept.
        self.container_ip = status.container_ip;
        self.exit_code = status.exit_code;
        self.error = status.error.clone();
        self.status_seq = status.seq;
        self.restart_count = status.restart_count;
        self.started_at = status.started_at;
        self.next_restart_at = status.next_restart_at;
        self.health = status.health.clone();
        let after = (
            self.state,
            self.container_id.clone(),
            self.host_ports.clone(),
            self.container_ip,
            self.exit_code,
            self.error.clone(),
            (self.restart_count, self.started_at, self.next_restart_at),
            self.health.clone(),
        );
        let changed = before != after;
        if changed {
            self.touch(now);
        }
        Ok(changed)
    }
}

impl crate::store::Stored for TaskRecord {
    const TABLE: &'static str = "tasks";
    fn key(&self) -> String {
        self.id.to_string()
    }
    fn supersedes(&self, old: &Self) -> bool {
        self.version >= old.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        crate::task::spec::from_value(serde_json::json!({"name": "t", "image": "i"})).unwrap()
    }

    fn status(rec: &TaskRecord, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: rec.id,
            attempt: rec.attempt,
            node: rec.node.clone().unwrap_or_default(),
            state,
            container_id: Some("c1".into()),
            host_ports: BTreeMap::from([(80, 32768)]),
            container_ip: None,
            exit_code: None,
            error: None,
            at: Utc::now(),
            seq: rec.status_seq + 1,
            restart_count: 0,
            started_at: None,
            next_restart_at: None,
            health: None,
        }
    }

    #[test]
    fn a_task_runs_and_ends() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        assert_eq!((r.state, r.attempt, r.version), (TaskState::Pending, 0, 1));
        r.place("w1", now).unwrap();
        assert_eq!((r.state, r.attempt), (TaskState::Scheduled, 1));
        assert!(
            r.apply_status(&status(&r, TaskState::Running), now)
                .unwrap()
        );
        assert_eq!(r.container_id.as_deref(), Some("c1"));
        assert_eq!(r.host_ports[&80], 32768);
        // the same report again changes nothing
        assert!(
            !r.apply_status(&status(&r, TaskState::Running), now)
                .unwrap()
        );
        let mut done = status(&r, TaskState::Failed);
        done.exit_code = Some(3);
        done.host_ports.clear();
        assert!(r.apply_status(&done, now).unwrap());
        assert_eq!((r.state, r.exit_code), (TaskState::Failed, Some(3)));
        assert!(r.host_ports.is_empty());
        // a terminal task does not come back
        let err = r
            .apply_status(&status(&r, TaskState::Running), now)
            .unwrap_err();
        assert!(matches!(err, ApplyError::Illegal(_)));
        assert_eq!(r.state, TaskState::Failed);
    }

    #[test]
    fn stale_or_foreign_reports_are_refused() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        r.place("w1", now).unwrap();
        let mut old = status(&r, TaskState::Running);
        old.attempt = 0;
        assert!(matches!(
            r.apply_status(&old, now),
            Err(ApplyError::StaleAttempt { .. })
        ));
        let mut other = status(&r, TaskState::Running);
        other.node = "w2".into();
        assert!(matches!(
            r.apply_status(&other, now),
            Err(ApplyError::WrongNode { .. })
        ));
        assert_eq!(r.state, TaskState::Scheduled);
    }

    #[test]
    fn a_late_older_status_does_not_overwrite_a_newer_one() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        r.place("w1", now).unwrap();
        let mut first = status(&r, TaskState::Scheduled);
        first.seq = 0;
        first.error = None;
        let mut waiting = status(&r, TaskState::Scheduled);
        waiting.seq = 1;
        waiting.error = Some("waiting for the container engine".into());
        // The report of the later change arrives before the earlier answer.
        assert!(r.apply_status(&waiting, now).unwrap());
        assert!(!r.apply_status(&first, now).unwrap());
        assert_eq!(r.error.as_deref(), Some("waiting for the container engine"));
        // A new attempt starts counting again.
        r.lose("node lost", now).unwrap();
        r.place("w2", now).unwrap();
        assert_eq!(r.status_seq, 0);
        assert!(
            r.apply_status(&status(&r, TaskState::Running), now)
                .unwrap()
        );
    }

    #[test]
    fn stopping_a_pending_task_completes_it() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        assert!(r.request_stop(now));
        assert_eq!(r.state, TaskState::Completed);
        assert!(!r.request_stop(now));
    }

    #[test]
    fn stopping_a_placed_task_waits_for_the_worker() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        r.place("w1", now).unwrap();
        assert!(r.request_stop(now));
        assert_eq!(
            (r.state, r.desired_state),
            (TaskState::Scheduled, DesiredState::Stopped)
        );
    }

    #[test]
    fn a_task_on_a_lost_node_goes_back_to_pending_and_its_old_attempt_is_stale() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        r.place("w1", now).unwrap();
        let running = status(&r, TaskState::Running);
        r.apply_status(&running, now).unwrap();
        r.lose("node w1 is down", now).unwrap();
        assert_eq!((r.state, r.node.as_deref()), (TaskState::Pending, None));
        assert_eq!(r.container_id, None);
        assert!(r.host_ports.is_empty());
        assert_eq!(r.error.as_deref(), Some("node w1 is down"));
        r.place("w2", now).unwrap();
        assert_eq!(r.attempt, 2);
        // The old attempt's reports are refused.
        assert!(matches!(
            r.apply_status(&running, now),
            Err(ApplyError::StaleAttempt { .. })
        ));
        // A task that ended is not lost.
        let mut done = TaskRecord::new(spec(), now);
        done.place("w1", now).unwrap();
        done.apply_status(&status(&done, TaskState::Failed), now)
            .unwrap();
        assert!(done.lose("node w1 is down", now).is_err());
    }

    #[test]
    fn every_change_bumps_the_version() {
        let now = Utc::now();
        let mut r = TaskRecord::new(spec(), now);
        let v = r.version;
        assert!(r.note_unplaceable("no node", now));
        assert!(!r.note_unplaceable("no node", now));
        r.place("w1", now).unwrap();
        r.unplace("refused", now).unwrap();
        assert_eq!(r.version, v + 3);
        assert_eq!(r.node, None);
    }
}
