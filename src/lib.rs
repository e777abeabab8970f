//! chunkd: a resumable-upload server for Resumable.js, Flow.js and the Twake Files API, that
//! keeps every byte encrypted at rest with two layers of AES-256-CBC, indexes its spool in
//! SQLite and completes each file exactly once, whatever order its chunks arrive in.
//!
//! # Layout
//!
//! The flow of one chunk, in the order a request meets the modules:
//!
//! * [`server`]: the accept loop (connection limit, timeouts, graceful shutdown).
//! * [`router`]: method and path to handler; CORS; static demo files.
//! * [`upload`]: **the chunk flow** (probe, chunk POST, status). Start reading here.
//!   * [`protocol`]: every dialect's parameters into one [`protocol::ChunkParams`].
//!   * [`geometry`]: the cutting rule, as pure functions.
//!   * [`crypto`]: the two-layer cipher and the on-disk format (in AES-NI or VAES assembly
//!     where the CPU has it: chunkd's only `unsafe`).
//!   * [`store`]: the SQLite [`store::Index`] (the truth; it mirrors active uploads in memory,
//!     so their probes and chunks skip SQLite) and the [`store::Spool`] of data files.
//! * [`download`]: streaming decryption with Range and conditional requests.
//! * [`twake`]: the Twake Files API, on the same flow ([`upload::store_chunk`] with
//!   [`upload::Target::File`]) plus files created before their bytes, overwrites and deletion.
//!   * [`auth`]: HS256 tokens and signed links; [`access`]: who may see which scope.
//!   * [`previews`]: thumbnails made after completion; [`thumbs`]: the decoding itself.
//! * [`error`]: the one error enum, and the one place errors become responses.
//! * [`body`]: the one response body type, and the one request body type (the body idle
//!   timeout).
//! * [`ops`]: `/healthz`, `/readyz` and `/metrics` ([`metrics`]); [`expiry`]: the sweeper of
//!   abandoned uploads; [`verify`]: the offline check of a data directory.
//! * [`config`] and [`app`]: flags, and the state they open.

#![deny(unsafe_code)]

pub mod access;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod crypto;
pub mod download;
pub mod error;
pub mod expiry;
pub mod geometry;
pub mod metrics;
pub mod ops;
pub mod previews;
pub mod protocol;
pub mod router;
pub mod server;
pub mod store;
pub mod thumbs;
pub mod twake;
pub mod upload;
pub mod verify;

pub use app::App;
pub use config::{Cli, Config};
pub use error::{Error, Result};
pub use server::serve;
