//! Embedding NeuroGraph in a host `bevy_app::App`.
//!
//! The simulation ticks once per `FixedUpdate` (bevy_time's `TimePlugin` drives
//! `FixedUpdate`), and a host system runs right after the integrator, ordered with
//! the public `SimSystems` sets.
//!
//! Run: `cargo run --release --example embed`

use bevy_app::{App, Update};
use bevy_ecs::prelude::*;
use neurograph::prelude::*;
use neurograph::schedule::SimClock;
use std::time::Duration;

/// A host system: reads positions after `Integrate`, every tick.
fn report_spread(tokens: Query<&Position>, clock: Res<SimClock>) {
    if clock.tick.is_multiple_of(20) {
        let n = tokens.iter().len().max(1) as f32;
        let mean = tokens.iter().map(|p| p.0.length()).sum::<f32>() / n;
        println!(
            "tick {:>3}: mean distance from origin {mean:.4}",
            clock.tick
        );
    }
}

/// A host system in `Update`: spawns a burst of tokens through the command queue.
fn feed(mut queue: ResMut<neurograph::model::commands::CommandQueue>, mut fed: Local<bool>) {
    if !*fed {
        let specs = (0..500)
            .map(|i| {
                let a = i as f32 * 0.37;
                TokenSpec::at(Vec8::from_array(std::array::from_fn(|k| {
                    (a + k as f32).sin() * 2.0
                })))
            })
            .collect();
        queue.push(SimCommand::SpawnBatch(specs));
        *fed = true;
    }
}

fn main() {
    let mut app = App::new();
    app.add_plugins(bevy_time::TimePlugin)
        // Advance virtual time by one fixed step per update, so the example is deterministic.
        .insert_resource(bevy_time::TimeUpdateStrategy::ManualDuration(
            Duration::from_millis(16),
        ))
        .insert_resource(bevy_time::Time::<bevy_time::Fixed>::from_duration(
            Duration::from_millis(16),
        ))
        .add_plugins(NeuroGraphPlugin::fixed_update())
        .add_systems(Update, feed)
        .add_systems(
            SimTick,
            report_spread
                .after(SimSystems::Integrate)
                .before(SimSystems::Constrain),
        );
    // `App::run` would finish the app first; a host that calls `update` itself
    // does it once (NeuroGraph chooses its force backend there).
    app.finish();
    app.cleanup();
    for _ in 0..101 {
        app.update();
    }
    let tick = app.world().resource::<SimClock>().tick;
    let digest = neurograph::digest::state_digest(app.world_mut());
    println!("{tick} ticks, digest {digest}");
}
