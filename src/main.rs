//! `neurograph`: the command-line front end.

#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use neurograph::app::runner::{self, RunConfig, RunOptions};
use neurograph::model::cdna::{Cdna, Profile};
use neurograph::scenario::SCENARIOS;
use neurograph::wal::{self, Durability, RecoverOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Set once a write to stdout failed because its reader went away (exit 141).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Exit status when stdout's reader went away: 128 + SIGPIPE, what a shell
/// reports for a tool that SIGPIPE ended.
const EXIT_STDOUT_CLOSED: u8 = 141;

/// Writes to stdout. A closed stdout (its reader went away) is an error that
/// ends the command quietly with [`EXIT_STDOUT_CLOSED`]; any other failure to
/// write (a full disk…) is an error with its reason.
fn write_stdout(args: std::fmt::Arguments) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
            Err("stdout closed".into())
        }
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}

/// `print!` that returns the error of a closed stdout instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*))? };
}

/// `println!` that returns the error of a closed stdout instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*)))? };
}

/// `eprintln!` that never panics: a closed stderr loses the line, nothing else.
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "neurograph",
    version,
    about = "NeuroGraph: tokens in an 8D semantic space, simulated"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a headless simulation (default: the `clusters` scenario, 10K tokens, 300 ticks).
    Run(Box<RunArgs>),
    /// List the built-in scenarios.
    Scenarios,
    /// Print a CDNA profile as TOML, or check a CDNA file.
    Cdna(CdnaArgs),
    /// Recover a WAL: load its newest snapshot, replay and verify every later tick,
    /// report the last durable tick and its digest. Changes nothing on disk.
    Recover(RecoverArgs),
    /// List a WAL's segments, snapshots and ticks (checks CRCs, replays nothing);
    /// with --tree, print the hierarchy of its last tick (replays) or of a snapshot.
    Inspect(InspectArgs),
    /// Draw the tokens projected to 2D (PCA), coloured by group, into a PNG: of a
    /// WAL's last tick, of a snapshot, or else of a fresh run of a scenario.
    Plot(PlotArgs),
    /// Write a scenario's initial tokens as a CSV file that `run --input` reads
    /// (with the planted `label`/`group` columns), e.g. to cluster them offline.
    Generate(GenerateArgs),
    /// Bring a data set of any dimension D >= 8 (.csv with a header, or a 2-D
    /// .npy) into the engine's space: PCA to 8D and a length scale from the
    /// k-nearest-neighbour distances; writes a CSV that `run --input` reads (a
    /// `label` column is kept as ground truth for the ARI).
    Import(ImportArgs),
    /// An interactive session on a simulation (a scenario, --input, or a WAL to
    /// resume): /help /status /stats /step N /query /token /spawn /link /despawn
    /// /save /quit, with line editing and history.
    Repl(Box<ReplArgs>),
    /// A live engine: ticks a simulation (a scenario, --input, or a WAL to
    /// resume) and serves a JSON API, a WebSocket stream, /metrics, /health and
    /// a live page at / on --listen, until Ctrl-C or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Side-by-side benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tick time with no WAL and with the off, batched and sync policies, stepped
    /// in turn on identical worlds; then the replay speed of the batched WAL.
    Wal(WalBenchArgs),
    /// Cost of the Learn and Organize stages next to the Forces stage, per tick.
    Hierarchy(HierarchyBenchArgs),
    /// Tick time with observability off, with puffin, tracing at 1% and 100%,
    /// metrics, the black box, all together, and with a batched WAL with and
    /// without the production set, stepped in turn on identical worlds.
    Observe(ObserveBenchArgs),
    /// GPU against CPU force backends at several world sizes: whole tick, Forces
    /// stage, and the GPU's upload, dispatch and readback, side by side.
    Gpu(GpuBenchArgs),
    /// A long run of one scenario, reported per window of ticks: neighbours per
    /// token, ticks/s, pairs/s, rebuilds and memory, then the late-over-early
    /// tick ratio and the memory growth (does the cost stay flat?).
    Steady(SteadyBenchArgs),
    /// A bounded load test of `serve` on loopback: the tick rate alone, then
    /// CLIENTS concurrent clients mixing reads, queries and commands for
    /// SECONDS; per endpoint, requests, errors and p50/p99 latency.
    Serve(ServeBenchArgs),
    /// Batch spawn with every component: `Simulation::spawn_batch` next to
    /// bevy's own `World::spawn_batch` into a bare World, alternated in one run.
    Spawn(SpawnBenchArgs),
}

