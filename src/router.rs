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
use tracing::Instrument;

use crate::app::App;
use crate::body::{self, Body, RequestBody};
use crate::error::{Error, Result};
use crate::{download, ops, twake, upload};

/// The service function: every request gets a response, errors included, with CORS headers.
///
/// This is the one place responses leave: each request runs in a `request` span carrying a short
/// random id, its method and its path (never the query string, which may carry `token=` or
/// `sig=`), is counted in flight while its handler runs, and its status is counted and logged
/// on the way out. The id goes back in `X-Request-Id`, so that a client's report finds the log
/// lines.
///
/// `peer` is the client's address as the accept loop saw it.
pub async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, Infallible> {
    let id = request_id();
    let span = tracing::info_span!(
        "request",
        id = id.as_str(),
        method = %req.method(),
        path = %loggable_path(req.uri().path()),
    );
    let started = std::time::Instant::now();
    // Probes and scrapes come every few seconds: their successes are logged at debug only.
    let routine = ops::PATHS.contains(&req.uri().path());
    let mut resp = {
        // Dropped however the handler ends, even when the client leaves and the future with it.
        let _in_flight = app.metrics.in_flight();
        respond(&app, peer, req).instrument(span.clone()).await
    };
    let status = resp.status();
    app.metrics.count_response(status.as_u16());
    let ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        if routine && status.is_success() {
            tracing::debug!(status = status.as_u16(), ms, "response");
        } else {
            tracing::info!(status = status.as_u16(), ms, "response");
        }
    });
    resp.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(id.as_str()).expect("hex digits"),
    );
    Ok(resp)
}

/// A short request id: 48 bits as 12 hex digits, enough to tell a day's requests apart.
///
/// Ids only tie log lines to a client's report; they need to be distinct, not secret. So they
/// come from a counter started at a random point and scrambled by a bijection (splitmix64's
/// finaliser) rather than from the system's random source: a `getrandom` call per request was
/// a measurable part of a probe's cost. Successive ids still look unrelated, and two runs of
/// the server do not repeat each other's sequence.
fn request_id() -> RequestId {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(crate::crypto::random_u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut z = start.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut hex = [0u8; 12];
    for (i, d) in hex.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[(z >> (60 - 4 * i)) as usize & 15];
    }
    RequestId(hex)
}

/// A request id's 12 lower-case hex digits, kept on the stack.
struct RequestId([u8; 12]);

