//! `Journal`: append the tick's record to the WAL, snapshot when due.

use crate::plugin::{SimSystems, SimTick};
use crate::wal::Journal;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;

/// Adds [`journal`] to `Journal`. It does nothing until a WAL is attached (the
/// [`Journal`] resource, see [`crate::wal::create`] and [`crate::wal::resume`]).
pub struct JournalPlugin;

impl Plugin for JournalPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(SimTick, journal.in_set(SimSystems::Journal));
    }
}

/// Records the tick's applied commands and the digest of the state after it, and
/// hands a snapshot to the writer every `snapshot_every` ticks.
pub fn journal(world: &mut World) {
    crate::profile_system!("journal");
    Journal::record_tick(world);
}