#[derive(Args)]
struct ServeBenchArgs {
    /// Scenario name.
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds under load.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds of the tick rate alone, before the load.
    #[arg(long, default_value_t = 15.0)]
    baseline_seconds: f64,
    /// Ticks run before anything is measured (steady state, not the first ticks).
    #[arg(long, default_value_t = 300)]
    warmup_ticks: u64,
    /// Keep the engine paused: the requests' own cost, without waiting for the
    /// tick in progress (no warm-up; the tick rates read 0).
    #[arg(long)]
    paused: bool,
    /// Memory budget in bytes (quotas.memory_budget_bytes; default 1 GiB):
    /// 1M tokens need about 1.2 GB of it.
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Seed of the world and of the clients.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SpawnBenchArgs {
    /// Scenario whose tokens are spawned.
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens per batch.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: usize,
    /// Batches of each kind.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SteadyBenchArgs {
    /// Scenario name (see `neurograph scenarios`).
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens (default: the scenario's).
    #[arg(long)]
    tokens: Option<usize>,
    /// Ticks in all.
    #[arg(long, default_value_t = 1000)]
    ticks: u64,
    /// Ticks per reported window.
    #[arg(long, default_value_t = 100)]
    window: u64,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Force backend: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    backend: neurograph::model::config::Backend,
    /// Print the report as one JSON object (windows still go to stderr).
    #[arg(long)]
    json: bool,
    /// Print the summary as one row of the steady-state table of
    /// docs/performance.md (with its header), instead of the text.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
}

#[derive(Args)]
struct GpuBenchArgs {
    /// Scenario name (`uniform`: ~30 neighbours per token).
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// World sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000usize, 100_000, 1_000_000])]
    tokens: Vec<usize>,
    /// Ticks timed per size and backend (after one untimed tick).
    #[arg(long, default_value_t = 10)]
    ticks: u64,
    /// CPU worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Ticks run first, untimed (a long run's later ticks are what is measured;
    /// 0 = time the scenario's first ticks).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Ticks of the GPU-resident tick timed in one `step` call per size (after 20
    /// untimed ones); 0 = skip the resident tick.
    #[arg(long, default_value_t = 100)]
    resident_ticks: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ObserveBenchArgs {
    /// Scenario name.
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens per world.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Ticks per variant.
    #[arg(long, default_value_t = 60)]
    ticks: u64,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Ticks run first, untimed (a long run's later ticks are what is measured;
    /// 0 = time the scenario's first ticks).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct HierarchyBenchArgs {
    /// Scenario name.
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Ticks timed (after a first, untimed one).
    #[arg(long, default_value_t = 20)]
    ticks: u64,
    /// Extra detections timed on their own after the ticks.
    #[arg(long, default_value_t = 3)]
    organize_runs: u32,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Ticks run first, untimed (a long run's later ticks are what is measured;
    /// 0 = time the scenario's first ticks).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// The PNG file to write.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
    /// Plot the last tick of this WAL (replayed; changes nothing on disk).
    #[arg(long, value_name = "DIR", conflicts_with = "snapshot")]
    wal: Option<PathBuf>,
    /// Plot this snapshot file.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Scenario of the fresh run (default: clusters).
    #[arg(long, conflicts_with_all = ["wal", "snapshot"])]
    scenario: Option<String>,
    /// Tokens of the fresh run.
    #[arg(long, conflicts_with_all = ["wal", "snapshot"])]
    tokens: Option<usize>,
    /// Ticks of the fresh run.
    #[arg(long, conflicts_with_all = ["wal", "snapshot"])]
    ticks: Option<u64>,
    /// Seed of the fresh run.
    #[arg(long, conflicts_with_all = ["wal", "snapshot"])]
    seed: Option<u64>,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 900)]
    height: u32,
    /// No progress bar for a fresh run.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Scenario name.
    #[arg(long, default_value = "clusters")]
    scenario: String,
    /// Tokens.
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The CSV file to write.
    #[arg(long, value_name = "FILE.csv")]
    out: PathBuf,
}

#[derive(Args)]
/// The world of an interactive session (`repl`, `serve`): as `run`'s flags.
struct WorldArgs {
    /// Scenario name (see `neurograph scenarios`).
    #[arg(long)]
    scenario: Option<String>,
    /// Number of tokens.
    #[arg(long)]
    tokens: Option<usize>,
    /// RNG seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Load tokens from a CSV file instead of a scenario.
    #[arg(long, conflicts_with_all = ["scenario", "tokens"])]
    input: Option<PathBuf>,
    /// CDNA file (TOML).
    #[arg(long, conflicts_with = "profile")]
    cdna: Option<PathBuf>,
    /// CDNA profile: default, explorer, analyst, creative, custom.
    #[arg(long)]
    profile: Option<String>,
    /// Run configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Journal every tick to a write-ahead log in DIR; a WAL of the same run
    /// there is resumed.
    #[arg(long, value_name = "DIR")]
    wal: Option<PathBuf>,
    /// When journaled ticks reach the disk: sync, batched (default) or off.
    #[arg(long, requires = "wal", value_name = "POLICY")]
    durability: Option<Durability>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Memory budget in bytes (quotas.memory_budget_bytes).
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Force backend: cpu or gpu (a resumed WAL goes on with its own unless
    /// this is given).
    #[arg(long)]
    backend: Option<neurograph::model::config::Backend>,
    /// What a GPU backend runs each tick: resident (default) or assisted
    /// (see `run --help`).
    #[arg(long, value_name = "TICK")]
    gpu_tick: Option<neurograph::model::config::GpuTick>,
}

#[derive(Args)]
struct ReplArgs {
    #[command(flatten)]
    world: WorldArgs,
    /// The history file (default: $HOME/.neurograph_history; none without HOME).
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    world: WorldArgs,
    /// Address to listen on (HTTP, WebSocket, the page, /metrics, /health).
    /// Beyond loopback it needs --auth-token.
    #[arg(long, default_value = neurograph::app::serve::DEFAULT_LISTEN, value_name = "HOST:PORT")]
    listen: String,
    /// At most this many ticks per second (default: no limit).
    #[arg(long, value_name = "TICKS_PER_S")]
    rate: Option<f64>,
    /// Start paused (POST /api/control/resume or step to tick).
    #[arg(long)]
    paused: bool,
    /// Bearer token every request but the page must carry (at least 16
    /// characters); read from NEUROGRAPH_AUTH_TOKEN when not given, so that
    /// it need not show in the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "NEUROGRAPH_AUTH_TOKEN",
        hide_env_values = true
    )]
    auth_token: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = neurograph::app::serve::ServeLimits::default().max_body_bytes)]
    max_body: usize,
    /// Most tokens in one batch command.
    #[arg(long, value_name = "N", default_value_t = neurograph::app::serve::ServeLimits::default().max_batch)]
    max_batch: usize,
    /// Print `durable TICK` on stdout whenever the WAL's durable tick advances.
    #[arg(long, hide = true)]
    report_durable: bool,
    /// Export the sampled tick spans and the HTTP request spans over OTLP/HTTP
    /// (protobuf) to this receiver, e.g. http://localhost:4318 (spans go to
    /// URL/v1/traces). Needs a build with `--features otel`.
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// Fraction of ticks whose spans are exported with --otlp (by a hash of
    /// the tick number, so the same ticks every run).
    #[arg(long, value_name = "RATE", default_value_t = 0.01, requires = "otlp")]
    otlp_tick_rate: f64,
}

