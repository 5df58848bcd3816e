//! The headless runner behind `neurograph run`: config file + flags → a simulation
//! → ticks with progress → a [`RunSummary`].

use crate::backend::ForceBackend;
use crate::geometry::hierarchy::{self, GroupEvents};
use crate::input::{InputError, load_csv};
use crate::model::cdna::{Cdna, CdnaError, Profile, ViolationKind};
use crate::model::commands::CommandError;
use crate::model::config::{Backend, Quotas, SimConfig};
use crate::model::registry::TokenRegistry;
use crate::observe::{
    BlackBox, EventKind, Live, LiveStatus, ObserveSettings, SamplerStats, TraceControl,
};
use crate::scenario::GroundTruth;
use crate::scenario::{self, Generated, ScenarioParams, spawn_stream};
use crate::sim::{SimError, SimSettings, Simulation};
use crate::wal::{self, Journal, Manifest, RecoverOptions, RecoveryReport, WalError, WalOptions};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The run configuration file (TOML). Every field is optional; flags override it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Scenario name.
    pub scenario: Option<String>,
    /// Token count.
    pub tokens: Option<usize>,
    /// Ticks to run: the tick the run ends at (a resumed run continues up to it).
    pub ticks: Option<u64>,
    /// RNG seed.
    pub seed: Option<u64>,
    /// CSV input instead of a scenario.
    pub input: Option<PathBuf>,
    /// CDNA file.
    pub cdna: Option<PathBuf>,
    /// CDNA profile (when no file).
    pub profile: Option<String>,
    /// Simulation settings.
    pub sim: SimConfig,
    /// Quotas.
    pub quotas: Quotas,
    /// Write-ahead log settings (used with `--wal`).
    pub wal: WalOptions,
}

impl RunConfig {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// [`RunError::Config`] when the file cannot be read or is not a valid run config
    /// (bad TOML, an unknown key, or a value of the wrong type), naming the file.
    pub fn load(path: &Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            RunError::Config(format!(
                "{}: {}",
                path.display(),
                crate::model::config::toml_error(&text, &e)
            ))
        })
    }
}

/// Default ticks of `neurograph run`.
pub const DEFAULT_TICKS: u64 = 300;
/// Default seed.
pub const DEFAULT_SEED: u64 = 42;
/// Tokens per spawn batch when loading a scenario.
pub const SPAWN_BATCH: usize = 65_536;

/// What to run: the merged config and flags.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The config file's content (or defaults).
    pub config: RunConfig,
    /// Show a progress bar (drawn only on a terminal).
    pub progress: bool,
    /// Journal to a WAL in this directory; resume it if it holds one.
    pub wal_dir: Option<PathBuf>,
    /// Print `durable TICK` on stdout whenever the durable tick advances (for
    /// crash tests and supervisors). When that write fails (the reader went
    /// away), the run stops after the current tick as on an interrupt.
    pub report_durable: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current tick; the WAL is closed
    /// cleanly and the summary says `interrupted`.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Where the black box is dumped (on panic, on a fatal error, on a dump
    /// request, and at the end of the run). Without it, dumps caused by a panic,
    /// an error or a request go to [`default_blackbox_path`].
    pub blackbox: Option<PathBuf>,
    /// Set (e.g. by SIGUSR1) to dump the black box after the current tick.
    pub dump_request: Option<Arc<AtomicBool>>,
    /// Recoveries from the WAL allowed after panics before the run gives up
    /// ([`RunError::Panicked`]); without a WAL the first panic ends the run.
    pub panic_retries: u32,
    /// What the `Observe` stage does.
    pub observe: ObserveSettings,
    /// The trace sampler to feed, if tracing is on.
    pub trace: Option<TraceControl>,
    /// Live figures for `/health`.
    pub live: Option<Arc<LiveStatus>>,
    /// Test-only (feature `fault-injection`): make this tick panic once.
    #[cfg(feature = "fault-injection")]
    pub fault: Option<crate::observe::FaultHook>,
    /// The force backend asked for by the command (`--backend`). A run that
    /// resumes a WAL goes on with it, or, when `None`, with the backend the WAL
    /// started with (its manifest). New runs use `config.sim.backend`.
    pub backend: Option<Backend>,
    /// What a GPU backend runs, as asked for by the command (`--gpu-tick`). A
    /// run that resumes a WAL goes on with it; when `None`, with
    /// `config.sim.gpu_tick` if the command names a backend, else with the
    /// manifest's. New runs use `config.sim.gpu_tick`.
    pub gpu_tick: Option<crate::model::config::GpuTick>,
    /// Tokens to start from instead of the config's scenario or input.
    pub given: Option<GivenTokens>,
}

/// Recoveries allowed by default ([`RunOptions::panic_retries`]).
pub const DEFAULT_PANIC_RETRIES: u32 = 3;

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            config: RunConfig::default(),
            progress: false,
            wal_dir: None,
            report_durable: false,
            interrupt: None,
            blackbox: None,
            dump_request: None,
            panic_retries: DEFAULT_PANIC_RETRIES,
            observe: ObserveSettings::default(),
            trace: None,
            live: None,
            #[cfg(feature = "fault-injection")]
            fault: None,
            backend: None,
            gpu_tick: None,
            given: None,
        }
    }
}

