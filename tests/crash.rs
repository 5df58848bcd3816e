//! Crash safety: a `neurograph run --wal` child is killed with SIGKILL at random
//! moments; after each kill `neurograph recover` must succeed, must not lose a
//! tick the durability policy promised (the child prints `durable TICK` after
//! each fsync), and must reach the digest an uninterrupted run has at that tick.
#![cfg(feature = "cli")]

mod common;

use neurograph::prelude::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_neurograph");
const TOKENS: usize = 400;
const SEED: u64 = 42;

/// Digests of an uninterrupted in-process run, index = tick, grown on demand.
struct Reference {
    sim: Simulation,
    digests: Vec<StateDigest>,
}

impl Reference {
    fn new() -> Self {
        let mut sim = common::scenario_sim("clusters", TOKENS, SEED, 1);
        let digests = vec![sim.digest()];
        Self { sim, digests }
    }

    fn at(&mut self, tick: u64) -> StateDigest {
        while self.digests.len() as u64 <= tick {
            self.sim.step();
            self.digests.push(self.sim.digest());
        }
        self.digests[tick as usize]
    }
}

/// Starts a journaled run, kills it with SIGKILL after `delay`, and returns the
/// last tick it reported durable.
fn run_and_kill(dir: &Path, durability: &str, delay: Duration) -> u64 {
    let mut child = Command::new(BIN)
        .args(["run", "--quiet", "--report-durable", "--ticks", "1000000"])
        .args(["--tokens", &TOKENS.to_string(), "--seed", &SEED.to_string()])
        .args(["--durability", durability, "--snapshot-every", "16"])
        .arg("--wal")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start neurograph");
    let durable = Arc::new(AtomicU64::new(0));
    let seen = durable.clone();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(t) = line.strip_prefix("durable ") {
                seen.store(t.trim().parse().unwrap(), Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    reader.join().unwrap();
    durable.load(Ordering::SeqCst)
}

fn recover_json(dir: &Path) -> Result<serde_json::Value, String> {
    let out = Command::new(BIN)
        .args(["recover", "--json", "--wal"])
        .arg(dir)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    Ok(serde_json::from_str(stdout.lines().last().unwrap()).unwrap())
}

/// A small deterministic generator for the kill times.
fn delays(seed: u64, n: usize, min_ms: u64, max_ms: u64) -> Vec<Duration> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(min_ms + x % (max_ms - min_ms))
        })
        .collect()
}

fn trials(durability: &str, n: usize, seed: u64) {
    let started = Instant::now();
    let mut reference = Reference::new();
    let mut recovered = 0;
    for (i, delay) in delays(seed, n, 150, 1200).into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let promised = run_and_kill(dir.path(), durability, delay);
        if !dir.path().join("manifest.json").exists() {
            // Killed before the WAL existed: nothing was promised.
            assert_eq!(promised, 0, "trial {i}");
            continue;
        }
        let report = recover_json(dir.path())
            .unwrap_or_else(|e| panic!("trial {i} ({durability}, {delay:?}): recover failed: {e}"));
        let tick = report["tick"].as_u64().unwrap();
        assert!(
            tick >= promised,
            "trial {i} ({durability}): recovered tick {tick} < durable tick {promised}"
        );
        assert_eq!(
            report["digest"].as_str().unwrap(),
            reference.at(tick).to_string(),
            "trial {i} ({durability}): digest at tick {tick}"
        );
        if tick > 0 {
            recovered += 1;
        }
        // Every fifth (offset 2) is resumed and killed again: the resumed writer
        // appends after a cut tail, and that must recover just as well.
        if i % 5 == 2 {
            let again = run_and_kill(dir.path(), durability, delay);
            let report = recover_json(dir.path())
                .unwrap_or_else(|e| panic!("trial {i}, second kill: recover failed: {e}"));
            let t2 = report["tick"].as_u64().unwrap();
            assert!(t2 >= again.max(tick), "trial {i}: second kill lost ticks");
            assert_eq!(
                report["digest"].as_str().unwrap(),
                reference.at(t2).to_string(),
                "trial {i}, second kill: digest at tick {t2}"
            );
            continue;
        }
        // Every fifth trial also resumes the killed run to 10 ticks further.
        if i % 5 == 0 {
            let target = tick + 10;
            let out = Command::new(BIN)
                .args(["run", "--quiet", "--json", "--ticks", &target.to_string()])
                .args(["--tokens", &TOKENS.to_string(), "--seed", &SEED.to_string()])
                .args(["--durability", durability, "--wal"])
                .arg(dir.path())
                .output()
                .unwrap();
            let summary = common::json_of(&out);
            assert_eq!(summary["start_tick"].as_u64(), Some(tick));
            assert_eq!(summary["final_tick"].as_u64(), Some(target));
            assert_eq!(
                summary["digest"].as_str().unwrap(),
                reference.at(target).to_string()
            );
        }
    }
    assert!(
        recovered * 4 >= n * 3,
        "only {recovered} of {n} trials got past tick 0"
    );
    eprintln!(
        "{n} SIGKILL trials ({durability}): {recovered} recovered mid-run, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn sigkill_under_sync_loses_no_durable_tick() {
    trials("sync", 20, 0x9e3779b97f4a7c15);
}

#[test]
fn sigkill_under_batched_recovers_a_verified_prefix() {
    trials("batched", 8, 0x2545f4914f6cdd1d);
}

#[test]
fn ctrl_c_flushes_the_log_and_snapshots_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["run", "--quiet", "--json", "--ticks", "1000000"])
        .args(["--tokens", &TOKENS.to_string(), "--seed", &SEED.to_string()])
        .args(["--durability", "off", "--snapshot-every", "0", "--wal"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // The shell's built-in `kill` (no procps needed).
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true);
    let tick = summary["final_tick"].as_u64().unwrap();
    assert!(tick > 0);
    let mut reference = Reference::new();
    assert_eq!(
        summary["digest"].as_str().unwrap(),
        reference.at(tick).to_string()
    );
    // Under `off` nothing was fsynced during the run: the shutdown flushed the log
    // and wrote a final snapshot. Without that snapshot, the log alone replays.
    let last = dir.path().join(format!("snap-{tick:020}.snap"));
    assert!(last.exists());
    std::fs::remove_file(last).unwrap();
    let report = recover_json(dir.path()).unwrap();
    assert_eq!(report["tick"].as_u64(), Some(tick));
    assert_eq!(report["records_replayed"].as_u64(), Some(tick));
    assert_eq!(report["tail"], serde_json::Value::Null);
    assert_eq!(report["digest"], summary["digest"]);
}
