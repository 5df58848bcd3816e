//! Side-by-side benchmarks behind `neurograph bench …`.
//!
//! `bench wal` builds one simulation per journaling variant (no WAL, `off`,
//! `batched`, `sync`) from the same scenario and steps them in turn, tick by
//! tick, rotating who goes first, so that every variant sees the same states and
//! the same machine noise. Then it recovers the `batched` WAL from its first
//! snapshot to time the replay.

use crate::config::SimConfig;
use crate::digest::state_digest;
use crate::scenario::{self, ScenarioParams};
use crate::sim::{SimSettings, Simulation};
use crate::wal::{self, Durability, Manifest, RecoverOptions, WalOptions};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// The state `ticks` ticks into a scenario (on the CPU, `threads` workers), from
/// which the benches start so that they time a settled world rather than its
/// first ticks; `None` for 0 ticks (start from the scenario itself).
///
/// # Errors
///
/// An unknown scenario or invalid settings.
pub fn warm_up(
    scenario: &str,
    tokens: usize,
    seed: u64,
    threads: usize,
    ticks: u64,
) -> Result<Option<wal::WorldSnapshot>, String> {
    if ticks == 0 {
        return Ok(None);
    }
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads,
            ..Default::default()
        },
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    load_world(&mut sim, scenario, tokens, seed, None)?;
    sim.run(ticks);
    Ok(Some(wal::capture(sim.world_mut(), None)))
}

