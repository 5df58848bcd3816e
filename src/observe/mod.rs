//! Observability and resilience (DESIGN §9).
//!
//! - **puffin**: every system opens with [`profile_system!`] (a puffin function
//!   scope and a tracing span), rayon chunks have their own puffin scopes, and
//!   `end_tick` starts one puffin frame per tick. Scopes cost one atomic load
//!   while puffin is off (`puffin::set_scopes_on`).
//! - **tracing**: [`run_tick`] wraps each tick in a `tick` span (fields `tick`,
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

pub use blackbox::{BlackBox, BlackBoxEvent, EventKind};
pub use metrics::LiveStatus;
pub use sampler::{SamplerHandle, SamplerStats, SamplingLayer, sampling_layer};

use crate::cdna::{Cdna, CdnaViolations, ViolationKind};
use crate::commands::CommandLog;
use crate::hierarchy::{GroupEvents, Hierarchy};
use crate::plugin::{SimSystems, SimTick, StageTimes};
use crate::registry::{LinkGraph, SimClock, TokenRegistry};
use crate::systems::{ForceBuffers, LearnStats};
use crate::wal::Journal;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use std::fmt::Write as _;
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};

/// Opens a system: a puffin function scope and a tracing span named `$name`
/// (target [`sampler::TICK_TARGET`]) that last until the end of the block.
#[macro_export]
macro_rules! profile_system {
    ($name:literal) => {
        ::puffin::profile_function!();
        let _neurograph_span =
            ::tracing::info_span!(target: $crate::observe::sampler::TICK_TARGET, $name).entered();
    };
}

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
                && b.active() == crate::config::Backend::Gpu
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
                observe
                    .in_set(SimSystems::Observe)
                    .before(crate::plugin::end_tick),
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

/// Runs one tick of `world` inside a `tick` span. A panic anywhere in the
/// tick (a rayon worker's too) is logged as an error inside that span, so the
/// trace sampler keeps the tick, and then goes on unwinding.
pub fn run_tick(world: &mut World) {
    let tick = world.resource::<SimClock>().tick + 1;
    let span = tracing::info_span!(
        target: sampler::TICK_TARGET,
        "tick",
        tick,
        tokens = world.resource::<TokenRegistry>().len(),
        links = world.resource::<LinkGraph>().len(),
    );
    let _entered = span.enter();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        world.run_schedule(SimTick);
    }));
    if let Err(payload) = ran {
        tracing::error!(target: "neurograph::panic", tick, panic = %panic_message(&*payload), "tick panicked");
        std::panic::resume_unwind(payload);
    }
}

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