#[derive(Args)]
struct ImportArgs {
    /// The data: .csv (a header; every column a feature except one named
    /// `label`) or .npy (a 2-D array of numbers).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The token CSV to write (`x0..x7`, and `label` when the input has one).
    #[arg(long, value_name = "FILE.csv")]
    out: PathBuf,
    /// Multiply the reduced points by this instead of the automatic scale.
    #[arg(long)]
    scale: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WalBenchArgs {
    /// Scenario name.
    #[arg(long, default_value = "uniform")]
    scenario: String,
    /// Tokens per world.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Ticks per variant.
    #[arg(long, default_value_t = 40)]
    ticks: u64,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Snapshot interval of the journaled variants.
    #[arg(long, default_value_t = 100)]
    snapshot_every: u64,
    /// Ticks run first, untimed (a long run's later ticks are what is measured;
    /// 0 = time the scenario's first ticks).
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RecoverArgs {
    /// The WAL directory.
    #[arg(long, value_name = "DIR")]
    wal: PathBuf,
    /// Print the report as one JSON object (the last line of stdout).
    #[arg(long)]
    json: bool,
    /// Worker threads for the replay (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct InspectArgs {
    /// The WAL directory.
    #[arg(long, value_name = "DIR", required_unless_present = "snapshot")]
    wal: Option<PathBuf>,
    /// A snapshot file: print its hierarchy tree (implies --tree).
    #[arg(long, value_name = "FILE", conflicts_with = "wal")]
    snapshot: Option<PathBuf>,
    /// Print the hierarchy tree of the WAL's last tick (replays it, read-only).
    #[arg(long)]
    tree: bool,
    /// Children listed per group in the tree.
    #[arg(long, default_value_t = 10)]
    max_children: usize,
    /// Print the listing (or tree) as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario name (see `neurograph scenarios`).
    #[arg(long)]
    scenario: Option<String>,
    /// Number of tokens.
    #[arg(long)]
    tokens: Option<usize>,
    /// Number of ticks.
    #[arg(long)]
    ticks: Option<u64>,
    /// RNG seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where forces are computed: cpu (default), gpu (wgpu compute shaders; no
    /// usable adapter is an error), auto (a hardware GPU if there is one, else the
    /// CPU with a warning). A resumed WAL goes on with the backend given here,
    /// else with the one it was started with; each tick replays on its own.
    #[arg(long, value_name = "BACKEND")]
    backend: Option<neurograph::model::config::Backend>,
    /// What a GPU backend runs each tick: resident (default: forces,
    /// integration and the token constraints stay on the device; the CPU reads
    /// back positions, velocities, densities and link proposals) or assisted
    /// (the CPU keeps the neighbour lists and integrates; the GPU computes the
    /// forces). A world whose rows do not fit the device runs assisted, with a
    /// warning.
    #[arg(long, value_name = "TICK")]
    gpu_tick: Option<neurograph::model::config::GpuTick>,
    /// CDNA file (TOML).
    #[arg(long, conflicts_with = "profile")]
    cdna: Option<PathBuf>,
    /// CDNA profile: default, explorer, analyst, creative, custom.
    #[arg(long)]
    profile: Option<String>,
    /// Run configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load tokens from a CSV file instead of a scenario.
    #[arg(long, conflicts_with_all = ["scenario", "tokens"])]
    input: Option<PathBuf>,
    /// Print the summary as one JSON object (the last line of stdout).
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Journal every tick to a write-ahead log in DIR. If DIR holds a WAL of the
    /// same run, the run resumes from it (up to --ticks); a different run is refused.
    #[arg(long, value_name = "DIR")]
    wal: Option<PathBuf>,
    /// When journaled ticks reach the disk: sync (every tick), batched (background
    /// fsync every 64 records or 50 ms; the default), off (only at shutdown).
    #[arg(long, requires = "wal", value_name = "POLICY")]
    durability: Option<Durability>,
    /// Write a snapshot every S ticks (default 100; 0 = only at start and end).
    #[arg(long, requires = "wal", value_name = "S")]
    snapshot_every: Option<u64>,
    /// Memory budget in bytes (quotas.memory_budget_bytes; default 1 GiB):
    /// spawns are checked against the measured structures, and a world
    /// larger than about 895K tokens (1 GiB at 1,200 B per token) needs more
    /// than the default.
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Print `durable TICK` on stdout each time the durable tick advances.
    #[arg(long, requires = "wal")]
    report_durable: bool,
    /// Print the hierarchy tree at the end (before the JSON line with --json).
    #[arg(long)]
    tree: bool,
    /// Serve puffin profiler frames (one per tick) for puffin viewer on ADDR
    /// (default 127.0.0.1:8585). Profiling is off, and free, without it.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8585")]
    puffin: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics and a health check on
    /// /health (default 127.0.0.1:9187; port 0 picks a free port). The address
    /// is printed on stderr.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9187")]
    metrics: Option<String>,
    /// Write sampled tick traces as JSON lines to FILE (`-` or nothing: stderr).
    /// The base rate is the CDNA's `evolution.trace_sample_rate` (default 1%);
    /// ticks with warnings, errors or CDNA violations are always kept, and half
    /// of the slow ones.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    trace: Option<String>,
    /// Base trace sampling rate in [0, 1], instead of the CDNA's.
    #[arg(long, requires = "trace", value_name = "RATE")]
    trace_rate: Option<f32>,
    /// A tick slower than MS milliseconds is slow (default: slower than the
    /// running p99 of the last 1,024 ticks, first computed after 32 ticks).
    #[arg(long, requires = "trace", value_name = "MS")]
    trace_slow_ms: Option<f64>,
    /// Black box file (JSON lines): written at the end of the run, on a panic,
    /// on a fatal error and on SIGUSR1. Without it, those but the last go to
    /// the temporary directory.
    #[arg(long, value_name = "FILE")]
    blackbox: Option<PathBuf>,
    /// Recoveries from the WAL allowed after panicking ticks before the run
    /// exits with code 70 (without --wal the first panic ends the run).
    #[arg(long, value_name = "N", default_value_t = runner::DEFAULT_PANIC_RETRIES)]
    panic_retries: u32,
    /// Test-only fault hook: make tick TICK panic (once).
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "TICK", hide = true)]
    fault_panic_at: Option<u64>,
    /// Test-only fault hook: the GPU backend fails as tick TICK starts.
    #[cfg(feature = "fault-injection")]
    #[arg(
        long,
        value_name = "TICK",
        hide = true,
        conflicts_with = "fault_panic_at"
    )]
    fault_gpu_loss_at: Option<u64>,
}

#[derive(Args)]
struct CdnaArgs {
    /// Profile to print.
    #[arg(long, default_value = "default", conflicts_with = "check")]
    profile: String,
    /// Check this file instead of printing a profile.
    #[arg(long)]
    check: Option<PathBuf>,
}

/// The run configuration file's content, or the defaults without `--config`.
fn load_run_config(args: &RunArgs) -> Result<RunConfig, String> {
    match &args.config {
        Some(p) => RunConfig::load(p).map_err(|e| e.to_string()),
        None => Ok(RunConfig::default()),
    }
}

/// `run`, with `config` read from `--config` (flags override it here).
fn run(
    args: RunArgs,
    mut config: RunConfig,
    trace: Option<neurograph::observe::SamplerHandle>,
) -> Result<Outcome, String> {
    let args_trace = args.trace.clone();
    apply_run_flags(&args, &mut config);
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
    {
        tracing::warn!(error = %e, "Ctrl-C will not stop the run cleanly");
    }
    let dump_request = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump_request.clone())
    {
        tracing::warn!(error = %e, "SIGUSR1 will not dump the black box");
    }
    let live = Arc::new(neurograph::observe::LiveStatus::default());
    // Held until the run ends: dropping them stops the servers.
    let _servers = start_servers(&args, &live)?;
    let trace = trace.map(|sampler| {
        if let Some(r) = args.trace_rate {
            sampler.set_rate(r);
        }
        neurograph::observe::TraceControl {
            sampler,
            follow_cdna: args.trace_rate.is_none(),
        }
    });
    // Resuming a WAL: the backend asked for here (flag or config file), else
    // the WAL's own.
    let asked_backend = args
        .backend
        .or(Some(config.sim.backend).filter(|&b| b != neurograph::model::config::Backend::Cpu));
    let asked_tick = args
        .gpu_tick
        .or(Some(config.sim.gpu_tick).filter(|t| !t.is_resident()));
    let result = runner::run_keep(&RunOptions {
        config,
        progress: !args.quiet,
        wal_dir: args.wal.clone(),
        report_durable: args.report_durable,
        interrupt: Some(interrupt),
        blackbox: args.blackbox.clone(),
        dump_request: Some(dump_request),
        panic_retries: args.panic_retries,
        trace,
        live: Some(live),
        #[cfg(feature = "fault-injection")]
        fault: args
            .fault_panic_at
            .map(neurograph::observe::FaultHook::panic_at)
            .or(args
                .fault_gpu_loss_at
                .map(neurograph::observe::FaultHook::gpu_loss_at)),
        backend: asked_backend,
        gpu_tick: asked_tick,
        ..Default::default()
    });
    let (summary, sim) = match result {
        Ok(r) => r,
        Err(e @ runner::RunError::Panicked { .. }) => {
            note!("error: {e}");
            return Ok(Outcome::Panicked);
        }
        Err(e) => return Err(e.to_string()),
    };
    report_run(&args, args_trace.as_deref(), &summary, &sim)
}

