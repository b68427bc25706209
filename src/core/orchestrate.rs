//! What to do about one service, given its record and its tasks: pure.
//!
//! Every slot `1..=replicas` should hold one live replica (desired Running,
//! not ended) of the service's version; replicas above `replicas` are
//! stopped (highest slots, all of them). A slot left empty (its replica
//! ended for good, was stopped behind Cube's back, or never started) gets a
//! new replica, after a back-off when the slot's last replicas failed. An
//! update in progress replaces `parallelism` slots at a time: start-first
//! starts the new replica and stops the old one once the new one counts
//! (running, and healthy if it has a health check, or running `monitor_s`
//! without one); stop-first stops the old one first. A new replica that
//! fails (exits, restarts, turns unhealthy, or is not running within
//! `monitor_s`) fails the update. Old ended replicas of a slot are
//! forgotten beyond the newest few.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::service::record::{ServiceRecord, UpdateState, UpdateStatus};
use crate::service::spec::UpdateOrder;
use crate::task::status::HealthState;
use crate::task::{DesiredState, TaskRecord, TaskState};

/// Ended replicas kept per slot (the rest are forgotten); the failures in
/// a row the back-off counts are among them.
pub const KEEP_ENDED: usize = 5;
/// The first wait before a slot whose replica failed gets a new one,
/// doubled for every failure in a row, up to [`BACKOFF_MAX`] (reached at
/// the [`KEEP_ENDED`]th).
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(16);

/// What the service needs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Slots that get a new replica of the service's current version.
    pub start: Vec<u32>,
    /// Live replicas to stop, and why.
    pub stop: Vec<(Uuid, String)>,
    /// Ended replicas to forget.
    pub forget: Vec<Uuid>,
    /// The update's new status, when it changed.
    pub update: Option<UpdateStatus>,
    /// The update failed and goes back to the previous version: why.
    pub roll_back: Option<String>,
    /// When the service needs another look though none of its tasks changed
    /// (a back-off or a monitor period ends).
    pub wake_at: Option<DateTime<Utc>>,
    /// Slots waiting out a back-off, and why.
    pub waiting: BTreeMap<u32, String>,
}

impl Plan {
    fn wake(&mut self, at: DateTime<Utc>) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

fn live(t: &TaskRecord) -> bool {
    t.desired_state == DesiredState::Running && !t.state.is_terminal()
}

fn secs(s: u32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(s))
}

/// Whether a replica counts as one of the service's: running, and healthy
/// when it has a health check.
pub fn healthy(t: &TaskRecord) -> bool {
    t.state == TaskState::Running
        && t.next_restart_at.is_none()
        && match &t.spec.health {
            Some(_) => t
                .health
                .as_ref()
                .is_some_and(|h| h.state == HealthState::Healthy),
            None => true,
        }
}

/// Whether a new replica has proved itself: healthy, and, without a
/// health check, running for `monitor` already.
fn proven(t: &TaskRecord, monitor: chrono::Duration, now: DateTime<Utc>) -> bool {
    healthy(t) && (t.spec.health.is_some() || t.started_at.is_some_and(|s| now - s >= monitor))
}

/// When a proven replica proved itself: its health check's last pass, or
/// `monitor` after it started.
fn proven_at(t: &TaskRecord, monitor: chrono::Duration) -> Option<DateTime<Utc>> {
    match &t.spec.health {
        Some(_) => t.health.as_ref().and_then(|h| h.checked_at),
        None => t.started_at.map(|s| s + monitor),
    }
}

