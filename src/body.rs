//! The one response body type, helpers to build bodies and JSON responses, and the one request
//! body type with its idle timeout.
//!
//! Every handler answers with `Response<Body>`; a download streams through the same type, and
//! an error frame in a stream aborts the connection (so a failed read is never a short 200).
//! Every handler reads its request through [`RequestBody`], so a client that stops sending in the
//! middle of a body is cut off in one place, whatever the route or the body's framing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::time::{Instant, Sleep};

/// Errors a streaming body may yield; hyper aborts the connection on one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response chunkd sends.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body held in memory (small: JSON and short texts).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response with the given status.
///
/// Built in place rather than through `Response::builder`, whose string headers are parsed and
/// copied on every call: probes answer with this thousands of times a second.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("JSON values always serialise");
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A response with no body.
pub fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// A request body that fails with [`BodyError::Idle`] once the server has waited `idle` for the
/// next byte (`--body-timeout`): against clients that open a chunk and then trickle or stall,
/// holding a connection and a spool region. Only time spent waiting on the client counts, never
/// time the handler spends elsewhere (the index, the disk).
pub struct RequestBody {
    inner: Incoming,
    idle: Duration,
    /// Armed on the first wait after a frame; created on the first wait at all.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    timed_out: bool,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client sent nothing for {} s", .0.as_secs())]
    Idle(Duration),
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

impl RequestBody {
    pub fn new(inner: Incoming, idle: Duration) -> Self {
        RequestBody {
            inner,
            idle,
            timer: None,
            armed: false,
            timed_out: false,
        }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(Some(Err(BodyError::Idle(this.idle))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Read)))
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = Instant::now() + this.idle;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let timer = this.timer.as_mut().expect("armed above");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timed_out = true;
                        Poll::Ready(Some(Err(BodyError::Idle(this.idle))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.timed_out && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
