//! What an operator watches: Prometheus metrics, and the spool's size (which the quota
//! `--max-spool-bytes` is checked against).
//!
//! The spool's size is counted from the index, not from the disk: committed chunk and thumbnail
//! bytes (sealed) are added when they commit and subtracted when their rows go, and bytes being
//! written are reserved first, so that concurrent chunks cannot together pass the quota.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: u16,
}

/// Every metric chunkd exports.
pub struct Metrics {
    registry: Registry,
    pub bytes_received: Counter,
    pub chunks_received: Counter,
    pub uploads_started: Counter,
    pub uploads_completed: Counter,
    pub uploads_expired: Counter,
    pub orphans_removed: Counter,
    pub writes_held_back: Counter,
    responses: Family<StatusLabel, Counter>,
    in_flight: Gauge,
    spool_bytes: Gauge,
    pub chunk_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("chunkd"),
            bytes_received: Counter::default(),
            chunks_received: Counter::default(),
            uploads_started: Counter::default(),
            uploads_completed: Counter::default(),
            uploads_expired: Counter::default(),
            orphans_removed: Counter::default(),
            writes_held_back: Counter::default(),
            responses: Family::default(),
            in_flight: Gauge::default(),
            spool_bytes: Gauge::default(),
            // 1 ms to about 65 s.
            chunk_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
            ),
        };
        let r = &mut m.registry;
        r.register(
            "received_bytes",
            "Plaintext bytes of chunks stored",
            m.bytes_received.clone(),
        );
        r.register(
            "received_chunks",
            "Chunks stored",
            m.chunks_received.clone(),
        );
        r.register(
            "uploads_started",
            "Uploads that stored their first chunk",
            m.uploads_started.clone(),
        );
        r.register(
            "uploads_completed",
            "Uploads completed",
            m.uploads_completed.clone(),
        );
        r.register(
            "uploads_expired",
            "Incomplete uploads removed after --expire-after",
            m.uploads_expired.clone(),
        );
        r.register(
            "orphans_removed",
            "Spool directories without an index row, and chunk rows without their bytes, \
             removed at start",
            m.orphans_removed.clone(),
        );
        r.register(
            "writes_held_back",
            "Times a slow chunk write (the disk behind the page cache) sent chunk writes to \
             blocking threads for a while",
            m.writes_held_back.clone(),
        );
        r.register(
            "responses",
            "Responses sent, by status",
            m.responses.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests whose handler is running (a download's body may stream after it returns)",
            m.in_flight.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of committed chunks and thumbnails in the spool (sealed)",
            m.spool_bytes.clone(),
        );
        r.register(
            "chunk_seconds",
            "Time to receive, seal, store and commit one chunk",
            m.chunk_seconds.clone(),
        );
        m
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one response under its status.
    pub fn count_response(&self, status: u16) {
        self.responses.get_or_create(&StatusLabel { status }).inc();
    }

    /// The text exposition format (OpenMetrics), with the spool's size as of now.
    pub fn encode(&self, usage: &SpoolUsage) -> String {
        self.spool_bytes.set(usage.committed() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A request in flight; dropping it counts it out.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The spool's committed size, and the quota.
pub struct SpoolUsage {
    committed: AtomicU64,
    reserved: AtomicU64,
    limit: Option<u64>,
}

/// Bytes held for a write in progress, given back when dropped.
pub struct Reservation<'a> {
    usage: &'a SpoolUsage,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.usage.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl SpoolUsage {
    pub fn new(committed: u64, limit: Option<u64>) -> Self {
        SpoolUsage {
            committed: AtomicU64::new(committed),
            reserved: AtomicU64::new(0),
            limit,
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Holds `bytes` for a write, or refuses with [`Error::DiskFull`] (503, retried by the
    /// client) if the quota would be passed.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>> {
        let reserved = self.reserved.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let r = Reservation { usage: self, bytes };
        if let Some(limit) = self.limit
            && self.committed().saturating_add(reserved) > limit
        {
            return Err(Error::DiskFull);
        }
        Ok(r)
    }

    pub fn add(&self, bytes: u64) {
        self.committed.fetch_add(bytes, Ordering::SeqCst);
    }

    pub fn remove(&self, bytes: u64) {
        // Never below zero, even if a count was missed.
        let _ = self
            .committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some(c.saturating_sub(bytes))
            });
    }
}