/// Prints the run's summary (and `--tree`); how the run ended.
fn report_run(
    args: &RunArgs,
    trace_path: Option<&str>,
    summary: &runner::RunSummary,
    sim: &neurograph::sim::Simulation,
) -> Result<Outcome, String> {
    // Outputs asked for that could not be written make the run a failure; said
    // before the summary, so that a closed stdout does not hide it.
    let failed_output =
        summary.blackbox_failed.clone().or_else(|| {
            summary.trace.as_ref().filter(|t| t.write_errors > 0).map(|t| {
            format!(
                "--trace {}: writing failed for {} of the ticks kept (the trace is incomplete)",
                trace_path.unwrap_or("-"),
                t.write_errors
            )
        })
        });
    if let Some(e) = &failed_output {
        note!("error: {e}");
    }
    if args.tree {
        out!("{}", sim.hierarchy().render_tree(10));
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| e.to_string())?
        );
    } else {
        outln!("{}", summary.to_text());
    }
    if summary.ticks == 0 && summary.start_tick > 0 && !summary.interrupted {
        note!(
            "nothing to run: the WAL is at tick {}, and --ticks is the tick a run ends at",
            summary.start_tick
        );
    }
    if failed_output.is_some() {
        return Ok(Outcome::Failed);
    }
    if summary.interrupted {
        note!(
            "interrupted at tick {}{}",
            summary.final_tick,
            if summary.wal_durability.is_some() {
                "; everything is flushed: run the same command again to resume"
            } else {
                ""
            }
        );
        return Ok(Outcome::Interrupted);
    }
    Ok(Outcome::Done)
}

/// Applies `run`'s flags over the config file: a flag replaces what the file
/// says about the same thing.
/// The flags that choose a world and its settings, over a config file's
/// values (shared by `run` and `repl`): a CDNA file replaces a profile and the
/// other way round; an input replaces a scenario and token count and the
/// other way round.
struct WorldFlags<'a> {
    scenario: &'a Option<String>,
    tokens: Option<usize>,
    seed: Option<u64>,
    cdna: &'a Option<PathBuf>,
    profile: &'a Option<String>,
    input: &'a Option<PathBuf>,
    threads: Option<usize>,
    durability: Option<Durability>,
    memory_budget: Option<u64>,
}

impl WorldFlags<'_> {
    fn apply(&self, config: &mut RunConfig) {
        macro_rules! over {
            ($($f:ident),*) => { $( if self.$f.is_some() { config.$f = self.$f.clone(); } )* };
        }
        over!(scenario, tokens, seed, cdna, profile, input);
        if self.cdna.is_some() {
            config.profile = None;
        }
        if self.profile.is_some() {
            config.cdna = None;
        }
        if self.input.is_some() {
            (config.scenario, config.tokens) = (None, None);
        }
        if self.scenario.is_some() || self.tokens.is_some() {
            config.input = None;
        }
        if let Some(t) = self.threads {
            config.sim.threads = t;
        }
        if let Some(d) = self.durability {
            config.wal.durability = d;
        }
        if let Some(b) = self.memory_budget {
            config.quotas.memory_budget_bytes = b;
        }
    }
}

fn apply_run_flags(args: &RunArgs, config: &mut RunConfig) {
    WorldFlags {
        scenario: &args.scenario,
        tokens: args.tokens,
        seed: args.seed,
        cdna: &args.cdna,
        profile: &args.profile,
        input: &args.input,
        threads: args.threads,
        durability: args.durability,
        memory_budget: args.memory_budget,
    }
    .apply(config);
    if args.ticks.is_some() {
        config.ticks = args.ticks;
    }
    if let Some(b) = args.backend {
        config.sim.backend = b;
    }
    if let Some(t) = args.gpu_tick {
        config.sim.gpu_tick = t;
    }
    if let Some(s) = args.snapshot_every {
        config.wal.snapshot_every = s;
    }
}

/// Starts the servers `--puffin` and `--metrics` ask for.
fn start_servers(
    args: &RunArgs,
    live: &Arc<neurograph::observe::LiveStatus>,
) -> Result<
    (
        Option<neurograph::observe::puffin_stream::PuffinServer>,
        Option<neurograph::observe::metrics::MetricsServer>,
    ),
    String,
> {
    let puffin = match &args.puffin {
        Some(addr) => {
            let server = neurograph::observe::puffin_stream::PuffinServer::start(addr)
                .map_err(|e| e.to_string())?;
            puffin::set_scopes_on(true);
            note!(
                "puffin: serving frames on {0}; view them with `puffin_viewer --url {0}`",
                server.addr()
            );
            Some(server)
        }
        None => None,
    };
    let metrics = match &args.metrics {
        Some(addr) => {
            let handle =
                neurograph::observe::metrics::install_prometheus().map_err(|e| e.to_string())?;
            let server =
                neurograph::observe::metrics::MetricsServer::start(addr, handle, live.clone())
                    .map_err(|e| e.to_string())?;
            note!("metrics: listening on http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    Ok((puffin, metrics))
}

/// How a command ended, when it did not fail.
enum Outcome {
    Done,
    /// Stopped by Ctrl-C or SIGTERM (exit code 130).
    Interrupted,
    /// A tick panicked and the run did not recover (exit code 70).
    Panicked,
    /// Failed, and said why on stderr already (exit code 1).
    Failed,
}

/// Exit code of a run whose tick panicked without recovery (EX_SOFTWARE).
const EXIT_PANICKED: u8 = 70;

/// Before any work (and before `--trace` creates its file): the files `run`
/// writes can be written, none of them is a file the run reads (however named),
/// and none lands in the WAL directory (which holds only the WAL's files).
fn check_run_paths(args: &RunArgs, from_config: &RunConfig) -> Result<(), String> {
    use neurograph::app::paths::{check_output_file, in_directory, same_file};
    let trace = args
        .trace
        .as_deref()
        .filter(|t| *t != "-")
        .map(PathBuf::from);
    let outputs = [
        ("--trace", trace.as_ref()),
        ("--blackbox", args.blackbox.as_ref()),
    ];
    // The config file may name the input and the CDNA too.
    let inputs = [
        ("--input", args.input.as_ref()),
        ("--cdna", args.cdna.as_ref()),
        ("--config", args.config.as_ref()),
        ("the config's input", from_config.input.as_ref()),
        ("the config's cdna", from_config.cdna.as_ref()),
    ];
    for (flag, path) in outputs {
        let Some(path) = path else { continue };
        check_output_file(path, &[]).map_err(|e| format!("{flag} {e}"))?;
        for (other, input) in inputs {
            if let Some(input) = input
                && same_file(path, input)
            {
                return Err(format!(
                    "{flag} {} is the file {other} {} reads; writing it would destroy it",
                    path.display(),
                    input.display()
                ));
            }
        }
        if let Some(dir) = &args.wal
            && in_directory(path, dir)
        {
            return Err(format!(
                "{flag} {}: the WAL directory {} holds only the WAL's files; write it elsewhere",
                path.display(),
                dir.display()
            ));
        }
    }
    if let (Some(t), Some(b)) = (&trace, &args.blackbox)
        && (t == b || same_file(t, b))
    {
        return Err(format!(
            "--trace and --blackbox are both {}: give two files",
            t.display()
        ));
    }
    Ok(())
}

/// A file created (or truncated) on the first write.
struct LazyFile {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl std::io::Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            let f = std::fs::File::create(&self.path)?;
            self.file = Some(std::io::BufWriter::new(f));
        }
        self.file.as_mut().map_or(Ok(0), |f| f.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), std::io::Write::flush)
    }
}

