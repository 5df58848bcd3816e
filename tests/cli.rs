//! The `neurograph` binary: default run, JSON summary, and clear errors (never a panic).
#![cfg(feature = "cli")]

mod common;

use common::{bin, json_of, last_json};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ng-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[test]
fn json_summary_has_the_contract_keys() {
    let (code, out, err) = run(&[
        "run",
        "--tokens",
        "600",
        "--ticks",
        "5",
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    for key in [
        "tokens",
        "links",
        "ticks",
        "seconds",
        "ticks_per_s",
        "token_steps_per_s",
        "digest",
        "cdna_violations",
        "threads",
        "avg_neighbors",
    ] {
        assert!(j.get(key).is_some(), "missing {key} in {j}");
    }
    assert_eq!(j["tokens"], 600);
    assert_eq!(j["ticks"], 5);
    assert_eq!(j["threads"], 2);
    assert_eq!(j["scenario"], "clusters");
    let digest = j["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 16);
    assert!(u64::from_str_radix(digest, 16).is_ok());
    // Same inputs, another thread count: same digest.
    let (_, out1, _) = run(&[
        "run",
        "--tokens",
        "600",
        "--ticks",
        "5",
        "--threads",
        "1",
        "--json",
    ]);
    assert_eq!(last_json(&out1)["digest"], j["digest"]);
}

#[test]
fn text_summary_and_listing() {
    let (code, out, _) = run(&[
        "run",
        "--scenario",
        "uniform",
        "--tokens",
        "400",
        "--ticks",
        "3",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("token-steps/s") && out.contains("digest"),
        "{out}"
    );
    let (code, out, _) = run(&["scenarios"]);
    assert_eq!(code, 0);
    assert!(out.contains("clusters") && out.contains("uniform"));
    let (code, out, _) = run(&["cdna", "--profile", "explorer"]);
    assert_eq!(code, 0);
    assert!(out.contains("profile = \"explorer\"") && out.contains("checksum"));
}

#[test]
fn csv_input_runs_and_bad_rows_name_line_and_column() {
    let good = tmp(
        "good.csv",
        "x0,x1,x2,x3,x4,x5,x6,x7,charge,label\n0,0,0,0,0,0,0,0,1,a\n0.5,0,0,0,0,0,0,0,1,a\n9,9,9,9,9,9,9,9,-1,b\n",
    );
    let (code, out, err) = run(&[
        "run",
        "--input",
        good.to_str().unwrap(),
        "--ticks",
        "4",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    assert_eq!(j["tokens"], 3);
    assert_eq!(j["scenario"], "input");
    let bad = tmp(
        "bad.csv",
        "x0,x1,x2,x3,x4,x5,x6,x7\n0,0,0,0,0,0,0,0\n0,0,x,0,0,0,0,0\n",
    );
    let (code, _, err) = run(&["run", "--input", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 3, column 3 (x2)"), "{err}");
}

#[test]
fn bad_arguments_and_files_fail_cleanly() {
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["run".into(), "--scenario".into(), "nope".into()],
            "unknown scenario 'nope'",
        ),
        (
            vec!["run".into(), "--tokens".into(), "0".into()],
            "--tokens must be at least 1",
        ),
        (
            vec!["run".into(), "--tokens".into(), "50000000".into()],
            "token quota exceeded: 0 live + 50000000 requested > max_tokens = 10000000",
        ),
        (
            vec!["run".into(), "--tokens".into(), "2000000".into()],
            "memory budget exceeded",
        ),
        (
            vec!["run".into(), "--cdna".into(), "/nonexistent/c.toml".into()],
            "/nonexistent/c.toml",
        ),
        (
            vec!["run".into(), "--profile".into(), "wild".into()],
            "unknown CDNA profile 'wild'",
        ),
        (
            vec!["run".into(), "--input".into(), "/nonexistent.csv".into()],
            "/nonexistent.csv",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                tmp("c.toml", "ticks = -3\n").to_str().unwrap().into(),
            ],
            "ticks",
        ),
        (
            vec![
                "run".into(),
                "--config".into(),
                tmp("d.toml", "[sim]\ndt = 0.0\n").to_str().unwrap().into(),
            ],
            "sim.dt = 0",
        ),
        (
            vec![
                "run".into(),
                "--cdna".into(),
                tmp("e.toml", "[cdna]\nprofile = \"default\"\n")
                    .to_str()
                    .unwrap()
                    .into(),
            ],
            "missing field",
        ),
    ];
    for (args, needle) in cases {
        let out = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should contain {needle:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    let (code, _, err) = run(&["run", "--tokens", "many"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("invalid value 'many'"), "{err}");
}

#[test]
fn wal_run_recover_inspect_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let w = wal.to_str().unwrap();
    let base = ["run", "--tokens", "300", "--json", "--quiet", "--wal", w];
    let (code, out, err) = run(&[
        &base[..],
        &[
            "--ticks",
            "30",
            "--durability",
            "sync",
            "--snapshot-every",
            "8",
        ],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    let j = last_json(&out);
    for key in ["wal_bytes", "wal_fsyncs", "wal_records"] {
        assert!(j[key].as_u64().unwrap() > 0, "{key} in {j}");
    }
    assert_eq!(j["wal_records"], 30);
    // `sync`: one fsync per record at least.
    assert!(j["wal_fsyncs"].as_u64().unwrap() >= 30, "{j}");
    assert_eq!(j["wal_durability"], "sync");
    // Same digest as an unjournaled run.
    let (_, plain, _) = run(&["run", "--tokens", "300", "--ticks", "30", "--json"]);
    assert_eq!(j["digest"], last_json(&plain)["digest"]);

    let (code, out, err) = run(&["recover", "--wal", w, "--json"]);
    assert_eq!(code, 0, "{err}");
    let r = last_json(&out);
    for key in ["tick", "digest", "records_replayed", "bytes_dropped"] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert_eq!(r["tick"], 30);
    assert_eq!(r["digest"], j["digest"]);

    let (code, out, err) = run(&["inspect", "--wal", w]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ticks 1..=30 journaled"), "{out}");
    assert!(out.contains("snap-00000000000000000030.snap"), "{out}");

    // The same job resumes; the summary says from where.
    let (code, out, err) = run(&[&base[..], &["--ticks", "40"]].concat());
    assert_eq!(code, 0, "{err}");
    let k = last_json(&out);
    assert_eq!(
        (k["start_tick"].as_u64(), k["ticks"].as_u64()),
        (Some(30), Some(10))
    );
    let (_, plain, _) = run(&["run", "--tokens", "300", "--ticks", "40", "--json"]);
    assert_eq!(k["digest"], last_json(&plain)["digest"]);

    // Another job is refused, naming what differs; nothing changes on disk.
    let (code, _, err) = run(&[
        "run", "--tokens", "300", "--seed", "7", "--ticks", "50", "--wal", w,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("seed: the WAL has 42, this run has 7"),
        "{err}"
    );
    let (_, out, _) = run(&["recover", "--wal", w, "--json"]);
    assert_eq!(last_json(&out)["tick"], 40);

    // Bad values and missing WALs are clear errors.
    let (code, _, err) = run(&["run", "--wal", w, "--durability", "sometimes"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown durability 'sometimes'"), "{err}");
    let (code, _, err) = run(&["recover", "--wal", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a NeuroGraph WAL"), "{err}");
    // A directory with other files is not taken over.
    let (code, _, err) = run(&["run", "--ticks", "1", "--wal", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty and holds no WAL"), "{err}");
}

/// `bench spawn` times both ways of spawning the same tokens and reports the
/// ratio of its medians.
#[test]
fn bench_spawn_reports_both_rates() {
    let out = bin()
        .args([
            "bench",
            "spawn",
            "--tokens",
            "20000",
            "--repeats",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    let j = json_of(&out);
    assert_eq!(j["tokens"], 20000);
    for key in ["bevy_tokens_per_s", "engine_tokens_per_s"] {
        let rates = j[key].as_array().unwrap();
        assert_eq!(rates.len(), 3, "{key}");
        assert!(
            rates.iter().all(|r| r.as_f64().unwrap() > 1e4),
            "{key}: {rates:?}"
        );
    }
    let (bevy, engine) = (
        j["bevy_median"].as_f64().unwrap(),
        j["engine_median"].as_f64().unwrap(),
    );
    assert!((j["ratio"].as_f64().unwrap() - engine / bevy).abs() < 1e-9);
}
