//! Hostile clients against a real manager, bounded and on loopback, each
//! from its own address (127.0.0.2, 127.0.0.3): bodies that trickle in a
//! byte a second are cut off with a JSON 408, a flood of idle connections
//! gets no more than its share, and meanwhile a client from 127.0.0.1 is
//! answered within a second every time.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A blocking TCP connection from `source` to `to`.
fn connect_from(source: IpAddr, to: SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = s.connect(to).await.expect("connect");
        let std = stream.into_std().unwrap();
        std.set_nonblocking(false).unwrap();
        std
    })
}

/// While `busy` holds, asks the manager for its nodes from 127.0.0.1 every
/// 200 ms; the slowest answer.
async fn watch_answers(cluster: &Cluster, busy: Arc<AtomicBool>) -> Duration {
    let http = cluster.http();
    let url = format!("{}/nodes", cluster.manager_url);
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while busy.load(Ordering::Relaxed) || asked < 5 {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), http.get(&url).send()).await;
        let took = start.elapsed();
        let ok = matches!(&r, Ok(Ok(r)) if r.status() == 200);
        assert!(ok, "the manager did not answer a good client: {r:?}");
        slowest = slowest.max(took);
        asked += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    slowest
}

fn manager_addr(cluster: &Cluster) -> SocketAddr {
    cluster
        .manager_url
        .trim_start_matches("https://")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn slow_bodies_are_cut_off_and_others_are_answered_meanwhile() {
    let cluster = Cluster::split(0);
    cluster.ready().await;
    let addr = manager_addr(&cluster);
    let files = cluster.files();
    let tls = Arc::new(files.user_tls());
    let token = files.admin_token.clone();
    let busy = Arc::new(AtomicBool::new(true));

    // 20 bodies of 100 bytes, a byte a second, from 127.0.0.3.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let (tls, token) = (tls.clone(), token.clone());
            std::thread::spawn(move || {
                let tcp = connect_from("127.0.0.3".parse().unwrap(), addr);
                tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let conn = rustls::ClientConnection::new(tls, name).unwrap();
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let head = format!(
                    "POST /tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
                     content-type: application/json\r\ncontent-length: 100\r\n\r\n"
                );
                let started = Instant::now();
                stream.write_all(head.as_bytes()).unwrap();
                stream.flush().unwrap();
                // Trickle until the server answers (reads do not wait).
                let sock = stream.sock.try_clone().unwrap();
                sock.set_nonblocking(true).unwrap();
                let mut answer = Vec::new();
                for _ in 0..30 {
                    if stream.write_all(b" ").and_then(|_| stream.flush()).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            answer.extend_from_slice(&buf[..n]);
                            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}")
                            {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
                (
                    started.elapsed(),
                    String::from_utf8_lossy(&answer).into_owned(),
                )
            })
        })
        .collect();

    let watcher = {
        let busy = busy.clone();
        let cluster = &cluster;
        async move { watch_answers(cluster, busy).await }
    };
    let waiter = async {
        let mut out = Vec::new();
        for t in slow {
            out.push(
                tokio::task::spawn_blocking(move || t.join().unwrap())
                    .await
                    .unwrap(),
            );
        }
        busy.store(false, Ordering::Relaxed);
        out
    };
    let (slowest, answers) = tokio::join!(watcher, waiter);
    for (took, answer) in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "after {took:?}: {answer}"
        );
        assert!(answer.contains("\"error\""), "{answer}");
        assert!(*took < Duration::from_secs(20), "{took:?}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a good client waited {slowest:?}"
    );
    println!("20 slow bodies cut off with 408; the slowest good answer meanwhile: {slowest:?}");
}

#[tokio::test]
async fn a_flood_of_idle_connections_gets_its_share_and_no_more() {
    let cluster = Cluster::split(0);
    cluster.ready().await;
    let addr = manager_addr(&cluster);
    let busy = Arc::new(AtomicBool::new(true));
    let flood = 300;
    let flooder = {
        let busy = busy.clone();
        std::thread::spawn(move || {
            // Open them all; a connection over the share is closed at once.
            let conns: Vec<std::net::TcpStream> = (0..flood)
                .map(|_| connect_from("127.0.0.2".parse().unwrap(), addr))
                .collect();
            std::thread::sleep(Duration::from_millis(500));
            let mut closed = 0;
            for c in &conns {
                c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let mut buf = [0u8; 1];
                match (&*c).read(&mut buf) {
                    Ok(0) => closed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
                    _ => {}
                }
            }
            // Hold the rest idle past the handshake deadline.
            std::thread::sleep(Duration::from_secs(6));
            let mut cut = 0;
            for c in &conns {
                let mut buf = [0u8; 1];
                if matches!((&*c).read(&mut buf), Ok(0) | Err(_)) {
                    cut += 1;
                }
            }
            busy.store(false, Ordering::Relaxed);
            (closed, cut)
        })
    };
    let slowest = watch_answers(&cluster, busy).await;
    let (closed, cut) = tokio::task::spawn_blocking(move || flooder.join().unwrap())
        .await
        .unwrap();
    assert!(
        closed >= flood - cube::listener::per_peer::MAX_PER_PEER,
        "only {closed} of {flood} closed at once"
    );
    assert_eq!(
        cut, flood,
        "idle connections outlived the handshake deadline"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a good client waited {slowest:?}"
    );
    println!(
        "{closed} of {flood} idle connections refused at once, all cut by the handshake deadline; slowest good answer {slowest:?}"
    );
}
