//! The load balancer on every worker: for each port a service publishes
//! (`expose`), a listener on `[worker] ingress_addr` that forwards to a
//! healthy replica anywhere in the cluster, as the node's copy of the
//! endpoints (`worker::endpoints`) says. Listeners open and close as
//! services come and go.
//!
//! `tcp.rs` balances per connection (round-robin over the endpoints; a
//! replica that refuses the connection is skipped; optional PROXY protocol
//! v2). `http` ports, balanced per request, come next; until then they are
//! not served.

pub mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::service::spec::Protocol;
use crate::service::{EndpointTable, Expose};
use crate::worker::endpoints::EndpointView;

/// What one published port serves: a service's exposed port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub expose: Expose,
}

/// The ports the table publishes and what each serves (TCP ones only, for
/// now).
pub fn routes(table: &EndpointTable) -> HashMap<u16, Route> {
    table
        .values()
        .flat_map(|entry| {
            entry
                .expose
                .iter()
                .filter(|e| e.protocol == Protocol::Tcp)
                .map(|e| {
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

/// Keeps one listener per published port, for as long as the node runs.
pub async fn run(addr: IpAddr, mut view: EndpointView) {
    let mut open: HashMap<u16, (Route, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted = routes(&view.borrow_and_update());
        open.retain(|port, (route, task)| {
            let keep = wanted.get(port) == Some(route);
            if !keep {
                log::info!("ingress: port {port} closed ({})", route.service);
                task.abort();
            }
            keep
        });
        for (port, route) in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let at = SocketAddr::new(addr, port);
            match tokio::net::TcpListener::bind(at).await {
                Ok(listener) => {
                    log::info!(
                        "ingress: {at} forwards to service {} port {} (tcp)",
                        route.service,
                        route.expose.port
                    );
                    let task = actix_rt::spawn(tcp::serve(listener, route.clone(), view.clone()));
                    open.insert(port, (route, task));
                }
                Err(e) => log::error!("ingress: cannot listen on {at} for {}: {e}", route.service),
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}
