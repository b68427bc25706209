//! A published TCP port: each connection goes to the next replica in
//! round-robin order; one that cannot be reached within a second is
//! skipped for the next. With `proxy_protocol`, the replica first gets a
//! PROXY protocol v2 header naming the client. A connection that carries
//! no byte either way for the port's idle timeout is closed.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Route, Targets, allowed, splice};
use crate::worker::endpoints::EndpointView;

/// Connections one published port carries at once; more wait for a place.
const MAX_CONNECTIONS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn serve(listener: TcpListener, route: Route, view: EndpointView, at: super::Place) {
    let mut targets = Targets::new(view, at.running.clone(), &route, &at.node, Some);
    let mut turn = 0usize;
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
        if !allowed(at.allow, peer.ip()) {
            continue;
        }
        let targets = targets.order(turn);
        turn = turn.wrapping_add(1);
        let proxy = route.expose.proxy_protocol;
        let idle = route.expose.idle_timeout();
        actix_rt::spawn(async move {
            forward(client, peer, targets, proxy, idle).await;
            drop(place);
        });
    }
}

/// Connects to the first target that answers and carries bytes both ways.
async fn forward(
    client: TcpStream,
    peer: SocketAddr,
    targets: Vec<SocketAddr>,
    proxy: bool,
    idle: Duration,
) {
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
        match carry(&client, &upstream, idle).await {
            Ok(true) => {}
            Ok(false) => {
                log::debug!("ingress: closed a connection from {peer}, idle for {idle:?}")
            }
            Err(e) => log::warn!("ingress: cannot carry a connection from {peer}: {e}"),
        }
        return;
    }
    log::debug!("ingress: no replica to take a connection from {peer}");
}

/// Carries bytes both ways, by the kernel (`splice`), until both sides are
/// done (true) or no byte has moved either way for `idle` (false). Bytes
/// passed on to a slow reader count as moving, as do bytes read. Fails
/// before carrying anything when no pipe can be made (no file descriptors
/// left).
pub async fn carry(a: &TcpStream, b: &TcpStream, idle: Duration) -> std::io::Result<bool> {
    let (a_to_b, b_to_a) = (splice::Pipe::new()?, splice::Pipe::new()?);
    let last = Cell::new(Instant::now());
    let there = async {
        let _ = splice::forward(a, b, a_to_b, &last).await;
    };
    let back = async {
        let _ = splice::forward(b, a, b_to_a, &last).await;
    };
    let quiet = async {
        loop {
            let due = last.get() + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    Ok(tokio::select! {
        _ = async { tokio::join!(there, back) } => true,
        _ = quiet => false,
    })
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
    use crate::ingress::splice::tests::pair;
    use tokio::io::AsyncReadExt;

    /// client <-> near (the balancer) carry far <-> replica, carried with
    /// `idle`; the carrying's outcome comes out of the handle.
    async fn carried(idle: Duration) -> (TcpStream, TcpStream, actix_rt::task::JoinHandle<bool>) {
        let (client, near) = pair().await;
        let (far, replica) = pair().await;
        let carrying = actix_rt::spawn(async move { carry(&near, &far, idle).await.unwrap() });
        (client, replica, carrying)
    }

    #[actix_rt::test]
    async fn a_connection_is_carried_while_bytes_move_and_closed_once_idle() {
        let idle = Duration::from_secs(1);
        let (mut client, mut replica, carrying) = carried(idle).await;
        // A byte each way every 0.3 s keeps it open well past 1 s.
        for round in 0..6u8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(&[round]).await.unwrap();
            let mut got = [0u8; 1];
            replica.read_exact(&mut got).await.unwrap();
            replica.write_all(&got).await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round]);
        }
        assert!(!carrying.is_finished(), "closed while bytes moved");
        // Then silence: closed once 1 s has passed with no byte.
        let closed = tokio::time::timeout(Duration::from_secs(10), carrying).await;
        assert!(!closed.expect("closed by 1 s of silence").unwrap());
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn a_slow_reader_being_written_to_is_not_idle() {
        let idle = Duration::from_secs(1);
        let (client, near) = pair().await;
        let (far, mut replica) = pair().await;
        // Small buffers towards the client, so the balancer's writes to
        // it follow its reads (the kernel's buffers would otherwise take
        // everything at once and leave the balancer nothing to do).
        rustix::net::sockopt::set_socket_recv_buffer_size(&client, 16 * 1024).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&near, 16 * 1024).unwrap();
        let carrying = actix_rt::spawn(async move { carry(&near, &far, idle).await.unwrap() });
        let mut client = client;
        // The replica sends far more than the buffers hold; the client
        // reads 64 KiB every 0.4 s, so for seconds only the writes to it
        // move.
        let sender = actix_rt::spawn(async move {
            let _ = replica.write_all(&vec![7u8; 64 << 20]).await;
            replica
        });
        let mut got = vec![0u8; 64 * 1024];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            client.read_exact(&mut got).await.unwrap();
            assert!(!carrying.is_finished(), "closed while bytes still moved");
        }
        carrying.abort();
        sender.abort();
    }

    #[actix_rt::test]
    async fn both_sides_done_ends_the_carrying() {
        let (mut client, mut replica, carrying) = carried(Duration::from_secs(60)).await;
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        replica.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        replica.write_all(b"pong").await.unwrap();
        replica.shutdown().await.unwrap();
        drop(replica);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        assert!(carrying.await.unwrap(), "ended as both sides finished");
    }

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
