//! The load balancer on every worker: for each port a service publishes
//! (`expose`), a listener on `[worker] ingress_addr` (and one on the
//! gateway of the node's container network, for the containers, unless
//! `ingress_addr` is every address already) that forwards to a
//! healthy replica anywhere in the cluster, as the node's copy of the
//! endpoints (`worker::endpoints`) says. Listeners open and close as
//! services come and go. A replica on this node is reached at its
//! container's address on the node's network, past the engine's port
//! proxy (one process and two copies fewer); others at their node's
//! address and host port.
//!
//! `tcp.rs` balances per connection (round-robin over the endpoints; a
//! replica that refuses the connection is skipped; optional PROXY protocol
//! v2); `http.rs` per request.

pub mod budget;
pub mod http;
mod splice;
mod stall;
pub mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::service::spec::Protocol;
use crate::service::{Endpoint, EndpointTable, Expose};
use crate::worker::endpoints::{EndpointView, Running, RunningView};

/// What one published port serves: a service's exposed port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub expose: Expose,
}

/// The ports the table publishes and what each serves.
pub fn routes(table: &EndpointTable) -> HashMap<u16, Route> {
    table
        .values()
        .flat_map(|entry| {
            entry.expose.iter().map(|e| {
                (
                    e.publish,
                    Route {
                        service: entry.service.clone(),
                        expose: e.clone(),
                    },
                )
            })
        })
        .collect()
}

/// Where the balancer of `node` reaches `endpoint`'s container port
/// `port`: a replica of `node` only while `node`'s worker sees it run
/// (`running`), at its container's address as the worker saw it; one
/// elsewhere at its node's address and host port.
pub fn target(endpoint: &Endpoint, port: u16, node: &str, running: &Running) -> Option<SocketAddr> {
    // Only a port the replica's task publishes (an older version of the
    // service may not have it).
    let host_port = *endpoint.ports.get(&port)?;
    if endpoint.node == node {
        // Not running here (any more, or yet): its old address may be
        // another container's.
        if let Some(ip) = running.get(&endpoint.task)? {
            return Some(SocketAddr::new(*ip, port));
        }
    }
    let ip = endpoint.address.parse().ok()?;
    Some(SocketAddr::new(ip, host_port))
}

/// Where one thread of a published port reaches the replicas of its
/// route: worked out from the node's endpoints only when they change, not
/// for every request or connection. `T` is what a replica is reached by
/// (an address, or an address with what a request needs of it; `reach`
/// makes it, or drops a replica it cannot make one for).
pub struct Targets<T> {
    view: EndpointView,
    running: RunningView,
    service: String,
    port: u16,
    node: String,
    reach: fn(SocketAddr) -> Option<T>,
    all: Vec<T>,
    /// A view's sender is gone, and what both said last is in `all`.
    ended: bool,
}

impl<T: Clone> Targets<T> {
    pub fn new(
        view: EndpointView,
        running: RunningView,
        route: &Route,
        node: &str,
        reach: fn(SocketAddr) -> Option<T>,
    ) -> Self {
        let mut targets = Targets {
            view,
            running,
            service: route.service.clone(),
            port: route.expose.port,
            node: node.to_string(),
            reach,
            all: Vec::new(),
            ended: false,
        };
        targets.remake();
        targets
    }

    /// The replicas to try, in order, starting at the `turn`th. Views
    /// whose senders are gone (the node stopping) keep what they last
    /// said.
    pub fn order(&mut self, turn: usize) -> Vec<T> {
        match (self.view.has_changed(), self.running.has_changed()) {
            (Ok(changed), Ok(moved)) if changed || moved => self.remake(),
            (Ok(_), Ok(_)) => {}
            // Their last values may not have been seen yet.
            _ if !self.ended => {
                self.remake();
                self.ended = true;
            }
            _ => {}
        }
        if self.all.is_empty() {
            return Vec::new();
        }
        let start = turn % self.all.len();
        self.all[start..]
            .iter()
            .chain(&self.all[..start])
            .cloned()
            .collect()
    }

