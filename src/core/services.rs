//! The service commands, and the glue between the orchestrator's plans
//! (`orchestrate.rs`, pure over one service) and the state: replicas made,
//! stopped and forgotten, the update's progress, wake-up times.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::command::{CoreError, Effect, Now, Reply};
use super::orchestrate::{self, Plan};
use super::place::place;
use super::state::ClusterState;
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::service::endpoints::host_of;
use crate::service::{
    Endpoint, EndpointTable, Endpoints, ServiceRecord, ServiceSpec, ServiceView, SlotWait,
};
use crate::task::{DesiredState, TaskRecord, TaskState};

/// Environment every replica gets (set by Cube; a spec's own value of
/// these is replaced).
pub const REPLICA_ENV: [&str; 3] = ["CUBE_SERVICE", "CUBE_SLOT", "CUBE_TASK_ID"];

type Outcome = Result<(Reply, Vec<Effect>), CoreError>;

pub fn create(
    state: &mut ClusterState,
    id: Uuid,
    spec: ServiceSpec,
    by: Option<String>,
    now: Now,
) -> Outcome {
    if state.service(&spec.name).is_some() {
        return Err(CoreError::Conflict(format!(
            "a service named {:?} exists",
            spec.name
        )));
    }
    published_elsewhere(state, &spec)?;
    let name = spec.name.clone();
    let replicas = spec.replicas;
    let record = ServiceRecord::new(id, spec, by.clone(), now.at);
    state.put_service(record);
    state.service_event(
        &name,
        format!(
            "created with {replicas} replicas by token {}",
            by.as_deref().unwrap_or("-")
        ),
        now.at,
    );
    // Converged with the services this command touched, in `apply`.
    Ok((Reply::Service(service(state, &name)?), vec![]))
}

/// A new spec for a service: a rolling update to it (the same spec: no
/// change).
pub fn update(
    state: &mut ClusterState,
    spec: ServiceSpec,
    by: Option<String>,
    now: Now,
) -> Outcome {
    let mut record = service(state, &spec.name)?;
    let name = spec.name.clone();
    if record.spec == spec {
        return Ok((Reply::Service(record), vec![]));
    }
    published_elsewhere(state, &spec)?;
    let from = record.version;
    record.update_to(spec, now.at);
    let to = record.version;
    state.put_service(record);
    state.service_event(
        &name,
        format!(
            "update from version {from} to {to} started by token {}",
            by.as_deref().unwrap_or("-")
        ),
        now.at,
    );
    // Converged with the services this command touched, in `apply`.
    Ok((Reply::Service(service(state, &name)?), vec![]))
}

/// A new number of replicas (no new version: the replicas added run the
/// current spec; those removed are the highest slots).
pub fn scale(
    state: &mut ClusterState,
    name: &str,
    replicas: u32,
    by: Option<String>,
    now: Now,
) -> Outcome {
    let mut record = service(state, name)?;
    let before = record.spec.replicas;
    if before != replicas {
        record.spec.replicas = replicas;
        record.updated_at = now.at;
        // The previous spec scales with it: a rollback restores the task,
        // not the count.
        if let Some(previous) = record.previous.as_mut() {
            previous.spec.replicas = replicas;
        }
        state.put_service(record);
        state.service_event(
            name,
            format!(
                "scaled from {before} to {replicas} replicas by token {}",
                by.as_deref().unwrap_or("-")
            ),
            now.at,
        );
    }
    Ok((Reply::Service(service(state, name)?), vec![]))
}

pub fn roll_back(state: &mut ClusterState, name: &str, by: Option<String>, now: Now) -> Outcome {
    let mut record = service(state, name)?;
    let from = record.version;
    let why = format!("rollback asked by token {}", by.as_deref().unwrap_or("-"));
    if !record.roll_back(Some(why.clone()), now.at) {
        return Err(CoreError::Conflict(format!(
            "service {name} has no previous version to roll back to"
        )));
    }
    let to = record.version;
    state.put_service(record);
    state.service_event(
        name,
        format!("rolling back from version {from} to {to}: {why}"),
        now.at,
    );
    Ok((Reply::Service(service(state, name)?), vec![]))
}

