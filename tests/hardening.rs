//! Failures people running simulators, journals and exporters have reported,
//! each as the example that found it and its variants: a closed stdout, hostile
//! scrapers and viewers, an input named by another path, coordinates far from
//! the origin, output paths checked only after the work, and a duplicated WAL
//! record.
#![cfg(feature = "cli")]

mod common;

use common::Running;

use common::{bin, last_json};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Held while a child is forked: a child forked by another test thread would
/// inherit, until it execs, the read end of the pipe the closed-stdout test
/// has just made (and closed), so that test makes its pipe under it.
static SPAWN: std::sync::Mutex<()> = std::sync::Mutex::new(());

trait Locked {
    /// `spawn`, with no other test forking meanwhile.
    fn locked_spawn(&mut self) -> Child;
    /// `output`, forked with no other test forking meanwhile.
    fn locked_output(&mut self) -> Output;
}

impl Locked for Command {
    fn locked_spawn(&mut self) -> Child {
        let _g = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        self.spawn().expect("the binary starts")
    }

    fn locked_output(&mut self) -> Output {
        self.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.locked_spawn()
            .wait_with_output()
            .expect("the child ends")
    }
}

fn ok(args: &[&str], dir: &Path) -> Output {
    let out = bin().args(args).current_dir(dir).locked_output();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for `child` at most `limit`; `None` if it is still running.
fn wait_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A WAL of a short run in `dir/w`.
fn small_wal(dir: &Path) -> PathBuf {
    ok(
        &[
            "run", "--tokens", "400", "--ticks", "30", "--wal", "w", "--quiet",
        ],
        dir,
    );
    dir.join("w")
}

// 1. A closed stdout.

#[test]
fn every_command_ends_cleanly_with_141_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    small_wal(dir.path());
    let commands: [&[&str]; 8] = [
        &["cdna"],
        &["scenarios"],
        &["inspect", "--wal", "w"],
        &["inspect", "--wal", "w", "--tree"],
        &["recover", "--wal", "w"],
        &["generate", "--tokens", "50", "--out", "g.csv"],
        &["run", "--tokens", "300", "--ticks", "5", "--quiet"],
        &[
            "plot", "--out", "p.png", "--tokens", "300", "--ticks", "5", "--quiet",
        ],
    ];
    for args in commands {
        // The reader is gone before the command starts: its pipe's read end
        // is closed before the spawn (closing it after would race with a
        // child that writes before this thread runs again), and no other
        // test forks while it exists.
        let guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = bin()
            .args(args)
            .current_dir(dir.path())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        drop(guard);
        let out = child.wait_with_output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            !err.contains("Broken pipe"),
            "{args:?} says nothing about it: {err}"
        );
    }
}

#[test]
fn a_run_reporting_durable_ticks_stops_cleanly_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Running(
        bin()
            .args([
                "run",
                "--tokens",
                "500",
                "--ticks",
                "100000000",
                "--wal",
                "w",
                "--report-durable",
                "--quiet",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .locked_spawn(),
    );
    // Read a few reports, then go away as `head -3` does.
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut last = 0u64;
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        last = line.strip_prefix("durable ").unwrap().parse().unwrap();
    }
    drop(lines);
    let status = wait_within(&mut child.0, Duration::from_secs(60))
        .expect("the run stops once nobody reads its reports");
    assert_eq!(status.code(), Some(141));
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "it stops quietly: {err}");
    // Nothing promised is lost: the WAL recovers, with a clean tail, past the
    // last durable tick reported.
    let out = ok(&["recover", "--wal", "w", "--json"], dir.path());
    let report = last_json(&String::from_utf8_lossy(&out.stdout));
    assert!(report["tick"].as_u64().unwrap() >= last, "{report}");
    assert!(report["tail"].is_null(), "{report}");
}

#[test]
fn a_closed_stderr_loses_the_lines_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args([
            "run",
            "--tokens",
            "300",
            "--ticks",
            "20",
            "--puffin",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--blackbox",
            "bb.jsonl",
            "--json",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .locked_spawn();
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["final_tick"],
        20
    );
    assert!(dir.path().join("bb.jsonl").is_file());
}

// 2. Hostile clients of the servers a run opens.

