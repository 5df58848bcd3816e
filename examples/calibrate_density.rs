//! The calibration of `physics::DENSITY_PER_NEIGHBOR`: how many neighbours within
//! the field radius a settled field has for a given target density `ρ₀`.
//!
//! For each target it settles 2,000 like-charged tokens started inside a ball of
//! radius 0.05 (the `collapse` scenario) under the default CDNA with that
//! `physics.target_neighbors`, for `TICKS` ticks, and prints the mean neighbour
//! count over the last 100 ticks, and the factor `ρ₀ / neighbours` that would
//! have made the count equal to the target. The constant is the factor measured
//! at the default target (30), rounded; the other rows show how well one factor
//! serves other targets.
//!
//! Run: `cargo run --release --example calibrate_density [TICKS]` (default 600).

use neurograph::model::registry::SimRng;
use neurograph::physics::{DENSITY_PER_NEIGHBOR, target_density};
use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};

fn main() {
    let ticks: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("TICKS must be a whole number"))
        .unwrap_or(600);
    assert!(ticks > 100, "TICKS must exceed 100");
    println!("DENSITY_PER_NEIGHBOR = {DENSITY_PER_NEIGHBOR}; collapse, 2000 tokens, {ticks} ticks");
    println!(
        "{:>7} {:>8} {:>12} {:>10} {:>17}",
        "target", "rho0", "neighbours", "/ target", "implied factor"
    );
    for target in [10.0f32, 20.0, 30.0, 45.0, 60.0] {
        let mut cdna = Cdna::default();
        cdna.physics.target_neighbors = target;
        let mut sim = Simulation::new(SimSettings {
            cdna,
            ..Default::default()
        })
        .expect("a valid CDNA");
        sim.world_mut().insert_resource(SimRng::seeded(1));
        scenario::find("collapse")
            .expect("a built-in scenario")
            .spawn_into(
                &mut sim,
                &ScenarioParams {
                    tokens: 2000,
                    seed: 1,
                },
                4096,
            )
            .expect("valid tokens");
        let mut sum = 0.0f64;
        for t in 1..=ticks {
            sim.step();
            if t > ticks - 100 {
                sum += sim.force_stats().pairs as f64 / sim.token_count() as f64;
            }
        }
        let neighbours = sum / 100.0;
        let rho0 = target_density(target) as f64;
        println!(
            "{target:>7} {rho0:>8.2} {neighbours:>12.1} {:>10.3} {:>17.3}",
            neighbours / target as f64,
            rho0 / neighbours
        );
    }
}
