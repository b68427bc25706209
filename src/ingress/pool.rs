//! The connections one balancer thread keeps to the replicas: plain
//! HTTP/1 (hyper's client connection, its task on the thread), made when
//! none is free, given back once a response has been passed on whole, and
//! reused newest first. Nothing in it is shared with another thread, so
//! taking and giving back a connection is a lookup in the thread's own
//! map (no lock, no task of its own per request).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

type Sender = SendRequest<Full<Bytes>>;

/// Why a request did not get a response from its replica.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot connect within {0:?}")]
    ConnectTimeout(Duration),
    /// The connection failed before any of the request went out.
    #[error("the request was not sent: {0}")]
    NotSent(#[source] hyper::Error),
    /// The replica failed once the request was (or may have been) sent.
    #[error("{0}")]
    Failed(#[source] hyper::Error),
}

impl SendError {
    /// Whether the replica never got the request (any replica may take it
    /// instead, whatever its method).
    pub fn unsent(&self) -> bool {
        !matches!(self, SendError::Failed(_))
    }
}

/// A connection kept for the next request.
struct Idle {
    sender: Sender,
    since: Instant,
}

pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    keep_idle: Duration,
}

/// Connections kept idle per replica at most (more are closed when given
/// back).
const MOST_IDLE: usize = 512;

impl Pool {
    /// Made on the thread (inside the `LocalSet`) that uses it: its sweep
    /// of idle connections runs there as a task of its own while the pool
    /// lives.
    pub fn new(connect_timeout: Duration, keep_idle: Duration) -> Rc<Self> {
        let pool = Rc::new(Pool {
            idle: RefCell::new(HashMap::new()),
            connect_timeout,
            keep_idle,
        });
        tokio::task::spawn_local(sweeping(Rc::downgrade(&pool), keep_idle));
        pool
    }

