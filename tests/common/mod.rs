//! Helpers shared by the integration tests (included with `mod common;`).
#![allow(dead_code)]

use neurograph::physics::{ForceParams, LinkTable, reference_forces};
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
        .insert_resource(neurograph::registry::SimRng::seeded(seed));
    scenario::find(name)
        .unwrap()
        .spawn_into(&mut sim, &ScenarioParams { tokens, seed }, 4096)
        .unwrap();
    sim
}

/// Checks the forces of the last tick against the O(N²) reference on the same
/// gathered state: same pair count, and the same bits.
pub fn assert_last_tick_matches_reference(sim: &Simulation) {
    let buf = sim.world().resource::<ForceBuffers>();
    let cdna = sim.cdna();
    let links = LinkTable::build(
        &buf.ids,
        sim.world()
            .resource::<neurograph::registry::LinkGraph>()
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