/// Where a black box goes when no path was given: the temporary directory,
/// named by process id.
pub fn default_blackbox_path() -> PathBuf {
    std::env::temp_dir().join(format!("neurograph-blackbox-{}.jsonl", std::process::id()))
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad config file or flag.
    #[error("config: {0}")]
    Config(String),
    /// A bad CDNA.
    #[error(transparent)]
    Cdna(#[from] CdnaError),
    /// A bad input file.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A refused command while loading tokens.
    #[error("loading tokens: {0}")]
    Command(#[from] CommandError),
    /// The simulation could not be built.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The write-ahead log failed.
    #[error("WAL: {0}")]
    Wal(#[from] WalError),
    /// A file or directory the run would write cannot be written.
    #[error(transparent)]
    Output(#[from] crate::app::paths::OutputPathError),
    /// The GPU backend, required with `--backend gpu`, failed during the run.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A tick panicked and the run could not (or may no longer) recover.
    #[error(
        "tick {tick} panicked: {message}; {outcome}{}",
        match dump {
            Some(p) => format!("; black box written to {}", p.display()),
            None => "; the black box could not be written".to_string(),
        }
    )]
    Panicked {
        /// The tick that panicked.
        tick: u64,
        /// The panic message.
        message: String,
        /// Recoveries done before this panic.
        recovered: u32,
        /// Why the run stopped there: no WAL, retries spent, or a failed recovery.
        outcome: String,
        /// Where the black box was dumped.
        dump: Option<PathBuf>,
    },
}

/// Where the GPU force passes of a run spent their time.
#[derive(Clone, Debug, Serialize)]
pub struct GpuRunStats {
    /// Passes run.
    pub passes: u64,
    /// Seconds uploading, in all.
    pub upload_seconds: f64,
    /// Seconds dispatching, in all.
    pub dispatch_seconds: f64,
    /// Seconds reading back, in all.
    pub readback_seconds: f64,
    /// Bytes uploaded, in all.
    pub uploaded_bytes: u64,
    /// Bytes read back, in all.
    pub readback_bytes: u64,
}

/// The summary of a run; `--json` prints it as one object.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Scenario name, or `input` for a CSV file.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Live tokens at the end.
    pub tokens: u64,
    /// Links at the end.
    pub links: u64,
    /// Ticks run by this process.
    pub ticks: u64,
    /// The tick the run started from (0, or where a resumed WAL left off).
    pub start_tick: u64,
    /// The tick the run ended at.
    pub final_tick: u64,
    /// Whether the run was stopped early (Ctrl-C); rerun with the same `--wal` to
    /// resume.
    pub interrupted: bool,
    /// Wall seconds of the tick loop.
    pub seconds: f64,
    /// Ticks per wall second.
    pub ticks_per_s: f64,
    /// Wall seconds of the first tick, which builds every neighbour row.
    pub first_tick_seconds: f64,
    /// Ticks per wall second after the first.
    pub steady_ticks_per_s: f64,
    /// Tokens × ticks per wall second.
    pub token_steps_per_s: f64,
    /// Final state digest (16 hex digits).
    pub digest: String,
    /// CDNA violations corrected, all kinds.
    pub cdna_violations: u64,
    /// CDNA violations by kind.
    pub cdna_violations_by_kind: BTreeMap<String, u64>,
    /// Worker threads.
    pub threads: usize,
    /// Mean neighbours within cutoff per token, last tick.
    pub avg_neighbors: f64,
    /// Neighbour-list rebuilds.
    pub neighbor_rebuilds: u64,
    /// Token-steps whose speed was capped.
    pub speed_limited: u64,
    /// Seconds spent creating the tokens.
    pub spawn_seconds: f64,
    /// Peak resident memory of the process, bytes (Linux; 0 elsewhere).
    pub peak_rss_bytes: u64,
    /// Peak RSS divided by tokens.
    pub bytes_per_token: f64,
    /// CDNA profile.
    pub cdna_profile: String,
    /// CDNA checksum.
    pub cdna_checksum: String,
    /// Tokens that carry ground-truth labels (planted by the scenario or given in
    /// the input's `label`/`group` columns), for the hierarchy quality figures.
    pub labelled_tokens: u64,
    /// Adjusted Rand index of the level-1 groups against the planted fine labels
    /// (`null` without labels).
    pub ari_level1: Option<f64>,
    /// Adjusted Rand index of the level-2 groups against the planted coarse labels.
    pub ari_level2: Option<f64>,
    /// Groups at each level, from level 1, after the last detection.
    pub groups_per_level: Vec<u64>,
    /// Links formed by learning since the start of the run.
    pub links_formed: u64,
    /// Links pruned by learning since the start of the run.
    pub links_pruned: u64,
    /// Group identity events since the start of the run.
    pub group_events: GroupEvents,
    /// The tick of the last group detection.
    pub last_organized: Option<u64>,
    /// The force backend asked for: `cpu`, `gpu` or `auto`.
    pub backend_requested: String,
    /// The force backend that computed the last tick: `cpu` or `gpu`.
    pub backend: String,
    /// The GPU adapter, when the GPU computed forces.
    pub gpu_adapter: Option<String>,
    /// Why `auto` ran on the CPU.
    pub backend_fallback: Option<String>,
    /// GPU phase totals over the run, when the GPU computed forces.
    pub gpu: Option<GpuRunStats>,
    /// What the GPU runs at the end of the run, when it computes: `resident`
    /// (the whole physics tick) or `assisted` (forces only: asked for, or the
    /// resident tick was refused).
    pub gpu_tick: Option<String>,
    /// Why the resident tick gave way to the assisted one, if it did.
    pub gpu_resident_refused: Option<String>,
    /// The resident tick's totals, when it ran: ticks, whole-state uploads
    /// (the first, and one after each tick whose commands edited tokens),
    /// bytes written and read back (76 a token a tick: positions,
    /// velocities, densities, link proposals; and the counters).
    pub gpu_resident: Option<crate::backend::ResidentTotals>,
    /// The WAL's durability policy, when journaling.
    pub wal_durability: Option<String>,
    /// Bytes written to the WAL (records, headers, snapshots).
    pub wal_bytes: u64,
    /// fsync calls on the WAL (files and directory).
    pub wal_fsyncs: u64,
    /// Tick records written.
    pub wal_records: u64,
    /// Snapshots written.
    pub wal_snapshots: u64,
    /// The recovery that a resumed run started with.
    pub recovery: Option<RecoveryReport>,
    /// Ticks that panicked during the run.
    pub panics: u64,
    /// Recoveries from the WAL after a panic.
    pub recoveries: u64,
    /// Events recorded in the black box since the start (the box keeps the last
    /// 1,000).
    pub blackbox_events: u64,
    /// Black-box dumps written, in order; a path repeats when a later dump
    /// replaced an earlier one (each dump rewrites the whole file).
    pub blackbox_dumps: Vec<PathBuf>,
    /// Why the end-of-run black box dump asked for (`--blackbox`) could not be
    /// written, if it could not.
    pub blackbox_failed: Option<String>,
    /// The trace sampler's counters, when tracing was on.
    pub trace: Option<SamplerStats>,
    /// The world's memory by structure at the end of the run, measured
    /// ([`crate::memory`]); `peak_rss_bytes` is what the process held.
    pub memory: crate::memory::MemoryReport,
}

/// Peak resident set size of this process (VmHWM), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the CDNA a config asks for.
///
/// # Errors
/// [`RunError::Config`] when the config names both a CDNA file and a profile;
/// [`RunError::Cdna`] when the file cannot be read, parsed or validated, the profile is
/// unknown, or the profile's position bounds are too far out.
pub fn load_cdna(config: &RunConfig) -> Result<Cdna, RunError> {
    match (&config.cdna, &config.profile) {
        (Some(path), Some(name)) => Err(RunError::Config(format!(
            "give either cdna ({}) or profile ({name}), not both",
            path.display()
        ))),
        (Some(path), None) => Ok(Cdna::load(path)?),
        (None, Some(name)) => {
            let cdna = Cdna::profile(name.parse::<Profile>()?);
            cdna.check_reach()?;
            Ok(cdna)
        }
        (None, None) => Ok(Cdna::default()),
    }
}

/// Tokens a caller hands to a run instead of a scenario or an input file
/// (the Python bindings' `Simulation.from_embeddings`), with their labels.
#[derive(Clone, Debug)]
pub struct GivenTokens {
    /// What the summary calls the source (its `scenario` key).
    pub name: String,
    /// The tokens, in spawn order (ids from 0 up).
    pub tokens: Arc<Vec<Generated>>,
}

impl GivenTokens {
    /// A content hash of the tokens and labels (the WAL's run identity).
    fn hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for g in self.tokens.iter() {
            let s = &g.spec;
            for x in s
                .position
                .to_array()
                .into_iter()
                .chain(s.velocity.to_array())
            {
                h.update(&x.to_bits().to_le_bytes());
            }
            for x in [s.charge, s.mass, s.radius, s.strength] {
                h.update(&x.to_bits().to_le_bytes());
            }
            h.update(&[s.kind as u8]);
            for l in [g.label, g.group] {
                h.update(&l.map_or(u64::MAX, u64::from).to_le_bytes());
            }
        }
        h.digest()
    }
}

