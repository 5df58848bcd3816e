//! Observability and resilience (DESIGN §9).
//!
//! - **puffin**: every system opens with [`profile_system!`](crate::profile_system) (a puffin function
//!   scope and a tracing span), rayon chunks have their own puffin scopes, and
//!   `plugin::end_tick` starts one puffin frame per tick. Scopes cost one atomic load
//!   while puffin is off (`puffin::set_scopes_on`).
//! - **tracing**: [`run_tick`](crate::schedule::run_tick) wraps each tick in a `tick` span (fields `tick`,
//!   `tokens`, `links`); the systems' spans nest in it. The adaptive sampler in
//!   [`sampler`] decides per tick what is written.
//! - **metrics**: the `observe` system of the `Observe` stage emits the figures of
//!   [`metrics`] through the `metrics` facade, to whatever recorder is installed.
//! - **black box**: the same system feeds the [`BlackBox`] ring buffer with the
//!   tick's notable events.
//! - **faults**: a test-only `FaultHook` (feature `fault-injection`) makes a chosen tick panic once, so that
//!   the runner's recovery can be tested.

pub mod blackbox;
pub mod metrics;
#[cfg(feature = "cli")]
pub mod puffin_stream;
pub mod sampler;

pub use blackbox::{BlackBox, BlackBoxEvent, DumpError, EventKind};
pub use metrics::LiveStatus;
pub use sampler::{SamplerHandle, SamplerStats, SamplingLayer, sampling_layer};

use crate::geometry::hierarchy::{GroupEvents, Hierarchy};
use crate::model::cdna::{Cdna, CdnaViolations, ViolationKind};
use crate::model::commands::CommandLog;
use crate::model::registry::{LinkGraph, TokenRegistry};
use crate::schedule::SimClock;
use crate::schedule::{SimSystems, SimTick, StageTimes};
use crate::systems::{ForceBuffers, LearnStats};
use crate::wal::Journal;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use std::fmt::Write as _;
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};

/// What the `observe` system does each tick. Both default to on; metrics cost
/// about 40 µs a tick and the black box a few µs (see `neurograph bench observe`).
#[derive(Resource, Clone, Debug, PartialEq, Eq)]
pub struct ObserveSettings {
    /// Emit the metrics through the `metrics` facade (a no-op without a recorder).
    pub metrics: bool,
    /// Record notable events in the [`BlackBox`].
    pub black_box: bool,
    /// End a puffin frame after every tick (when puffin's scopes are on). A host
    /// that marks frames in its own loop (`puffin::GlobalProfiler::lock().new_frame()`
    /// once per rendered frame) turns this off, so that its frames are not cut
    /// in two by ours.
    pub puffin_frames: bool,
}

impl ObserveSettings {
    /// Nothing emitted or recorded: for worlds that only replay a WAL.
    pub const QUIET: Self = Self {
        metrics: false,
        black_box: false,
        puffin_frames: true,
    };
}

impl Default for ObserveSettings {
    fn default() -> Self {
        Self {
            metrics: true,
            black_box: true,
            puffin_frames: true,
        }
    }
}

/// The trace sampler this simulation feeds, if any. With `follow_cdna`, its
/// rate follows the CDNA's `evolution.trace_sample_rate` whenever the CDNA
/// changes.
#[derive(Resource, Clone, Debug)]
pub struct TraceControl {
    /// The sampler.
    pub sampler: SamplerHandle,
    /// Take the rate from the CDNA (else it stays as set on the handle).
    pub follow_cdna: bool,
}

/// Shares the live figures with `/health` (or any other reader).
#[derive(Resource, Clone, Debug, Default)]
pub struct Live(pub Arc<LiveStatus>);

/// A test-only fault (feature `fault-injection`): the tick `tick` panics
/// (between `Ingest` and `Forces`), once per hook, however often the world is
/// rebuilt with it.
#[cfg(feature = "fault-injection")]
#[derive(Resource, Clone, Debug)]
pub struct FaultHook {
    /// The tick that panics (or loses its GPU).
    pub tick: u64,
    /// Instead of panicking, the GPU backend fails at the start of `tick`.
    pub gpu_loss: bool,
    fired: Arc<AtomicBool>,
}

