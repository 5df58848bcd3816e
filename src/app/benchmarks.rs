//! Side-by-side benchmarks behind `neurograph bench …`.
//!
//! | command | function | what it measures |
//! |---|---|---|
//! | `bench wal` | [`wal_overhead`] | the tick without a WAL and with each durability (`off`, `batched`, `sync`); the state digest and a snapshot capture on their own; then the replay speed of recovering the `batched` WAL from its first snapshot |
//! | `bench observe` | [`observe_overhead`] | the tick with each observability setting (puffin, tracing at 1% and 100%, metrics, black box, a WAL, and their production mixes) against the bare tick; the tick's tracing spans on their own |
//! | `bench gpu` | [`gpu_vs_cpu`] | per world size, the tick and the `Forces` stage on the CPU and GPU backends, the GPU's upload, dispatch and readback, and the two backends' force difference on the first tick |
//! | `bench hierarchy` | [`hierarchy`] | one world's `Forces`, `Learn` and `Organize` stages, read from its stage timings, then more `Organize` runs on their own |
//! | `bench steady` | [`steady`] | one long run, window by window: the tick cost, the neighbours per token and the memory |
//!
//! The side-by-side benches (`wal`, `observe`, `gpu`) build one world per
//! variant from the same state (the scenario, or its warmed-up state from
//! [`warm_up`]) and step them through one harness: tick by tick, every variant
//! in turn, rotating who goes first, so that every variant sees the same states
//! and the same machine noise. Only the step itself is timed (switching a
//! variant's observers on and off, or reading its stage timings, is not).
//! Their figures are of the steady state: the first tick, which builds every
//! neighbour row, is left out (`bench gpu` runs that tick before the timed
//! ones instead, to compare the two backends' forces on the same state). A
//! variant's overhead over its base variant is given twice: the ratio of the
//! mean ticks, and the median over ticks of the ratio to the base's same tick
//! (paired, so robust to the state's own variation from tick to tick).
//! Every bench fails with a [`BenchError`].

use crate::digest::state_digest;
use crate::model::commands::CommandError;
use crate::model::config::{Backend, GpuTick, Quotas, SimConfig, UnknownName};
use crate::observe::puffin_stream::PuffinServerError;
use crate::scenario::{self, ScenarioParams};
use crate::sim::{SimError, SimSettings, Simulation};
use crate::wal::snapshot::RestoreError;
use crate::wal::{self, Durability, Manifest, RecoverOptions, WalError, WalOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why a bench failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An unknown scenario or durability name.
    #[error(transparent)]
    Scenario(#[from] UnknownName),
    /// A simulation could not be built (invalid settings, or a backend that
    /// cannot start).
    #[error(transparent)]
    Sim(#[from] SimError),
    /// A WAL could not be created, closed, listed or recovered.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The scenario's tokens were refused (e.g. by a quota).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The warmed-up state could not be restored into a world.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The puffin stream server of `bench observe` could not start.
    #[error(transparent)]
    Puffin(#[from] PuffinServerError),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The variants of `bench wal` end at different states.
    #[error("the variants disagree on the final digest")]
    VariantsDisagree,
    /// Recovering the `batched` WAL of `bench wal` ends at another state than
    /// the run that wrote it.
    #[error("the replay does not reach the run's digest")]
    ReplayDigest {
        /// The digest the replay reached.
        replayed: String,
        /// The digest of the run.
        run: String,
    },
    /// A variant of `bench observe` ends at another state than the bare run.
    #[error(
        "variant {variant} ends at digest {digest}, the bare run at {bare}: observing changed the state"
    )]
    ObservingChangedState {
        /// The variant.
        variant: &'static str,
        /// Its final digest.
        digest: String,
        /// The bare run's final digest.
        bare: String,
    },
    /// The force backend failed during the bench.
    #[error("the {backend} backend failed: {reason}")]
    Backend {
        /// The backend's name (`cpu`, `gpu` or `auto`).
        backend: &'static str,
        /// Its error.
        reason: String,
    },
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct WalBenchOptions {
    /// Scenario name.
    pub scenario: String,
    /// Tokens.
    pub tokens: usize,
    /// Ticks per variant.
    pub ticks: u64,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Snapshot interval of the journaled variants.
    pub snapshot_every: u64,
    /// Ticks run first (once, then copied into every variant); 0 = none.
    pub warmup: u64,
}

/// One variant's tick times.
#[derive(Clone, Debug, Serialize)]
pub struct VariantTimes {
    /// `none`, `off`, `batched` or `sync`.
    pub variant: String,
    /// Mean tick seconds, first tick excluded.
    pub mean_tick_s: f64,
    /// Median tick seconds, first tick excluded.
    pub median_tick_s: f64,
    /// Mean tick time over the `none` variant's, minus one (0.03 = 3% slower).
    pub overhead: f64,
    /// Median over ticks of (this variant's tick time / the `none` variant's time
    /// for the same tick) minus one: paired, so robust to the state's own variation.
    pub paired_overhead: f64,
    /// WAL bytes written.
    pub wal_bytes: u64,
    /// fsyncs.
    pub wal_fsyncs: u64,
    /// Final digest (all variants must agree).
    pub digest: String,
}

/// The report of `bench wal`.
#[derive(Clone, Debug, Serialize)]
pub struct WalBenchReport {
    /// Tokens.
    pub tokens: u64,
    /// Ticks per variant.
    pub ticks: u64,
    /// Worker threads.
    pub threads: usize,
    /// Per variant.
    pub variants: Vec<VariantTimes>,
    /// Median seconds of one state digest (part of every journaled tick).
    pub digest_s: f64,
    /// Median seconds to capture a snapshot of the world.
    pub capture_s: f64,
    /// Records replayed by recovery from the first snapshot.
    pub replay_records: u64,
    /// Replay throughput, ticks (= records) per second.
    pub replay_ticks_per_s: f64,
    /// The `batched` run's throughput, ticks per second, first tick included (the
    /// replay's first tick is cold too), to compare with the replay.
    pub run_ticks_per_s: f64,
}

/// The median of `v` (the upper one of an even count; 0 when empty); sorts `v`.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The timer of one turn of [`interleave`]: a bench wraps the part of its turn
/// that is measured in [`time`](Lap::time), and the rest of the turn is not.
struct Lap(Option<f64>);

impl Lap {
    /// Runs `f`, timed.
    fn time<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        self.0 = Some(start.elapsed().as_secs_f64());
        r
    }
}

/// The harness of the side-by-side benches: `ticks` times, every one of
/// `variants` variants takes its turn (`turn(variant, tick, lap)`), variant
/// `(k + tick) % variants` `k`-th, so that who goes first rotates and every
/// variant sees the same states and the same machine noise. Returns the seconds
/// that each turn timed with its [`Lap`], per variant, in tick order; a turn that
/// timed nothing (a variant that stopped) adds nothing.
///
/// # Errors
///
/// The first error of a turn.
fn interleave(
    variants: usize,
    ticks: u64,
    mut turn: impl FnMut(usize, u64, &mut Lap) -> Result<(), BenchError>,
) -> Result<Vec<Vec<f64>>, BenchError> {
    let mut times = vec![Vec::new(); variants];
    for t in 0..ticks {
        for k in 0..variants {
            let v = (k + t as usize) % variants;
            let mut lap = Lap(None);
            turn(v, t, &mut lap)?;
            if let Some(s) = lap.0 {
                times[v].push(s);
            }
        }
    }
    Ok(times)
}

/// The steady-state part of a variant's tick times: the first tick, which
/// builds every neighbour row, is left out.
fn steady_state(times: &[f64]) -> &[f64] {
    times.get(1..).unwrap_or(&[])
}

/// The mean of `v` (0 when empty).
fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A variant's steady-state tick statistics, against a base variant.
struct Timing {
    /// Mean tick seconds.
    mean: f64,
    /// Median tick seconds.
    median: f64,
    /// Mean tick time over the base's, minus one (0 when the base's is 0).
    overhead: f64,
    /// Median over ticks of (this tick / the base's same tick) minus one.
    paired_overhead: f64,
}

impl Timing {
    /// The statistics of the tick times `times` (from [`interleave`]) against
    /// the base variant's `base`, both in [`steady_state`].
    fn new(times: &[f64], base: &[f64]) -> Self {
        let (mine, base) = (steady_state(times), steady_state(base));
        let (mean, base_mean) = (mean_of(mine), mean_of(base));
        Self {
            mean,
            median: median(&mut mine.to_vec()),
            overhead: if base_mean > 0.0 {
                mean / base_mean - 1.0
            } else {
                0.0
            },
            paired_overhead: median(
                &mut mine
                    .iter()
                    .zip(base)
                    .map(|(t, b)| t / b - 1.0)
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// The state `ticks` ticks into a scenario (on the CPU, `threads` workers), from
/// which the benches start so that they time a settled world rather than its
/// first ticks; `None` for 0 ticks (start from the scenario itself).
///
/// # Errors
///
/// An unknown scenario ([`BenchError::Scenario`]), invalid settings
/// ([`BenchError::Sim`]), or tokens that the quotas refuse
/// ([`BenchError::Command`]).
pub fn warm_up(
    scenario: &str,
    tokens: usize,
    seed: u64,
    threads: usize,
    ticks: u64,
) -> Result<Option<wal::WorldSnapshot>, BenchError> {
    if ticks == 0 {
        return Ok(None);
    }
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads,
            ..Default::default()
        },
        quotas: bench_quotas(),
        ..Default::default()
    })?;
    load_world(&mut sim, scenario, tokens, seed, None)?;
    sim.run(ticks);
    Ok(Some(wal::capture(sim.world_mut(), None)))
}

/// Fills a fresh `sim` with the scenario's tokens (and seeds its RNG), or with
/// the warmed-up state `warm`.
///
/// # Errors
///
/// An unknown scenario, tokens that the quotas refuse, or a warmed-up state
/// that cannot be restored.
fn load_world(
    sim: &mut Simulation,
    scenario: &str,
    tokens: usize,
    seed: u64,
    warm: Option<&wal::WorldSnapshot>,
) -> Result<(), BenchError> {
    match warm {
        Some(snap) => wal::restore(sim.world_mut(), snap)?,
        None => {
            sim.world_mut()
                .insert_resource(crate::model::registry::SimRng::seeded(seed));
            scenario::find(scenario)?.spawn_into(
                sim,
                &ScenarioParams { tokens, seed },
                crate::app::runner::SPAWN_BATCH,
            )?;
        }
    }
    Ok(())
}

/// Journals `sim` to a new WAL in `scratch/<durability>`, with that durability
/// (`off`, `batched` or `sync`).
fn journal_to(
    sim: &mut Simulation,
    durability: &str,
    config: &SimConfig,
    snapshot_every: u64,
    scratch: &Path,
) -> Result<(), BenchError> {
    let parsed: Durability = durability.parse()?;
    let manifest = Manifest {
        format_version: wal::FORMAT_VERSION,
        sim: config.clone(),
        quotas: bench_quotas(),
        run: [("bench".to_string(), durability.to_string())].into(),
    };
    let opts = WalOptions {
        durability: parsed,
        snapshot_every,
        keep_snapshots: 1000,
        ..Default::default()
    };
    wal::create(&scratch.join(durability), &manifest, sim, &opts)?;
    Ok(())
}

/// The median seconds of `runs` runs of `f`.
fn median_time(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// Recovers the WAL in `dir` from its first snapshot (the later ones are
/// removed first, so that recovery replays every record after it), and checks
/// that the replay ends at `digest`.
fn replay_from_first_snapshot(
    dir: &Path,
    threads: usize,
    digest: &str,
) -> Result<wal::Recovery<Simulation>, BenchError> {
    let (_, snaps) = wal::writer::list_dir(dir)?;
    for s in snaps.iter().skip(1) {
        std::fs::remove_file(&s.path).map_err(|source| BenchError::Io {
            path: s.path.clone(),
            source,
        })?;
    }
    let rec = wal::recover::<Simulation>(
        dir,
        &RecoverOptions {
            threads,
            exclusive: false,
        },
    )?;
    if rec.report.digest != digest {
        return Err(BenchError::ReplayDigest {
            replayed: rec.report.digest.clone(),
            run: digest.to_string(),
        });
    }
    Ok(rec)
}

/// Runs `bench wal` with WAL directories under `scratch`.
///
/// # Errors
///
/// An unknown scenario, invalid settings or refused tokens (see [`warm_up`]);
/// a WAL that cannot be created, closed, listed or recovered
/// ([`BenchError::Wal`]); a snapshot that cannot be removed before the replay
/// ([`BenchError::Io`]); variants that end at different states
/// ([`BenchError::VariantsDisagree`]); or a replay that does not reach the
/// run's state ([`BenchError::ReplayDigest`]).
pub fn wal_overhead(o: &WalBenchOptions, scratch: &Path) -> Result<WalBenchReport, BenchError> {
    let warm = warm_up(&o.scenario, o.tokens, 42, o.threads, o.warmup)?;
    let config = SimConfig {
        threads: o.threads,
        ..Default::default()
    };
    let names = ["none", "off", "batched", "sync"];
    let mut sims = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut sim = Simulation::new(SimSettings {
            config: config.clone(),
            quotas: bench_quotas(),
            ..Default::default()
        })?;
        load_world(&mut sim, &o.scenario, o.tokens, 42, warm.as_ref())?;
        if i > 0 {
            journal_to(&mut sim, name, &config, o.snapshot_every, scratch)?;
        }
        sims.push(sim);
    }
    let times = interleave(names.len(), o.ticks, |v, _, lap| {
        lap.time(|| sims[v].step());
        Ok(())
    })?;
    let mut stats = Vec::new();
    for sim in &mut sims {
        stats.push(wal::close(sim)?);
    }
    let mut variants = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let timing = Timing::new(&times[i], &times[0]);
        variants.push(VariantTimes {
            variant: name.to_string(),
            mean_tick_s: timing.mean,
            median_tick_s: timing.median,
            overhead: timing.overhead,
            paired_overhead: timing.paired_overhead,
            wal_bytes: stats[i].bytes,
            wal_fsyncs: stats[i].fsyncs,
            digest: sims[i].digest().to_string(),
        });
    }
    if variants.iter().any(|v| v.digest != variants[0].digest) {
        return Err(BenchError::VariantsDisagree);
    }
    let digest_s = median_time(5, || {
        state_digest(sims[0].world_mut());
    });
    let capture_s = median_time(3, || {
        wal::capture(sims[0].world_mut(), None);
    });
    // Like the replay, this counts the cold first tick.
    let run_ticks_per_s = times[2].len() as f64 / times[2].iter().sum::<f64>();
    drop(sims);
    // Replay everything after the first snapshot of the batched WAL.
    let rec = replay_from_first_snapshot(&scratch.join("batched"), o.threads, &variants[0].digest)?;
    Ok(WalBenchReport {
        tokens: o.tokens as u64,
        ticks: o.ticks,
        threads: rec.sim.threads(),
        variants,
        digest_s,
        capture_s,
        replay_records: rec.report.records_replayed,
        replay_ticks_per_s: rec.report.replay_ticks_per_s,
        run_ticks_per_s,
    })
}

impl WalBenchReport {
    /// A table for the terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "WAL overhead: {} tokens, {} ticks per variant, {} threads (first tick excluded;\n  paired = median over ticks of the ratio to the same tick without a WAL)",
            self.tokens, self.ticks, self.threads
        );
        let _ = writeln!(
            s,
            "  {:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "variant", "mean ms", "median ms", "overhead", "paired", "WAL MiB", "fsyncs"
        );
        for v in &self.variants {
            let _ = writeln!(
                s,
                "  {:<8} {:>10.2} {:>10.2} {:>8.1}% {:>8.1}% {:>9.2} {:>7}",
                v.variant,
                v.mean_tick_s * 1e3,
                v.median_tick_s * 1e3,
                v.overhead * 100.0,
                v.paired_overhead * 100.0,
                v.wal_bytes as f64 / 1048576.0,
                v.wal_fsyncs
            );
        }
        let _ = writeln!(
            s,
            "  state digest {:.2} ms, snapshot capture {:.2} ms",
            self.digest_s * 1e3,
            self.capture_s * 1e3
        );
        let _ = write!(
            s,
            "  replay: {} records at {:.1} ticks/s (the batched run: {:.1} ticks/s, ratio {:.2})",
            self.replay_records,
            self.replay_ticks_per_s,
            self.run_ticks_per_s,
            self.replay_ticks_per_s / self.run_ticks_per_s
        );
        s
    }
}

