//! The bottom of the engine: the [`SimTick`] schedule, its stages, who drives it,
//! the compute pool, and the tick itself ([`run_tick`]).
//!
//! Nothing here knows what a token is. [`SchedulePlugin`] builds the schedule: a
//! single-threaded executor (the parallelism lives inside the systems, on the
//! [`ComputePool`]) with ambiguity detection as an error, and the strictly
//! chained [`SimSystems`] sets of DESIGN §3. Every other plugin only adds
//! systems to one set; users order their own systems around ours with the same
//! sets.

use bevy_app::{App, FixedUpdate, Plugin};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{LogLevel, ScheduleBuildSettings, ScheduleLabel, SingleThreadedExecutor};
use std::sync::Arc;

/// The tracing target of the `tick` span and of every system's span; the trace
/// sampler (`observe::sampler`) keys on it.
pub const TICK_TARGET: &str = "neurograph::tick";

/// Opens a system: a puffin function scope and a tracing span named `$name`
/// (target [`TICK_TARGET`]) that last until the end of the block. Both cost one
/// atomic load while puffin and the span's level are off.
#[macro_export]
macro_rules! profile_system {
    ($name:literal) => {
        ::puffin::profile_function!();
        let _neurograph_span =
            ::tracing::info_span!(target: $crate::schedule::TICK_TARGET, $name).entered();
    };
}

/// The schedule that runs one simulation tick.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimTick;

/// The stages of a tick, run in this order (DESIGN §3).
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimSystems {
    /// Apply queued commands.
    Ingest,
    /// Compute forces.
    Forces,
    /// Advance velocities and positions.
    Integrate,
    /// Enforce the CDNA.
    Constrain,
    /// Learn link weights.
    Learn,
    /// Detect the emergent hierarchy.
    Organize,
    /// Journal the tick.
    Journal,
    /// Metrics, tracing, the end of the tick.
    Observe,
}

impl SimSystems {
    /// Every set, in tick order.
    pub const ALL: [SimSystems; 8] = [
        SimSystems::Ingest,
        SimSystems::Forces,
        SimSystems::Integrate,
        SimSystems::Constrain,
        SimSystems::Learn,
        SimSystems::Organize,
        SimSystems::Journal,
        SimSystems::Observe,
    ];

    /// Lower-case name, as in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            SimSystems::Ingest => "ingest",
            SimSystems::Forces => "forces",
            SimSystems::Integrate => "integrate",
            SimSystems::Constrain => "constrain",
            SimSystems::Learn => "learn",
            SimSystems::Organize => "organize",
            SimSystems::Journal => "journal",
            SimSystems::Observe => "observe",
        }
    }
}

/// Who runs [`SimTick`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TickDriver {
    /// The owner calls [`run_tick`] (headless runs, tests).
    #[default]
    Manual,
    /// One tick per `FixedUpdate` of the host app (the host needs bevy_time's
    /// `TimePlugin`, which drives `FixedUpdate`).
    FixedUpdate,
}

/// The rayon pool the systems compute on, sized by `SimConfig::threads`.
#[derive(Resource, Clone)]
pub struct ComputePool(pub Arc<rayon::ThreadPool>);

impl ComputePool {
    /// A pool of `threads` (at least 1) named worker threads.
    ///
    /// # Errors
    /// The operating system refused to start the threads.
    pub fn new(threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("neurograph-compute-{i}"))
            .build()?;
        Ok(Self(Arc::new(pool)))
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.0.current_num_threads()
    }
}

/// Adds the [`SimTick`] schedule with its chained [`SimSystems`] sets, the
/// [`StageTimes`] clock, and (with [`TickDriver::FixedUpdate`]) the system that
/// runs one tick per `FixedUpdate`.
#[derive(Clone, Debug, Default)]
pub struct SchedulePlugin {
    /// Who runs the tick.
    pub driver: TickDriver,
}

