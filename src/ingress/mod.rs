//! The load balancer on every worker: for each port a service publishes
//! (`expose`), a listener on `[worker] ingress_addr` (and one on the
//! gateway of the node's container network, for the containers, unless
//! `ingress_addr` is every address already) that forwards to a
//! healthy replica anywhere in the cluster, as the node's copy of the
//! endpoints (`worker::endpoints`) says. Listeners open and close as
//! services come and go.
//!
//! `tcp.rs` balances per connection (round-robin over the endpoints; a
//! replica that refuses the connection is skipped; optional PROXY protocol
//! v2); `http.rs` per request.

pub mod http;
pub mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::service::spec::Protocol;
use crate::service::{EndpointTable, Expose};
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

/// The replicas' addresses for `route`, starting at the `turn`th.
fn candidates(view: &EndpointView, route: &Route, turn: usize) -> Vec<SocketAddr> {
    let table = view.borrow();
    let Some(entry) = table.get(&route.service) else {
        return Vec::new();
    };
    let all: Vec<SocketAddr> = entry
        .endpoints
        .iter()
        .filter_map(|e| {
            let port = *e.ports.get(&route.expose.port)?;
            let ip = e.address.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
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

/// A published port being served.
enum Listener {
    Tcp(tokio::task::JoinHandle<()>),
    Http(actix_web::dev::ServerHandle),
}

impl Listener {
    fn open(
        at: SocketAddr,
        route: &Route,
        view: &EndpointView,
        allow: Option<IpNet>,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        Ok(match route.expose.protocol {
            Protocol::Tcp => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                Listener::Tcp(actix_rt::spawn(tcp::serve(
                    listener,
                    route.clone(),
                    view.clone(),
                    allow,
                )))
            }
            Protocol::Http => {
                let server = http::serve(listener, route.clone(), view.clone(), allow)?;
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

/// Keeps one listener per published port on `addr`, for as long as the
/// node runs. With `allow`, only clients in it (and on loopback) are served.
pub async fn run(addr: IpAddr, allow: Option<IpNet>, mut view: EndpointView) {
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
            let at = SocketAddr::new(addr, port);
            match Listener::open(at, &route, &view, allow) {
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
