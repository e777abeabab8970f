//! Who is calling, and what they may see: the glue between requests and [`crate::auth`].
//!
//! * The chunk endpoint and `/files/` are anonymous (one shared scope) unless
//!   `--require-auth`; then every call needs a token and uploads live in the principal's scope.
//! * The Files API always needs a token whose `companies` holds the path's company; files live in
//!   the company's scope, so no query can reach another company's rows.
//! * Downloads and thumbnails are also reachable from `<img src>` and `<a href>`, which cannot
//!   send a header: with a token in `?token=`, or a signed, expiring `?sig=` that resources carry.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;

use crate::app::App;
use crate::auth::{self, AuthError, Principal};
use crate::error::{Error, Result};
use crate::protocol::Params;

/// The scope of anonymous uploads.
pub const ANONYMOUS: &str = "";

/// Whom a new upload counts against for `--max-open-uploads`: the principal of a token (its
/// scope), else the client's address. An IPv6 client counts by its /64, since one host commonly
/// holds a whole /64 and could otherwise take a fresh address per upload.
///
/// `peer` is the client's address as the accept loop saw it. Behind a reverse proxy it is the
/// proxy's: chunkd trusts no forwarding header, which anyone can forge.
pub fn owner(scope: &str, peer: IpAddr) -> String {
    if scope != ANONYMOUS {
        return scope.to_string();
    }
    match peer.to_canonical() {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

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
pub fn principal(app: &App, headers: &HeaderMap, query: Option<&Params<'_>>) -> Result<Principal> {
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
pub fn core_scope(app: &App, headers: &HeaderMap, query: Option<&Params<'_>>) -> Result<String> {
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
    query: Option<&Params<'_>>,
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
pub fn signed(app: &App, query: &Params<'_>, scope: &str, file_id: &str) -> Result<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        let p = |s: &str| s.parse().unwrap();
        assert_eq!(owner("u:alice", p("10.0.0.1")), "u:alice");
        assert_eq!(owner(ANONYMOUS, p("10.0.0.1")), "ip:10.0.0.1");
        assert_eq!(owner(ANONYMOUS, p("::ffff:10.0.0.1")), "ip:10.0.0.1");
        let a = owner(ANONYMOUS, p("2001:db8:1:2::1"));
        assert_eq!(a, owner(ANONYMOUS, p("2001:db8:1:2:ffff::9")));
        assert_ne!(a, owner(ANONYMOUS, p("2001:db8:1:3::1")));
        // A principal's scope never looks like an address key.
        assert!(!owner(ANONYMOUS, p("10.0.0.1")).starts_with("u:"));
    }
}
