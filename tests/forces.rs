//! The fast force path (k-d tree + Verlet lists, parallel) against the plain O(N²)
//! reference: same pairs, same forces, on random and clustered inputs, boundary
//! cases, and through many ticks of incremental neighbour-list refreshes.

mod common;

use common::*;
use neurograph::prelude::*;
use rand::{RngExt, SeedableRng};

fn specs(n: usize, side: f32, seed: u64) -> Vec<TokenSpec> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            TokenSpec::at(Vec8::from_array(std::array::from_fn(|_| {
                rng.random_range(0.0..side)
            })))
            .with_charge(rng.random_range(-1.0..1.0))
            .with_mass(rng.random_range(0.5..2.0))
            .with_radius(rng.random_range(0.6..1.4))
            .with_strength(rng.random_range(0.2..1.0))
        })
        .collect()
}

#[test]
fn random_tokens_with_mixed_radii_match_reference() {
    let mut sim = sim_with_threads(2);
    sim.spawn_batch(specs(2000, 3.0, 1)).unwrap();
    sim.step();
    assert!(
        sim.last_pair_count() > 2000,
        "the test should exercise many pairs"
    );
    assert_forces_match_reference(&mut sim);
}

#[test]
fn clustered_tokens_match_reference() {
    let sim_ = &mut scenario_sim("clusters", 2000, 3, 2);
    sim_.step();
    assert_forces_match_reference(sim_);
}

#[test]
fn links_are_included_and_match_reference() {
    let mut sim = sim_with_threads(2);
    let first = sim.spawn_batch(specs(300, 2.5, 4)).unwrap();
    for k in 0..200u64 {
        let a = TokenId(first.0 + k);
        let b = TokenId(first.0 + (k * 7 + 3) % 300);
        if a != b {
            let _ = sim.apply(SimCommand::Link {
                a,
                b,
                spec: LinkSpec::new(1.5, 0.3),
            });
        }
    }
    assert!(sim.link_count() > 150);
    sim.step();
    assert_forces_match_reference(&mut sim);
}

#[test]
fn links_follow_tokens_through_full_rebuilds() {
    // A teleport forces a full rebuild, which reorders the slots; the link table must
    // follow.
    let mut sim = sim_with_threads(2);
    let first = sim.spawn_batch(specs(400, 2.5, 6)).unwrap();
    for k in 0..100u64 {
        let (a, b) = (TokenId(first.0 + k), TokenId(first.0 + 399 - k));
        sim.apply(SimCommand::Link {
            a,
            b,
            spec: LinkSpec::new(2.0, 0.2),
        })
        .unwrap();
    }
    sim.run(2);
    assert_forces_match_reference(&mut sim);
    for round in 0..3 {
        let id = TokenId(first.0 + 50 + round);
        sim.apply(SimCommand::Set {
            id,
            value: SetValue::Position(Vec8::splat(1.0 + round as f32 * 0.1)),
        })
        .unwrap();
        sim.step();
        assert_forces_match_reference(&mut sim);
    }
    assert!(sim.force_stats().rebuilds >= 4, "{:?}", sim.force_stats());
}

#[test]
fn many_ticks_of_refreshed_lists_never_miss_a_pair() {
    // Fast, lightly damped motion so that rows are refreshed and rebuilt often.
    let mut cdna = Cdna::profile(Profile::Explorer);
    cdna.physics.k_field = 5.0;
    cdna.physics.k_density = 5.0;
    let mut sim = Simulation::new(SimSettings {
        config: SimConfig {
            threads: 2,
            neighbor_skin: 0.1,
            ..Default::default()
        },
        cdna,
        ..Default::default()
    })
    .unwrap();
    sim.spawn_batch(specs(1200, 2.6, 5)).unwrap();
    for _ in 0..60 {
        sim.step();
        assert_forces_match_reference(&mut sim);
    }
    let stats = sim.force_stats();
    assert!(
        stats.refreshed_rows > 0,
        "the run should refresh rows: {stats:?}"
    );
}

#[test]
fn a_pair_at_exactly_the_cutoff_is_not_a_pair() {
    let mut sim = sim_with_threads(1);
    sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    sim.spawn(TokenSpec::at(Vec8::axis(Axis::Social))).unwrap(); // r = 1 = R
    sim.step();
    assert_eq!(sim.last_pair_count(), 0);
    assert_forces_match_reference(&mut sim);
    // A hair closer, and it is a pair.
    let mut sim = sim_with_threads(1);
    sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    sim.spawn(TokenSpec::at(Vec8::axis(Axis::Social) * 0.999))
        .unwrap();
    sim.step();
    assert_eq!(sim.last_pair_count(), 2);
    assert_forces_match_reference(&mut sim);
}

