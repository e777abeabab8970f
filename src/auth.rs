//! Who is calling: HS256 JSON Web Tokens, and signed URLs for links that cannot carry a token.
//!
//! The token format is small enough to check by hand on [`ring::hmac`], which chunkd already
//! links, and doing so keeps the list of accepted inputs short and explicit:
//!
//! * the header is JSON with `alg` exactly `HS256`; `typ`, if present, is `JWT` (any case); a
//!   `crit` header is refused, since chunkd implements no extension it could name;
//! * all three parts are base64url **without** padding, in the canonical form;
//! * the signature is checked, in constant time, before the claims are even decoded;
//! * `exp` is required, `nbf` is honoured, both with a [`LEEWAY`] of 30 seconds;
//! * a token is at most [`MAX_TOKEN`] bytes.
//!
//! Links in `<img src>` and `<a href>` cannot send an `Authorization` header, so resources carry
//! URLs with a short signature of (scope, file, expiry) instead; see [`JwtKey::sign_url`]. Those
//! are made with a key derived from the JWT secret under its own label, so neither kind of
//! signature can ever stand in for the other.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::crypto::{hex, random_bytes};

/// The shortest secret accepted, in bytes. RFC 7518 §3.2 requires an HS256 key at least as long
/// as the hash output (256 bits); a shorter one can be brute-forced from any token it signed.
pub const MIN_SECRET: usize = 32;

/// The longest token accepted, in bytes. Real tokens are a few hundred bytes; the cap bounds the
/// work (base64, HMAC, JSON) an anonymous caller can cause before being refused.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Seconds of clock skew tolerated on `exp` and `nbf`. Tokens may be minted by another host (the
/// Twake backend) whose clock drifts from ours; 30 s covers ordinary NTP-synchronised skew and is
/// negligible against token lifetimes of minutes to hours. Signed URLs have no leeway: chunkd
/// both makes and checks them, with one clock.
pub const LEEWAY: u64 = 30;

/// The header of every minted token, base64url-encoded once.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Label of the URL-signing key, derived from the JWT secret.
const URL_KEY_LABEL: &[u8] = b"chunkd url signing";

/// Domain-separation prefix of a signed URL's message (version 1 of the format).
const URL_CONTEXT: &[u8] = b"chunkd-url-v1";

/// Why a token (or a signed URL) was refused. Each variant reads as a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token at all.
    #[error("authentication required: send `Authorization: Bearer <token>`")]
    Missing,
    /// Not a well-formed token; the reason says which part is wrong.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not signed with our secret (or altered since).
    #[error("the token's signature is not valid")]
    BadSignature,
    /// Signed with another algorithm than HS256 (including `none`), or demanding an extension
    /// through `crit`.
    #[error(
        "the token must be signed with HS256 (`none`, other algorithms and `crit` are refused)"
    )]
    Algorithm,
    /// Past its `exp` (or a signed URL past its expiry).
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// No `exp` claim: chunkd refuses tokens that would be valid forever.
    #[error("the token has no expiry (`exp`): tokens that never expire are refused")]
    MissingExp,
}

/// The claims chunkd reads. Unknown claims are ignored; `companies` defaults to empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: a user id, or for application tokens the application's own id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch. Informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The companies whose files the bearer may use (the Files API's `{company}` path segment).
    #[serde(default)]
    pub companies: Vec<String>,
    /// Present on tokens of an application (a trusted backend) rather than of a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
}

/// The claims as they arrive, before the checks that [`Claims`]' types cannot express:
/// a missing `exp` must be told apart from a malformed one, and JWT dates may be fractional.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    #[serde(default)]
    companies: Vec<String>,
    application_id: Option<String>,
}

/// The header fields chunkd looks at. Others (`kid`, ...) are ignored.
#[derive(Deserialize)]
struct Header {
    alg: Option<serde_json::Value>,
    typ: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub companies: Vec<String>,
    /// `Some` for an application token (never empty: an empty claim counts as absent).
    pub application_id: Option<String>,
}

