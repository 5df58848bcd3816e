//! Metrics through the `metrics` facade, and a Prometheus endpoint for them.
//!
//! The `Observe` stage emits every figure below each tick to whatever recorder
//! is installed: an embedder installs its own (or none: then the calls do
//! nothing), `neurograph run --metrics ADDR` installs [`install_prometheus`]'s
//! and serves it with [`MetricsServer`] on `/metrics` (and `/health`).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `neurograph_tick_seconds` | histogram | |
//! | `neurograph_stage_seconds` | histogram | `stage` |
//! | `neurograph_ticks_total` | counter | |
//! | `neurograph_tick` | gauge | |
//! | `neurograph_tokens`, `neurograph_links` | gauge | |
//! | `neurograph_groups` | gauge | `level` |
//! | `neurograph_cdna_violations_total` | counter | `kind` |
//! | `neurograph_commands_applied_total`, `neurograph_commands_rejected_total`, `neurograph_quota_rejections_total` | counter | |
//! | `neurograph_links_formed_total`, `neurograph_links_pruned_total` | counter | |
//! | `neurograph_group_events_total` | counter | `event` |
//! | `neurograph_neighbor_rebuilds_total` | counter | |
//! | `neurograph_wal_bytes_total`, `neurograph_wal_records_total`, `neurograph_wal_fsyncs_total`, `neurograph_wal_snapshots_total` | counter | |
//! | `neurograph_wal_durable_tick` | gauge | |
//! | `neurograph_wal_fsync_seconds` | histogram | (from the WAL writer's thread) |
//! | `neurograph_blackbox_events_total` | counter | |
//! | `neurograph_panics_total`, `neurograph_recoveries_total` | counter | (from the runner) |
//! | `neurograph_info` | gauge | `version` (from [`install_prometheus`]) |
//!
//! Counters that mirror a simulation's own totals (violations, commands, WAL
//! bytes…) advance by what the world added since the last tick, so a world
//! recovered from the WAL (whose own totals start again) never makes them go
//! back or count twice; replayed ticks emit nothing. WAL records are counted
//! when journaled; WAL bytes, fsyncs and snapshots as the writer thread reports
//! them at each tick, so the last few of a run (or before a panic) may be
//! missing from them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Seconds of a whole tick.
pub const TICK_SECONDS: &str = "neurograph_tick_seconds";
/// Seconds of one stage of a tick (label `stage`).
pub const STAGE_SECONDS: &str = "neurograph_stage_seconds";
/// Ticks run.
pub const TICKS_TOTAL: &str = "neurograph_ticks_total";
/// The current tick.
pub const TICK: &str = "neurograph_tick";
/// Live tokens.
pub const TOKENS: &str = "neurograph_tokens";
/// Links.
pub const LINKS: &str = "neurograph_links";
/// Groups per level (label `level`).
pub const GROUPS: &str = "neurograph_groups";
/// CDNA violations corrected (label `kind`).
pub const CDNA_VIOLATIONS_TOTAL: &str = "neurograph_cdna_violations_total";
/// Commands applied.
pub const COMMANDS_APPLIED_TOTAL: &str = "neurograph_commands_applied_total";
/// Commands refused.
pub const COMMANDS_REJECTED_TOTAL: &str = "neurograph_commands_rejected_total";
/// Commands refused by a quota.
pub const QUOTA_REJECTIONS_TOTAL: &str = "neurograph_quota_rejections_total";
/// Links formed by learning.
pub const LINKS_FORMED_TOTAL: &str = "neurograph_links_formed_total";
/// Links pruned by learning.
pub const LINKS_PRUNED_TOTAL: &str = "neurograph_links_pruned_total";
/// Group identity events (label `event`).
pub const GROUP_EVENTS_TOTAL: &str = "neurograph_group_events_total";
/// Neighbour-list rebuilds.
pub const NEIGHBOR_REBUILDS_TOTAL: &str = "neurograph_neighbor_rebuilds_total";
/// WAL bytes written.
pub const WAL_BYTES_TOTAL: &str = "neurograph_wal_bytes_total";
/// WAL tick records written.
pub const WAL_RECORDS_TOTAL: &str = "neurograph_wal_records_total";
/// WAL fsync calls.
pub const WAL_FSYNCS_TOTAL: &str = "neurograph_wal_fsyncs_total";
/// WAL snapshots written.
pub const WAL_SNAPSHOTS_TOTAL: &str = "neurograph_wal_snapshots_total";
/// The highest tick known durable.
pub const WAL_DURABLE_TICK: &str = "neurograph_wal_durable_tick";
/// Seconds of one fsync of the WAL's segment.
pub const WAL_FSYNC_SECONDS: &str = "neurograph_wal_fsync_seconds";
/// Events recorded in the black box.
pub const BLACKBOX_EVENTS_TOTAL: &str = "neurograph_blackbox_events_total";
/// Ticks that panicked.
pub const PANICS_TOTAL: &str = "neurograph_panics_total";
/// Recoveries from the WAL after a panic.
pub const RECOVERIES_TOTAL: &str = "neurograph_recoveries_total";
/// Always 1, labelled with the version.
pub const INFO: &str = "neurograph_info";
/// Seconds of a GPU force pass phase (label `phase`: upload, dispatch, readback);
/// only when the GPU computes forces.
pub const GPU_PHASE_SECONDS: &str = "neurograph_gpu_phase_seconds";
/// Bytes moved to and from the GPU (label `direction`: upload, readback); only
/// when the GPU computes forces.
pub const GPU_TRANSFER_BYTES_TOTAL: &str = "neurograph_gpu_transfer_bytes_total";

