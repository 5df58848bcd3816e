//! Observability and resilience: puffin frames over TCP, the Prometheus
//! endpoint, the trace sampler, the black box, and recovery from a panicking
//! tick (through the test-only fault hook).
#![cfg(feature = "cli")]

mod common;

use common::Running;

use common::{bin, json_of};
use neurograph::observe::{BlackBox, EventKind, ObserveSettings};
use neurograph::prelude::*;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A long run with extra flags, stdout discarded, stderr piped.
fn long_run(extra: &[&str]) -> Running {
    let child = bin()
        .args(["run", "--tokens", "3000", "--ticks", "1000000", "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running(child)
}

/// Reads stderr in a thread until a line starts with `prefix`; returns the rest
/// of that line, or `None` if stderr ended first. The thread keeps draining
/// stderr afterwards.
fn wait_for_line(child: &mut Child, prefix: &'static str) -> Option<String> {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(line) => Some(line),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(_) => panic!("no stderr line starting with {prefix:?} within 120 s"),
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// `name{labels}` → value, from the Prometheus text format.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn puffin_server_streams_one_frame_per_tick_with_system_and_chunk_scopes() {
    // Port 0: the server names the port it bound.
    let mut run = long_run(&["--puffin", "127.0.0.1:0"]);
    let line =
        wait_for_line(&mut run.0, "puffin: serving frames on ").expect("the puffin server starts");
    let addr = line.split(';').next().unwrap().to_string();
    // Our stream speaks puffin_http's protocol version.
    assert_eq!(
        neurograph::observe::puffin_stream::PROTOCOL_VERSION,
        puffin_http::PROTOCOL_VERSION
    );
    let mut stream = TcpStream::connect(&addr).expect("the puffin server accepts a client");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut scopes = std::collections::BTreeSet::new();
    let mut threads = std::collections::BTreeSet::new();
    let mut indices = Vec::new();
    for _ in 0..4 {
        // A message: the protocol version, then one frame.
        let mut version = [0u8; 2];
        stream.read_exact(&mut version).unwrap();
        assert_eq!(u16::from_le_bytes(version), puffin_http::PROTOCOL_VERSION);
        let frame = puffin::FrameData::read_next(&mut stream)
            .expect("a puffin frame")
            .expect("the stream goes on");
        indices.push(frame.frame_index());
        for s in &frame.scope_delta {
            scopes.insert(s.function_name.to_string());
            if let Some(n) = &s.scope_name {
                scopes.insert(n.to_string());
            }
        }
        let unpacked = frame.unpacked().expect("the frame unpacks");
        threads.extend(unpacked.thread_streams.keys().map(|t| t.name.clone()));
    }
    assert!(
        indices.windows(2).all(|w| w[1] > w[0]),
        "frames arrive in order: {indices:?}"
    );
    for want in ["ingest", "forces", "integrate", "observe", "force_chunk"] {
        assert!(
            scopes.iter().any(|s| s.contains(want)),
            "no scope named like {want:?} in {scopes:?}"
        );
    }
    assert!(
        threads.iter().any(|t| t.starts_with("neurograph-compute")),
        "the rayon workers report their chunk scopes: {threads:?}"
    );
}

#[test]
fn metrics_endpoint_serves_moving_figures_health_and_a_dump_on_sigusr1() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let bb = dir.path().join("box.jsonl");
    let mut run = long_run(&[
        "--wal",
        wal.to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
        "--blackbox",
        bb.to_str().unwrap(),
    ]);
    let url = wait_for_line(&mut run.0, "metrics: listening on http://")
        .expect("the metrics server starts");
    let addr = url.trim_end_matches("/metrics").to_string();

    // Wait for a few ticks, then scrape twice.
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let (code, body) = http_get(&addr, "/metrics");
        assert_eq!(code, 200);
        let s = samples(&body);
        if s.get("neurograph_tick").copied().unwrap_or(0.0) >= 12.0 {
            break (body, s);
        }
        assert!(Instant::now() < deadline, "no tick reached 12: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (body, a) = first;
    for name in neurograph::observe::metrics::ALL.iter().map(|m| m.name) {
        if name == neurograph::observe::metrics::WAL_FSYNC_SECONDS {
            continue; // only once the first batch is synced; checked below
        }
        if name.starts_with("neurograph_gpu_") {
            continue; // only with the GPU backend (tests/gpu.rs)
        }
        // The TYPE line names exactly this metric (no prefix match).
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{body}"
        );
    }
    for label in [
        "neurograph_stage_seconds_count{stage=\"forces\"}",
        "neurograph_cdna_violations_total{kind=\"speed\"}",
        "neurograph_groups{level=\"1\"}",
    ] {
        assert!(a.contains_key(label), "{label} missing:\n{body}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body2) = http_get(&addr, "/metrics");
    let b = samples(&body2);
    for moving in [
        "neurograph_tick",
        "neurograph_ticks_total",
        "neurograph_tick_seconds_count",
        "neurograph_stage_seconds_count{stage=\"forces\"}",
        "neurograph_wal_records_total",
        "neurograph_wal_bytes_total",
    ] {
        assert!(
            b[moving] > a[moving],
            "{moving} did not move: {} then {}",
            a[moving],
            b[moving]
        );
    }
    assert!(b.contains_key("neurograph_wal_fsync_seconds_count"));
    assert_eq!(b["neurograph_tokens"], 3000.0);

    let (code, health) = http_get(&addr, "/health");
    assert_eq!(code, 200, "{health}");
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "ok");
    assert!(h["tick"].as_u64().unwrap() >= 12);
    assert_eq!(http_get(&addr, "/nope").0, 404);

    // SIGUSR1 dumps the black box while the run goes on.
    assert!(!bb.exists());
    let pid = run.0.id().to_string();
    // The shell's built-in `kill` (no procps needed).
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -USR1 {pid}")])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bb.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 wrote no black box");
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = BlackBox::read_dump(&bb).unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::Groups),
        "{events:?}"
    );
    assert!(run.0.try_wait().unwrap().is_none(), "the run goes on");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_tick_without_a_wal_exits_70_and_leaves_a_dump_and_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let bb = dir.path().join("box.jsonl");
    let trace = dir.path().join("trace.jsonl");
    let out = bin()
        .args(["run", "--tokens", "1500", "--ticks", "20", "--quiet"])
        .args(["--fault-panic-at", "7", "--trace-rate", "0"])
        .arg("--blackbox")
        .arg(&bb)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("tick 7 panicked: fault hook"), "{stderr}");
    assert!(stderr.contains("no recovery was tried"), "{stderr}");
    let events = BlackBox::read_dump(&bb).unwrap();
    let panic = events.iter().find(|e| e.kind == EventKind::Panic).unwrap();
    assert_eq!(panic.tick, 7);
    assert!(panic.message.contains("injected panic"));
    // The sampler keeps the panicking tick (the panic is logged as an error
    // inside its span), and nothing else at rate 0.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["tick"] == 7 && l["keep"] == "error"));
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "event" && l["target"] == "neurograph::panic")
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_tick_with_a_wal_recovers_to_the_digest_of_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = |wal: &str, extra: &[&str]| {
        bin()
            .args([
                "run", "--tokens", "1500", "--ticks", "25", "--quiet", "--json",
            ])
            .arg("--wal")
            .arg(dir.path().join(wal))
            .args(extra)
            .output()
            .unwrap()
    };
    let clean = json_of(&run("clean", &[]));
    let bb = dir.path().join("box.jsonl");
    let faulty = json_of(&run(
        "faulty",
        &["--fault-panic-at", "13", "--blackbox", bb.to_str().unwrap()],
    ));
    assert_eq!(faulty["digest"], clean["digest"]);
    assert_eq!(faulty["final_tick"], 25);
    assert_eq!(faulty["panics"], 1);
    assert_eq!(faulty["recoveries"], 1);
    let events = BlackBox::read_dump(&bb).unwrap();
    let kinds: Vec<(EventKind, u64)> = events.iter().map(|e| (e.kind, e.tick)).collect();
    let p = kinds
        .iter()
        .position(|k| *k == (EventKind::Panic, 13))
        .unwrap();
    let r = kinds
        .iter()
        .position(|k| *k == (EventKind::Recovery, 12))
        .unwrap();
    assert!(p < r, "{kinds:?}");

    // With no retries allowed, the same fault ends the run with code 70.
    let out = run(
        "no-retry",
        &["--fault-panic-at", "13", "--panic-retries", "0"],
    );
    assert_eq!(out.status.code(), Some(70));
}