/// What the scope leaves as is: RFC 3986 unreserved characters. Everything else, `:` and `%`
/// included, is percent-encoded.
const SCOPE_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Principal {
    /// Whether this is an application (a trusted backend) rather than a user.
    pub fn is_application(&self) -> bool {
        self.application_id.is_some()
    }

    /// Whether the token grants access to `company`'s files.
    pub fn belongs_to(&self, company: &str) -> bool {
        self.companies.iter().any(|c| c == company)
    }

    /// The namespace of this principal's uploads: `u:<sub>` for a user, `a:<application_id>`
    /// for an application, the id percent-encoded (all but `A-Z a-z 0-9 - . _ ~`).
    ///
    /// The encoding makes the map injective and the result free of `:` after the prefix, so
    /// no two principals share a scope, a scope can be joined to other fields with `:` without
    /// ambiguity, and it never starts with `company:` (the Files API's scopes).
    pub fn scope(&self) -> String {
        match &self.application_id {
            Some(app) => format!("a:{}", utf8_percent_encode(app, SCOPE_KEEP)),
            None => format!("u:{}", utf8_percent_encode(&self.sub, SCOPE_KEEP)),
        }
    }
}

/// The HS256 secret, and the URL-signing key derived from it. `Debug` shows nothing.
pub struct JwtKey {
    jwt: hmac::Key,
    url: hmac::Key,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey(..)")
    }
}

