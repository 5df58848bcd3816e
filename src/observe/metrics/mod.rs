//! Metrics through the `metrics` facade, and a Prometheus endpoint for them.
//!
//! The `Observe` stage emits every figure below each tick to whatever recorder
//! is installed: an embedder installs its own (or none: then the calls do
//! nothing), `neurograph run --metrics ADDR` installs [`install_prometheus`]'s
//! and serves it with [`MetricsServer`] on `/metrics` (and `/health`).
//!
//! The catalogue is [`ALL`], written once below: each entry's name, kind,
//! labels and help text. The help texts go to the recorder ([`describe`]), and
//! the table in `docs/observability.md` is [`markdown_table`]'s output (a test
//! keeps them equal).
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

/// What kind of metric an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution ([`SECONDS_BUCKETS`] for the `*_seconds` ones).
    Histogram,
}

impl Kind {
    /// Lower-case name, as in Prometheus' `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// The metric's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// One line of help, as the recorder shows it.
    pub help: &'static str,
    /// Who emits it, when not the `Observe` stage.
    pub source: Option<&'static str>,
}

/// Defines one `pub const` per metric name and [`ALL`], from one table.
macro_rules! catalogue {
    ($( $id:ident = $name:expr, $kind:ident, [$($label:literal),*], $help:literal $(, from $source:literal)?; )*) => {
        $( #[doc = $help] pub const $id: &str = $name; )*
        /// Every metric, in the order of `docs/observability.md` (the `GPU_*`
        /// ones appear only when the GPU backend runs).
        pub const ALL: &[Metric] = &[$(
            Metric {
                name: $id,
                kind: Kind::$kind,
                labels: &[$($label),*],
                help: $help,
                source: catalogue!(@source $($source)?),
            }
        ),*];
    };
    (@source) => { None };
    (@source $s:literal) => { Some($s) };
}

catalogue! {
    TICK_SECONDS = "neurograph_tick_seconds", Histogram, [], "Wall time of a whole tick.";
    STAGE_SECONDS = "neurograph_stage_seconds", Histogram, ["stage"], "Wall time of one stage of a tick (stage: ingest, forces, integrate, constrain, learn, organize, journal, observe).";
    TICKS_TOTAL = "neurograph_ticks_total", Counter, [], "Ticks run.";
    TICK = "neurograph_tick", Gauge, [], "The current tick.";
    TOKENS = "neurograph_tokens", Gauge, [], "Live tokens.";
    LINKS = "neurograph_links", Gauge, [], "Links.";
    GROUPS = "neurograph_groups", Gauge, ["level"], "Groups per hierarchy level after the last detection.";
    CDNA_VIOLATIONS_TOTAL = "neurograph_cdna_violations_total", Counter, ["kind"], "CDNA violations corrected, by kind.";
    COMMANDS_APPLIED_TOTAL = "neurograph_commands_applied_total", Counter, [], "Commands applied.";
    COMMANDS_REJECTED_TOTAL = "neurograph_commands_rejected_total", Counter, [], "Commands refused.";
    QUOTA_REJECTIONS_TOTAL = "neurograph_quota_rejections_total", Counter, [], "Commands refused by a guardian quota.";
    LINKS_FORMED_TOTAL = "neurograph_links_formed_total", Counter, [], "Links formed by learning.";
    LINKS_PRUNED_TOTAL = "neurograph_links_pruned_total", Counter, [], "Links pruned by learning.";
    GROUP_EVENTS_TOTAL = "neurograph_group_events_total", Counter, ["event"], "Group identity events.";
    MEMORY_MEASURED_BYTES = "neurograph_memory_measured_bytes", Gauge, [], "Bytes of the world's structures at their last measurement (what the memory quota is checked against; measured at the end of a tick, after this gauge is set, so one tick behind).";
    MEMORY_BUDGET_BYTES = "neurograph_memory_budget_bytes", Gauge, [], "The memory quota (quotas.memory_budget_bytes).";
    NEIGHBOR_REBUILDS_TOTAL = "neurograph_neighbor_rebuilds_total", Counter, [], "Neighbour-list rebuilds.";
    WAL_BYTES_TOTAL = "neurograph_wal_bytes_total", Counter, [], "Bytes written to the WAL.";
    WAL_RECORDS_TOTAL = "neurograph_wal_records_total", Counter, [], "Tick records written to the WAL.";
    WAL_FSYNCS_TOTAL = "neurograph_wal_fsyncs_total", Counter, [], "fsync calls on the WAL.";
    WAL_SNAPSHOTS_TOTAL = "neurograph_wal_snapshots_total", Counter, [], "Snapshots written.";
    WAL_DURABLE_TICK = "neurograph_wal_durable_tick", Gauge, [], "The highest tick known durable.";
    WAL_FSYNC_SECONDS = crate::wal::writer::FSYNC_SECONDS, Histogram, [], "Seconds of one WAL segment fsync.", from "the WAL writer's thread";
    BLACKBOX_EVENTS_TOTAL = "neurograph_blackbox_events_total", Counter, [], "Events recorded in the black box.";
    PANICS_TOTAL = "neurograph_panics_total", Counter, [], "Ticks that panicked.", from "the runner";
    RECOVERIES_TOTAL = "neurograph_recoveries_total", Counter, [], "Recoveries from the WAL after a panic.", from "the runner";
    INFO = "neurograph_info", Gauge, ["version"], "Always 1; the label names the version.", from "`install_prometheus`";
    GPU_PHASE_SECONDS = "neurograph_gpu_phase_seconds", Histogram, ["phase"], "Seconds of a GPU force pass phase (upload, dispatch, readback); only with the GPU backend.";
    GPU_TRANSFER_BYTES_TOTAL = "neurograph_gpu_transfer_bytes_total", Counter, ["direction"], "Bytes moved to and from the GPU (upload, readback); only with the GPU backend.";
    GPU_RESIDENT_TICKS_TOTAL = "neurograph_gpu_resident_ticks_total", Counter, [], "Ticks that ran on the GPU end to end (the resident tick); only with the GPU backend.";
    GPU_RESIDENT_LOADS_TOTAL = "neurograph_gpu_resident_loads_total", Counter, [], "Uploads of the whole state to the resident tick (the first, and after each host edit of tokens).";
}

/// The catalogue as the Markdown table of `docs/observability.md`.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| name | kind | labels | what | emitted by |\n|---|---|---|---|---|\n");
    for m in ALL {
        let labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.name(),
            labels.join(", "),
            m.help,
            m.source.unwrap_or("the `Observe` stage"),
        ));
    }
    out
}

