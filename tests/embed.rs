//! The embedded path: NeuroGraph inside a host `bevy_app::App`, ticked from
//! `FixedUpdate` by bevy_time, with host systems ordered by the public sets.

use bevy_app::{App, Update};
use bevy_ecs::prelude::*;
use neurograph::model::commands::CommandQueue;
use neurograph::prelude::*;
use neurograph::schedule::SimClock;
use std::time::Duration;

#[derive(Resource, Default)]
struct Seen {
    ticks: Vec<u64>,
    tokens: usize,
}

fn host_app() -> App {
    let step = Duration::from_millis(10);
    let mut app = App::new();
    app.add_plugins(bevy_time::TimePlugin)
        .insert_resource(bevy_time::TimeUpdateStrategy::ManualDuration(step))
        .insert_resource(bevy_time::Time::<bevy_time::Fixed>::from_duration(step))
        .add_plugins(NeuroGraphPlugin::fixed_update());
    // What `App::run` does first; a host that calls `update` itself does it
    // once (the force backend is chosen here).
    app.finish();
    app.cleanup();
    assert!(
        app.world()
            .contains_resource::<neurograph::backend::ForceBackend>()
    );
    app
}

#[test]
fn fixed_update_drives_one_tick_per_step_and_host_systems_see_it() {
    let mut app = host_app();
    app.init_resource::<Seen>()
        .add_systems(
            Update,
            |mut q: ResMut<CommandQueue>, mut done: Local<bool>| {
                if !*done {
                    q.push(SimCommand::SpawnBatch(vec![TokenSpec::at(Vec8::ZERO); 3]));
                    *done = true;
                }
            },
        )
        .add_systems(
            SimTick,
            (|clock: Res<SimClock>, tokens: Query<&TokenId>, mut seen: ResMut<Seen>| {
                seen.ticks.push(clock.tick);
                seen.tokens = tokens.iter().len();
            })
            .in_set(SimSystems::Learn),
        );
    for _ in 0..21 {
        app.update();
    }
    let tick = app.world().resource::<SimClock>().tick;
    assert!(
        tick >= 19,
        "FixedUpdate should have run about 20 ticks, ran {tick}"
    );
    let seen = app.world().resource::<Seen>();
    assert_eq!(
        seen.ticks.len() as u64,
        tick,
        "the host system ran once per tick"
    );
    assert_eq!(seen.ticks, (1..=tick).collect::<Vec<_>>());
    assert_eq!(seen.tokens, 3, "commands from Update were ingested");
}

#[test]
fn embedded_and_headless_runs_agree() {
    let specs: Vec<TokenSpec> = (0..200)
        .map(|i| {
            TokenSpec::at(Vec8::from_array(std::array::from_fn(|k| {
                ((i * 8 + k) as f32 * 0.7).sin()
            })))
        })
        .collect();
    let mut app = host_app();
    app.world_mut()
        .resource_mut::<CommandQueue>()
        .push(SimCommand::SpawnBatch(specs.clone()));
    for _ in 0..12 {
        app.update();
    }
    let ticks = app.world().resource::<SimClock>().tick;
    let embedded = neurograph::digest::state_digest(app.world_mut());

    let mut sim = Simulation::with_defaults();
    sim.submit(SimCommand::SpawnBatch(specs));
    sim.run(ticks);
    assert_eq!(sim.digest(), embedded);
}

#[test]
#[should_panic(expected = "ambigu")]
fn unordered_conflicting_systems_are_an_error() {
    let mut app = App::new();
    app.add_plugins(NeuroGraphPlugins::default());
    fn writer(mut q: Query<&mut Position>) {
        for mut p in &mut q {
            p.0 += Vec8::ZERO;
        }
    }
    // Two writers of Position in the same set, unordered: the schedule refuses to build.
    app.add_systems(SimTick, (writer, writer).in_set(SimSystems::Learn));
    app.world_mut().run_schedule(SimTick);
}