/// What `bench hierarchy` measures.
#[derive(Clone, Debug)]
pub struct HierarchyBenchOptions {
    /// Scenario.
    pub scenario: String,
    /// Tokens.
    pub tokens: usize,
    /// Ticks after the first (which builds the neighbour lists).
    pub ticks: u64,
    /// Extra `Organize` runs timed on their own after the ticks.
    pub organize_runs: u32,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// Ticks run before the timed ones; 0 = none.
    pub warmup: u64,
}

/// Stage costs of the hierarchy and learning stages next to the force stage.
#[derive(Clone, Debug, Serialize)]
pub struct HierarchyBenchReport {
    /// Scenario.
    pub scenario: String,
    /// Tokens.
    pub tokens: usize,
    /// Worker threads.
    pub threads: usize,
    /// Ticks timed (the first, which builds every neighbour row, is not).
    pub ticks: u64,
    /// Median seconds of `Forces` per tick.
    pub forces_s: f64,
    /// Median seconds of `Learn` per tick.
    pub learn_s: f64,
    /// Median seconds of one `Organize` detection (ticks that detect, plus the
    /// extra runs).
    pub organize_s: f64,
    /// Detections timed.
    pub organize_samples: usize,
    /// Median seconds of the whole tick.
    pub tick_s: f64,
    /// `learn_s / forces_s`.
    pub learn_over_forces: f64,
    /// `organize_s / forces_s`.
    pub organize_over_forces: f64,
    /// Groups per level after the last detection.
    pub groups_per_level: Vec<u64>,
    /// Links at the end.
    pub links: u64,
    /// Links formed during the run.
    pub links_formed: u64,
    /// Whether detection could use the force stage's neighbour lists.
    pub organize_used_lists: bool,
    /// Detections that needed a k-d tree instead of the lists.
    pub organize_tree_runs: u64,
    /// Ticks in which `Learn` needed a k-d tree instead of the lists.
    pub learn_tree_ticks: u64,
}

/// Runs `opts.ticks` ticks of a scenario and reports the median cost of the
/// `Forces`, `Learn` and `Organize` stages, read from [`StageTimes`]; then times
/// `opts.organize_runs` more detections on their own.
///
/// One world, no variants: this bench does not go through the side-by-side
/// harness, and its figures are the stages' own timings, not the wall time of
/// the step (the tick before the timed ones, which builds every neighbour row,
/// is left out as in the other benches).
///
/// # Errors
///
/// An unknown scenario, invalid settings, or tokens that the quotas refuse.
///
/// [`StageTimes`]: crate::schedule::StageTimes
pub fn hierarchy(opts: &HierarchyBenchOptions) -> Result<HierarchyBenchReport, BenchError> {
    use crate::schedule::{SimSystems, StageTimes};
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: opts.threads,
            ..Default::default()
        },
        quotas: bench_quotas(),
        ..Default::default()
    })?;
    load_world(&mut sim, &opts.scenario, opts.tokens, opts.seed, None)?;
    sim.run(opts.warmup);
    sim.step();
    let every = sim.cdna().hierarchy.organize_every as u64;
    let (mut forces, mut learn, mut organize, mut tick) = (vec![], vec![], vec![], vec![]);
    for _ in 0..opts.ticks {
        sim.step();
        let st = sim.world().resource::<StageTimes>();
        forces.push(st.last_of(SimSystems::Forces));
        learn.push(st.last_of(SimSystems::Learn));
        tick.push(st.last.iter().sum::<f64>());
        if every > 0 && sim.tick().is_multiple_of(every) {
            organize.push(st.last_of(SimSystems::Organize));
        }
    }
    for _ in 0..opts.organize_runs {
        let t = Instant::now();
        crate::systems::organize_now(sim.world_mut());
        organize.push(t.elapsed().as_secs_f64());
    }
    let samples = organize.len();
    let (f, l, o) = (
        median(&mut forces),
        median(&mut learn),
        median(&mut organize),
    );
    let ratio = |x: f64| if f > 0.0 { x / f } else { 0.0 };
    let stats = sim.learn_stats();
    Ok(HierarchyBenchReport {
        scenario: opts.scenario.clone(),
        tokens: opts.tokens,
        threads: sim.threads(),
        ticks: opts.ticks,
        forces_s: f,
        learn_s: l,
        organize_s: o,
        organize_samples: samples,
        tick_s: median(&mut tick),
        learn_over_forces: ratio(l),
        organize_over_forces: ratio(o),
        groups_per_level: sim.hierarchy().groups_per_level(),
        links: sim.link_count(),
        links_formed: stats.links_formed,
        organize_used_lists: sim
            .world()
            .resource::<crate::systems::OrganizeStats>()
            .used_lists,
        organize_tree_runs: sim
            .world()
            .resource::<crate::systems::OrganizeStats>()
            .tree_runs,
        learn_tree_ticks: stats.tree_ticks,
    })
}