/// Removes a service: every replica is stopped.
pub fn remove(state: &mut ClusterState, name: &str, by: Option<String>, now: Now) -> Outcome {
    let record = service(state, name)?;
    let live: Vec<Uuid> = state
        .service_tasks(&record)
        .into_iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.id)
        .collect();
    let drain = drain_of(&record);
    let effects = stop_all(state, &live, "its service was removed", drain, now);
    state.remove_service(name);
    state.service_event(
        name,
        format!(
            "removed by token {}: {} replicas stopping",
            by.as_deref().unwrap_or("-"),
            live.len()
        ),
        now.at,
    );
    Ok((Reply::Service(record), effects))
}

/// The replicas of a service a client may be sent to: desired running,
/// running, healthy (or without a health check), on a member node; with
/// the ports the service exposes.
pub fn endpoints(state: &ClusterState, record: &ServiceRecord) -> Endpoints {
    let mut out: Vec<Endpoint> = state
        .service_tasks(record)
        .into_iter()
        .filter(|t| t.desired_state == DesiredState::Running && orchestrate::healthy(t))
        .filter_map(|t| {
            let node = t.node.as_ref()?;
            let member = state.member(node)?;
            Some(Endpoint {
                task: t.id,
                slot: t.slot.unwrap_or(0),
                node: node.clone(),
                address: host_of(&member.address),
                ports: t.host_ports.clone(),
                container_ip: t.container_ip,
            })
        })
        .collect();
    out.sort_by_key(|e| (e.slot, e.task));
    Endpoints {
        service: record.spec.name.clone(),
        expose: record.spec.expose.clone(),
        endpoints: out,
    }
}

/// Every service's endpoints.
pub fn endpoint_table(state: &ClusterState) -> EndpointTable {
    state
        .services()
        .map(|s| (s.spec.name.clone(), Arc::new(endpoints(state, s))))
        .collect()
}

/// The table with the endpoints of `names` made again (a service gone is
/// left out); `None` when none of them changed.
pub fn refresh(
    state: &ClusterState,
    table: &EndpointTable,
    names: &BTreeSet<String>,
) -> Option<EndpointTable> {
    let mut fresh_table: Option<EndpointTable> = None;
    for name in names {
        let fresh = state.service(name).map(|record| endpoints(state, record));
        let same = match (&fresh, table.get(name)) {
            (Some(fresh), Some(old)) => **old == *fresh,
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        let out = fresh_table.get_or_insert_with(|| table.clone());
        match fresh {
            Some(fresh) => out.insert(name.clone(), Arc::new(fresh)),
            None => out.remove(name),
        };
    }
    fresh_table
}

/// What `GET /services/{name}` shows of a service.
pub fn view(state: &ClusterState, record: &ServiceRecord, now: DateTime<Utc>) -> ServiceView {
    let tasks = state.service_tasks(record);
    let plan = orchestrate::converge(record, &tasks, now);
    let running = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running && t.desired_state == DesiredState::Running)
        .count() as u32;
    let healthy = tasks
        .iter()
        .filter(|t| t.desired_state == DesiredState::Running && orchestrate::healthy(t))
        .count() as u32;
    ServiceView {
        name: record.spec.name.clone(),
        id: record.id,
        version: record.version,
        spec: record.spec.clone(),
        desired: record.spec.replicas,
        running,
        healthy,
        update: record.update.clone(),
        waiting: plan
            .waiting
            .into_iter()
            .map(|(slot, why)| SlotWait { slot, why })
            .collect(),
        previous_version: record.previous.as_ref().map(|p| p.version),
        created_at: record.created_at,
        updated_at: record.updated_at,
        created_by: record.created_by.clone(),
    }
}

/// A port every node publishes belongs to one service only.
fn published_elsewhere(state: &ClusterState, spec: &ServiceSpec) -> Result<(), CoreError> {
    for other in state.services().filter(|s| s.spec.name != spec.name) {
        for e in &spec.expose {
            if other.spec.expose.iter().any(|o| o.publish == e.publish) {
                return Err(CoreError::Conflict(format!(
                    "port {} is published by service {}",
                    e.publish, other.spec.name
                )));
            }
        }
    }
    Ok(())
}

fn service(state: &ClusterState, name: &str) -> Result<ServiceRecord, CoreError> {
    state
        .service(name)
        .cloned()
        .ok_or_else(|| CoreError::NoService(name.to_string()))
}