/// Bucket bounds of the `*_seconds` histograms: 10 µs to 10 s.
pub const SECONDS_BUCKETS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Labels of the `level` gauge, so that emitting it allocates nothing.
pub const LEVEL_LABELS: [&str; 8] = ["1", "2", "3", "4", "5", "6", "7", "8"];

/// Adds the help texts of [`ALL`] to the current recorder.
pub fn describe() {
    for m in ALL {
        let unit = if m.name.ends_with("_seconds") {
            Some(metrics::Unit::Seconds)
        } else if m.name.ends_with("_bytes_total") {
            Some(metrics::Unit::Bytes)
        } else {
            None
        };
        let (name, help) = (m.name, m.help);
        match (m.kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, _) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
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
    MetricsServer, RecorderTaken, ServerError, ServerLimits, install_prometheus,
    prometheus_recorder,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in `docs/observability.md` is the catalogue's. To regenerate
    /// it, run this test with `NEUROGRAPH_WRITE_DOCS=1`.
    #[test]
    fn docs_table_is_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (start, end) = (
            "<!-- metrics table: generated -->\n",
            "<!-- end of metrics table -->",
        );
        let a = doc
            .find(start)
            .expect("start marker in docs/observability.md")
            + start.len();
        let b = doc[a..].find(end).expect("end marker") + a;
        let table = markdown_table();
        if std::env::var_os("NEUROGRAPH_WRITE_DOCS").is_some() {
            std::fs::write(path, format!("{}{table}{}", &doc[..a], &doc[b..])).unwrap();
            return;
        }
        assert_eq!(
            &doc[a..b],
            table,
            "docs/observability.md's metrics table is stale"
        );
    }

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(names.iter().all(|n| n.starts_with("neurograph_")));
    }
}