#[cfg(feature = "fault-injection")]
impl FaultHook {
    /// A hook that makes tick `panic_at` panic once.
    pub fn panic_at(tick: u64) -> Self {
        Self {
            tick,
            gpu_loss: false,
            fired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A hook that makes the GPU backend fail (once) as tick `tick` starts.
    pub fn gpu_loss_at(tick: u64) -> Self {
        Self {
            gpu_loss: true,
            ..Self::panic_at(tick)
        }
    }

    /// Whether it has fired.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "fault-injection")]
fn fault_hook(
    hook: Option<Res<FaultHook>>,
    clock: Res<SimClock>,
    backend: Option<ResMut<crate::backend::ForceBackend>>,
) {
    if let Some(h) = hook
        && clock.tick == h.tick
        && !h.fired.swap(true, Ordering::Relaxed)
    {
        if h.gpu_loss {
            if let Some(mut b) = backend
                && b.active() == crate::model::config::Backend::Gpu
            {
                b.failed(format!(
                    "fault hook: injected GPU loss at tick {}",
                    clock.tick
                ));
            }
            return;
        }
        panic!("fault hook: injected panic at tick {}", clock.tick);
    }
}

/// Adds the `observe` system to [`SimSystems::Observe`], the [`BlackBox`] and
/// [`ObserveSettings`], and (feature `fault-injection`) the `FaultHook` check.
#[derive(Clone, Debug, Default)]
pub struct ObservePlugin {
    /// Initial settings.
    pub settings: ObserveSettings,
}

impl Plugin for ObservePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.settings.clone())
            .init_resource::<BlackBox>()
            .add_systems(
                SimTick,
                observe.in_set(SimSystems::Observe).in_set(ObserveSystem),
            );
        // Only in builds for tests: no system runs for it otherwise.
        #[cfg(feature = "fault-injection")]
        app.add_systems(
            SimTick,
            fault_hook
                .after(SimSystems::Ingest)
                .before(SimSystems::Forces),
        );
    }
}

/// The set of the `observe` system (inside [`SimSystems::Observe`]), so that
/// the end of the tick can be ordered after it.
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObserveSystem;

/// What `observe` remembers between ticks.
#[derive(Default)]
struct Seen {
    started: bool,
    wal_snapshots: u64,
    wal_failure: bool,
    /// A GPU error or fallback went to the black box.
    gpu_problem: bool,
    /// GPU passes seen, so each pass's phases are recorded once.
    gpu_passes: u64,
    resident: crate::backend::ResidentTotals,
    organized: Option<u64>,
    events: GroupEvents,
    levels: usize,
    /// The last value of each mirrored total, in the order `observe` visits
    /// them, so that the counters advance by what this world added (a
    /// recovered world starts again from its own).
    totals: Vec<u64>,
}

/// How much the total in `slot` advanced since the last tick (all of it when it
/// went down, i.e. it was reset).
fn advance(totals: &mut Vec<u64>, slot: usize, now: u64) -> u64 {
    if totals.len() <= slot {
        totals.resize(slot + 1, 0);
    }
    let last = std::mem::replace(&mut totals[slot], now);
    if now >= last { now - last } else { now }
}

/// What the `observe` system reads: the world's figures after the tick.
#[derive(bevy_ecs::system::SystemParam)]
struct Figures<'w> {
    clock: Res<'w, SimClock>,
    registry: Res<'w, TokenRegistry>,
    links: Res<'w, LinkGraph>,
    cdna: Res<'w, Cdna>,
    violations: Res<'w, CdnaViolations>,
    commands: Res<'w, CommandLog>,
    hierarchy: Res<'w, Hierarchy>,
    learn: Res<'w, LearnStats>,
    forces: Res<'w, ForceBuffers>,
    times: Res<'w, StageTimes>,
    backend: Option<Res<'w, crate::backend::ForceBackend>>,
    journal: Option<Res<'w, Journal>>,
    account: Option<Res<'w, crate::model::config::MemoryAccount>>,
    quotas: Option<Res<'w, crate::model::config::Quotas>>,
}

/// The WAL writer's counters (records counted when journaled, not when the
/// writer thread gets to them) and its failure, if any.
type WalFigures = Option<(crate::wal::WalStats, Option<String>)>;

