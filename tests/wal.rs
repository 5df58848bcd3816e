//! The write-ahead log: recovery replays every command kind and proves each tick
//! by its digest; truncation and bit flips anywhere are cut exactly at the tail or
//! refused with a typed error; the format fixture of each version reads back.

use neurograph::model::commands::SetValue;
use neurograph::model::registry::SimRng;
use neurograph::prelude::*;
use neurograph::wal::format::{self, RecordKind};
use neurograph::wal::{
    self, Durability, Manifest, RecoverOptions, Recovery, TickRecord, WalError, WalOptions,
};
use proptest::prelude::*;
use rand::Rng;
use std::path::{Path, PathBuf};

fn settings() -> SimSettings {
    SimSettings {
        config: SimConfig {
            threads: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn manifest() -> Manifest {
    Manifest {
        format_version: wal::FORMAT_VERSION,
        sim: settings().config,
        quotas: Quotas::default(),
        run: [("job".to_string(), "scripted".to_string())].into(),
    }
}

/// 30 tokens on a small lattice, close enough to interact.
fn seeded_sim() -> Simulation {
    let mut sim = Simulation::new(settings()).unwrap();
    let specs = (0..30)
        .map(|i| {
            let mut a = [0.0f32; 8];
            a[0] = (i % 5) as f32 * 0.4;
            a[1] = (i / 5) as f32 * 0.4;
            a[2] = (i % 3) as f32 * 0.1;
            TokenSpec::at(Vec8::from_array(a)).with_charge(if i % 4 == 0 { -0.5 } else { 0.8 })
        })
        .collect();
    sim.spawn_batch(specs).unwrap();
    sim
}

/// The commands of tick `t`: every kind, some applied between ticks and some
/// queued for `Ingest`, plus refused ones (which must not be journaled).
fn script(sim: &mut Simulation, t: u64) {
    let id = TokenId;
    match t {
        2 => {
            // Pairs too far apart for `Learn` to have linked them already.
            sim.apply(SimCommand::Link {
                a: id(0),
                b: id(29),
                spec: LinkSpec::new(1.0, 0.3),
            })
            .unwrap();
            sim.submit(SimCommand::Link {
                a: id(5),
                b: id(20),
                spec: LinkSpec::new(0.5, 0.2),
            });
            sim.submit(SimCommand::Despawn(id(999)));
        }
        3 => sim.submit(SimCommand::Impulse {
            id: id(2),
            impulse: Vec8::splat(0.1),
        }),
        4 => {
            sim.apply(SimCommand::Set {
                id: id(3),
                value: SetValue::Charge(-0.25),
            })
            .unwrap();
            sim.apply(SimCommand::Set {
                id: id(7),
                value: SetValue::Position(Vec8::splat(0.5)),
            })
            .unwrap();
        }
        5 => {
            sim.spawn(TokenSpec::at(Vec8::splat(0.3))).unwrap();
        }
        6 => {
            let mut c = sim.cdna().clone();
            c.physics.damping *= 1.5;
            sim.submit(SimCommand::UpdateCdna(Box::new(c)));
        }
        7 => sim.submit(SimCommand::Despawn(id(4))),
        8 => sim.submit(SimCommand::SetLink {
            a: id(0),
            b: id(29),
            spec: LinkSpec::new(2.0, 0.1),
        }),
        9 => sim.submit(SimCommand::Unlink {
            a: id(29),
            b: id(0),
        }),
        10 => sim.submit(SimCommand::RevertCdna),
        _ => {}
    }
}

/// Commands the script journals.
const SCRIPT_COMMANDS: u64 = 11;

/// The digests of an unjournaled scripted run, index = tick.
fn reference(ticks: u64) -> Vec<StateDigest> {
    let mut sim = seeded_sim();
    let mut d = vec![sim.digest()];
    for t in 1..=ticks {
        script(&mut sim, t);
        sim.step();
        d.push(sim.digest());
    }
    d
}

/// The seeded world with a new WAL in `dir`.
fn attached(dir: &Path, opts: &WalOptions) -> Simulation {
    let mut sim = seeded_sim();
    wal::create(dir, &manifest(), &mut sim, opts).unwrap();
    sim
}

/// A scripted run of `ticks` ticks journaled to `dir`.
fn journaled_run(dir: &Path, ticks: u64, opts: &WalOptions) {
    let mut sim = attached(dir, opts);
    for t in 1..=ticks {
        script(&mut sim, t);
        sim.step();
    }
    wal::close(&mut sim).unwrap();
}

fn opts(durability: Durability, snapshot_every: u64) -> WalOptions {
    WalOptions {
        durability,
        snapshot_every,
        ..Default::default()
    }
}

fn recover(dir: &Path) -> Result<Recovery<Simulation>, WalError> {
    wal::recover::<Simulation>(
        dir,
        &RecoverOptions {
            threads: 1,
            exclusive: false,
        },
    )
}

fn recover_exclusive(dir: &Path) -> Result<Recovery<Simulation>, WalError> {
    wal::recover::<Simulation>(
        dir,
        &RecoverOptions {
            threads: 1,
            exclusive: true,
        },
    )
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// A WAL of 12 scripted ticks whose only snapshot is tick 0, so that recovery
/// must replay every record. Returns the segment path.
fn replay_only_wal(dir: &Path) -> PathBuf {
    journaled_run(dir, 12, &opts(Durability::Sync, 0));
    for s in files(dir, "snap-").into_iter().skip(1) {
        std::fs::remove_file(s).unwrap();
    }
    let segs = files(dir, "wal-");
    assert_eq!(segs.len(), 1);
    segs[0].clone()
}

#[test]
fn recovery_replays_every_command_kind_and_matches_the_live_run() {
    let want = reference(12);
    for durability in [Durability::Sync, Durability::Batched, Durability::Off] {
        let dir = tempfile::tempdir().unwrap();
        let o = WalOptions {
            keep_snapshots: 10,
            ..opts(durability, 5)
        };
        journaled_run(dir.path(), 12, &o);
        let rec = recover(dir.path()).unwrap();
        assert_eq!(rec.report.tick, 12, "{durability:?}");
        assert_eq!(rec.report.records_replayed, 0, "from the final snapshot");
        assert_eq!(rec.report.digest, want[12].to_string(), "{durability:?}");
        // Every record of every policy replays from the first snapshot.
        for s in files(dir.path(), "snap-").into_iter().skip(1) {
            std::fs::remove_file(s).unwrap();
        }
        let rec = recover(dir.path()).unwrap();
        assert_eq!(rec.report.records_replayed, 12, "{durability:?}");
        assert_eq!(rec.report.digest, want[12].to_string(), "{durability:?}");
        assert_eq!(rec.report.bytes_dropped, 0);
    }
    let dir = tempfile::tempdir().unwrap();
    replay_only_wal(dir.path());
    let rec = recover(dir.path()).unwrap();
    let r = &rec.report;
    assert_eq!((r.snapshot_tick, r.records_replayed, r.tick), (0, 12, 12));
    assert_eq!(r.commands_replayed, SCRIPT_COMMANDS);
    assert_eq!(r.digest, want[12].to_string());
    assert_eq!(rec.sim.token_count(), 30);
}

#[test]
fn truncation_at_every_byte_is_cut_exactly_at_the_last_whole_record() {
    let want = reference(12);
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    let ends: Vec<usize> = format::scan_records(&bytes)
        .records
        .iter()
        .map(|r| r.offset + r.frame_len())
        .collect();
    assert_eq!(ends.len(), 12);
    for cut in 0..=bytes.len() {
        std::fs::write(&seg, &bytes[..cut]).unwrap();
        let rec = recover(dir.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let valid_end = if cut < format::SEGMENT_HEADER_LEN {
            0
        } else {
            ends.get(whole.wrapping_sub(1))
                .copied()
                .unwrap_or(format::SEGMENT_HEADER_LEN)
        };
        let r = &rec.report;
        assert_eq!(r.tick, whole as u64, "cut at {cut}");
        assert_eq!(r.digest, want[whole].to_string(), "cut at {cut}");
        assert_eq!(r.bytes_dropped, (cut - valid_end) as u64, "cut at {cut}");
        let torn = cut < format::SEGMENT_HEADER_LEN || cut != valid_end;
        assert_eq!(r.tail.is_some(), torn, "cut at {cut}");
    }
}

#[test]
fn bit_flips_are_cut_at_the_tail_or_refused_never_applied() {
    let want = reference(12);
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    let spans: Vec<(usize, usize)> = format::scan_records(&bytes)
        .records
        .iter()
        .map(|r| (r.offset, r.offset + r.frame_len()))
        .collect();
    let last = spans.len() - 1;
    for at in 0..bytes.len() {
        for bit in [0u8, 3, 6] {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            std::fs::write(&seg, &b).unwrap();
            let result = recover(dir.path());
            let what = format!("flip of bit {bit} at byte {at}");
            if at < format::SEGMENT_HEADER_LEN {
                assert!(
                    matches!(result, Err(WalError::BadSegmentHeader { .. })),
                    "{what}: {:?}",
                    result.map(|r| r.report)
                );
                continue;
            }
            let k = spans.iter().position(|&(s, e)| s <= at && at < e).unwrap();
            if k == last {
                let rec = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(rec.report.tick, k as u64, "{what}");
                assert_eq!(rec.report.digest, want[k].to_string(), "{what}");
                assert_eq!(
                    rec.report.bytes_dropped,
                    (bytes.len() - spans[k].0) as u64,
                    "{what}"
                );
            } else {
                match result {
                    Err(WalError::CorruptRecord {
                        offset, next_valid, ..
                    }) => {
                        assert_eq!(offset, spans[k].0, "{what}");
                        assert_eq!(next_valid, Some(spans[k].1), "{what}");
                    }
                    other => panic!("{what}: {:?}", other.map(|r| r.report)),
                }
            }
        }
    }
}

#[test]
fn a_damaged_snapshot_falls_back_to_an_older_one() {
    let want = reference(12);
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        keep_snapshots: 3,
        ..opts(Durability::Sync, 4)
    };
    journaled_run(dir.path(), 12, &o);
    let snaps = files(dir.path(), "snap-");
    assert_eq!(snaps.len(), 3, "{snaps:?}"); // ticks 4, 8, 12
    let mut newest = std::fs::read(&snaps[2]).unwrap();
    let mid = newest.len() / 2;
    newest[mid] ^= 0x20;
    std::fs::write(&snaps[2], &newest).unwrap();
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.snapshot_tick, 8);
    assert_eq!(rec.report.snapshots_skipped.len(), 1);
    assert!(rec.report.snapshots_skipped[0].contains("CRC"));
    assert_eq!(rec.report.records_replayed, 4);
    assert_eq!(rec.report.digest, want[12].to_string());
    for s in &snaps {
        std::fs::write(s, b"NGSNAPSH and then nothing useful").unwrap();
    }
    match recover(dir.path()) {
        Err(WalError::NoSnapshot { tried, .. }) => assert_eq!(tried.len(), 3),
        other => panic!("{:?}", other.map(|r| r.report)),
    }
}

#[test]
fn segments_rotate_and_a_missing_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_bytes: 4096,
        ..opts(Durability::Batched, 0)
    };
    journaled_run(dir.path(), 400, &o);
    for s in files(dir.path(), "snap-").into_iter().skip(1) {
        std::fs::remove_file(s).unwrap();
    }
    let segs = files(dir.path(), "wal-");
    assert!(segs.len() >= 3, "{segs:?}");
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.tick, 400);
    assert_eq!(rec.report.segments_read, segs.len() as u64);
    assert_eq!(rec.report.digest, reference(400)[400].to_string());
    std::fs::remove_file(&segs[1]).unwrap();
    match recover(dir.path()) {
        Err(WalError::MissingTicks {
            expected, found, ..
        }) => assert!(found > expected),
        other => panic!("{:?}", other.map(|r| r.report)),
    }
}