/// Starts a run with `flags`; returns it and the address named on the stderr
/// line starting with `prefix` (stderr is drained afterwards).
fn serving(flags: &[&str], ticks: &str, prefix: &'static str) -> (Running, String) {
    let mut child = Running(
        bin()
            .args(["run", "--tokens", "3000", "--ticks", ticks, "--quiet"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .locked_spawn(),
    );
    let err = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the server starts");
    let addr = rest
        .trim_start_matches("http://")
        .split(['/', ';', ' '])
        .next()
        .unwrap()
        .to_string();
    (child, addr)
}

/// `GET path` over HTTP/1.0; the status code, or an error after `timeout`.
fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))
}

/// A client that pipelines `n` scrapes on one connection and never reads.
fn non_reader(addr: &str, n: usize) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        for _ in 0..n {
            if write!(w, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").is_err() {
                break;
            }
        }
    });
    s
}

#[test]
fn a_non_reading_or_half_sending_scraper_stalls_no_one_and_the_run_ends_on_time() {
    // A run that ends by itself while the hostile clients are still connected.
    let start = Instant::now();
    let (mut run, addr) = serving(
        &["--metrics", "127.0.0.1:0"],
        "2000",
        "metrics: listening on ",
    );
    let _pipeliner = non_reader(&addr, 300);
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // 50 parallel scrapes, each answered within a second.
    let scrapes: Vec<_> = (0..50)
        .map(|i| {
            let addr = addr.clone();
            let path = if i % 2 == 0 { "/health" } else { "/metrics" };
            std::thread::spawn(move || {
                let t = Instant::now();
                let code = get(&addr, path, Duration::from_secs(5));
                (code.map_err(|e| e.to_string()), t.elapsed())
            })
        })
        .collect();
    for s in scrapes {
        let (code, took) = s.join().unwrap();
        assert_eq!(code, Ok(200));
        assert!(took < Duration::from_secs(1), "a scrape took {took:?}");
    }
    // The run ends on its own, the clients still connected; how long alone it
    // takes is measured below, without them.
    let status = wait_within(&mut run.0, Duration::from_secs(120)).expect("the run ends");
    assert!(status.success());
    let with_clients = start.elapsed();
    let start = Instant::now();
    let (mut alone, _) = serving(
        &["--metrics", "127.0.0.1:0"],
        "2000",
        "metrics: listening on ",
    );
    wait_within(&mut alone.0, Duration::from_secs(120)).expect("the run ends");
    let without = start.elapsed();
    // On time: the clients cost it nothing like the lifetime of a connection
    // (the bug held the process until the client left). The margin absorbs the
    // noise of a loaded machine running the other tests.
    assert!(
        with_clients < without * 2 + Duration::from_secs(10),
        "with hostile clients the run took {with_clients:?}, alone {without:?}"
    );
}

#[test]
fn sigterm_ends_a_run_whose_scraper_never_reads() {
    let (mut run, addr) = serving(
        &["--metrics", "127.0.0.1:0"],
        "100000000",
        "metrics: listening on ",
    );
    let _pipeliner = non_reader(&addr, 300);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&addr, "/health", Duration::from_secs(1)).unwrap(), 200);
    let pid = run.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .locked_output()
            .status
            .success()
    );
    let status = wait_within(&mut run.0, Duration::from_secs(20))
        .expect("SIGTERM ends the run although a client never reads");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn the_connection_bound_holds_and_frees_up() {
    let (_run, addr) = serving(
        &["--metrics", "127.0.0.1:0"],
        "100000000",
        "metrics: listening on ",
    );
    // Far more idle connections than the bound: those past it are closed at
    // once, those within it stay open, and the server keeps serving.
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert_eq!(idle.len(), 200);
    let closed = |s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        matches!((&*s).read(&mut [0u8; 1]), Ok(0))
    };
    assert!(
        !closed(&idle[0]),
        "a connection within the bound stays open"
    );
    assert!(closed(&idle[199]), "a connection past the bound is closed");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(get(&addr, "/health", Duration::from_secs(5)).unwrap(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_viewer_that_never_reads_and_too_many_viewers_do_not_hold_the_run() {
    let start = Instant::now();
    let (mut run, addr) = serving(
        &["--puffin", "127.0.0.1:0"],
        "2000",
        "puffin: serving frames on ",
    );
    // One viewer that never reads, and more viewers than the server takes.
    let viewers: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(viewers.len() > neurograph::observe::puffin_stream::MAX_CLIENTS);
    // A viewer past the bound is closed: its read ends at once, with nothing.
    let mut last = viewers.last().unwrap().try_clone().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        last.read(&mut buf).unwrap_or(0),
        0,
        "a viewer past the bound is closed"
    );
    let status = wait_within(&mut run.0, Duration::from_secs(120))
        .expect("the run ends while its viewers do not read");
    assert!(status.success());
    assert!(start.elapsed() < Duration::from_secs(120));
    drop(viewers);
}

// 3. The same input named by another path.

#[test]
fn an_input_is_the_same_by_content_whatever_path_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["generate", "--tokens", "400", "--out", "base.csv"], d);
    ok(
        &[
            "run", "--input", "base.csv", "--ticks", "30", "--wal", "w", "--quiet",
        ],
        d,
    );
    let out = ok(
        &[
            "run",
            "--input",
            "./base.csv",
            "--ticks",
            "60",
            "--wal",
            "w",
            "--json",
            "--quiet",
        ],
        d,
    );
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["final_tick"],
        60
    );
    let absolute = d.join("base.csv");
    ok(
        &[
            "run",
            "--input",
            absolute.to_str().unwrap(),
            "--ticks",
            "70",
            "--wal",
            "w",
            "--quiet",
        ],
        d,
    );
    // Another file under the same name is still another run, named by its hash.
    let text = std::fs::read_to_string(d.join("base.csv")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.truncate(lines.len() - 1);
    std::fs::write(d.join("base.csv"), lines.join("\n") + "\n").unwrap();
    let out = bin()
        .args(["run", "--input", "base.csv", "--ticks", "90", "--wal", "w"])
        .current_dir(d)
        .locked_output();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("input_xxh3: the WAL has ") && err.contains("(from base.csv), this run has "),
        "{err}"
    );
    assert!(
        err.contains("(from base.csv): not the same content"),
        "{err}"
    );
}