/// Converges every service whose tasks changed, and those whose wake-up
/// time has come.
pub fn converge_touched(state: &mut ClusterState, now: Now) -> Vec<Effect> {
    let mut names = std::mem::take(&mut state.touched);
    names.extend(state.take_due(now.at));
    let mut effects = Vec::new();
    for name in names {
        effects.extend(converge(state, &name, now));
    }
    // What converging changed was its own doing.
    state.touched.clear();
    effects
}

/// Carries out what one service needs now.
fn converge(state: &mut ClusterState, name: &str, now: Now) -> Vec<Effect> {
    let mut effects = Vec::new();
    // At most one rollback per look: a plan that rolls back is made again.
    for _ in 0..2 {
        let Some(mut record) = state.service(name).cloned() else {
            state.set_wake(name, None);
            return effects;
        };
        let plan: Plan = {
            let tasks = state.service_tasks(&record);
            orchestrate::converge(&record, &tasks, now.at)
        };
        if let Some(why) = plan.roll_back {
            let from = record.version;
            if record.roll_back(Some(why.clone()), now.at) {
                let to = record.version;
                state.put_service(record);
                state.service_event(
                    name,
                    format!("update failed: {why}; rolling back from version {from} to {to}"),
                    now.at,
                );
                continue;
            }
        }
        let mut changed = false;
        if let Some(update) = plan.update {
            let was = record.update.as_ref().map(|u| u.state);
            if was != Some(update.state) {
                let message = match &update.message {
                    Some(why) if !update.state.in_progress() => {
                        format!("update {}: {why}", update.state.as_str())
                    }
                    _ => format!(
                        "update {} (version {})",
                        update.state.as_str(),
                        update.to_version
                    ),
                };
                state.service_event(name, message, now.at);
            }
            record.update = Some(update);
            changed = true;
        }
        for (id, why) in &plan.stop {
            effects.extend(stop_all(state, &[*id], why, drain_of(&record), now));
        }
        for id in &plan.forget {
            state.remove_task(*id);
        }
        let mut started = Vec::new();
        for slot in &plan.start {
            let task = replica(&mut record, *slot, now.at);
            started.push(task.id);
            state.put_task(task, now.at);
            changed = true;
        }
        if changed {
            state.put_service(record);
        }
        effects.extend(place(state, &started, now));
        state.set_wake(name, plan.wake_at);
        break;
    }
    effects
}

fn drain_of(record: &ServiceRecord) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(record.spec.update.drain_s))
}

/// A new replica of the service's current version in `slot`.
fn replica(service: &mut ServiceRecord, slot: u32, now: DateTime<Utc>) -> TaskRecord {
    service.tasks_made = service.tasks_made.saturating_add(1);
    let id = Uuid::new_v5(&service.id, &service.tasks_made.to_be_bytes());
    let mut spec = service.spec.task.clone();
    spec.name = format!("{}.{slot}", service.spec.name);
    let values = [service.spec.name.clone(), slot.to_string(), id.to_string()];
    for (key, value) in REPLICA_ENV.iter().zip(values) {
        spec.env.insert(key.to_string(), value);
    }
    let mut task = TaskRecord::with_id(id, spec, now);
    task.service = Some(service.spec.name.clone());
    task.slot = Some(slot);
    task.service_version = Some(service.version);
    task.service_id = Some(service.id);
    task.submitted_by = service.created_by.clone();
    task
}

/// Stops replicas (the orchestrator's stops): a Pending one ends here, one
/// on a live node is stopped there after `drain` (it has left the
/// endpoints at once, so the balancers stop sending it clients before it
/// gets SIGTERM), one on a down node when it is back.
fn stop_all(
    state: &mut ClusterState,
    ids: &[Uuid],
    why: &str,
    drain: std::time::Duration,
    now: Now,
) -> Vec<Effect> {
    let mut effects = Vec::new();
    for id in ids {
        let Some(mut task) = state.task(id).cloned() else {
            continue;
        };
        if !task.request_stop(now.at) {
            continue;
        }
        log::info!("manager: task {id} ({}) stopping: {why}", task.name);
        if let Some(node) = task.node.clone().filter(|n| !state.is_down(n))
            && !task.state.is_terminal()
        {
            effects.push(if drain.is_zero() {
                Effect::StopOn { node, task: *id }
            } else {
                Effect::StopAfter {
                    node,
                    task: *id,
                    after: drain,
                }
            });
        }
        state.put_task(task, now.at);
    }
    effects
}