    fn remake(&mut self) {
        let running = self.running.borrow_and_update().clone();
        let table = self.view.borrow_and_update();
        self.all = table
            .get(&self.service)
            .map(|entry| {
                entry
                    .endpoints
                    .iter()
                    .filter_map(|e| target(e, self.port, &self.node, &running))
                    .filter_map(self.reach)
                    .collect()
            })
            .unwrap_or_default();
    }
}

/// Whether a client at `peer` may use a listener that serves `allow`.
pub fn allowed(allow: Option<IpNet>, peer: IpAddr) -> bool {
    peer.is_loopback() || allow.is_none_or(|net| net.contains(&peer))
}

/// Where a node's balancer listens and whom it serves.
#[derive(Debug, Clone)]
pub struct Place {
    /// The node's name (its replicas are reached at their containers).
    pub node: String,
    pub addr: IpAddr,
    /// Who may use it, beside loopback (`None`: anyone).
    pub allow: Option<IpNet>,
    /// Threads serving each HTTP port.
    pub threads: usize,
    /// The request bodies the node's balancer may hold at once (shared by
    /// every place of the node).
    pub bodies: std::sync::Arc<budget::BodyBudget>,
    /// The node's tasks that run, as its worker sees them.
    pub running: RunningView,
}

/// A published port being served.
enum Listener {
    Tcp(tokio::task::JoinHandle<()>),
    Http(http::Serving),
}

impl Listener {
    fn open(place: &Place, port: u16, route: &Route, view: &EndpointView) -> std::io::Result<Self> {
        let at = SocketAddr::new(place.addr, port);
        let listener = std::net::TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        Ok(match route.expose.protocol {
            Protocol::Tcp => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Listener::Tcp(actix_rt::spawn(tcp::serve(
                    listener,
                    route.clone(),
                    view.clone(),
                    place.clone(),
                )))
            }
            Protocol::Http => Listener::Http(http::serve(
                listener,
                route.clone(),
                view.clone(),
                place.clone(),
            )?),
        })
    }

    fn close(self) {
        match self {
            Listener::Tcp(task) => task.abort(),
            Listener::Http(serving) => serving.stop(),
        }
    }
}