/// Rewrites the segment with `f` applied to each (kind, tick, payload).
fn rewrite(seg: &Path, f: impl Fn(u8, u64, Vec<u8>) -> (u8, Vec<u8>)) {
    let bytes = std::fs::read(seg).unwrap();
    let first = format::decode_segment_header(&bytes).unwrap();
    let mut out = format::encode_segment_header(first).to_vec();
    for r in format::scan_records(&bytes).records {
        let (kind, payload) = f(r.kind, r.tick, r.payload.to_vec());
        format::encode_record_raw(&mut out, kind, r.tick, &payload);
    }
    std::fs::write(seg, out).unwrap();
}

#[test]
fn a_forged_digest_an_unknown_kind_and_a_new_version_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let original = std::fs::read(&seg).unwrap();

    rewrite(&seg, |k, tick, p| {
        if tick != 5 {
            return (k, p);
        }
        let mut rec: TickRecord = rmp_serde::from_slice(&p).unwrap();
        rec.digest ^= 1;
        (k, rmp_serde::to_vec(&rec).unwrap())
    });
    match recover(dir.path()) {
        Err(e @ WalError::DigestMismatch { tick: 5, .. }) => {
            assert!(e.to_string().contains("replay diverged at tick 5"))
        }
        other => panic!("{:?}", other.map(|r| r.report)),
    }

    std::fs::write(&seg, &original).unwrap();
    rewrite(&seg, |k, tick, p| if tick == 3 { (9, p) } else { (k, p) });
    assert!(matches!(
        recover(dir.path()),
        Err(WalError::UnknownKind { kind: 9, .. })
    ));

    std::fs::write(&seg, &original).unwrap();
    rewrite(&seg, |k, tick, p| {
        if tick == 3 {
            (k, b"\xc1 not msgpack".to_vec())
        } else {
            (k, p)
        }
    });
    assert!(matches!(
        recover(dir.path()),
        Err(WalError::Payload { tick: 3, .. })
    ));

    let next = wal::FORMAT_VERSION + 1;
    let mut newer = original.clone();
    newer[..format::SEGMENT_HEADER_LEN]
        .copy_from_slice(&format::encode_segment_header_version(1, next));
    std::fs::write(&seg, &newer).unwrap();
    match recover(dir.path()) {
        Err(e @ WalError::UnsupportedVersion { found, .. }) if found == next => {
            assert!(
                e.to_string()
                    .contains(&format!("this build reads version {}", wal::FORMAT_VERSION))
            )
        }
        other => panic!("{:?}", other.map(|r| r.report)),
    }
}

