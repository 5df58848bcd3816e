//! The runner's `Session` (the loop the Python bindings drive) against
//! `run_keep`, given tokens with their WAL identity, `Simulation::column`, and
//! the embeddings reduction (`app::embed`).
#![cfg(feature = "cli")]

use neurograph::app::embed;
use neurograph::app::runner::{GivenTokens, RunConfig, RunOptions, Session, run_keep};
use neurograph::model::commands::SimCommand;
use neurograph::model::components::{Position, TokenId};
use std::sync::Arc;

fn opts(ticks: u64) -> RunOptions {
    RunOptions {
        config: RunConfig {
            scenario: Some("clusters".into()),
            tokens: Some(800),
            seed: Some(5),
            ticks: Some(ticks),
            ..RunConfig::default()
        },
        ..RunOptions::default()
    }
}

#[test]
fn a_session_stepped_by_hand_ends_where_run_keep_does() {
    let (expected, _) = run_keep(&opts(25)).unwrap();
    let mut s = Session::open(opts(25)).unwrap();
    for _ in 0..25 {
        s.step().unwrap();
    }
    let mid = s.summary();
    let (summary, _) = s.close().unwrap();
    for got in [&mid, &summary] {
        assert_eq!(got.digest, expected.digest);
        assert_eq!(got.final_tick, 25);
        assert_eq!(got.ticks, 25);
        assert_eq!(got.groups_per_level, expected.groups_per_level);
        assert_eq!(got.ari_level1, expected.ari_level1);
        assert!(got.seconds > 0.0 && got.first_tick_seconds <= got.seconds);
    }
}

fn data(rows: usize, dims: usize, unit: f64) -> Vec<f64> {
    // Two separated clouds, deterministic.
    (0..rows * dims)
        .map(|k| {
            let (r, c) = (k / dims, k % dims);
            let base = if r % 2 == 0 { 0.0 } else { 5.0 };
            let jitter = ((r * 31 + c * 17) % 97) as f64 / 97.0;
            (base + jitter) * unit
        })
        .collect()
}

#[test]
fn the_reduction_does_not_depend_on_the_input_unit() {
    let a = embed::reduce(&data(300, 12, 1.0), 300, 12, None).unwrap();
    for unit in [0.5, 2.0, 1e-200, 1e200] {
        let b = embed::reduce(&data(300, 12, unit), 300, 12, None).unwrap();
        for (p, q) in a.points.iter().zip(&b.points) {
            assert!((*p - *q).length() < 1e-4, "unit {unit}: {p:?} vs {q:?}");
        }
        assert!((b.knn_median / unit / a.knn_median - 1.0).abs() < 1e-9);
    }
    assert!((a.knn_target - embed::KNN_TARGET).abs() < 1e-12);
    assert!(a.explained_variance > 0.5 && a.explained_variance <= 1.0 + 1e-12);
    // The first component separates the two clouds.
    let first: Vec<f32> = a.points.iter().map(|p| p.to_array()[0]).collect();
    assert!(
        first
            .iter()
            .step_by(2)
            .all(|v| v.signum() == first[0].signum())
    );
    assert!(
        first
            .iter()
            .skip(1)
            .step_by(2)
            .all(|v| v.signum() != first[0].signum())
    );
}

#[test]
fn bad_data_is_refused_with_the_value() {
    let e = embed::reduce(&data(10, 7, 1.0), 10, 7, None).unwrap_err();
    assert!(e.to_string().contains("7 dimensions"), "{e}");
    let mut d = data(10, 8, 1.0);
    d[3 * 8 + 5] = f64::INFINITY;
    let e = embed::reduce(&d, 10, 8, None).unwrap_err();
    assert_eq!(e.to_string(), "row 3, column 5: inf is not a finite number");
    let e = embed::reduce(&data(10, 8, 1.0), 10, 8, Some(0.0)).unwrap_err();
    assert!(e.to_string().contains("scale = 0"), "{e}");
}

/// The same points with labels of period `period`.
fn given(period: u32) -> GivenTokens {
    let d = data(400, 16, 1.0);
    let e = embed::reduce(&d, 400, 16, None).unwrap();
    let labels: Vec<u32> = (0..400).map(|r| r % period).collect();
    GivenTokens {
        name: "embeddings".into(),
        tokens: Arc::new(embed::tokens(&e, Some(&labels), None)),
    }
}

#[test]
fn given_tokens_journal_resume_and_refuse_another_set() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let with = |g: GivenTokens| RunOptions {
        wal_dir: Some(wal.clone()),
        given: Some(g),
        ..RunOptions::default()
    };
    let straight = {
        let mut s = Session::open(RunOptions {
            given: Some(given(2)),
            ..RunOptions::default()
        })
        .unwrap();
        for _ in 0..12 {
            s.step().unwrap();
        }
        let sum = s.summary();
        assert_eq!(sum.scenario, "embeddings");
        assert_eq!(sum.labelled_tokens, 400);
        assert!(sum.ari_level1.is_some());
        sum.digest
    };
    let mut s = Session::open(with(given(2))).unwrap();
    for _ in 0..7 {
        s.step().unwrap();
    }
    s.close().unwrap();
    let mut s = Session::open(with(given(2))).unwrap();
    assert_eq!(s.tick(), 7);
    for _ in 0..5 {
        s.step().unwrap();
    }
    assert_eq!(s.summary().digest, straight);
    s.close().unwrap();
    let err = Session::open(with(given(3))).err().unwrap();
    assert!(err.to_string().contains("another run"), "{err}");
    // Given tokens take no scenario besides.
    let mut o = with(given(2));
    o.config.scenario = Some("uniform".into());
    let err = Session::open(o).err().unwrap();
    assert!(
        err.to_string().contains("no input, scenario or tokens"),
        "{err}"
    );
}

#[test]
fn columns_follow_ids_after_despawns() {
    let mut s = Session::open(opts(0)).unwrap();
    let sim = s.sim_mut();
    let before = sim.column::<Position, f32, 8>(|p| p.0.to_array());
    for id in [0u64, 5, 799, 400] {
        sim.apply(SimCommand::Despawn(TokenId(id))).unwrap();
    }
    let ids = sim.ids();
    assert_eq!(ids.len(), 796);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let after = sim.column::<Position, f32, 8>(|p| p.0.to_array());
    for (row, id) in ids.iter().enumerate() {
        let i = *id as usize;
        assert_eq!(after[row * 8..row * 8 + 8], before[i * 8..i * 8 + 8]);
    }
}
