//! The headless runner behind `neurograph run`: config file + flags → a simulation
//! → ticks with progress → a [`RunSummary`].

use crate::cdna::{Cdna, CdnaError, Profile, ViolationKind};
use crate::commands::CommandError;
use crate::config::{Quotas, SimConfig};
use crate::input::{InputError, load_csv};
use crate::scenario::{self, Generated, ScenarioParams, spawn_stream};
use crate::sim::{SimError, SimSettings, Simulation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The run configuration file (TOML). Every field is optional; flags override it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Scenario name.
    pub scenario: Option<String>,
    /// Token count.
    pub tokens: Option<usize>,
    /// Ticks to run.
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
}

impl RunConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| RunError::Config(format!("{}: {e}", path.display())))
    }
}

/// Default ticks of `neurograph run`.
pub const DEFAULT_TICKS: u64 = 300;
/// Default seed.
pub const DEFAULT_SEED: u64 = 42;
/// Tokens per spawn batch when loading a scenario.
pub const SPAWN_BATCH: usize = 65_536;

/// What to run: the merged config and flags.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The config file's content (or defaults).
    pub config: RunConfig,
    /// Show a progress bar (drawn only on a terminal).
    pub progress: bool,
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
    /// Ticks run.
    pub ticks: u64,
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
}

/// Peak resident set size of this process (VmHWM), if the OS tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the CDNA a config asks for.
pub fn load_cdna(config: &RunConfig) -> Result<Cdna, RunError> {
    match (&config.cdna, &config.profile) {
        (Some(path), _) => Ok(Cdna::load(path)?),
        (None, Some(name)) => Ok(Cdna::profile(name.parse::<Profile>()?)),
        (None, None) => Ok(Cdna::default()),
    }
}

/// Runs a whole simulation.
pub fn run(opts: &RunOptions) -> Result<RunSummary, RunError> {
    let c = &opts.config;
    let cdna = load_cdna(c)?;
    let seed = c.seed.unwrap_or(DEFAULT_SEED);
    let ticks = c.ticks.unwrap_or(DEFAULT_TICKS);
    let mut sim = Simulation::new(SimSettings {
        config: c.sim.clone(),
        cdna: cdna.clone(),
        quotas: c.quotas.clone(),
    })?;
    let spawn_start = Instant::now();
    let ground_truth;
    let scenario_name = if let Some(path) = &c.input {
        if c.scenario.is_some() {
            return Err(RunError::Config(
                "give either --input or --scenario, not both".into(),
            ));
        }
        let data = load_csv(path, &cdna)?;
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
        ground_truth = spawn_stream(&mut sim, stream, SPAWN_BATCH)?;
        "input".to_string()
    } else {
        let s = match &c.scenario {
            Some(name) => scenario::find(name).map_err(RunError::Config)?,
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
        ground_truth = s.spawn_into(&mut sim, &ScenarioParams { tokens, seed }, SPAWN_BATCH)?;
        s.name.to_string()
    };
    let spawn_seconds = spawn_start.elapsed().as_secs_f64();

    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(ticks),
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
    } else {
        None
    };
    let start = Instant::now();
    let mut first_tick_seconds = 0.0;
    for t in 0..ticks {
        sim.step();
        if t == 0 {
            first_tick_seconds = start.elapsed().as_secs_f64();
        }
        if let Some(bar) = &bar {
            bar.inc(1);
            if t % 16 == 0 {
                bar.set_message(format!("{} tokens", sim.token_count()));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let tokens = sim.token_count();
    let violations = sim.violations().clone();
    let peak = peak_rss_bytes().unwrap_or(0);
    let per_s = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
    Ok(RunSummary {
        scenario: scenario_name,
        seed,
        tokens,
        links: sim.link_count(),
        ticks,
        seconds,
        ticks_per_s: per_s(ticks as f64),
        first_tick_seconds,
        steady_ticks_per_s: if ticks > 1 && seconds > first_tick_seconds {
            (ticks - 1) as f64 / (seconds - first_tick_seconds)
        } else {
            0.0
        },
        token_steps_per_s: per_s(ticks as f64 * tokens as f64),
        digest: sim.digest().to_string(),
        cdna_violations: violations.sum(),
        cdna_violations_by_kind: ViolationKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), violations.get(*k)))
            .collect(),
        threads: sim.threads(),
        avg_neighbors: if tokens > 0 && ticks > 0 {
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
    })
}

impl RunSummary {
    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "NeuroGraph run — scenario {} (seed {})",
            self.scenario, self.seed
        );
        let _ = writeln!(s, "  tokens           {:>14}", self.tokens);
        let _ = writeln!(s, "  links            {:>14}", self.links);
        let _ = writeln!(s, "  ticks            {:>14}", self.ticks);
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
        let _ = writeln!(s, "  avg neighbours   {:>14.2}", self.avg_neighbors);
        let _ = writeln!(s, "  list rebuilds    {:>14}", self.neighbor_rebuilds);
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
        let _ = write!(s, "  digest           {:>14}", self.digest);
        s
    }
}