#[test]
fn coincident_tokens_are_a_pair_without_force() {
    let mut sim = sim_with_threads(2);
    let p = Vec8::splat(0.5);
    let a = sim.spawn(TokenSpec::at(p)).unwrap();
    let b = sim.spawn(TokenSpec::at(p)).unwrap();
    sim.step();
    assert_eq!(sim.last_pair_count(), 2);
    assert_forces_match_reference(&mut sim);
    for id in [a, b] {
        let t = sim.token(id).unwrap();
        assert_eq!(t.position, p, "no force, no motion");
        assert!(t.position.is_finite());
    }
}

#[test]
fn a_single_token_and_an_empty_world() {
    let mut sim = sim_with_threads(2);
    sim.step();
    assert_eq!(sim.last_pair_count(), 0);
    assert_forces_match_reference(&mut sim);
    let id = sim.spawn(TokenSpec::at(Vec8::ONE)).unwrap();
    sim.run(3);
    assert_eq!(sim.last_pair_count(), 0);
    assert_eq!(sim.token(id).unwrap().position, Vec8::ONE);
    assert_forces_match_reference(&mut sim);
}

#[test]
fn all_tokens_at_one_point() {
    let mut sim = sim_with_threads(2);
    sim.spawn_batch(vec![TokenSpec::at(Vec8::splat(2.0)); 100])
        .unwrap();
    sim.step();
    assert_eq!(sim.last_pair_count(), 100 * 99);
    assert_forces_match_reference(&mut sim);
}

/// Two tokens 0.7 apart on the motor axis, the second with `charge_b`: their
/// motor coordinates after one tick.
fn pair_after_one_tick(charge_b: f32) -> (f32, f32) {
    let mut sim = sim_with_threads(1);
    let a = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    let b = sim
        .spawn(TokenSpec::at(Vec8::axis(Axis::Motor) * 0.7).with_charge(charge_b))
        .unwrap();
    sim.step();
    let m = Axis::Motor.index();
    (
        sim.token(a).unwrap().position[m],
        sim.token(b).unwrap().position[m],
    )
}

#[test]
fn like_charges_attract_and_opposite_repel() {
    let (a, b) = pair_after_one_tick(1.0);
    assert!(a > 0.0 && b < 0.7, "like charges should approach: {a} {b}");
    let (a, b) = pair_after_one_tick(-1.0);
    assert!(a < 0.0 && b > 0.7, "opposite charges should part: {a} {b}");
}

#[test]
fn integration_follows_the_design_formula() {
    // One token, an impulse, no neighbours: v' = v·(1 − γ·dt), capped at v_max; x' = x + v'·dt.
    let mut sim = sim_with_threads(1);
    let id = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    sim.apply(SimCommand::Impulse {
        id,
        impulse: Vec8::axis(Axis::Temporal) * 0.5,
    })
    .unwrap();
    sim.step();
    let (dt, gamma) = (SimConfig::default().dt, Cdna::default().physics.damping);
    let v = 0.5 * (1.0 - gamma * dt);
    let t = sim.token(id).unwrap();
    assert!((t.velocity[6] - v).abs() < 1e-6, "{:?}", t.velocity);
    assert!((t.position[6] - v * dt).abs() < 1e-6, "{:?}", t.position);
    // A huge impulse is capped at max_speed.
    sim.apply(SimCommand::Impulse {
        id,
        impulse: Vec8::axis(Axis::Physical) * 100.0,
    })
    .unwrap();
    sim.step();
    let speed = sim.token(id).unwrap().velocity.length();
    assert!(
        (speed - Cdna::default().physics.max_speed).abs() < 1e-5,
        "{speed}"
    );
    assert_eq!(sim.integrate_stats().speed_limited, 1);
}

#[test]
fn frozen_axis_does_not_move() {
    let mut cdna = Cdna::default();
    cdna.dimensions.scales[Axis::Emotional.index()] = 0.0;
    let mut sim = Simulation::new(SimSettings {
        cdna,
        ..Default::default()
    })
    .unwrap();
    let a = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    sim.spawn(TokenSpec::at(Vec8::from_array([
        0.3, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0,
    ])))
    .unwrap();
    sim.run(5);
    let p = sim.token(a).unwrap().position;
    assert_eq!(p[3], 0.0);
    assert!(p[0] > 0.0);
}