#[test]
fn resuming_after_a_torn_tail_continues_exactly() {
    let want = reference(12);
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() - 7]).unwrap();
    let rec = wal::recover::<Simulation>(
        dir.path(),
        &RecoverOptions {
            threads: 2,
            exclusive: true,
        },
    )
    .unwrap();
    assert_eq!(rec.report.tick, 11);
    let mut sim = wal::resume(rec, &opts(Durability::Sync, 0)).unwrap();
    for t in 12..=12 {
        script(&mut sim, t);
        sim.step();
        assert_eq!(sim.digest(), want[t as usize]);
    }
    wal::close(&mut sim).unwrap();
    drop(sim);
    // The cut tail is gone from disk: the whole WAL replays cleanly to tick 12.
    for s in files(dir.path(), "snap-").into_iter().skip(1) {
        std::fs::remove_file(s).unwrap();
    }
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.tail, None);
    assert_eq!((rec.report.tick, rec.report.records_replayed), (12, 12));
    assert_eq!(rec.report.digest, want[12].to_string());
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = attached(dir.path(), &opts(Durability::Sync, 0));
    sim.step();
    assert!(matches!(recover(dir.path()), Err(WalError::Locked(_))));
    assert!(matches!(
        recover_exclusive(dir.path()),
        Err(WalError::Locked(_))
    ));
    let mut other = seeded_sim();
    assert!(matches!(
        wal::create(dir.path(), &manifest(), &mut other, &WalOptions::default()),
        Err(WalError::Exists(_))
    ));
    wal::close(&mut sim).unwrap();
    drop(sim);
    assert!(matches!(
        wal::create(dir.path(), &manifest(), &mut other, &WalOptions::default()),
        Err(WalError::Exists(_))
    ));
    assert_eq!(recover(dir.path()).unwrap().report.tick, 1);
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(recover(empty.path()), Err(WalError::NotAWal(_))));
}

