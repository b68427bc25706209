//! The DockerEvents actor: the worker's one connection to the container
//! engine. It connects (negotiating the API version), tells the Worker when
//! the engine is up or down, and follows the engine's event stream for this
//! node's containers, forwarding each death to the Worker. When the stream
//! ends it reconnects with back-off and resumes from the last event seen, so
//! no event is lost across a reconnect.

use std::time::Duration;

use actix::prelude::*;

use super::actor::{EngineDown, EngineEvent, EngineUp, NetworkGone, Worker};
use crate::runtime::{ContainerEvent, RuntimeError, SharedEngine};

const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct DockerEvents {
    node: String,
    /// The node's containers' network.
    network: String,
    worker: Addr<Worker>,
    engine: SharedEngine,
    /// Replay events from here (seconds since the epoch) on the next connect.
    since_s: i64,
    retry: Duration,
}

impl DockerEvents {
    /// Follows node `node`'s containers and its containers' `network`.
    pub fn new(node: String, network: String, worker: Addr<Worker>, engine: SharedEngine) -> Self {
        DockerEvents {
            node,
            network,
            worker,
            engine,
            // A second of slack: events of containers this process starts
            // right away must not fall before the replay point.
            since_s: chrono::Utc::now().timestamp() - 1,
            retry: RETRY_FIRST,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let engine = self.engine.clone();
        ctx.wait(
            async move { engine.connect().await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(version) => {
                        log::info!(
                            "events: engine up, {version}; following events of node {}",
                            act.node
                        );
                        act.retry = RETRY_FIRST;
                        ctx.add_stream(act.engine.events(&act.node, act.since_s));
                        let gone = futures_util::StreamExt::map(
                            act.engine.network_gone(&act.network),
                            NetworkEvent,
                        );
                        ctx.add_stream(gone);
                        if act.worker.try_send(EngineUp { version }).is_err() {
                            log::error!("events: the worker's mailbox refused EngineUp");
                        }
                    }
                    Err(e) => act.down(e.to_string(), ctx),
                }),
        );
    }

    fn down(&mut self, error: String, ctx: &mut Context<Self>) {
        log::warn!(
            "events: container engine down ({error}); retrying in {:?}",
            self.retry
        );
        if self.worker.try_send(EngineDown { error }).is_err() {
            log::error!("events: the worker's mailbox refused EngineDown");
        }
        ctx.run_later(self.retry, |act, ctx| act.connect(ctx));
        self.retry = (self.retry * 2).min(RETRY_MAX);
    }
}

impl Actor for DockerEvents {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }
}

/// An item of the engine's stream of removals of the containers' network.
struct NetworkEvent(Result<(), RuntimeError>);

impl StreamHandler<NetworkEvent> for DockerEvents {
    fn handle(&mut self, item: NetworkEvent, _ctx: &mut Context<Self>) {
        match item.0 {
            Ok(()) => {
                if self.worker.try_send(NetworkGone).is_err() {
                    log::error!("events: the worker's mailbox refused NetworkGone");
                }
            }
            Err(e) => log::debug!("events: engine network event stream error: {e}"),
        }
    }

    /// It ends with the engine's connection, which the container events'
    /// end handles.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl StreamHandler<Result<ContainerEvent, RuntimeError>> for DockerEvents {
    fn handle(&mut self, item: Result<ContainerEvent, RuntimeError>, _ctx: &mut Context<Self>) {
        match item {
            Ok(event) => {
                self.since_s = self.since_s.max(event.time_s);
                log::debug!("events: {event:?}");
                if let Err(e) = self.worker.try_send(EngineEvent(event)) {
                    log::error!("events: the worker's mailbox refused an event: {e}");
                }
            }
            Err(e) => log::warn!("events: engine event stream error: {e}"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.down("the engine closed its event stream".into(), ctx);
    }
}