#[test]
fn the_trace_rate_comes_from_the_cdna() {
    let dir = tempfile::tempdir().unwrap();
    let toml = String::from_utf8(bin().args(["cdna"]).output().unwrap().stdout).unwrap();
    assert!(toml.contains("trace_sample_rate = 0.01"));
    let cdna = dir.path().join("cdna.toml");
    std::fs::write(
        &cdna,
        // The checksum goes with the edit (the file says so when it is left in).
        toml.lines()
            .filter(|l| !l.starts_with("checksum"))
            .map(|l| l.replace("trace_sample_rate = 0.01", "trace_sample_rate = 1.0") + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let trace = dir.path().join("t.jsonl");
    let summary = json_of(
        &bin()
            .args([
                "run", "--tokens", "1500", "--ticks", "12", "--quiet", "--json",
            ])
            .arg("--cdna")
            .arg(&cdna)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap(),
    );
    assert_eq!(summary["trace"]["ticks"], 12);
    assert_eq!(summary["trace"]["kept_sampled"], 12);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ticks: Vec<u64> = lines
        .iter()
        .filter(|l| l["name"] == "tick")
        .map(|l| l["tick"].as_u64().unwrap())
        .collect();
    assert_eq!(ticks, (1..=12).collect::<Vec<_>>());
    let tick5 = lines
        .iter()
        .find(|l| l["name"] == "tick" && l["tick"] == 5)
        .unwrap();
    assert_eq!(tick5["fields"]["tokens"], 1500);
    for system in [
        "ingest",
        "forces",
        "integrate",
        "constrain_tokens",
        "learn",
        "organize",
        "journal",
        "observe",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["tick"] == 5 && l["name"] == system && l["parent"] == "tick"),
            "no {system} span in tick 5"
        );
    }
}

