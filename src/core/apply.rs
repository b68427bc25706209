//! `apply`: one command, applied to the state at a given time.

use std::collections::HashMap;

use uuid::Uuid;

use super::command::{Command, CoreError, Effect, Now, Reply};
use super::drain::{Lost, drain_node};
use super::join_tokens::JoinTokenRecord;
use super::liveness::{Life, NodeState};
use super::nodes::{NodeRecord, Removal};
use super::place::{place, place_pending};
use super::reconcile::reconcile_node;
use super::services;
use super::state::ClusterState;
use super::tokens::TokenRecord;
use crate::task::{ApplyError, DesiredState, TaskRecord, TaskState};
use crate::wire::{
    Heartbeat, HeartbeatReply, Registration, RegistrationReply, ReportReply, TaskStatus,
};

/// The most ended tasks one tick removes (the rest go on the next ticks),
/// so that a large backlog never makes one huge transaction.
const PRUNE_PER_TICK: usize = 10_000;

/// Applies `command` at `now`. On success the state holds the command's
/// changes, staged for the next commit; on error nothing changed.
pub fn apply(
    state: &mut ClusterState,
    command: Command,
    now: Now,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    let outcome = match command {
        Command::Submit { id, spec, by } => Ok(submit(state, id, spec, by, now)),
        Command::Stop { id, by } => stop(state, id, by, now),
        Command::Report { status } => Ok(report(state, &status, now)),
        Command::Refused {
            id,
            attempt,
            node,
            error,
        } => Ok(refused(state, id, attempt, node, error, now)),
        Command::Register {
            registration,
            generation,
        } => register(state, registration, generation, now),
        Command::RemoveNode { name, by } => remove_node(state, &name, by, now),
        Command::Heartbeat { beat } => Ok((Reply::Beat(heartbeat(state, beat, now)), vec![])),
        Command::Sync { node, statuses } => Ok(sync(state, &node, &statuses, now)),
        Command::Retry => Ok((Reply::Done, place_pending(state, now))),
        Command::Relieve => {
            relieve(state);
            Ok((Reply::Done, vec![]))
        }
        Command::Tick => Ok((Reply::Done, tick(state, now))),
        Command::CreateToken { record } => create_token(state, record),
        Command::RevokeToken { name } => revoke_token(state, &name),
        Command::RotateJoinToken { record } => rotate_join_token(state, record),
        Command::CreateService { id, spec, by } => services::create(state, id, spec, by, now),
        Command::UpdateService { spec, by } => services::update(state, spec, by, now),
        Command::ScaleService { name, replicas, by } => {
            services::scale(state, &name, replicas, by, now)
        }
        Command::RollbackService { name, by } => services::roll_back(state, &name, by, now),
        Command::RemoveService { name, by } => services::remove(state, &name, by, now),
    };
    // Services whose replicas changed (or whose time came) get their look.
    let (reply, mut effects) = outcome?;
    effects.extend(services::converge_touched(state, now));
    Ok((reply, effects))
}

/// A new token; its name must be free (revoke first to replace one).
fn create_token(
    state: &mut ClusterState,
    record: TokenRecord,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    if state.token(&record.name).is_some() {
        return Err(CoreError::Conflict(format!(
            "a token named {:?} exists; revoke it first",
            record.name
        )));
    }
    log::info!(
        "manager: token {} ({}) created by {}",
        record.name,
        record.role,
        record
            .created_by
            .as_deref()
            .unwrap_or("the cluster's first start")
    );
    state.put_token(record.clone());
    Ok((Reply::Token(record), vec![]))
}

/// A join token rotated: the record is the cluster's from now on.
fn rotate_join_token(
    state: &mut ClusterState,
    record: JoinTokenRecord,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    log::info!(
        "manager: the {} join token rotated by {}; the old one is refused",
        record.role,
        record.rotated_by
    );
    state.put_join_token(record.clone());
    Ok((Reply::JoinToken(record), vec![]))
}

fn revoke_token(state: &mut ClusterState, name: &str) -> Result<(Reply, Vec<Effect>), CoreError> {
    if state.token(name).is_none() {
        return Err(CoreError::NoToken(name.to_string()));
    }
    log::info!("manager: token {name} revoked");
    state.remove_token(name);
    Ok((Reply::Done, vec![]))
}