/// Where the tokens of a run come from.
enum Source {
    Input(PathBuf),
    Scenario(&'static scenario::Scenario, usize),
    Given(GivenTokens),
}

impl Source {
    fn of(c: &RunConfig, given: Option<&GivenTokens>) -> Result<Self, RunError> {
        if let Some(g) = given {
            if c.input.is_some() || c.scenario.is_some() || c.tokens.is_some() {
                return Err(RunError::Config(format!(
                    "the run is given its {} tokens; it takes no input, scenario or tokens setting",
                    g.tokens.len()
                )));
            }
            if g.tokens.is_empty() {
                return Err(RunError::Config("no tokens given".into()));
            }
            c.quotas
                .check(0, 0, g.tokens.len() as u64, 0)
                .map_err(CommandError::Quota)?;
            return Ok(Self::Given(g.clone()));
        }
        if let Some(path) = &c.input {
            if c.scenario.is_some() {
                return Err(RunError::Config(
                    "give either --input or --scenario, not both".into(),
                ));
            }
            if let Some(n) = c.tokens {
                return Err(RunError::Config(format!(
                    "give either input ({}) or tokens ({n}), not both: an input's rows are its tokens",
                    path.display()
                )));
            }
            return Ok(Self::Input(path.clone()));
        }
        let s = match &c.scenario {
            Some(name) => scenario::find(name).map_err(|e| RunError::Config(e.to_string()))?,
            None => scenario::default_scenario(),
        };
        let tokens = c.tokens.unwrap_or(s.default_tokens);
        if tokens == 0 {
            return Err(RunError::Config("--tokens must be at least 1".into()));
        }
        // Refuse an impossible size before generating anything.
        c.quotas
            .check(0, 0, tokens as u64, 0)
            .map_err(CommandError::Quota)?;
        Ok(Self::Scenario(s, tokens))
    }

    fn name(&self) -> String {
        match self {
            Self::Input(_) => "input".into(),
            Self::Given(g) => g.name.clone(),
            Self::Scenario(s, _) => s.name.into(),
        }
    }

    /// The values a WAL records so that only the same job resumes it.
    fn identity(
        &self,
        c: &RunConfig,
        cdna: &Cdna,
        seed: u64,
    ) -> Result<BTreeMap<String, String>, RunError> {
        let mut id = BTreeMap::new();
        match self {
            Self::Input(path) => {
                let hash = crate::input::content_hash(path)?;
                id.insert("input".into(), path.display().to_string());
                id.insert("input_xxh3".into(), format!("{hash:016x}"));
            }
            Self::Scenario(s, tokens) => {
                id.insert("scenario".into(), s.name.into());
                id.insert("tokens".into(), tokens.to_string());
            }
            Self::Given(g) => {
                id.insert("given".into(), g.name.clone());
                id.insert("tokens".into(), g.tokens.len().to_string());
                id.insert("given_xxh3".into(), format!("{:016x}", g.hash()));
            }
        }
        id.insert("seed".into(), seed.to_string());
        id.insert("cdna".into(), cdna.checksum_hex());
        id.insert("sim.dt".into(), c.sim.dt.to_string());
        id.insert("sim.neighbor_skin".into(), c.sim.neighbor_skin.to_string());
        let quotas =
            serde_json::to_string(&c.quotas).map_err(|e| RunError::Config(e.to_string()))?;
        id.insert("quotas".into(), quotas);
        Ok(id)
    }

    /// Spawns the tokens into `sim`; returns the ground truth.
    fn spawn(&self, sim: &mut Simulation, cdna: &Cdna, seed: u64) -> Result<GroundTruth, RunError> {
        Ok(match self {
            Self::Given(g) => spawn_stream(sim, g.tokens.iter().copied(), SPAWN_BATCH)?,
            Self::Input(path) => {
                let data = load_csv(path, cdna)?;
                scenario::check_quotas(sim, data.tokens.len())?;
                let truth = data.truth.unwrap_or_default();
                let stream = data
                    .tokens
                    .into_iter()
                    .enumerate()
                    .map(|(i, spec)| Generated {
                        spec,
                        label: truth.labels.get(i).copied(),
                        group: truth.groups.get(i).copied(),
                    });
                spawn_stream(sim, stream, SPAWN_BATCH)?
            }
            Self::Scenario(s, tokens) => s.spawn_into(
                sim,
                &ScenarioParams {
                    tokens: *tokens,
                    seed,
                },
                SPAWN_BATCH,
            )?,
        })
    }

