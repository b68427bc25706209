//! Placing Pending tasks: the scheduler's strategy over the nodes'
//! snapshots; each placement is a new attempt, dispatched once committed.

use uuid::Uuid;

use super::command::{Effect, Now};
use super::nodes;
use super::state::ClusterState;
use crate::scheduler::filter::Room;
use crate::scheduler::place_batch;
use crate::task::{DesiredState, TaskState};
use crate::wire::Assignment;

/// Places the given tasks, in order, where they fit (each placement seen by
/// the next). A task that fits nowhere stays Pending with the reason in its
/// record; the reason is logged when it changes, not on every try.
pub fn place(state: &mut ClusterState, ids: &[Uuid], now: Now) -> Vec<Effect> {
    let requests: Vec<_> = ids
        .iter()
        .filter_map(|id| state.task(id))
        .filter(|t| t.state == TaskState::Pending && t.desired_state == DesiredState::Running)
        .map(nodes::request)
        .collect();
    if requests.is_empty() {
        return Vec::new();
    }
    let snapshots = state.snapshots(Some(&nodes::Scope::of(&requests)));
    let kind = state.scheduler;
    let mut cursor = state.cursor;
    let choices = place_batch(kind, &requests, snapshots, &mut cursor);
    state.cursor = cursor;
    let mut effects = Vec::new();
    for (id, choice) in choices {
        let Some(mut record) = state.task(&id).cloned() else {
            continue;
        };
        match choice {
            Ok(node) => {
                if let Err(e) = record.place(&node, now.at) {
                    log::error!("manager: task {id}: {e}");
                    continue;
                }
                log::info!(
                    "manager: task {id} placed on {node} (attempt {})",
                    record.attempt
                );
                effects.push(Effect::Dispatch {
                    node,
                    assignment: Box::new(Assignment {
                        task_id: id,
                        attempt: record.attempt,
                        spec: record.spec.clone(),
                    }),
                });
                state.put_task(record, now.at);
            }
            Err(no_fit) => {
                if record.note_unplaceable(&no_fit.0, now.at) {
                    log::info!("manager: task {id} stays Pending: {no_fit}");
                    state.put_task(record, now.at);
                }
            }
        }
    }
    effects
}

/// Gives the Pending tasks another try (capacity may have appeared: a node
/// registered or came back, a task ended, a node's tasks moved). What a
/// task waits for is room: one that needs more of a resource than any ready
/// node has free stays as it is, without a placement (its last reason
/// stands), and one never tried yet is always tried. With no ready node
/// there is nothing to try.
pub fn place_pending(state: &mut ClusterState, now: Now) -> Vec<Effect> {
    if state.pending_count() == 0 {
        return Vec::new();
    }
    let Some(room) = Room::of(&state.snapshots(Some(&nodes::Scope::default()))) else {
        return Vec::new();
    };
    let ids: Vec<Uuid> = state
        .pending()
        .into_iter()
        .filter(|id| {
            state
                .task(id)
                .is_some_and(|t| t.error.is_none() || room.may_hold(&nodes::demand(t)))
        })
        .collect();
    place(state, &ids, now)
}