/// The sampling layer for `run --trace`, and its handle.
fn trace_layer(
    args: &RunArgs,
) -> Result<
    Option<(
        neurograph::observe::SamplingLayer,
        neurograph::observe::SamplerHandle,
    )>,
    String,
> {
    let Some(target) = &args.trace else {
        return Ok(None);
    };
    if let Some(r) = args.trace_rate
        && !(0.0..=1.0).contains(&r)
    {
        return Err(format!("--trace-rate {r}: must be in [0, 1]"));
    }
    let slow = match args.trace_slow_ms {
        None => None,
        Some(ms) => Some(
            std::time::Duration::try_from_secs_f64(ms / 1000.0)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "--trace-slow-ms {ms}: must be a positive number of milliseconds below 1.8e22"
                    )
                })?,
        ),
    };
    let out: Box<dyn std::io::Write + Send> = if target == "-" {
        Box::new(std::io::LineWriter::new(std::io::stderr()))
    } else {
        // Created at the first kept tick, after every check of the run: a
        // refused run leaves an existing file as it was.
        Box::new(LazyFile {
            path: PathBuf::from(target),
            file: None,
        })
    };
    // The rate is set from the CDNA (or --trace-rate) when the run starts.
    Ok(Some(neurograph::observe::sampling_layer(out, 0.0, slow)))
}

fn recover(args: RecoverArgs) -> Result<(), String> {
    let rec = wal::recover::<neurograph::sim::Simulation>(
        &args.wal,
        &RecoverOptions {
            threads: args.threads,
            exclusive: false,
        },
    )
    .map_err(|e| e.to_string())?;
    let r = &rec.report;
    if args.json {
        let mut v = serde_json::to_value(r).map_err(|e| e.to_string())?;
        // One record per tick: records/s is ticks/s.
        v["replay_records_per_s"] = v["replay_ticks_per_s"].clone();
        outln!("{v}");
        return Ok(());
    }
    outln!(
        "{}: recovered tick {} (digest {})",
        args.wal.display(),
        r.tick,
        r.digest
    );
    outln!(
        "  snapshot of tick {} restored in {:.3} s; {} records ({} commands) replayed and verified in {:.3} s ({:.1} ticks/s)",
        r.snapshot_tick,
        r.restore_seconds,
        r.records_replayed,
        r.commands_replayed,
        r.replay_seconds,
        r.replay_ticks_per_s
    );
    for s in &r.snapshots_skipped {
        outln!("  skipped snapshot: {s}");
    }
    for d in &r.duplicates_skipped {
        outln!("  skipped {d}");
    }
    match &r.tail {
        Some(t) => outln!("  torn tail: {t}"),
        None => outln!("  tail: clean"),
    }
    outln!("  {} tokens, {} links", r.tokens, r.links);
    Ok(())
}

/// Prints a report as one JSON object or as its text.
fn print_report(json: bool, report: &impl serde::Serialize, text: String) -> Result<(), String> {
    if json {
        outln!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
    } else {
        outln!("{text}");
    }
    Ok(())
}

/// Runs `f` on a fresh scratch directory under the temporary directory, removed
/// afterwards whatever `f` returned.
fn in_scratch<T>(
    tag: &str,
    f: impl FnOnce(&std::path::Path) -> Result<T, String>,
) -> Result<T, String> {
    let scratch = std::env::temp_dir().join(format!("neurograph-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = f(&scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn bench(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Wal(a) => {
            let options = neurograph::app::benchmarks::WalBenchOptions {
                scenario: a.scenario,
                tokens: a.tokens,
                ticks: a.ticks.max(2),
                threads: a.threads,
                snapshot_every: a.snapshot_every,
                warmup: a.warmup,
            };
            let report = in_scratch("bench", |dir| {
                neurograph::app::benchmarks::wal_overhead(&options, dir).map_err(|e| e.to_string())
            })?;
            print_report(a.json, &report, report.to_text())
        }
        BenchCommand::Observe(a) => {
            let options = neurograph::app::benchmarks::ObserveBenchOptions {
                scenario: a.scenario,
                tokens: a.tokens,
                ticks: a.ticks.max(2),
                threads: a.threads,
                warmup: a.warmup,
            };
            let report = in_scratch("bench-observe", |dir| {
                neurograph::app::benchmarks::observe_overhead(&options, dir)
                    .map_err(|e| e.to_string())
            })?;
            print_report(a.json, &report, report.to_text())
        }
        BenchCommand::Gpu(a) => {
            let report = neurograph::app::benchmarks::gpu_vs_cpu(
                &neurograph::app::benchmarks::GpuBenchOptions {
                    scenario: a.scenario,
                    sizes: a.tokens,
                    ticks: a.ticks.max(1),
                    threads: a.threads,
                    warmup: a.warmup,
                    resident_ticks: a.resident_ticks,
                },
            )
            .map_err(|e| e.to_string())?;
            print_report(a.json, &report, report.to_text())
        }
        BenchCommand::Serve(a) => bench_serve(a),
        BenchCommand::Steady(a) => {
            let options = neurograph::app::benchmarks::SteadyBenchOptions {
                scenario: a.scenario,
                tokens: a.tokens,
                ticks: a.ticks.max(1),
                window: a.window.max(1),
                threads: a.threads,
                seed: a.seed,
                backend: a.backend,
            };
            // The header comes with the first window, so a refused bench
            // prints only its error.
            let mut first = true;
            let report = neurograph::app::benchmarks::steady(&options, |w| {
                if std::mem::take(&mut first) {
                    note!("{}", neurograph::app::benchmarks::SteadyWindow::HEADER);
                }
                note!("{}", w.to_row())
            })
            .map_err(|e| e.to_string())?;
            if a.markdown {
                outln!(
                    "{}\n{}",
                    neurograph::app::benchmarks::SteadyBenchReport::MARKDOWN_HEADER,
                    report.markdown_row()
                );
                return Ok(());
            }
            print_report(a.json, &report, report.to_text())
        }
        BenchCommand::Spawn(a) => {
            if a.tokens == 0 {
                return Err("--tokens must be at least 1".into());
            }
            let report = neurograph::app::benchmarks::spawn(
                &neurograph::app::benchmarks::SpawnBenchOptions {
                    tokens: a.tokens,
                    repeats: a.repeats,
                    scenario: a.scenario,
                },
            )
            .map_err(|e| e.to_string())?;
            print_report(a.json, &report, report.to_text())
        }
        BenchCommand::Hierarchy(a) => {
            let report = neurograph::app::benchmarks::hierarchy(
                &neurograph::app::benchmarks::HierarchyBenchOptions {
                    scenario: a.scenario,
                    tokens: a.tokens,
                    ticks: a.ticks.max(1),
                    organize_runs: a.organize_runs,
                    threads: a.threads,
                    seed: a.seed,
                    warmup: a.warmup,
                },
            )
            .map_err(|e| e.to_string())?;
            print_report(a.json, &report, report.to_text())
        }
    }
}