    /// The ground truth without spawning (for a resumed run).
    fn truth(&self, cdna: &Cdna, seed: u64) -> Result<GroundTruth, RunError> {
        Ok(match self {
            Self::Input(path) => load_csv(path, cdna)?.truth.unwrap_or_default(),
            Self::Given(g) => {
                let mut truth = GroundTruth::default();
                g.tokens.iter().for_each(|t| truth.record(t));
                truth
            }
            Self::Scenario(s, tokens) => s.truth(&ScenarioParams {
                tokens: *tokens,
                seed,
            }),
        })
    }
}

/// Runs a whole simulation.
///
/// # Errors
/// [`RunError::Config`] for bad settings or flags, or a WAL of another run; [`RunError::Cdna`],
/// [`RunError::Input`], [`RunError::Command`], [`RunError::Sim`] or [`RunError::Output`] when
/// the CDNA, input, tokens, simulation or output paths are refused; [`RunError::Wal`],
/// [`RunError::Gpu`] or [`RunError::Panicked`] when the WAL, the required GPU or a tick fails.
pub fn run(opts: &RunOptions) -> Result<RunSummary, RunError> {
    run_keep(opts).map(|(summary, _)| summary)
}

/// The force backend a run resuming the WAL in `dir` goes on with: the one the
/// command asks for, else the one the WAL started with. Opened before recovery,
/// so that a GPU that cannot start stops the run before the WAL is touched.
fn continuing_backend(opts: &RunOptions, dir: &Path) -> Result<ForceBackend, RunError> {
    // Each from the command when it names it (a named backend brings its
    // config's GPU tick), else from the manifest.
    let (asked, tick) = match opts.backend {
        Some(b) => (b, opts.gpu_tick.unwrap_or(opts.config.sim.gpu_tick)),
        None => {
            let sim = Manifest::load(dir)?.sim;
            (sim.backend, opts.gpu_tick.unwrap_or(sim.gpu_tick))
        }
    };
    let mut b = ForceBackend::resolve(asked);
    b.set_gpu_tick(tick);
    match b.error() {
        Some(e) => Err(RunError::Sim(SimError::Gpu(format!(
            "{e} (resuming {} on the {} backend{})",
            dir.display(),
            asked.name(),
            if opts.backend.is_some() {
                ""
            } else {
                " its manifest names; --backend cpu resumes it on the CPU"
            }
        )))),
        None => Ok(b),
    }
}

/// Recovers the WAL in `dir` and resumes journaling on it, with the backend
/// [`continuing_backend`] picks (opened before the WAL is touched). With
/// `identity`, a WAL of another run is refused before anything is changed.
fn reopen_wal(
    opts: &RunOptions,
    dir: &Path,
    identity: Option<&BTreeMap<String, String>>,
) -> Result<(Simulation, RecoveryReport), RunError> {
    let c = &opts.config;
    let backend = continuing_backend(opts, dir)?;
    let rec = wal::recover::<Simulation>(
        dir,
        &RecoverOptions {
            threads: c.sim.threads,
            exclusive: true,
        },
    )?;
    if let Some(identity) = identity {
        let diffs = rec.manifest.differences(identity);
        if !diffs.is_empty() {
            return Err(RunError::Config(format!(
                "{} holds the WAL of another run; not resuming it (use another --wal directory): {}",
                dir.display(),
                diffs.join("; ")
            )));
        }
    }
    let report = rec.report.clone();
    let mut sim = wal::resume(rec, &c.wal)?;
    // Replay may have left another backend, and a spare, in the world.
    let world = sim.world_mut();
    world.remove_resource::<crate::backend::SpareBackend>();
    world.insert_resource(backend);
    Ok((sim, report))
}

/// [`run`], and hand back the finished simulation (its WAL closed) to look at.
///
/// # Errors
/// As [`run`]: bad settings or input, an unwritable output, a WAL that cannot
/// be created, recovered or written, a lost GPU, or a tick that panicked
/// without a recovery ([`RunError::Panicked`]).
pub fn run_keep(opts: &RunOptions) -> Result<(RunSummary, Simulation), RunError> {
    let ticks = opts.config.ticks.unwrap_or(DEFAULT_TICKS);
    let mut session = Session::open(opts.clone())?;
    session.run.bar = progress_bar(opts, ticks.saturating_sub(session.run.start_tick));
    while session.tick() < ticks {
        if session.run.reader_gone
            || opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            session.run.interrupted = true;
            break;
        }
        session.step()?;
    }
    if let Some(bar) = session.run.bar.take() {
        bar.finish_and_clear();
    }
    session.close()
}

/// A run driven one tick at a time by its caller: what [`run_keep`] does, with
/// the loop outside (the Python bindings step it). It owns the simulation, the
/// run's WAL (when `opts.wal_dir` is set: created, or resumed when the
/// directory holds a WAL of the same run) and what the summary needs (the
/// ground truth for the ARI, the recovery report, the loop's counters).
pub struct Session {
    opts: RunOptions,
    sim: Simulation,
    run: Progress,
    scenario: String,
    seed: u64,
    spawn_seconds: f64,
    ground_truth: GroundTruth,
    recovery: Option<RecoveryReport>,
    durability: Option<String>,
}

impl Session {
    /// Validates the settings, checks every output path, then builds the world:
    /// recovered from `opts.wal_dir` when it holds a WAL of the same run, else
    /// spawned from the scenario or input (and journaled from the start when
    /// the run has a WAL directory). `opts.config.ticks`, `progress` and
    /// `interrupt` are for [`run_keep`]'s loop and are not used here.
    ///
    /// # Errors
    /// As [`run`], for everything before the first tick.
    pub fn open(opts: RunOptions) -> Result<Self, RunError> {
        let c = &opts.config;
        // Bad settings are named as such, before a WAL could blame its snapshots or
        // call the run another one.
        c.sim
            .validate()
            .map_err(|e| RunError::Config(e.to_string()))?;
        let cdna = load_cdna(c)?;
        let seed = c.seed.unwrap_or(DEFAULT_SEED);
        let source = Source::of(c, opts.given.as_ref())?;
        // Before any work: every file and directory the run will write.
        if let Some(path) = &opts.blackbox {
            crate::app::paths::check_output_file(path, &[])?;
        }
        if let Some(dir) = &opts.wal_dir {
            crate::app::paths::check_output_dir(dir)?;
        }
        let spawn_start = Instant::now();
        let (mut sim, ground_truth, recovery) = open_world(&opts, &source, &cdna, seed)?;
        let spawn_seconds = spawn_start.elapsed().as_secs_f64();
        let start_tick = sim.tick();
        let durability = sim
            .world()
            .get_resource::<Journal>()
            .map(|j| j.durability().name().to_string());
        equip(&mut sim, &opts, BlackBox::default());
        ::metrics::counter!(crate::observe::metrics::PANICS_TOTAL).increment(0);
        ::metrics::counter!(crate::observe::metrics::RECOVERIES_TOTAL).increment(0);
        Ok(Self {
            run: Progress::new(None, start_tick),
            scenario: source.name(),
            seed,
            spawn_seconds,
            ground_truth,
            recovery,
            durability,
            sim,
            opts,
        })
    }

