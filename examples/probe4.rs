use bevy_ecs::world::World;
use neurograph::prelude::*;
use std::time::Instant;
fn main() {
    let n = 1_000_000;
    let specs: Vec<TokenSpec> = (0..n)
        .map(|i| TokenSpec::at(Vec8::splat((i % 1000) as f32 * 0.01)))
        .collect();
    for _ in 0..3 {
        let mut sim = Simulation::with_defaults();
        let s = specs.clone();
        let t = Instant::now();
        sim.spawn_batch(s).unwrap();
        let e = t.elapsed();
        println!(
            "spawn {n}: {:?} = {:.1} M/s",
            e,
            n as f64 / e.as_secs_f64() / 1e6
        );
        let mut w = World::new();
        let t = Instant::now();
        let ents: Vec<_> = w
            .spawn_batch(
                specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| s.bundle(TokenId(i as u64))),
            )
            .collect();
        let e = t.elapsed();
        println!(
            "  bare bevy spawn_batch: {:?} = {:.1} M/s ({})",
            e,
            n as f64 / e.as_secs_f64() / 1e6,
            ents.len()
        );
    }
}
