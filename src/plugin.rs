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
use crate::model::config::{Quotas, SimConfig};
use crate::model::registry::{LinkGraph, SimRng, SpatialDirty, TokenRegistry};
use crate::observe::ObservePlugin;
use crate::schedule::{ComputePool, SchedulePlugin, SimClock, SimSystems, SimTick, TickDriver};
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
            .add_systems(SimTick, tick_span_fields.before(SimSystems::Ingest));
    }
}

/// Records the world's size in the `tick` span that [`run_tick`](crate::schedule::run_tick) opened.
fn tick_span_fields(registry: Res<TokenRegistry>, links: Res<LinkGraph>) {
    let span = tracing::Span::current();
    span.record("tokens", registry.len());
    span.record("links", links.len());
}