/// Another process registered under this name and is heard from: the
/// Manager asks it who it is before it applies the registration.
pub fn namesake<'a>(state: &'a ClusterState, reg: &Registration) -> Option<&'a NodeRecord> {
    state.node(&reg.name).filter(|node| {
        node.instance != reg.instance
            && state
                .life(&node.name)
                .is_some_and(|l| l.state == NodeState::Ready)
    })
}

fn submit(
    state: &mut ClusterState,
    id: Uuid,
    spec: crate::task::TaskSpec,
    by: Option<String>,
    now: Now,
) -> (Reply, Vec<Effect>) {
    let mut record = TaskRecord::with_id(id, spec, now.at);
    record.submitted_by = by;
    log::debug!(
        "manager: task {id} ({}) accepted, image {}",
        record.name,
        record.spec.image
    );
    state.put_task(record.clone(), now.at);
    let effects = place(state, &[id], now);
    (Reply::Task(record), effects)
}

fn stop(
    state: &mut ClusterState,
    id: Uuid,
    by: Option<String>,
    now: Now,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    let mut record = state.task(&id).cloned().ok_or(CoreError::NotFound(id))?;
    if record.request_stop(now.at) {
        log::info!(
            "manager: task {id} stop requested by token {} (state {})",
            by.as_deref().unwrap_or("-"),
            record.state
        );
        record.stopped_by = by;
        state.put_task(record.clone(), now.at);
    }
    // A down worker may accept the connection and never answer: it is told
    // to stop the task when it registers again.
    let worker = match (&record.node, record.state.is_terminal()) {
        (Some(node), false) if !state.is_down(node) && state.node(node).is_some() => {
            Some(node.clone())
        }
        _ => None,
    };
    let unconfirmed = record.state.is_terminal()
        && record.container_id.is_some()
        && record.node.as_deref().is_some_and(|n| state.is_down(n));
    Ok((
        Reply::Stopping {
            record,
            worker,
            unconfirmed,
        },
        vec![],
    ))
}

/// Applies a worker's report. A report of an attempt that is not the
/// task's current one on that node is answered `stop` while it runs: the
/// worker must not keep a copy the manager no longer counts.
fn report(state: &mut ClusterState, status: &TaskStatus, now: Now) -> (Reply, Vec<Effect>) {
    let live = !status.state.is_terminal();
    let Some(mut record) = state.task(&status.task_id).cloned() else {
        if live {
            log::warn!(
                "manager: {} reports unknown task {}; telling it to stop",
                status.node,
                status.task_id
            );
        }
        return (Reply::Reported(ReportReply { stop: live }), vec![]);
    };
    let before = record.state;
    let mut effects = Vec::new();
    let mut stop = false;
    match record.apply_status(status, now.at) {
        Ok(true) => {
            log_change(&record, before);
            state.put_task(record.clone(), now.at);
            if record.state.is_terminal() && !before.is_terminal() {
                effects.extend(place_pending(state, now));
            }
        }
        Ok(false) => {}
        Err(e @ (ApplyError::StaleAttempt { .. } | ApplyError::WrongNode { .. })) => {
            if live {
                log::warn!(
                    "manager: task {}: {e}; telling {} to stop it",
                    status.task_id,
                    status.node
                );
            }
            stop = live;
        }
        Err(e) => log::warn!("manager: task {} ignores a report: {e}", status.task_id),
    }
    // A stop that reached the worker before the task did: stop it now.
    if !stop
        && record.desired_state == DesiredState::Stopped
        && !record.state.is_terminal()
        && let Some(node) = record.node.clone()
    {
        effects.push(Effect::StopOn {
            node,
            task: record.id,
        });
    }
    (Reply::Reported(ReportReply { stop }), effects)
}

/// A worker refused an assignment: the attempt failed.
fn refused(
    state: &mut ClusterState,
    id: Uuid,
    attempt: u32,
    node: String,
    error: String,
    now: Now,
) -> (Reply, Vec<Effect>) {
    let Some(record) = state.task(&id) else {
        return (Reply::Done, vec![]);
    };
    let status = record.verdict(attempt, &node, TaskState::Failed, Some(error), now.at);
    let (_, effects) = report(state, &status, now);
    (Reply::Done, effects)
}