/// Why a replica started by the update fails it, if it does.
fn failure(t: &TaskRecord, monitor: chrono::Duration, now: DateTime<Utc>) -> Option<String> {
    let slot = t.slot.unwrap_or(0);
    if t.state == TaskState::Failed
        || (t.state.is_terminal()
            && t.stopped_by.is_none()
            && t.desired_state == DesiredState::Running)
    {
        return Some(format!(
            "the new replica of slot {slot} ended ({}{})",
            t.state,
            t.exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default()
        ));
    }
    if !live(t) {
        return None;
    }
    if t.restart_count > 0 || t.next_restart_at.is_some() {
        return Some(format!(
            "the new replica of slot {slot} exited{} and was restarted",
            t.exit_code
                .map(|c| format!(" with code {c}"))
                .unwrap_or_default()
        ));
    }
    if t.health
        .as_ref()
        .is_some_and(|h| h.state == HealthState::Unhealthy)
    {
        return Some(format!("the new replica of slot {slot} is unhealthy"));
    }
    if t.state != TaskState::Running && now - t.created_at >= monitor {
        return Some(format!(
            "the new replica of slot {slot} was not running within {} s{}",
            monitor.num_seconds(),
            t.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    None
}

/// The wait before a slot gets a new replica after `failures` failed in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

/// What `service` needs, given its tasks (every task of the service, live
/// or ended), at `now`.
pub fn converge(service: &ServiceRecord, tasks: &[&TaskRecord], now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    let spec = &service.spec;
    let version = service.version;
    let monitor = secs(spec.update.monitor_s);
    let mut slots: BTreeMap<u32, Vec<&TaskRecord>> = BTreeMap::new();
    for t in tasks {
        if let Some(slot) = t.slot {
            slots.entry(slot).or_default().push(t);
        }
    }

    // Forget the oldest ended replicas of every slot.
    for replicas in slots.values() {
        let mut ended: Vec<&&TaskRecord> = replicas.iter().filter(|t| !live(t)).collect();
        ended.sort_by_key(|t| std::cmp::Reverse((t.updated_at, t.id)));
        plan.forget.extend(
            ended
                .iter()
                .skip(KEEP_ENDED)
                .filter(|t| t.state.is_terminal())
                .map(|t| t.id),
        );
    }

    // Scaled down: every live replica above `replicas` stops.
    for (slot, replicas) in slots.range(spec.replicas.saturating_add(1)..) {
        for t in replicas.iter().filter(|t| live(t)) {
            plan.stop.push((
                t.id,
                format!(
                    "service {} scaled to {} (slot {slot})",
                    spec.name, spec.replicas
                ),
            ));
        }
    }

    // The update: has a new replica failed it?
    let mut update = service.update.clone();
    if let Some(u) = update.as_mut().filter(|u| u.state.in_progress()) {
        let failed = tasks
            .iter()
            .filter(|t| t.service_version == Some(version) && t.created_at >= u.started_at)
            .filter(|t| t.slot.is_some_and(|s| s <= spec.replicas))
            .find_map(|t| failure(t, monitor, now));
        if let Some(why) = failed {
            let rollback = u.state == UpdateState::Updating
                && spec.update.failure_action == crate::service::FailureAction::Rollback
                && service.previous.is_some();
            if rollback {
                plan.roll_back = Some(why);
                return plan;
            }
            u.state = UpdateState::Paused;
            u.ended_at = Some(now);
            u.message = Some(why);
        }
    }
    let updating = update.as_ref().is_some_and(|u| u.state.in_progress());

    let mut in_flight = 0usize;
    let mut outdated: Vec<u32> = Vec::new();
    for slot in 1..=spec.replicas {
        let replicas = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
        let (current, old): (Vec<&&TaskRecord>, Vec<&&TaskRecord>) = replicas
            .iter()
            .filter(|t| live(t))
            .partition(|t| t.service_version == Some(version));
        if current.is_empty() && old.is_empty() {
            // An empty slot: a new replica, unless its last ones failed
            // and the back-off has not passed.
            let mut ended: Vec<&&TaskRecord> = replicas.iter().collect();
            ended.sort_by_key(|t| std::cmp::Reverse((t.updated_at, t.id)));
            let failures = ended
                .iter()
                .take_while(|t| t.state == TaskState::Failed)
                .count() as u32;
            if let Some(last) = ended.first().filter(|_| failures > 0) {
                let wait = chrono::Duration::from_std(backoff(failures)).unwrap_or_default();
                let due = last.updated_at + wait;
                if now < due {
                    plan.waiting.insert(
                        slot,
                        format!(
                            "its replica failed {failures} time(s) in a row{}; the next starts in {:.1} s",
                            last.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
                            (due - now).num_milliseconds() as f64 / 1000.0
                        ),
                    );
                    plan.wake(due);
                    continue;
                }
            }
            plan.start.push(slot);
            if updating {
                in_flight += 1;
            }
            continue;
        }
        if current.is_empty() {
            outdated.push(slot);
            continue;
        }
        // Keep the first replica of the version that counts (or the oldest);
        // a second of the version is a leftover.
        let mut current = current;
        current.sort_by_key(|t| (!proven(t, monitor, now), t.created_at, t.id));
        for extra in &current[1..] {
            plan.stop
                .push((extra.id, format!("slot {slot} holds another replica")));
        }
        let keeper = current[0];
        if proven(keeper, monitor, now) {
            // A slot of the update is done when its new replica proves
            // itself (the next starts `delay_s` after).
            if let Some(u) = update.as_mut().filter(|u| u.state.in_progress())
                && keeper.created_at >= u.started_at
                && let Some(at) = proven_at(keeper, monitor)
                && u.last_done_at.is_none_or(|d| d < at)
            {
                u.last_done_at = Some(at);
            }
            for t in &old {
                plan.stop.push((
                    t.id,
                    format!("replaced by version {version} in slot {slot}"),
                ));
            }
        } else {
            if updating && keeper.created_at >= update.as_ref().map_or(now, |u| u.started_at) {
                in_flight += 1;
            }
            // It may count once it has run `monitor`; and fails if it is
            // not running by then.
            let since = keeper.started_at.unwrap_or(keeper.created_at);
            plan.wake((since + monitor).max(keeper.created_at + monitor));
        }
    }

    if let Some(u) = update.as_mut().filter(|u| u.state.in_progress()) {
        if outdated.is_empty() && in_flight == 0 {
            u.state = match u.state {
                UpdateState::RollingBack => UpdateState::RolledBack,
                _ => UpdateState::Completed,
            };
            u.ended_at = Some(now);
        } else {
            let ready_at = u
                .last_done_at
                .map(|d| d + secs(spec.update.delay_s))
                .filter(|_| spec.update.delay_s > 0);
            match ready_at {
                Some(at) if now < at => plan.wake(at),
                _ => {
                    let room = (spec.update.parallelism as usize).saturating_sub(in_flight);
                    for slot in outdated.into_iter().take(room) {
                        if spec.update.order == UpdateOrder::StopFirst {
                            for t in slots[&slot].iter().filter(|t| live(t)) {
                                plan.stop.push((
                                    t.id,
                                    format!("updating slot {slot} to version {version}"),
                                ));
                            }
                        }
                        plan.start.push(slot);
                    }
                }
            }
        }
    }
    if !plan.start.is_empty() {
        // The new replicas must run within `monitor` (and may count then):
        // a look at that time even if none of them ever changes.
        plan.wake(now + monitor);
    }
    if update != service.update {
        plan.update = update;
    }
    plan
}