/// What happened in this tick, as `observe` works it out once for every sink.
struct TickNews {
    tick: u64,
    /// The first tick this world is observed.
    first: bool,
    /// A detection ran this tick.
    organized_now: bool,
    /// CDNA violations corrected this tick, and their kinds as text.
    violations: u64,
    violation_text: String,
    wal: WalFigures,
}

/// Emits the tick's metrics, feeds the black box and the live status, and
/// keeps the sampler's rate in step with the CDNA.
fn observe(
    settings: Res<ObserveSettings>,
    f: Figures,
    trace: Option<Res<TraceControl>>,
    live: Option<Res<Live>>,
    mut bb: ResMut<BlackBox>,
    mut seen: Local<Seen>,
) {
    crate::profile_system!("observe");
    let news = news(&f, &mut seen);
    if let Some(t) = &trace
        && t.follow_cdna
        && (news.first || f.cdna.is_changed())
    {
        t.sampler.set_rate(f.cdna.evolution.trace_sample_rate);
    }
    if news.violations > 0 {
        // CDNA violations mark the tick for the trace sampler.
        tracing::info!(target: sampler::VIOLATION_TARGET, tick = news.tick, violations = news.violations, kinds = %news.violation_text, "cdna violations corrected");
    }
    if let Some(live) = &live {
        live.0.tick_done(news.tick, f.registry.len());
        if let Some((_, Some(failure))) = &news.wal {
            live.0.fail(format!("WAL: {failure}"));
        }
    }
    if settings.black_box {
        let added = record_events(&f, &news, &mut seen, &mut bb);
        if settings.metrics && added > 0 {
            ::metrics::counter!(metrics::BLACKBOX_EVENTS_TOTAL).increment(added);
        }
    }
    if let Some((stats, failure)) = &news.wal {
        seen.wal_snapshots = stats.snapshots;
        seen.wal_failure |= failure.is_some();
    }
    if news.organized_now {
        seen.organized = f.hierarchy.last_organized;
        seen.events = f.hierarchy.events;
    }
    mirror_totals(&f, &news, &mut seen, settings.metrics);
    let per_level = f.hierarchy.groups_per_level();
    let levels_before = std::mem::replace(&mut seen.levels, per_level.len());
    if settings.metrics {
        emit_figures(&f, &news, &mut seen, &per_level, levels_before);
    }
}

/// Works out the tick's news; on the first tick observed, takes what happened
/// before as seen (it is not news).
fn news(f: &Figures, seen: &mut Seen) -> TickNews {
    let tick = f.clock.tick;
    let first = !seen.started;
    let wal = f.journal.as_ref().map(|j| {
        let mut stats = j.stats();
        stats.records = j.appended_records();
        (stats, j.failure().map(str::to_string))
    });
    if first {
        seen.started = true;
        if f.hierarchy.last_organized != Some(tick) {
            seen.organized = f.hierarchy.last_organized;
        }
        seen.events = f.hierarchy.events;
        seen.wal_snapshots = wal.as_ref().map_or(0, |(s, _)| s.snapshots);
    }
    let violations: u64 = f.violations.last_tick.iter().sum();
    let mut violation_text = String::new();
    for k in ViolationKind::ALL {
        let n = f.violations.last_tick[k as usize];
        if n > 0 {
            let sep = if violation_text.is_empty() { "" } else { ", " };
            let _ = write!(violation_text, "{sep}{} {n}", k.name());
        }
    }
    let organized_now =
        f.hierarchy.last_organized.is_some() && f.hierarchy.last_organized != seen.organized;
    TickNews {
        tick,
        first,
        organized_now,
        violations,
        violation_text,
        wal,
    }
}

