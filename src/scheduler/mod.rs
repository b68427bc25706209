//! Placement: strategies are pure functions over node snapshots; the
//! Scheduler actor holds the chosen strategy and its state (a cursor).

pub mod round_robin;

use actix::prelude::*;
use uuid::Uuid;

use crate::config::SchedulerKind;

/// What a strategy sees of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub name: String,
    pub ready: bool,
}

/// Why a task could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoFit(pub String);

pub struct Scheduler {
    kind: SchedulerKind,
    cursor: usize,
}

impl Scheduler {
    pub fn new(kind: SchedulerKind) -> Self {
        Scheduler { kind, cursor: 0 }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

/// Places tasks, in order, on the given nodes. The answer lists, per task,
/// the chosen node's name or why none fits.
pub struct PlaceBatch {
    pub tasks: Vec<Uuid>,
    pub nodes: Vec<NodeSnapshot>,
}

impl Message for PlaceBatch {
    type Result = Vec<(Uuid, Result<String, NoFit>)>;
}

impl Handler<PlaceBatch> for Scheduler {
    type Result = MessageResult<PlaceBatch>;

    fn handle(&mut self, msg: PlaceBatch, _ctx: &mut Context<Self>) -> Self::Result {
        let placed =
            msg.tasks
                .into_iter()
                .map(|task| {
                    let choice = match self.kind {
                        SchedulerKind::RoundRobin => round_robin::place(&msg.nodes, self.cursor)
                            .map(|(i, next)| {
                                self.cursor = next;
                                msg.nodes[i].name.clone()
                            }),
                    };
                    (task, choice)
                })
                .collect();
        MessageResult(placed)
    }
}