impl HierarchyBenchReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        format!(
            "bench hierarchy: {} × {} tokens, {} threads, {} ticks (medians)\n\
             \x20 Forces    {:>9.2} ms\n\
             \x20 Learn     {:>9.2} ms  ({:.1}% of Forces)\n\
             \x20 Organize  {:>9.2} ms  ({:.1}% of Forces; {} detections, {})\n\
             \x20 tick      {:>9.2} ms\n\
             \x20 groups per level {:?}, {} links ({} formed)\n\
             \x20 k-d tree fallbacks: {} detections, {} Learn ticks",
            self.scenario,
            self.tokens,
            self.threads,
            self.ticks,
            self.forces_s * 1e3,
            self.learn_s * 1e3,
            self.learn_over_forces * 100.0,
            self.organize_s * 1e3,
            self.organize_over_forces * 100.0,
            self.organize_samples,
            if self.organize_used_lists {
                "pairs from the neighbour lists"
            } else {
                "pairs from a k-d tree"
            },
            self.tick_s * 1e3,
            self.groups_per_level,
            self.links,
            self.links_formed,
            self.organize_tree_runs,
            self.learn_tree_ticks
        )
    }
}

/// What `bench observe` measures.
#[derive(Clone, Debug)]
pub struct ObserveBenchOptions {
    /// Scenario name.
    pub scenario: String,
    /// Tokens per world.
    pub tokens: usize,
    /// Ticks per variant (the first is left out of the figures).
    pub ticks: u64,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Ticks run first (once, then copied into every variant); 0 = none.
    pub warmup: u64,
}

/// One observability variant's tick times.
#[derive(Clone, Debug, Serialize)]
pub struct ObserveVariant {
    /// The variant's name.
    pub variant: String,
    /// What is on.
    pub what: String,
    /// The variant it is compared with.
    pub baseline: String,
    /// Mean tick seconds.
    pub mean_tick_s: f64,
    /// Median tick seconds.
    pub median_tick_s: f64,
    /// Mean tick time over the baseline's, minus one.
    pub overhead: f64,
    /// Median over ticks of (this tick / the baseline's same tick) minus one.
    pub paired_overhead: f64,
    /// Trace lines written (tracing variants).
    pub trace_lines: u64,
    /// Ticks whose trace was kept (tracing variants).
    pub trace_ticks_kept: u64,
    /// Mean microseconds of the `Observe` stage per tick (metrics, black box,
    /// the puffin frame), measured inside the tick: the direct cost, free of the
    /// tick-to-tick noise that swamps it in the tick time.
    pub observe_stage_us: f64,
}

/// The report of `bench observe`.
#[derive(Clone, Debug, Serialize)]
pub struct ObserveBenchReport {
    /// Tokens per world.
    pub tokens: u64,
    /// Ticks per variant.
    pub ticks: u64,
    /// Worker threads.
    pub threads: usize,
    /// Per variant.
    pub variants: Vec<ObserveVariant>,
    /// The final digest, the same for every variant (observing changes nothing).
    pub digest: String,
    /// Microseconds per tick of the tick's spans alone (the `tick` span and one
    /// per system, as in a real tick, replayed 20,000 times outside the
    /// simulation): with no subscriber, with the sampler at 1%, at 100%.
    pub span_cost_us: SpanCost,
}

/// The direct cost of the tracing spans of one tick, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SpanCost {
    /// No subscriber interested (tracing off).
    pub off: f64,
    /// The sampler at 1%.
    pub trace_1pct: f64,
    /// The sampler at 100%, writing every tick to a file.
    pub trace_100pct: f64,
}

/// The spans of one real tick: the `tick` span and the systems' spans.
fn synthetic_tick(t: u64) {
    use crate::schedule::TICK_TARGET;
    let span = tracing::info_span!(target: TICK_TARGET, "tick", tick = t, tokens = 100_000u64, links = 0u64);
    let _g = span.enter();
    macro_rules! sys {
        ($($n:literal),*) => { $( { let _s = tracing::info_span!(target: TICK_TARGET, $n).entered(); std::hint::black_box(t); } )* };
    }
    sys!(
        "ingest",
        "forces",
        "group_pull",
        "integrate",
        "constrain_tokens",
        "constrain_links",
        "learn",
        "organize",
        "journal",
        "observe",
        "end_tick"
    );
}

/// Mean microseconds of [`synthetic_tick`] under `dispatch`.
fn span_cost(dispatch: Option<&tracing::Dispatch>) -> f64 {
    const N: u64 = 20_000;
    let run = || {
        let start = Instant::now();
        for t in 1..=N {
            synthetic_tick(t);
        }
        start.elapsed().as_secs_f64() / N as f64 * 1e6
    };
    match dispatch {
        Some(d) => tracing::dispatcher::with_default(d, run),
        None => tracing::dispatcher::with_default(&tracing::Dispatch::none(), run),
    }
}

struct ObserveSetup {
    name: &'static str,
    what: &'static str,
    baseline: &'static str,
    puffin: bool,
    trace_rate: Option<f32>,
    metrics: bool,
    black_box: bool,
    wal: bool,
}

/// The variants of `bench observe`, in report order.
const OBSERVE_VARIANTS: [ObserveSetup; 10] = {
    const OFF: ObserveSetup = ObserveSetup {
        name: "off",
        what: "nothing (the bare tick)",
        baseline: "off",
        puffin: false,
        trace_rate: None,
        metrics: false,
        black_box: false,
        wal: false,
    };
    [
        OFF,
        ObserveSetup {
            name: "puffin",
            what: "puffin scopes + frames to the puffin stream server",
            puffin: true,
            ..OFF
        },
        ObserveSetup {
            name: "trace_1pct",
            what: "tracing, sampler at 1%",
            trace_rate: Some(0.01),
            ..OFF
        },
        ObserveSetup {
            name: "trace_100pct",
            what: "tracing, sampler at 100%",
            trace_rate: Some(1.0),
            ..OFF
        },
        ObserveSetup {
            name: "metrics",
            what: "metrics to a Prometheus recorder",
            metrics: true,
            ..OFF
        },
        ObserveSetup {
            name: "blackbox",
            what: "black box",
            black_box: true,
            ..OFF
        },
        ObserveSetup {
            name: "production",
            what: "tracing 1% + metrics + black box",
            trace_rate: Some(0.01),
            metrics: true,
            black_box: true,
            ..OFF
        },
        ObserveSetup {
            name: "all_on",
            what: "production + puffin",
            puffin: true,
            trace_rate: Some(0.01),
            metrics: true,
            black_box: true,
            ..OFF
        },
        ObserveSetup {
            name: "wal",
            what: "batched WAL only",
            wal: true,
            ..OFF
        },
        ObserveSetup {
            name: "production_wal",
            what: "production + batched WAL",
            trace_rate: Some(0.01),
            metrics: true,
            black_box: true,
            wal: true,
            ..OFF
        },
    ]
};

/// The index in [`OBSERVE_VARIANTS`] of the variant `name`.
fn observe_variant_index(name: &str) -> usize {
    OBSERVE_VARIANTS
        .iter()
        .position(|v| v.name == name)
        .expect("a variant")
}

/// One world of `bench observe`, with its variant's observers.
struct ObserveWorld {
    sim: Simulation,
    /// The variant's tracing subscriber, made the default only while it steps.
    dispatch: Option<tracing::Dispatch>,
    /// The trace sampler behind `dispatch`.
    sampler: Option<crate::observe::sampler::SamplerHandle>,
    /// The variant's metrics recorder, local to its steps.
    recorder: Option<metrics_exporter_prometheus::PrometheusRecorder>,
}

impl ObserveWorld {
    /// The world of variant `v`, from the warmed-up state `warm` or the
    /// scenario; its WAL and trace file go under `scratch`.
    fn new(
        v: &ObserveSetup,
        o: &ObserveBenchOptions,
        config: &SimConfig,
        warm: Option<&wal::WorldSnapshot>,
        scratch: &Path,
    ) -> Result<Self, BenchError> {
        use crate::observe::{ObserveSettings, sampler};
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let mut sim = Simulation::new(SimSettings {
            config: config.clone(),
            quotas: bench_quotas(),
            ..Default::default()
        })?;
        sim.world_mut().insert_resource(ObserveSettings {
            metrics: v.metrics,
            black_box: v.black_box,
            ..Default::default()
        });
        load_world(&mut sim, &o.scenario, o.tokens, 42, warm)?;
        if v.wal {
            let manifest = Manifest {
                format_version: wal::FORMAT_VERSION,
                sim: config.clone(),
                quotas: bench_quotas(),
                run: [("bench".to_string(), v.name.to_string())].into(),
            };
            wal::create(
                &scratch.join(v.name),
                &manifest,
                &mut sim,
                &WalOptions::default(),
            )?;
        }
        let (dispatch, sampler) = match v.trace_rate {
            Some(rate) => {
                let path = scratch.join(format!("{}.trace.jsonl", v.name));
                let file = std::fs::File::create(&path).map_err(|source| BenchError::Io {
                    path: path.clone(),
                    source,
                })?;
                let (layer, handle) =
                    sampler::sampling_layer(Box::new(std::io::BufWriter::new(file)), rate, None);
                let layer = layer.with_filter(sampler::default_filter());
                let sub = tracing_subscriber::registry().with(layer);
                (Some(tracing::Dispatch::new(sub)), Some(handle))
            }
            None => (None, None),
        };
        let recorder = v.metrics.then(crate::observe::metrics::prometheus_recorder);
        Ok(Self {
            sim,
            dispatch,
            sampler,
            recorder,
        })
    }