/// The simulation of a snapshot file, or of a WAL's last tick (replayed).
fn open_state(
    wal_dir: Option<&PathBuf>,
    snapshot: Option<&PathBuf>,
    threads: usize,
) -> Result<neurograph::sim::Simulation, String> {
    match (snapshot, wal_dir) {
        (Some(path), _) => wal::open_snapshot::<neurograph::sim::Simulation>(path, threads)
            .map_err(|e| e.to_string()),
        (None, Some(dir)) => wal::recover::<neurograph::sim::Simulation>(
            dir,
            &RecoverOptions {
                threads,
                exclusive: false,
            },
        )
        .map(|r| r.sim)
        .map_err(|e| e.to_string()),
        (None, None) => Err("give --wal DIR or --snapshot FILE".into()),
    }
}

fn inspect(args: InspectArgs) -> Result<(), String> {
    if args.tree || args.snapshot.is_some() {
        let sim = open_state(args.wal.as_ref(), args.snapshot.as_ref(), 0)?;
        let hier = sim.hierarchy();
        if args.json {
            outln!(
                "{}",
                serde_json::json!({
                    "tick": sim.tick(),
                    "tokens": sim.token_count(),
                    "groups_per_level": hier.groups_per_level(),
                    "events": hier.events,
                    "groups": hier.levels.iter().flatten().map(|g| serde_json::json!({
                        "id": g.id.0,
                        "level": g.level,
                        "size": g.size,
                        "children": g.members.len(),
                        "child_ids": if g.level > 1 { Some(&g.members) } else { None },
                        "centre": g.centre.to_array(),
                        "charge": g.charge,
                        "mass": g.mass,
                        "radius": g.radius,
                        "since": g.since,
                    })).collect::<Vec<_>>(),
                })
            );
        } else {
            out!("{}", hier.render_tree(args.max_children));
        }
        return Ok(());
    }
    let Some(dir) = args.wal else {
        return Err("give --wal DIR or --snapshot FILE".into());
    };
    let info = wal::inspect(&dir).map_err(|e| e.to_string())?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&info).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    outln!(
        "WAL {} (format version {})",
        dir.display(),
        info.manifest.format_version
    );
    // What a resume without --backend goes on with.
    outln!(
        "  {:<18} {} (gpu tick {})",
        "backend",
        info.manifest.sim.backend.name(),
        info.manifest.sim.gpu_tick.name()
    );
    for (k, v) in &info.manifest.run {
        outln!("  {k:<18} {v}");
    }
    outln!("segments:");
    for s in &info.segments {
        let ticks = s
            .ticks
            .map_or("-".to_string(), |(a, b)| format!("{a}..={b}"));
        // Which backend computed the ticks: CPU, GPU forces only (assisted),
        // the whole tick on the GPU (resident).
        let cpu = s.records.saturating_sub(s.gpu_ticks);
        let assisted = s.gpu_ticks.saturating_sub(s.resident_ticks);
        outln!(
            "  {}  {:>12} B  ticks {:<16} {:>7} records {:>6} commands  (cpu {cpu}, gpu assisted {assisted}, gpu resident {})  {}",
            s.file,
            s.bytes,
            ticks,
            s.records,
            s.commands,
            s.resident_ticks,
            s.status
        );
    }
    outln!("snapshots:");
    for s in &info.snapshots {
        outln!(
            "  {}  {:>12} B  tick {:<8} {:>9} tokens {:>9} links  {}",
            s.file,
            s.bytes,
            s.tick,
            s.tokens.map_or("?".into(), |n| n.to_string()),
            s.links.map_or("?".into(), |n| n.to_string()),
            s.status
        );
    }
    let first = info
        .segments
        .iter()
        .filter_map(|s| s.ticks)
        .map(|t| t.0)
        .min();
    let last = info
        .segments
        .iter()
        .filter_map(|s| s.ticks)
        .map(|t| t.1)
        .max();
    match (first, last) {
        (Some(a), Some(b)) => outln!("ticks {a}..={b} journaled"),
        _ => outln!("no tick records"),
    }
    Ok(())
}

