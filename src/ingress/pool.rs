//! The connections one thread of a published HTTP port keeps to the
//! replicas: HTTP/1, one request at a time on each, kept open after an
//! answer and reused (the one used last first), closed once unused for
//! [`IDLE`]. They live on the thread that made them (its runtime drives
//! them), so nothing here is shared between threads or locked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection unused this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);

type Sender = SendRequest<Full<Bytes>>;

/// Why a request did not get an answer's head.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// No connection to the replica could be made: nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The replica took no connection within the given time.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The request went out (or may have) and no answer came.
    #[error(transparent)]
    Send(#[from] hyper::Error),
}

impl Failed {
    /// Whether the request surely did not reach the replica.
    pub fn unsent(&self) -> bool {
        matches!(self, Failed::Connect(_) | Failed::ConnectTimeout(_))
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One thread's connections to the replicas, by replica address.
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    /// When connections unused for [`IDLE`] were last closed.
    swept: Cell<Instant>,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Rc<Self> {
        Rc::new(Pool {
            idle: RefCell::new(HashMap::new()),
            connect_timeout,
            swept: Cell::new(Instant::now()),
        })
    }

    /// Sends `req` (origin-form, with its `Host`) to the replica at
    /// `target` over a connection it already has, or a new one. A kept
    /// connection found closed before the request went out is passed over
    /// for the next (or a new one). The answer's connection comes back to
    /// the pool once its [`Lease`] is given back.
    pub async fn send(
        self: &Rc<Self>,
        target: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), Failed> {
        while let Some(mut kept) = self.take(target) {
            // Ready once its last answer has been read to the end; an
            // error when the replica closed it meanwhile.
            if kept.ready().await.is_err() {
                continue;
            }
            match kept.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(target, kept))),
                Err(mut e) => match e.take_message() {
                    // Closed before it was sent: on to the next.
                    Some(unsent) => req = unsent,
                    None => return Err(Failed::Send(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(target).await?;
        let response = sender.send_request(req).await?;
        Ok((response, self.lease(target, sender)))
    }

    /// The connection to `target` used last and not closed, if any.
    fn take(&self, target: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let kept = idle.get_mut(&target)?;
        let now = Instant::now();
        while let Some(Idle { sender, since }) = kept.pop() {
            if !sender.is_closed() && now.duration_since(since) < IDLE {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self, target: SocketAddr) -> Result<Sender, Failed> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| Failed::ConnectTimeout(self.connect_timeout))?
            .map_err(Failed::Connect)?;
        // Small answers and requests go out at once, not after an ACK.
        stream.set_nodelay(true).map_err(Failed::Connect)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                log::debug!("ingress: a connection to {target} ended: {e}");
            }
        });
        Ok(sender)
    }

    fn lease(self: &Rc<Self>, target: SocketAddr, sender: Sender) -> Lease {
        Lease {
            pool: self.clone(),
            target,
            sender: Some(sender),
        }
    }

    fn give_back(&self, target: SocketAddr, sender: Sender) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        idle.entry(target)
            .or_default()
            .push(Idle { sender, since: now });
        // Now and then, the connections unused too long (to replicas
        // gone, or more than the load needs now) are closed.
        if now.duration_since(self.swept.get()) >= IDLE {
            self.swept.set(now);
            idle.retain(|_, kept| {
                kept.retain(|k| !k.sender.is_closed() && now.duration_since(k.since) < IDLE);
                !kept.is_empty()
            });
        }
    }

    /// Connections kept for reuse (for the tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }

    /// Connections kept and not seen closed (for the tests).
    #[cfg(test)]
    fn kept_open(&self) -> usize {
        let idle = self.idle.borrow();
        idle.values()
            .flatten()
            .filter(|k| !k.sender.is_closed())
            .count()
    }
}

/// A connection carrying an answer: given back to its pool by
/// [`Lease::give_back`] once the answer has been read whole; dropped
/// otherwise, and then closed (an answer left half read spoils it).
pub struct Lease {
    pool: Rc<Pool>,
    target: SocketAddr,
    sender: Option<Sender>,
}

impl Lease {
    pub fn give_back(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.give_back(self.target, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1 server on loopback answering each request with the
    /// number of the connection it came on; counts its connections.
    async fn numbering_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::task::spawn_local(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = counted.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_local(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            n.to_string(),
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, count)
    }

    fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn text(response: Response<Incoming>) -> String {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_given_back_and_not_while_leased() {
        let tasks = tokio::task::LocalSet::new();
        tasks
            .run_until(async {
                let (addr, count) = numbering_server().await;
                let pool = Pool::new(Duration::from_secs(1));
                let (first, lease) = pool.send(addr, get(addr)).await.unwrap();
                assert_eq!(text(first).await, "0");
                lease.give_back();
                assert_eq!(pool.kept(), 1);
                // Given back: the next request goes over the same one.
                let (again, held) = pool.send(addr, get(addr)).await.unwrap();
                assert_eq!(text(again).await, "0");
                // Leased (not given back): a second request needs another.
                let (other, lease) = pool.send(addr, get(addr)).await.unwrap();
                assert_eq!(text(other).await, "1");
                lease.give_back();
                // A lease dropped (its answer maybe half read) is not kept.
                drop(held);
                assert_eq!(pool.kept(), 1);
                assert_eq!(count.load(Ordering::SeqCst), 2);
            })
            .await;
    }

    #[tokio::test]
    async fn a_kept_connection_the_replica_closed_is_passed_over() {
        let tasks = tokio::task::LocalSet::new();
        tasks
            .run_until(async {
                // A replica that answers one request per connection and
                // closes it without saying so (no `Connection: close`).
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::task::spawn_local(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    loop {
                        let (mut stream, _) = listener.accept().await.unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
                let pool = Pool::new(Duration::from_secs(1));
                for _ in 0..3 {
                    let (answer, lease) = pool.send(addr, get(addr)).await.unwrap();
                    assert_eq!(text(answer).await, "ok");
                    lease.give_back();
                    // Once the kept connection has seen its end.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while pool.kept_open() > 0 {
                        assert!(Instant::now() < deadline, "the closing never seen");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
            .await;
    }

    #[tokio::test]
    async fn a_replica_that_takes_no_connection_fails_unsent() {
        let tasks = tokio::task::LocalSet::new();
        tasks
            .run_until(async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                drop(listener);
                let pool = Pool::new(Duration::from_secs(1));
                match pool.send(addr, get(addr)).await {
                    Err(failed) => assert!(failed.unsent(), "{failed}"),
                    Ok(_) => panic!("answered by a closed port"),
                }
            })
            .await;
    }
}