#[test]
fn the_rng_state_survives_a_snapshot() {
    let mut sim = seeded_sim();
    sim.world_mut().insert_resource(SimRng::seeded(7));
    for _ in 0..5 {
        sim.world_mut().resource_mut::<SimRng>().0.next_u64();
    }
    let snap = wal::capture(sim.world_mut(), None);
    let mut copy = Simulation::new(settings()).unwrap();
    wal::restore(copy.world_mut(), &snap).unwrap();
    let a: Vec<u64> = (0..4)
        .map(|_| sim.world_mut().resource_mut::<SimRng>().0.next_u64())
        .collect();
    let b: Vec<u64> = (0..4)
        .map(|_| copy.world_mut().resource_mut::<SimRng>().0.next_u64())
        .collect();
    assert_eq!(a, b);
    assert_eq!(copy.digest(), sim.digest());
}

/// The format fixtures, one directory per version, written by
/// `NEUROGRAPH_WRITE_FIXTURE=1 cargo test --test wal write_fixture -- --ignored`.
fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/wal-v{version}"))
}

#[test]
#[ignore = "writes the fixture of the current format version"]
fn write_fixture() {
    assert_eq!(
        std::env::var("NEUROGRAPH_WRITE_FIXTURE").as_deref(),
        Ok("1")
    );
    let dir = fixture_dir(wal::FORMAT_VERSION);
    let _ = std::fs::remove_dir_all(&dir);
    let seg = replay_only_wal(&dir);
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    let rec = recover(&dir).unwrap();
    let expected = serde_json::json!({
        "tick": rec.report.tick,
        "digest": rec.report.digest,
        "records": rec.report.records_replayed,
        "commands": rec.report.commands_replayed,
        "segment": seg.file_name().unwrap().to_string_lossy(),
    });
    std::fs::write(dir.join("expected.json"), expected.to_string()).unwrap();
}