    /// Sends `req` to the replica at `addr`: over a kept connection that
    /// is free, else over a new one. A request a kept connection could
    /// not take (the replica closed it meanwhile, before any of the
    /// request went out) goes over the next, or a new one. The response,
    /// and the connection's lease: give it back ([`Lease::give_back`])
    /// once the response's body has been read whole.
    pub async fn send(
        self: &Rc<Self>,
        addr: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take(addr) {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(addr, sender))),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok((response, self.lease(addr, sender))),
            Err(mut e) => match e.take_message() {
                Some(_) => Err(SendError::NotSent(e.into_error())),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    fn lease(self: &Rc<Self>, addr: SocketAddr, sender: Sender) -> Lease {
        Lease {
            kept: Some((self.clone(), addr, sender)),
        }
    }

    /// The newest kept connection to `addr` that is free (those closed,
    /// or idle too long, are let go on the way).
    fn take(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let kept = idle.get_mut(&addr)?;
        while let Some(Idle { sender, since }) = kept.pop() {
            if sender.is_ready() && since.elapsed() < self.keep_idle {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, SendError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
                .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::NotSent)?;
        // Ends when the replica closes it, or once its sender is let go
        // and it is idle.
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                log::debug!("ingress: a connection to {addr} ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Keeps `sender` for the next request to `addr`: at once when it is
    /// free already, else once it is (its connection's task has not yet
    /// seen the end of the last response).
    fn give_back(self: Rc<Self>, addr: SocketAddr, mut sender: Sender) {
        if sender.is_ready() {
            self.keep(addr, sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        let wait = self.keep_idle;
        tokio::task::spawn_local(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, sender.ready()).await {
                self.keep(addr, sender);
            }
        });
    }

    fn keep(&self, addr: SocketAddr, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        let kept = idle.entry(addr).or_default();
        if kept.len() < MOST_IDLE {
            kept.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Lets go of the connections idle too long (or closed), and of the
    /// replicas with none left: a replica gone keeps nothing open here
    /// for long. A sender let go ends its idle connection.
    fn sweep(&self, now: Instant) {
        let keep_idle = self.keep_idle;
        self.idle.borrow_mut().retain(|_, kept| {
            kept.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < keep_idle);
            !kept.is_empty()
        });
    }
}

/// Sweeps `pool` every `every` while it lives, so that its connections
/// are closed after that long idle, traffic or none, not when the replicas
/// tire of them.
async fn sweeping(pool: Weak<Pool>, every: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(Instant::now()),
            None => return,
        }
    }
}

/// A connection lent to one request until its response has been passed
/// on; dropped without [`Lease::give_back`] (the response cut short), the
/// connection is closed.
pub struct Lease {
    kept: Option<(Rc<Pool>, SocketAddr, Sender)>,
}

impl Lease {
    pub fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.kept.take() {
            pool.give_back(addr, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A replica that answers every request on a connection with `200`,
    /// keeps each connection open until the pool closes it, and counts
    /// the connections it took and those closed.
    async fn replica() -> (SocketAddr, Rc<Cell<usize>>, Rc<Cell<usize>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (taken, closed) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let (counted, ended) = (taken.clone(), closed.clone());
        tokio::task::spawn_local(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.set(counted.get() + 1);
                let ended = ended.clone();
                tokio::task::spawn_local(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    ended.set(ended.get() + 1);
                });
            }
        });
        (addr, taken, closed)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "web")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn read_whole(response: Response<Incoming>) -> Bytes {
        use http_body_util::BodyExt;
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_given_back_is_reused_and_one_not_given_back_is_not() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (addr, taken, _) = replica().await;
                let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(30));
                for _ in 0..5 {
                    let (response, mut lease) = pool.send(addr, get()).await.unwrap();
                    assert_eq!(&read_whole(response).await[..], b"ok");
                    lease.give_back();
                    // Its task may see the end of the response after us.
                    tokio::task::yield_now().await;
                }
                assert_eq!(taken.get(), 1, "one connection for five requests in a row");
                // Cut short (not given back): the next request needs a new one.
                let (_response, lease) = pool.send(addr, get()).await.unwrap();
                drop(lease);
                let (response, mut lease) = pool.send(addr, get()).await.unwrap();
                read_whole(response).await;
                lease.give_back();
                assert_eq!(taken.get(), 2);
            })
            .await;
    }

    #[tokio::test]
    async fn a_kept_connection_the_replica_closed_is_passed_over() {
        tokio::task::LocalSet::new()
            .run_until(async {
                // A replica that answers one request per connection and
                // closes it without saying so.
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::task::spawn_local(async move {
                    loop {
                        let (mut stream, _) = listener.accept().await.unwrap();
                        let mut buf = vec![0u8; 4096];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
                let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(30));
                for _ in 0..3 {
                    let (response, mut lease) = pool.send(addr, get()).await.unwrap();
                    assert_eq!(&read_whole(response).await[..], b"ok");
                    lease.give_back();
                    // Once the close has reached the kept connection.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while pool
                        .idle
                        .borrow()
                        .values()
                        .flatten()
                        .any(|i| !i.sender.is_closed())
                    {
                        assert!(
                            Instant::now() < deadline,
                            "the close never reached the pool"
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                // None of them was reused.
                assert!(pool.take(addr).is_none());
            })
            .await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_with_no_traffic_after_keep_idle() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (addr, _, closed) = replica().await;
                let pool = Pool::new(Duration::from_secs(1), Duration::from_millis(200));
                let (response, mut lease) = pool.send(addr, get()).await.unwrap();
                read_whole(response).await;
                lease.give_back();
                let deadline = Instant::now() + Duration::from_secs(5);
                while closed.get() == 0 {
                    assert!(
                        Instant::now() < deadline,
                        "the idle connection was still open after 5 s"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(pool.idle.borrow().is_empty());
            })
            .await;
    }

    #[tokio::test]
    async fn nobody_listening_is_a_request_not_sent() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let addr = {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap()
                };
                let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(30));
                let e = pool.send(addr, get()).await.map(drop).unwrap_err();
                assert!(e.unsent(), "{e}");
            })
            .await;
    }
}
