//! Routing by method and path, CORS, and the static demo files. Routing is a `match`: chunkd
//! has a handful of routes and needs no framework.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::{Component, Path};
use std::sync::Arc;

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::access::Peer;
use crate::app::App;
use crate::body::{self, Body, RequestBody};
use crate::error::{Error, Result};
use crate::{download, twake, upload};

/// The service function: every request gets a response, errors included, with CORS headers.
/// `peer` is the client's address as the accept loop saw it.
pub async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let mut req = req.map(|b| RequestBody::new(b, app.config.net.body_timeout));
    req.extensions_mut().insert(Peer(peer.ip()));
    let origin = req.headers().get(header::ORIGIN).cloned();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = if req.method() == Method::OPTIONS {
        app.cors.preflight(origin.as_ref(), req.headers())
    } else {
        route(&app, req).await.unwrap_or_else(|e| {
            let mut resp = e.into_response();
            // The handler may have answered before reading the whole body; the connection
            // cannot carry another request then, and the client must know not to reuse it.
            if has_body {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        })
    };
    app.cors.decorate(origin.as_ref(), resp.headers_mut());
    Ok(resp)
}

async fn route(app: &Arc<App>, req: Request<RequestBody>) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let upload_path = app.config.net.upload_path.as_str();
    let method = req.method().clone();
    if path == upload_path {
        return match method {
            Method::GET | Method::HEAD => upload::probe(app, req).await,
            Method::POST | Method::PUT => upload::post_chunk(app, req).await,
            _ => Err(Error::MethodNotAllowed {
                allow: "GET, HEAD, POST, PUT, OPTIONS",
            }),
        };
    }
    if path.strip_prefix(upload_path) == Some("/status") {
        return match method {
            Method::GET | Method::HEAD => upload::status(app, req).await,
            _ => Err(Error::MethodNotAllowed {
                allow: "GET, HEAD, OPTIONS",
            }),
        };
    }
    if let Some(rest) = path.strip_prefix(twake::PREFIX) {
        return twake::handle(app, req, rest).await;
    }
    if let Some(id) = path.strip_prefix("/files/") {
        if id.is_empty() || id.contains('/') {
            return Err(Error::NotFound("file"));
        }
        return match method {
            Method::GET | Method::HEAD => download::download(app, req, id.to_string()).await,
            _ => Err(Error::MethodNotAllowed {
                allow: "GET, HEAD, OPTIONS",
            }),
        };
    }
    match method {
        Method::GET | Method::HEAD => {
            static_file(&app.config.net.static_dir, &path, method == Method::HEAD).await
        }
        // Every other path is the static tree's, which only reads.
        _ => Err(Error::MethodNotAllowed {
            allow: "GET, HEAD, OPTIONS",
        }),
    }
}

/// Serves a file from the static directory. The path is made of plain names only (no `..`, no
/// hidden files), so it never leaves that directory.
async fn static_file(root: &Path, path: &str, head: bool) -> Result<Response<Body>> {
    let rel = if path == "/" {
        "index.html"
    } else {
        path.trim_start_matches('/')
    };
    let decoded = percent_encoding::percent_decode_str(rel)
        .decode_utf8()
        .map_err(|_| Error::NotFound("file"))?;
    let rel_path = Path::new(decoded.as_ref());
    let plain = rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')));
    if !plain || decoded.contains('\\') || decoded.contains('\0') {
        return Err(Error::NotFound("file"));
    }
    let full = root.join(rel_path);
    let data = match tokio::fs::read(&full).await {
        Ok(d) => d,
        Err(_) => return Err(Error::NotFound("file")),
    };
    let ctype = match full.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let len = data.len();
    Response::builder()
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, len)
        .header("x-content-type-options", "nosniff")
        .body(if head {
            body::empty()
        } else {
            body::full(data)
        })
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Cross-origin rules: which page origins may call chunkd from a browser.
pub struct Cors {
    any: bool,
    listed: HashSet<String>,
}

/// Methods the upload libraries and the Files API use.
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
/// Headers a page may need to read from a response.
const EXPOSE: &str =
    "Content-Length, Content-Range, Content-Disposition, ETag, Retry-After, Accept-Ranges";
/// How long a browser may reuse a preflight answer, in seconds (Chromium caps it at 7200).
const MAX_AGE: &str = "7200";

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        let mut any = false;
        let mut listed = HashSet::new();
        for o in origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/'))
            .filter(|o| !o.is_empty())
        {
            if o == "*" {
                any = true;
            } else {
                listed.insert(o.to_ascii_lowercase());
            }
        }
        Cors { any, listed }
    }

    /// `Some(credentials)` if `origin` may call chunkd; credentials only for listed origins.
    fn allows(&self, origin: &HeaderValue) -> Option<bool> {
        let o = origin.to_str().ok()?.to_ascii_lowercase();
        if self.listed.contains(&o) {
            Some(true)
        } else if self.any {
            Some(false)
        } else {
            None
        }
    }

    /// Answers an `OPTIONS` request from memory alone: no index, no disk.
    pub fn preflight(&self, origin: Option<&HeaderValue>, req: &HeaderMap) -> Response<Body> {
        let mut resp = body::status_only(StatusCode::NO_CONTENT);
        let h = resp.headers_mut();
        h.insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
        if origin.and_then(|o| self.allows(o)).is_some() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                && asked.to_str().is_ok_and(|s| {
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
                })
            {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            );
        }
        resp
    }

    /// Adds the CORS headers a response to an allowed origin needs.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(credentials) = self.allows(origin) else {
            return;
        };
        if credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE),
        );
    }
}