/// Every metric name, for tests and documentation (the `GPU_*` ones appear only
/// when the GPU backend runs).
pub const ALL: [&str; 27] = [
    TICK_SECONDS,
    STAGE_SECONDS,
    TICKS_TOTAL,
    TICK,
    TOKENS,
    LINKS,
    GROUPS,
    CDNA_VIOLATIONS_TOTAL,
    COMMANDS_APPLIED_TOTAL,
    COMMANDS_REJECTED_TOTAL,
    QUOTA_REJECTIONS_TOTAL,
    LINKS_FORMED_TOTAL,
    LINKS_PRUNED_TOTAL,
    GROUP_EVENTS_TOTAL,
    NEIGHBOR_REBUILDS_TOTAL,
    WAL_BYTES_TOTAL,
    WAL_RECORDS_TOTAL,
    WAL_FSYNCS_TOTAL,
    WAL_SNAPSHOTS_TOTAL,
    WAL_DURABLE_TICK,
    WAL_FSYNC_SECONDS,
    BLACKBOX_EVENTS_TOTAL,
    PANICS_TOTAL,
    RECOVERIES_TOTAL,
    INFO,
    GPU_PHASE_SECONDS,
    GPU_TRANSFER_BYTES_TOTAL,
];

/// Bucket bounds of the `*_seconds` histograms: 10 µs to 10 s.
pub const SECONDS_BUCKETS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Labels of the `level` gauge, so that emitting it allocates nothing.
pub const LEVEL_LABELS: [&str; 8] = ["1", "2", "3", "4", "5", "6", "7", "8"];

/// Adds the help texts to the current recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(TICK_SECONDS, Unit::Seconds, "Wall time of a whole tick.");
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Wall time of one stage of a tick."
    );
    describe_counter!(TICKS_TOTAL, "Ticks run.");
    describe_gauge!(TICK, "The current tick.");
    describe_gauge!(TOKENS, "Live tokens.");
    describe_gauge!(LINKS, "Links.");
    describe_gauge!(
        GROUPS,
        "Groups per hierarchy level after the last detection."
    );
    describe_counter!(CDNA_VIOLATIONS_TOTAL, "CDNA violations corrected, by kind.");
    describe_counter!(COMMANDS_APPLIED_TOTAL, "Commands applied.");
    describe_counter!(COMMANDS_REJECTED_TOTAL, "Commands refused.");
    describe_counter!(
        QUOTA_REJECTIONS_TOTAL,
        "Commands refused by a guardian quota."
    );
    describe_counter!(LINKS_FORMED_TOTAL, "Links formed by learning.");
    describe_counter!(LINKS_PRUNED_TOTAL, "Links pruned by learning.");
    describe_counter!(GROUP_EVENTS_TOTAL, "Group identity events.");
    describe_counter!(NEIGHBOR_REBUILDS_TOTAL, "Neighbour-list rebuilds.");
    describe_counter!(WAL_BYTES_TOTAL, Unit::Bytes, "Bytes written to the WAL.");
    describe_counter!(WAL_RECORDS_TOTAL, "Tick records written to the WAL.");
    describe_counter!(WAL_FSYNCS_TOTAL, "fsync calls on the WAL.");
    describe_counter!(WAL_SNAPSHOTS_TOTAL, "Snapshots written.");
    describe_gauge!(WAL_DURABLE_TICK, "The highest tick known durable.");
    describe_histogram!(
        WAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Seconds of one WAL segment fsync."
    );
    describe_counter!(BLACKBOX_EVENTS_TOTAL, "Events recorded in the black box.");
    describe_counter!(PANICS_TOTAL, "Ticks that panicked.");
    describe_counter!(RECOVERIES_TOTAL, "Recoveries from the WAL after a panic.");
    describe_gauge!(INFO, "Always 1; the label names the version.");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `/health` reports: updated by the `Observe` stage every tick.
#[derive(Debug)]
pub struct LiveStatus {
    tick: AtomicU64,
    tokens: AtomicU64,
    ticks_run: AtomicU64,
    failure: Mutex<Option<String>>,
    started: Instant,
}

impl Default for LiveStatus {
    fn default() -> Self {
        Self {
            tick: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            ticks_run: AtomicU64::new(0),
            failure: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

impl LiveStatus {
    /// Notes the end of a tick.
    pub fn tick_done(&self, tick: u64, tokens: u64) {
        self.tick.store(tick, Ordering::Relaxed);
        self.tokens.store(tokens, Ordering::Relaxed);
        self.ticks_run.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the run as failing (`/health` answers 503 with the reason).
    pub fn fail(&self, reason: impl Into<String>) {
        *lock(&self.failure) = Some(reason.into());
    }

    /// Clears a failure (after a recovery).
    pub fn clear(&self) {
        *lock(&self.failure) = None;
    }

    /// `/health`'s status code and JSON body.
    pub fn health(&self) -> (u16, String) {
        let failure = lock(&self.failure).clone();
        let body = serde_json::json!({
            "status": if failure.is_some() { "failing" } else { "ok" },
            "reason": failure,
            "tick": self.tick.load(Ordering::Relaxed),
            "tokens": self.tokens.load(Ordering::Relaxed),
            "ticks_run": self.ticks_run.load(Ordering::Relaxed),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
        });
        (if failure.is_some() { 503 } else { 200 }, body.to_string())
    }
}

#[cfg(feature = "cli")]
mod prometheus;
#[cfg(feature = "cli")]
pub use prometheus::{
    MetricsServer, ServerError, ServerLimits, install_prometheus, prometheus_recorder,
};
