//! The Manager's part among the managers: Raft says who leads; the
//! leader takes commands, the others follow the log. When it starts or
//! stops leading the state is rebuilt from the Store (`settle`), a
//! would-be leader first confirming with a majority that it leads and
//! that everything in its log is applied. A follower's state follows the
//! log whoever leads: a change of leader alone rebuilds nothing.

use std::time::Instant;

use actix::prelude::*;
use futures_util::Stream;
use tokio::sync::watch;

use super::{CLAIM_RETRY, CLAIM_TIMEOUT, Command, Manager, SyncNode};
use crate::manager::replica::{Records, follow};
use crate::raft::{Metrics, NodeId, Replicated};

/// Who leads, as this manager's Raft says: the leader's id and URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<(NodeId, Option<String>)>,
}

/// A stream of every change of leader in `metrics`.
pub fn leadership(metrics: watch::Receiver<Metrics>) -> impl Stream<Item = Leadership> {
    futures_util::stream::unfold((metrics, None), |(mut metrics, last)| async move {
        loop {
            let now = {
                let m = metrics.borrow_and_update();
                let url = |id: &NodeId| {
                    m.membership_config
                        .membership()
                        .get_node(id)
                        .map(|member| member.url.clone())
                };
                Leadership {
                    leader: m.current_leader.map(|id| (id, url(&id))),
                }
            };
            if last.as_ref() != Some(&now) {
                return Some((now.clone(), (metrics, Some(now))));
            }
            metrics.changed().await.ok()?;
        }
    })
}

impl StreamHandler<Leadership> for Manager {
    fn handle(&mut self, msg: Leadership, ctx: &mut Context<Self>) {
        log::info!(
            "manager {}: the leader is {}",
            self.id,
            match &msg.leader {
                Some((id, _)) if *id == self.id => "this manager".to_string(),
                Some((id, url)) => format!("manager {id} at {}", url.as_deref().unwrap_or("?")),
                None => "not known".to_string(),
            }
        );
        self.leader = msg.leader;
        let elsewhere = match &self.leader {
            Some((id, url)) if *id != self.id => url.clone(),
            _ => None,
        };
        self.published.leader.send_replace(elsewhere);
        if self.leads() {
            self.settle(ctx);
        } else if self.leading {
            self.stop_leading("another manager leads", ctx);
        } else if self.leader.is_some() {
            self.wake_settled();
        }
    }

    /// Raft stopped (a fatal error of its storage): the process cannot
    /// go on as a manager.
    fn finished(&mut self, _ctx: &mut Context<Self>) {
        log::error!("manager {}: its Raft stopped; the node stops", self.id);
        System::current().stop_with_code(1);
    }
}

impl StreamHandler<Replicated> for Manager {
    fn handle(&mut self, msg: Replicated, ctx: &mut Context<Self>) {
        match msg {
            Replicated::Installed { upto } => {
                log::info!("manager {}: a snapshot up to {upto} was installed", self.id);
                if upto > self.applied {
                    self.stop_leading("a snapshot replaced its records", ctx);
                }
            }
            Replicated::Changes { upto, changes } => {
                if upto <= self.applied {
                    return;
                }
                if self.leading {
                    // A change this leader did not see committed: one it
                    // answered as unconfirmed. Its state is rebuilt.
                    self.stop_leading("a change it had given up on was committed", ctx);
                    return;
                }
                match follow(&mut self.state, &changes, chrono::Utc::now()) {
                    Ok(mut followed) => {
                        self.applied = upto;
                        self.events.publish(std::mem::take(&mut followed.events));
                        self.publish(&followed);
                    }
                    Err(e) => {
                        log::error!("manager {}: {e}; rebuilding from the store", self.id);
                        self.settle(ctx);
                    }
                }
            }
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        log::warn!("manager {}: its state machine stopped", self.id);
    }
}

impl Manager {
    /// Whether Raft says this manager leads.
    pub(super) fn leads(&self) -> bool {
        self.leader.as_ref().is_some_and(|(id, _)| *id == self.id)
    }

