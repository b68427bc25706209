//! The errors actix-http answers by itself, before any App runs: a request
//! head too large (431: over 128 KiB, or over 96 headers), malformed (400),
//! or not complete in time (408). It writes them with an empty body and
//! offers no hook for one, so this wrapper of each connection rewrites such a
//! response, as it is written, into our JSON shape.
//!
//! What is rewritten is exactly what actix-http's dispatcher writes for
//! them: an error status, `content-length: 0`, no content type, and nothing
//! after it on the connection (it closes). An App's own errors always have a
//! JSON body (see `json_errors`), so they never look like that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ApiError;

/// An error head is short; only the end of a write is searched for one.
const TAIL: usize = 1024;

/// A connection whose bodiless error responses get a JSON body.
pub struct JsonErrorHeads<T> {
    io: T,
    /// A rewritten response, taken from the writer, not all written yet.
    queued: Vec<u8>,
    sent: usize,
}

impl<T> JsonErrorHeads<T> {
    pub fn new(io: T) -> Self {
        JsonErrorHeads {
            io,
            queued: Vec::new(),
            sent: 0,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncWrite + Unpin> JsonErrorHeads<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.queued.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.queued[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.queued.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorHeads<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorHeads<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        match rewrite(buf) {
            Some(rewritten) => {
                // All of `buf` is taken: what is not written yet is written
                // by the next write, flush or shutdown.
                this.queued = rewritten;
                if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// `buf` with a bodiless error response at its end given a JSON body;
/// `None` when it does not end with one.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let from = buf.len().saturating_sub(TAIL);
    let at = from + find_last(&buf[from..], b"HTTP/1.")?;
    let (status_line, status, headers) = bodiless_error_head(&buf[at..])?;
    let body = ApiError::new(status, message(status)).body();
    let mut out = buf[..at].to_vec();
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(out)
}

/// A complete response head with an error status, `content-length: 0` and
/// no content type, ending exactly where `head` ends: its status line, its
/// status, and its other header lines.
fn bodiless_error_head(head: &[u8]) -> Option<(&str, StatusCode, Vec<&str>)> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line.split(' ').nth(1)?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let mut empty = false;
    let mut others = Vec::new();
    for line in lines {
        // A line without a colon (the blank line before a body) is no header.
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => empty = value.trim() == "0",
            "content-type" | "transfer-encoding" => return None,
            _ => others.push(line),
        }
    }
    empty.then_some((status_line, status, others))
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn message(status: StatusCode) -> String {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "request head too large (at most 96 headers and 128 KiB)".into()
        }
        StatusCode::BAD_REQUEST => "malformed HTTP request".into(),
        StatusCode::REQUEST_TIMEOUT => "the request head did not arrive in time".into(),
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Mon, 23 Nov 2026 07:04:35 GMT";

    fn actix_error(status: &str) -> String {
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n{DATE}\r\n\r\n")
    }

    /// Splits a written response into its head lines and its body.
    fn split(response: &[u8]) -> (Vec<String>, serde_json::Value) {
        let text = String::from_utf8(response.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let lines = head.split("\r\n").map(str::to_string).collect();
        (lines, serde_json::from_str(body).unwrap())
    }

    #[test]
    fn actix_bodiless_errors_get_a_json_body() {
        for (status, needle) in [
            ("431 Request Header Fields Too Large", "too large"),
            ("400 Bad Request", "malformed"),
            ("408 Request Timeout", "in time"),
            ("500 Internal Server Error", "internal server error"),
        ] {
            let out = rewrite(actix_error(status).as_bytes()).expect(status);
            let (lines, body) = split(&out);
            assert_eq!(lines[0], format!("HTTP/1.1 {status}"));
            assert!(
                lines.contains(&"connection: close".to_string()),
                "{lines:?}"
            );
            assert!(lines.contains(&DATE.to_string()), "{lines:?}");
            assert!(lines.contains(&"content-type: application/json".to_string()));
            let length = format!("content-length: {}", body.to_string().len());
            assert!(lines.contains(&length), "{lines:?} {body}");
            assert!(!lines.contains(&"content-length: 0".to_string()));
            assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
        }
    }

    #[test]
    fn earlier_responses_in_the_same_write_are_kept() {
        let first = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        let buf = format!(
            "{first}{}",
            actix_error("431 Request Header Fields Too Large")
        );
        let out = rewrite(buf.as_bytes()).unwrap();
        assert!(out.starts_with(first.as_bytes()));
        let (lines, body) = split(&out[first.len()..]);
        assert_eq!(lines[0], "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(body["error"].is_string());
    }

    #[test]
    fn anything_else_is_left_alone() {
        for buf in [
            // Success, even bodiless.
            "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n".to_string(),
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string(),
            // An error with a body (the App's own, JSON).
            "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
                .to_string(),
            // A bodiless error with a content type, or a chunked one.
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ncontent-type: text/plain\r\n\r\n"
                .to_string(),
            "HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
            // An error head with more after it (a body follows).
            format!("{}x", actix_error("400 Bad Request")),
            // A streamed body chunk that happens to hold such a head.
            format!("{}\r\n", actix_error("400 Bad Request")),
            // Only part of one.
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n".to_string(),
            String::new(),
            "hello".to_string(),
        ] {
            assert_eq!(rewrite(buf.as_bytes()), None, "{buf:?}");
        }
    }

    /// An inner connection that takes at most `step` bytes a write.
    struct Chunky {
        written: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Chunky {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.step);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes like actix-http's dispatcher: the rest of its buffer until all
    /// is taken, then a flush.
    fn write_like_actix(conn: &mut JsonErrorHeads<Chunky>, buf: &[u8]) {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut written = 0;
        while written < buf.len() {
            match Pin::new(&mut *conn).poll_write(&mut cx, &buf[written..]) {
                Poll::Ready(Ok(n)) => written += n,
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            Pin::new(&mut *conn).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn the_wrapper_writes_everything_through_partial_writes() {
        let mut conn = JsonErrorHeads::new(Chunky {
            written: Vec::new(),
            step: 7,
        });
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        write_like_actix(&mut conn, ok);
        assert_eq!(conn.io.written, ok);
        let error = actix_error("431 Request Header Fields Too Large");
        write_like_actix(&mut conn, error.as_bytes());
        let (lines, body) = split(&conn.io.written[ok.len()..]);
        assert_eq!(lines[0], "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(
            body["error"].as_str().unwrap().contains("too large"),
            "{body}"
        );
    }
}
