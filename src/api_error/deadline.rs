//! A request body has a deadline: actix-http cuts off a request head that
//! is not complete in time (408), but not a body that trickles in a byte a
//! second and holds its connection for ever. This middleware gives every
//! body [`BODY_DEADLINE`] from the moment its head was read; a body not
//! complete by then ends the request with a JSON 408 and the connection
//! is closed (its body was not read to the end).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpMessage as _;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use futures_util::Stream;

use super::ApiError;

/// How long a request's body may take to arrive, whole.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// A body stream that ends in an error at its deadline.
struct Deadline<S> {
    inner: S,
    timer: Pin<Box<tokio::time::Sleep>>,
    fired: Rc<Cell<bool>>,
}

impl<S> Stream for Deadline<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.fired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body was not complete in time",
            )))));
        }
        Poll::Pending
    }
}

/// The middleware (`middleware::from_fn(body_deadline)`).
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let fired = Rc::new(Cell::new(false));
    let payload = Deadline {
        inner: req.take_payload(),
        timer: Box::pin(tokio::time::sleep(BODY_DEADLINE)),
        fired: fired.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(payload),
    });
    let res = next.call(req).await?;
    if fired.get() {
        let (req, _) = res.into_parts();
        let error = ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body was not complete within {} s",
                BODY_DEADLINE.as_secs()
            ),
        );
        let response = actix_web::ResponseError::error_response(&error);
        return Ok(ServiceResponse::new(req, response).map_into_right_body());
    }
    Ok(res.map_into_left_body())
}
