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
use crate::worker::endpoints::EndpointView;

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
/// `port`: at the container's address when it runs on `node`, else at its
/// node's address and host port.
pub fn target(endpoint: &Endpoint, port: u16, node: &str) -> Option<SocketAddr> {
    // Only a port the replica's task publishes (an older version of the
    // service may not have it).
    let host_port = *endpoint.ports.get(&port)?;
    if endpoint.node == node
        && let Some(ip) = endpoint.container_ip
    {
        return Some(SocketAddr::new(ip, port));
    }
    let ip = endpoint.address.parse().ok()?;
    Some(SocketAddr::new(ip, host_port))
}

/// The replicas' addresses for `route`, from `node`, starting at the
/// `turn`th.
fn candidates(view: &EndpointView, route: &Route, node: &str, turn: usize) -> Vec<SocketAddr> {
    let table = view.borrow();
    let Some(entry) = table.get(&route.service) else {
        return Vec::new();
    };
    let all: Vec<SocketAddr> = entry
        .endpoints
        .iter()
        .filter_map(|e| target(e, route.expose.port, node))
        .collect();
    if all.is_empty() {
        return all;
    }
    let start = turn % all.len();
    all[start..].iter().chain(&all[..start]).copied().collect()
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
}

/// A published port being served.
enum Listener {
    Tcp(tokio::task::JoinHandle<()>),
    Http(actix_server::ServerHandle),
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
            Protocol::Http => {
                let server = http::serve(listener, route.clone(), view.clone(), place.clone())?;
                let handle = server.handle();
                actix_rt::spawn(server);
                Listener::Http(handle)
            }
        })
    }

    fn close(self) {
        match self {
            Listener::Tcp(task) => task.abort(),
            Listener::Http(handle) => {
                actix_rt::spawn(async move { handle.stop(true).await });
            }
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

    #[test]
    fn a_replica_on_this_node_is_reached_at_its_container() {
        let local = endpoint("w1", Some("172.18.0.3"));
        assert_eq!(
            target(&local, 8080, "w1"),
            Some("172.18.0.3:8080".parse().expect("an address"))
        );
    }

    #[test]
    fn a_replica_elsewhere_is_reached_at_its_node_and_host_port() {
        let remote = endpoint("w2", Some("172.18.0.3"));
        assert_eq!(
            target(&remote, 8080, "w1"),
            Some("10.0.0.5:32001".parse().expect("an address"))
        );
        // No container address known (an older worker): the host port.
        let local = endpoint("w1", None);
        assert_eq!(
            target(&local, 8080, "w1"),
            Some("10.0.0.5:32001".parse().expect("an address"))
        );
        // A port it does not publish is not reached, here or elsewhere.
        assert_eq!(target(&remote, 9090, "w1"), None);
        let local = endpoint("w1", Some("172.18.0.3"));
        assert_eq!(target(&local, 9090, "w1"), None);
    }
}
