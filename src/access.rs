//! Who is calling, and what they may see: the glue between requests and [`crate::auth`].
//!
//! * The chunk endpoint and `/files/` are anonymous (one shared scope) unless
//!   `--require-auth`; then every call needs a token and uploads live in the principal's scope.
//! * The Files API always needs a token whose `companies` holds the path's company; files live in
//!   the company's scope, so no query can reach another company's rows.
//! * Downloads and thumbnails are also reachable from `<img src>` and `<a href>`, which cannot
//!   send a header: with a token in `?token=`, or a signed, expiring `?sig=` that resources carry.

use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;

use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::error::{Error, Result};
use crate::protocol::Params;

/// The scope of anonymous uploads.
pub const ANONYMOUS: &str = "";

/// The scope of a company's files (Files API). Principal scopes never start with `company:`.
pub fn company_scope(company: &str) -> String {
    format!("company:{company}")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthorized(e: AuthError) -> Error {
    Error::Unauthorized(e.to_string())
}

/// The caller's verified principal, from `Authorization: Bearer`, or from `?token=` where
/// `query_token` is allowed (links that cannot send headers).
pub fn principal(app: &App, headers: &HeaderMap, query: Option<&Params>) -> Result<Principal> {
    let from_query = match query {
        Some(p) => p.get(&["token"])?,
        None => None,
    };
    let token = auth::bearer(headers)
        .or(from_query)
        .ok_or_else(|| unauthorized(AuthError::Missing))?;
    app.jwt.verify(token, now_secs()).map_err(unauthorized)
}

/// The scope of a chunk-endpoint call: anonymous, or the principal's with `--require-auth`.
pub fn core_scope(app: &App, headers: &HeaderMap, query: Option<&Params>) -> Result<String> {
    if !app.config.auth.require_auth {
        return Ok(ANONYMOUS.to_string());
    }
    Ok(principal(app, headers, query)?.scope())
}

/// The principal of a Files API call on `company`: 401 without a valid token, 403 if the
/// token's companies do not include it.
pub fn member(
    app: &App,
    headers: &HeaderMap,
    query: Option<&Params>,
    company: &str,
) -> Result<Principal> {
    let p = principal(app, headers, query)?;
    if !p.belongs_to(company) {
        return Err(Error::Forbidden(format!(
            "this token does not belong to company `{company}`"
        )));
    }
    Ok(p)
}

/// A `?sig=` query for a link to `file_id` in `scope`, valid for `--url-ttl`.
pub fn signed_query(app: &App, scope: &str, file_id: &str) -> String {
    let expires = now_secs() + app.config.auth.url_ttl.as_secs();
    format!("sig={}", app.jwt.sign_url(scope, file_id, expires))
}

/// Checks a `?sig=` for `file_id` in `scope`; `Ok(false)` if there is none.
pub fn signed(app: &App, query: &Params, scope: &str, file_id: &str) -> Result<bool> {
    match query.get(&["sig"])? {
        None => Ok(false),
        Some(sig) => {
            app.jwt
                .verify_url(scope, file_id, sig, now_secs())
                .map_err(unauthorized)?;
            Ok(true)
        }
    }
}