#[test]
fn older_format_versions_are_refused_by_name() {
    // Version 1 ticks had no Learn or Organize stage, version 2 ticks the old
    // force law: replay cannot reproduce them.
    for version in 1..wal::FORMAT_VERSION {
        let e = recover(&fixture_dir(version)).err().expect("refused");
        assert!(
            matches!(
                e,
                WalError::UnsupportedVersion { found, supported, .. }
                    if found == version && supported == wal::FORMAT_VERSION
            ),
            "wal-v{version}: {e}"
        );
        assert!(
            e.to_string().contains(&format!(
                "format version {version}; this build reads version"
            )),
            "{e}"
        );
        assert!(
            e.to_string().contains("force law"),
            "the reason is given: {e}"
        );
    }
}

#[test]
fn the_format_fixture_of_the_current_version_reads_back() {
    let version = wal::FORMAT_VERSION;
    let dir = fixture_dir(version);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    // The digests in the fixture also pin the physics: if this fails after a
    // physics change, old WALs can no longer be replayed.
    let rec = recover(&dir).unwrap_or_else(|e| panic!("wal-v{version}: {e}"));
    assert_eq!(rec.report.tick, expected["tick"].as_u64().unwrap());
    assert_eq!(rec.report.digest, expected["digest"].as_str().unwrap());
    assert_eq!(
        rec.report.records_replayed,
        expected["records"].as_u64().unwrap()
    );
    assert_eq!(
        rec.report.commands_replayed,
        expected["commands"].as_u64().unwrap()
    );
    assert_eq!(rec.report.digest, reference(12)[12].to_string());
    let info = wal::inspect(&dir).unwrap();
    assert!(info.segments.iter().all(|s| s.status == "ok"));
    assert_eq!(info.segments[0].records, 12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The decoder never panics on arbitrary bytes, and whatever it accepts is a
    /// prefix of whole records that re-encode to the same bytes.
    #[test]
    fn the_record_decoder_survives_arbitrary_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        with_header in any::<bool>(),
    ) {
        let mut seg = if with_header { format::encode_segment_header(1).to_vec() } else { Vec::new() };
        seg.extend_from_slice(&body);
        let _ = format::decode_segment_header(&seg);
        let scan = format::scan_records(&seg);
        let mut again = seg[..format::SEGMENT_HEADER_LEN.min(seg.len())].to_vec();
        for r in &scan.records {
            format::encode_record_raw(&mut again, r.kind, r.tick, r.payload);
        }
        prop_assert_eq!(&again[..], &seg[..scan.valid_len]);
        let _ = format::decode_snapshot_file(&seg);
    }

    /// Valid records followed by garbage: every record is kept, the garbage is
    /// reported as damage at the right offset.
    #[test]
    fn valid_records_survive_trailing_garbage(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        garbage in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut seg = format::encode_segment_header(1).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            format::encode_record(&mut seg, RecordKind::Tick, i as u64 + 1, p);
        }
        let end = seg.len();
        seg.extend_from_slice(&garbage);
        let scan = format::scan_records(&seg);
        prop_assert_eq!(scan.records.len(), payloads.len());
        prop_assert_eq!(scan.valid_len, end);
        prop_assert_eq!(scan.damage.map(|d| d.offset), Some(end));
    }
}