#[test]
fn a_run_never_writes_over_its_own_inputs_or_into_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["generate", "--tokens", "100", "--out", "in.csv"], d);
    let before = std::fs::read(d.join("in.csv")).unwrap();
    small_wal(d);
    std::fs::write(d.join("c.toml"), "input = \"in.csv\"\nticks = 3\n").unwrap();
    for (args, says) in [
        (
            vec!["run", "--input", "in.csv", "--trace", "./in.csv"],
            "--trace ./in.csv is the file --input in.csv reads",
        ),
        (
            vec!["run", "--input", "./in.csv", "--blackbox", "in.csv"],
            "--blackbox in.csv is the file --input ./in.csv reads",
        ),
        (
            vec!["run", "--wal", "w", "--blackbox", "./w/bb.jsonl"],
            "the WAL directory w holds only the WAL's files",
        ),
        (
            vec!["run", "--trace", "t.jsonl", "--blackbox", "./t.jsonl"],
            "--trace and --blackbox are both",
        ),
        (
            vec!["run", "--config", "c.toml", "--trace", "in.csv"],
            "--trace in.csv is the file the config's input in.csv reads",
        ),
        (
            vec!["run", "--config", "c.toml", "--blackbox", "./in.csv"],
            "--blackbox ./in.csv is the file the config's input in.csv reads",
        ),
    ] {
        let out = bin().args(&args).current_dir(d).locked_output();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read(d.join("in.csv")).unwrap(), before);
    // A refused run leaves an existing trace file as it was: the trace is
    // created at the first kept tick, after every check.
    std::fs::write(d.join("t.jsonl"), "keep").unwrap();
    let out = bin()
        .args([
            "run", "--tokens", "400", "--wal", "w", "--seed", "7", "--trace", "t.jsonl",
        ])
        .current_dir(d)
        .locked_output();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("another run"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(std::fs::read_to_string(d.join("t.jsonl")).unwrap(), "keep");
    // Devices and links are written through, not replaced.
    ok(&["generate", "--tokens", "10", "--out", "/dev/null"], d);
    assert!(!neurograph::app::paths::is_plain_file(Path::new(
        "/dev/null"
    )));
}

// 4. Coordinates far from the origin.

