//! Contract tests of the GPU force backend: the real shaders are dispatched and
//! their results compared with the CPU path on the same worlds.
//!
//! Without a usable adapter these tests print `SKIPPED` and pass, unless
//! `NEUROGRAPH_REQUIRE_GPU=1` is set (CI sets it, with Mesa's lavapipe
//! installed): then a missing adapter fails them.
#![cfg(feature = "gpu")]

mod common;

use common::scenario_tokens;

use neurograph::backend::gpu::{AdapterPolicy, ForceInput, GpuContext, GpuForces};
use neurograph::model::registry::SimRng;
use neurograph::physics::ForceParams;
use neurograph::prelude::*;
use neurograph::sim::SimError;
use neurograph::systems::ForceBuffers;
use neurograph::systems::forces::{Proposals, compute_densities, compute_forces_proposing};
use neurograph::wal;

/// Per tick, every token's GPU force is within this of the CPU's, relative to
/// the larger of its own magnitude and the world's median force magnitude.
const FORCE_TOLERANCE: f32 = 1e-4;
/// After 100 ticks, every coordinate is within this of the CPU's, relative to
/// the extent of the world (the largest |coordinate|).
const POSITION_TOLERANCE: f32 = 1e-4;

fn required() -> bool {
    std::env::var("NEUROGRAPH_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The GPU computes the forces only (`gpu_tick = assisted`): these tests
/// check that pass against the CPU's on the CPU's own buffers.
/// `gpu_resident.rs` tests the resident tick, `--backend gpu`'s default.
fn settings(backend: Backend) -> SimSettings {
    SimSettings {
        config: SimConfig {
            backend,
            gpu_tick: GpuTick::Assisted,
            threads: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A pair of simulations, CPU and GPU, or `None` (skipped) with no adapter.
fn pair(settings_of: &impl Fn(Backend) -> SimSettings) -> Option<(Simulation, Simulation)> {
    let cpu = Simulation::new(settings_of(Backend::Cpu)).expect("valid settings");
    match Simulation::new(settings_of(Backend::Gpu)) {
        Ok(gpu) => {
            assert_eq!(gpu.backend().active(), Backend::Gpu);
            Some((cpu, gpu))
        }
        Err(SimError::Gpu(e)) if !required() => {
            eprintln!(
                "SKIPPED: no usable GPU adapter ({e}); set NEUROGRAPH_REQUIRE_GPU=1 to fail instead"
            );
            None
        }
        Err(e) => panic!("the GPU backend must start here (NEUROGRAPH_REQUIRE_GPU is set): {e}"),
    }
}

/// Whether the GPU tests can run here (printing `SKIPPED` when not; failing
/// when `NEUROGRAPH_REQUIRE_GPU` is set).
fn gpu_available() -> bool {
    pair(&settings).is_some()
}

#[cfg(feature = "cli")]
/// `run` arguments for `tokens` tokens up to tick `ticks` on `backend`,
/// journaled in `wal` with a snapshot every `every` ticks.
fn wal_run<'a>(
    wal: &'a str,
    tokens: &'a str,
    backend: &'a str,
    ticks: &'a str,
    every: &'a str,
) -> Vec<&'a str> {
    vec![
        "run",
        "--tokens",
        tokens,
        "--ticks",
        ticks,
        "--json",
        "--quiet",
        "--backend",
        backend,
        "--wal",
        wal,
        "--snapshot-every",
        every,
    ]
}

fn load(sim: &mut Simulation, tokens: &[TokenSpec], seed: u64) {
    sim.world_mut().insert_resource(SimRng::seeded(seed));
    for chunk in tokens.chunks(4096) {
        sim.spawn_batch(chunk.to_vec()).expect("valid tokens");
    }
}

/// The pairs counted differently by the GPU (`gpu_counts`, per slot) and the
/// CPU on `buf`; fails unless each such token has a candidate within float
/// rounding (1e-5) of its cutoff: the two sides round `r²` differently (FMA,
/// summation order).
fn boundary_flips_of(
    label: &str,
    t: u32,
    buf: &ForceBuffers,
    gpu_counts: impl Iterator<Item = u32>,
) -> u64 {
    let mut flips = 0;
    for (i, gpu_count) in gpu_counts.enumerate() {
        let cpu_count = cpu_pair_count(buf, i);
        if gpu_count != cpu_count {
            let ambiguous = count_pairs(buf, i, 1e-5) != count_pairs(buf, i, -1e-5);
            assert!(
                ambiguous,
                "{label}: tick {t}: token slot {i} has {gpu_count} pairs on the GPU, {cpu_count} on the CPU, and no candidate near its cutoff"
            );
            flips += gpu_count.abs_diff(cpu_count) as u64;
        }
    }
    flips
}

/// The link proposals that differ; fails unless each difference is a near-tie
/// (two partners, or a partner and the formation distance, within 1e-5 in `r²`).
fn proposal_ties_of(label: &str, t: u32, buf: &ForceBuffers, gpu: &[u32], cpu: &[u32]) -> u64 {
    let within2 = buf.proposed.map_or(0.0, |w| (w as f64).powi(2));
    let d2 = |i: usize, j: u32| -> Option<f64> {
        (j != u32::MAX).then(|| {
            let d = buf.positions[j as usize] - buf.positions[i];
            (0..8).map(|k| (d[k] as f64).powi(2)).sum()
        })
    };
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.max(b);
    let mut ties = 0;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        if g == c {
            continue;
        }
        let ok = match (d2(i, g), d2(i, c)) {
            (Some(a), Some(b)) => near(a, b),
            (Some(a), None) | (None, Some(a)) => near(a, within2),
            (None, None) => false,
        };
        assert!(
            ok,
            "{label}: tick {t}: slot {i} proposes {g} on the GPU, {c} on the CPU, and it is no near-tie"
        );
        ties += 1;
    }
    ties
}

/// Token `i`'s pairs as the CPU pass counts them.
fn cpu_pair_count(buf: &ForceBuffers, i: usize) -> u32 {
    let (xi, ri) = (buf.positions[i], buf.params[i].radius);
    buf.neighbors
        .row(i)
        .iter()
        .filter(|&&j| {
            let cut = ri.max(buf.params[j as usize].radius);
            (buf.positions[j as usize] - xi).length_squared() < cut * cut
        })
        .count() as u32
}

/// Token `i`'s pairs with the cutoff scaled by `1 + rel` (f64, for the
/// boundary check).
fn count_pairs(buf: &ForceBuffers, i: usize, rel: f64) -> u32 {
    let (xi, ri) = (buf.positions[i], buf.params[i].radius);
    buf.neighbors
        .row(i)
        .iter()
        .filter(|&&j| {
            let j = j as usize;
            let d = buf.positions[j] - xi;
            let r2: f64 = (0..8).map(|k| (d[k] as f64).powi(2)).sum();
            let cut = ri.max(buf.params[j].radius) as f64;
            r2 < cut * cut * (1.0 + rel)
        })
        .count() as u32
}

/// The largest per-token force error of `gpu` against `cpu` (same slots),
/// relative to max(|F_cpu|, median |F_cpu|).
fn force_error(a: &[Vec8], b: &[Vec8]) -> f32 {
    assert_eq!(a.len(), b.len());
    for (s, fb) in b.iter().enumerate() {
        assert!(fb.is_finite(), "GPU force of slot {s} is {fb:?}");
    }
    neurograph::physics::max_relative_difference(a, b)
}

/// The largest per-token density difference of `gpu` against `cpu` (same slots),
/// relative to max(ρ_cpu, median ρ_cpu), as forces are compared.
fn density_error(cpu: &[f32], gpu: &[f32]) -> f32 {
    assert_eq!(cpu.len(), gpu.len());
    let mut sorted = cpu.to_vec();
    sorted.sort_by(f32::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    cpu.iter()
        .zip(gpu)
        .enumerate()
        .fold(0.0f32, |worst, (s, (a, b))| {
            assert!(b.is_finite(), "GPU density of slot {s} is {b}");
            worst.max((a - b).abs() / a.max(median).max(f32::MIN_POSITIVE))
        })
}

/// The largest coordinate difference after the same ticks, relative to the
/// extent of the world.
fn position_error(cpu: &Simulation, gpu: &Simulation) -> f32 {
    let mut worst = 0.0f32;
    let mut extent = 1e-6f32;
    let ids = cpu.world().resource::<ForceBuffers>().ids.clone();
    for id in ids {
        let a = cpu.token(id).expect("same tokens").position;
        let b = gpu.token(id).expect("same tokens").position;
        for k in 0..8 {
            extent = extent.max(a[k].abs());
            worst = worst.max((a[k] - b[k]).abs());
        }
    }
    worst / extent
}

/// The contract, on `tokens`:
/// 1. per tick, on the same state: the GPU pass run on the CPU world's gathered
///    buffers gives the same pair count, the same link proposals, and forces
///    within [`FORCE_TOLERANCE`];
/// 2. run freely side by side for `ticks`, the two backends end with positions
///    within [`POSITION_TOLERANCE`].
fn contract(
    label: &str,
    tokens: &[TokenSpec],
    ticks: u32,
    settings_of: impl Fn(Backend) -> SimSettings,
) {
    contract_with(label, tokens, ticks, settings_of, |_, _| {});
}

/// [`contract`], with `edit(tick, sim)` applied to both worlds before each tick.
fn contract_with(
    label: &str,
    tokens: &[TokenSpec],
    ticks: u32,
    settings_of: impl Fn(Backend) -> SimSettings,
    edit: impl Fn(u32, &mut Simulation),
) {
    let Some((mut cpu, mut gpu)) = pair(&settings_of) else {
        return;
    };
    load(&mut cpu, tokens, 7);
    load(&mut gpu, tokens, 7);
    let mut pass = GpuForces::new(GpuContext::new(AdapterPolicy::Any).expect("an adapter"))
        .expect("the force pass");
    let mut worst_force = 0.0f32;
    let mut boundary_flips = 0u64;
    let mut free_flips = 0u64;
    let mut proposal_ties = 0u64;
    let mut total_pairs = 0u64;
    for t in 1..=ticks {
        edit(t, &mut cpu);
        edit(t, &mut gpu);
        cpu.step();
        gpu.step();
        let fp = ForceParams::from_cdna(cpu.cdna());
        let buf = cpu.world().resource::<ForceBuffers>();
        let n = buf.ids.len();
        let mut neighbors = buf.neighbors.clone();
        let mut forces = vec![Vec8::ZERO; n];
        let mut nearest = vec![u32::MAX; n];
        let mut density = vec![0.0f32; n];
        let g = &cpu.cdna().graph;
        let proposals = buf
            .proposed
            .map(|w| (w * w, g.form_max_degree.min(g.max_degree)));
        let pairs = pass
            .compute(ForceInput {
                positions: &buf.positions,
                params: &buf.params,
                neighbors: &mut neighbors,
                links: buf.links(),
                links_key: (t as u64, 0),
                fp: &fp,
                proposals,
                density: &mut density,
                forces: &mut forces,
                nearest: &mut nearest,
            })
            .expect("the GPU pass runs");
        // The CPU pass on the same buffers (`buf.forces` also holds the group pull).
        let mut cpu_forces = vec![Vec8::ZERO; n];
        let mut cpu_nearest = vec![u32::MAX; n];
        let mut cpu_density = vec![0.0f32; n];
        compute_densities(
            &buf.positions,
            &buf.params,
            &buf.neighbors,
            &mut cpu_density,
        );
        assert_eq!(cpu_density, buf.density, "the reference is the tick's pass");
        let e = density_error(&cpu_density, &density);
        assert!(
            e <= FORCE_TOLERANCE,
            "{label}: tick {t}: density error {e:e} > {FORCE_TOLERANCE:e}"
        );
        let cpu_pairs = compute_forces_proposing(
            &buf.positions,
            &buf.params,
            &cpu_density,
            &buf.neighbors,
            buf.links(),
            &fp,
            &mut cpu_forces,
            proposals.map(|(within2, max_degree)| Proposals {
                within2,
                max_degree: max_degree as usize,
                ids: &buf.ids,
                nearest: &mut cpu_nearest,
            }),
        );
        assert_eq!(
            cpu_pairs, buf.stats.pairs,
            "the reference is the tick's pass"
        );
        // Token by token (differences could cancel in the totals).
        let flips = boundary_flips_of(label, t, buf, pass.pair_counts());
        assert!(flips >= pairs.abs_diff(cpu_pairs));
        boundary_flips += flips;
        if proposals.is_some() && nearest != cpu_nearest {
            proposal_ties += proposal_ties_of(label, t, buf, &nearest, &cpu_nearest);
        }
        total_pairs += cpu_pairs;
        // The free-running GPU world (incremental uploads, row patches): its
        // pair count equals the CPU pass's on its own buffers.
        {
            let gb = gpu.world().resource::<ForceBuffers>();
            let mut scratch = vec![Vec8::ZERO; gb.ids.len()];
            let reference = neurograph::systems::compute_forces(
                &gb.positions,
                &gb.params,
                &gb.density,
                &gb.neighbors,
                gb.links(),
                &ForceParams::from_cdna(gpu.cdna()),
                &mut scratch,
            );
            if let Some(pass) = gpu.backend().gpu() {
                let flips = boundary_flips_of(label, t, gb, pass.pair_counts());
                assert!(flips >= reference.abs_diff(gb.stats.pairs));
                free_flips += flips;
            }
        }
        let e = force_error(&cpu_forces, &forces);
        assert!(
            e <= FORCE_TOLERANCE,
            "{label}: tick {t}: force error {e:e} > {FORCE_TOLERANCE:e}"
        );
        worst_force = worst_force.max(e);
        assert!(
            gpu.backend().error().is_none(),
            "{:?}",
            gpu.backend().error()
        );
    }
    let e = position_error(&cpu, &gpu);
    eprintln!(
        "{label}: {} tokens, {ticks} ticks, {total_pairs} pairs in all, {boundary_flips} at the cutoff counted differently, {proposal_ties} proposals differing on a near-tie: worst force error {worst_force:e}, position error {e:e}",
        tokens.len(),
    );
    assert!(
        proposal_ties * 1_000_000 <= total_pairs.max(1),
        "{label}: {proposal_ties} link proposals differ"
    );
    assert!(
        free_flips * 1_000_000 <= total_pairs.max(1),
        "{label}: the free-running GPU world counted {free_flips} pairs differently"
    );
    assert!(
        boundary_flips * 1_000_000 <= total_pairs.max(1),
        "{label}: {boundary_flips} of {total_pairs} pairs differ: more than rounding explains"
    );
    assert!(
        e <= POSITION_TOLERANCE,
        "{label}: position error {e:e} after {ticks} ticks > {POSITION_TOLERANCE:e}"
    );
    if !tokens.is_empty() {
        assert_eq!(gpu.backend().gpu_timings().map(|t| t.2), Some(ticks as u64));
    }
}

#[test]
fn clusters_match_the_cpu_for_100_ticks() {
    contract(
        "clusters",
        &scenario_tokens("clusters", 3000, 11),
        100,
        settings,
    );
}

#[test]
fn uniform_matches_the_cpu_for_100_ticks() {
    contract(
        "uniform",
        &scenario_tokens("uniform", 3000, 12),
        100,
        settings,
    );
}

/// A settled world (300 ticks on the CPU, mixed field radii): near rest each
/// token's force is a near-cancelling sum, so the GPU's force is compared with
/// the CPU's relative to the token's force scale, the sum of the magnitudes of
/// its pair and link terms, and its density relative to its own value.
#[test]
fn a_settled_world_agrees_relative_to_each_tokens_force_scale() {
    if !gpu_available() {
        return;
    }
    let mut cpu = Simulation::new(settings(Backend::Cpu)).unwrap();
    let tokens: Vec<TokenSpec> = scenario_tokens("clusters", 2000, 17)
        .into_iter()
        .enumerate()
        .map(|(k, t)| t.with_radius(0.8 + 0.4 * ((k * 7919) % 1000) as f32 / 1000.0))
        .collect();
    load(&mut cpu, &tokens, 7);
    cpu.run(300);
    let mut pass = GpuForces::new(GpuContext::new(AdapterPolicy::Any).expect("an adapter"))
        .expect("the force pass");
    let (pairs, gpu_forces, _, gpu_density) = run_pass(&mut pass, &cpu).expect("the GPU pass runs");
    let buf = cpu.world().resource::<ForceBuffers>();
    let fp = ForceParams::from_cdna(cpu.cdna());
    let n = buf.ids.len();
    let mut density = vec![0.0f32; n];
    compute_densities(&buf.positions, &buf.params, &buf.neighbors, &mut density);
    let mut forces = vec![Vec8::ZERO; n];
    let cpu_pairs = neurograph::systems::compute_forces(
        &buf.positions,
        &buf.params,
        &density,
        &buf.neighbors,
        buf.links(),
        &fp,
        &mut forces,
    );
    assert_eq!(pairs, cpu_pairs);
    let mut worst = 0.0f64;
    for i in 0..n {
        let (xi, pi) = (buf.positions[i], &buf.params[i]);
        let mut scale = 0.0f64;
        for &j in buf.neighbors.row(i) {
            let j = j as usize;
            let (pri, prj) = (fp.pressure(density[i]), fp.pressure(density[j]));
            if let Some(f) = neurograph::physics::pair_force(
                xi,
                pi,
                pri,
                buf.positions[j],
                &buf.params[j],
                prj,
                &fp,
            ) {
                scale += f.length() as f64;
            }
        }
        for l in buf.links().row(i) {
            let f = neurograph::physics::link_force(
                xi,
                buf.positions[l.other as usize],
                fp.k_link * l.weight,
                l.rest,
            );
            scale += f.length() as f64;
        }
        let e = (gpu_forces[i] - forces[i]).length() as f64 / scale.max(1e-6);
        worst = worst.max(e);
        let de = (gpu_density[i] - density[i]).abs() / density[i].max(1e-3);
        assert!(
            de <= 1e-5,
            "slot {i}: density {} vs {}",
            gpu_density[i],
            density[i]
        );
    }
    let old = force_error(&forces, &gpu_forces);
    eprintln!(
        "settled: {n} tokens, {pairs} pairs: worst force error {worst:e} of the force scale ({old:e} of max(|F|, median |F|))"
    );
    assert!(
        worst <= 1e-4,
        "worst force error {worst:e} of the token's force scale"
    );
}

#[test]
fn token_count_not_a_multiple_of_the_workgroup() {
    let n = 64 * 20 + 37;
    assert_ne!(n % neurograph::backend::gpu::WORKGROUP_SIZE as usize, 0);
    contract("n=1317", &scenario_tokens("clusters", n, 13), 20, settings);
}

#[test]
fn empty_world() {
    contract("empty", &[], 5, settings);
}

#[test]
fn one_token() {
    contract(
        "one token",
        &[TokenSpec::at(Vec8::splat(0.25))],
        5,
        settings,
    );
}

#[test]
fn all_tokens_at_one_point() {
    // Every pair is coincident: counted, no force; the core never divides by zero.
    let tokens = vec![TokenSpec::at(Vec8::splat(0.1)); 100];
    contract("one point", &tokens, 5, settings);
}

#[test]
fn buffers_follow_spawns_and_despawns() {
    // The world grows 4x, then shrinks to a tenth, between ticks: the device
    // buffers are reallocated both ways and the results stay the CPU's.
    let first = scenario_tokens("clusters", 1000, 21);
    let more = scenario_tokens("clusters", 3000, 22);
    let held = std::cell::RefCell::new(Vec::new());
    let device_bytes = |sim: &Simulation| sim.backend().gpu().map(|g| g.device_bytes());
    contract_with("spawn/despawn", &first, 30, settings, |t, sim| {
        if let Some(b) = device_bytes(sim).filter(|_| [10, 20, 30].contains(&t)) {
            held.borrow_mut().push(b);
        }
        if t == 10 {
            for chunk in more.chunks(1000) {
                sim.spawn_batch(chunk.to_vec()).unwrap();
            }
        }
        if t == 20 {
            let ids: Vec<TokenId> = sim.world().resource::<ForceBuffers>().ids.clone();
            let mut ids = ids;
            ids.sort();
            for id in ids.into_iter().skip(400) {
                sim.apply(SimCommand::Despawn(id)).unwrap();
            }
        }
    });
    let held = held.into_inner();
    if !held.is_empty() {
        // Device memory before the spawn, after it, after the despawn.
        assert!(held[1] > held[0] && held[2] < held[1], "{held:?}");
    }
}

#[test]
fn links_learn_the_same_way() {
    // Learning on (the default CDNA forms links within 0.5): the GPU pass makes
    // the proposals, weights change every tick, links are pruned and formed.
    contract_with(
        "learning",
        &scenario_tokens("clusters", 1500, 23),
        60,
        settings,
        |t, sim| {
            if t == 30 {
                // By id, so both worlds link the same pairs whatever their slot order.
                let mut ids = sim.world().resource::<ForceBuffers>().ids.clone();
                ids.sort();
                for w in ids.windows(2).take(50) {
                    let _ = sim.apply(SimCommand::Link {
                        a: w[0],
                        b: w[1],
                        spec: LinkSpec::new(0.5, 0.3),
                    });
                }
            }
        },
    );
}

#[cfg(feature = "cli")]
fn neurograph(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[cfg(feature = "cli")]
fn json_of(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[cfg(feature = "cli")]
#[test]
fn run_backend_gpu_json_end_to_end() {
    if !gpu_available() {
        return;
    }
    let common = [
        "run", "--tokens", "1500", "--ticks", "40", "--json", "--quiet",
    ];
    let gpu = neurograph(&[&common[..], &["--backend", "gpu", "--gpu-tick", "assisted"]].concat());
    assert!(
        gpu.status.success(),
        "{}",
        String::from_utf8_lossy(&gpu.stderr)
    );
    let cpu = neurograph(&[&common[..], &["--backend", "cpu"]].concat());
    assert!(cpu.status.success());
    let (g, c) = (json_of(&gpu), json_of(&cpu));
    assert_eq!(g["backend"], "gpu");
    assert_eq!(g["backend_requested"], "gpu");
    assert!(g["gpu_adapter"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(g["gpu"]["passes"], 40);
    assert_eq!(g["gpu_tick"], "assisted");
    assert!(g["gpu_resident"].is_null());
    // Forces (32 B), proposal and pair count (8 B), density (4 B) per token per tick.
    assert_eq!(g["gpu"]["readback_bytes"], 40 * 1500 * 44);
    assert_eq!(c["backend"], "cpu");
    assert!(c["gpu"].is_null());
    assert_eq!(g["tokens"], c["tokens"]);
    // Same physics: the neighbourhoods and the groups found agree closely.
    let (gn, cn) = (
        g["avg_neighbors"].as_f64().unwrap(),
        c["avg_neighbors"].as_f64().unwrap(),
    );
    assert!((gn - cn).abs() <= 0.01 * cn, "avg neighbours {gn} vs {cn}");
    let (ga, ca) = (
        g["ari_level1"].as_f64().unwrap(),
        c["ari_level1"].as_f64().unwrap(),
    );
    assert!((ga - ca).abs() <= 0.05, "ARI {ga} vs {ca}");
}

#[cfg(feature = "cli")]
#[test]
fn auto_uses_a_hardware_gpu_or_warns_and_runs_on_the_cpu() {
    let out = neurograph(&[
        "run",
        "--tokens",
        "300",
        "--ticks",
        "3",
        "--json",
        "--quiet",
        "--backend",
        "auto",
    ]);
    assert!(out.status.success());
    let j = json_of(&out);
    assert_eq!(j["backend_requested"], "auto");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match j["backend"].as_str().unwrap() {
        "gpu" => assert!(!j["gpu_adapter"].as_str().unwrap().contains("software")),
        "cpu" => {
            let why = j["backend_fallback"].as_str().expect("a reason");
            assert!(
                stderr.contains("WARN") && stderr.contains(why.lines().next().unwrap()),
                "{stderr}"
            );
        }
        other => panic!("backend {other}"),
    }
}

#[cfg(feature = "cli")]
#[test]
fn a_gpu_wal_replays_and_verifies_on_the_gpu() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let out = neurograph(&wal_run(wal, "800", "gpu", "35", "10"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = json_of(&out)["digest"].as_str().unwrap().to_string();
    let manifest = std::fs::read_to_string(dir.path().join("wal/manifest.json")).unwrap();
    assert!(manifest.contains("\"backend\": \"gpu\""), "{manifest}");
    // Drop the final snapshot: recovery replays ticks 31..35 on the GPU and
    // checks every digest.
    common::recover_without_snapshot(wal, 35, &digest, 5);
}

#[test]
fn an_embedder_can_choose_the_backend_resource() {
    // A ForceBackend inserted before or after the plugins (but before the app
    // is finished) wins over SimConfig::backend: no device is opened for it.
    for before in [true, false] {
        let mut app = bevy_app::App::new();
        if before {
            app.insert_resource(ForceBackend::cpu());
        }
        app.add_plugins(NeuroGraphPlugins {
            config: SimConfig {
                backend: Backend::Gpu,
                ..Default::default()
            },
            ..Default::default()
        });
        // The device is opened in `finish`, not while plugins are built.
        assert!(!app.world().contains_resource::<ForceBackend>() || before);
        if !before {
            app.insert_resource(ForceBackend::cpu());
        }
        app.finish();
        let b = app.world().resource::<ForceBackend>();
        assert_eq!((b.requested(), b.active()), (Backend::Cpu, Backend::Cpu));
        assert!(b.error().is_none());
    }
    // Without one, `finish` opens the backend SimConfig asks for.
    let mut app = bevy_app::App::new();
    app.add_plugins(NeuroGraphPlugins::default());
    assert!(!app.world().contains_resource::<ForceBackend>());
    app.finish();
    assert_eq!(
        app.world().resource::<ForceBackend>().active(),
        Backend::Cpu
    );
}

#[cfg(feature = "cli")]
#[test]
fn gpu_phases_reach_the_metrics_and_failures_the_black_box() {
    let Some((_, mut gpu)) = pair(&settings) else {
        return;
    };
    load(&mut gpu, &scenario_tokens("clusters", 500, 31), 7);
    let recorder = neurograph::observe::metrics::prometheus_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || gpu.run(4));
    let text = handle.render();
    for phase in ["upload", "dispatch", "readback"] {
        let line = format!("neurograph_gpu_phase_seconds_count{{phase=\"{phase}\"}} 4");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    let readback = format!(
        "neurograph_gpu_transfer_bytes_total{{direction=\"readback\"}} {}",
        4 * 500 * 44
    );
    assert!(text.contains(&readback), "{readback} missing:\n{text}");

    // A failure at run time: the CPU takes over, the error is kept and reaches
    // the black box once.
    gpu.world_mut()
        .resource_mut::<ForceBackend>()
        .failed("simulated device loss".into());
    gpu.run(2);
    assert_eq!(gpu.backend().active(), Backend::Cpu);
    assert_eq!(gpu.backend().error(), Some("simulated device loss"));
    let bb = gpu.world().resource::<neurograph::observe::BlackBox>();
    let hits = bb
        .events()
        .filter(|e| e.message.contains("simulated device loss"))
        .count();
    assert_eq!(hits, 1);
}

/// Runs `pass` on the gathered buffers of `sim`'s last tick.
/// What one GPU pass gives: the pair count, forces, proposals and densities.
type PassOutput = (u64, Vec<Vec8>, Vec<u32>, Vec<f32>);

fn run_pass(
    pass: &mut GpuForces,
    sim: &Simulation,
) -> Result<PassOutput, neurograph::backend::gpu::GpuError> {
    let buf = sim.world().resource::<ForceBuffers>();
    let n = buf.ids.len();
    let g = &sim.cdna().graph;
    let mut neighbors = buf.neighbors.clone();
    let (mut forces, mut nearest) = (vec![Vec8::ZERO; n], vec![u32::MAX; n]);
    let mut density = vec![0.0f32; n];
    let pairs = pass.compute(ForceInput {
        positions: &buf.positions,
        params: &buf.params,
        neighbors: &mut neighbors,
        links: buf.links(),
        links_key: (sim.tick(), 0),
        fp: &ForceParams::from_cdna(sim.cdna()),
        proposals: buf
            .proposed
            .map(|w| (w * w, g.form_max_degree.min(g.max_degree))),
        density: &mut density,
        forces: &mut forces,
        nearest: &mut nearest,
    })?;
    Ok((pairs, forces, nearest, density))
}

#[test]
fn a_world_larger_than_one_binding_is_split_and_a_too_large_one_refused() {
    if !gpu_available() {
        return;
    }
    let mut sim = Simulation::new(settings(Backend::Cpu)).unwrap();
    load(&mut sim, &scenario_tokens("clusters", 3000, 41), 7);
    let open = || GpuForces::new(GpuContext::new(AdapterPolicy::Any).unwrap()).unwrap();
    let mut whole = open();
    let mut split = open();
    // A device that allows 256 KiB per binding: the ~1 MB of candidates go
    // into several buffers, one dispatch each.
    split.context_mut().limits.max_storage_buffer_binding_size = 256 << 10;
    for _ in 0..15 {
        sim.step();
        let a = run_pass(&mut whole, &sim).unwrap();
        let b = run_pass(&mut split, &sim).unwrap();
        assert_eq!(whole.candidate_chunks(), 1);
        assert!(
            split.candidate_chunks() >= 3,
            "{}",
            split.candidate_chunks()
        );
        // Same invocations, same inputs: bit-identical.
        assert_eq!(a, b);
        assert_eq!(a.0, sim.last_pair_count());
    }
    // 4 KiB per binding cannot hold 3,000 positions: refused, naming the
    // buffer, the bytes and the limit.
    let mut tiny = open();
    tiny.context_mut().limits.max_storage_buffer_binding_size = 4 << 10;
    let err = run_pass(&mut tiny, &sim).unwrap_err().to_string();
    assert!(
        err.contains("positions") && err.contains("96000 bytes") && err.contains("4096 bytes"),
        "{err}"
    );
}

#[test]
fn a_failing_pass_hands_the_tick_to_the_cpu() {
    // A real error from the pass (the world outgrows what the device allows):
    // that tick's forces come from the CPU, the error names the limit, and the
    // world goes on as the CPU's would.
    let Some((mut cpu, mut gpu)) = pair(&settings) else {
        return;
    };
    let tokens = scenario_tokens("clusters", 2000, 51);
    load(&mut cpu, &tokens, 7);
    load(&mut gpu, &tokens, 7);
    cpu.run(3);
    gpu.run(3);
    gpu.world_mut()
        .resource_mut::<ForceBackend>()
        .gpu_mut()
        .expect("on the GPU")
        .context_mut()
        .limits
        .max_storage_buffer_binding_size = 16 << 10;
    cpu.step();
    gpu.step();
    let err = gpu.backend().error().expect("the pass failed").to_string();
    assert!(err.contains("16384 bytes"), "{err}");
    assert_eq!(gpu.backend().active(), Backend::Cpu);
    assert_eq!(cpu.last_pair_count(), gpu.last_pair_count());
    let (a, b) = (
        &cpu.world().resource::<ForceBuffers>().forces,
        &gpu.world().resource::<ForceBuffers>().forces,
    );
    assert!(force_error(a, b) <= FORCE_TOLERANCE);
}

#[test]
fn a_wal_mixing_gpu_and_cpu_ticks_replays_each_on_its_own_backend() {
    let Some((_, mut sim)) = pair(&settings) else {
        return;
    };
    load(&mut sim, &scenario_tokens("clusters", 600, 61), 7);
    let dir = tempfile::tempdir().unwrap();
    let manifest = wal::Manifest {
        format_version: wal::FORMAT_VERSION,
        sim: settings(Backend::Gpu).config,
        quotas: Default::default(),
        run: [("job".to_string(), "mixed".to_string())].into(),
    };
    wal::create(dir.path(), &manifest, &mut sim, &wal::sync_options(100)).unwrap();
    sim.run(6);
    // The GPU is lost: later ticks run (and are journaled) on the CPU.
    sim.world_mut()
        .resource_mut::<ForceBackend>()
        .failed("simulated device loss".into());
    sim.run(6);
    let digest = sim.digest();
    // As after a crash: the log ends at tick 12, the only snapshot is tick 0.
    wal::abandon(&mut sim).unwrap();
    drop(sim);
    let rec = wal::recover::<Simulation>(
        dir.path(),
        &wal::RecoverOptions {
            threads: 2,
            exclusive: false,
        },
    )
    .expect("each tick replays on the backend that computed it");
    assert_eq!(rec.report.snapshot_tick, 0);
    assert_eq!(rec.report.records_replayed, 12);
    assert_eq!(rec.report.digest, digest.to_string());
    assert_eq!(
        rec.sim.backend().active(),
        Backend::Cpu,
        "the last ticks ran on the CPU"
    );
}

#[cfg(feature = "fault-injection")]
#[cfg(feature = "cli")]
#[test]
fn a_gpu_run_that_loses_its_gpu_stops_with_its_wal_whole() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let wal = wal.to_str().unwrap();
    let args = |ticks| wal_run(wal, "600", "gpu", ticks, "100");
    let mut first = args("20");
    first.extend(["--fault-gpu-loss-at", "10"]);
    let out = neurograph(&first);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("GPU: at tick 10: fault hook: injected GPU loss at tick 10")
            && stderr.contains("the WAL is closed with a snapshot of this tick"),
        "{stderr}"
    );
    assert!(
        dir.path()
            .join("wal/snap-00000000000000000010.snap")
            .exists()
    );
    let rec = neurograph(&["recover", "--wal", wal, "--json"]);
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    assert_eq!(json_of(&rec)["tick"], 10);
    // Resumed (the GPU is back): the run goes on to tick 20 on the GPU.
    let out = neurograph(&args("20"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_of(&out);
    assert_eq!(
        (j["start_tick"].as_u64(), j["final_tick"].as_u64()),
        (Some(10), Some(20))
    );
    assert_eq!(j["backend"], "gpu");
}

#[cfg(feature = "cli")]
/// `neurograph` with Vulkan shown no driver at all (the loader's own variable).
fn neurograph_without_gpu(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_neurograph"))
        .args(args)
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("the binary runs")
}

#[cfg(feature = "cli")]
#[test]
fn gpu_ticks_need_a_gpu_to_replay_and_say_so() {
    if !gpu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let wal = wal_dir.to_str().unwrap();
    let run = |backend, ticks| wal_run(wal, "500", backend, ticks, "10");
    let out = neurograph(&run("gpu", "15"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ticks 11..15 must now be replayed from the snapshot of tick 10.
    std::fs::remove_file(wal_dir.join("snap-00000000000000000015.snap")).unwrap();
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();

    // Without a GPU: a clear error naming the tick, and nothing changed.
    let rec = neurograph_without_gpu(&["recover", "--wal", wal]);
    let stderr = String::from_utf8_lossy(&rec.stderr);
    assert_eq!(rec.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tick 11 was computed on the GPU and must be replayed there")
            && stderr.contains("no usable GPU adapter"),
        "{stderr}"
    );
    let resumed = neurograph_without_gpu(&run("cpu", "20"));
    assert_eq!(resumed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("tick 11 was computed on the GPU"));
    let mut plain = run("cpu", "20");
    plain.retain(|a| *a != "--backend" && *a != "cpu");
    let resumed = neurograph_without_gpu(&plain);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--backend cpu resumes it on the CPU"),
        "{stderr}"
    );
    assert_eq!(
        listing(),
        before,
        "a refused recovery leaves the WAL as it was"
    );
    // A snapshot opens without a GPU.
    let snap = wal_dir.join("snap-00000000000000000010.snap");
    let tree = neurograph_without_gpu(&["inspect", "--tree", "--snapshot", snap.to_str().unwrap()]);
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );

    // With the GPU back, `--backend cpu` replays 11..15 on the GPU and goes on
    // on the CPU; the log then holds both kinds of tick and recovers.
    let out = neurograph(&run("cpu", "20"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json_of(&out);
    assert_eq!(j["backend"], "cpu");
    assert_eq!(j["recovery"]["records_replayed"], 5);
    std::fs::remove_file(wal_dir.join("snap-00000000000000000020.snap")).unwrap();
    let rec = neurograph(&["recover", "--wal", wal, "--json"]);
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    assert_eq!(json_of(&rec)["digest"], j["digest"]);
}