    /// Runs one tick. A tick that panics is recovered from the WAL when the
    /// run has one and retries are left (as `neurograph run` does): the world
    /// is then the recovered one.
    ///
    /// # Errors
    /// [`RunError::Panicked`] when a tick panicked and could not be recovered,
    /// [`RunError::Gpu`] when a required GPU was lost, [`RunError::Wal`] when
    /// the WAL writer failed. After an error the run is over: [`close`](Self::close)
    /// it (or drop it); the world may be half-way through a tick.
    pub fn step(&mut self) -> Result<(), RunError> {
        let t0 = Instant::now();
        let before = self.sim.tick();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sim.step()));
        if let Err(payload) = stepped {
            // The panicked world is given up either way; a bare one holds its
            // place until the recovered one (if any) replaces it.
            let sim = std::mem::replace(&mut self.sim, Simulation::with_defaults());
            self.sim = self
                .run
                .recover_from_panic(&self.opts, sim, before + 1, &*payload)?;
            self.run.busy += t0.elapsed();
            return Ok(());
        }
        if self.run.ticks == 0 {
            self.run.first_tick_seconds = (self.run.busy + t0.elapsed()).as_secs_f64();
        }
        self.run.ticks += 1;
        let after = self.run.after_tick(&self.opts, &mut self.sim);
        self.run.busy += t0.elapsed();
        after
    }

    /// Marks the run as stopped early by its caller (the summary's
    /// `interrupted`), as Ctrl-C does in `neurograph run`.
    pub fn mark_interrupted(&mut self) {
        self.run.interrupted = true;
    }

    /// Ticks completed (those recovered from a WAL included).
    pub fn tick(&self) -> u64 {
        self.sim.tick()
    }

    /// The simulation.
    pub fn sim(&self) -> &Simulation {
        &self.sim
    }

    /// The simulation, mutable: commands go through it
    /// ([`Simulation::apply`]), and are journaled with the next tick.
    pub fn sim_mut(&mut self) -> &mut Simulation {
        &mut self.sim
    }

    /// The summary so far, as `neurograph run --json` prints it at the end
    /// (with the WAL counters as of now; `seconds` counts time spent in
    /// [`step`](Self::step) only).
    pub fn summary(&mut self) -> RunSummary {
        let wal_stats = self
            .sim
            .world()
            .get_resource::<Journal>()
            .map(Journal::stats)
            .unwrap_or_default();
        summarize(self, wal_stats, None)
    }

    /// Ends the run: closes the WAL (a final snapshot, everything durable),
    /// writes the black box asked for, and returns the summary and the world.
    ///
    /// # Errors
    /// [`RunError::Wal`] when the WAL cannot be closed.
    pub fn close(mut self) -> Result<(RunSummary, Simulation), RunError> {
        let opts = &self.opts;
        let wal_stats = match wal::close(&mut self.sim) {
            Ok(s) => s,
            Err(e) => {
                let err = RunError::Wal(e);
                fatal_dump(&mut self.sim, opts, &err);
                return Err(err);
            }
        };
        let mut blackbox_failed = None;
        if opts.blackbox.is_some() {
            let bb = self.sim.world().resource::<BlackBox>();
            match try_dump_blackbox(bb, opts.blackbox.as_deref(), "end") {
                Ok(p) => self.run.dumps.push(p),
                Err(e) => blackbox_failed = Some(e),
            }
        }
        if opts.report_durable && self.durability.is_some() && !self.run.reader_gone {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "durable {}", self.sim.tick()).and_then(|()| out.flush());
        }
        let summary = summarize(&mut self, wal_stats, blackbox_failed);
        Ok((summary, self.sim))
    }
}

/// Builds the run's world: recovered from its WAL when the directory holds
/// one, else spawned from the scenario or input (and journaled from the start
/// when the run has a WAL directory). Returns the world, the ground truth and
/// the recovery report, if any.
fn open_world(
    opts: &RunOptions,
    source: &Source,
    cdna: &Cdna,
    seed: u64,
) -> Result<(Simulation, GroundTruth, Option<RecoveryReport>), RunError> {
    let c = &opts.config;
    let wal_valid = || {
        c.wal
            .validate()
            .map_err(|e| RunError::Config(e.to_string()))
    };
    if let Some(dir) = &opts.wal_dir
        && wal::exists(dir)
    {
        wal_valid()?;
        let identity = source.identity(c, cdna, seed)?;
        let (sim, report) = reopen_wal(opts, dir, Some(&identity))?;
        return Ok((sim, source.truth(cdna, seed)?, Some(report)));
    }
    let mut sim = Simulation::new(SimSettings {
        config: c.sim.clone(),
        cdna: cdna.clone(),
        quotas: c.quotas.clone(),
    })?;
    sim.world_mut()
        .insert_resource(crate::model::registry::SimRng::seeded(seed));
    if opts.wal_dir.is_some() {
        wal_valid()?;
    }
    let truth = source.spawn(&mut sim, cdna, seed)?;
    if let Some(dir) = &opts.wal_dir {
        // The backend the run starts on (`auto` resolved): a resumed run
        // goes on with it unless its command asks for another.
        let manifest = Manifest {
            format_version: wal::FORMAT_VERSION,
            sim: SimConfig {
                backend: sim.backend().active(),
                ..c.sim.clone()
            },
            quotas: c.quotas.clone(),
            run: source.identity(c, cdna, seed)?,
        };
        wal::create(dir, &manifest, &mut sim, &c.wal)?;
    }
    Ok((sim, truth, None))
}

/// The progress bar of `--progress` (on stderr), for `len` ticks.
fn progress_bar(opts: &RunOptions, len: u64) -> Option<indicatif::ProgressBar> {
    if !opts.progress {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} tick {pos}/{len} [{bar:30}] {per_sec} eta {eta} {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    Some(bar)
}

/// A run's loop state.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Time spent in ticks (and the checks after each).
    busy: std::time::Duration,
    start_tick: u64,
    /// Ticks run by this process (recovered ones are not run again).
    ticks: u64,
    first_tick_seconds: f64,
    /// The last durable tick reported on stdout.
    reported: u64,
    interrupted: bool,
    /// The reader of the durable-tick reports went away.
    reader_gone: bool,
    panics: u64,
    recoveries: u32,
    dumps: Vec<PathBuf>,
}