    /// One turn of the harness: one tick with puffin switched on if `profiled`,
    /// and this world's tracing and metrics scoped to it. Only the step is
    /// timed; switching puffin and the recorder's upkeep are not.
    fn turn(&mut self, profiled: bool, tick: u64, lap: &mut Lap) {
        puffin::set_scopes_on(profiled);
        let sim = &mut self.sim;
        let recorder = self.recorder.as_ref();
        let dispatch = self.dispatch.as_ref();
        lap.time(|| {
            let mut step = move || match recorder {
                Some(r) => metrics::with_local_recorder(r, || sim.step()),
                None => sim.step(),
            };
            match dispatch {
                Some(d) => tracing::dispatcher::with_default(d, step),
                None => step(),
            }
        });
        puffin::set_scopes_on(false);
        if let Some(r) = &self.recorder
            && tick % 50 == 49
        {
            r.handle().run_upkeep();
        }
    }

    /// The report line of variant `v`, this world's, from its `timing`.
    fn report(&self, v: &ObserveSetup, timing: Timing) -> ObserveVariant {
        let stats = self.sampler.as_ref().map(|h| {
            h.flush();
            h.stats()
        });
        let st = self.sim.world().resource::<crate::schedule::StageTimes>();
        ObserveVariant {
            variant: v.name.to_string(),
            what: v.what.to_string(),
            baseline: v.baseline.to_string(),
            mean_tick_s: timing.mean,
            median_tick_s: timing.median,
            overhead: timing.overhead,
            paired_overhead: timing.paired_overhead,
            trace_lines: stats.map_or(0, |s| s.lines),
            trace_ticks_kept: stats.map_or(0, |s| s.kept()),
            observe_stage_us: st.total_of(crate::schedule::SimSystems::Observe)
                / st.ticks.max(1) as f64
                * 1e6,
        }
    }
}

/// The direct cost of the tick's spans under the `off`, `trace_1pct` and
/// `trace_100pct` worlds' subscribers.
fn span_costs(worlds: &[ObserveWorld]) -> SpanCost {
    let cost = |name: &str| span_cost(worlds[observe_variant_index(name)].dispatch.as_ref());
    SpanCost {
        off: cost("off"),
        trace_1pct: cost("trace_1pct"),
        trace_100pct: cost("trace_100pct"),
    }
}

/// Runs `bench observe`: one world per variant, stepped in turn tick by tick
/// (rotating who goes first), with puffin switched on only while the puffin
/// variants step, and tracing and metrics scoped to their worlds
/// (`tracing::dispatcher::with_default`, `metrics::with_local_recorder`).
/// WAL directories and trace files go under `scratch`.
///
/// # Errors
///
/// An unknown scenario, invalid settings or refused tokens (see [`warm_up`]);
/// `scratch` or a trace file that cannot be created ([`BenchError::Io`]); a
/// puffin server that cannot start ([`BenchError::Puffin`]); a WAL that cannot
/// be created or closed ([`BenchError::Wal`]); or a variant that ends at
/// another state than the bare run ([`BenchError::ObservingChangedState`]).
pub fn observe_overhead(
    o: &ObserveBenchOptions,
    scratch: &Path,
) -> Result<ObserveBenchReport, BenchError> {
    let warm = warm_up(&o.scenario, o.tokens, 42, o.threads, o.warmup)?;
    std::fs::create_dir_all(scratch).map_err(|source| BenchError::Io {
        path: scratch.to_path_buf(),
        source,
    })?;
    let config = SimConfig {
        threads: o.threads,
        ..Default::default()
    };
    // Frames go somewhere real, as with `run --puffin` (no viewer connected).
    let _puffin = crate::observe::puffin_stream::PuffinServer::start("127.0.0.1:0")?;
    let mut worlds = OBSERVE_VARIANTS
        .iter()
        .map(|v| ObserveWorld::new(v, o, &config, warm.as_ref(), scratch))
        .collect::<Result<Vec<_>, _>>()?;
    let times = interleave(worlds.len(), o.ticks, |i, t, lap| {
        worlds[i].turn(OBSERVE_VARIANTS[i].puffin, t, lap);
        Ok(())
    })?;
    for w in &mut worlds {
        wal::close(&mut w.sim)?;
    }
    let digest = worlds[0].sim.digest().to_string();
    for (w, v) in worlds.iter_mut().zip(&OBSERVE_VARIANTS) {
        let d = w.sim.digest().to_string();
        if d != digest {
            return Err(BenchError::ObservingChangedState {
                variant: v.name,
                digest: d,
                bare: digest.clone(),
            });
        }
    }
    let variants: Vec<ObserveVariant> = worlds
        .iter()
        .zip(&OBSERVE_VARIANTS)
        .zip(&times)
        .map(|((w, v), mine)| {
            let base = &times[observe_variant_index(v.baseline)];
            w.report(v, Timing::new(mine, base))
        })
        .collect();
    Ok(ObserveBenchReport {
        tokens: o.tokens as u64,
        ticks: o.ticks,
        threads: worlds[0].sim.threads(),
        variants,
        digest,
        span_cost_us: span_costs(&worlds),
    })
}

impl ObserveBenchReport {
    /// A table for the terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Observability overhead: {} tokens, {} ticks per variant, {} threads (first tick excluded;\n  paired = median over ticks of the ratio to the same tick of the baseline)",
            self.tokens, self.ticks, self.threads
        );
        let _ = writeln!(
            s,
            "  {:<15} {:>9} {:>10} {:>9} {:>8} {:>10} {:>7}  what",
            "variant", "mean ms", "median ms", "overhead", "paired", "observe µs", "traced"
        );
        for v in &self.variants {
            let _ = writeln!(
                s,
                "  {:<15} {:>9.2} {:>10.2} {:>8.1}% {:>7.1}% {:>10.1} {:>7}  {}",
                v.variant,
                v.mean_tick_s * 1e3,
                v.median_tick_s * 1e3,
                v.overhead * 100.0,
                v.paired_overhead * 100.0,
                v.observe_stage_us,
                v.trace_ticks_kept,
                v.what
            );
        }
        let c = self.span_cost_us;
        let bare = self.variants[0].mean_tick_s * 1e6;
        let _ = writeln!(
            s,
            "  tick spans alone: off {:.2} µs, sampler 1% {:.2} µs ({:.3}% of the bare tick), 100% {:.2} µs ({:.3}%)",
            c.off,
            c.trace_1pct,
            c.trace_1pct / bare * 100.0,
            c.trace_100pct,
            c.trace_100pct / bare * 100.0
        );
        let _ = write!(s, "  every variant ends at digest {}", self.digest);
        s
    }
}

/// What `bench gpu` measures.
#[derive(Clone, Debug)]
pub struct GpuBenchOptions {
    /// Scenario name (`uniform` has ~30 neighbours per token).
    pub scenario: String,
    /// World sizes.
    pub sizes: Vec<usize>,
    /// Ticks timed per size and backend (after one untimed tick).
    pub ticks: u64,
    /// Worker threads for the CPU side (0 = one per core).
    pub threads: usize,
    /// Ticks run first on the CPU (once per size, then copied into both
    /// worlds); 0 = none.
    pub warmup: u64,
    /// Ticks of the GPU-resident tick timed in one `step` call (after 20 untimed);
    /// 0 = do not run it.
    pub resident_ticks: u64,
}

/// One world size, both backends.
#[derive(Clone, Debug, Serialize)]
pub struct GpuBenchSize {
    /// Tokens.
    pub tokens: usize,
    /// Average pairs per token at the first tick.
    pub avg_neighbors: f64,
    /// Median whole tick on the CPU backend, seconds.
    pub cpu_tick: f64,
    /// Median `Forces` stage on the CPU backend, seconds.
    pub cpu_forces: f64,
    /// Median whole tick on the GPU backend (None: refused or failed).
    pub gpu_tick: Option<f64>,
    /// Median `Forces` stage on the GPU backend (CPU-side list upkeep included).
    pub gpu_forces: Option<f64>,
    /// Median GPU upload, dispatch and readback per tick.
    pub gpu_upload: Option<f64>,
    /// See `gpu_upload`.
    pub gpu_dispatch: Option<f64>,
    /// See `gpu_upload`.
    pub gpu_readback: Option<f64>,
    /// Median bytes uploaded per tick.
    pub gpu_uploaded_bytes: Option<u64>,
    /// Bytes read back per tick.
    pub gpu_readback_bytes: Option<u64>,
    /// `cpu_forces / gpu_forces`.
    pub forces_speedup: Option<f64>,
    /// `cpu_tick / gpu_tick`.
    pub tick_speedup: Option<f64>,
    /// Largest per-token force difference at the first tick (same state on both),
    /// relative to max(|F_cpu|, median |F_cpu|).
    pub first_tick_force_error: Option<f64>,
    /// Why the GPU did not run this size.
    pub gpu_refused: Option<String>,
    /// Median `Forces` + `Integrate` + `Constrain` stages on the CPU backend: the
    /// part of its tick the GPU-resident tick does.
    pub cpu_physics: f64,
    /// The GPU-resident tick from the same state (None: refused, see
    /// `resident_refused`).
    pub resident: Option<ResidentBench>,
    /// Why the GPU-resident tick did not run this size.
    pub resident_refused: Option<String>,
    /// The engine's tick under `--backend gpu` (the resident tick, with the
    /// readback and the stages left on the CPU), timed in turn with the CPU
    /// and assisted GPU worlds (None: see `engine_refused`).
    pub engine: Option<EngineBench>,
    /// Why the engine's resident tick did not run this size.
    pub engine_refused: Option<String>,
}

/// The engine's whole tick under `--backend gpu` (`gpu_tick = resident`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineBench {
    /// Median whole tick, seconds.
    pub tick: f64,
    /// Median `Forces` stage: the device's tick, its uploads and the readback.
    pub forces: f64,
    /// Median seconds of the device's tick (dispatch and wait) in it.
    pub device: f64,
    /// Median seconds of the readback in it.
    pub readback: f64,
    /// Median seconds of the rest of the tick: the host's work (gathering and
    /// comparing the tokens, the link table, writing the results back, the
    /// stages left on the CPU).
    pub host: f64,
    /// `cpu_tick / tick`.
    pub tick_speedup: f64,
    /// Bytes written to the device per timed tick (changed link weights,
    /// group pulls, state uploads after host edits).
    pub uploaded_per_tick: f64,
    /// Bytes read back per timed tick (76 a token, and the counters).
    pub read_back_per_tick: f64,
    /// Uploads of the whole state during the timed ticks.
    pub loads: u64,
}