/// Writes `rows` of a scenario CSV with every coordinate moved by `offset`.
fn translated(rows: &str, offset: f64) -> String {
    let mut out = String::new();
    for (i, line) in rows.lines().enumerate() {
        if i == 0 {
            out.push_str(line);
        } else {
            let cells: Vec<String> = line
                .split(',')
                .enumerate()
                .map(|(k, c)| {
                    if k < 8 {
                        format!("{}", c.parse::<f64>().unwrap() + offset)
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            out.push_str(&cells.join(","));
        }
        out.push('\n');
    }
    out
}

#[test]
fn a_structure_gives_the_same_links_groups_and_neighbours_anywhere_inside_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["generate", "--tokens", "300", "--out", "base.csv"], d);
    let base = std::fs::read_to_string(d.join("base.csv")).unwrap();
    let extent = base
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .take(8)
                .map(|c| c.parse::<f64>().unwrap().abs())
        })
        .fold(0.0, f64::max);
    // The default CDNA with the widest bounds its smallest radius allows.
    let cdna = String::from_utf8(ok(&["cdna"], d).stdout).unwrap();
    let reach = neurograph::model::cdna::Cdna::MAX_BOUND_PER_RADIUS * 0.5;
    assert_eq!(reach, 1024.0);
    let cdna: String = cdna
        .lines()
        .filter(|l| !l.starts_with("checksum"))
        .map(|l| {
            if l.starts_with("min = ") {
                format!("min = [{}]", vec![format!("{:.1}", -reach); 8].join(", "))
            } else if l.starts_with("max = ") {
                format!("max = [{}]", vec![format!("{reach:.1}"); 8].join(", "))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join("wide.toml"), cdna).unwrap();
    let offset = (f64::from(reach) - extent - 2.0).floor();
    assert!(offset > 900.0, "{offset}");
    std::fs::write(d.join("far.csv"), translated(&base, offset)).unwrap();
    let summary = |input: &str| {
        let out = ok(
            &[
                "run",
                "--input",
                input,
                "--cdna",
                "wide.toml",
                "--ticks",
                "300",
                "--json",
                "--quiet",
            ],
            d,
        );
        last_json(&String::from_utf8_lossy(&out.stdout))
    };
    let (here, far) = (summary("base.csv"), summary("far.csv"));
    for key in [
        "links",
        "groups_per_level",
        "avg_neighbors",
        "cdna_violations",
        "ari_level1",
    ] {
        assert_eq!(
            here[key], far[key],
            "{key}: at the origin {here}, at {offset} {far}"
        );
    }
    assert!(here["links"].as_u64().unwrap() > 300, "{here}");

    // Bounds farther out are refused, naming the value and the limit.
    let cdna = std::fs::read_to_string(d.join("wide.toml"))
        .unwrap()
        .replace("max = [1024.0,", "max = [100000.0,");
    std::fs::write(d.join("far.toml"), cdna).unwrap();
    let out = bin()
        .args(["run", "--input", "base.csv", "--cdna", "far.toml"])
        .current_dir(d)
        .locked_output();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "dimensions.max[0] (physical) = 100000: must be within ±1024 (2048 × field.min_radius = 0.5)"
        ),
        "{err}"
    );
    // And so are tokens beyond the bounds.
    let far_rows = translated(&base, 100_000.0);
    std::fs::write(d.join("farther.csv"), far_rows).unwrap();
    let out = bin()
        .args(["run", "--input", "farther.csv"])
        .current_dir(d)
        .locked_output();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("must be a finite number in [-1000, 1000]"),
        "{err}"
    );
}

// 5. Output paths checked before any work.

#[test]
fn output_paths_are_checked_before_any_work_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("file"), "x").unwrap();
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "plot",
                "--out",
                "no_such_dir/x.png",
                "--tokens",
                "5000",
                "--ticks",
                "100",
            ],
            "error: no_such_dir/x.png: the directory no_such_dir does not exist",
        ),
        (
            &["plot", "--out", "x", "--tokens", "5000", "--ticks", "100"],
            "error: x: unknown format: the file name must end in .png",
        ),
        (
            &["plot", "--out", "x.png", "--width", "0", "--tokens", "5000"],
            "error: image size 0×900: each side must be in 16..=16384 pixels",
        ),
        (
            &["plot", "--out", ".", "--tokens", "5000"],
            "unknown format",
        ),
        (
            &["generate", "--tokens", "1000", "--out", "no_such_dir/g.csv"],
            "error: no_such_dir/g.csv: the directory no_such_dir does not exist",
        ),
        (
            &[
                "run",
                "--tokens",
                "5000",
                "--blackbox",
                "no_such_dir/bb.jsonl",
            ],
            "--blackbox no_such_dir/bb.jsonl: the directory no_such_dir does not exist",
        ),
        (
            &["run", "--tokens", "5000", "--trace", "no_such_dir/t.jsonl"],
            "--trace no_such_dir/t.jsonl: the directory no_such_dir does not exist",
        ),
        (
            &["run", "--tokens", "5000", "--wal", "file/w"],
            "error: file/w: file is not a directory",
        ),
        (
            &["run", "--tokens", "5000", "--trace", "file/t.jsonl"],
            "--trace file/t.jsonl: file is not a directory",
        ),
    ];
    for (args, says) in cases {
        let t = Instant::now();
        let out = bin().args(args).current_dir(d).locked_output();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        for debug in ["Os {", "kind:", "Error(", "IoError"] {
            assert!(!err.contains(debug), "{args:?}: no Debug formatting: {err}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?}: refused before simulating ({:?})",
            t.elapsed()
        );
    }
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "nothing written");
}

