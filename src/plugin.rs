//! The assembly: [`NeuroGraphPlugins`], everything NeuroGraph adds to a bevy
//! app, in tick order.
//!
//! [`SimCorePlugin`] adds the [`SimTick`] schedule
//! ([`SchedulePlugin`]) and the world's core resources; each stage's plugin adds
//! its systems to one [`SimSystems`] set; the WAL's
//! [`JournalPlugin`] and observability's [`ObservePlugin`] are layers on top,
//! inert until a WAL is attached and cheap when no recorder is installed. Users
//! order their own systems around ours with the same sets, and swap a stage with
//! `NeuroGraphPlugins::default().build().disable::<ForcesPlugin>().add(Mine)`.

use crate::model::cdna::{Cdna, CdnaHistory};
use crate::model::commands::{CommandLog, CommandQueue};
use crate::model::config::{MemoryAccount, Quotas, SimConfig};
use crate::model::registry::{LinkGraph, SimRng, SpatialDirty, TokenRegistry};
use crate::observe::{ObservePlugin, ObserveSettings, ObserveSystem};
use crate::schedule::{
    ComputePool, SchedulePlugin, SimClock, SimSystems, SimTick, TickDriver, TickFields,
};
use crate::systems::{
    ConstrainPlugin, ForcesPlugin, IngestPlugin, IntegratePlugin, LearnPlugin, OrganizePlugin,
};
use crate::wal::JournalPlugin;
use bevy_app::{App, Plugin, PluginGroup, PluginGroupBuilder};
use bevy_ecs::prelude::*;

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
            .add(ObservePlugin::default())
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
        app.add_plugins(SchedulePlugin {
            driver: self.driver,
        });
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
            .init_resource::<MemoryAccount>()
            .insert_resource(TickFields(world_size))
            // The end of the tick, after the metrics.
            .add_systems(
                SimTick,
                (account_memory, end_tick)
                    .chain()
                    .in_set(SimSystems::Observe)
                    .after(ObserveSystem),
            );
    }
}

/// Tokens and links, for the `tick` span ([`TickFields`]).
fn world_size(world: &World) -> (u64, u64) {
    (
        world.resource::<TokenRegistry>().len(),
        world.resource::<LinkGraph>().len(),
    )
}

/// Measures the world's structures into [`MemoryAccount`] (for the memory
/// quota; not when the budget is `u64::MAX`) when the token or link count changed since the last measurement,
/// and every [`MemoryAccount::EVERY`] ticks. A measurement walks every table,
/// row arena and adjacency list: 0.03–0.25 ms at 100K `uniform` tokens, the
/// more the more links (which change in most ticks while links learn).
pub fn account_memory(world: &mut World) {
    crate::profile_system!("account_memory");
    // An unlimited budget (the benchmarks') needs no measurement.
    if world.resource::<Quotas>().memory_budget_bytes == u64::MAX {
        return;
    }
    let (tokens, links) = world_size(world);
    let tick = world.resource::<SimClock>().tick;
    let last = *world.resource::<MemoryAccount>();
    let moved = tokens != last.tokens || links != last.links;
    if !moved && tick < last.tick.saturating_add(MemoryAccount::EVERY) {
        return;
    }
    let report = crate::memory::measure(world);
    world.insert_resource(MemoryAccount {
        bytes: report.total_bytes,
        link_bytes: report.link_bytes(),
        tokens,
        links,
        tick,
    });
}

/// Closes the tick: puffin (when profiling is on, and unless the host marks
/// its own frames: [`ObserveSettings::puffin_frames`]) starts a new frame.
pub fn end_tick(settings: Option<Res<ObserveSettings>>) {
    crate::profile_system!("end_tick");
    let ours = settings.is_none_or(|s| s.puffin_frames);
    if ours && puffin::are_scopes_on() {
        puffin::GlobalProfiler::lock().new_frame();
    }
}