/// Records the tick's notable events in the black box; returns how many.
fn record_events(f: &Figures, news: &TickNews, seen: &mut Seen, bb: &mut BlackBox) -> u64 {
    let before = bb.recorded();
    let tick = news.tick;
    for (cmd, why) in &f.commands.rejected {
        bb.record(
            tick,
            EventKind::CommandRefused,
            format!("{}: {why}", cmd.name()),
        );
    }
    if news.violations > 0 {
        bb.record(
            tick,
            EventKind::Violation,
            format!("{} corrected: {}", news.violations, news.violation_text),
        );
    }
    if !news.first && f.cdna.is_changed() {
        bb.record(
            tick,
            EventKind::Cdna,
            format!(
                "CDNA version {} ({} profile) in effect",
                f.cdna.version,
                f.cdna.profile.name()
            ),
        );
    }
    if news.organized_now {
        bb.record(tick, EventKind::Groups, groups_text(&f.hierarchy, seen));
    }
    if let Some((stats, failure)) = &news.wal {
        if stats.snapshots > seen.wal_snapshots {
            bb.record(
                tick,
                EventKind::Wal,
                format!(
                    "snapshot written ({} by this writer, durable tick {})",
                    stats.snapshots, stats.durable_tick
                ),
            );
        }
        if let Some(failure) = failure
            && !seen.wal_failure
        {
            bb.record(tick, EventKind::Error, format!("WAL failed: {failure}"));
        }
    }
    if let Some(b) = &f.backend {
        let problem = b
            .error()
            .map(|e| {
                (
                    EventKind::Error,
                    format!("GPU failed, forces on the CPU: {e}"),
                )
            })
            .or_else(|| {
                b.fallback().map(|fb| {
                    (
                        EventKind::Note,
                        format!("backend auto runs on the CPU: {fb}"),
                    )
                })
            })
            .or_else(|| {
                b.resident_refused().map(|why| {
                    (
                        EventKind::Note,
                        format!("the GPU computes forces only (gpu_tick assisted): {why}"),
                    )
                })
            });
        if let Some((kind, text)) = problem
            && !seen.gpu_problem
        {
            bb.record(tick, kind, text);
            seen.gpu_problem = true;
        }
    }
    bb.recorded() - before
}

/// The black box's line for a detection: groups per level and the identity
/// events since the last one.
fn groups_text(hierarchy: &Hierarchy, seen: &Seen) -> String {
    let (e, p) = (hierarchy.events, seen.events);
    let levels: Vec<String> = hierarchy
        .groups_per_level()
        .iter()
        .map(u64::to_string)
        .collect();
    format!(
        "groups per level {}; kept {}, appeared {}, vanished {}, split {}, merged {}",
        if levels.is_empty() {
            "none".into()
        } else {
            levels.join("/")
        },
        e.kept.saturating_sub(p.kept),
        e.appeared.saturating_sub(p.appeared),
        e.vanished.saturating_sub(p.vanished),
        e.split.saturating_sub(p.split),
        e.merged.saturating_sub(p.merged)
    )
}

/// Advances the counters that mirror the world's own totals (and emits them
/// when `emit`). They advance whether or not metrics are on, so that turning
/// them on (or a recovery) never replays old counts. The visiting order is
/// fixed; the WAL's come last, as a journal may appear or go.
fn mirror_totals(f: &Figures, news: &TickNews, seen: &mut Seen, emit: bool) {
    let mut slot = 0;
    let mut bump = |name: &'static str, label: Option<(&'static str, &'static str)>, now: u64| {
        let d = advance(&mut seen.totals, slot, now);
        slot += 1;
        if emit {
            match label {
                Some((k, v)) => ::metrics::counter!(name, k => v),
                None => ::metrics::counter!(name),
            }
            .increment(d);
        }
    };
    for k in ViolationKind::ALL {
        bump(
            metrics::CDNA_VIOLATIONS_TOTAL,
            Some(("kind", k.name())),
            f.violations.get(k),
        );
    }
    let e = f.hierarchy.events;
    for (event, v) in [
        ("kept", e.kept),
        ("appeared", e.appeared),
        ("vanished", e.vanished),
        ("split", e.split),
        ("merged", e.merged),
    ] {
        bump(metrics::GROUP_EVENTS_TOTAL, Some(("event", event)), v);
    }
    for (name, v) in [
        (metrics::COMMANDS_APPLIED_TOTAL, f.commands.applied_total),
        (metrics::COMMANDS_REJECTED_TOTAL, f.commands.rejected_total),
        (metrics::QUOTA_REJECTIONS_TOTAL, f.commands.quota_rejections),
        (metrics::LINKS_FORMED_TOTAL, f.learn.links_formed),
        (metrics::LINKS_PRUNED_TOTAL, f.learn.links_pruned),
        (metrics::NEIGHBOR_REBUILDS_TOTAL, f.forces.stats.rebuilds),
    ] {
        bump(name, None, v);
    }
    if let Some((stats, _)) = &news.wal {
        for (name, v) in [
            (metrics::WAL_BYTES_TOTAL, stats.bytes),
            (metrics::WAL_RECORDS_TOTAL, stats.records),
            (metrics::WAL_FSYNCS_TOTAL, stats.fsyncs),
            (metrics::WAL_SNAPSHOTS_TOTAL, stats.snapshots),
        ] {
            bump(name, None, v);
        }
    }
}