impl Progress {
    /// The state as the loop starts, at `start_tick`.
    fn new(bar: Option<indicatif::ProgressBar>, start_tick: u64) -> Self {
        Self {
            bar,
            busy: std::time::Duration::ZERO,
            start_tick,
            ticks: 0,
            first_tick_seconds: 0.0,
            reported: start_tick,
            interrupted: false,
            reader_gone: false,
            panics: 0,
            recoveries: 0,
            dumps: Vec::new(),
        }
    }

    /// After a tick panicked: records it, dumps the black box, and rebuilds
    /// the world from the WAL when the run has one and retries are left.
    ///
    /// # Errors
    /// [`RunError::Panicked`] when no recovery is tried or it fails.
    fn recover_from_panic(
        &mut self,
        opts: &RunOptions,
        mut sim: Simulation,
        tick: u64,
        payload: &(dyn std::any::Any + Send),
    ) -> Result<Simulation, RunError> {
        // The world is half-way through a tick (and has lost its schedule):
        // record, dump, and rebuild from the WAL or give up.
        let message = crate::schedule::panic_message(payload);
        self.panics += 1;
        ::metrics::counter!(crate::observe::metrics::PANICS_TOTAL).increment(1);
        let mut bb = sim
            .world_mut()
            .remove_resource::<BlackBox>()
            .unwrap_or_default();
        bb.record(
            tick,
            EventKind::Panic,
            format!("tick {tick} panicked: {message}"),
        );
        let lost = sim.command_log().applied.len();
        if lost > 0 {
            bb.record(
                tick,
                EventKind::Panic,
                format!("{lost} commands applied in the panicked tick are dropped"),
            );
        }
        let can_recover = opts.wal_dir.is_some() && self.recoveries < opts.panic_retries;
        if can_recover {
            bb.record(
                tick,
                EventKind::Wal,
                "abandoning the WAL writer of the panicked world",
            );
            if let Err(e) = wal::abandon(&mut sim) {
                bb.record(tick, EventKind::Error, format!("closing the WAL: {e}"));
            }
        }
        let dump = dump_blackbox(&bb, opts.blackbox.as_deref(), "panic");
        self.dumps.extend(dump.clone());
        // Ends the run: the health check says why, the bar stays as it was.
        let recovered_so_far = self.recoveries;
        let give_up = |outcome: String, dump: Option<PathBuf>| {
            if let Some(live) = &opts.live {
                live.fail(format!("tick {tick} panicked: {message}; {outcome}"));
            }
            if let Some(bar) = &self.bar {
                bar.abandon();
            }
            RunError::Panicked {
                tick,
                message: message.clone(),
                recovered: recovered_so_far,
                outcome,
                dump,
            }
        };
        if !can_recover {
            let outcome = if opts.wal_dir.is_none() {
                "no recovery was tried: the run has no WAL".to_string()
            } else {
                format!(
                    "no recovery was tried: {recovered_so_far} of {} allowed recoveries were used",
                    opts.panic_retries
                )
            };
            return Err(give_up(outcome, dump));
        }
        let dir = opts.wal_dir.as_deref().expect("recovery needs a WAL");
        drop(sim);
        // Replaying can hit the same bug (a panic after the Journal stage
        // was journaled): that, or a recovery error, ends the run here.
        let recovered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reopen_wal(opts, dir, None)));
        let (mut sim, r) = match recovered {
            Ok(Ok(ok)) => ok,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => format!("recovery from the WAL failed: {e}"),
                    Err(p) => format!(
                        "recovery from the WAL panicked while replaying: {}",
                        crate::schedule::panic_message(&*p)
                    ),
                    Ok(Ok(_)) => unreachable!(),
                };
                bb.record(tick, EventKind::Error, why.clone());
                let dump = dump_blackbox(&bb, opts.blackbox.as_deref(), "failed recovery");
                return Err(give_up(why, dump));
            }
        };
        self.recoveries += 1;
        ::metrics::counter!(crate::observe::metrics::RECOVERIES_TOTAL).increment(1);
        let text = format!(
            "recovered tick {} from the WAL (snapshot tick {}, {} records replayed, digest {}); retry {} of {}",
            r.tick,
            r.snapshot_tick,
            r.records_replayed,
            r.digest,
            self.recoveries,
            opts.panic_retries
        );
        tracing::warn!(tick, "{text}");
        bb.record(r.tick, EventKind::Recovery, text);
        equip(&mut sim, opts, bb);
        if let Some(bar) = &self.bar {
            bar.set_position(sim.tick().saturating_sub(self.start_tick));
        }
        Ok(sim)
    }

    /// After a tick that ran: stops the run on a lost GPU or a failed WAL
    /// writer, reports the durable tick, serves a dump request, moves the bar.
    ///
    /// # Errors
    /// [`RunError::Gpu`] or [`RunError::Wal`]; the black box is dumped first.
    fn after_tick(&mut self, opts: &RunOptions, sim: &mut Simulation) -> Result<(), RunError> {
        if let Some(e) = sim.backend().error().map(str::to_string) {
            // Required and lost: stop. The tick was computed on the CPU and
            // journaled as a CPU tick; the WAL is closed with a final snapshot.
            let closed = match wal::close(sim) {
                Ok(_) if opts.wal_dir.is_some() => {
                    "; the WAL is closed with a snapshot of this tick"
                }
                Ok(_) => "",
                Err(e) => &*format!("; closing the WAL: {e}"),
            };
            let err = RunError::Gpu(format!(
                "at tick {}: {e}; that tick's forces were computed on the CPU{closed}",
                sim.tick()
            ));
            return Err(fail(sim, opts, err));
        }
        if let Some(j) = sim.world().get_resource::<Journal>() {
            if let Some(f) = j.failure() {
                let err = RunError::Wal(WalError::WriterFailed(format!(
                    "at tick {}: {f}",
                    sim.tick()
                )));
                return Err(fail(sim, opts, err));
            }
            if opts.report_durable {
                self.report_durable(j.stats().durable_tick);
            }
        }
        if opts
            .dump_request
            .as_ref()
            .is_some_and(|f| f.swap(false, Ordering::Relaxed))
        {
            let bb = sim.world().resource::<BlackBox>();
            self.dumps
                .extend(dump_blackbox(bb, opts.blackbox.as_deref(), "request"));
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if self.ticks % 16 == 1 {
                bar.set_message(format!("{} tokens", sim.token_count()));
            }
        }
        Ok(())
    }

    /// Prints `durable N` when the durable tick advanced. Whoever reads the
    /// reports may be gone (or stdout full): then the run stops cleanly after
    /// this tick, as on Ctrl-C; quietly when the reader just went away.
    fn report_durable(&mut self, durable: u64) {
        if durable <= self.reported {
            return;
        }
        self.reported = durable;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "durable {durable}").and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                tracing::info!("stdout closed; stopping after this tick");
            } else {
                tracing::warn!(error = %e, "cannot report the durable tick; stopping");
            }
            self.reader_gone = true;
        }
    }
}

