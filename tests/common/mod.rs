//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use neurograph::physics::{ForceParams, LinkTable, reference_densities, reference_forces};
use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};
use neurograph::systems::ForceBuffers;

/// A simulation with `threads` workers and otherwise default settings.
pub fn sim_with_threads(threads: usize) -> Simulation {
    Simulation::new(SimSettings {
        config: SimConfig {
            threads,
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("valid settings")
}

/// A simulation loaded with a built-in scenario, its RNG seeded with `seed` (as
/// `neurograph run` does).
pub fn scenario_sim(name: &str, tokens: usize, seed: u64, threads: usize) -> Simulation {
    let mut sim = sim_with_threads(threads);
    sim.world_mut()
        .insert_resource(neurograph::model::registry::SimRng::seeded(seed));
    scenario::find(name)
        .unwrap()
        .spawn_into(&mut sim, &ScenarioParams { tokens, seed }, 4096)
        .unwrap();
    sim
}

/// A scenario's tokens, in spawn order.
pub fn scenario_tokens(name: &str, n: usize, seed: u64) -> Vec<TokenSpec> {
    scenario::find(name)
        .unwrap()
        .generate(&ScenarioParams { tokens: n, seed })
        .tokens
}

/// Runs the `Forces` stage on the current state (as the next tick would: the
/// pair and link forces, then the group pull) and checks the result against the
/// O(N²) reference on the same gathered state: same pair count, same bits.
pub fn assert_forces_match_reference(sim: &mut Simulation) {
    use bevy_ecs::system::RunSystemOnce;
    let world = sim.world_mut();
    world.run_system_once(neurograph::systems::forces).unwrap();
    world
        .run_system_once(neurograph::systems::group_pull)
        .unwrap();
    let buf = sim.world().resource::<ForceBuffers>();
    let cdna = sim.cdna();
    let links = LinkTable::build(
        &buf.ids,
        sim.world()
            .resource::<neurograph::model::registry::LinkGraph>()
            .iter()
            .map(|(&(a, b), l)| (a, b, l.weight, l.rest_length)),
    );
    let (want, pairs) = reference_forces(
        &buf.positions,
        &buf.params,
        &buf.ids,
        &links,
        &ForceParams::from_cdna(cdna),
    );
    assert_eq!(
        buf.stats.pairs, pairs,
        "pair count differs from the O(N²) reference"
    );
    // Plus the pull of each grouped token below the target density towards its
    // level-1 group's centre, `group_pull · m · (1 − ρ/ρ₀)₊ · (c − x)`.
    let density = reference_densities(&buf.positions, &buf.params, &buf.ids);
    assert_eq!(
        density, buf.density,
        "densities differ from the O(N²) reference"
    );
    let fp = ForceParams::from_cdna(cdna);
    let mut want = want;
    let k = cdna.hierarchy.group_pull;
    if k != 0.0 {
        let world = sim.world();
        let registry = world.resource::<neurograph::model::registry::TokenRegistry>();
        for (s, id) in buf.ids.iter().enumerate() {
            let e = registry.get(*id).unwrap();
            if let Some(parent) = world.get::<bevy_ecs::prelude::ChildOf>(e) {
                let c = world.get::<Position>(parent.parent()).unwrap().0;
                let below = (1.0 - density[s] * fp.inv_target_density).max(0.0);
                want[s] += (c - buf.positions[s]) * (k * buf.params[s].mass * below);
            }
        }
    }
    for (i, (got, want)) in buf.forces.iter().zip(&want).enumerate() {
        let scale = want.length().max(1e-3);
        let diff = (*got - *want).length() / scale;
        assert!(
            diff <= 1e-5,
            "token {:?}: relative force difference {diff}",
            buf.ids[i]
        );
        assert_eq!(
            got, want,
            "token {:?}: not bit-identical to the reference",
            buf.ids[i]
        );
    }
}

/// The `neurograph` binary of this build.
#[cfg(feature = "cli")]
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_neurograph"))
}

/// The JSON object on the last line of `stdout`.
pub fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// The JSON summary of a finished command, which must have succeeded.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json(&String::from_utf8_lossy(&out.stdout))
}

/// Kills the child when dropped, so a failing test leaves no run behind.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the snapshot of tick `tick` from the WAL in `wal` and runs
/// `neurograph recover` on it: it must succeed, replay `records` records from
/// the snapshot before, and end at `tick` with `digest`.
#[cfg(feature = "cli")]
pub fn recover_without_snapshot(wal: &str, tick: u64, digest: &str, records: u64) {
    let snap = std::path::Path::new(wal).join(format!("snap-{tick:020}.snap"));
    std::fs::remove_file(&snap).unwrap_or_else(|e| panic!("{}: {e}", snap.display()));
    let rec = bin()
        .args(["recover", "--wal", wal])
        .output()
        .expect("the CLI runs");
    let text = String::from_utf8_lossy(&rec.stdout);
    assert!(
        rec.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    assert!(
        text.contains(&format!("recovered tick {tick} (digest {digest})")),
        "{text}"
    );
    assert!(text.contains(&format!("{records} records")), "{text}");
}
