//! The GPU-resident tick (`backend::gpu::resident`) against the CPU engine, on
//! whatever Vulkan adapter there is (lavapipe in CI; `NEUROGRAPH_REQUIRE_GPU=1`
//! makes a missing adapter a failure rather than a skip).
#![cfg(feature = "gpu")]

use neurograph::backend::gpu::resident::{GpuResident, ResidentParams, ResidentWorld};
use neurograph::backend::gpu::{AdapterPolicy, GpuContext, GpuError};
use neurograph::model::registry::SimRng;
use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};

fn required() -> bool {
    std::env::var("NEUROGRAPH_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn device() -> Option<GpuResident> {
    match GpuContext::new(AdapterPolicy::Any).and_then(GpuResident::new) {
        Ok(r) => Some(r),
        Err(e) if !required() => {
            eprintln!("SKIPPED: no usable GPU ({e}); set NEUROGRAPH_REQUIRE_GPU=1 to fail instead");
            None
        }
        Err(e) => panic!("the GPU must work here (NEUROGRAPH_REQUIRE_GPU is set): {e}"),
    }
}

/// A CPU engine whose tick is only physics: no learning, no link formation,
/// no hierarchy (the stages the resident tick leaves out).
fn engine(name: &str, tokens: usize, seed: u64, links: usize) -> Simulation {
    let mut cdna = Cdna::default();
    cdna.graph.learning_rate = 0.0;
    cdna.graph.decay_rate = 0.0;
    cdna.graph.form_within = 0.0;
    cdna.hierarchy.organize_every = 0;
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: 2,
            ..Default::default()
        },
        cdna,
        ..Default::default()
    })
    .expect("valid settings");
    sim.world_mut().insert_resource(SimRng::seeded(seed));
    scenario::find(name)
        .unwrap()
        .spawn_into(&mut sim, &ScenarioParams { tokens, seed }, 4096)
        .unwrap();
    let ids = sim.ids();
    for k in 0..links {
        let (a, b) = (ids[3 * k], ids[3 * k + 1]);
        sim.apply(SimCommand::Link {
            a: TokenId(a),
            b: TokenId(b),
            spec: LinkSpec::new(0.5 + (k % 5) as f32 * 0.1, 0.6),
        })
        .expect("a valid link");
    }
    sim
}

/// The engine's state in id order (slot k = the k-th id).
type Snapshot = ResidentWorld;

fn snapshot(sim: &mut Simulation) -> Snapshot {
    sim.resident_world()
}

fn load(gpu: &mut GpuResident, s: &Snapshot, params: ResidentParams) {
    gpu.load(s.state(), params).expect("the world loads");
}

fn params_of(sim: &Simulation) -> ResidentParams {
    ResidentParams::new(sim.cdna(), sim.world().resource::<SimConfig>())
}

/// The largest coordinate difference relative to the world's extent.
fn position_error(cpu: &[Vec8], gpu: &[Vec8]) -> f32 {
    assert_eq!(cpu.len(), gpu.len());
    let mut lo = [f32::MAX; 8];
    let mut hi = [f32::MIN; 8];
    for x in cpu {
        for k in 0..8 {
            lo[k] = lo[k].min(x[k]);
            hi[k] = hi[k].max(x[k]);
        }
    }
    let extent = (0..8).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max);
    let mut worst = 0.0f32;
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(b.is_finite(), "slot {i}: GPU position {b:?}");
        let d = (0..8).map(|k| (a[k] - b[k]).abs()).fold(0.0f32, f32::max);
        worst = worst.max(d / extent);
    }
    worst
}

fn bits(v: &[Vec8]) -> Vec<u32> {
    v.iter()
        .flat_map(|x| x.to_array().map(f32::to_bits))
        .collect()
}

#[test]
fn neighbour_rows_are_exact_and_sorted() {
    let Some(mut gpu) = device() else { return };
    let mut sim = engine("clusters", 2_500, 7, 0);
    sim.run(20);
    let mut s = snapshot(&mut sim);
    // Radii from 0.8 to 1.2, so that a pair's cutoff is the larger of two.
    for (i, p) in s.params.iter_mut().enumerate() {
        p.radius = 0.8 + 0.4 * ((i * 2_654_435_761) % 1000) as f32 / 1000.0;
    }
    let params = params_of(&sim);
    load(&mut gpu, &s, params);
    gpu.step(1).expect("one tick");
    eprintln!("{:?}", gpu.stats());
    assert_eq!(gpu.stats().rebuilds, 1, "the first tick builds every row");
    let rows = gpu.read_rows().expect("rows");
    let skin = params.skin as f64;
    let (mut total, mut edge) = (0usize, 0usize);
    for (i, row) in rows.iter().enumerate() {
        assert!(
            row.windows(2).all(|w| w[0] < w[1]),
            "slot {i}: row not ascending: {row:?}"
        );
        let xi = s.positions[i];
        let near = |j: usize, slack: f64| {
            let d = s.positions[j] - xi;
            let d2: f64 = (0..8).map(|k| (d[k] as f64).powi(2)).sum();
            let c = s.params[i].radius.max(s.params[j].radius) as f64 + skin;
            d2 <= c * c * (1.0 + slack)
        };
        for j in (0..s.positions.len()).filter(|&j| j != i) {
            // The CPU's test: within (cutoff + skin)² · (1 + 1e-5).
            let found = row.binary_search(&(j as u32)).is_ok();
            if found != near(j, 1e-5) {
                assert!(
                    near(j, 1e-5 + 1e-6) && !near(j, 1e-5 - 1e-6),
                    "slot {i}: candidate {j} {} but it is {} the cutoff + skin",
                    if found { "found" } else { "missed" },
                    if found { "beyond" } else { "within" }
                );
                edge += 1;
            }
        }
        total += row.len();
    }
    eprintln!(
        "rows: {total} candidates ({:.1} per token), {edge} within rounding of the edge",
        total as f64 / rows.len() as f64
    );
    assert!(
        total > 20 * rows.len(),
        "a settled world has many candidates"
    );
    assert!(
        edge * 1_000_000 <= total.max(1_000_000),
        "{edge} edge cases of {total}"
    );
}

