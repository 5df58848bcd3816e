//! The plugins: [`NeuroGraphPlugins`] (a group) and the schedule they share.
//!
//! [`SimCorePlugin`] owns the [`SimTick`] schedule: a single-threaded executor (the
//! parallelism lives inside the systems, on the [`ComputePool`]) with ambiguity
//! detection as an error, and the strictly chained [`SimSystems`] sets of the tick.
//! Every other plugin only adds systems to one set. Users order their own systems
//! around ours with the same sets, and swap a stage with
//! `NeuroGraphPlugins::default().build().disable::<ForcesPlugin>().add(Mine)`.

use crate::cdna::{Cdna, CdnaHistory};
use crate::commands::{CommandLog, CommandQueue};
use crate::config::{Quotas, SimConfig};
use crate::registry::{LinkGraph, SimClock, SimRng, SpatialDirty, TokenRegistry};
use crate::systems::{
    ConstrainPlugin, ForcesPlugin, IngestPlugin, IntegratePlugin, JournalPlugin, LearnPlugin,
    OrganizePlugin,
};
use bevy_app::{App, FixedUpdate, Plugin, PluginGroup, PluginGroupBuilder};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{LogLevel, ScheduleBuildSettings, ScheduleLabel, SingleThreadedExecutor};
use std::sync::Arc;

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
    /// The owner calls `world.run_schedule(SimTick)` (headless runs, tests).
    #[default]
    Manual,
    /// One tick per `FixedUpdate` of the host app (the host needs bevy_time's
    /// `TimePlugin`, which drives `FixedUpdate`).
    FixedUpdate,
}

/// The rayon pool the systems compute on, sized by [`SimConfig::threads`].
#[derive(Resource, Clone)]
pub struct ComputePool(pub Arc<rayon::ThreadPool>);

impl ComputePool {
    /// A pool of `threads` named worker threads.
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

/// Everything NeuroGraph adds to an app, in tick order.
#[derive(Clone, Debug, Default)]
pub struct NeuroGraphPlugins {
    /// Run settings.
    pub config: SimConfig,
    /// The initial constitution.
    pub cdna: Cdna,
    /// Guardian quotas.
    pub quotas: Quotas,
    /// Who runs the tick.
    pub driver: TickDriver,
}

impl PluginGroup for NeuroGraphPlugins {
    fn build(self) -> PluginGroupBuilder {
        PluginGroupBuilder::start::<Self>()
            .add(SimCorePlugin {
                config: self.config,
                cdna: self.cdna,
                quotas: self.quotas,
                driver: self.driver,
            })
            .add(IngestPlugin)
            .add(ForcesPlugin)
            .add(IntegratePlugin)
            .add(ConstrainPlugin)
            .add(LearnPlugin)
            .add(OrganizePlugin)
            .add(JournalPlugin)
            .add(crate::observe::ObservePlugin::default())
    }
}

/// A single plugin that adds [`NeuroGraphPlugins`].
#[derive(Clone, Debug, Default)]
pub struct NeuroGraphPlugin(pub NeuroGraphPlugins);

impl NeuroGraphPlugin {
    /// Defaults, ticking once per `FixedUpdate`.
    pub fn fixed_update() -> Self {
        Self(NeuroGraphPlugins {
            driver: TickDriver::FixedUpdate,
            ..Default::default()
        })
    }
}

impl Plugin for NeuroGraphPlugin {
    fn build(&self, app: &mut App) {
        app.add_plugins(self.0.clone());
    }
}

/// Owns the schedule, the sets, the clock and the core resources.
#[derive(Clone, Debug, Default)]
pub struct SimCorePlugin {
    /// Run settings.
    pub config: SimConfig,
    /// The initial constitution.
    pub cdna: Cdna,
    /// Guardian quotas.
    pub quotas: Quotas,
    /// Who runs the tick.
    pub driver: TickDriver,
}

impl Plugin for SimCorePlugin {
    fn build(&self, app: &mut App) {
        let mut schedule = Schedule::new(SimTick);
        schedule.set_executor(SingleThreadedExecutor::new());
        schedule.set_build_settings(ScheduleBuildSettings {
            ambiguity_detection: LogLevel::Error,
            ..Default::default()
        });
        schedule.configure_sets(
            (
                SimSystems::Ingest,
                SimSystems::Forces,
                SimSystems::Integrate,
                SimSystems::Constrain,
                SimSystems::Learn,
                SimSystems::Organize,
                SimSystems::Journal,
                SimSystems::Observe,
            )
                .chain(),
        );
        app.add_schedule(schedule);
        let pool = ComputePool::new(self.config.resolved_threads())
            .expect("the OS refused to start the compute threads");
        app.insert_resource(self.config.clone())
            .insert_resource(self.cdna.clone())
            .insert_resource(self.quotas.clone())
            .insert_resource(pool)
            .init_resource::<CdnaHistory>()
            .init_resource::<TokenRegistry>()
            .init_resource::<LinkGraph>()
            .init_resource::<SimClock>()
            .init_resource::<SimRng>()
            .init_resource::<SpatialDirty>()
            .init_resource::<CommandQueue>()
            .init_resource::<CommandLog>()
            .init_resource::<StageTimes>()
            .add_systems(SimTick, end_tick.in_set(SimSystems::Observe))
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
            app.add_systems(FixedUpdate, run_sim_tick);
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

/// Runs one [`SimTick`] (in its `tick` span); the system behind
/// [`TickDriver::FixedUpdate`].
pub fn run_sim_tick(world: &mut World) {
    crate::observe::run_tick(world);
}

/// Closes the tick: puffin (when profiling is on, and unless the host marks
/// its own frames: [`ObserveSettings::puffin_frames`](crate::observe::ObserveSettings))
/// starts a new frame.
pub fn end_tick(settings: Option<Res<crate::observe::ObserveSettings>>) {
    crate::profile_system!("end_tick");
    let ours = settings.is_none_or(|s| s.puffin_frames);
    if ours && puffin::are_scopes_on() {
        puffin::GlobalProfiler::lock().new_frame();
    }
}