fn plot(args: PlotArgs) -> Result<(), String> {
    // Before any work: the picture must be writable.
    neurograph::app::plot::check_output(&args.out, args.width, args.height)
        .map_err(|e| e.to_string())?;
    let mut sim = if args.wal.is_some() || args.snapshot.is_some() {
        open_state(args.wal.as_ref(), args.snapshot.as_ref(), args.threads)?
    } else {
        let mut config = RunConfig {
            scenario: args.scenario.clone(),
            tokens: args.tokens,
            ticks: args.ticks,
            seed: args.seed,
            ..Default::default()
        };
        config.sim.threads = args.threads;
        let (summary, sim) = runner::run_keep(&RunOptions {
            config,
            progress: !args.quiet && std::io::stderr().is_terminal(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        if let (Some(a1), Some(a2)) = (summary.ari_level1, summary.ari_level2) {
            note!(
                "ran {} × {} tokens for {} ticks: ARI level 1 {a1:.4}, level 2 {a2:.4}",
                summary.scenario,
                summary.tokens,
                summary.final_tick
            );
        }
        sim
    };
    let stats =
        neurograph::app::plot::plot_world(sim.world_mut(), &args.out, args.width, args.height)
            .map_err(|e| e.to_string())?;
    outln!(
        "{}: {} tokens at tick {} ({} in level-1 groups), {} level-1 centres (crosses), {} level-2 centres (rings)",
        args.out.display(),
        stats.tokens,
        sim.tick(),
        stats.grouped,
        stats.level1,
        stats.level2
    );
    Ok(())
}

/// The run configuration of `repl`: the config file, then the flags.
fn world_config(args: &WorldArgs) -> Result<RunConfig, String> {
    let mut config = match &args.config {
        Some(p) => RunConfig::load(p).map_err(|e| e.to_string())?,
        None => RunConfig::default(),
    };
    WorldFlags {
        scenario: &args.scenario,
        tokens: args.tokens,
        seed: args.seed,
        cdna: &args.cdna,
        profile: &args.profile,
        input: &args.input,
        threads: args.threads,
        durability: args.durability,
        memory_budget: args.memory_budget,
    }
    .apply(&mut config);
    Ok(config)
}

/// The run options of a `repl` or `serve` world.
fn world_options(args: &WorldArgs) -> Result<RunOptions, String> {
    let mut config = world_config(args)?;
    if let Some(b) = args.backend {
        config.sim.backend = b;
    }
    if let Some(t) = args.gpu_tick {
        config.sim.gpu_tick = t;
    }
    Ok(RunOptions {
        config,
        wal_dir: args.wal.clone(),
        backend: args.backend,
        gpu_tick: args.gpu_tick,
        ..Default::default()
    })
}

/// `neurograph serve`: starts the server, prints its address on stdout, and
/// serves until Ctrl-C or SIGTERM (or until the engine stops).
fn serve(args: ServeArgs, otel: Option<Otel>) -> Result<Outcome, String> {
    use neurograph::app::serve::{ServeLimits, ServeOptions, Server};
    let mut run = world_options(&args.world)?;
    run.report_durable = args.report_durable;
    let metrics = match neurograph::observe::metrics::install_prometheus() {
        Ok(h) => Some(h),
        Err(e) => {
            note!("metrics: {e}; /metrics answers 404");
            None
        }
    };
    let server = Server::start(ServeOptions {
        run,
        listen: args.listen.clone(),
        rate: args.rate,
        paused: args.paused,
        auth_token: args.auth_token.clone(),
        limits: ServeLimits {
            max_body_bytes: args.max_body,
            max_batch: args.max_batch,
            ..Default::default()
        },
        metrics,
    })
    .map_err(|e| e.to_string())?;
    outln!("listening on http://{}", server.addr());
    note!(
        "serving: the live page at http://{0}/, the API under /api, the stream at /ws; Ctrl-C stops",
        server.addr()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && server.running() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let summary = server.stop().map_err(|e| e.to_string());
    if let Some(o) = otel {
        otel_shutdown(o);
    }
    let summary = summary?;
    note!("{}", summary.to_text());
    Ok(if stop.load(std::sync::atomic::Ordering::Relaxed) {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}

/// `neurograph bench serve`: the load test; fails when a request failed.
fn bench_serve(a: ServeBenchArgs) -> Result<(), String> {
    let report = neurograph::app::serve::load::load(&neurograph::app::serve::load::LoadOptions {
        scenario: a.scenario,
        tokens: a.tokens,
        clients: a.clients.max(1),
        seconds: a.seconds.max(0.1),
        baseline_seconds: a.baseline_seconds.max(0.1),
        warmup_ticks: a.warmup_ticks,
        seed: a.seed,
        paused: a.paused,
        memory_budget: a.memory_budget,
    })
    .map_err(|e| e.to_string())?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        outln!("{}", report.to_text());
    }
    if report.errors > 0 {
        return Err(format!("{} requests failed", report.errors));
    }
    Ok(())
}

#[cfg(feature = "otel")]
type Otel = neurograph::app::serve::otel::Otel;
#[cfg(not(feature = "otel"))]
type Otel = std::convert::Infallible;

/// The layer-type the subscriber stack takes the OTel layer as.
type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// `serve --otlp`'s layer (our spans from INFO) and pipeline.
#[cfg(feature = "otel")]
fn otel_for(cmd: &Command) -> Result<Option<(BoxedLayer, Otel)>, String> {
    use tracing_subscriber::Layer;
    let Command::Serve(a) = cmd else {
        return Ok(None);
    };
    let Some(url) = &a.otlp else {
        return Ok(None);
    };
    let (layer, otel) = neurograph::app::serve::otel::layer(url, a.otlp_tick_rate)?;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("neurograph", tracing::Level::INFO)
        .with_default(tracing::Level::WARN);
    Ok(Some((Box::new(layer.with_filter(filter)), otel)))
}

#[cfg(not(feature = "otel"))]
fn otel_for(cmd: &Command) -> Result<Option<(BoxedLayer, Otel)>, String> {
    match cmd {
        Command::Serve(a) if a.otlp.is_some() => {
            Err("--otlp: this build has no OpenTelemetry; build it with --features otel".into())
        }
        _ => Ok(None),
    }
}

#[cfg(feature = "otel")]
fn otel_shutdown(o: Otel) {
    let endpoint = o.endpoint.clone();
    if let Err(e) = o.shutdown() {
        note!("--otlp {endpoint}: the last spans were not exported: {e}");
    }
}

#[cfg(not(feature = "otel"))]
fn otel_shutdown(o: Otel) {
    match o {}
}

/// The history file of `repl` (a regular file, or none yet), loaded into `rl`.
fn repl_history(args: &ReplArgs, rl: &mut rustyline::DefaultEditor) -> Option<PathBuf> {
    use rustyline::error::ReadlineError;
    let history = args
        .history
        .clone()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".neurograph_history")));
    // Only a regular file (or none yet) is written: the line editor would
    // also change a device's or a link target's permissions.
    let history = history.filter(|h| match std::fs::symlink_metadata(h) {
        Ok(m) if !m.file_type().is_file() => {
            note!(
                "history {}: not a regular file; history is not kept",
                h.display()
            );
            false
        }
        _ => true,
    });
    if let Some(h) = &history
        && let Err(e) = rl.load_history(h)
        && !matches!(&e, ReadlineError::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
    {
        note!("history {}: {e}", h.display());
    }
    history
}

fn repl(args: ReplArgs) -> Result<(), String> {
    use neurograph::app::repl::{Next, Repl};
    use rustyline::error::ReadlineError;
    let session = runner::Session::open(world_options(&args.world)?).map_err(|e| e.to_string())?;
    let w = &args.world;
    let protected: Vec<PathBuf> = w.input.iter().chain(w.wal.iter()).cloned().collect();
    let mut repl = Repl {
        session,
        ended: None,
        protected,
    };
    // Ctrl-C while ticks run (the terminal is not in raw mode then) stops
    // /step between ticks; at the prompt the line editor takes it.
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    let mut rl = rustyline::DefaultEditor::new().map_err(|e| e.to_string())?;
    let history = repl_history(&args, &mut rl);
    {
        let sim = repl.session.sim();
        outln!(
            "NeuroGraph repl: {} tokens, {} links, tick {}. /help lists the commands; /quit or Ctrl-D leaves.",
            sim.token_count(),
            sim.link_count(),
            sim.tick()
        );
    }
    let mut failure = None;
    loop {
        match rl.readline("neurograph> ") {
            Ok(line) => {
                let _ = rl.add_history_entry(line.as_str());
                interrupt.store(false, std::sync::atomic::Ordering::Relaxed);
                let stop = || interrupt.load(std::sync::atomic::Ordering::Relaxed);
                match repl.execute(&line, &stop) {
                    Ok((_, Next::Quit)) => break,
                    Ok((out, Next::Continue)) => {
                        if !out.is_empty() {
                            outln!("{out}");
                        }
                    }
                    Err(e) => outln!("error: {e}"),
                }
                if let Some(why) = &repl.ended {
                    failure = Some(why.clone());
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => outln!("(Ctrl-C: /quit or Ctrl-D leaves)"),
            Err(ReadlineError::Eof) => break,
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                outln!("error: the line is not valid UTF-8; ignored");
            }
            Err(e) => {
                // The terminal is gone (a hangup): close the run all the same.
                failure = Some(format!("reading a line: {e}"));
                break;
            }
        }
    }
    if let Some(h) = &history
        && let Err(e) = rl.save_history(h)
    {
        note!("history {}: {e}", h.display());
    }
    let pending = repl.unjournaled();
    if failure.is_none() && pending > 0 {
        // Commands are journaled with the tick after them: one more tick keeps them.
        match repl.session.step() {
            Ok(()) => outln!(
                "journaled {pending} pending command(s) with one more tick (tick {})",
                repl.session.tick()
            ),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let closed = repl.session.close();
    if let Some(why) = failure {
        return Err(match closed {
            Ok(_) => format!("{why}; the run was closed"),
            Err(e) => format!("{why}; closing the run: {e}"),
        });
    }
    let (summary, _) = closed.map_err(|e| e.to_string())?;
    outln!(
        "closed at tick {} (digest {}){}",
        summary.final_tick,
        summary.digest,
        summary
            .wal_durability
            .map(|d| format!("; WAL closed ({d})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn import(args: ImportArgs) -> Result<(), String> {
    use neurograph::app::embed;
    neurograph::app::paths::check_output_file(&args.out, &["csv"]).map_err(|e| e.to_string())?;
    let data = embed::read_data(&args.input).map_err(|e| e.to_string())?;
    let e = embed::reduce(&data.values, data.rows, data.dims, args.scale)
        .map_err(|e| format!("{}: {e}", args.input.display()))?;
    let labels = data
        .labels
        .as_deref()
        .map(|l| (l, data.label_names.as_slice()));
    embed::write_tokens_csv(&args.out, &e, labels).map_err(|e| e.to_string())?;
    if args.json {
        let mut v = serde_json::to_value(&e).map_err(|e| e.to_string())?;
        v["out"] = serde_json::Value::String(args.out.display().to_string());
        v["labelled"] = serde_json::Value::Bool(labels.is_some());
        outln!("{v}");
    } else {
        let ratios: Vec<String> = e
            .explained_variance_ratio
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect();
        outln!(
            "{}: {} tokens from {} dimensions; explained variance {:.3} ({}); \
             median distance to the {}th neighbour {:.4} -> scale {:.6}{} ({:.2} field radii)",
            args.out.display(),
            e.rows,
            e.dims,
            e.explained_variance,
            ratios.join(" "),
            e.knn_k,
            e.knn_median,
            e.scale,
            if args.scale.is_some() {
                format!(" (given; automatic {:.6})", e.auto_scale)
            } else {
                " (automatic)".into()
            },
            e.knn_target
        );
    }
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<Outcome, String> {
    let sc = neurograph::scenario::find(&args.scenario).map_err(|e| e.to_string())?;
    // A file `run --input` could not load is refused before it is written.
    let limit = neurograph::model::config::Quotas::default().max_tokens;
    if args.tokens as u64 > limit {
        return Err(format!(
            "--tokens {}: must be at most {limit} (quotas.max_tokens: a larger file could not be loaded)",
            args.tokens
        ));
    }
    if args.tokens == 0 {
        return Err("--tokens 0: must be at least 1 (an input needs a token)".into());
    }
    neurograph::app::paths::check_output_file(&args.out, &[]).map_err(|e| e.to_string())?;
    // Ctrl-C or SIGTERM stops the writing; the file is written whole or not at
    // all (a temporary file renamed into place).
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    let written = neurograph::app::paths::write_whole(&args.out, |out| {
        write_scenario_csv(sc, &args, out, &stop)
    })
    .map_err(|e| format!("{}: {e}", args.out.display()))?;
    let Some(n) = written else {
        note!("interrupted: {} not written", args.out.display());
        return Ok(Outcome::Interrupted);
    };
    outln!("{}: {n} tokens of scenario {}", args.out.display(), sc.name);
    Ok(Outcome::Done)
}

/// Writes `args.tokens` tokens of `sc` as CSV to `out`; the count, or `None`
/// when `stop` was set first.
fn write_scenario_csv(
    sc: &neurograph::scenario::Scenario,
    args: &GenerateArgs,
    out: &mut impl std::io::Write,
    stop: &AtomicBool,
) -> Result<Option<u64>, String> {
    let params = neurograph::scenario::ScenarioParams {
        tokens: args.tokens,
        seed: args.seed,
    };
    let err = |e: csv::Error| e.to_string();
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "charge", "mass", "radius", "strength",
        "label", "group",
    ])
    .map_err(err)?;
    let mut n = 0u64;
    for g in sc.stream(&params) {
        if n.is_multiple_of(4096) && stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let s = &g.spec;
        let mut row: Vec<String> = s
            .position
            .to_array()
            .iter()
            .map(|v| v.to_string())
            .collect();
        row.extend(
            [s.charge, s.mass, s.radius, s.strength]
                .iter()
                .map(|v| v.to_string()),
        );
        row.push(g.label.map_or(String::new(), |l| l.to_string()));
        row.push(g.group.map_or(String::new(), |l| l.to_string()));
        w.write_record(&row).map_err(err)?;
        n += 1;
    }
    w.flush().map_err(|e| e.to_string())?;
    Ok(Some(n))
}

fn cdna(args: CdnaArgs) -> Result<(), String> {
    if let Some(path) = args.check {
        let c = Cdna::load(&path).map_err(|e| e.to_string())?;
        outln!(
            "{}: valid ({} profile, version {}, checksum {})",
            path.display(),
            c.profile.name(),
            c.version,
            c.checksum_hex()
        );
        return Ok(());
    }
    let p: Profile = args
        .profile
        .parse()
        .map_err(|e: neurograph::model::cdna::CdnaError| e.to_string())?;
    out!("{}", Cdna::profile(p).to_toml());
    Ok(())
}

fn main() -> ExitCode {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let cli = Cli::parse();
    // A run's config file is read once, here: its paths are checked with the
    // flags' before `--trace` is set up.
    let (sampling, handle, config) = match &cli.command {
        Command::Run(a) => {
            let prepared = load_run_config(a).and_then(|config| {
                check_run_paths(a, &config)?;
                Ok((trace_layer(a)?, config))
            });
            match prepared {
                Ok((Some((layer, handle)), config)) => (Some(layer), Some(handle), config),
                Ok((None, config)) => (None, None, config),
                Err(e) => {
                    note!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => (None, None, RunConfig::default()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEUROGRAPH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // No internal-error report: it is an `eprintln!`, which panics on a closed stderr.
    let log = tracing_subscriber::fmt::layer()
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    // The sampler sees our spans and events at INFO, other crates' from WARN.
    let sampling = sampling.map(|l| l.with_filter(neurograph::observe::sampler::default_filter()));
    let (otel_layer, otel) = match otel_for(&cli.command) {
        Ok(Some((layer, otel))) => (Some(layer), Some(otel)),
        Ok(None) => (None, None),
        Err(e) => {
            note!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(log)
        .with(sampling)
        .init();
    let result = match cli.command {
        Command::Run(a) => run(*a, config, handle),
        Command::Scenarios => scenarios().map(|()| Outcome::Done),
        Command::Cdna(a) => cdna(a).map(|()| Outcome::Done),
        Command::Recover(a) => recover(a).map(|()| Outcome::Done),
        Command::Inspect(a) => inspect(a).map(|()| Outcome::Done),
        Command::Plot(a) => plot(a).map(|()| Outcome::Done),
        Command::Generate(a) => generate(a),
        Command::Import(a) => import(a).map(|()| Outcome::Done),
        Command::Repl(a) => repl(*a).map(|()| Outcome::Done),
        Command::Serve(a) => serve(*a, otel),
        Command::Bench(b) => bench(b).map(|()| Outcome::Done),
    };
    // A closed stdout ends any command quietly, whatever else happened.
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(EXIT_STDOUT_CLOSED);
    }
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Ok(Outcome::Panicked) => ExitCode::from(EXIT_PANICKED),
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn scenarios() -> Result<(), String> {
    for s in SCENARIOS {
        outln!(
            "{:<10} {:>9} tokens  {}",
            s.name,
            s.default_tokens,
            s.description
        );
    }
    Ok(())
}