/// Emits the tick's metrics, feeds the black box and the live status, and
/// keeps the sampler's rate in step with the CDNA.
#[allow(clippy::too_many_arguments)]
fn observe(
    settings: Res<ObserveSettings>,
    clock: Res<SimClock>,
    registry: Res<TokenRegistry>,
    links: Res<LinkGraph>,
    cdna: Res<Cdna>,
    violations: Res<CdnaViolations>,
    commands: Res<CommandLog>,
    hierarchy: Res<Hierarchy>,
    (learn, forces, times, backend): (
        Res<LearnStats>,
        Res<ForceBuffers>,
        Res<StageTimes>,
        Option<Res<crate::backend::ForceBackend>>,
    ),
    journal: Option<Res<Journal>>,
    trace: Option<Res<TraceControl>>,
    live: Option<Res<Live>>,
    mut bb: ResMut<BlackBox>,
    mut seen: Local<Seen>,
) {
    crate::profile_system!("observe");
    let tick = clock.tick;
    let first = !seen.started;
    let wal = journal.as_ref().map(|j| {
        let mut stats = j.stats();
        // Counted when journaled, not when the writer thread gets to it.
        stats.records = j.appended_records();
        (stats, j.failure().map(str::to_string))
    });
    if first {
        // What happened before this world was observed is not news.
        seen.started = true;
        if hierarchy.last_organized != Some(tick) {
            seen.organized = hierarchy.last_organized;
        }
        seen.events = hierarchy.events;
        seen.wal_snapshots = wal.as_ref().map_or(0, |(s, _)| s.snapshots);
    }

    if let Some(t) = &trace
        && t.follow_cdna
        && (first || cdna.is_changed())
    {
        t.sampler.set_rate(cdna.evolution.trace_sample_rate);
    }
    // CDNA violations mark the tick for the trace sampler.
    let n_violations: u64 = violations.last_tick.iter().sum();
    let mut violation_text = String::new();
    if n_violations > 0 {
        for k in ViolationKind::ALL {
            let n = violations.last_tick[k as usize];
            if n > 0 {
                let sep = if violation_text.is_empty() { "" } else { ", " };
                let _ = write!(violation_text, "{sep}{} {n}", k.name());
            }
        }
        tracing::info!(target: sampler::VIOLATION_TARGET, tick, violations = n_violations, kinds = %violation_text, "cdna violations corrected");
    }
    if let Some(live) = &live {
        live.0.tick_done(tick, registry.len());
        if let Some((_, Some(f))) = &wal {
            live.0.fail(format!("WAL: {f}"));
        }
    }

    let organized_now =
        hierarchy.last_organized.is_some() && hierarchy.last_organized != seen.organized;
    if settings.black_box {
        let before = bb.recorded();
        for (cmd, why) in &commands.rejected {
            bb.record(
                tick,
                EventKind::CommandRefused,
                format!("{}: {why}", cmd.name()),
            );
        }
        if n_violations > 0 {
            bb.record(
                tick,
                EventKind::Violation,
                format!("{n_violations} corrected: {violation_text}"),
            );
        }
        if !first && cdna.is_changed() {
            bb.record(
                tick,
                EventKind::Cdna,
                format!(
                    "CDNA version {} ({} profile) in effect",
                    cdna.version,
                    cdna.profile.name()
                ),
            );
        }
        if organized_now {
            let (e, p) = (hierarchy.events, seen.events);
            let levels: Vec<String> = hierarchy
                .groups_per_level()
                .iter()
                .map(u64::to_string)
                .collect();
            bb.record(
                tick,
                EventKind::Groups,
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
                ),
            );
        }
        if let Some((stats, failure)) = &wal {
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
            if let Some(f) = failure
                && !seen.wal_failure
            {
                bb.record(tick, EventKind::Error, format!("WAL failed: {f}"));
            }
        }
        if let Some(b) = &backend {
            let problem = b
                .error()
                .map(|e| {
                    (
                        EventKind::Error,
                        format!("GPU failed, forces on the CPU: {e}"),
                    )
                })
                .or_else(|| {
                    b.fallback().map(|f| {
                        (
                            EventKind::Note,
                            format!("backend auto runs on the CPU: {f}"),
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
        let added = bb.recorded() - before;
        if settings.metrics && added > 0 {
            ::metrics::counter!(metrics::BLACKBOX_EVENTS_TOTAL).increment(added);
        }
    }
    if let Some((stats, failure)) = &wal {
        seen.wal_snapshots = stats.snapshots;
        seen.wal_failure |= failure.is_some();
    }
    if organized_now {
        seen.organized = hierarchy.last_organized;
        seen.events = hierarchy.events;
    }

    // The mirrored totals advance whether or not metrics are on, so that turning
    // them on (or a recovery) never replays old counts. The visiting order is
    // fixed; the WAL's come last, as a journal may appear or go.
    let emit = settings.metrics;
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
            violations.get(k),
        );
    }
    let e = hierarchy.events;
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
        (metrics::COMMANDS_APPLIED_TOTAL, commands.applied_total),
        (metrics::COMMANDS_REJECTED_TOTAL, commands.rejected_total),
        (metrics::QUOTA_REJECTIONS_TOTAL, commands.quota_rejections),
        (metrics::LINKS_FORMED_TOTAL, learn.links_formed),
        (metrics::LINKS_PRUNED_TOTAL, learn.links_pruned),
        (metrics::NEIGHBOR_REBUILDS_TOTAL, forces.stats.rebuilds),
    ] {
        bump(name, None, v);
    }
    if let Some((stats, _)) = &wal {
        for (name, v) in [
            (metrics::WAL_BYTES_TOTAL, stats.bytes),
            (metrics::WAL_RECORDS_TOTAL, stats.records),
            (metrics::WAL_FSYNCS_TOTAL, stats.fsyncs),
            (metrics::WAL_SNAPSHOTS_TOTAL, stats.snapshots),
        ] {
            bump(name, None, v);
        }
    }
    let per_level = hierarchy.groups_per_level();
    let levels_before = std::mem::replace(&mut seen.levels, per_level.len());

    if !emit {
        return;
    }
    use ::metrics::{counter, gauge, histogram};
    let mut total = 0.0;
    for (k, stage) in SimSystems::ALL.into_iter().enumerate() {
        let s = times.last[k];
        total += s;
        histogram!(metrics::STAGE_SECONDS, "stage" => stage.name()).record(s);
    }
    histogram!(metrics::TICK_SECONDS).record(total);
    if let Some((last, _, passes)) = backend.as_ref().and_then(|b| b.gpu_timings())
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
    counter!(metrics::TICKS_TOTAL).increment(1);
    gauge!(metrics::TICK).set(tick as f64);
    gauge!(metrics::TOKENS).set(registry.len() as f64);
    gauge!(metrics::LINKS).set(links.len() as f64);
    if organized_now || first {
        // Levels that disappeared read 0, not their last count.
        let shown = per_level.len().max(levels_before).max(2);
        for (k, label) in metrics::LEVEL_LABELS.into_iter().enumerate().take(shown) {
            let n = per_level.get(k).copied().unwrap_or(0);
            gauge!(metrics::GROUPS, "level" => label).set(n as f64);
        }
    }
    if let Some((stats, _)) = &wal {
        gauge!(metrics::WAL_DURABLE_TICK).set(stats.durable_tick as f64);
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
