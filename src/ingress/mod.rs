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
//! v2); `http.rs` per request. `kernel` has the kernel forward the TCP
//! ports it can (nftables), past `tcp.rs`, which then serves only what the
//! kernel leaves it.

pub mod budget;
pub mod http;
pub mod kernel;
mod pool;
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
    /// Which views' senders are gone, their last word in `all`: each is
    /// then followed no more, the other still is.
    ended: (bool, bool),
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
            ended: (false, false),
        };
        targets.remake();
        targets
    }

    /// The replicas to try, in order, starting at the `turn`th. A view
    /// whose sender is gone (the node stopping) keeps what it last said.
    pub fn order(&mut self, turn: usize) -> Vec<T> {
        let changed = news(&self.view, &mut self.ended.0);
        let moved = news(&self.running, &mut self.ended.1);
        if changed || moved {
            self.remake();
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

/// Whether `view` says something not yet seen: a change, or (once) that
/// its sender is gone, whose last value may not have been seen yet.
fn news<V>(view: &tokio::sync::watch::Receiver<V>, ended: &mut bool) -> bool {
    if *ended {
        return false;
    }
    view.has_changed().unwrap_or_else(|_| {
        *ended = true;
        true
    })
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
    /// Where the places of the node say which ports they hold open (what
    /// the kernel may forward).
    pub open: kernel::OpenPortsTx,
}

/// A published port being served; dropped, it takes no more connections.
enum Listener {
    Tcp(Aborting),
    Http(http::Serving),
}

/// A port's accept loop, ended when this is dropped.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a closing port may take to let go of its address.
const RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

impl Listener {
    fn open(place: &Place, port: u16, route: &Route, view: &EndpointView) -> std::io::Result<Self> {
        let at = SocketAddr::new(place.addr, port);
        let listener = std::net::TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        Ok(match route.expose.protocol {
            Protocol::Tcp => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Listener::Tcp(Aborting(actix_rt::spawn(tcp::serve(
                    listener,
                    route.clone(),
                    view.clone(),
                    place.clone(),
                ))))
            }
            Protocol::Http => Listener::Http(http::serve(
                listener,
                route.clone(),
                view.clone(),
                place.clone(),
            )?),
        })
    }

    /// Takes no more connections (the open ones finish), and returns once
    /// the port's address may be bound again, or after [`RELEASE`].
    async fn close(self) {
        let released = async {
            match self {
                Listener::Tcp(mut accepting) => {
                    accepting.0.abort();
                    let _ = (&mut accepting.0).await;
                }
                Listener::Http(serving) => serving.stop().await,
            }
        };
        let _ = tokio::time::timeout(RELEASE, released).await;
    }
}

/// Keeps one listener per published port at `place`, for as long as the
/// node runs. With `place.allow`, only clients in it (and on loopback) are
/// served.
pub async fn run(place: Place, mut view: EndpointView) {
    let mut open: HashMap<u16, (Route, Listener)> = HashMap::new();
    let said = kernel::OpenAt::new(place.open.clone(), place.addr);
    // Ports that could not be opened, said once each.
    let mut complained: std::collections::HashSet<u16> = std::collections::HashSet::new();
    loop {
        let wanted = routes(&view.borrow_and_update());
        let stale: Vec<u16> = open
            .iter()
            .filter(|(port, (route, _))| wanted.get(*port) != Some(route))
            .map(|(port, _)| *port)
            .collect();
        // Closed before any is opened: a port whose route changed is
        // bound again at once.
        let closing = stale.into_iter().filter_map(|port| {
            let (route, listener) = open.remove(&port)?;
            log::info!("ingress: port {port} closed ({})", route.service);
            Some(listener.close())
        });
        futures_util::future::join_all(closing).await;
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
        said.set(open.keys().copied().collect());
        // A port that could not be opened (another process on it) is
        // tried again soon.
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
    fn one_feed_gone_the_other_is_still_followed() {
        let here = endpoint("w1", Some("172.18.0.3"));
        let (feed, view) = tokio::sync::watch::channel(table(vec![here.clone()]));
        let (worker, running) = tokio::sync::watch::channel(std::sync::Arc::new(none_here()));
        let mut targets = Targets::new(view, running, &route(), "w1", Some);
        drop(feed);
        assert!(targets.order(0).is_empty());
        // The worker still says what runs: its container starts, then dies.
        worker.send_replace(std::sync::Arc::new(Running::from([(
            here.task,
            here.container_ip,
        )])));
        assert_eq!(
            targets.order(0),
            ["172.18.0.3:8080".parse::<SocketAddr>().unwrap()]
        );
        worker.send_replace(std::sync::Arc::new(none_here()));
        assert!(targets.order(0).is_empty());
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

    #[actix_rt::test]
    async fn a_closed_port_may_be_bound_again_at_once() {
        let (_feed, view) = tokio::sync::watch::channel(table(Vec::new()));
        let (_worker, running) = tokio::sync::watch::channel(std::sync::Arc::new(none_here()));
        let place = Place {
            node: "w1".into(),
            addr: std::net::Ipv4Addr::LOCALHOST.into(),
            allow: None,
            threads: 2,
            bodies: budget::BodyBudget::new(1 << 20),
            running,
            open: Default::default(),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        for protocol in [Protocol::Http, Protocol::Tcp] {
            let mut route = route();
            route.expose.publish = port;
            route.expose.protocol = protocol;
            let listener = Listener::open(&place, port, &route, &view).unwrap();
            // Taken while it serves.
            assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
            listener.close().await;
            std::net::TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("{protocol:?} port still held once closed: {e}"));
        }
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
