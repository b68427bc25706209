//! At most [`MAX_PER_PEER`] connections at once from one address: one
//! flooding client (connections opened and left idle, handshakes never
//! finished) runs out of its own share, not of the node's. Counted on the
//! listener's one worker thread, so the count is plain `Rc<RefCell<..>>`
//! shared by nothing else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_rt::net::{ActixStream, Ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections one address may hold at once.
pub const MAX_PER_PEER: usize = 256;

/// Open connections by source address.
#[derive(Debug, Default, Clone)]
pub struct PeerCounts(Rc<RefCell<HashMap<IpAddr, usize>>>);

impl PeerCounts {
    /// A place for one more connection from `peer`, or none when it holds
    /// its share already.
    pub fn admit(&self, peer: IpAddr) -> Option<Admitted> {
        let mut counts = self.0.borrow_mut();
        let count = counts.entry(peer).or_default();
        if *count >= MAX_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Admitted {
            peer,
            counts: self.clone(),
        })
    }

    pub fn open(&self, peer: IpAddr) -> usize {
        self.0.borrow().get(&peer).copied().unwrap_or(0)
    }
}

/// One admitted connection's place; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    peer: IpAddr,
    counts: PeerCounts,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.counts.0.borrow_mut();
        if let Some(count) = counts.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// A connection that holds its place while it lives.
pub struct Counted<T> {
    io: T,
    _place: Admitted,
}

impl<T> Counted<T> {
    pub fn new(io: T, place: Admitted) -> Self {
        Counted { io, _place: place }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<T: ActixStream> ActixStream for Counted<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.io.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.io.poll_write_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_and_its_places_come_back() {
        let counts = PeerCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let held: Vec<Admitted> = (0..MAX_PER_PEER)
            .map(|_| counts.admit(a).unwrap())
            .collect();
        assert!(counts.admit(a).is_none(), "over its share");
        assert!(counts.admit(b).is_some(), "another peer is not held back");
        drop(held);
        assert_eq!(counts.open(a), 0);
        assert!(counts.admit(a).is_some());
    }
}
