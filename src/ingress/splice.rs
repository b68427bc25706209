//! One direction of a balanced TCP connection, moved by the kernel:
//! `splice(2)` from the reading socket into a pipe and from the pipe into
//! the writing socket, so the bytes never enter the balancer's memory (no
//! copy buffers, two copies fewer per byte than reading and writing).

use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes one splice moves at most: the pipe's default capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// The pipe one direction's bytes pass through.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// Fails when the process has no file descriptors left.
    pub fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        Ok(Pipe { read, write })
    }
}

/// Moves bytes from `from` to `to` through `pipe` until `from` has no
/// more (its peer shut its side) or either fails; then shuts `to`'s
/// writing side, so its peer sees the end. Every move notes the time in
/// `last`. Returns the bytes moved.
pub async fn forward(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    last: &Cell<Instant>,
) -> io::Result<u64> {
    let moved = pass(from, to, &pipe, last).await;
    // The peer learns nothing more comes; an error here (it is gone)
    // changes nothing.
    let _ = rustix::net::shutdown(to, rustix::net::Shutdown::Write);
    moved
}

async fn pass(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    last: &Cell<Instant>,
) -> io::Result<u64> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut held = 0usize; // bytes in the pipe
    let mut ended = false; // `from` has no more
    let mut total = 0u64;
    // A splice into a pipe that holds bytes can fail for want of room in
    // the pipe (its slots fill with small segments), not of bytes in the
    // socket; the engine's readiness of `from` is then cleared although
    // bytes may wait. Until a splice into the empty pipe finds none, `from`
    // is read without asking its readiness.
    let mut unsure = false;
    loop {
        let mut moved = false;
        if !ended && held < CHUNK {
            let room = CHUNK - held;
            let fill = || {
                Ok(rustix::pipe::splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    room,
                    flags,
                )?)
            };
            let filled = if unsure {
                fill()
            } else {
                from.try_io(Interest::READABLE, fill)
            };
            match filled {
                Ok(0) => ended = true,
                Ok(n) => {
                    held += n;
                    moved = true;
                    last.set(Instant::now());
                }
                // Into an empty pipe, only the socket can lack bytes.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => unsure = held > 0,
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            let drain = || {
                Ok(rustix::pipe::splice(
                    &pipe.read, None, to, None, held, flags,
                )?)
            };
            match to.try_io(Interest::WRITABLE, drain) {
                Ok(n) => {
                    held -= n;
                    total += n as u64;
                    moved |= n > 0;
                    last.set(Instant::now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if ended && held == 0 {
            return Ok(total);
        }
        if moved {
            // A transfer that never waits still lets the thread's other
            // work (the other direction, the idle timer, other
            // connections) run: splice spends none of tokio's budget.
            tokio::task::consume_budget().await;
            continue;
        }
        // Neither side could move: wait for one that can.
        let can_fill = !ended && held < CHUNK && !unsure;
        match (can_fill, held > 0) {
            (true, true) => {
                tokio::select! {
                    r = from.readable() => r?,
                    r = to.writable() => r?,
                }
            }
            (true, false) => from.readable().await?,
            (false, true) => to.writable().await?,
            // Not reached (unsure means bytes are held); stay fair anyway.
            (false, false) => tokio::task::yield_now().await,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair of TCP sockets on loopback.
    pub(in crate::ingress) async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (near, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.unwrap(), accepted.unwrap().0)
    }

    #[actix_rt::test]
    async fn bytes_pass_whole_and_in_order_then_the_end() {
        let (mut client, near) = pair().await;
        let (far, mut replica) = pair().await;
        let last = Cell::new(Instant::now());
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = actix_rt::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let reader = actix_rt::spawn(async move {
            let mut got = Vec::new();
            replica.read_to_end(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new().unwrap();
        let moved = forward(&near, &far, pipe, &last).await.unwrap();
        assert_eq!(moved, expected.len() as u64);
        let got = reader.await.unwrap();
        assert!(got == expected, "the bytes arrived changed or reordered");
        writer.await.unwrap();
    }
}