#[test]
fn hundred_ticks_agree_with_the_cpu_engine() {
    let Some(mut gpu) = device() else { return };
    for name in ["clusters", "uniform"] {
        let mut sim = engine(name, 2_000, 3, 150);
        sim.run(1);
        let s = snapshot(&mut sim);
        assert!(s.links.len() >= 100, "{name}: links are part of the test");
        load(&mut gpu, &s, params_of(&sim));
        let limited_before = sim.integrate_stats().speed_limited;
        let mut worst = 0.0f32;
        for t in 1..=100 {
            sim.step();
            gpu.step(1).expect("a tick");
            let (x, _) = gpu.read_state().expect("positions");
            let cpu = snapshot(&mut sim).positions;
            let e = position_error(&cpu, &x);
            assert!(
                e <= 1e-4,
                "{name}: tick {t}: positions differ by {e:.2e} of the extent"
            );
            worst = worst.max(e);
        }
        let st = gpu.stats();
        eprintln!("{name}: worst position difference {worst:.2e} over 100 ticks; {st:?}");
        assert_eq!(st.ticks, 100);
        assert!(
            st.rebuilds >= 2,
            "{name}: the lists were rebuilt as tokens moved"
        );
        // Speeds within rounding of the limit may be capped on one side only
        // (fused multiply-adds): as often within 1%.
        let cpu_limited = sim.integrate_stats().speed_limited - limited_before;
        assert!(
            st.speed_limited.abs_diff(cpu_limited) <= cpu_limited / 100 + 2,
            "{name}: the speed limit bit {} times on the GPU, {cpu_limited} on the CPU",
            st.speed_limited
        );
    }
}

#[test]
fn runs_replay_bit_for_bit_whatever_the_skin_and_row_capacity() {
    let Some(mut gpu) = device() else { return };
    let mut sim = engine("clusters", 2_000, 11, 100);
    sim.run(1);
    let s = snapshot(&mut sim);
    let params = params_of(&sim);
    let run = |gpu: &mut GpuResident, p: ResidentParams| {
        load(gpu, &s, p);
        gpu.step(150).expect("150 ticks");
        let (x, v) = gpu.read_state().expect("state");
        (bits(&x), bits(&v), gpu.stats())
    };
    let (x0, v0, first) = run(&mut gpu, params);
    let (x1, v1, _) = run(&mut gpu, params);
    assert!(
        x0 == x1 && v0 == v1,
        "a second run on the same device differs"
    );
    assert!(first.rebuilds >= 2);
    // Rows hold every pair within the cutoff whenever they were built: a wider
    // skin (fewer rebuilds, longer rows) changes nothing.
    let wide = ResidentParams {
        skin: 0.4,
        ..params
    };
    let (x2, v2, st) = run(&mut gpu, wide);
    assert!(st.rebuilds < first.rebuilds, "{st:?} vs {first:?}");
    assert!(x0 == x2 && v0 == v2, "the skin changed the result");
    // Refreshing only the rows of the tokens past half the skin gives what
    // searching every row gives.
    assert!(
        first.full_rebuilds < first.rebuilds && first.rows_built < first.rebuilds * 2_000,
        "the run refreshed rows: {first:?}"
    );
    gpu.set_full_rebuilds(true);
    let (x4, v4, st) = run(&mut gpu, params);
    assert_eq!(st.full_rebuilds, st.rebuilds, "{st:?}");
    assert_eq!(st.rows_built, st.rebuilds * 2_000);
    assert!(x0 == x4 && v0 == v4, "full rebuilds differ from refreshes");
    gpu.set_full_rebuilds(false);
    // Ordering the tokens again (every 7 ticks) changes only the boxes.
    gpu.set_reorder_every(7);
    let (x6, v6, st) = run(&mut gpu, params);
    assert!(st.reorders >= 20, "{st:?}");
    assert!(x0 == x6 && v0 == v6, "reordering changed the result");
    gpu.set_reorder_every(neurograph::backend::gpu::resident::DEFAULT_REORDER_EVERY);
    // Rows of 4 slots overflow at once: each batch is recomputed with longer rows.
    gpu.set_first_row_capacity(4);
    let (x3, v3, st) = run(&mut gpu, params);
    assert!(st.regrows >= 1 && st.row_capacity > 4, "{st:?}");
    assert!(x0 == x3 && v0 == v3, "the recomputed batch differs");
    // So is a profiled tick whose rows overflow.
    load(&mut gpu, &s, params);
    let profiled = gpu.profile_tick().expect("a profiled tick");
    assert_eq!(profiled.kernels.len(), 12);
    assert!(
        profiled.rebuilt && gpu.stats().regrows == 1,
        "{:?}",
        gpu.stats()
    );
    if gpu
        .context()
        .features
        .contains(wgpu::Features::TIMESTAMP_QUERY)
    {
        assert!(profiled.timestamps);
    }
    gpu.step(149).expect("149 ticks");
    let (x5, v5) = gpu.read_state().expect("state");
    assert!(
        x0 == bits(&x5) && v0 == bits(&v5),
        "a profiled, regrown tick differs"
    );
    eprintln!("refreshing: {first:?}");
}