/// A worker registers with a certificate of its name's `generation`; one
/// older than the name's current generation was issued before the name was
/// removed, and is refused.
fn register(
    state: &mut ClusterState,
    reg: Registration,
    generation: u64,
    now: Now,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    let current = state.node(&reg.name).map_or(0, |n| n.generation);
    if generation < current {
        return Err(CoreError::Revoked(reg.name));
    }
    let node = NodeRecord {
        name: reg.name.clone(),
        address: reg.address.clone(),
        instance: reg.instance,
        capacity: reg.capacity.clone(),
        registered_at: now.at,
        generation,
        removed: None,
    };
    log::info!(
        "manager: worker {} registered from {} ({} cpus, {} MB memory, {} MB disk) holding {} tasks",
        node.name,
        node.address,
        node.capacity.cpus,
        node.capacity.memory_mb,
        node.capacity.disk_mb,
        reg.tasks.len()
    );
    state.put_node(node);
    state
        .lives
        .entry(reg.name.clone())
        .or_insert_with(|| Life::new(now.mono))
        .seen(now.mono, now.at, reg.stats.clone());
    let reply = reconcile(state, &reg.name, &reg.tasks, now);
    let effects = place_pending(state, now);
    Ok((Reply::Registered(reply), effects))
}

/// An admin removes a worker from the cluster: every certificate of its
/// name is refused from now on (the name's generation moves on), it is told
/// to stop its tasks, and they move to other nodes. The record stays,
/// marked removed, to remember the generation: the name may join again
/// later with a new certificate.
fn remove_node(
    state: &mut ClusterState,
    name: &str,
    by: Option<String>,
    now: Now,
) -> Result<(Reply, Vec<Effect>), CoreError> {
    let Some(mut node) = state.member(name).cloned() else {
        return Err(CoreError::NoNode(name.to_string()));
    };
    node.generation = node.generation.saturating_add(1);
    node.removed = Some(Removal {
        at: now.at,
        by: by.clone(),
    });
    log::warn!(
        "manager: worker {name} removed by token {}: its certificates are refused from now on",
        by.as_deref().unwrap_or("-")
    );
    // Told while its certificate is still the one it holds; if it cannot be
    // reached, it stops them itself when the manager refuses it.
    let mut effects: Vec<Effect> = state
        .active_on(name)
        .into_iter()
        .map(|task| Effect::StopOn {
            node: name.to_string(),
            task,
        })
        .collect();
    state.put_node(node);
    state.lives.remove(name);
    drain(state, name, Lost::Removed, now);
    effects.extend(place_pending(state, now));
    Ok((Reply::Done, effects))
}

fn heartbeat(state: &mut ClusterState, beat: Heartbeat, now: Now) -> HeartbeatReply {
    let known = state
        .node(&beat.name)
        .is_some_and(|n| n.instance == beat.instance);
    match state.lives.get_mut(&beat.name) {
        Some(life) if known && life.state == NodeState::Ready => {
            life.seen(now.mono, now.at, beat.stats);
            HeartbeatReply {
                reregister: false,
                managers: Vec::new(),
            }
        }
        _ => HeartbeatReply {
            reregister: true,
            managers: Vec::new(),
        },
    }
}

fn sync(
    state: &mut ClusterState,
    node: &str,
    statuses: &[TaskStatus],
    now: Now,
) -> (Reply, Vec<Effect>) {
    let reply = reconcile(state, node, statuses, now);
    log::info!(
        "manager: synced with {node}: {} to resend, {} to stop",
        reply.assignments.len(),
        reply.stop.len()
    );
    let mut effects: Vec<Effect> = reply
        .assignments
        .into_iter()
        .map(|assignment| Effect::Dispatch {
            node: node.to_string(),
            assignment: Box::new(assignment),
        })
        .collect();
    effects.extend(reply.stop.into_iter().map(|task| Effect::StopOn {
        node: node.to_string(),
        task,
    }));
    effects.extend(place_pending(state, now));
    (Reply::Done, effects)
}

/// Reconciles the records of `node`'s tasks with what its worker holds,
/// staging every changed record; returns the worker's orders.
fn reconcile(
    state: &mut ClusterState,
    node: &str,
    statuses: &[TaskStatus],
    now: Now,
) -> RegistrationReply {
    let mut ids = state.active_on(node);
    ids.extend(statuses.iter().map(|s| s.task_id));
    let mut working: HashMap<Uuid, TaskRecord> = ids
        .into_iter()
        .filter_map(|id| state.task(&id).cloned().map(|t| (id, t)))
        .collect();
    let before: HashMap<Uuid, TaskState> = working.iter().map(|(id, t)| (*id, t.state)).collect();
    let reconciled = reconcile_node(&mut working, node, statuses, now.at);
    for id in reconciled.changed {
        if let Some(record) = working.remove(&id) {
            log_change(&record, before.get(&id).copied().unwrap_or(record.state));
            state.put_task(record, now.at);
        }
    }
    reconciled.reply
}

