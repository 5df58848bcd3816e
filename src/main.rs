//! `neurograph`: the command-line front end.

use clap::{Args, Parser, Subcommand};
use neurograph::cdna::{Cdna, Profile};
use neurograph::runner::{self, RunConfig, RunOptions};
use neurograph::scenario::SCENARIOS;
use neurograph::wal::{self, Durability, RecoverOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
    Run(RunArgs),
    /// List the built-in scenarios.
    Scenarios,
    /// Print a CDNA profile as TOML, or check a CDNA file.
    Cdna(CdnaArgs),
    /// Recover a WAL: load its newest snapshot, replay and verify every later tick,
    /// report the last durable tick and its digest. Changes nothing on disk.
    Recover(RecoverArgs),
    /// List a WAL's segments, snapshots and ticks (checks CRCs, replays nothing).
    Inspect(InspectArgs),
    /// Side-by-side benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tick time with no WAL and with the off, batched and sync policies, stepped
    /// in turn on identical worlds; then the replay speed of the batched WAL.
    Wal(WalBenchArgs),
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
    #[arg(long, value_name = "DIR")]
    wal: PathBuf,
    /// Print the listing as one JSON object.
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
    /// CDNA file (TOML).
    #[arg(long)]
    cdna: Option<PathBuf>,
    /// CDNA profile: default, explorer, analyst, creative, custom.
    #[arg(long)]
    profile: Option<String>,
    /// Run configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load tokens from a CSV file instead of a scenario.
    #[arg(long)]
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
    /// Print `durable TICK` on stdout each time the durable tick advances.
    #[arg(long, requires = "wal")]
    report_durable: bool,
}

#[derive(Args)]
struct CdnaArgs {
    /// Profile to print.
    #[arg(long, default_value = "default")]
    profile: String,
    /// Check this file instead of printing a profile.
    #[arg(long)]
    check: Option<PathBuf>,
}

fn run(args: RunArgs) -> Result<Outcome, String> {
    let mut config = match &args.config {
        Some(p) => RunConfig::load(p).map_err(|e| e.to_string())?,
        None => RunConfig::default(),
    };
    macro_rules! over {
        ($($f:ident),*) => { $( if args.$f.is_some() { config.$f = args.$f.clone(); } )* };
    }
    over!(scenario, tokens, ticks, seed, cdna, profile, input);
    if let Some(t) = args.threads {
        config.sim.threads = t;
    }
    if let Some(d) = args.durability {
        config.wal.durability = d;
    }
    if let Some(s) = args.snapshot_every {
        config.wal.snapshot_every = s;
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
    {
        tracing::warn!(error = %e, "Ctrl-C will not stop the run cleanly");
    }
    let summary = runner::run(&RunOptions {
        config,
        progress: !args.quiet,
        wal_dir: args.wal,
        report_durable: args.report_durable,
        interrupt: Some(interrupt),
    })
    .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", summary.to_text());
    }
    if summary.interrupted {
        eprintln!(
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

/// How a command ended, when it did not fail.
enum Outcome {
    Done,
    /// Stopped by Ctrl-C or SIGTERM (exit code 130).
    Interrupted,
}

fn recover(args: RecoverArgs) -> Result<(), String> {
    let rec = wal::recover(
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
        println!("{v}");
        return Ok(());
    }
    println!(
        "{}: recovered tick {} (digest {})",
        args.wal.display(),
        r.tick,
        r.digest
    );
    println!(
        "  snapshot of tick {} restored in {:.3} s; {} records ({} commands) replayed and verified in {:.3} s ({:.1} ticks/s)",
        r.snapshot_tick,
        r.restore_seconds,
        r.records_replayed,
        r.commands_replayed,
        r.replay_seconds,
        r.replay_ticks_per_s
    );
    for s in &r.snapshots_skipped {
        println!("  skipped snapshot: {s}");
    }
    match &r.tail {
        Some(t) => println!("  torn tail: {t}"),
        None => println!("  tail: clean"),
    }
    println!("  {} tokens, {} links", r.tokens, r.links);
    Ok(())
}

fn bench(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Wal(a) => {
            let scratch =
                std::env::temp_dir().join(format!("neurograph-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            let report = neurograph::benchmarks::wal_overhead(
                &neurograph::benchmarks::WalBenchOptions {
                    scenario: a.scenario,
                    tokens: a.tokens,
                    ticks: a.ticks.max(2),
                    threads: a.threads,
                    snapshot_every: a.snapshot_every,
                },
                &scratch,
            );
            let _ = std::fs::remove_dir_all(&scratch);
            let report = report?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!("{}", report.to_text());
            }
            Ok(())
        }
    }
}

fn inspect(args: InspectArgs) -> Result<(), String> {
    let info = wal::inspect(&args.wal).map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&info).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "WAL {} (format version {})",
        args.wal.display(),
        info.manifest.format_version
    );
    for (k, v) in &info.manifest.run {
        println!("  {k:<18} {v}");
    }
    println!("segments:");
    for s in &info.segments {
        let ticks = s
            .ticks
            .map_or("-".to_string(), |(a, b)| format!("{a}..={b}"));
        println!(
            "  {}  {:>12} B  ticks {:<16} {:>7} records {:>6} commands  {}",
            s.file, s.bytes, ticks, s.records, s.commands, s.status
        );
    }
    println!("snapshots:");
    for s in &info.snapshots {
        println!(
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
        (Some(a), Some(b)) => println!("ticks {a}..={b} journaled"),
        _ => println!("no tick records"),
    }
    Ok(())
}

fn cdna(args: CdnaArgs) -> Result<(), String> {
    if let Some(path) = args.check {
        let c = Cdna::load(&path).map_err(|e| e.to_string())?;
        println!(
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
        .map_err(|e: neurograph::cdna::CdnaError| e.to_string())?;
    print!("{}", Cdna::profile(p).to_toml());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEUROGRAPH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Run(a) => match run(a) {
            Ok(Outcome::Interrupted) => return ExitCode::from(130),
            other => other.map(|_| ()),
        },
        Command::Scenarios => {
            for s in SCENARIOS {
                println!(
                    "{:<10} {:>9} tokens  {}",
                    s.name, s.default_tokens, s.description
                );
            }
            Ok(())
        }
        Command::Cdna(a) => cdna(a),
        Command::Recover(a) => recover(a),
        Command::Inspect(a) => inspect(a),
        Command::Bench(b) => bench(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