/// The bare resident tick's section of `bench gpu`, from `start`.
#[cfg(feature = "gpu")]
fn resident_section(
    o: &GpuBenchOptions,
    start: &crate::backend::gpu::resident::ResidentWorld,
    cpu_physics: f64,
) -> (Option<ResidentBench>, Option<String>) {
    match o.resident_ticks {
        0 => (None, Some("not asked for (--resident-ticks 0)".into())),
        ticks => match resident_bench(start, ticks, cpu_physics) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        },
    }
}

/// The engine world of `bench gpu` after its first (untimed) tick, or why it
/// did not run resident.
fn engine_world(world: Result<Simulation, BenchError>) -> (Option<Simulation>, Option<String>) {
    match world {
        Ok(mut e) => {
            e.step();
            match engine_resident(&e) {
                Ok(()) => (Some(e), None),
                Err(why) => (None, Some(why)),
            }
        }
        Err(e) => (None, Some(e.to_string())),
    }
}

/// The engine's figures over the timed ticks (`before`: its totals before them).
fn engine_bench(
    e: &Simulation,
    before: crate::backend::ResidentTotals,
    ticks: &mut [f64],
    forces: &mut [f64],
    parts: &mut [[f64; 3]],
    cpu_ticks: &[f64],
) -> EngineBench {
    let t = engine_totals(e);
    let n = (t.ticks - before.ticks).max(1) as f64;
    let tick = median(ticks);
    let part = |k: usize| median(&mut parts.iter().map(|p| p[k]).collect::<Vec<_>>());
    EngineBench {
        tick,
        forces: median(forces),
        device: part(0),
        readback: part(1),
        host: part(2),
        tick_speedup: median(&mut cpu_ticks.to_vec()) / tick,
        uploaded_per_tick: (t.uploaded_bytes - before.uploaded_bytes) as f64 / n,
        read_back_per_tick: (t.readback_bytes - before.readback_bytes) as f64 / n,
        loads: t.loads - before.loads,
    }
}

/// The device's, the readback's and the host's seconds of `sim`'s last
/// tick, which took `tick` seconds in all.
fn engine_parts_of(sim: &Simulation, tick: f64) -> [f64; 3] {
    let buf = sim.world().resource::<crate::systems::ForceBuffers>();
    let (d, r) = buf
        .resident
        .as_ref()
        .map_or((0.0, 0.0), |o| (o.device_seconds, o.readback_seconds));
    [d, r, (tick - d - r).max(0.0)]
}

/// Whether `sim`'s last tick ran resident, else why not.
fn engine_resident(sim: &Simulation) -> Result<(), String> {
    if sim
        .world()
        .resource::<crate::systems::ForceBuffers>()
        .resident
        .is_some()
    {
        return Ok(());
    }
    let b = sim.backend();
    Err(b
        .resident_refused()
        .or(b.error())
        .unwrap_or("the tick did not run resident")
        .to_string())
}

/// The resident tick's totals in `sim` (zero without one).
fn engine_totals(sim: &Simulation) -> crate::backend::ResidentTotals {
    sim.backend().resident_totals().unwrap_or_default()
}

/// The GPU-resident tick (`backend::gpu::resident`) at one size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResidentBench {
    /// Mean seconds per tick over the timed ticks, run by one `step` call (no readback
    /// but the counters).
    pub tick: f64,
    /// `cpu_physics / tick`.
    pub physics_speedup: f64,
    /// Median seconds per entry point over the profiled ticks that did not
    /// search rows (see `timestamps` for how they are measured).
    pub kernels: Vec<(String, f64)>,
    /// The same over the profiled ticks that searched rows.
    pub kernels_rebuilding: Vec<(String, f64)>,
    /// True when the kernel times come from the device's timestamps (each
    /// kernel's own time); false: each dispatch submitted and waited for alone.
    pub timestamps: bool,
    /// Ticks profiled.
    pub profiled: u32,
    /// Ticks that searched neighbour rows (refreshes and rebuilds), of the
    /// timed ones.
    pub rebuilds: u64,
    /// Rows searched per timed tick (a refresh searches those of the tokens
    /// past half the skin).
    pub rows_per_tick: f64,
    /// Bytes written to the device per timed tick.
    pub uploaded_per_tick: f64,
    /// Bytes read back per timed tick.
    pub read_back_per_tick: f64,
    /// Bytes of the state (positions, velocities, token parameters, link ends).
    pub state_bytes: u64,
    /// Seconds to read positions and velocities back once (what a stage on the
    /// CPU, the digest for one, would add to a tick that needs them).
    pub read_state: f64,
    /// Bytes read back by that readback.
    pub read_state_bytes: u64,
    /// Bytes of every device buffer.
    pub device_bytes: u64,
    /// The longest neighbour row (candidates within cutoff + skin).
    pub max_candidates: u32,
    /// Mean distances the search computed per row built: how well the boxes
    /// prune (a row holds its candidates within cutoff + skin, at most
    /// `max_candidates`).
    pub tested_per_row: f64,
}

/// The `bench gpu` report.
#[derive(Clone, Debug, Serialize)]
pub struct GpuBenchReport {
    /// Scenario.
    pub scenario: String,
    /// Ticks timed per size and backend.
    pub ticks: u64,
    /// CPU worker threads.
    pub threads: usize,
    /// The GPU adapter, or why there is none.
    pub adapter: String,
    /// Per size.
    pub sizes: Vec<GpuBenchSize>,
}

/// GPU against CPU, tick by tick in turn on two copies of the same world.
///
/// # Errors
///
/// An unknown scenario, invalid settings, or tokens that the quotas refuse
/// (see [`warm_up`]). A GPU that cannot start or that fails is no error: its
/// size says why in `gpu_refused`, and the CPU is measured alone.
pub fn gpu_vs_cpu(o: &GpuBenchOptions) -> Result<GpuBenchReport, BenchError> {
    scenario::find(&o.scenario)?;
    let mut adapter = String::from("none");
    let mut sizes = Vec::new();
    for &n in &o.sizes {
        sizes.push(gpu_bench_size(o, n, &mut adapter)?);
    }
    Ok(GpuBenchReport {
        scenario: o.scenario.clone(),
        ticks: o.ticks,
        threads: SimConfig {
            threads: o.threads,
            ..Default::default()
        }
        .resolved_threads(),
        adapter,
        sizes,
    })
}

/// A world of `bench gpu`: `n` tokens on `backend` (a GPU running `tick`),
/// from the warmed-up state `warm` or the scenario.
fn gpu_bench_world(
    o: &GpuBenchOptions,
    (backend, tick): (Backend, GpuTick),
    n: usize,
    warm: Option<&wal::WorldSnapshot>,
) -> Result<Simulation, BenchError> {
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: o.threads,
            backend,
            gpu_tick: tick,
            ..Default::default()
        },
        quotas: bench_quotas(),
        ..Default::default()
    })?;
    load_world(&mut sim, &o.scenario, n, 42, warm)?;
    Ok(sim)
}

/// The seconds of the `Forces` stage of `sim`'s last tick.
fn forces_stage(sim: &Simulation) -> f64 {
    use crate::schedule::{SimSystems, StageTimes};
    sim.world()
        .resource::<StageTimes>()
        .last_of(SimSystems::Forces)
}

/// The first tick of `bench gpu`, on the same state in both worlds, untimed
/// (the CPU first): compares their forces. Returns the largest difference, and
/// why the GPU does not run (then `gpu` is dropped), which is `adapter` when
/// there was no GPU world to begin with.
fn gpu_first_tick(
    cpu: &mut Simulation,
    gpu: &mut Option<Simulation>,
    adapter: &str,
) -> (Option<f64>, Option<String>) {
    cpu.step();
    let (mut refused, mut first_error) = (None, None);
    if let Some(g) = gpu.as_mut() {
        g.step();
        if let Some(e) = g.backend().error() {
            refused = Some(e.to_string());
        } else {
            first_error = Some(force_difference(cpu, g));
        }
    }
    if refused.is_some() {
        *gpu = None;
    }
    if gpu.is_none() && refused.is_none() {
        refused = Some(adapter.to_string());
    }
    (first_error, refused)
}

/// What the GPU world's timed ticks of `bench gpu` record besides the tick.
#[derive(Default)]
struct GpuSamples {
    /// `Forces` stage seconds.
    forces: Vec<f64>,
    /// Device upload seconds.
    upload: Vec<f64>,
    /// Device dispatch seconds.
    dispatch: Vec<f64>,
    /// Device readback seconds.
    readback: Vec<f64>,
    /// Bytes uploaded.
    uploaded_bytes: Vec<f64>,
    /// Bytes read back by the last tick.
    readback_bytes: Option<u64>,
}

impl GpuSamples {
    /// Records the tick that the GPU world `g` has just run; returns why its
    /// backend failed, if it did.
    fn record(&mut self, g: &Simulation) -> Option<String> {
        self.forces.push(forces_stage(g));
        if let Some(e) = g.backend().error() {
            return Some(e.to_string());
        }
        let (last, _, _) = g.backend().gpu_timings()?;
        self.upload.push(last.upload);
        self.dispatch.push(last.dispatch);
        self.readback.push(last.readback);
        self.uploaded_bytes.push(last.uploaded_bytes as f64);
        self.readback_bytes = Some(last.readback_bytes);
        None
    }
}