fn tick(state: &mut ClusterState, now: Now) -> Vec<Effect> {
    let tick = state.watch.tick(&mut state.lives, now.mono);
    let after = state.watch.down_after().as_secs_f64();
    if tick.paused {
        log::warn!(
            "manager: its own clock ran late by more than {after:.1} s (was the process stopped?); every worker gets a fresh {after:.1} s"
        );
    }
    for name in &tick.went_down {
        log::warn!("manager: worker {name} is down (no heartbeat for {after:.1} s)");
    }
    if tick.all_silent && !tick.went_down.is_empty() {
        log::warn!(
            "manager: every worker went silent at once: suspecting the manager's own network; no task is moved until a worker is heard again"
        );
    }
    let mut effects = Vec::new();
    if !tick.drain.is_empty() {
        let silent = Lost::Silent(state.watch.down_after());
        for name in &tick.drain {
            drain(state, name, silent, now);
        }
        effects.extend(place_pending(state, now));
    }
    prune(state, now);
    effects
}

/// Moves the tasks of a lost node (down, or removed): each gets a new
/// attempt on a live node that fits (or stays Pending, saying why). A task
/// the user was stopping ends: its container goes when the node comes back.
fn drain(state: &mut ClusterState, node: &str, why: Lost, now: Now) {
    let mut working: HashMap<Uuid, TaskRecord> = state
        .active_on(node)
        .into_iter()
        .filter_map(|id| state.task(&id).cloned().map(|t| (id, t)))
        .collect();
    let changed = drain_node(&mut working, node, why, now.at);
    log::warn!("manager: moving {} tasks off worker {node}", changed.len());
    for (id, before) in changed {
        if let Some(record) = working.remove(&id) {
            log_change(&record, before);
            state.put_task(record, now.at);
        }
    }
}

/// Removes ended tasks past the retention: the oldest beyond `max_tasks`,
/// and any that ended more than `max_age` ago.
fn prune(state: &mut ClusterState, now: Now) {
    let retention = state.retention;
    let over = state.ended_count().saturating_sub(retention.max_tasks);
    let cutoff = chrono::Duration::from_std(retention.max_age)
        .ok()
        .and_then(|age| now.at.checked_sub_signed(age));
    let doomed: Vec<Uuid> = state
        .ended_oldest_first()
        .enumerate()
        .take_while(|(i, (at, _))| *i < over || cutoff.is_some_and(|c| *at < c))
        .take(PRUNE_PER_TICK)
        .map(|(_, (_, id))| id)
        .collect();
    if doomed.is_empty() {
        return;
    }
    log::info!(
        "manager: removing {} ended tasks past their retention",
        doomed.len()
    );
    for id in doomed {
        state.remove_task(id);
    }
}

/// Removes the older half of the ended tasks (at least one).
fn relieve(state: &mut ClusterState) {
    let ended = state.ended_count();
    let doomed: Vec<Uuid> = state
        .ended_oldest_first()
        .take(ended.div_ceil(2))
        .map(|(_, id)| id)
        .collect();
    log::warn!(
        "manager: the store is full; removing the {} oldest of {ended} ended tasks",
        doomed.len()
    );
    for id in doomed {
        state.remove_task(id);
    }
}

pub(crate) fn log_change(record: &TaskRecord, before: TaskState) {
    let node = record.node.as_deref().unwrap_or("-");
    if before == record.state {
        log::info!(
            "manager: task {} on {node} updated (container {:?}, ports {:?})",
            record.id,
            record.container_id,
            record.host_ports
        );
        return;
    }
    let detail = match (record.exit_code, &record.error) {
        (Some(code), Some(e)) => format!(" (exit code {code}, {e})"),
        (Some(code), None) => format!(" (exit code {code})"),
        (None, Some(e)) => format!(" ({e})"),
        (None, None) => String::new(),
    };
    log::info!(
        "manager: task {} {before} -> {} on {node}{detail}",
        record.id,
        record.state
    );
}