/// Emits the tick's timings, gauges and GPU figures.
fn emit_figures(
    f: &Figures,
    news: &TickNews,
    seen: &mut Seen,
    per_level: &[u64],
    levels_before: usize,
) {
    use ::metrics::{counter, gauge, histogram};
    let mut total = 0.0;
    for (k, stage) in SimSystems::ALL.into_iter().enumerate() {
        let s = f.times.last[k];
        total += s;
        histogram!(metrics::STAGE_SECONDS, "stage" => stage.name()).record(s);
    }
    histogram!(metrics::TICK_SECONDS).record(total);
    if let Some((last, _, passes)) = f.backend.as_ref().and_then(|b| b.gpu_timings())
        && passes != std::mem::replace(&mut seen.gpu_passes, passes)
    {
        for (phase, s) in [
            ("upload", last.upload),
            ("dispatch", last.dispatch),
            ("readback", last.readback),
        ] {
            histogram!(metrics::GPU_PHASE_SECONDS, "phase" => phase).record(s);
        }
        counter!(metrics::GPU_TRANSFER_BYTES_TOTAL, "direction" => "upload")
            .increment(last.uploaded_bytes);
        counter!(metrics::GPU_TRANSFER_BYTES_TOTAL, "direction" => "readback")
            .increment(last.readback_bytes);
    }
    if let Some(t) = f.backend.as_ref().and_then(|b| b.resident_totals()) {
        let was = std::mem::replace(&mut seen.resident, t);
        // A new resident engine (a backend swapped by replay) counts from 0.
        let was = if t.ticks < was.ticks {
            Default::default()
        } else {
            was
        };
        if t.ticks > was.ticks {
            counter!(metrics::GPU_RESIDENT_TICKS_TOTAL).increment(t.ticks - was.ticks);
            counter!(metrics::GPU_RESIDENT_LOADS_TOTAL)
                .increment(t.loads.saturating_sub(was.loads));
            counter!(metrics::GPU_TRANSFER_BYTES_TOTAL, "direction" => "upload")
                .increment(t.uploaded_bytes.saturating_sub(was.uploaded_bytes));
            counter!(metrics::GPU_TRANSFER_BYTES_TOTAL, "direction" => "readback")
                .increment(t.readback_bytes.saturating_sub(was.readback_bytes));
        }
    }
    counter!(metrics::TICKS_TOTAL).increment(1);
    gauge!(metrics::TICK).set(news.tick as f64);
    gauge!(metrics::TOKENS).set(f.registry.len() as f64);
    gauge!(metrics::LINKS).set(f.links.len() as f64);
    if let Some(a) = &f.account {
        gauge!(metrics::MEMORY_MEASURED_BYTES).set(a.bytes as f64);
    }
    if let Some(q) = &f.quotas {
        gauge!(metrics::MEMORY_BUDGET_BYTES).set(q.memory_budget_bytes as f64);
    }
    if news.organized_now || news.first {
        // Levels that disappeared read 0, not their last count.
        let shown = per_level.len().max(levels_before).max(2);
        for (k, label) in metrics::LEVEL_LABELS.into_iter().enumerate().take(shown) {
            let n = per_level.get(k).copied().unwrap_or(0);
            gauge!(metrics::GROUPS, "level" => label).set(n as f64);
        }
    }
    if let Some((stats, _)) = &news.wal {
        gauge!(metrics::WAL_DURABLE_TICK).set(stats.durable_tick as f64);
    }
}
