//! Criterion benchmarks of the WAL's parts: the state digest, record encoding and
//! decoding, snapshot capture, encoding and restore, at 100K tokens.
//!
//! The tick with the WAL off/batched/sync side by side, and the replay speed, are
//! measured by `neurograph bench wal` (see README § Performance): those need the
//! variants stepped in turn on identical worlds, which criterion's one-at-a-time
//! groups cannot do.
//!
//! `cargo bench --bench wal`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};
use neurograph::wal::{self, format};
use std::time::Duration;

fn uniform_sim(tokens: usize) -> Simulation {
    let mut sim = Simulation::with_defaults();
    scenario::find("uniform")
        .unwrap()
        .spawn_into(&mut sim, &ScenarioParams { tokens, seed: 42 }, 65_536)
        .unwrap();
    sim.run(2);
    sim
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_records");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_tick_record", |b| {
        b.iter(|| wal::encode_tick(1234, Vec::new(), StateDigest(42), false, false).unwrap())
    });
    let mut seg = format::encode_segment_header(1).to_vec();
    for t in 1..=10_000u64 {
        seg.extend(wal::encode_tick(t, Vec::new(), StateDigest(t), false, false).unwrap());
    }
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("scan_and_decode_10k_records", |b| {
        b.iter(|| {
            let scan = format::scan_records(&seg);
            scan.records
                .iter()
                .map(|r| {
                    rmp_serde::from_slice::<wal::TickRecord>(r.payload)
                        .unwrap()
                        .digest
                })
                .sum::<u64>()
        })
    });
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut sim = uniform_sim(100_000);
    let mut g = c.benchmark_group("wal_100k");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("state_digest", |b| b.iter(|| sim.digest()));
    g.bench_function("snapshot_capture", |b| {
        b.iter(|| wal::capture(sim.world_mut(), None))
    });
    let snap = wal::capture(sim.world_mut(), None);
    g.bench_function("snapshot_encode", |b| {
        b.iter(|| wal::writer::encode_snapshot(&snap).unwrap().len())
    });
    g.bench_function("snapshot_restore", |b| {
        b.iter_batched(
            Simulation::with_defaults,
            |mut fresh| {
                wal::restore(fresh.world_mut(), &snap).unwrap();
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, records, snapshots);
criterion_main!(benches);
