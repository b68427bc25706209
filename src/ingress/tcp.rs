//! A published TCP port: each connection goes to the next replica in
//! round-robin order; one that cannot be reached within a second is
//! skipped for the next. With `proxy_protocol`, the replica first gets a
//! PROXY protocol v2 header naming the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Route, candidates};
use crate::worker::endpoints::EndpointView;

/// Connections one published port carries at once; more wait for a place.
const MAX_CONNECTIONS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn serve(listener: TcpListener, route: Route, view: EndpointView) {
    let turn = Arc::new(AtomicUsize::new(0));
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("ingress: accept on port {}: {e}", route.expose.publish);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let targets = candidates(&view, &route, turn.fetch_add(1, Ordering::Relaxed));
        let proxy = route.expose.proxy_protocol;
        actix_rt::spawn(async move {
            forward(client, peer, targets, proxy).await;
            drop(place);
        });
    }
}

/// Connects to the first target that answers and carries bytes both ways.
async fn forward(mut client: TcpStream, peer: SocketAddr, targets: Vec<SocketAddr>, proxy: bool) {
    let local = client.local_addr().ok();
    for target in targets {
        let Ok(Ok(mut upstream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
        else {
            continue;
        };
        if proxy && let Some(local) = local {
            let header = proxy_header(peer, local);
            if upstream.write_all(&header).await.is_err() {
                return;
            }
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    log::debug!("ingress: no replica to take a connection from {peer}");
}

/// A PROXY protocol v2 header: the client connected from `client` to
/// `local` (this node's published port).
pub fn proxy_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    // Both addresses of one family, as the header requires.
    let local = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => match l.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), l.port()),
            None => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), l.port()),
        },
        (SocketAddr::V6(_), SocketAddr::V4(l)) => {
            SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port())
        }
        _ => local,
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    )
    .build()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_header_names_the_client_and_the_port_it_reached() {
        let client: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let header = proxy_header(client, local);
        let parsed = ppp::v2::Header::try_from(header.as_slice()).unwrap();
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_address, std::net::Ipv4Addr::new(10, 1, 2, 3));
                assert_eq!(a.source_port, 40000);
                assert_eq!(a.destination_port, 8080);
            }
            other => panic!("{other:?}"),
        }
    }
}
