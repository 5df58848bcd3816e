//! The force law settles at a bounded density (DESIGN §4): groups of like charges
//! become droplets with about the CDNA's target number of neighbours within the
//! field radius, whatever the start, the input's scale or the run's length.
//!
//! These runs are long (hundreds of ticks of a few thousand tokens); the test
//! profile compiles the engine with optimisations, so they take seconds.

mod common;

use common::*;
use neurograph::prelude::*;

/// Neighbours within the cutoff per token in the last tick.
fn avg_neighbors(sim: &Simulation) -> f64 {
    sim.force_stats().pairs as f64 / sim.token_count().max(1) as f64
}

fn target() -> f64 {
    Cdna::default().physics.target_neighbors as f64
}

#[test]
fn a_collapsed_ball_expands_to_the_target_density_and_stays_there() {
    // 2,000 like-charged tokens inside a ball of radius 0.05: every token starts
    // with every other within its field.
    let mut sim = scenario_sim("collapse", 2000, 5, 2);
    sim.step();
    assert_eq!(avg_neighbors(&sim), 1999.0);
    let (lo, hi) = (0.5 * target(), 1.5 * target());
    let mut reached = None;
    for _ in 0..300 {
        sim.step();
        if (lo..=hi).contains(&avg_neighbors(&sim)) {
            reached = Some(sim.tick());
            break;
        }
    }
    let reached = reached.unwrap_or_else(|| {
        panic!(
            "not within ±50% of {} neighbours after 300 ticks: {}",
            target(),
            avg_neighbors(&sim)
        )
    });
    let mut seen = Vec::new();
    for _ in 0..500 {
        sim.step();
        let a = avg_neighbors(&sim);
        assert!(
            (lo..=hi).contains(&a),
            "tick {} (reached at {reached}): {a} neighbours, outside [{lo}, {hi}]",
            sim.tick()
        );
        seen.push(a);
    }
    let last = *seen.last().unwrap();
    eprintln!("collapse: within ±50% at tick {reached}; 500 ticks later {last:.1} neighbours");
}

#[test]
fn uniform_and_clusters_stay_below_twice_the_target_for_1000_ticks() {
    for name in ["uniform", "clusters"] {
        let mut sim = scenario_sim(name, 3000, 7, 2);
        let mut worst = 0.0f64;
        for _ in 0..1000 {
            sim.step();
            worst = worst.max(avg_neighbors(&sim));
        }
        let last = avg_neighbors(&sim);
        eprintln!("{name}: last tick {last:.1} neighbours, most {worst:.1}");
        assert!(
            last <= 2.0 * target(),
            "{name}: {last} neighbours after 1000 ticks, more than twice the target {}",
            target()
        );
        // And the fields did form: not a gas.
        assert!(
            last >= 0.25 * target(),
            "{name}: {last} neighbours after 1000 ticks, under a quarter of the target"
        );
    }
}

#[test]
fn the_same_input_scaled_by_a_quarter_and_by_four_settles_to_the_same_density() {
    // A ball of 2,000 like charges of radius 0.3, scaled to 0.075 and to 1.2: at
    // every scale it starts denser than the target (from every token within every
    // other's field to ~100 neighbours per token).
    let blob = |scale: f32| -> Vec<TokenSpec> {
        // The collapse scenario is uniform in a ball of radius 0.05.
        scenario_tokens("collapse", 2000, 9)
            .into_iter()
            .map(|t| TokenSpec::at(t.position * (6.0 * scale)))
            .collect()
    };
    let settle = |scale: f32| -> f64 {
        let mut sim = sim_with_threads(2);
        sim.spawn_batch(blob(scale)).unwrap();
        sim.run(400);
        avg_neighbors(&sim)
    };
    let densities: Vec<(f32, f64)> = [0.25f32, 1.0, 4.0]
        .iter()
        .map(|&s| (s, settle(s)))
        .collect();
    eprintln!("settled neighbours by input scale: {densities:?}");
    let base = densities[1].1;
    for &(scale, d) in &densities {
        assert!(
            (0.5 * base..=1.5 * base).contains(&d),
            "scale {scale}: {d} neighbours, not within ±50% of {base} at scale 1"
        );
        assert!(
            (0.5 * target()..=1.5 * target()).contains(&d),
            "scale {scale}: {d} neighbours, not within ±50% of the target {}",
            target()
        );
    }
}