#[test]
fn recovery_builds_the_world_with_the_snapshot_constitution() {
    // dt = 0.8 is valid with damping 1.0 (damping × dt ≤ 1) but not with the
    // default damping 2.0: recovery must not validate against the default.
    let mut cdna = Cdna::default();
    cdna.physics.damping = 1.0;
    let config = SimConfig {
        dt: 0.8,
        threads: 1,
        ..Default::default()
    };
    let mut sim = Simulation::new(SimSettings {
        config: config.clone(),
        cdna,
        ..Default::default()
    })
    .unwrap();
    sim.spawn_batch(
        (0..10)
            .map(|i| TokenSpec::at(Vec8::splat(i as f32 * 0.3)))
            .collect(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = Manifest {
        sim: config,
        ..manifest()
    };
    wal::create(dir.path(), &m, &mut sim, &opts(Durability::Sync, 0)).unwrap();
    sim.run(5);
    let want = sim.digest();
    wal::close(&mut sim).unwrap();
    let rec = recover(dir.path()).unwrap();
    assert_eq!(
        (rec.report.tick, rec.report.digest.clone()),
        (5, want.to_string())
    );
}

#[test]
fn a_log_that_stops_before_the_snapshot_or_a_renamed_snapshot_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_bytes: 4096,
        keep_snapshots: 10,
        ..opts(Durability::Batched, 100)
    };
    journaled_run(dir.path(), 400, &o);
    let want = reference(400);
    // A snapshot renamed to a later tick is refused; recovery falls back.
    let snaps = files(dir.path(), "snap-");
    let newest = snaps.last().unwrap().clone();
    let renamed = dir.path().join(format!("snap-{:020}.snap", 450));
    std::fs::rename(&newest, &renamed).unwrap();
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.snapshot_tick, 300);
    assert!(rec.report.snapshots_skipped[0].contains("the file name says 450"));
    assert_eq!(rec.report.digest, want[400].to_string());
    std::fs::rename(&renamed, &newest).unwrap();
    // The last segment deleted: the log ends before the newest snapshot.
    let last = files(dir.path(), "wal-").pop().unwrap();
    std::fs::remove_file(&last).unwrap();
    match recover(dir.path()) {
        Err(WalError::LogBehindSnapshot {
            snapshot_tick: 400,
            last_record,
            ..
        }) => assert!(last_record < 400),
        other => panic!("{:?}", other.map(|r| r.report)),
    }
}

#[test]
fn close_never_snapshots_unjournaled_commands() {
    let want = reference(6);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = attached(dir.path(), &opts(Durability::Sync, 0));
    for t in 1..=6 {
        script(&mut sim, t);
        sim.step();
    }
    sim.apply(SimCommand::Despawn(TokenId(9))).unwrap();
    sim.submit(SimCommand::Despawn(TokenId(10)));
    match wal::close(&mut sim) {
        Err(
            e @ WalError::Unjournaled {
                tick: 6,
                applied: 1,
                queued: 1,
            },
        ) => assert!(e.to_string().contains("are not in it")),
        other => panic!("{other:?}"),
    }
    drop(sim);
    // The WAL holds exactly the six journaled ticks.
    assert_eq!(files(dir.path(), "snap-").len(), 1);
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.tick, 6);
    assert_eq!(rec.report.digest, want[6].to_string());
}

#[test]
fn resume_sets_refused_snapshots_aside() {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        keep_snapshots: 2,
        ..opts(Durability::Sync, 4)
    };
    journaled_run(dir.path(), 12, &o);
    let snaps = files(dir.path(), "snap-");
    assert_eq!(snaps.len(), 2); // ticks 8 and 12
    std::fs::write(&snaps[1], b"damaged").unwrap();
    let rec = recover_exclusive(dir.path()).unwrap();
    assert_eq!(rec.report.snapshot_tick, 8);
    let mut sim = wal::resume(rec, &o).unwrap();
    for t in 13..=16 {
        script(&mut sim, t);
        sim.step();
    }
    wal::close(&mut sim).unwrap();
    drop(sim);
    let bad = dir.path().join(format!("snap-{:020}.snap.bad", 12));
    assert!(bad.exists(), "the refused snapshot is kept aside");
    let names: Vec<String> = files(dir.path(), "snap-")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&format!("snap-{:020}.snap", 16)),
        "{names:?}"
    );
    assert_eq!(
        recover(dir.path()).unwrap().report.digest,
        reference(16)[16].to_string()
    );
}