#[test]
fn a_tick_moves_far_less_than_one_percent_of_the_state() {
    let Some(mut gpu) = device() else { return };
    let mut sim = engine("uniform", 3_000, 5, 200);
    sim.run(1);
    let s = snapshot(&mut sim);
    load(&mut gpu, &s, params_of(&sim));
    gpu.step(1).expect("a tick");
    let before = gpu.transfers();
    let ticks = 200;
    gpu.step(ticks).expect("ticks");
    let after = gpu.transfers();
    let moved = (after.uploaded - before.uploaded) + (after.read_back - before.read_back);
    let state = gpu.state_bytes(s.links.ends().len());
    let per_tick = moved as f64 / ticks as f64;
    eprintln!(
        "{moved} bytes over {ticks} ticks: {per_tick:.1} B/tick, {:.5}% of the {state}-byte state",
        100.0 * per_tick / state as f64
    );
    assert_eq!(
        after.uploaded, before.uploaded,
        "nothing is written per tick"
    );
    assert!(per_tick <= 0.01 * state as f64);
    // Reading the state back is what a CPU stage would pay: 64 bytes a token.
    gpu.read_state().expect("state");
    assert_eq!(
        gpu.transfers().read_back - after.read_back,
        64 * s.positions.len() as u64
    );
}

#[test]
fn bad_input_is_refused_and_too_large_worlds_are_named() {
    let Some(mut gpu) = device() else { return };
    assert!(matches!(gpu.step(1), Err(GpuError::BadInput(_))));
    let mut sim = engine("uniform", 300, 1, 10);
    let mut s = snapshot(&mut sim);
    let params = params_of(&sim);
    let try_load = |gpu: &mut GpuResident, s: &Snapshot| gpu.load(s.state(), params);
    s.positions[7] = Vec8::splat(f32::NAN);
    let e = try_load(&mut gpu, &s).unwrap_err().to_string();
    assert!(e.contains("slot 7") && e.contains("not finite"), "{e}");
    s.positions[7] = Vec8::ZERO;
    s.params[3].mass = 0.0;
    let e = try_load(&mut gpu, &s).unwrap_err().to_string();
    assert!(e.contains("slot 3") && e.contains("mass 0"), "{e}");
    s.params[3].mass = 1.0;
    s.velocities.pop();
    let e = try_load(&mut gpu, &s).unwrap_err().to_string();
    assert!(e.contains("300 positions, 299 velocities"), "{e}");
    s.velocities.push(Vec8::ZERO);
    let hi = params.max_bounds[2];
    let mut a = s.positions[5].to_array();
    a[2] = hi * 2.0 + 1.0;
    s.positions[5] = Vec8::from_array(a);
    let e = try_load(&mut gpu, &s).unwrap_err().to_string();
    assert!(
        e.contains("slot 5: coordinate 2") && e.contains("outside the bounds"),
        "{e}"
    );
    a[2] = 0.0;
    s.positions[5] = Vec8::from_array(a);
    let nan_skin = ResidentParams {
        skin: f32::NAN,
        ..params
    };
    let e = gpu.load(s.state(), nan_skin).unwrap_err().to_string();
    assert!(e.contains("skin is NaN"), "{e}");
    try_load(&mut gpu, &s).expect("valid again");
    // Rows of 10⁶ slots for 300 tokens: 1.2 GB, past any binding lavapipe allows.
    gpu.set_first_row_capacity(1_000_000);
    let limit = gpu.context().max_binding();
    if limit >= 1_200_000_000 {
        eprintln!("this device binds {limit} bytes: rows of 1.2 GB fit");
        return;
    }
    match try_load(&mut gpu, &s) {
        Err(GpuError::TooLarge { what, bytes, .. }) => {
            assert_eq!(what, "neighbour rows");
            assert_eq!(bytes, 300 * 1_000_000 * 4);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(gpu.is_empty(), "no world after a refusal");
    assert!(
        matches!(gpu.step(1), Err(GpuError::BadInput(_))),
        "no world after a refusal"
    );
}