impl RequestId {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

/// The path as logged: at most 200 bytes of it (it comes from the client).
fn loggable_path(path: &str) -> &str {
    let mut end = path.len().min(200);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// Routes one request and turns an error into its response, with CORS headers.
async fn respond(app: &Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let req = req.map(|b| RequestBody::new(b, app.config.net.body_timeout));
    let origin = req.headers().get(header::ORIGIN).cloned();
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = if req.method() == Method::OPTIONS {
        app.cors.preflight(origin.as_ref(), req.headers())
    } else {
        route(app, peer, req).await.unwrap_or_else(|e| {
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
    resp
}

/// `peer` is passed along as an argument, not put in the request's extensions: only the chunk
/// POST needs it, and an extension cost every request (probes included) a type map and two
/// allocations.
async fn route(
    app: &Arc<App>,
    peer: SocketAddr,
    req: Request<RequestBody>,
) -> Result<Response<Body>> {
    let path = req.uri().path().to_string();
    let upload_path = app.config.net.upload_path.as_str();
    let method = req.method().clone();
    if ops::PATHS.contains(&path.as_str()) {
        return ops::handle(app, &method, &path).await;
    }
    if path == upload_path {
        return match method {
            Method::GET | Method::HEAD => upload::probe(app, req).await,
            // Boxed, as is the Files API below: their futures are several KiB, and unboxed they
            // would make every request's future (probes included) that large, to be moved by
            // hyper on each one.
            Method::POST | Method::PUT => Box::pin(upload::post_chunk(app, peer.ip(), req)).await,
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
        return Box::pin(twake::handle(app, req, rest)).await;
    }
    if let Some(rest) = path.strip_prefix("/files/") {
        let parts: Vec<&str> = rest.split('/').collect();
        let (id, thumb) = match parts.as_slice() {
            [id] if !id.is_empty() => (id.to_string(), None),
            [id, "thumbnails", idx] if !id.is_empty() => {
                let idx: u32 = idx.parse().map_err(|_| Error::NotFound("thumbnail"))?;
                (id.to_string(), Some(idx))
            }
            _ => return Err(Error::NotFound("file")),
        };
        if !matches!(method, Method::GET | Method::HEAD) {
            return Err(Error::MethodNotAllowed {
                allow: "GET, HEAD, OPTIONS",
            });
        }
        return match thumb {
            None => download::download(app, req, id).await,
            Some(idx) => download::thumbnail(app, req, id, idx).await,
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
            // The answer echoes what was asked: a cache must not reuse it for other questions.
            h.append(
                header::VARY,
                HeaderValue::from_static(
                    "Access-Control-Request-Headers, Access-Control-Request-Method",
                ),
            );
        }
        resp
    }

    /// Adds the CORS headers a response to an allowed origin needs.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        // Once any origin may be allowed, every answer depends on the Origin header, even one
        // to a request without it: a cache must not hand that one to a page on another origin.
        if self.any || !self.listed.is_empty() {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin else { return };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(o: &'static str) -> HeaderValue {
        HeaderValue::from_static(o)
    }

    fn decorated(cors: &Cors, o: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        cors.decorate(o.map(origin).as_ref(), &mut h);
        h
    }

    fn asked(headers: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static(headers),
        );
        h
    }

    #[test]
    fn listed_origins_get_credentials_whatever_their_case() {
        let cors = Cors::new(&["https://App.example/".into(), " http://b.example ".into()]);
        for o in ["https://app.example", "http://b.example"] {
            let h = decorated(&cors, Some(o));
            assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], o);
            assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
            assert!(
                h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
                    .to_str()
                    .unwrap()
                    .contains("Content-Disposition")
            );
            assert_eq!(h[header::VARY], "Origin");
        }
        let h = decorated(&cors, Some("https://evil.example"));
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        // Without an Origin: nothing to allow, but the answer still varies by it.
        let h = decorated(&cors, None);
        assert_eq!(h[header::VARY], "Origin");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn any_origin_never_gets_credentials() {
        let cors = Cors::new(&["*".into()]);
        let h = decorated(&cors, Some("https://anyone.example"));
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        // A listed origin beside `*` keeps its credentials; the rest get `*` without.
        let cors = Cors::new(&["*".into(), "https://app.example".into()]);
        let h = decorated(&cors, Some("https://app.example"));
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        let h = decorated(&cors, Some("https://other.example"));
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn no_origins_configured_means_same_origin_only() {
        let cors = Cors::new(&[]);
        let h = decorated(&cors, Some("https://app.example"));
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(decorated(&cors, None).is_empty());
        let pre = cors.preflight(Some(&origin("https://app.example")), &asked("content-type"));
        assert!(
            !pre.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
        );
    }

    #[test]
    fn preflight_echoes_the_asked_headers_with_max_age() {
        let cors = Cors::new(&["https://app.example".into()]);
        let o = origin("https://app.example");
        let pre = cors.preflight(
            Some(&o),
            &asked("authorization, content-type, x-custom-header"),
        );
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        let h = pre.headers();
        for m in ["GET", "POST", "PUT", "DELETE"] {
            assert!(
                h[header::ACCESS_CONTROL_ALLOW_METHODS]
                    .to_str()
                    .unwrap()
                    .contains(m)
            );
        }
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type, x-custom-header"
        );
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], MAX_AGE);
        assert!(h.get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .unwrap()
                .contains("Access-Control-Request-Headers")
        }));
        // A header list that is not a plain list of names is not echoed.
        let pre = cors.preflight(Some(&o), &asked("x-a; y=\"b\""));
        assert!(
            !pre.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS)
        );
        // An origin that is not listed learns nothing.
        let pre = cors.preflight(
            Some(&origin("https://evil.example")),
            &asked("content-type"),
        );
        assert!(
            !pre.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
        );
        assert!(
            !pre.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS)
        );
        assert!(!pre.headers().contains_key(header::ACCESS_CONTROL_MAX_AGE));
    }
}