#[test]
fn a_streamed_snapshot_file_equals_the_in_memory_encoding() {
    let mut sim = seeded_sim();
    sim.run(3);
    let snap = wal::capture(sim.world_mut(), None);
    let dir = tempfile::tempdir().unwrap();
    let bytes = wal::writer::write_snapshot(dir.path(), &snap).unwrap();
    let file = std::fs::read(dir.path().join(format!("snap-{:020}.snap", 3))).unwrap();
    assert_eq!(file.len() as u64, bytes);
    assert_eq!(file, wal::writer::encode_snapshot(&snap).unwrap());
    let (tick, payload) = format::decode_snapshot_file(&file).unwrap();
    assert_eq!(tick, 3);
    assert_eq!(
        rmp_serde::from_slice::<wal::WorldSnapshot>(payload).unwrap(),
        snap
    );
}

#[test]
fn resume_replaces_a_torn_empty_segment_and_refuses_a_touched_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..20]).unwrap(); // a creation cut inside the header
    // A recovery that was changed before resume is refused.
    let mut rec = recover_exclusive(dir.path()).unwrap();
    assert_eq!(rec.report.tick, 0);
    rec.sim.apply(SimCommand::Despawn(TokenId(3))).unwrap();
    match wal::resume(rec, &opts(Durability::Sync, 0)) {
        Err(e) => assert!(e.to_string().contains("changed before resume"), "{e}"),
        Ok(_) => panic!("a touched recovery was resumed"),
    }
    // An untouched one resumes over the torn segment (same name, replaced whole).
    let rec = recover_exclusive(dir.path()).unwrap();
    let mut sim = wal::resume(rec, &opts(Durability::Sync, 0)).unwrap();
    for t in 1..=3 {
        script(&mut sim, t);
        sim.step();
    }
    wal::close(&mut sim).unwrap();
    drop(sim);
    assert_eq!(files(dir.path(), "wal-"), vec![seg]);
    for s in files(dir.path(), "snap-").into_iter().skip(1) {
        std::fs::remove_file(s).unwrap();
    }
    let rec = recover(dir.path()).unwrap();
    assert_eq!((rec.report.tick, rec.report.records_replayed), (3, 3));
    assert_eq!(rec.report.digest, reference(3)[3].to_string());
}

/// Appends a byte-for-byte copy of the record at `index` right after it.
fn duplicate_record(seg: &Path, index: usize) -> usize {
    let bytes = std::fs::read(seg).unwrap();
    let scan = format::scan_records(&bytes);
    let r = &scan.records[index];
    let end = r.offset + r.frame_len();
    let mut out = bytes[..end].to_vec();
    out.extend_from_slice(&bytes[r.offset..end]);
    out.extend_from_slice(&bytes[end..]);
    std::fs::write(seg, out).unwrap();
    end
}

#[test]
fn an_exact_duplicate_is_named_skipped_in_the_middle_and_cut_at_the_tail() {
    let want = reference(12);
    // At the tail: what an append written twice leaves.
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let copy_at = duplicate_record(&seg, 11);
    let info = wal::inspect(dir.path()).unwrap();
    assert_eq!(
        info.segments[0].status,
        format!(
            "a duplicate of tick 12 at byte {copy_at} (the same bytes as the record at byte {})",
            {
                let b = std::fs::read(&seg).unwrap();
                format::scan_records(&b).records[11].offset
            }
        )
    );
    let rec = recover_exclusive(dir.path()).unwrap();
    assert_eq!((rec.report.tick, rec.report.records_replayed), (12, 12));
    assert_eq!(rec.report.digest, want[12].to_string());
    assert_eq!(rec.report.duplicates_skipped.len(), 1);
    let tail = rec.report.tail.clone().expect("the copy is cut");
    assert!(
        tail.contains(&format!(
            "at byte {copy_at} (exact duplicates of tick 12 at the tail)"
        )),
        "{tail}"
    );
    // Resuming cuts it from disk: the log reads clean afterwards.
    let mut sim = wal::resume(rec, &opts(Durability::Sync, 0)).unwrap();
    wal::close(&mut sim).unwrap();
    drop(sim);
    assert_eq!(wal::inspect(dir.path()).unwrap().segments[0].status, "ok");

    // In the middle: skipped, named, and the replay is exact.
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let copy_at = duplicate_record(&seg, 4);
    let rec = recover(dir.path()).unwrap();
    assert_eq!((rec.report.tick, rec.report.records_replayed), (12, 12));
    assert_eq!(rec.report.digest, want[12].to_string());
    assert_eq!(rec.report.tail, None, "nothing is cut");
    assert_eq!(rec.report.duplicates_skipped.len(), 1);
    assert!(
        rec.report.duplicates_skipped[0]
            .contains(&format!("a duplicate of tick 5 at byte {copy_at}")),
        "{:?}",
        rec.report.duplicates_skipped
    );

    // A second, different record of one tick is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let seg = replay_only_wal(dir.path());
    let bytes = std::fs::read(&seg).unwrap();
    let r = format::scan_records(&bytes).records[4];
    let end = r.offset + r.frame_len();
    let mut out = bytes[..end].to_vec();
    let mut payload = r.payload.to_vec();
    payload.push(0);
    format::encode_record_raw(&mut out, r.kind, r.tick, &payload);
    out.extend_from_slice(&bytes[end..]);
    std::fs::write(&seg, out).unwrap();
    match recover(dir.path()) {
        Err(e @ WalError::OutOfOrder { .. }) => assert!(
            e.to_string().contains(&format!(
                "two different records of tick 5, at bytes {} and {end}",
                r.offset
            )),
            "{e}"
        ),
        other => panic!("{:?}", other.map(|r| r.report)),
    }
    assert!(
        wal::inspect(dir.path()).unwrap().segments[0]
            .status
            .starts_with("two different records of tick 5"),
    );
}