impl Plugin for SchedulePlugin {
    fn build(&self, app: &mut App) {
        let mut schedule = Schedule::new(SimTick);
        schedule.set_executor(SingleThreadedExecutor::new());
        schedule.set_build_settings(ScheduleBuildSettings {
            ambiguity_detection: LogLevel::Error,
            ..Default::default()
        });
        // Chained strictly, in `SimSystems::ALL` order.
        for pair in SimSystems::ALL.windows(2) {
            schedule.configure_sets(pair[0].before(pair[1]));
        }
        app.add_schedule(schedule)
            .init_resource::<StageTimes>()
            .add_systems(SimTick, stage_start.before(SimSystems::Ingest));
        // One clock read after each stage, ordered between it and the next.
        for (k, stage) in SimSystems::ALL.into_iter().enumerate() {
            let mark = (move |mut t: ResMut<StageTimes>| t.mark(k)).after(stage);
            match SimSystems::ALL.get(k + 1) {
                Some(&next) => app.add_systems(SimTick, mark.before(next)),
                None => app.add_systems(SimTick, mark),
            };
        }
        if self.driver == TickDriver::FixedUpdate {
            app.add_systems(FixedUpdate, run_tick);
        }
    }
}

/// Wall time of each stage ([`SimSystems::ALL`] order) in the last tick and
/// since the start; two clock reads per stage.
#[derive(Resource, Clone, Debug, Default)]
pub struct StageTimes {
    /// Seconds per stage in the last tick.
    pub last: [f64; 8],
    /// Seconds per stage since the start.
    pub total: [f64; 8],
    /// Ticks timed.
    pub ticks: u64,
    since: Option<std::time::Instant>,
}

impl StageTimes {
    /// Closes stage `k` (in [`SimSystems::ALL`] order) at the current time.
    fn mark(&mut self, k: usize) {
        let now = std::time::Instant::now();
        let s = self.since.map_or(0.0, |m| (now - m).as_secs_f64());
        self.last[k] = s;
        self.total[k] += s;
        self.since = Some(now);
    }

    /// Seconds of `stage` in the last tick.
    pub fn last_of(&self, stage: SimSystems) -> f64 {
        self.last[stage as usize]
    }

    /// Seconds of `stage` since the start.
    pub fn total_of(&self, stage: SimSystems) -> f64 {
        self.total[stage as usize]
    }
}

fn stage_start(mut t: ResMut<StageTimes>) {
    t.since = Some(std::time::Instant::now());
    t.ticks += 1;
}

/// The simulation clock: ticks completed. Simulated time is `tick × dt`.
/// The `Integrate` stage advances it.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimClock {
    /// Ticks completed.
    pub tick: u64,
}

/// How the `tick` span learns the world's size without this layer knowing
/// what a token is: the engine's core plugin inserts a function that returns
/// `(tokens, links)`.
#[derive(Resource, Clone, Copy)]
pub struct TickFields(pub fn(&World) -> (u64, u64));

/// Runs one [`SimTick`] of `world` inside a `tick` span (target
/// [`TICK_TARGET`]; fields `tick`, and `tokens` and `links` from
/// [`TickFields`] when the world has it); the system behind
/// [`TickDriver::FixedUpdate`].
///
/// # Panics
/// When the tick panics. A panic anywhere in the tick (a rayon worker's too)
/// is first logged as an error inside the span, so that the trace sampler
/// keeps the tick, and then goes on unwinding.
pub fn run_tick(world: &mut World) {
    let tick = world.get_resource::<SimClock>().map_or(0, |c| c.tick) + 1;
    let (tokens, links) = world
        .get_resource::<TickFields>()
        .map_or((0, 0), |f| (f.0)(world));
    let span = tracing::info_span!(target: TICK_TARGET, "tick", tick, tokens, links);
    let _entered = span.enter();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        world.run_schedule(SimTick);
    }));
    if let Err(payload) = ran {
        tracing::error!(target: "neurograph::panic", tick, panic = %panic_message(&*payload), "tick panicked");
        std::panic::resume_unwind(payload);
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
