//! Criterion benchmarks of the engine core, on settled worlds: each world is run
//! for [`WARMUP`] ticks before anything is timed (a long run's later ticks are
//! the workload, not its first).
//!
//! `cargo bench --bench tick` runs all; filter with a name, e.g.
//! `cargo bench --bench tick -- forces_10k`. The 1M-token tick needs ~2 GB and
//! its warm-up about half an hour; it runs only with `NEUROGRAPH_BENCH_1M=1`.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use neurograph::geometry::spatial::{KdTree, NeighborList, SearchInput};
use neurograph::physics::{ForceParams, LinkTable, TokenParams, reference_forces};
use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};
use neurograph::systems::{ForceBuffers, compute_densities, compute_forces};
use std::time::Duration;

fn uniform_sim(tokens: usize) -> Simulation {
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: 0,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    scenario::find("uniform")
        .unwrap()
        .spawn_into(&mut sim, &ScenarioParams { tokens, seed: 42 }, 65_536)
        .unwrap();
    sim.run(WARMUP);
    sim
}

/// Ticks run before a world is timed.
const WARMUP: u64 = 500;

fn tick(c: &mut Criterion) {
    let mut sizes = vec![10_000usize, 100_000];
    if std::env::var_os("NEUROGRAPH_BENCH_1M").is_some() {
        sizes.push(1_000_000);
    }
    let mut g = c.benchmark_group("tick_uniform");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in sizes {
        let mut sim = uniform_sim(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| b.iter(|| sim.step()));
    }
    g.finish();
}

struct Gathered {
    pts: Vec<Vec8>,
    params: Vec<TokenParams>,
    radii: Vec<f32>,
    ids: Vec<TokenId>,
}

/// The gathered arrays of a settled `uniform` world of `n` tokens.
fn gathered(n: usize) -> Gathered {
    let sim = uniform_sim(n);
    let buf = sim.world().resource::<ForceBuffers>();
    Gathered {
        pts: buf.positions.clone(),
        params: buf.params.clone(),
        radii: buf.params.iter().map(|p| p.radius).collect(),
        ids: buf.ids.clone(),
    }
}

fn spatial_index(c: &mut Criterion) {
    let g100 = gathered(100_000);
    let skin = SimConfig::default().neighbor_skin;
    let mut g = c.benchmark_group("spatial_index_100k");
    g.sample_size(10).throughput(Throughput::Elements(100_000));
    g.bench_function("kdtree_build", |b| b.iter(|| KdTree::build(&g100.pts)));
    g.bench_function("neighbor_lists_full_build", |b| {
        b.iter(|| {
            NeighborList::build(SearchInput {
                points: &g100.pts,
                radii: &g100.radii,
                ids: &g100.ids,
                skin,
            })
        })
    });
    g.finish();
}

fn forces_vs_reference(c: &mut Criterion) {
    let n = 10_000;
    let d = gathered(n);
    let fp = ForceParams::from_cdna(&Cdna::default());
    let skin = SimConfig::default().neighbor_skin;
    let links = LinkTable::default();
    let mut out = vec![Vec8::ZERO; n];
    let mut rho = vec![0.0f32; n];
    let mut g = c.benchmark_group("forces_10k");
    g.sample_size(10).throughput(Throughput::Elements(n as u64));
    g.bench_function("reference_o_n2", |b| {
        b.iter(|| reference_forces(&d.pts, &d.params, &d.ids, &links, &fp))
    });
    g.bench_function("fast_with_list_build", |b| {
        b.iter(|| {
            let nl = NeighborList::build(SearchInput {
                points: &d.pts,
                radii: &d.radii,
                ids: &d.ids,
                skin,
            });
            compute_densities(&d.pts, &d.params, &nl, &mut rho);
            compute_forces(&d.pts, &d.params, &rho, &nl, &links, &fp, &mut out)
        })
    });
    let nl = NeighborList::build(SearchInput {
        points: &d.pts,
        radii: &d.radii,
        ids: &d.ids,
        skin,
    });
    g.bench_function("fast_valid_list", |b| {
        b.iter(|| {
            compute_densities(&d.pts, &d.params, &nl, &mut rho);
            compute_forces(&d.pts, &d.params, &rho, &nl, &links, &fp, &mut out)
        })
    });
    g.finish();
}

fn batch_spawn(c: &mut Criterion) {
    let n = 100_000;
    let specs: Vec<TokenSpec> = scenario::find("uniform")
        .unwrap()
        .generate(&ScenarioParams { tokens: n, seed: 1 })
        .tokens;
    let mut g = c.benchmark_group("spawn");
    g.sample_size(20).throughput(Throughput::Elements(n as u64));
    g.bench_function("batch_100k_all_components", |b| {
        b.iter_batched(
            || (Simulation::with_defaults(), specs.clone()),
            |(mut sim, specs)| {
                sim.spawn_batch(specs).unwrap();
                sim
            },
            BatchSize::PerIteration,
        )
    });
    // The same bundles straight into a bare bevy World: what the ECS itself costs.
    g.bench_function("bare_bevy_spawn_batch_100k", |b| {
        b.iter_batched(
            bevy_ecs::world::World::new,
            |mut world| {
                let n = world
                    .spawn_batch(
                        specs
                            .iter()
                            .enumerate()
                            .map(|(i, s)| s.bundle(TokenId(i as u64))),
                    )
                    .count();
                (world, n)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    tick,
    spatial_index,
    forces_vs_reference,
    batch_spawn
);
criterion_main!(benches);