/// Keeps one listener per published port at `place`, for as long as the
/// node runs. With `place.allow`, only clients in it (and on loopback) are
/// served.
pub async fn run(place: Place, mut view: EndpointView) {
    let mut open: HashMap<u16, (Route, Listener)> = HashMap::new();
    // Ports that could not be opened, said once each.
    let mut complained: std::collections::HashSet<u16> = std::collections::HashSet::new();
    loop {
        let wanted = routes(&view.borrow_and_update());
        let stale: Vec<u16> = open
            .iter()
            .filter(|(port, (route, _))| wanted.get(*port) != Some(route))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some((route, listener)) = open.remove(&port) {
                log::info!("ingress: port {port} closed ({})", route.service);
                listener.close();
            }
        }
        let mut failed = false;
        for (port, route) in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let at = SocketAddr::new(place.addr, port);
            match Listener::open(&place, port, &route, &view) {
                Ok(listener) => {
                    complained.remove(&port);
                    log::info!(
                        "ingress: {at} forwards to service {} port {} ({:?})",
                        route.service,
                        route.expose.port,
                        route.expose.protocol
                    );
                    open.insert(port, (route, listener));
                }
                Err(e) => {
                    if complained.insert(port) {
                        log::error!(
                            "ingress: cannot listen on {at} for {}: {e}; trying again",
                            route.service
                        );
                    }
                    failed = true;
                }
            }
        }
        // A port that could not be opened (its old listener still closing,
        // or another process on it) is tried again soon.
        if failed {
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        } else if view.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(node: &str, container_ip: Option<&str>) -> Endpoint {
        Endpoint {
            task: uuid::Uuid::new_v4(),
            slot: 1,
            node: node.into(),
            address: "10.0.0.5".into(),
            ports: [(8080, 32001)].into(),
            container_ip: container_ip.map(|ip| ip.parse().expect("an address")),
        }
    }

    fn table(endpoints: Vec<Endpoint>) -> std::sync::Arc<EndpointTable> {
        std::sync::Arc::new(EndpointTable::from([(
            "web".to_string(),
            std::sync::Arc::new(crate::service::Endpoints {
                service: "web".into(),
                expose: Vec::new(),
                endpoints,
            }),
        )]))
    }

    fn route() -> Route {
        Route {
            service: "web".into(),
            expose: Expose {
                port: 8080,
                publish: 80,
                protocol: Protocol::Http,
                balance: Default::default(),
                proxy_protocol: false,
                idle_timeout_s: None,
            },
        }
    }

    fn none_here() -> Running {
        Running::new()
    }

    #[test]
    fn targets_turn_round_follow_changes_and_outlive_their_feed() {
        let (a, mut b) = (endpoint("w2", None), endpoint("w3", None));
        b.address = "10.0.0.6".into();
        let (feed, view) = tokio::sync::watch::channel(table(vec![a.clone(), b.clone()]));
        let (_worker, running) = tokio::sync::watch::channel(std::sync::Arc::new(none_here()));
        let mut targets = Targets::new(view, running, &route(), "w1", Some);
        let (ta, tb) = (
            target(&a, 8080, "w1", &none_here()).unwrap(),
            target(&b, 8080, "w1", &none_here()).unwrap(),
        );
        assert_eq!(targets.order(0), [ta, tb]);
        assert_eq!(targets.order(1), [tb, ta]);
        assert_eq!(targets.order(2), [ta, tb]);
        // A change is seen at the next order.
        feed.send_replace(table(vec![b.clone()]));
        assert_eq!(targets.order(0), [tb]);
        feed.send_replace(table(Vec::new()));
        assert!(targets.order(7).is_empty());
        // The feed gone (the node stopping): the last known stays.
        feed.send_replace(table(vec![a]));
        drop(feed);
        assert_eq!(targets.order(0), [ta]);
        assert_eq!(targets.order(1), [ta]);
    }

    #[test]
    fn a_replica_here_is_reached_only_while_this_nodes_worker_sees_it_run() {
        let here = endpoint("w1", Some("172.18.0.3"));
        let (_feed, view) = tokio::sync::watch::channel(table(vec![here.clone()]));
        let (worker, running) = tokio::sync::watch::channel(std::sync::Arc::new(none_here()));
        let mut targets = Targets::new(view, running, &route(), "w1", Some);
        // The manager's endpoints list it, its worker does not (yet, or
        // any more): not reached, at its old address or any.
        assert!(targets.order(0).is_empty());
        // Its worker sees it run, at a newer address than the endpoints'.
        worker.send_replace(std::sync::Arc::new(Running::from([(
            here.task,
            Some("172.18.0.9".parse().unwrap()),
        )])));
        assert_eq!(
            targets.order(0),
            ["172.18.0.9:8080".parse::<SocketAddr>().unwrap()]
        );
        // Its container dies: out at once, whatever the endpoints say.
        worker.send_replace(std::sync::Arc::new(none_here()));
        assert!(targets.order(0).is_empty());
    }

    #[test]
    fn a_replica_on_this_node_is_reached_at_its_container() {
        let local = endpoint("w1", Some("172.18.0.3"));
        let running = Running::from([(local.task, local.container_ip)]);
        assert_eq!(
            target(&local, 8080, "w1", &running),
            Some("172.18.0.3:8080".parse().expect("an address"))
        );
    }

    #[test]
    fn a_replica_elsewhere_is_reached_at_its_node_and_host_port() {
        let remote = endpoint("w2", Some("172.18.0.3"));
        assert_eq!(
            target(&remote, 8080, "w1", &none_here()),
            Some("10.0.0.5:32001".parse().expect("an address"))
        );
        // Running here on no network of the node's: the host port.
        let local = endpoint("w1", None);
        let running = Running::from([(local.task, None)]);
        assert_eq!(
            target(&local, 8080, "w1", &running),
            Some("10.0.0.5:32001".parse().expect("an address"))
        );
        // A port it does not publish is not reached, here or elsewhere.
        assert_eq!(target(&remote, 9090, "w1", &none_here()), None);
        let local = endpoint("w1", Some("172.18.0.3"));
        let running = Running::from([(local.task, local.container_ip)]);
        assert_eq!(target(&local, 9090, "w1", &running), None);
    }
}
