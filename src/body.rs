//! The one response body type, and helpers to build bodies and JSON responses.
//!
//! Every handler answers with `Response<Body>`; a download streams through the same type, and
//! an error frame in a stream aborts the connection (so a failed read is never a short 200).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{Response, StatusCode, header};
use serde::Serialize;

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
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("JSON values always serialise");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(full(bytes))
        .expect("static headers are valid")
}

/// A response with no body.
pub fn status_only(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(empty())
        .expect("no headers")
}
