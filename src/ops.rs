//! What an operator's tooling calls: `/healthz` (the process answers), `/readyz` (it can store a
//! chunk: the index answers and the spool is writable) and `/metrics` (Prometheus).
//!
//! These three routes need no token, even with `--require-auth`: load balancers and Prometheus
//! scrape them without credentials, and they reveal no file, name or key, only counts. They are
//! cheap: `/healthz` touches nothing, `/readyz` runs one trivial query and creates and removes
//! one empty file, `/metrics` formats counters held in memory. Keep `/metrics` off the public
//! internet at the reverse proxy if upload volumes are confidential.

use std::sync::Arc;

use hyper::{Method, Response, StatusCode, header};
use serde_json::json;

use crate::app::App;
use crate::body::{self, Body, json_response};
use crate::error::{Error, Result};

/// The paths served here; the upload path may not take one of them.
pub const PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The content type of the OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers one of [`PATHS`].
pub async fn handle(app: &Arc<App>, method: &Method, path: &str) -> Result<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Error::MethodNotAllowed { allow: "GET, HEAD" });
    }
    match path {
        "/healthz" => Ok(json_response(StatusCode::OK, &json!({ "status": "ok" }))),
        "/readyz" => readyz(app).await,
        _ => Ok(Response::builder()
            .header(header::CONTENT_TYPE, OPENMETRICS)
            .header(header::CACHE_CONTROL, "no-store")
            .body(body::full(app.metrics.encode(&app.usage)))
            .expect("static headers are valid")),
    }
}

/// 200 if a chunk could be stored now; else 503 ([`Error::NotReady`]) with the reason, so that
/// a load balancer sends uploads elsewhere (a spool on a failed or read-only disk, an index that
/// cannot be read).
async fn readyz(app: &Arc<App>) -> Result<Response<Body>> {
    app.blocking(|app| {
        app.index
            .ping()
            .map_err(|e| Error::NotReady(format!("the index does not answer: {e}")))?;
        app.spool
            .probe_writable()
            .map_err(|e| Error::NotReady(format!("the spool is not writable: {e}")))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &json!({ "status": "ready" })))
}