fn small_sim() -> Simulation {
    common::scenario_sim("clusters", 800, 3, 2)
}

#[test]
fn embedders_get_the_metrics_through_their_own_recorder() {
    let recorder = neurograph::observe::metrics::prometheus_recorder();
    let handle = recorder.handle();
    let mut sim = small_sim();
    metrics::with_local_recorder(&recorder, || sim.run(5));
    let s = samples(&handle.render());
    assert_eq!(s["neurograph_tick"], 5.0);
    assert_eq!(s["neurograph_ticks_total"], 5.0);
    assert_eq!(s["neurograph_tokens"], 800.0);
    assert_eq!(s["neurograph_stage_seconds_count{stage=\"forces\"}"], 5.0);
    assert!(s["neurograph_tick_seconds_sum"] > 0.0);

    // Switched off, the stage emits nothing.
    let recorder = neurograph::observe::metrics::prometheus_recorder();
    let handle = recorder.handle();
    let mut sim = small_sim();
    sim.world_mut().insert_resource(ObserveSettings {
        metrics: false,
        black_box: true,
        ..Default::default()
    });
    metrics::with_local_recorder(&recorder, || sim.run(3));
    assert!(!handle.render().contains("neurograph_tick"));
}

#[test]
fn the_black_box_records_refused_commands_and_new_constitutions() {
    let mut sim = small_sim();
    sim.submit(SimCommand::Despawn(TokenId(999_999)));
    sim.step();
    let mut cdna = sim.cdna().clone();
    cdna.physics.damping *= 0.5;
    let version = cdna.version + 1;
    sim.submit(SimCommand::UpdateCdna(Box::new(cdna)));
    sim.run(2);
    let bb = sim.world().resource::<BlackBox>();
    let refused: Vec<_> = bb
        .events()
        .filter(|e| e.kind == EventKind::CommandRefused)
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", bb.events().collect::<Vec<_>>());
    assert_eq!(refused[0].tick, 1);
    assert!(
        refused[0].message.starts_with("despawn: "),
        "{}",
        refused[0].message
    );
    assert!(
        refused[0].message.contains("999999"),
        "{}",
        refused[0].message
    );
    let cdna = bb.events().find(|e| e.kind == EventKind::Cdna).unwrap();
    assert_eq!(cdna.tick, 2);
    assert!(
        cdna.message.contains(&format!("version {version} ")),
        "{}",
        cdna.message
    );
}

