//! The sweeper: incomplete uploads untouched for `--expire-after` are removed, rows then bytes.
//!
//! [`Index::expire`](crate::store::Index::expire) picks only uploads that never completed, in
//! one transaction, so a complete file and the content an abandoned overwrite would have
//! replaced are never touched. The bytes go after the rows: a stop in between leaves spool
//! directories without a row, which the start-up sweep removes ([`crate::App::open`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::App;
use crate::config::Limits;
use crate::error::Result;
use crate::store::index::now_ms;

/// How often the sweeper runs: `--sweep-interval`, else a quarter of `--expire-after` capped at
/// 10 minutes, and never more often than once a second. An upload is thus removed at most one
/// interval after it expires.
pub fn interval(limits: &Limits) -> Duration {
    limits
        .sweep_interval
        .unwrap_or_else(|| (limits.expire_after / 4).min(Duration::from_secs(600)))
        .max(Duration::from_secs(1))
}

/// One sweep (blocking): removes what expired, frees its bytes, counts and logs it. Returns how
/// many uploads were removed.
pub fn sweep(app: &App) -> Result<usize> {
    let cutoff = now_ms().saturating_sub(app.config.limits.expire_after.as_millis() as i64);
    let removed = app.index.expire(cutoff)?;
    if removed.uploads.is_empty() {
        return Ok(0);
    }
    for u in &removed.uploads {
        tracing::info!(upload_id = %u, "expired an abandoned upload");
    }
    app.metrics
        .uploads_expired
        .inc_by(removed.uploads.len() as u64);
    app.release(&removed)?;
    tracing::info!(
        uploads = removed.uploads.len(),
        bytes = removed.bytes,
        "expiry sweep done"
    );
    Ok(removed.uploads.len())
}

/// Sweeps every [`interval`] until `stop` turns true (or its sender is gone). A sweep in
/// progress finishes first: its transaction and the removal of its bytes are never cut short.
pub async fn run(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let period = interval(&app.config.limits);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            r = stop.wait_for(|stopped| *stopped) => {
                let _ = r;
                return;
            }
        }
        if let Err(e) = app.blocking(sweep).await {
            tracing::warn!(error = %e, "expiry sweep failed; it runs again next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_expire_after_within_bounds() {
        let mut limits = crate::Config::for_data_dir("/tmp/x").limits;
        // 24 h: capped at 10 minutes.
        assert_eq!(interval(&limits), Duration::from_secs(600));
        limits.expire_after = Duration::from_secs(60);
        assert_eq!(interval(&limits), Duration::from_secs(15));
        limits.expire_after = Duration::from_secs(2);
        assert_eq!(interval(&limits), Duration::from_secs(1));
        limits.sweep_interval = Some(Duration::from_secs(42));
        assert_eq!(interval(&limits), Duration::from_secs(42));
    }
}
