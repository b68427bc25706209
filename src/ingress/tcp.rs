//! A published TCP port: each connection goes to the next replica in
//! round-robin order; one that cannot be reached within a second is
//! skipped for the next. With `proxy_protocol`, the replica first gets a
//! PROXY protocol v2 header naming the client. A connection that carries
//! no byte either way for the port's `idle_timeout_s` is closed.

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Route, allowed, candidates};
use crate::worker::endpoints::EndpointView;

/// Connections one published port carries at once; more wait for a place.
const MAX_CONNECTIONS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read at once from each side (tokio's default is 8 KiB: four
/// times the system calls for a bulk transfer); two per connection, so at
/// most 256 MiB for a port's 4,096 connections.
const COPY_BUFFER: usize = 32 * 1024;

pub async fn serve(
    listener: TcpListener,
    route: Route,
    view: EndpointView,
    allow: Option<ipnet::IpNet>,
) {
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
        if !allowed(allow, peer.ip()) {
            continue;
        }
        let targets = candidates(&view, &route, turn.fetch_add(1, Ordering::Relaxed));
        let proxy = route.expose.proxy_protocol;
        let idle = Duration::from_secs(u64::from(route.expose.idle_timeout_s));
        actix_rt::spawn(async move {
            forward(client, peer, targets, proxy, idle).await;
            drop(place);
        });
    }
}

/// Connects to the first target that answers and carries bytes both ways.
async fn forward(
    mut client: TcpStream,
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
        if !carry(&mut client, &mut upstream, idle).await {
            log::debug!("ingress: closed a connection from {peer}, idle for {idle:?}");
        }
        return;
    }
    log::debug!("ingress: no replica to take a connection from {peer}");
}

/// Carries bytes both ways until both sides are done (true) or no byte
/// has moved for `idle` (false).
pub async fn carry<A, B>(a: &mut A, b: &mut B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Cell::new(Instant::now());
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    // Bytes read or written either way count as activity: a slow reader
    // being written to is not idle.
    let (mut a_write, mut b_write) = (Watched::new(a_write, &last), Watched::new(b_write, &last));
    let mut a_read = BufReader::with_capacity(COPY_BUFFER, Watched::new(a_read, &last));
    let mut b_read = BufReader::with_capacity(COPY_BUFFER, Watched::new(b_read, &last));
    let there = async {
        let _ = tokio::io::copy_buf(&mut a_read, &mut b_write).await;
        let _ = b_write.shutdown().await;
    };
    let back = async {
        let _ = tokio::io::copy_buf(&mut b_read, &mut a_write).await;
        let _ = a_write.shutdown().await;
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
    tokio::select! {
        _ = async { tokio::join!(there, back) } => true,
        _ = quiet => false,
    }
}

/// A reader or writer that notes when it last moved a byte.
struct Watched<'a, R> {
    inner: R,
    last: &'a Cell<Instant>,
}

impl<'a, R> Watched<'a, R> {
    fn new(inner: R, last: &'a Cell<Instant>) -> Self {
        Watched { inner, last }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        polled
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Watched<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.last.set(Instant::now());
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    use tokio::io::AsyncReadExt;

    #[actix_rt::test]
    async fn a_connection_is_carried_while_bytes_move_and_closed_once_idle() {
        tokio::time::pause();
        let idle = Duration::from_secs(60);
        let (mut client, mut near) = tokio::io::duplex(1024);
        let (mut far, mut replica) = tokio::io::duplex(1024);
        let carried = actix_rt::spawn(async move { carry(&mut near, &mut far, idle).await });
        // Bytes every 50 s keep it open well past 60 s.
        for round in 0..4u8 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(&[round]).await.unwrap();
            let mut got = [0u8; 1];
            replica.read_exact(&mut got).await.unwrap();
            replica.write_all(&got).await.unwrap();
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round]);
        }
        assert!(!carried.is_finished());
        // Then silence: closed once 60 s have passed with no byte.
        let closed = tokio::time::timeout(Duration::from_secs(61), carried).await;
        assert!(!closed.expect("closed by 60 s of silence").unwrap());
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[actix_rt::test]
    async fn a_slow_reader_being_written_to_is_not_idle() {
        tokio::time::pause();
        let idle = Duration::from_secs(60);
        // The client's side holds 1 KiB at a time.
        let (mut client, mut near) = tokio::io::duplex(1024);
        let (mut far, mut replica) = tokio::io::duplex(256 * 1024);
        let carried = actix_rt::spawn(async move { carry(&mut near, &mut far, idle).await });
        // The replica sends everything at once; the client then reads a
        // KiB every 40 s, so only the writes to it move for minutes.
        replica.write_all(&vec![7u8; 128 * 1024]).await.unwrap();
        let mut got = vec![0u8; 1024];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            client.read_exact(&mut got).await.unwrap();
            assert!(!carried.is_finished(), "closed while bytes still moved");
        }
    }

    #[actix_rt::test]
    async fn both_sides_done_ends_the_carrying() {
        let (mut client, mut near) = tokio::io::duplex(1024);
        let (mut far, mut replica) = tokio::io::duplex(1024);
        let carried =
            actix_rt::spawn(
                async move { carry(&mut near, &mut far, Duration::from_secs(60)).await },
            );
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
        assert!(carried.await.unwrap(), "ended as both sides finished");
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