#[test]
fn observing_changes_nothing_in_the_state() {
    use tracing_subscriber::layer::SubscriberExt;
    let mut bare = small_sim();
    bare.world_mut().insert_resource(ObserveSettings {
        metrics: false,
        black_box: false,
        ..Default::default()
    });
    bare.run(15);
    let mut watched = small_sim();
    let (layer, handle) = neurograph::observe::sampling_layer(Box::new(std::io::sink()), 1.0, None);
    let recorder = neurograph::observe::metrics::prometheus_recorder();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        metrics::with_local_recorder(&recorder, || watched.run(15));
    });
    assert_eq!(handle.stats().kept(), 15);
    assert_eq!(watched.digest(), bare.digest());
}

#[test]
fn a_panic_on_a_rayon_worker_keeps_its_tick_in_the_trace() {
    use bevy_ecs::prelude::*;
    use neurograph::schedule::{ComputePool, SimSystems, SimTick};
    use tracing_subscriber::layer::SubscriberExt;
    fn worker_panics(pool: Res<ComputePool>, clock: Res<neurograph::schedule::SimClock>) {
        if clock.tick == 3 {
            pool.0
                .install(|| rayon::join(|| panic!("a worker fails"), || ()));
        }
    }
    let mut sim = small_sim();
    sim.app_mut()
        .add_systems(SimTick, worker_panics.in_set(SimSystems::Integrate));
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let (layer, handle) = neurograph::observe::sampling_layer(Box::new(sink.clone()), 0.0, None);
    let caught =
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            sim.run(2);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step()))
        });
    assert!(caught.is_err(), "tick 3 panics");
    assert_eq!(handle.stats().kept_error, 1);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["tick"] == 3 && l["keep"] == "error"));
    let ev = lines
        .iter()
        .find(|l| l["target"] == "neurograph::panic")
        .expect("the panic is logged in the tick");
    assert_eq!(ev["fields"]["panic"], "a worker fails");
}

#[cfg(feature = "fault-injection")]
#[test]
fn after_a_recovery_the_counters_count_each_tick_and_record_once() {
    use neurograph::app::runner::{RunConfig, RunOptions, run_keep};
    use neurograph::observe::FaultHook;
    let dir = tempfile::tempdir().unwrap();
    let recorder = neurograph::observe::metrics::prometheus_recorder();
    let handle = recorder.handle();
    let opts = RunOptions {
        config: RunConfig {
            tokens: Some(1500),
            ticks: Some(25),
            ..Default::default()
        },
        wal_dir: Some(dir.path().join("wal")),
        fault: Some(FaultHook::panic_at(13)),
        ..Default::default()
    };
    let (summary, _) = metrics::with_local_recorder(&recorder, || run_keep(&opts)).unwrap();
    assert_eq!((summary.panics, summary.recoveries), (1, 1));
    let s = samples(&handle.render());
    // Ticks 1–12, then 13–25 after the recovery; the 12 replayed ticks emit nothing.
    assert_eq!(s["neurograph_ticks_total"], 25.0);
    assert_eq!(s["neurograph_tick"], 25.0);
    assert_eq!(s["neurograph_panics_total"], 1.0);
    assert_eq!(s["neurograph_recoveries_total"], 1.0);
    // 12 records by the first writer and 13 by the second: neither lost nor
    // counted twice.
    assert_eq!(s["neurograph_wal_records_total"], 25.0);
    assert!(s["neurograph_wal_bytes_total"] > 0.0);
}