/// One size of `bench gpu`: `n` tokens, a CPU and a GPU world from the same
/// state. `adapter` becomes the GPU's adapter, or why there is no GPU.
fn gpu_bench_size(
    o: &GpuBenchOptions,
    n: usize,
    adapter: &mut String,
) -> Result<GpuBenchSize, BenchError> {
    let warm = warm_up(&o.scenario, n, 42, o.threads, o.warmup)?;
    let world = |backend, tick| gpu_bench_world(o, (backend, tick), n, warm.as_ref());
    let mut cpu = world(Backend::Cpu, GpuTick::Resident)?;
    let mut gpu = match world(Backend::Gpu, GpuTick::Assisted) {
        Ok(g) => {
            *adapter = g.backend().adapter().unwrap_or_else(|| "?".into());
            Some(g)
        }
        Err(e) => {
            *adapter = e.to_string();
            None
        }
    };
    #[cfg(feature = "gpu")]
    let start = cpu.resident_world();
    let (first_error, mut refused) = gpu_first_tick(&mut cpu, &mut gpu, adapter.as_str());
    let avg_neighbors = cpu.last_pair_count() as f64 / n.max(1) as f64;
    // The engine's `--backend gpu` tick (resident), from the same state.
    let (mut eng, mut engine_refused) = match &gpu {
        Some(_) => engine_world(world(Backend::Gpu, GpuTick::Resident)),
        None => (None, None),
    };
    // Variant 0 is the CPU, 1 the assisted GPU and 2 the engine's resident
    // tick (when there is a GPU), each first in turn. The first tick ran
    // above, so every timed tick counts. A GPU world that fails stops there
    // (its later turns time nothing) and the others step on.
    let mut cpu_force_times = Vec::new();
    let mut cpu_physics_times = Vec::new();
    let mut samples = GpuSamples::default();
    let mut engine_forces = Vec::new();
    let mut engine_parts = Vec::new();
    let engine_before = eng.as_ref().map(engine_totals).unwrap_or_default();
    let variants = if gpu.is_some() { 3 } else { 1 };
    let times = interleave(variants, o.ticks, |v, _, lap| {
        if v == 0 {
            lap.time(|| cpu.step());
            cpu_force_times.push(forces_stage(&cpu));
            cpu_physics_times.push(physics_stages(&cpu));
            return Ok(());
        }
        if v == 2 {
            if let Some(e) = eng.as_mut() {
                lap.time(|| e.step());
                let took = lap.0.unwrap_or(0.0);
                engine_forces.push(forces_stage(e));
                engine_parts.push(engine_parts_of(e, took));
                if let Err(why) = engine_resident(e) {
                    engine_refused = Some(why);
                    eng = None;
                }
            }
            return Ok(());
        }
        let failed = match gpu.as_mut() {
            Some(g) => {
                lap.time(|| g.step());
                samples.record(g)
            }
            None => None,
        };
        if let Some(e) = failed {
            refused = Some(e);
            gpu = None;
        }
        Ok(())
    })?;
    let mut times = times.into_iter();
    let mut cpu_ticks = times.next().unwrap_or_default();
    let mut gpu_ticks = times.next().unwrap_or_default();
    let mut engine_ticks = times.next().unwrap_or_default();
    let engine = eng.as_ref().map(|e| {
        engine_bench(
            e,
            engine_before,
            &mut engine_ticks,
            &mut engine_forces,
            &mut engine_parts,
            &cpu_ticks,
        )
    });
    drop(eng);
    let ran = gpu.is_some();
    let med = |v: &mut Vec<f64>| (ran && !v.is_empty()).then(|| median(v));
    let (cpu_tick, cpu_forces) = (median(&mut cpu_ticks), median(&mut cpu_force_times));
    let (gpu_tick, gpu_forces) = (med(&mut gpu_ticks), med(&mut samples.forces));
    drop(gpu);
    let cpu_physics = median(&mut cpu_physics_times);
    #[cfg(feature = "gpu")]
    let (resident, resident_refused) = resident_section(o, &start, cpu_physics);
    #[cfg(not(feature = "gpu"))]
    let (resident, resident_refused) = (None, Some("built without the `gpu` feature".into()));
    Ok(GpuBenchSize {
        tokens: n,
        cpu_physics,
        engine,
        engine_refused,
        resident,
        resident_refused,
        avg_neighbors,
        cpu_tick,
        cpu_forces,
        gpu_tick,
        gpu_forces,
        gpu_upload: med(&mut samples.upload),
        gpu_dispatch: med(&mut samples.dispatch),
        gpu_readback: med(&mut samples.readback),
        gpu_uploaded_bytes: med(&mut samples.uploaded_bytes).map(|b| b as u64),
        gpu_readback_bytes: samples.readback_bytes.filter(|_| ran),
        forces_speedup: gpu_forces.map(|g| cpu_forces / g),
        tick_speedup: gpu_tick.map(|g| cpu_tick / g),
        first_tick_force_error: first_error.filter(|_| ran),
        gpu_refused: refused,
    })
}

/// The seconds of the `Forces`, `Integrate` and `Constrain` stages of `sim`'s
/// last tick.
fn physics_stages(sim: &Simulation) -> f64 {
    use crate::schedule::{SimSystems, StageTimes};
    let t = sim.world().resource::<StageTimes>();
    [
        SimSystems::Forces,
        SimSystems::Integrate,
        SimSystems::Constrain,
    ]
    .into_iter()
    .map(|stage| t.last_of(stage))
    .sum()
}

/// Runs the resident tick from `start`: 20 untimed ticks, then `ticks` timed
/// in one call, then up to 12 ticks profiled kernel by kernel (until 3 that
/// searched rows and 3 that did not), then one readback of the state.
#[cfg(feature = "gpu")]
fn resident_bench(
    start: &crate::backend::gpu::resident::ResidentWorld,
    ticks: u64,
    cpu_physics: f64,
) -> Result<ResidentBench, crate::backend::gpu::GpuError> {
    use crate::backend::gpu::resident::GpuResident;
    use crate::backend::gpu::{AdapterPolicy, GpuContext, GpuError};
    let constants = start
        .constants
        .ok_or_else(|| GpuError::BadInput("no constants".into()))?;
    let mut r = GpuResident::new(GpuContext::new(AdapterPolicy::Any)?)?;
    r.load(start.state(), constants)?;
    r.step(20)?;
    let (before, rebuilds, rows) = (r.transfers(), r.stats().rebuilds, r.stats().rows_built);
    let t0 = Instant::now();
    r.step(ticks)?;
    let tick = t0.elapsed().as_secs_f64() / ticks.max(1) as f64;
    let after = r.transfers();
    let rebuilds = r.stats().rebuilds - rebuilds;
    let rows_per_tick = (r.stats().rows_built - rows) as f64 / ticks.max(1) as f64;
    // Profiled ticks, split into those that rebuilt the rows and those that did
    // not: up to 3 of each, at most 12 ticks.
    let mut per_kernel: [Vec<Vec<f64>>; 2] = Default::default();
    let mut profiled = 0;
    let mut timestamps = false;
    while profiled < 12
        && per_kernel
            .iter()
            .any(|k| k.first().is_none_or(|v| v.len() < 3))
    {
        let k = r.profile_tick()?;
        profiled += 1;
        timestamps = k.timestamps;
        let into = &mut per_kernel[k.rebuilt as usize];
        into.resize(k.kernels.len(), Vec::new());
        for (v, (_, secs)) in into.iter_mut().zip(&k.kernels) {
            v.push(*secs);
        }
    }
    let names = crate::backend::gpu::resident::RESIDENT_ENTRY_POINTS;
    let [plain, rebuilding] = per_kernel.map(|mut ks| {
        names
            .iter()
            .zip(ks.iter_mut())
            .map(|(n, v)| (n.to_string(), median(v)))
            .collect::<Vec<_>>()
    });
    let read_before = r.transfers().read_back;
    let t0 = Instant::now();
    r.read_state()?;
    let read_state = t0.elapsed().as_secs_f64();
    let per_tick = |b: u64| b as f64 / ticks.max(1) as f64;
    Ok(ResidentBench {
        tick,
        physics_speedup: cpu_physics / tick,
        kernels: plain,
        kernels_rebuilding: rebuilding,
        timestamps,
        profiled,
        rebuilds,
        rows_per_tick,
        uploaded_per_tick: per_tick(after.uploaded - before.uploaded),
        read_back_per_tick: per_tick(after.read_back - before.read_back),
        state_bytes: r.state_bytes(start.links.ends().len()),
        read_state,
        read_state_bytes: r.transfers().read_back - read_before,
        device_bytes: r.device_bytes(),
        max_candidates: r.stats().max_candidates,
        tested_per_row: r.stats().distances_tested as f64 / r.stats().rows_built.max(1) as f64,
    })
}

/// The largest per-token difference of the two worlds' last forces (see
/// [`max_relative_difference`](crate::physics::max_relative_difference)).
fn force_difference(a: &Simulation, b: &Simulation) -> f64 {
    use crate::systems::ForceBuffers;
    let (fa, fb) = (
        a.world().resource::<ForceBuffers>(),
        b.world().resource::<ForceBuffers>(),
    );
    if fa.ids != fb.ids {
        return f64::NAN;
    }
    crate::physics::max_relative_difference(&fa.forces, &fb.forces) as f64
}