/// Fills a fresh `sim` with the scenario's tokens (and seeds its RNG), or with
/// the warmed-up state `warm`.
fn load_world(
    sim: &mut Simulation,
    scenario: &str,
    tokens: usize,
    seed: u64,
    warm: Option<&wal::WorldSnapshot>,
) -> Result<(), String> {
    match warm {
        Some(snap) => wal::restore(sim.world_mut(), snap),
        None => {
            sim.world_mut()
                .insert_resource(crate::registry::SimRng::seeded(seed));
            scenario::find(scenario)?
                .spawn_into(
                    sim,
                    &ScenarioParams { tokens, seed },
                    crate::runner::SPAWN_BATCH,
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// Runs `bench wal` with WAL directories under `scratch`.
pub fn wal_overhead(o: &WalBenchOptions, scratch: &Path) -> Result<WalBenchReport, String> {
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
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        load_world(&mut sim, &o.scenario, o.tokens, 42, warm.as_ref())?;
        if i > 0 {
            let durability: Durability = name.parse()?;
            let manifest = Manifest {
                format_version: wal::FORMAT_VERSION,
                sim: config.clone(),
                quotas: Default::default(),
                run: [("bench".to_string(), name.to_string())].into(),
            };
            let opts = WalOptions {
                durability,
                snapshot_every: o.snapshot_every,
                keep_snapshots: 1000,
                ..Default::default()
            };
            wal::create(&scratch.join(name), &manifest, &mut sim, &opts)
                .map_err(|e| e.to_string())?;
        }
        sims.push(sim);
    }
    let mut times = vec![Vec::new(); names.len()];
    for t in 0..o.ticks {
        for k in 0..names.len() {
            let v = (k + t as usize) % names.len();
            let start = Instant::now();
            sims[v].step();
            times[v].push(start.elapsed().as_secs_f64());
        }
    }
    let mut stats = Vec::new();
    for sim in &mut sims {
        stats.push(wal::close(sim).map_err(|e| e.to_string())?);
    }
    // Steady state: the first tick (which builds every neighbour row) is left out.
    let steady = |v: &[f64]| v.get(1..).unwrap_or(&[]).to_vec();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = mean(&steady(&times[0]));
    let mut variants = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mean = mean(&steady(&times[i]));
        variants.push(VariantTimes {
            variant: name.to_string(),
            mean_tick_s: mean,
            median_tick_s: median(&mut steady(&times[i])),
            overhead: if base > 0.0 { mean / base - 1.0 } else { 0.0 },
            paired_overhead: median(
                &mut steady(&times[i])
                    .iter()
                    .zip(steady(&times[0]))
                    .map(|(t, b)| t / b - 1.0)
                    .collect::<Vec<_>>(),
            ),
            wal_bytes: stats[i].bytes,
            wal_fsyncs: stats[i].fsyncs,
            digest: sims[i].digest().to_string(),
        });
    }
    if variants.iter().any(|v| v.digest != variants[0].digest) {
        return Err("the variants disagree on the final digest".into());
    }
    let mut digest_times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            state_digest(sims[0].world_mut());
            start.elapsed().as_secs_f64()
        })
        .collect();
    let mut capture_times: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            wal::capture(sims[0].world_mut(), None);
            start.elapsed().as_secs_f64()
        })
        .collect();
    // Like the replay, this counts the cold first tick.
    let run_ticks_per_s = times[2].len() as f64 / times[2].iter().sum::<f64>();
    drop(sims);
    // Replay everything after the first snapshot of the batched WAL.
    let dir = scratch.join("batched");
    let (_, snaps) = wal::writer::list_dir(&dir).map_err(|e| e.to_string())?;
    for s in snaps.iter().skip(1) {
        std::fs::remove_file(&s.path).map_err(|e| e.to_string())?;
    }
    let rec = wal::recover(
        &dir,
        &RecoverOptions {
            threads: o.threads,
            exclusive: false,
        },
    )
    .map_err(|e| e.to_string())?;
    if rec.report.digest != variants[0].digest {
        return Err("the replay does not reach the run's digest".into());
    }
    Ok(WalBenchReport {
        tokens: o.tokens as u64,
        ticks: o.ticks,
        threads: rec.sim.threads(),
        variants,
        digest_s: median(&mut digest_times),
        capture_s: median(&mut capture_times),
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
/// [`StageTimes`]: crate::plugin::StageTimes
pub fn hierarchy(opts: &HierarchyBenchOptions) -> Result<HierarchyBenchReport, String> {
    use crate::plugin::{SimSystems, StageTimes};
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: opts.threads,
            ..Default::default()
        },
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
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
    use crate::observe::sampler::TICK_TARGET;
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

/// Runs `bench observe`: one world per variant, stepped in turn tick by tick
/// (rotating who goes first), with puffin switched on only while the puffin
/// variants step, and tracing and metrics scoped to their worlds
/// (`tracing::dispatcher::with_default`, `metrics::with_local_recorder`).
/// WAL directories and trace files go under `scratch`.
pub fn observe_overhead(
    o: &ObserveBenchOptions,
    scratch: &Path,
) -> Result<ObserveBenchReport, String> {
    use crate::observe::{ObserveSettings, sampler};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let warm = warm_up(&o.scenario, o.tokens, 42, o.threads, o.warmup)?;
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let config = SimConfig {
        threads: o.threads,
        ..Default::default()
    };
    // Frames go somewhere real, as with `run --puffin` (no viewer connected).
    let _puffin = crate::observe::puffin_stream::PuffinServer::start("127.0.0.1:0")
        .map_err(|e| e.to_string())?;
    struct World {
        sim: Simulation,
        dispatch: Option<tracing::Dispatch>,
        sampler: Option<sampler::SamplerHandle>,
        recorder: Option<metrics_exporter_prometheus::PrometheusRecorder>,
        times: Vec<f64>,
    }
    let mut worlds = Vec::new();
    for v in &OBSERVE_VARIANTS {
        let mut sim = Simulation::new(SimSettings {
            config: config.clone(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        sim.world_mut().insert_resource(ObserveSettings {
            metrics: v.metrics,
            black_box: v.black_box,
            ..Default::default()
        });
        load_world(&mut sim, &o.scenario, o.tokens, 42, warm.as_ref())?;
        if v.wal {
            let manifest = Manifest {
                format_version: wal::FORMAT_VERSION,
                sim: config.clone(),
                quotas: Default::default(),
                run: [("bench".to_string(), v.name.to_string())].into(),
            };
            wal::create(
                &scratch.join(v.name),
                &manifest,
                &mut sim,
                &WalOptions::default(),
            )
            .map_err(|e| e.to_string())?;
        }
        let (dispatch, sampler) = match v.trace_rate {
            Some(rate) => {
                let path = scratch.join(format!("{}.trace.jsonl", v.name));
                let file =
                    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (layer, handle) =
                    sampler::sampling_layer(Box::new(std::io::BufWriter::new(file)), rate, None);
                let layer = layer.with_filter(sampler::default_filter());
                let sub = tracing_subscriber::registry().with(layer);
                (Some(tracing::Dispatch::new(sub)), Some(handle))
            }
            None => (None, None),
        };
        let recorder = v.metrics.then(crate::observe::metrics::prometheus_recorder);
        worlds.push(World {
            sim,
            dispatch,
            sampler,
            recorder,
            times: Vec::new(),
        });
    }
    let n = worlds.len();
    for t in 0..o.ticks {
        for k in 0..n {
            let i = (k + t as usize) % n;
            let w = &mut worlds[i];
            puffin::set_scopes_on(OBSERVE_VARIANTS[i].puffin);
            let sim = &mut w.sim;
            let recorder = w.recorder.as_ref();
            let start = Instant::now();
            let mut step = move || match recorder {
                Some(r) => metrics::with_local_recorder(r, || sim.step()),
                None => sim.step(),
            };
            match &w.dispatch {
                Some(d) => tracing::dispatcher::with_default(d, step),
                None => step(),
            }
            w.times.push(start.elapsed().as_secs_f64());
            puffin::set_scopes_on(false);
            if let Some(r) = &w.recorder
                && t % 50 == 49
            {
                r.handle().run_upkeep();
            }
        }
    }
    for w in &mut worlds {
        wal::close(&mut w.sim).map_err(|e| e.to_string())?;
    }
    let digest = worlds[0].sim.digest().to_string();
    for (w, v) in worlds.iter_mut().zip(&OBSERVE_VARIANTS) {
        let d = w.sim.digest().to_string();
        if d != digest {
            return Err(format!(
                "variant {} ends at digest {d}, the bare run at {digest}: observing changed the state",
                v.name
            ));
        }
    }
    let steady = |v: &[f64]| v.get(1..).unwrap_or(&[]).to_vec();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut variants = Vec::new();
    for (w, v) in worlds.iter().zip(&OBSERVE_VARIANTS) {
        let b = OBSERVE_VARIANTS
            .iter()
            .position(|x| x.name == v.baseline)
            .expect("the baseline is a variant");
        let mine = steady(&w.times);
        let base = steady(&worlds[b].times);
        let stats = w.sampler.as_ref().map(|h| {
            h.flush();
            h.stats()
        });
        variants.push(ObserveVariant {
            variant: v.name.to_string(),
            what: v.what.to_string(),
            baseline: v.baseline.to_string(),
            mean_tick_s: mean(&mine),
            median_tick_s: median(&mut mine.clone()),
            overhead: mean(&mine) / mean(&base).max(f64::MIN_POSITIVE) - 1.0,
            paired_overhead: median(
                &mut mine
                    .iter()
                    .zip(&base)
                    .map(|(t, b)| t / b - 1.0)
                    .collect::<Vec<_>>(),
            ),
            trace_lines: stats.map_or(0, |s| s.lines),
            trace_ticks_kept: stats.map_or(0, |s| s.kept()),
            observe_stage_us: {
                let st = w.sim.world().resource::<crate::plugin::StageTimes>();
                st.total_of(crate::plugin::SimSystems::Observe) / st.ticks.max(1) as f64 * 1e6
            },
        });
    }
    let cost = |i: usize| {
        let d = worlds[i].dispatch.clone();
        span_cost(d.as_ref())
    };
    let i1 = OBSERVE_VARIANTS
        .iter()
        .position(|v| v.name == "trace_1pct")
        .expect("a variant");
    let i100 = OBSERVE_VARIANTS
        .iter()
        .position(|v| v.name == "trace_100pct")
        .expect("a variant");
    let span_cost_us = SpanCost {
        off: cost(0),
        trace_1pct: cost(i1),
        trace_100pct: cost(i100),
    };
    Ok(ObserveBenchReport {
        tokens: o.tokens as u64,
        ticks: o.ticks,
        threads: worlds[0].sim.threads(),
        variants,
        digest,
        span_cost_us,
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
pub fn gpu_vs_cpu(o: &GpuBenchOptions) -> Result<GpuBenchReport, String> {
    use crate::config::Backend;
    use crate::plugin::{SimSystems, StageTimes};
    scenario::find(&o.scenario)?;
    let make = |backend: Backend,
                n: usize,
                warm: Option<&wal::WorldSnapshot>|
     -> Result<Simulation, String> {
        let mut sim = Simulation::new(SimSettings {
            config: SimConfig {
                threads: o.threads,
                backend,
                ..Default::default()
            },
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        load_world(&mut sim, &o.scenario, n, 42, warm)?;
        Ok(sim)
    };
    let mut adapter = String::from("none");
    let mut sizes = Vec::new();
    for &n in &o.sizes {
        let warm = warm_up(&o.scenario, n, 42, o.threads, o.warmup)?;
        let mut cpu = make(Backend::Cpu, n, warm.as_ref())?;
        let mut gpu = match make(Backend::Gpu, n, warm.as_ref()) {
            Ok(g) => {
                adapter = g.backend().adapter().unwrap_or_else(|| "?".into());
                Some(g)
            }
            Err(e) => {
                adapter = e.clone();
                None
            }
        };
        let forces_of = |sim: &Simulation| {
            sim.world()
                .resource::<StageTimes>()
                .last_of(SimSystems::Forces)
        };
        // The first tick on the same state: compare, untimed.
        cpu.step();
        let mut refused = None;
        let mut first_error = None;
        if let Some(g) = gpu.as_mut() {
            g.step();
            if let Some(e) = g.backend().error() {
                refused = Some(e.to_string());
            } else {
                first_error = Some(force_difference(&cpu, g));
            }
        }
        if refused.is_some() {
            gpu = None;
        }
        if gpu.is_none() && refused.is_none() {
            refused = Some(adapter.clone());
        }
        let avg_neighbors = cpu.last_pair_count() as f64 / n.max(1) as f64;
        let (mut ct, mut cf) = (Vec::new(), Vec::new());
        let (mut gt, mut gf, mut gu, mut gd, mut gr, mut gb) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut readback_bytes = None;
        for t in 0..o.ticks {
            let mut cpu_turn = |cpu: &mut Simulation| {
                let s = Instant::now();
                cpu.step();
                ct.push(s.elapsed().as_secs_f64());
                cf.push(forces_of(cpu));
            };
            let mut gpu_turn = |g: &mut Simulation| -> Option<String> {
                let s = Instant::now();
                g.step();
                gt.push(s.elapsed().as_secs_f64());
                gf.push(forces_of(g));
                if let Some(e) = g.backend().error() {
                    return Some(e.to_string());
                }
                let (last, _, _) = g.backend().gpu_timings()?;
                gu.push(last.upload);
                gd.push(last.dispatch);
                gr.push(last.readback);
                gb.push(last.uploaded_bytes as f64);
                readback_bytes = Some(last.readback_bytes);
                None
            };
            // Take turns going first.
            let failed = match gpu.as_mut() {
                Some(g) if t % 2 == 0 => {
                    cpu_turn(&mut cpu);
                    gpu_turn(g)
                }
                Some(g) => {
                    let f = gpu_turn(g);
                    cpu_turn(&mut cpu);
                    f
                }
                None => {
                    cpu_turn(&mut cpu);
                    None
                }
            };
            if let Some(e) = failed {
                refused = Some(e);
                gpu = None;
            }
        }
        let ran = gpu.is_some();
        let med = |v: &mut Vec<f64>| (ran && !v.is_empty()).then(|| median(v));
        let (cpu_tick, cpu_forces) = (median(&mut ct), median(&mut cf));
        let (gpu_tick, gpu_forces) = (med(&mut gt), med(&mut gf));
        sizes.push(GpuBenchSize {
            tokens: n,
            avg_neighbors,
            cpu_tick,
            cpu_forces,
            gpu_tick,
            gpu_forces,
            gpu_upload: med(&mut gu),
            gpu_dispatch: med(&mut gd),
            gpu_readback: med(&mut gr),
            gpu_uploaded_bytes: med(&mut gb).map(|b| b as u64),
            gpu_readback_bytes: readback_bytes.filter(|_| ran),
            forces_speedup: gpu_forces.map(|g| cpu_forces / g),
            tick_speedup: gpu_tick.map(|g| cpu_tick / g),
            first_tick_force_error: first_error.filter(|_| ran),
            gpu_refused: refused,
        });
    }
    Ok(GpuBenchReport {
        scenario: o.scenario.clone(),
        ticks: o.ticks,
        threads: crate::config::SimConfig {
            threads: o.threads,
            ..Default::default()
        }
        .resolved_threads(),
        adapter,
        sizes,
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
            "\nMedians per tick. \"GPU force\" is the whole Forces stage on the GPU backend (the CPU keeps\nthe neighbour lists); upload/dispatch/readback are its device phases. On a software adapter\n(lavapipe) this shows correctness, not speed."
        );
        s
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
    pub backend: crate::config::Backend,
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
/// An unknown scenario, invalid settings, or a backend that cannot start.
pub fn steady(
    o: &SteadyBenchOptions,
    mut progress: impl FnMut(&SteadyWindow),
) -> Result<SteadyBenchReport, String> {
    let tokens = o
        .tokens
        .unwrap_or(scenario::find(&o.scenario)?.default_tokens);
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: o.threads,
            backend: o.backend,
            ..Default::default()
        },
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
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
            return Err(format!("the {} backend failed: {e}", o.backend.name()));
        }
        let stats = sim.force_stats();
        pairs += stats.pairs;
        neighbors += stats.pairs as f64 / n;
        if t == 20 {
            peak_rss_at_20 = crate::runner::peak_rss_bytes();
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
                peak_rss_bytes: crate::runner::peak_rss_bytes().unwrap_or(0),
                links: sim.link_count(),
                neighbor_list_bytes: sim
                    .world()
                    .resource::<crate::systems::ForceBuffers>()
                    .neighbors
                    .heap_bytes() as u64,
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
    let peak_rss_end = crate::runner::peak_rss_bytes().unwrap_or(0);
    let last_avg_neighbors = sim.force_stats().pairs as f64 / n;
    Ok(SteadyBenchReport {
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
    pub const HEADER: &str = "   ticks        neighbours  candidates  ticks/s   token-steps/s   pairs/s   rebuilds  refreshed      RSS MB  peak MB";

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
    /// The human-readable summary (the windows are printed as they come).
    pub fn to_text(&self) -> String {
        let opt = |x: Option<f64>, scale: f64, unit: &str| {
            x.map_or("n/a".to_string(), |v| format!("{:.3}{unit}", v * scale))
        };
        format!(
            "{} × {} tokens, {} ticks, {} threads, {} backend; target {} neighbours\n\
             last tick: {:.1} neighbours per token\n\
             mean tick, ticks 51-100: {}; last 100 ticks: {}; slowdown {}\n\
             peak RSS after tick 20: {}; at the end: {:.1} MB; growth {}",
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
                " MB"
            ),
            self.peak_rss_end as f64 / 1048576.0,
            opt(self.rss_growth, 1.0, "×"),
        )
    }
}
