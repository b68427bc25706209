//! Giving up on a peer that stops moving: [`Stall`] watches a poll that
//! stays pending, and [`WriteTimeout`] uses it on a client's connection so
//! that a client that stops reading an answer does not hold it (and the
//! replica's connection behind it) forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Nothing moved for the given time.
#[derive(Debug, thiserror::Error)]
#[error("nothing moved for {0:?}")]
pub struct Stalled(pub Duration);

impl From<Stalled> for io::Error {
    fn from(s: Stalled) -> Self {
        io::Error::new(io::ErrorKind::TimedOut, s)
    }
}

/// A clock that runs while a poll stays pending and starts again whenever
/// it is ready.
pub struct Stall {
    patience: Duration,
    /// Kept between stalls (reset, not made anew).
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the clock runs (the last poll was pending).
    running: bool,
}

impl Stall {
    pub fn new(patience: Duration) -> Self {
        Stall {
            patience,
            timer: None,
            running: false,
        }
    }

    /// `polled` as it is, or [`Stalled`] once it has stayed pending for
    /// the patience.
    pub fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<T>) -> Poll<Result<T, Stalled>> {
        if let Poll::Ready(value) = polled {
            self.running = false;
            return Poll::Ready(Ok(value));
        }
        // The clock is read only when it starts, not on every poll while
        // it runs.
        let timer = match &mut self.timer {
            Some(timer) if !self.running => {
                timer.as_mut().reset(Instant::now() + self.patience);
                timer
            }
            Some(timer) => timer,
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep(self.patience))),
        };
        self.running = true;
        timer
            .as_mut()
            .poll(cx)
            .map(|()| Err(Stalled(self.patience)))
    }
}

/// A connection whose writes fail ([`io::ErrorKind::TimedOut`]) once one
/// has waited for room for the patience; reads are untouched.
pub struct WriteTimeout<S> {
    inner: S,
    stall: Stall,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, patience: Duration) -> Self {
        WriteTimeout {
            inner,
            stall: Stall::new(patience),
        }
    }
}

fn flatten<T>(polled: Poll<Result<io::Result<T>, Stalled>>) -> Poll<io::Result<T>> {
    polled.map(|watched| watched.unwrap_or_else(|stalled| Err(stalled.into())))
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        flatten(this.stall.watch(cx, polled))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        flatten(this.stall.watch(cx, polled))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        flatten(this.stall.watch(cx, polled))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Polls `stall` once with a pending poll: whether it has stalled.
    async fn pending(stall: &mut Stall) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(stall.watch(cx, Poll::<()>::Pending).is_ready()))
            .await
    }

    async fn ready(stall: &mut Stall) -> bool {
        std::future::poll_fn(|cx| {
            Poll::Ready(matches!(
                stall.watch(cx, Poll::Ready(())),
                Poll::Ready(Ok(()))
            ))
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_poll_stalls_after_the_patience_and_a_ready_one_starts_the_clock_again() {
        let step = Duration::from_millis(1500);
        let mut stall = Stall::new(Duration::from_secs(2));
        assert!(!pending(&mut stall).await);
        tokio::time::advance(step).await;
        assert!(!pending(&mut stall).await);
        assert!(ready(&mut stall).await);
        // A fresh clock: 1.5 s more (3 s in all) is not a stall, 2 s is.
        assert!(!pending(&mut stall).await);
        tokio::time::advance(step).await;
        assert!(!pending(&mut stall).await);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(pending(&mut stall).await);
    }

    #[tokio::test]
    async fn writing_to_a_peer_that_does_not_read_times_out_but_a_reading_peer_gets_everything() {
        const LEN: usize = 16 << 20;
        let patience = Duration::from_millis(300);
        // A peer that never reads: the write gives up.
        let (ours, _theirs) = tokio::io::duplex(64 << 10);
        let mut writer = WriteTimeout::new(ours, patience);
        let written = writer.write_all(&vec![1u8; LEN]).await;
        let e = written.expect_err("the write outlived a peer that does not read");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // A peer that reads, slowly but steadily: every byte arrives.
        let (ours, mut theirs) = tokio::io::duplex(64 << 10);
        let mut writer = WriteTimeout::new(ours, patience);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        writer
            .write_all(&vec![1u8; LEN / 16])
            .await
            .expect("written");
        writer.shutdown().await.expect("shut down");
        drop(writer);
        assert_eq!(reader.await.expect("the reader"), LEN / 16);
    }
}
