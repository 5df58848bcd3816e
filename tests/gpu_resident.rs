//! The GPU-resident tick (`backend::gpu::resident`) against the CPU engine, on
//! whatever Vulkan adapter there is (lavapipe in CI; `NEUROGRAPH_REQUIRE_GPU=1`
//! makes a missing adapter a failure rather than a skip).
#![cfg(feature = "gpu")]

mod common;

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

/// A CDNA whose tick is only physics: no learning, no link formation, no
/// hierarchy.
fn physics_only() -> Cdna {
    let mut cdna = Cdna::default();
    cdna.graph.learning_rate = 0.0;
    cdna.graph.decay_rate = 0.0;
    cdna.graph.form_within = 0.0;
    cdna.hierarchy.organize_every = 0;
    cdna
}

/// A CPU engine whose tick is only physics (the stages the resident tick
/// runs on the device).
fn engine(name: &str, tokens: usize, seed: u64, links: usize) -> Simulation {
    engine_on(Backend::Cpu, physics_only(), name, tokens, seed, links).expect("valid settings")
}

/// `name`'s world with `links` links on `backend` under `cdna` (`None`: the
/// GPU cannot be used here and it is not required).
fn engine_on(
    backend: Backend,
    cdna: Cdna,
    name: &str,
    tokens: usize,
    seed: u64,
    links: usize,
) -> Option<Simulation> {
    let sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: 2,
            backend,
            ..Default::default()
        },
        cdna,
        ..Default::default()
    });
    let mut sim = match sim {
        Ok(sim) => sim,
        Err(e) if !required() && backend == Backend::Gpu => {
            eprintln!("SKIPPED: no usable GPU ({e}); set NEUROGRAPH_REQUIRE_GPU=1 to fail instead");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
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
    Some(sim)
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

// ---- The resident tick as the engine's tick (`--backend gpu`) --------------

/// Positions in id order.
fn positions(sim: &mut Simulation) -> Vec<Vec8> {
    sim.resident_world().positions
}

/// Whether `sim`'s last tick ran on the device end to end.
fn ran_resident(sim: &Simulation) -> bool {
    sim.world()
        .resource::<neurograph::systems::ForceBuffers>()
        .resident
        .is_some()
}

/// Steps a CPU and a GPU engine `ticks` times, comparing positions after every
/// tick; returns the worst error.
fn lockstep(label: &str, cpu: &mut Simulation, gpu: &mut Simulation, ticks: u32) -> f32 {
    let mut worst = 0.0f32;
    for t in 1..=ticks {
        cpu.step();
        gpu.step();
        assert!(ran_resident(gpu), "{label}: tick {t} did not run resident");
        // A link that forms (or learns past the pruning threshold) on a
        // near-tie may do so a tick apart: at most one in a thousand.
        let (a, b) = (cpu.link_count(), gpu.link_count());
        if a != b {
            eprintln!("{label}: tick {t}: {a} links on the CPU, {b} on the GPU");
        }
        assert!(
            a.abs_diff(b) * 1000 <= a.max(1),
            "{label}: tick {t}: {a} links on the CPU, {b} on the GPU"
        );
        let e = position_error(&positions(cpu), &positions(gpu));
        assert!(
            e <= POSITION_TOLERANCE,
            "{label}: tick {t}: position error {e:e} > {POSITION_TOLERANCE:e}"
        );
        worst = worst.max(e);
    }
    worst
}

/// After every tick, positions are within this of the CPU's, relative to the
/// world's extent.
const POSITION_TOLERANCE: f32 = 1e-4;

#[test]
fn backend_gpu_runs_the_whole_tick_on_the_device_and_agrees_with_the_cpu() {
    // Physics only, and the engine's default tick: learning (link weights
    // and link proposals from the device), the hierarchy and its group pull.
    let cases = [
        ("clusters", physics_only(), 150, "physics"),
        ("uniform", physics_only(), 150, "physics"),
        ("clusters", Cdna::default(), 0, "default"),
    ];
    for (name, cdna, links, what) in cases {
        let label = format!("{name} ({what})");
        let n = 2000;
        let mut cpu = engine_on(Backend::Cpu, cdna.clone(), name, n, 5, links).unwrap();
        let Some(mut gpu) = engine_on(Backend::Gpu, cdna, name, n, 5, links) else {
            return;
        };
        assert_eq!(gpu.backend().active_tick(), Some(GpuTick::Resident));
        let worst = lockstep(&label, &mut cpu, &mut gpu, 100);
        let r = gpu.backend().resident().expect("the resident tick ran");
        let t = r.totals();
        eprintln!(
            "{label}: {n} tokens, 100 ticks: worst position error {worst:e}; {} links, {} groups; {} loads, {:.0} B/tick up, {:.0} B/tick back",
            gpu.link_count(),
            gpu.world()
                .resource::<neurograph::systems::GroupEntities>()
                .0
                .len(),
            t.loads,
            t.uploaded_bytes as f64 / t.ticks as f64,
            t.readback_bytes as f64 / t.ticks as f64
        );
        assert_eq!(t.ticks, 100);
        // Nothing but the device changed the tokens: one upload, at the start.
        assert_eq!(t.loads, 1, "{label}");
        // Per tick: positions, velocities, densities, proposals and pair
        // counts (76 B a token) and the 64 B of counters (read once more
        // for each batch recomputed with longer rows).
        let regrows = r.gpu().stats().regrows;
        assert_eq!(
            t.readback_bytes,
            100 * (76 * n as u64 + 64) + 64 * regrows,
            "{label}"
        );
        assert_eq!(
            cpu.world()
                .resource::<neurograph::systems::GroupEntities>()
                .0
                .len(),
            gpu.world()
                .resource::<neurograph::systems::GroupEntities>()
                .0
                .len(),
            "{label}: groups"
        );
    }
}

#[test]
fn commands_between_ticks_reach_the_device() {
    let (name, n) = ("clusters", 1500);
    let mut cpu = engine(name, n, 9, 100);
    let Some(mut gpu) = engine_on(Backend::Gpu, physics_only(), name, n, 9, 100) else {
        return;
    };
    lockstep("before", &mut cpu, &mut gpu, 10);
    let ids = cpu.ids();
    let spec = TokenSpec::at(Vec8::from_array([0.5; 8]));
    let edits = [
        SimCommand::Impulse {
            id: TokenId(ids[3]),
            impulse: Vec8::from_array([0.3, -0.2, 0.0, 0.1, 0.0, 0.0, 0.2, 0.0]),
        },
        SimCommand::Set {
            id: TokenId(ids[10]),
            value: SetValue::Position(Vec8::from_array([1.0; 8])),
        },
        SimCommand::Set {
            id: TokenId(ids[11]),
            value: SetValue::Charge(-0.5),
        },
        SimCommand::Despawn(TokenId(ids[20])),
        SimCommand::Spawn(spec),
        SimCommand::Link {
            a: TokenId(ids[32]),
            b: TokenId(ids[35]),
            spec: LinkSpec::new(0.9, 0.4),
        },
        SimCommand::Unlink {
            a: TokenId(ids[0]),
            b: TokenId(ids[1]),
        },
    ];
    for (k, cmd) in edits.into_iter().enumerate() {
        cpu.apply(cmd.clone()).expect("valid on the CPU");
        gpu.apply(cmd).expect("valid on the GPU");
        lockstep(&format!("after edit {k}"), &mut cpu, &mut gpu, 4);
    }
    let t = gpu.backend().resident().unwrap().totals();
    // The link edits change only links (written without a reload); the
    // token edits each make the next tick upload the state.
    assert_eq!(t.loads, 1 + 5, "{t:?}");
}

#[test]
fn a_wal_replays_resident_assisted_and_cpu_ticks_each_as_they_ran() {
    use neurograph::wal;
    let Some(mut sim) = engine_on(Backend::Gpu, Cdna::default(), "clusters", 800, 3, 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = wal::Manifest {
        format_version: wal::FORMAT_VERSION,
        sim: sim.world().resource::<SimConfig>().clone(),
        quotas: Default::default(),
        run: [("job".to_string(), "resident".to_string())].into(),
    };
    wal::create(dir.path(), &manifest, &mut sim, &wal::sync_options(100)).unwrap();
    sim.run(12);
    // A command between ticks: journaled, and replayed before the tick.
    let id = TokenId(sim.ids()[5]);
    sim.apply(SimCommand::Impulse {
        id,
        impulse: Vec8::from_array([0.2; 8]),
    })
    .unwrap();
    sim.run(3);
    sim.world_mut()
        .resource_mut::<ForceBackend>()
        .set_gpu_tick(GpuTick::Assisted);
    sim.run(4);
    sim.world_mut()
        .resource_mut::<ForceBackend>()
        .set_gpu_tick(GpuTick::Resident);
    sim.run(4);
    sim.world_mut()
        .resource_mut::<ForceBackend>()
        .failed("simulated device loss".into());
    sim.run(2);
    let digest = sim.digest();
    wal::abandon(&mut sim).unwrap();
    drop(sim);
    let info = wal::inspect(dir.path()).unwrap();
    let count = |f: fn(&wal::SegmentInfo) -> u64| info.segments.iter().map(f).sum::<u64>();
    assert_eq!(count(|s| s.records), 25);
    assert_eq!(count(|s| s.gpu_ticks), 23);
    assert_eq!(count(|s| s.resident_ticks), 19);
    // From the snapshot of tick 0, every tick replays on what computed it
    // (the resident ones on a fresh device world) and its digest matches.
    let rec = wal::recover::<Simulation>(
        dir.path(),
        &wal::RecoverOptions {
            threads: 2,
            exclusive: false,
        },
    )
    .expect("each tick replays as it ran");
    assert_eq!(rec.report.snapshot_tick, 0);
    assert_eq!(rec.report.records_replayed, 25);
    assert_eq!(rec.report.digest, digest.to_string());
}

#[test]
fn a_world_whose_rows_outgrow_a_binding_runs_assisted_and_says_why() {
    let cdna = physics_only();
    let Some(mut gpu) = engine_on(Backend::Gpu, cdna.clone(), "clusters", 2000, 4, 0) else {
        return;
    };
    let mut cpu = engine_on(Backend::Cpu, cdna, "clusters", 2000, 4, 0).unwrap();
    // 128 KiB bindings: the resident rows (2,000 × 64 slots × 4 B) do not
    // fit; the assisted pass splits its rows over bindings and does.
    gpu.world_mut()
        .resource_mut::<ForceBackend>()
        .gpu_mut()
        .expect("on the GPU")
        .context_mut()
        .limits
        .max_storage_buffer_binding_size = 128 << 10;
    for _ in 0..5 {
        cpu.step();
        gpu.step();
    }
    let b = gpu.backend();
    assert_eq!(b.active(), Backend::Gpu);
    assert_eq!(b.active_tick(), Some(GpuTick::Assisted));
    let why = b.resident_refused().expect("a reason");
    assert!(
        why.contains("512000 bytes") && why.contains("131072"),
        "{why}"
    );
    assert!(!ran_resident(&gpu));
    let e = position_error(&positions(&mut cpu), &positions(&mut gpu));
    assert!(e <= POSITION_TOLERANCE, "{e:e}");
}

#[cfg(feature = "cli")]
fn neurograph(args: &[&str]) -> std::process::Output {
    common::bin().args(args).output().expect("the CLI runs")
}

#[cfg(feature = "cli")]
#[test]
fn run_backend_gpu_is_resident_and_reports_what_crosses_the_bus() {
    let Some(_) = engine_on(Backend::Gpu, Cdna::default(), "clusters", 10, 1, 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let out = neurograph(&[
        "run",
        "--tokens",
        "1200",
        "--ticks",
        "30",
        "--json",
        "--quiet",
        "--backend",
        "gpu",
        "--wal",
        wal,
        "--snapshot-every",
        "20",
    ]);
    let j = common::json_of(&out);
    assert_eq!(j["backend"], "gpu");
    assert_eq!(j["gpu_tick"], "resident");
    assert!(j["gpu_resident_refused"].is_null());
    let r = &j["gpu_resident"];
    assert_eq!(r["ticks"], 30);
    let back = r["readback_bytes"].as_u64().unwrap();
    assert!(back >= 30 * (76 * 1200 + 64), "{r}");
    assert!(r["loads"].as_u64().unwrap() >= 1, "{r}");
    // The assisted pass did not run.
    assert_eq!(j["gpu"]["passes"], 0);
    let digest = j["digest"].as_str().unwrap().to_string();
    // The log tags every tick resident; recovery replays ticks 21..30 on the
    // device from the snapshot of tick 20 and checks each digest.
    let inspect = neurograph(&["inspect", "--wal", wal]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("gpu resident 30"), "{text}");
    common::recover_without_snapshot(wal, 30, &digest, 10);
}

#[cfg(feature = "cli")]
#[test]
fn a_resumed_run_goes_on_with_the_gpu_tick_its_wal_started_with() {
    let Some(_) = engine_on(Backend::Gpu, Cdna::default(), "clusters", 10, 1, 0) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let run = |extra: &[&str], ticks: &str| {
        let out = neurograph(
            &[
                &[
                    "run", "--tokens", "600", "--ticks", ticks, "--json", "--quiet", "--wal", wal,
                ][..],
                extra,
            ]
            .concat(),
        );
        common::json_of(&out)
    };
    let first = run(&["--backend", "gpu", "--gpu-tick", "assisted"], "5");
    assert_eq!(first["gpu_tick"], "assisted");
    let manifest = std::fs::read_to_string(dir.path().join("wal/manifest.json")).unwrap();
    assert!(
        manifest.contains("\"gpu_tick\": \"assisted\""),
        "{manifest}"
    );
    // No flag: the manifest's backend and GPU tick.
    let resumed = run(&[], "9");
    assert_eq!(resumed["final_tick"], 9);
    assert_eq!(resumed["backend"], "gpu");
    assert_eq!(resumed["gpu_tick"], "assisted");
    // A GPU tick named on the command wins over the manifest's.
    let named = run(&["--gpu-tick", "resident"], "11");
    assert_eq!(named["backend"], "gpu");
    assert_eq!(named["gpu_tick"], "resident");
    assert_eq!(named["gpu_resident"]["ticks"], 2);
    // A backend named on the command brings its own GPU tick (the default).
    let again = run(&["--backend", "gpu"], "12");
    assert_eq!(again["gpu_tick"], "resident");
    assert_eq!(again["gpu_resident"]["ticks"], 1);
    // Resumed once more without a flag: the manifest's, still assisted.
    let last = run(&[], "13");
    assert_eq!(last["gpu_tick"], "assisted");
}