/// Marks the run failing (for `/health`), dumps the black box; returns `err`.
fn fail(sim: &mut Simulation, opts: &RunOptions, err: RunError) -> RunError {
    if let Some(live) = &opts.live {
        live.fail(err.to_string());
    }
    fatal_dump(sim, opts, &err);
    err
}

/// The run summary, from the session's world, loop and the rest.
fn summarize(
    session: &mut Session,
    wal_stats: wal::WalStats,
    blackbox_failed: Option<String>,
) -> RunSummary {
    let Session {
        opts,
        sim,
        run,
        ground_truth,
        recovery,
        durability,
        ..
    } = session;
    let (seed, spawn_seconds, seconds) =
        (session.seed, session.spawn_seconds, run.busy.as_secs_f64());
    let Progress {
        ticks: ticks_run,
        start_tick,
        first_tick_seconds,
        interrupted,
        panics,
        recoveries,
        ref dumps,
        ..
    } = *run;
    let tokens = sim.token_count();
    let violations = sim.violations().clone();
    let peak = peak_rss_bytes().unwrap_or(0);
    let hier = sim.hierarchy().clone();
    let quality = {
        let registry = sim.world().resource::<TokenRegistry>();
        hierarchy::quality(&hier, &ground_truth.labels, &ground_truth.groups, |id| {
            registry.contains(id)
        })
    };
    let learn = sim.learn_stats();
    let per_s = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
    RunSummary {
        scenario: session.scenario.clone(),
        seed,
        tokens,
        links: sim.link_count(),
        ticks: ticks_run,
        start_tick,
        final_tick: sim.tick(),
        interrupted,
        seconds,
        ticks_per_s: per_s(ticks_run as f64),
        first_tick_seconds,
        steady_ticks_per_s: if ticks_run > 1 && seconds > first_tick_seconds {
            (ticks_run - 1) as f64 / (seconds - first_tick_seconds)
        } else {
            0.0
        },
        token_steps_per_s: per_s(ticks_run as f64 * tokens as f64),
        digest: sim.digest().to_string(),
        cdna_violations: violations.sum(),
        cdna_violations_by_kind: ViolationKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), violations.get(*k)))
            .collect(),
        threads: sim.threads(),
        avg_neighbors: if tokens > 0 && ticks_run > 0 {
            sim.last_pair_count() as f64 / tokens as f64
        } else {
            0.0
        },
        neighbor_rebuilds: sim.force_stats().rebuilds,
        speed_limited: sim.integrate_stats().speed_limited,
        spawn_seconds,
        peak_rss_bytes: peak,
        bytes_per_token: if tokens > 0 {
            peak as f64 / tokens as f64
        } else {
            0.0
        },
        cdna_profile: sim.cdna().profile.name().to_string(),
        cdna_checksum: sim.cdna().checksum_hex(),
        labelled_tokens: ground_truth.labels.len() as u64,
        ari_level1: quality.ari_level1,
        ari_level2: quality.ari_level2,
        groups_per_level: hier.groups_per_level(),
        links_formed: learn.links_formed,
        links_pruned: learn.links_pruned,
        group_events: hier.events,
        last_organized: hier.last_organized,
        backend_requested: sim.backend().requested().name().to_string(),
        backend: sim.backend().active().name().to_string(),
        gpu_adapter: sim.backend().adapter(),
        backend_fallback: sim.backend().fallback().map(str::to_string),
        gpu: gpu_run_stats(sim.backend()),
        gpu_tick: sim.backend().active_tick().map(|t| t.name().to_string()),
        gpu_resident_refused: sim.backend().resident_refused().map(str::to_string),
        gpu_resident: sim.backend().resident_totals().filter(|t| t.ticks > 0),
        wal_durability: durability.clone(),
        wal_bytes: wal_stats.bytes,
        wal_fsyncs: wal_stats.fsyncs,
        wal_records: wal_stats.records,
        wal_snapshots: wal_stats.snapshots,
        recovery: recovery.clone(),
        panics,
        recoveries: recoveries as u64,
        blackbox_events: sim.world().resource::<BlackBox>().recorded(),
        blackbox_dumps: dumps.clone(),
        blackbox_failed,
        trace: opts.trace.as_ref().map(|t| {
            t.sampler.flush();
            t.sampler.stats()
        }),
        memory: sim.memory(),
    }
}

/// Puts the run's observability resources into a (new or recovered) simulation.
fn equip(sim: &mut Simulation, opts: &RunOptions, bb: BlackBox) {
    let world = sim.world_mut();
    world.insert_resource(opts.observe.clone());
    world.insert_resource(bb);
    if let Some(t) = &opts.trace {
        world.insert_resource(t.clone());
    }
    if let Some(l) = &opts.live {
        l.clear();
        world.insert_resource(Live(l.clone()));
    }
    #[cfg(feature = "fault-injection")]
    if let Some(f) = &opts.fault {
        world.insert_resource(f.clone());
    }
}

/// Dumps the black box to `path` (or the default path); says where on stderr,
/// or why not.
fn dump_blackbox(bb: &BlackBox, path: Option<&Path>, why: &str) -> Option<PathBuf> {
    match try_dump_blackbox(bb, path, why) {
        Ok(p) => Some(p),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            None
        }
    }
}

/// Dumps the black box to `path` (or the default path); says where on stderr.
fn try_dump_blackbox(bb: &BlackBox, path: Option<&Path>, why: &str) -> Result<PathBuf, String> {
    let path = path.map_or_else(default_blackbox_path, Path::to_path_buf);
    match bb.dump(&path) {
        Ok(n) => {
            let _ = writeln!(
                std::io::stderr(),
                "black box ({why}): {n} events written to {}",
                path.display()
            );
            Ok(path)
        }
        Err(e) => Err(format!(
            "cannot write the black box ({why}) to {}: {e}",
            path.display()
        )),
    }
}