fn secret_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl JwtKey {
    /// Builds the key from the secret's bytes; refuses one shorter than [`MIN_SECRET`].
    pub fn new(secret: &[u8]) -> io::Result<Self> {
        if secret.len() < MIN_SECRET {
            return Err(secret_error(format!(
                "the JWT secret is {} bytes long: HS256 needs at least {MIN_SECRET} \
                 (e.g. from `openssl rand -hex 32`)",
                secret.len()
            )));
        }
        let jwt = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&jwt, URL_KEY_LABEL);
        let url = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        Ok(JwtKey { jwt, url })
    }

    /// The key from the environment's value if given, else from `file`: its bytes less one
    /// trailing newline. Refuses a file that group or others may access, like the key file.
    pub fn from_env_or_file(env_value: Option<String>, file: Option<&Path>) -> io::Result<Self> {
        if let Some(v) = env_value {
            return Self::new(v.as_bytes());
        }
        let Some(path) = file else {
            return Err(secret_error(
                "no JWT secret: set CHUNKD_JWT_SECRET or give --jwt-secret-file".into(),
            ));
        };
        let meta = fs::metadata(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read JWT secret file {}: {e}", path.display()),
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "JWT secret file {} has mode {mode:04o}: it must be readable by its owner \
                     only (run `chmod 600 {}`)",
                    path.display(),
                    path.display()
                ),
            ));
        }
        let raw = fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read JWT secret file {}: {e}", path.display()),
            )
        })?;
        let secret = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(&raw);
        Self::new(secret).map_err(|e| secret_error(format!("{}: {e}", path.display())))
    }

    /// Signs `claims` into a compact token.
    pub fn mint(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let tag = hmac::sign(&self.jwt, token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        token
    }

    /// Checks `token` at time `now` (seconds since the epoch) and returns its principal.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
        };

        let header: Header = serde_json::from_slice(&b64(header_b64)?)
            .map_err(|_| AuthError::Malformed("the header is not a JSON object"))?;
        if header.alg.as_ref().and_then(|a| a.as_str()) != Some("HS256") || header.crit.is_some() {
            return Err(AuthError::Algorithm);
        }
        match header.typ {
            None => {}
            Some(serde_json::Value::String(t)) if t.eq_ignore_ascii_case("JWT") => {}
            Some(_) => return Err(AuthError::Malformed("the header's `typ` is not JWT")),
        }

        let payload = b64(payload_b64)?;
        let sig = b64(sig_b64)?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        hmac::verify(&self.jwt, signed.as_bytes(), &sig).map_err(|_| AuthError::BadSignature)?;

        let raw: RawClaims = serde_json::from_slice(&payload).map_err(|_| {
            AuthError::Malformed("the claims are not a JSON object of the expected types")
        })?;
        let exp = match &raw.exp {
            None => return Err(AuthError::MissingExp),
            Some(n) => numeric_date(n)?,
        };
        let nbf = raw.nbf.as_ref().map(numeric_date).transpose()?;
        raw.iat.as_ref().map(numeric_date).transpose()?;
        if now >= exp.saturating_add(LEEWAY) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = nbf
            && now.saturating_add(LEEWAY) < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        let sub = raw
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Malformed("the token has no subject (`sub`)"))?;
        Ok(Principal {
            sub,
            companies: raw.companies,
            application_id: raw.application_id.filter(|a| !a.is_empty()),
        })
    }

    /// A signature for a link to `file_id` in `scope`, valid until `expires` (seconds since the
    /// epoch): `<expires>.<base64url(HMAC-SHA256(url key, message))>`, where the message is
    /// `chunkd-url-v1` then each of scope, file id and expiry (decimal) as an 8-byte big-endian
    /// length and its bytes. Lengths, not separators, so no choice of fields can collide.
    pub fn sign_url(&self, scope: &str, file_id: &str, expires: u64) -> String {
        let tag = hmac::sign(&self.url, &url_message(scope, file_id, expires));
        format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks a signature made by [`JwtKey::sign_url`] for this scope and file at time `now`.
    pub fn verify_url(
        &self,
        scope: &str,
        file_id: &str,
        token: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > 128 {
            return Err(AuthError::Malformed("the signature is too long"));
        }
        let (exp_s, sig_b64) = token
            .split_once('.')
            .ok_or(AuthError::Malformed("a signature is `<expiry>.<mac>`"))?;
        // Only the canonical decimal form: `u64::from_str` would also take `+5` or `05`.
        let expires: u64 = exp_s
            .parse()
            .ok()
            .filter(|e: &u64| e.to_string() == exp_s)
            .ok_or(AuthError::Malformed(
                "the signature's expiry is not a number",
            ))?;
        let sig = b64(sig_b64)?;
        hmac::verify(&self.url, &url_message(scope, file_id, expires), &sig)
            .map_err(|_| AuthError::BadSignature)?;
        if now >= expires {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

fn url_message(scope: &str, file_id: &str, expires: u64) -> Vec<u8> {
    let expires = expires.to_string();
    let mut m = URL_CONTEXT.to_vec();
    for field in [scope.as_bytes(), file_id.as_bytes(), expires.as_bytes()] {
        m.extend_from_slice(&(field.len() as u64).to_be_bytes());
        m.extend_from_slice(field);
    }
    m
}

/// Strict base64url: no padding, URL alphabet only, canonical trailing bits.
fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("a part is not unpadded base64url"))
}

/// A JWT NumericDate: seconds since the epoch, possibly fractional (RFC 7519 §2), truncated.
fn numeric_date(n: &serde_json::Number) -> Result<u64, AuthError> {
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        _ => Err(AuthError::Malformed(
            "a date claim is not a non-negative number",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim_start_matches(' ');
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// Creates a secret file at `path` (mode 0600) holding 64 random hex digits and a newline; the
/// secret is those 64 ASCII characters, so other services can use the file's text as their
/// HS256 secret as is. The file appears complete or not at all (written aside, then linked), and
/// if another process created it first, its secret is kept.
pub fn create_secret_file(path: &Path) -> io::Result<()> {
    let mut raw = [0u8; 32];
    random_bytes(&mut raw);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp.{}", hex(&raw[..4])));
    let tmp = std::path::PathBuf::from(tmp_name);
    let write = || -> io::Result<bool> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{}\n", hex(&raw)).as_bytes())?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    };
    let result = write();
    let _ = fs::remove_file(&tmp);
    let created = result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create JWT secret file {}: {e}", path.display()),
        )
    })?;
    if created {
        tracing::info!(path = %path.display(), "created a new JWT secret file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn key() -> JwtKey {
        JwtKey::new(SECRET).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            sub: "user-1".into(),
            exp: NOW + 3600,
            nbf: None,
            iat: Some(NOW),
            companies: vec!["acme".into(), "globex".into()],
            application_id: None,
        }
    }

    /// A token over arbitrary header and payload JSON, signed with `SECRET`.
    fn raw_token(header: &str, payload: &str) -> String {
        let k = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let tag = hmac::sign(&k, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn payload(extra: &str) -> String {
        format!(r#"{{"sub":"u","exp":{}{extra}}}"#, NOW + 60)
    }

    #[test]
    fn valid_token_round_trips() {
        let k = key();
        let t = k.mint(&claims());
        let p = k.verify(&t, NOW).unwrap();
        assert_eq!(p.sub, "user-1");
        assert_eq!(p.companies, ["acme", "globex"]);
        assert!(!p.is_application());
        assert!(p.belongs_to("acme"));
        assert!(!p.belongs_to("initech"));
        assert!(!p.belongs_to("acm"));
        assert_eq!(p.scope(), "u:user-1");
    }

    #[test]
    fn application_token() {
        let k = key();
        let c = Claims {
            application_id: Some("app:7".into()),
            ..claims()
        };
        let p = k.verify(&k.mint(&c), NOW).unwrap();
        assert!(p.is_application());
        assert_eq!(p.scope(), "a:app%3A7");
        // An empty application_id is no application.
        let t = raw_token(r#"{"alg":"HS256"}"#, &payload(r#","application_id":"""#));
        assert!(!k.verify(&t, NOW).unwrap().is_application());
    }

    #[test]
    fn minted_header_is_standard_and_unknown_claims_are_ignored() {
        let k = key();
        let t = k.mint(&claims());
        let h = t.split('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(h).unwrap(), HEADER.as_bytes());
        let t = raw_token(
            r#"{"alg":"HS256","typ":"jwt","kid":"k1"}"#,
            &payload(r#","iss":"twake","aud":["x"],"role":{"a":1}"#),
        );
        let p = k.verify(&t, NOW).unwrap();
        assert!(p.companies.is_empty(), "missing companies mean none");
        // Fractional dates are allowed by RFC 7519.
        let t = raw_token(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"u","exp":{}.5,"nbf":{}.25}}"#, NOW + 1, NOW - 1),
        );
        k.verify(&t, NOW).unwrap();
    }

    #[test]
    fn algorithm_none_and_others_are_refused() {
        let k = key();
        let p = payload("");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(&p)
        );
        assert_eq!(k.verify(&none, NOW), Err(AuthError::Algorithm));
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
        ] {
            assert_eq!(
                k.verify(&raw_token(h, &p), NOW),
                Err(AuthError::Algorithm),
                "{h}"
            );
        }
        assert!(matches!(
            k.verify(&raw_token(r#"{"alg":"HS256","typ":"JWE"}"#, &p), NOW),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let t = k.mint(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        // Another payload under the original signature.
        let evil = Claims {
            companies: vec!["initech".into()],
            ..claims()
        };
        let evil_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap());
        let forged = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
        assert_eq!(k.verify(&forged, NOW), Err(AuthError::BadSignature));
        // One character of the signature changed.
        let mut sig = parts[2].to_string();
        let c = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, c);
        let forged = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert_eq!(k.verify(&forged, NOW), Err(AuthError::BadSignature));
        // Truncated or empty signature.
        let forged = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert_eq!(k.verify(&forged, NOW), Err(AuthError::BadSignature));
        let forged = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(k.verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn wrong_secret_is_refused() {
        let other = JwtKey::new(b"another secret that is long enough!").unwrap();
        let t = other.mint(&claims());
        assert_eq!(key().verify(&t, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn expiry_and_not_before_with_leeway() {
        let k = key();
        let c = claims();
        let t = k.mint(&c);
        assert!(k.verify(&t, c.exp - 1).is_ok());
        assert!(
            k.verify(&t, c.exp + LEEWAY - 1).is_ok(),
            "within the leeway"
        );
        assert_eq!(k.verify(&t, c.exp + LEEWAY), Err(AuthError::Expired));
        assert_eq!(k.verify(&t, u64::MAX), Err(AuthError::Expired));

        let c = Claims {
            nbf: Some(NOW + 600),
            ..claims()
        };
        let t = k.mint(&c);
        assert_eq!(k.verify(&t, NOW), Err(AuthError::NotYetValid));
        assert_eq!(
            k.verify(&t, NOW + 600 - LEEWAY - 1),
            Err(AuthError::NotYetValid)
        );
        assert!(
            k.verify(&t, NOW + 600 - LEEWAY).is_ok(),
            "within the leeway"
        );
        assert!(k.verify(&t, NOW + 600).is_ok());

        let c = Claims {
            exp: u64::MAX,
            ..claims()
        };
        assert!(k.verify(&k.mint(&c), NOW).is_ok(), "no overflow");
    }

    #[test]
    fn missing_exp_and_bad_claims() {
        let k = key();
        let h = r#"{"alg":"HS256","typ":"JWT"}"#;
        let t = raw_token(h, r#"{"sub":"u","companies":["a"]}"#);
        assert_eq!(k.verify(&t, NOW), Err(AuthError::MissingExp));
        let t = raw_token(h, r#"{"sub":"u","exp":null}"#);
        assert_eq!(k.verify(&t, NOW), Err(AuthError::MissingExp));
        for p in [
            r#"{"sub":"u","exp":"1800000000"}"#.to_string(),
            r#"{"sub":"u","exp":-5}"#.to_string(),
            payload(r#","companies":"acme""#),
            payload(r#","companies":[1,2]"#),
            payload(r#","nbf":"soon""#),
            payload(r#","iat":-1"#),
            payload(r#","sub":7"#),
            format!(r#"{{"exp":{}}}"#, NOW + 60),
            format!(r#"{{"sub":"","exp":{}}}"#, NOW + 60),
            "[1,2,3]".into(),
            "not json".into(),
        ] {
            assert!(
                matches!(
                    k.verify(&raw_token(h, &p), NOW),
                    Err(AuthError::Malformed(_))
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn garbage_and_encoding_errors_are_malformed() {
        let k = key();
        assert_eq!(k.verify("", NOW), Err(AuthError::Missing));
        let t = k.mint(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        let mut cases = vec![
            "garbage".to_string(),
            "a.b".into(),
            "a.b.c.d".into(),
            "...".into(),
            format!("{t}.{}", parts[2]),
            // Padding, standard alphabet, whitespace.
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}.{}+/.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{} ", parts[0], parts[1], parts[2]),
            // A header that is not JSON.
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("alg=HS256"),
                parts[1],
                parts[2]
            ),
            // Too long.
            format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN), parts[2]),
        ];
        // Non-canonical trailing bits: the last character of a 32-byte signature (43 chars)
        // carries 4 bits of data and 2 must be zero.
        let mut sig = parts[2].to_string();
        let last = sig.pop().unwrap();
        let idx = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            .iter()
            .position(|&c| c == last as u8)
            .unwrap();
        assert_eq!(idx & 3, 0, "canonical");
        sig.push(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx | 1] as char,
        );
        cases.push(format!("{}.{}.{}", parts[0], parts[1], sig));
        for c in &cases {
            assert!(
                matches!(k.verify(c, NOW), Err(AuthError::Malformed(_))),
                "{c}: {:?}",
                k.verify(c, NOW)
            );
        }
    }

    #[test]
    fn signature_is_checked_before_claims() {
        // Garbage claims under a bad signature: the signature is what is reported.
        let k = key();
        let t = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode("not json"),
            URL_SAFE_NO_PAD.encode([0u8; 32])
        );
        assert_eq!(k.verify(&t, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn secret_length_is_enforced() {
        assert!(JwtKey::new(b"").is_err());
        let e = JwtKey::new(&SECRET[..31]).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        assert!(JwtKey::new(SECRET).is_ok());
        assert!(JwtKey::from_env_or_file(Some("short".into()), None).is_err());
        assert!(JwtKey::from_env_or_file(None, None).is_err());
        let k = JwtKey::from_env_or_file(Some(String::from_utf8(SECRET.to_vec()).unwrap()), None)
            .unwrap();
        assert!(
            key().verify(&k.mint(&claims()), NOW).is_ok(),
            "same secret, same key"
        );
        assert_eq!(format!("{k:?}"), "JwtKey(..)");
    }

    #[test]
    fn secret_file_mode_and_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwt.secret");
        fs::write(&p, [SECRET, b"\n"].concat()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = JwtKey::from_env_or_file(None, Some(&p))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let k = JwtKey::from_env_or_file(None, Some(&p)).unwrap();
        assert!(
            key().verify(&k.mint(&claims()), NOW).is_ok(),
            "one newline trimmed"
        );
        // The environment wins over the file.
        let other = "x".repeat(40);
        let k = JwtKey::from_env_or_file(Some(other), Some(&p)).unwrap();
        assert_eq!(
            key().verify(&k.mint(&claims()), NOW),
            Err(AuthError::BadSignature)
        );
        // Only one newline is trimmed: the secret is the rest, byte for byte.
        fs::write(&p, [SECRET, b"\n\n"].concat()).unwrap();
        let k = JwtKey::from_env_or_file(None, Some(&p)).unwrap();
        assert_eq!(
            key().verify(&k.mint(&claims()), NOW),
            Err(AuthError::BadSignature)
        );
        fs::write(&p, "too short\n").unwrap();
        assert!(JwtKey::from_env_or_file(None, Some(&p)).is_err());
        assert!(JwtKey::from_env_or_file(None, Some(&dir.path().join("absent"))).is_err());
    }

    #[test]
    fn created_secret_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwt.secret");
        create_secret_file(&p).unwrap();
        let meta = fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let a = JwtKey::from_env_or_file(None, Some(&p)).unwrap();
        let b = JwtKey::from_env_or_file(Some(text.trim_end().into()), None).unwrap();
        assert!(b.verify(&a.mint(&claims()), NOW).is_ok());
        // A second creation keeps the first secret.
        create_secret_file(&p).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), text);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn bearer_extraction() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, want) in [
            ("Bearer abc.def.ghi", Some("abc.def.ghi")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc", Some("abc")),
            (" Bearer abc ", Some("abc")),
            ("Basic dXNlcjpwYXNz", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
            ("Bearer a b", None),
            ("Token abc", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(bearer(&h), want, "{value:?}");
        }
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn signed_urls() {
        let k = key();
        let exp = NOW + 300;
        let s = k.sign_url("company:acme", "file-1", exp);
        assert!(s.starts_with(&format!("{exp}.")));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "URL-safe as is: {s}"
        );
        assert_eq!(k.verify_url("company:acme", "file-1", &s, NOW), Ok(()));
        assert_eq!(k.verify_url("company:acme", "file-1", &s, exp - 1), Ok(()));
        assert_eq!(
            k.verify_url("company:acme", "file-1", &s, exp),
            Err(AuthError::Expired)
        );
        assert_eq!(
            k.verify_url("company:globex", "file-1", &s, NOW),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            k.verify_url("company:acme", "file-2", &s, NOW),
            Err(AuthError::BadSignature)
        );
        // A later expiry pasted onto the signature.
        let (_, mac) = s.split_once('.').unwrap();
        let longer = format!("{}.{mac}", exp + 1_000_000);
        assert_eq!(
            k.verify_url("company:acme", "file-1", &longer, NOW),
            Err(AuthError::BadSignature)
        );
        // Other spellings of the same expiry are not accepted.
        for alt in [format!("+{exp}.{mac}"), format!("0{exp}.{mac}")] {
            assert!(matches!(
                k.verify_url("company:acme", "file-1", &alt, NOW),
                Err(AuthError::Malformed(_))
            ));
        }
        // Field boundaries cannot be shifted.
        let a = k.sign_url("ab", "c", exp);
        assert_eq!(
            k.verify_url("a", "bc", &a, NOW),
            Err(AuthError::BadSignature)
        );
        // Another secret.
        let other = JwtKey::new(b"another secret that is long enough!").unwrap();
        assert_eq!(
            other.verify_url("company:acme", "file-1", &s, NOW),
            Err(AuthError::BadSignature)
        );
        for bad in ["", "123", "abc.def", ".", "1.!!", &"1".repeat(200)] {
            assert!(
                k.verify_url("company:acme", "file-1", bad, NOW).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_and_jwt_signatures_are_not_interchangeable() {
        let k = key();
        // The URL MAC is not the plain JWT HMAC of the same message.
        let msg = url_message("s", "f", NOW);
        let jwt_tag = hmac::sign(&k.jwt, &msg);
        let forged = format!("{NOW}.{}", URL_SAFE_NO_PAD.encode(jwt_tag.as_ref()));
        assert_eq!(
            k.verify_url("s", "f", &forged, 0),
            Err(AuthError::BadSignature)
        );
        // And a token signed with the URL key is not a valid JWT.
        let body = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap())
        );
        let tag = hmac::sign(&k.url, body.as_bytes());
        let forged = format!("{body}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(k.verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn scopes_are_unambiguous() {
        let user = |sub: &str| Principal {
            sub: sub.into(),
            companies: vec![],
            application_id: None,
        };
        let app = |id: &str| Principal {
            sub: "x".into(),
            companies: vec![],
            application_id: Some(id.into()),
        };
        let principals = [
            user("a"),
            user("a:b"),
            user("a%3Ab"),
            user("u:a"),
            user("a:x"),
            user("company:acme"),
            user("é"),
            user("%C3%A9"),
            user("a b"),
            user("a+b"),
            user("a/b"),
            app("a"),
            app("a:b"),
            app("u:a"),
            app("x"),
        ];
        let scopes: Vec<String> = principals.iter().map(Principal::scope).collect();
        let mut unique = scopes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), scopes.len(), "{scopes:?}");
        for s in &scopes {
            assert!(s.starts_with("u:") || s.starts_with("a:"));
            assert!(!s[2..].contains(':'), "{s}");
            assert!(!s.starts_with("company:"));
        }
        assert_eq!(user("a:b").scope(), "u:a%3Ab");
        assert_eq!(user("a%3Ab").scope(), "u:a%253Ab");
        assert_eq!(user("j.doe_1-x~").scope(), "u:j.doe_1-x~");
    }

    #[test]
    fn error_sentences() {
        for e in [
            AuthError::Missing,
            AuthError::Malformed("x"),
            AuthError::BadSignature,
            AuthError::Algorithm,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::MissingExp,
        ] {
            let s = e.to_string();
            assert!(s.len() > 10, "{s}");
        }
    }
}