impl GpuBenchReport {
    /// A table.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "GPU vs CPU — scenario {}, {} timed ticks per size, {} CPU threads\nGPU: {}\n",
            self.scenario, self.ticks, self.threads, self.adapter
        );
        let _ = writeln!(
            s,
            "{:>9} {:>6} | {:>10} {:>10} | {:>10} {:>10} {:>9} {:>9} {:>9} | {:>8} {:>8} | {:>8}",
            "tokens",
            "nbrs",
            "CPU tick",
            "CPU force",
            "GPU tick",
            "GPU force",
            "upload",
            "dispatch",
            "readback",
            "force x",
            "tick x",
            "F err"
        );
        let ms = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{:.2} ms", v * 1e3));
        for z in &self.sizes {
            let _ = writeln!(
                s,
                "{:>9} {:>6.1} | {:>10} {:>10} | {:>10} {:>10} {:>9} {:>9} {:>9} | {:>8} {:>8} | {:>8}",
                z.tokens,
                z.avg_neighbors,
                ms(Some(z.cpu_tick)),
                ms(Some(z.cpu_forces)),
                ms(z.gpu_tick),
                ms(z.gpu_forces),
                ms(z.gpu_upload),
                ms(z.gpu_dispatch),
                ms(z.gpu_readback),
                z.forces_speedup.map_or("—".into(), |x| format!("{x:.2}")),
                z.tick_speedup.map_or("—".into(), |x| format!("{x:.2}")),
                z.first_tick_force_error
                    .map_or("—".into(), |x| format!("{x:.1e}")),
            );
            if let Some(r) = &z.gpu_refused {
                let _ = writeln!(s, "{:>9}   GPU: {r}", "");
            }
        }
        let _ = writeln!(
            s,
            "\nThe engine under --backend gpu (the resident tick, with its readback and the stages left on the CPU)\n"
        );
        let _ = writeln!(
            s,
            "{:>9} | {:>10} | {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} | {:>12} {:>12} {:>6}",
            "tokens",
            "CPU tick",
            "GPU tick",
            "Forces",
            "device",
            "readback",
            "host",
            "tick x",
            "ticks/s",
            "up B/tick",
            "back B/tick",
            "loads"
        );
        for z in &self.sizes {
            match &z.engine {
                Some(e) => {
                    let _ = writeln!(
                        s,
                        "{:>9} | {:>10} | {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.2} {:>9.1} | {:>12.0} {:>12.0} {:>6}",
                        z.tokens,
                        ms(Some(z.cpu_tick)),
                        ms(Some(e.tick)),
                        ms(Some(e.forces)),
                        ms(Some(e.device)),
                        ms(Some(e.readback)),
                        ms(Some(e.host)),
                        e.tick_speedup,
                        1.0 / e.tick,
                        e.uploaded_per_tick,
                        e.read_back_per_tick,
                        e.loads
                    );
                }
                None => {
                    let why = z.engine_refused.as_deref().unwrap_or("no GPU");
                    let _ = writeln!(s, "{:>9} | refused: {why}", z.tokens);
                }
            }
        }
        let _ = writeln!(
            s,
            "\nForces: the engine's Forces stage; device: the device's tick in it (dispatch and wait); readback:\nthe 76 bytes a token read back; host: the rest of the tick (gathering and comparing the tokens,\nthe link table, writing back, Learn, Organize and the other CPU stages)."
        );
        self.resident_text(&mut s);
        let _ = writeln!(
            s,
            "\nMedians per tick. \"GPU force\" is the whole Forces stage on the GPU backend (the CPU keeps\nthe neighbour lists); upload/dispatch/readback are its device phases. On a software adapter\n(lavapipe) this shows correctness, not speed."
        );
        s
    }
}

impl GpuBenchReport {
    fn resident_text(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "\nGPU-resident tick (neighbour search, forces, integration, constraints on the device)\n"
        );
        let _ = writeln!(
            s,
            "{:>9} | {:>11} {:>11} {:>8} | {:>9} {:>12} {:>9} | {:>11} {:>10} | {:>8} {:>9} {:>9} {:>9}",
            "tokens",
            "CPU physics",
            "GPU tick",
            "x",
            "ticks/s",
            "bytes/tick",
            "of state",
            "read state",
            "its bytes",
            "searches",
            "rows/tick",
            "longest",
            "tested"
        );
        let ms = |v: f64| format!("{:.2} ms", v * 1e3);
        for z in &self.sizes {
            let Some(r) = &z.resident else {
                let why = z.resident_refused.as_deref().unwrap_or("?");
                let _ = writeln!(s, "{:>9} | refused: {why}", z.tokens);
                continue;
            };
            let moved = r.uploaded_per_tick + r.read_back_per_tick;
            let _ = writeln!(
                s,
                "{:>9} | {:>11} {:>11} {:>8.2} | {:>9.1} {:>12.1} {:>8.4}% | {:>11} {:>10} | {:>8} {:>9.1} {:>9} {:>9.0}",
                z.tokens,
                ms(z.cpu_physics),
                ms(r.tick),
                r.physics_speedup,
                1.0 / r.tick,
                moved,
                100.0 * moved / r.state_bytes.max(1) as f64,
                ms(r.read_state),
                r.read_state_bytes,
                r.rebuilds,
                r.rows_per_tick,
                r.max_candidates,
                r.tested_per_row,
            );
            let kernels = |ks: &[(String, f64)]| {
                if ks.is_empty() {
                    return "none of the profiled ticks".to_string();
                }
                ks.iter()
                    .map(|(k, t)| format!("{k} {}", ms(*t)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let how = if r.timestamps {
                "GPU timestamps"
            } else {
                "wall clock per dispatch"
            };
            let _ = writeln!(
                s,
                "{:>9}   per kernel ({how}), tick searching rows: {}",
                "",
                kernels(&r.kernels_rebuilding)
            );
            let _ = writeln!(
                s,
                "{:>9}   per kernel ({how}), tick not searching: {}",
                "",
                kernels(&r.kernels)
            );
        }
        let _ = writeln!(
            s,
            "\nCPU physics: the Forces, Integrate and Constrain stages of the CPU backend (median). GPU tick:\nthe mean over the timed ticks (one step call: a counter readback per 64 ticks). Per kernel: medians over up to 12 profiled ticks, from\nthe device's timestamps where it has them, else each dispatch waited for alone. bytes/tick: both ways, per timed tick; \"of state\":\nof the positions, velocities, token parameters and link ends. read state: one readback of the\npositions and velocities, what a stage left on the CPU adds to a tick that needs them.\nsearches: timed ticks that searched rows; rows/tick: rows searched per timed tick; longest: the\nlongest row; tested: distances computed per row searched (how well the boxes prune in 8D)."
        );
    }
}

/// What `bench steady` runs.
#[derive(Clone, Debug)]
pub struct SteadyBenchOptions {
    /// Scenario name.
    pub scenario: String,
    /// Tokens (the scenario's default when `None`).
    pub tokens: Option<usize>,
    /// Ticks in all.
    pub ticks: u64,
    /// Ticks per reported window.
    pub window: u64,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Seed of the scenario and the run.
    pub seed: u64,
    /// Force backend.
    pub backend: crate::model::config::Backend,
}

/// One window of ticks of `bench steady`.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyWindow {
    /// First tick of the window (1-based, inclusive).
    pub first_tick: u64,
    /// Last tick of the window (inclusive).
    pub last_tick: u64,
    /// Mean over the window's ticks of ordered pairs within the cutoff per token.
    pub avg_neighbors: f64,
    /// Mean neighbour-list candidates per token at the window's end.
    pub candidates_per_token: f64,
    /// Ticks per second (wall time of the window's ticks).
    pub ticks_per_s: f64,
    /// Mean seconds per tick.
    pub mean_tick_s: f64,
    /// Token-steps per second.
    pub token_steps_per_s: f64,
    /// Ordered pairs within the cutoff per second: each is evaluated twice a
    /// tick (its density weight, then its force).
    pub pairs_per_s: f64,
    /// Full neighbour-list rebuilds in the window.
    pub rebuilds: u64,
    /// Rows refreshed one by one in the window.
    pub refreshed_rows: u64,
    /// Resident set size at the window's end (VmRSS), bytes.
    pub rss_bytes: u64,
    /// Peak resident set size of the process so far (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Links at the window's end.
    pub links: u64,
    /// Heap bytes of the Verlet neighbour lists at the window's end.
    pub neighbor_list_bytes: u64,
}

/// The report of `bench steady`: how the cost of a tick evolves over a long run.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyBenchReport {
    /// Scenario.
    pub scenario: String,
    /// Tokens.
    pub tokens: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Worker threads.
    pub threads: usize,
    /// Backend that ran (`cpu` or `gpu`).
    pub backend: String,
    /// The CDNA's target neighbours within the field radius.
    pub target_neighbors: f64,
    /// The windows, in order.
    pub windows: Vec<SteadyWindow>,
    /// Mean seconds per tick over ticks 51–100 (`None` for shorter runs).
    pub early_tick_s: Option<f64>,
    /// Mean seconds per tick over the last 100 ticks (`None` below 200 ticks).
    pub late_tick_s: Option<f64>,
    /// `late_tick_s / early_tick_s`: 1 means a flat cost.
    pub slowdown: Option<f64>,
    /// Peak RSS after tick 20, bytes.
    pub peak_rss_at_20: Option<u64>,
    /// Peak RSS at the end, bytes.
    pub peak_rss_end: u64,
    /// `peak_rss_end / peak_rss_at_20`.
    pub rss_growth: Option<f64>,
    /// `avg_neighbors` of the last tick.
    pub last_avg_neighbors: f64,
    /// The world's memory by structure at the end ([`crate::memory`]).
    pub memory: crate::memory::MemoryReport,
}

/// This process's resident set size (VmRSS), if the OS tells.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs a scenario for `ticks` ticks and reports, per window of `window` ticks,
/// the neighbours per token, the speed, the pairs per second and the memory;
/// then the late-over-early tick ratio and the memory growth. `progress` gets
/// each window as it is measured. Run it in a process of its own: the peak RSS
/// is the process's.
///
/// # Errors
///
/// An unknown scenario, invalid settings, tokens that the quotas refuse, or a
/// backend that cannot start; or a backend that fails during the run
/// ([`BenchError::Backend`]).
pub fn steady(
    o: &SteadyBenchOptions,
    mut progress: impl FnMut(&SteadyWindow),
) -> Result<SteadyBenchReport, BenchError> {
    let tokens = o
        .tokens
        .unwrap_or(scenario::find(&o.scenario)?.default_tokens);
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: o.threads,
            backend: o.backend,
            ..Default::default()
        },
        quotas: bench_quotas(),
        ..Default::default()
    })?;
    load_world(&mut sim, &o.scenario, tokens, o.seed, None)?;
    let n = sim.token_count().max(1) as f64;
    let window = o.window.max(1);
    let mut times: Vec<f64> = Vec::with_capacity(o.ticks as usize);
    let mut windows = Vec::new();
    let mut peak_rss_at_20 = None;
    let (mut pairs, mut neighbors) = (0u64, 0.0f64);
    let mut last = sim.force_stats();
    let mut first_tick = 1;
    for t in 1..=o.ticks {
        let start = Instant::now();
        sim.step();
        times.push(start.elapsed().as_secs_f64());
        if let Some(e) = sim.backend().error() {
            return Err(BenchError::Backend {
                backend: o.backend.name(),
                reason: e.to_string(),
            });
        }
        let stats = sim.force_stats();
        pairs += stats.pairs;
        neighbors += stats.pairs as f64 / n;
        if t == 20 {
            peak_rss_at_20 = crate::app::runner::peak_rss_bytes();
        }
        if t % window == 0 || t == o.ticks {
            let ticks = t + 1 - first_tick;
            let secs: f64 = times[first_tick as usize - 1..].iter().sum();
            let w = SteadyWindow {
                first_tick,
                last_tick: t,
                avg_neighbors: neighbors / ticks as f64,
                candidates_per_token: stats.candidates as f64 / n,
                ticks_per_s: ticks as f64 / secs,
                mean_tick_s: secs / ticks as f64,
                token_steps_per_s: ticks as f64 * n / secs,
                pairs_per_s: pairs as f64 / secs,
                rebuilds: stats.rebuilds - last.rebuilds,
                refreshed_rows: stats.refreshed_rows - last.refreshed_rows,
                rss_bytes: rss_bytes().unwrap_or(0),
                peak_rss_bytes: crate::app::runner::peak_rss_bytes().unwrap_or(0),
                links: sim.link_count(),
                neighbor_list_bytes: sim
                    .world()
                    .resource::<crate::systems::ForceBuffers>()
                    .neighbors
                    .heap_bytes(),
            };
            progress(&w);
            windows.push(w);
            (pairs, neighbors, last, first_tick) = (0, 0.0, stats, t + 1);
        }
    }
    let mean =
        |r: std::ops::Range<usize>| r.clone().map(|k| times[k]).sum::<f64>() / r.len() as f64;
    let early_tick_s = (times.len() >= 100).then(|| mean(50..100));
    let late_tick_s = (times.len() >= 200).then(|| mean(times.len() - 100..times.len()));
    let peak_rss_end = crate::app::runner::peak_rss_bytes().unwrap_or(0);
    let last_avg_neighbors = sim.force_stats().pairs as f64 / n;
    let memory = sim.memory();
    Ok(SteadyBenchReport {
        memory,
        scenario: o.scenario.clone(),
        tokens: sim.token_count(),
        ticks: o.ticks,
        threads: sim.threads(),
        backend: sim.backend().active().name().into(),
        target_neighbors: sim.cdna().physics.target_neighbors as f64,
        windows,
        slowdown: early_tick_s.zip(late_tick_s).map(|(e, l)| l / e),
        early_tick_s,
        late_tick_s,
        rss_growth: peak_rss_at_20
            .filter(|&r| r > 0)
            .map(|r| peak_rss_end as f64 / r as f64),
        peak_rss_at_20,
        peak_rss_end,
        last_avg_neighbors,
    })
}