#[test]
fn a_wal_with_bounds_wider_than_runs_now_accept_still_recovers() {
    // Written before bounds were held within f32's reach (the old Creative
    // profile had ±10000): its data stays readable.
    let mut cdna = Cdna::default();
    cdna.dimensions.min = [-10_000.0; 8];
    cdna.dimensions.max = [10_000.0; 8];
    assert!(cdna.check_reach().is_err());
    let mut sim = Simulation::new(SimSettings { cdna, ..settings() }).unwrap();
    sim.spawn(TokenSpec::at(Vec8::splat(5000.0))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    wal::create(
        dir.path(),
        &manifest(),
        &mut sim,
        &opts(Durability::Sync, 0),
    )
    .unwrap();
    sim.run(3);
    wal::close(&mut sim).unwrap();
    let rec = recover(dir.path()).unwrap();
    assert_eq!((rec.report.tick, rec.report.tokens), (3, 1));
}

/// A run near its memory budget recovers: the spawn admitted live against the
/// measured structures (and the one refused) replay to the same digests.
/// Replay applies journaled commands without deciding their quotas again
/// (`apply_recorded_command`): a replayed world has another allocation history
/// than the live one, so its measured bytes differ.
#[test]
fn a_run_near_its_memory_budget_recovers() {
    use neurograph::model::config::MemoryAccount;
    let more = |n: usize| -> Vec<TokenSpec> {
        (0..n)
            .map(|i| TokenSpec::at(Vec8::splat(0.05 * i as f32 + 3.0)))
            .collect()
    };
    // The budget: what the world measures after a tick, plus 20 tokens.
    let mut dry = seeded_sim();
    dry.step();
    let account = *dry.world().resource::<MemoryAccount>();
    assert_eq!(account.tokens, 30);
    let tight = Quotas {
        memory_budget_bytes: account.projected(50, dry.link_count()),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sim = seeded_sim();
    sim.world_mut().insert_resource(tight.clone());
    let manifest = Manifest {
        quotas: tight,
        ..manifest()
    };
    wal::create(dir.path(), &manifest, &mut sim, &opts(Durability::Sync, 0)).unwrap();
    sim.step();
    assert_eq!(*sim.world().resource::<MemoryAccount>(), account);
    let err = sim.apply(SimCommand::SpawnBatch(more(21))).unwrap_err();
    assert!(err.to_string().contains("memory budget exceeded"), "{err}");
    sim.apply(SimCommand::SpawnBatch(more(20))).unwrap();
    sim.step();
    sim.step();
    let want = sim.digest();
    wal::close(&mut sim).unwrap();
    drop(sim);
    // Replay from the first snapshot.
    for s in files(dir.path(), "snap-").into_iter().skip(1) {
        std::fs::remove_file(s).unwrap();
    }
    let rec = recover(dir.path()).unwrap();
    assert_eq!(rec.report.records_replayed, 3);
    assert_eq!(rec.report.commands_replayed, 1);
    assert_eq!(rec.report.digest, want.to_string());
    assert_eq!(rec.sim.token_count(), 50);
}