// 6. A duplicated WAL record.

#[test]
fn a_record_appended_twice_is_named_by_inspect_and_recover_and_resumed_past() {
    use neurograph::wal::format;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        &[
            "run",
            "--tokens",
            "400",
            "--ticks",
            "30",
            "--wal",
            "w",
            "--snapshot-every",
            "0",
            "--quiet",
        ],
        d,
    );
    let seg = std::fs::read_dir(d.join("w"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let last = *format::scan_records(&bytes).records.last().unwrap();
    assert_eq!(last.tick, 30);
    let (from, to) = (last.offset, last.offset + last.frame_len());
    let mut twice = bytes.clone();
    twice.extend_from_slice(&bytes[from..to]);
    std::fs::write(&seg, &twice).unwrap();

    let inspect = String::from_utf8(ok(&["inspect", "--wal", "w"], d).stdout).unwrap();
    let named = format!(
        "a duplicate of tick 30 at byte {to} (the same bytes as the record at byte {from})"
    );
    assert!(inspect.contains(&named), "{inspect}");
    let recover = String::from_utf8(ok(&["recover", "--wal", "w"], d).stdout).unwrap();
    assert!(recover.contains("recovered tick 30"), "{recover}");
    assert!(recover.contains(&named), "{recover}");
    assert!(
        recover.contains(&format!(
            "cut {} bytes at byte {to} (exact duplicates of tick 30 at the tail)",
            to - from
        )),
        "{recover}"
    );
    // Resuming cuts the copy and goes on.
    let out = ok(
        &[
            "run",
            "--tokens",
            "400",
            "--ticks",
            "40",
            "--wal",
            "w",
            "--snapshot-every",
            "0",
            "--json",
            "--quiet",
        ],
        d,
    );
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["final_tick"],
        40
    );
    let inspect = String::from_utf8(ok(&["inspect", "--wal", "w"], d).stdout).unwrap();
    assert!(!inspect.contains("duplicate"), "{inspect}");
    assert!(inspect.contains("..=40 journaled"), "{inspect}");
}

// Found by attacking the CLI with bad inputs.

#[test]
fn wal_files_without_a_manifest_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_wal(d);
    std::fs::remove_file(d.join("w/manifest.json")).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(d.join("w"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let out = bin()
        .args([
            "run", "--tokens", "400", "--ticks", "10", "--wal", "w", "--seed", "2",
        ])
        .current_dir(d)
        .locked_output();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "holds WAL files but no manifest.json, and more than a crashed creation leaves"
        ),
        "{err}"
    );
    for (p, bytes) in before {
        assert_eq!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{} unchanged",
            p.display()
        );
    }
    // Files that only look like a WAL's are not leftovers either.
    std::fs::create_dir(d.join("u")).unwrap();
    std::fs::write(d.join("u/wal-00000000000000000001.seg"), "precious").unwrap();
    std::fs::write(d.join("u/snap-00000000000000000000.snap"), "precious").unwrap();
    let out = bin()
        .args(["run", "--tokens", "50", "--ticks", "5", "--wal", "u"])
        .current_dir(d)
        .locked_output();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(d.join("u/wal-00000000000000000001.seg")).unwrap(),
        b"precious"
    );
    assert_eq!(
        std::fs::read(d.join("u/snap-00000000000000000000.snap")).unwrap(),
        b"precious"
    );
}