/// Records a fatal error in the black box and dumps it.
fn fatal_dump(sim: &mut Simulation, opts: &RunOptions, err: &RunError) {
    let tick = sim.tick();
    if let Some(mut bb) = sim.world_mut().get_resource_mut::<BlackBox>() {
        bb.record(tick, EventKind::Error, err.to_string());
    }
    if let Some(bb) = sim.world().get_resource::<BlackBox>() {
        dump_blackbox(bb, opts.blackbox.as_deref(), "fatal error");
    }
}

impl RunSummary {
    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_run(&mut s);
        self.write_world(&mut s);
        use std::fmt::Write;
        let _ = write!(s, "  digest           {:>14}", self.digest);
        s
    }

    /// The run's lines: what ran, how long, on what.
    fn write_run(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "NeuroGraph run — scenario {} (seed {})",
            self.scenario, self.seed
        );
        let _ = writeln!(s, "  tokens           {:>14}", self.tokens);
        let _ = writeln!(s, "  links            {:>14}", self.links);
        let _ = writeln!(
            s,
            "  ticks            {:>14}  (tick {} → {}{})",
            self.ticks,
            self.start_tick,
            self.final_tick,
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  wall time        {:>14.3} s  (spawn {:.3} s)",
            self.seconds, self.spawn_seconds
        );
        let _ = writeln!(
            s,
            "  ticks/s          {:>14.1}  (after the first: {:.1}; first tick {:.3} s)",
            self.ticks_per_s, self.steady_ticks_per_s, self.first_tick_seconds
        );
        let _ = writeln!(s, "  token-steps/s    {:>14.0}", self.token_steps_per_s);
        let _ = writeln!(s, "  threads          {:>14}", self.threads);
        let _ = writeln!(
            s,
            "  backend          {:>14}  (asked: {}{})",
            self.backend,
            self.backend_requested,
            match (&self.gpu_adapter, &self.backend_fallback) {
                (Some(a), _) => format!("; {a}"),
                (None, Some(f)) => format!("; {f}"),
                _ => String::new(),
            }
        );
        if let Some(g) = self.gpu.as_ref().filter(|g| g.passes > 0) {
            let _ = writeln!(
                s,
                "  GPU phases       {:>14}  upload {:.3} s, dispatch {:.3} s, readback {:.3} s",
                format!("{} passes", g.passes),
                g.upload_seconds,
                g.dispatch_seconds,
                g.readback_seconds
            );
        }
        if let Some(r) = &self.gpu_resident {
            let per = |b: u64| b as f64 / r.ticks.max(1) as f64;
            let _ = writeln!(
                s,
                "  GPU resident     {:>14}  state uploads {}; per tick {:.0} B up, {:.0} B back",
                format!("{} ticks", r.ticks),
                r.loads,
                per(r.uploaded_bytes),
                per(r.readback_bytes)
            );
        }
        if let Some(why) = &self.gpu_resident_refused {
            let _ = writeln!(s, "  GPU tick         {:>14}  ({why})", "assisted");
        }
    }

    /// The world's lines: neighbours, CDNA, memory, links, groups, WAL, panics.
    fn write_world(&self, s: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(s, "  avg neighbours   {:>14.2}", self.avg_neighbors);
        let _ = writeln!(
            s,
            "  list rebuilds    {:>14}{}",
            self.neighbor_rebuilds,
            if self.gpu_resident.is_some() {
                "  (the CPU's lists; the resident tick keeps its rows on the device)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "  CDNA violations  {:>14}  ({} profile)",
            self.cdna_violations, self.cdna_profile
        );
        for (k, v) in self.cdna_violations_by_kind.iter().filter(|(_, v)| **v > 0) {
            let _ = writeln!(s, "    {k:<16}{v:>12}");
        }
        let _ = writeln!(
            s,
            "  peak memory      {:>14.1} MiB ({:.0} B/token)",
            self.peak_rss_bytes as f64 / 1048576.0,
            self.bytes_per_token
        );
        let largest = self.memory.structures.first();
        let _ = writeln!(
            s,
            "  structures       {:>14.1} MiB ({:.0} B/token; largest: {} {:.0} B/token)",
            self.memory.total_bytes as f64 / 1048576.0,
            self.memory.bytes_per_token,
            largest.map_or("-", |l| l.name),
            largest.map_or(0.0, |l| l.bytes_per_token)
        );
        let _ = writeln!(
            s,
            "  learned links    {:>14}  formed, {} pruned",
            self.links_formed, self.links_pruned
        );
        let levels: Vec<String> = self.groups_per_level.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "  groups per level {:>14}  (last detection at tick {})",
            if levels.is_empty() {
                "none".to_string()
            } else {
                levels.join(" / ")
            },
            self.last_organized
                .map_or("-".to_string(), |t| t.to_string())
        );
        let e = &self.group_events;
        let _ = writeln!(
            s,
            "  group events     {:>14}  kept, {} appeared, {} vanished, {} split, {} merged",
            e.kept, e.appeared, e.vanished, e.split, e.merged
        );
        if let (Some(a1), Some(a2)) = (self.ari_level1, self.ari_level2) {
            let _ = writeln!(
                s,
                "  ARI vs labels    {:>14}  level 1 {a1:.4}, level 2 {a2:.4}",
                self.labelled_tokens
            );
        }
        if let Some(d) = &self.wal_durability {
            let _ = writeln!(
                s,
                "  WAL ({d:<7})    {:>14} records, {} snapshots, {:.1} MiB, {} fsyncs",
                self.wal_records,
                self.wal_snapshots,
                self.wal_bytes as f64 / 1048576.0,
                self.wal_fsyncs
            );
        }
        if self.panics > 0 {
            let _ = writeln!(
                s,
                "  panics           {:>14}  ({} recovered from the WAL)",
                self.panics, self.recoveries
            );
        }
        if let Some(r) = &self.recovery {
            let _ = writeln!(
                s,
                "  resumed          {:>14}  (snapshot tick {}, {} records replayed, {} bytes cut)",
                format!("tick {}", r.tick),
                r.snapshot_tick,
                r.records_replayed,
                r.bytes_dropped
            );
        }
    }
}

/// The assisted GPU pass's totals over a run, when the GPU computed forces.
fn gpu_run_stats(backend: &ForceBackend) -> Option<GpuRunStats> {
    backend.gpu_timings().map(|(_, total, passes)| GpuRunStats {
        passes,
        upload_seconds: total.upload,
        dispatch_seconds: total.dispatch,
        readback_seconds: total.readback,
        uploaded_bytes: total.uploaded_bytes,
        readback_bytes: total.readback_bytes,
    })
}
