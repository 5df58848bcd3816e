//! `neurograph`: the command-line front end.

use clap::{Args, Parser, Subcommand};
use neurograph::cdna::{Cdna, Profile};
use neurograph::runner::{self, RunConfig, RunOptions};
use neurograph::scenario::SCENARIOS;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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

fn run(args: RunArgs) -> Result<(), String> {
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
    let summary = runner::run(&RunOptions {
        config,
        progress: !args.quiet,
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
        Command::Run(a) => run(a),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