#[test]
fn conflicting_options_are_refused_not_silently_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["generate", "--tokens", "100", "--out", "x.csv"], d);
    std::fs::write(d.join("c.toml"), ok(&["cdna"], d).stdout).unwrap();
    for args in [
        &["run", "--cdna", "c.toml", "--profile", "explorer"][..],
        &["run", "--input", "x.csv", "--tokens", "10"],
        &["run", "--input", "x.csv", "--scenario", "uniform"],
        &["cdna", "--profile", "explorer", "--check", "c.toml"],
    ] {
        let out = bin().args(args).current_dir(d).locked_output();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("cannot be used with"), "{args:?}");
    }
    std::fs::write(
        d.join("both.toml"),
        "cdna = \"c.toml\"\nprofile = \"explorer\"\n",
    )
    .unwrap();
    let out = bin()
        .args([
            "run",
            "--config",
            "both.toml",
            "--tokens",
            "50",
            "--ticks",
            "1",
        ])
        .current_dir(d)
        .locked_output();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("give either cdna (c.toml) or profile (explorer), not both"),
        "{err}"
    );
    // A flag replaces the config file's choice instead of clashing with it.
    let out = ok(
        &[
            "run",
            "--config",
            "both.toml",
            "--profile",
            "analyst",
            "--tokens",
            "50",
            "--ticks",
            "1",
            "--json",
        ],
        d,
    );
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["cdna_profile"],
        "analyst"
    );
}

#[test]
fn bad_settings_are_named_as_such_not_blamed_on_a_wal_or_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_wal(d);
    for (args, says) in [
        (
            &["recover", "--wal", "w", "--threads", "100000"][..],
            "threads = 100000: must be at most 1024",
        ),
        (
            &[
                "run",
                "--tokens",
                "400",
                "--ticks",
                "40",
                "--wal",
                "w",
                "--threads",
                "5000",
            ],
            "sim.threads = 5000: must be at most 1024",
        ),
        (
            &["inspect", "--wal", "no_such_wal"],
            "no_such_wal: no such directory",
        ),
        (
            &["run", "--input", "/dev/zero", "--ticks", "1"],
            "/dev/zero: line 1: a line is longer than 65536 bytes",
        ),
        (
            &["run", "--input", ".", "--ticks", "1"],
            ".: is a directory, not a CSV file",
        ),
        (
            &[
                "generate",
                "--tokens",
                "18446744073709551615",
                "--out",
                "g.csv",
            ],
            "--tokens 18446744073709551615: must be at most 10000000",
        ),
        (
            &[
                "bench",
                "steady",
                "--tokens",
                "18446744073709551615",
                "--ticks",
                "10",
            ],
            "18446744073709551615 requested > max_tokens = 10000000",
        ),
        (
            &["bench", "spawn", "--tokens", "0"],
            "--tokens must be at least 1",
        ),
        (
            &["bench", "spawn", "--tokens", "18446744073709551615"],
            "18446744073709551615 requested > max_tokens = 10000000",
        ),
    ] {
        let out = bin().args(args).current_dir(d).locked_output();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("snapshot"), "{args:?}: {err}");
    }
    // A quota refusal names the input's whole count, not how many fitted.
    ok(&["generate", "--tokens", "100", "--out", "x.csv"], d);
    std::fs::write(d.join("q.toml"), "[quotas]\nmax_tokens = 50\n").unwrap();
    let out = bin()
        .args(["run", "--config", "q.toml", "--input", "x.csv"])
        .current_dir(d)
        .locked_output();
    let err = stderr_of(&out);
    assert!(
        err.contains("0 live + 100 requested > max_tokens = 50"),
        "{err}"
    );
    // Asking for a tick the WAL has passed says so.
    let out = ok(
        &["run", "--tokens", "400", "--ticks", "10", "--wal", "w"],
        d,
    );
    assert!(
        stderr_of(&out).contains("nothing to run: the WAL is at tick 30"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn generate_writes_its_file_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = Running(
        bin()
            .args(["generate", "--tokens", "9000000", "--out", "big.csv"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .locked_spawn(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .locked_output()
            .status
            .success()
    );
    let status = wait_within(&mut child.0, Duration::from_secs(30)).expect("generate stops");
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
    assert!(
        left.is_empty(),
        "no file, whole or partial, is left: {left:?}"
    );
}

#[test]
fn a_black_box_that_cannot_be_written_fails_the_run_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let mut child = Running(
        bin()
            .args([
                "run",
                "--tokens",
                "300",
                "--ticks",
                "100000000",
                "--quiet",
                "--blackbox",
                "out/bb.jsonl",
            ])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .locked_spawn(),
    );
    std::thread::sleep(Duration::from_millis(800));
    // The directory checked at the start goes away during the run.
    std::fs::remove_dir(d.join("out")).unwrap();
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .locked_output()
            .status
            .success()
    );
    let status = wait_within(&mut child.0, Duration::from_secs(30)).expect("the run stops");
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: cannot write the black box (end) to out/bb.jsonl: ")),
        "{err}"
    );
}