impl SteadyWindow {
    /// The header of [`to_row`](Self::to_row).
    pub const HEADER: &str = "   ticks        neighbours  candidates  ticks/s   token-steps/s   pairs/s   rebuilds  refreshed      RSS MiB peak MiB";

    /// One line of the text report.
    pub fn to_row(&self) -> String {
        format!(
            "{:>5}-{:<5} {:>10.1} {:>11.1} {:>8.2} {:>15.0} {:>9.3e} {:>9} {:>10} {:>11.1} {:>8.1}",
            self.first_tick,
            self.last_tick,
            self.avg_neighbors,
            self.candidates_per_token,
            self.ticks_per_s,
            self.token_steps_per_s,
            self.pairs_per_s,
            self.rebuilds,
            self.refreshed_rows,
            self.rss_bytes as f64 / 1048576.0,
            self.peak_rss_bytes as f64 / 1048576.0,
        )
    }
}

impl SteadyBenchReport {
    /// The header of the steady-state table of `docs/performance.md`, whose rows
    /// are [`markdown_row`](Self::markdown_row)'s.
    pub const MARKDOWN_HEADER: &str = "| scenario | tokens | backend | neighbours, last tick | ticks/s, 51–100 | ticks/s, last 100 | late / early tick | peak RSS after tick 20 | peak RSS at the end | growth | B/token at the end |\n|---|---|---|---|---|---|---|---|---|---|---|";

    /// The summary as one row of the steady-state table (`bench steady --markdown`).
    pub fn markdown_row(&self) -> String {
        let mib = |b: f64| format!("{:.0} MiB", b / 1048576.0);
        let per_s = |t: Option<f64>| {
            t.filter(|&t| t > 0.0)
                .map_or("n/a".into(), |t| format!("{:.1}", 1.0 / t))
        };
        let ratio = |r: Option<f64>| r.map_or("n/a".into(), |r| format!("**{r:.2}**"));
        format!(
            "| `{}` | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.0} |",
            self.scenario,
            self.tokens,
            self.backend,
            self.last_avg_neighbors,
            per_s(self.early_tick_s),
            per_s(self.late_tick_s),
            ratio(self.slowdown),
            self.peak_rss_at_20.map_or("n/a".into(), |b| mib(b as f64)),
            mib(self.peak_rss_end as f64),
            ratio(self.rss_growth),
            self.peak_rss_end as f64 / self.tokens.max(1) as f64,
        )
    }

    /// The human-readable summary (the windows are printed as they come).
    pub fn to_text(&self) -> String {
        let opt = |x: Option<f64>, scale: f64, unit: &str| {
            x.map_or("n/a".to_string(), |v| format!("{:.3}{unit}", v * scale))
        };
        format!(
            "{} × {} tokens, {} ticks, {} threads, {} backend; target {} neighbours\n\
             last tick: {:.1} neighbours per token\n\
             mean tick, ticks 51-100: {}; last 100 ticks: {}; slowdown {}\n\
             peak RSS after tick 20: {}; at the end: {:.1} MiB; growth {}",
            self.scenario,
            self.tokens,
            self.ticks,
            self.threads,
            self.backend,
            self.target_neighbors,
            self.last_avg_neighbors,
            opt(self.early_tick_s, 1e3, " ms"),
            opt(self.late_tick_s, 1e3, " ms"),
            opt(self.slowdown, 1.0, "×"),
            opt(
                self.peak_rss_at_20.map(|b| b as f64),
                1.0 / 1048576.0,
                " MiB"
            ),
            self.peak_rss_end as f64 / 1048576.0,
            opt(self.rss_growth, 1.0, "×"),
        ) + "\n"
            + &self.memory.to_text()
    }
}

/// The quotas of every benchmark world: the defaults with no memory budget.
/// A benchmark measures the engine at the size it is asked for (and reports
/// the bytes it measured); the budget is for runs and hosts. Journaled
/// benchmarks write these quotas to their manifest too, so that a replay
/// decides `Learn`'s quota checks as the run did.
fn bench_quotas() -> Quotas {
    Quotas {
        memory_budget_bytes: u64::MAX,
        ..Default::default()
    }
}

/// What `bench spawn` measures.
#[derive(Clone, Debug)]
pub struct SpawnBenchOptions {
    /// Tokens per batch.
    pub tokens: usize,
    /// Batches of each kind, alternated.
    pub repeats: usize,
    /// Scenario whose tokens are spawned.
    pub scenario: String,
}

/// Batch spawn into the engine next to bevy's own `World::spawn_batch`, in
/// one run.
#[derive(Clone, Debug, Serialize)]
pub struct SpawnBenchReport {
    /// Tokens per batch.
    pub tokens: usize,
    /// Batches of each kind.
    pub repeats: usize,
    /// Tokens per second of `World::spawn_batch` of the engine's bundles
    /// (every token component) into a bare `World`, per batch.
    pub bevy_tokens_per_s: Vec<f64>,
    /// Tokens per second of `Simulation::spawn_batch` (every component, plus
    /// the CDNA's validation of every value, the quotas, ids and the id
    /// table), per batch.
    pub engine_tokens_per_s: Vec<f64>,
    /// Median of `bevy_tokens_per_s`.
    pub bevy_median: f64,
    /// Median of `engine_tokens_per_s`.
    pub engine_median: f64,
    /// `engine_median / bevy_median`.
    pub ratio: f64,
}

/// Spawns `o.tokens` tokens of a scenario `o.repeats` times into a fresh
/// [`Simulation`] and as many times into a bare bevy `World` (the same
/// bundles through `World::spawn_batch`), alternately, and reports both rates.
/// The specs are generated once, untimed; both timings include turning specs
/// into bundles. Each batch goes into a fresh world, created untimed.
///
/// # Errors
/// An unknown scenario, or tokens the quotas or the engine refuse
/// ([`BenchError::Command`]).
pub fn spawn(o: &SpawnBenchOptions) -> Result<SpawnBenchReport, BenchError> {
    use crate::model::components::TokenId;
    let params = ScenarioParams {
        tokens: o.tokens,
        seed: 7,
    };
    let scenario = scenario::find(&o.scenario)?;

    // Refuse an impossible size before generating anything.
    bench_quotas()
        .check(0, 0, o.tokens as u64, 0)
        .map_err(CommandError::Quota)?;
    let specs = scenario.generate(&params).tokens;
    let (mut bevy, mut engine) = (Vec::new(), Vec::new());
    for _ in 0..o.repeats.max(1) {
        let mut world = bevy_ecs::world::World::new();
        let start = std::time::Instant::now();
        let n = world
            .spawn_batch(
                specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.bundle(TokenId(i as u64))),
            )
            .count();
        bevy.push(n as f64 / start.elapsed().as_secs_f64());
        drop(world);

        let mut sim = Simulation::new(SimSettings {
            quotas: bench_quotas(),
            ..Default::default()
        })?;
        let batch = specs.clone();
        // Recorded, the applied command is kept rather than dropped (freeing
        // a whole batch of specs) inside the timed region; the bevy side
        // only borrows the specs.
        sim.world_mut()
            .resource_mut::<crate::model::commands::CommandLog>()
            .record = true;
        let start = std::time::Instant::now();
        sim.spawn_batch(batch)?;
        engine.push(o.tokens as f64 / start.elapsed().as_secs_f64());
    }
    let (bevy_median, engine_median) = (median(&mut bevy.clone()), median(&mut engine.clone()));
    Ok(SpawnBenchReport {
        tokens: o.tokens,
        repeats: bevy.len(),
        bevy_tokens_per_s: bevy,
        engine_tokens_per_s: engine,
        bevy_median,
        engine_median,
        ratio: engine_median / bevy_median,
    })
}

impl SpawnBenchReport {
    /// The report as text.
    pub fn to_text(&self) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{:.1}M", r / 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "batch spawn of {} tokens, {} batches each, alternated\n\
             bevy World::spawn_batch (bare World): median {:.1}M tokens/s ({})\n\
             Simulation::spawn_batch:              median {:.1}M tokens/s ({})\n\
             engine / bevy: {:.2}",
            self.tokens,
            self.repeats,
            self.bevy_median / 1e6,
            list(&self.bevy_tokens_per_s),
            self.engine_median / 1e6,
            list(&self.engine_tokens_per_s),
            self.ratio
        )
    }
}
