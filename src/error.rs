//! The one error type of chunkd, and the one place where errors become HTTP responses.
//!
//! Handlers return [`Error`], a list of domain causes. [`Error::status`] picks the status code by
//! how the real clients react to it (see the table in README.md): what a retry cannot fix is a
//! 400 or 415, which both Resumable.js and Flow.js treat as final; a passing fault is a 503 with
//! `Retry-After`, which Resumable.js retries. A 500 is reserved for bugs.

use std::io;

use hyper::{Response, StatusCode, header};

use crate::body::{Body, BodyError, json_response};

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required parameter is absent from both the form fields and the query string.
    #[error("missing parameter `{0}`")]
    MissingParam(&'static str),
    /// A parameter is present but unusable (not a number, hostile characters, too long, ...).
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    /// The declared or actual sizes break the cutting rule shared by Resumable.js and Flow.js.
    #[error("{0}")]
    Geometry(String),
    /// The identifier already names an upload of another file (other size, name or geometry).
    #[error("{0}")]
    IdentityConflict(String),
    /// A chunk sent again holds other bytes than the committed one: another file under the same
    /// identifier.
    #[error(
        "chunk {0} was already stored with different bytes: another file is using this identifier"
    )]
    ChunkDiffers(u64),
    /// The declared file is larger than `--max-file-size`.
    #[error("the file is {size} bytes, more than this server accepts ({limit} bytes)")]
    FileTooLarge { size: u64, limit: u64 },
    /// The request body is larger than any legal chunk (`--max-chunk-size`).
    #[error("the request body is larger than the limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The body is neither `multipart/form-data` nor a raw chunk.
    #[error("unsupported content type `{0}`: send multipart/form-data or application/octet-stream")]
    UnsupportedMediaType(String),
    /// A multipart body that cannot be read, or that is not shaped as the protocol says.
    #[error("malformed multipart body: {0}")]
    Multipart(String),
    /// The client stopped sending, or sent a broken body.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The client sent no byte of the body for `--body-timeout` seconds.
    #[error("the client sent no byte of the body for {0} s")]
    BodyTimeout(u64),
    /// The caller has `--max-open-uploads` incomplete uploads already: finish or abandon one
    /// (incomplete uploads expire) before starting another.
    #[error(
        "too many incomplete uploads: at most {0} at a time; finish one before starting another"
    )]
    TooManyUploads(u64),
    /// No valid credentials: a missing, malformed, wrongly signed or expired token.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not grant this: another company, or a write the overwrite
    /// rules refuse.
    #[error("{0}")]
    Forbidden(String),
    /// No such upload or file (or not one this caller may see).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The path exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// A `Range` header that selects no byte of the file.
    #[error("range not satisfiable: the file has {0} bytes")]
    RangeNotSatisfiable(u64),
    /// The disk (or spool quota) is full. Retrying later can succeed.
    #[error("no space left for the spool; retry later")]
    DiskFull,
    /// The index is locked by another writer for too long. Retrying later can succeed.
    #[error("the index is busy; retry later")]
    Busy,
    /// `/readyz`: the index does not answer or the spool is not writable. Retrying later (or
    /// on another instance) can succeed.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Stored bytes failed their integrity check. Never shown to a client as data.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An unexpected fault: a bug, or an I/O error that has no better name.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status for this cause: the only mapping from errors to statuses.
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            MissingParam(_)
            | InvalidParam { .. }
            | Geometry(_)
            | IdentityConflict(_)
            | ChunkDiffers(_)
            | FileTooLarge { .. }
            | Multipart(_)
            | BodyRead(_) => StatusCode::BAD_REQUEST,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            TooManyUploads(_) => StatusCode::TOO_MANY_REQUESTS,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            DiskFull | Busy | NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Corrupt(_) | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            MissingParam(_) => "missing_parameter",
            InvalidParam { .. } => "invalid_parameter",
            Geometry(_) => "bad_geometry",
            IdentityConflict(_) => "identifier_conflict",
            ChunkDiffers(_) => "chunk_conflict",
            FileTooLarge { .. } => "file_too_large",
            BodyTooLarge(_) => "body_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            Multipart(_) => "malformed_multipart",
            BodyRead(_) => "body_read_failed",
            BodyTimeout(_) => "body_timeout",
            TooManyUploads(_) => "too_many_uploads",
            Unauthorized(_) => "unauthorized",
            Forbidden(_) => "forbidden",
            NotFound(_) => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            RangeNotSatisfiable(_) => "range_not_satisfiable",
            DiskFull => "disk_full",
            Busy => "busy",
            NotReady(_) => "not_ready",
            Corrupt(_) => "corrupt",
            Internal(_) => "internal",
        }
    }

    /// Turns the error into its response: `{"error": code, "message": text}` plus the headers
    /// the status calls for (`Allow`, `Retry-After`, `Content-Range`).
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
        }
        let message = match &self {
            // Internal details stay in the log; the client gets a plain sentence.
            Error::Internal(_) | Error::Corrupt(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let body = serde_json::json!({ "error": self.code(), "message": message });
        let mut resp = json_response(status, &body);
        let headers = resp.headers_mut();
        match self {
            Error::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            Error::DiskFull | Error::Busy | Error::NotReady(_) => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            Error::TooManyUploads(_) => {
                // Slots free up as uploads complete or expire: not within seconds.
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            }
            Error::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"chunkd\""),
                );
            }
            Error::RangeNotSatisfiable(len) => {
                let v = format!("bytes */{len}");
                headers.insert(header::CONTENT_RANGE, v.parse().expect("ascii"));
            }
            _ => {}
        }
        resp
    }

    /// Shorthand for [`Error::InvalidParam`].
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}

impl From<BodyError> for Error {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Idle(d) => Error::BodyTimeout(d.as_secs()),
            BodyError::Read(e) => Error::BodyRead(e.to_string()),
        }
    }
}

impl Error {
    /// A body error that came back boxed through a body adapter (multer, `Limited`).
    pub fn from_boxed_body(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Self {
        match e.downcast_ref::<BodyError>() {
            Some(BodyError::Idle(d)) => Error::BodyTimeout(d.as_secs()),
            _ => Error::BodyRead(e.to_string()),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // ENOSPC and EDQUOT are passing faults: a retry after space is freed succeeds.
        match e.raw_os_error() {
            Some(28) | Some(122) => Error::DiskFull,
            _ if e.kind() == io::ErrorKind::StorageFull => Error::DiskFull,
            _ => Error::Internal(format!("i/o: {e}")),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Error::Busy,
            Some(ErrorCode::DiskFull) => Error::DiskFull,
            _ => Error::Internal(format!("index: {e}")),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("blocking task failed: {e}"))
    }
}
