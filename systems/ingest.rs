//! `Ingest`: apply the queued commands at the start of the tick.

use crate::model::commands::{CommandLog, CommandQueue, apply_command};
use crate::schedule::SimClock;
use crate::schedule::{SimSystems, SimTick};
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;

/// Adds [`ingest`] to `Ingest`.
pub struct IngestPlugin;

impl Plugin for IngestPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(SimTick, ingest.in_set(SimSystems::Ingest));
    }
}

/// Starts the tick (advances [`SimClock`]) and applies every queued command in
/// order. Refused commands are logged with their reason in [`CommandLog::rejected`];
/// they change nothing.
pub fn ingest(world: &mut World) {
    crate::profile_system!("ingest");
    world.resource_mut::<SimClock>().tick += 1;
    let commands = world.resource_mut::<CommandQueue>().drain();
    world.resource_mut::<CommandLog>().rejected.clear();
    for cmd in commands {
        let result = apply_command(world, &cmd);
        let mut log = world.resource_mut::<CommandLog>();
        match result {
            Ok(_) => {
                if log.record {
                    log.applied.push(cmd);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "command refused");
                log.rejected.push((cmd, e.to_string()));
            }
        }
    }
}