    /// Whether a majority of the managers answered it within its lease: a
    /// leader cut off from them does not know yet that another may lead
    /// (the Raft library steps down only on hearing a higher term), so it stops
    /// acting before any other can have been elected. A cluster of one
    /// holds it always.
    pub(super) fn lease_held(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().count() <= 1
            || m.millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) < self.lease.as_millis())
    }

    /// Whether it may act as leader now (effects on timers check).
    pub(super) fn acting(&self) -> bool {
        self.leading && self.lease_held()
    }

    /// Stops taking commands (the queued ones get the error) and rebuilds
    /// its state; if it still leads, it claims the lead again.
    pub(super) fn stop_leading(&mut self, why: &str, ctx: &mut Context<Self>) {
        if self.leading {
            log::warn!("manager {}: stops leading: {why}", self.id);
        }
        self.leading = false;
        for queued in std::mem::take(&mut self.queue) {
            if let Some(answer) = queued.answer {
                let _ = answer.send(Err(self.not_leader()));
            }
        }
        self.settle(ctx);
    }

    /// Rebuilds the state from the Store for the role Raft gives: a leader
    /// first confirms that it leads and has applied everything committed
    /// (then it takes commands), a follower follows from what it applied.
    pub(super) fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.leading && self.leads() {
            return;
        }
        if self.settling {
            return;
        }
        if let Some(retry) = self.retry.take() {
            ctx.cancel_future(retry);
        }
        self.settling = true;
        let claim = self.leads();
        let (raft, store) = (self.raft.clone(), self.store.clone());
        let work = async move {
            if claim {
                match tokio::time::timeout(CLAIM_TIMEOUT, raft.ensure_linearizable()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no majority within {CLAIM_TIMEOUT:?}")),
                }
                // Everything in a leader's log is committed in the end (a
                // change it gave up on too): its state holds all of it
                // before it takes a command.
                let last = raft.metrics().borrow().last_log_index;
                raft.wait(Some(CLAIM_TIMEOUT))
                    .applied_index_at_least(last, "everything in the log applied")
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let (dump, upto) = crate::raft::state_machine::applied_records(&store)
                .await
                .map_err(|e| e.to_string())?;
            let records = Records::from_dump(&dump).map_err(|e| e.to_string())?;
            Ok((records, upto))
        };
        ctx.wait(work.into_actor(self).map(move |result, act, ctx| {
            act.settling = false;
            match result {
                Ok((records, upto)) => {
                    act.state = act.shape.build(records, Instant::now());
                    act.applied = upto;
                    act.publish_all();
                    if claim && act.leads() {
                        act.lead(ctx);
                    }
                    act.wake_settled();
                }
                Err(e) => {
                    log::warn!("manager {}: cannot take up its role yet: {e}", act.id);
                    // One try planned at a time, whatever asks for more.
                    act.retry = Some(ctx.run_later(CLAIM_RETRY, |act, ctx| {
                        act.retry = None;
                        act.settle(ctx);
                    }));
                }
            }
        }));
    }

    /// Tells whoever waits that it has taken up a role.
    fn wake_settled(&mut self) {
        for waiter in std::mem::take(&mut self.settled) {
            let _ = waiter.send(());
        }
    }

    /// Takes commands from now on: catches up with the workers (what they
    /// hold may have changed while no one led) and places what waits.
    fn lead(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "manager {}: leading with {} tasks and {} nodes (log at {})",
            self.id,
            self.state.task_count(),
            self.state.node_names().len(),
            self.applied
        );
        self.leading = true;
        for name in self.state.node_names() {
            ctx.notify(SyncNode(name));
        }
        self.push(Command::Retry, None, ctx);
    }
}

/// Answers once this manager has taken up a role (leading, or following
/// a leader), at once if it has.
pub struct Settled;

impl Message for Settled {
    type Result = ();
}

impl Handler<Settled> for Manager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Settled, _ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.leading || (self.leader.is_some() && !self.leads() && !self.settling) {
            let _ = tx.send(());
        } else {
            self.settled.push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
