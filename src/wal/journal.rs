//! The journal: the `Journal` stage's system and resource, and creating and
//! closing a WAL for a running world.

use super::manifest::{LOCK, not_leftovers};
use super::writer::{list_dir, write_atomic};
use super::{
    DirLock, Durability, Host, MANIFEST, Manifest, TickRecord, WalError, WalOptions, WalStats,
    WalWriter, capture, exists, format, next_tick, tick_of,
};
use crate::digest::StateDigest;
use crate::model::commands::{CommandLog, SimCommand};
use crate::schedule::{SimSystems, SimTick};
use crate::systems::ForceBuffers;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use format::RecordKind;
use std::path::Path;

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

/// The [`Journal`] stage's connection to a WAL, as a resource. Without it the
/// stage does nothing.
#[derive(Resource)]
pub struct Journal {
    writer: WalWriter,
    snapshot_every: u64,
    last_snapshot: u64,
    failure: Option<String>,
    _lock: DirLock,
}

impl Journal {
    /// Journals the tick that just ended: its commands and its digest; and a
    /// snapshot when one is due. Called by the `Journal` stage.
    pub fn record_tick(world: &mut World) {
        let Some(j) = world.get_resource::<Journal>() else {
            return;
        };
        if j.failure.is_some() {
            return;
        }
        let snapshot_every = j.snapshot_every;
        let tick = tick_of(world);
        let commands = std::mem::take(&mut world.resource_mut::<CommandLog>().applied);
        let digest = crate::digest::state_digest(world);
        let snap = (snapshot_every > 0 && tick.is_multiple_of(snapshot_every))
            .then(|| capture(world, Some(digest)));
        // Whether the GPU computed this tick's forces (a pass that failed was
        // redone on the CPU), so that replay uses the same backend.
        let (gpu, resident) = world
            .get_resource::<ForceBuffers>()
            .map_or((false, false), |b| (b.gpu_pass, b.resident.is_some()));
        let result = encode_tick(tick, commands, digest, gpu, resident);
        let mut j = world.resource_mut::<Journal>();
        let result = result
            .and_then(|frame| j.writer.append(tick, frame))
            .and_then(|()| match snap {
                Some(s) => {
                    j.last_snapshot = tick;
                    j.writer.snapshot(s)
                }
                None => Ok(()),
            });
        if let Err(e) = result {
            tracing::error!(error = %e, tick, "journal failed; later ticks are not journaled");
            j.failure = Some(e.to_string());
        }
    }

    /// Writes a snapshot of the world as it is now, between ticks, and returns
    /// its tick (a snapshot of the same tick is replaced).
    ///
    /// # Errors
    /// The writer's errors ([`WalError::Io`] and others); [`WalError::Refused`] when there is
    /// no WAL, when journaling has stopped, or when commands applied since the
    /// last tick are not journaled yet (a snapshot would hold them, and the next
    /// tick's record would apply them a second time on replay).
    pub fn snapshot_now(world: &mut World) -> Result<u64, WalError> {
        let refused = |why: String| Err(WalError::Refused(why));
        let Some(j) = world.get_resource::<Journal>() else {
            return refused("this run has no WAL (start it with --wal DIR)".into());
        };
        if let Some(f) = &j.failure {
            return refused(format!("journaling stopped: {f}"));
        }
        let tick = tick_of(world);
        let pending = world.resource::<CommandLog>().applied.len();
        if pending > 0 {
            return refused(format!(
                "{pending} command(s) applied since tick {tick} are journaled with the next tick; \
                 a snapshot now would replay them twice: snapshot after the next tick"
            ));
        }
        let snap = capture(world, None);
        let mut j = world.resource_mut::<Journal>();
        j.writer.snapshot(snap)?;
        j.last_snapshot = tick;
        Ok(tick)
    }

    /// Why journaling stopped, if it did. Runners check this after every tick.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Writer counters (the writer thread's, so the last few records may not
    /// be counted yet).
    pub fn stats(&self) -> WalStats {
        self.writer.stats()
    }

    /// Tick records journaled through this journal (counted when appended).
    pub fn appended_records(&self) -> u64 {
        self.writer.appended_records()
    }

    /// The durability policy.
    pub fn durability(&self) -> Durability {
        self.writer.durability()
    }
}

/// Encodes one tick record as a frame.
///
/// # Errors
/// The record does not encode, or is larger than a frame holds
/// ([`WalError::RecordTooLarge`]).
pub fn encode_tick(
    tick: u64,
    commands: Vec<SimCommand>,
    digest: StateDigest,
    gpu: bool,
    resident: bool,
) -> Result<Vec<u8>, WalError> {
    let record = TickRecord {
        commands,
        digest: digest.0,
        gpu,
        resident: gpu && resident,
    };
    // The payload is encoded in place after its frame header: one buffer.
    let mut frame = Vec::with_capacity(64);
    let start = format::begin_record(&mut frame);
    rmp_serde::encode::write(&mut frame, &record).map_err(|e| WalError::Encode(e.to_string()))?;
    format::finish_record(&mut frame, start, RecordKind::Tick as u8, tick)
        .map_err(|bytes| WalError::RecordTooLarge { tick, bytes })?;
    Ok(frame)
}

pub(super) fn attach(world: &mut World, writer: WalWriter, lock: DirLock, opts: &WalOptions) {
    let tick = tick_of(world);
    let mut log = world.resource_mut::<CommandLog>();
    log.record = true;
    log.applied.clear();
    world.insert_resource(Journal {
        writer,
        snapshot_every: opts.snapshot_every,
        last_snapshot: tick,
        failure: None,
        _lock: lock,
    });
}

/// Creates a WAL in `dir` (created if missing; it must not hold a WAL) for `sim`:
/// writes the manifest and a snapshot of the current state, then journals every
/// tick. Commands applied before this call are in the snapshot.
///
/// # Errors
/// `opts` are invalid ([`WalError::Options`]); `dir` cannot be created or
/// read, holds a WAL ([`WalError::Exists`]), other files
/// ([`WalError::NotEmpty`]) or WAL files that are more than a crashed
/// creation's leftovers ([`WalError::Orphaned`]); another process holds its
/// lock; or the snapshot or manifest cannot be written.
pub fn create<H: Host>(
    dir: &Path,
    manifest: &Manifest,
    sim: &mut H,
    opts: &WalOptions,
) -> Result<(), WalError> {
    opts.validate()
        .map_err(|e| WalError::Options(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| WalError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    if exists(dir) {
        return Err(WalError::Exists(dir.to_path_buf()));
    }
    let (segments, snapshots) = list_dir(dir)?;
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::Io {
        path: dir.to_path_buf(),
        source: e,
    })? {
        let path = entry
            .map_err(|e| WalError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?
            .path();
        let ours = path.file_name().and_then(|n| n.to_str()) == Some(LOCK)
            || path.extension().is_some_and(|e| e == "tmp")
            || segments.iter().chain(&snapshots).any(|f| f.path == path);
        if !ours {
            return Err(WalError::NotEmpty {
                dir: dir.to_path_buf(),
                found: path.display().to_string(),
            });
        }
    }
    let lock = DirLock::exclusive(dir)?;
    if exists(dir) {
        return Err(WalError::Exists(dir.to_path_buf()));
    }
    // Leftovers of a creation that crashed before its manifest was written:
    // only those are removed; WAL files that hold more are someone's data.
    if let Some(found) = not_leftovers(&segments, &snapshots) {
        return Err(WalError::Orphaned {
            dir: dir.to_path_buf(),
            found,
        });
    }
    for f in segments.iter().chain(&snapshots) {
        std::fs::remove_file(&f.path).map_err(|e| WalError::Io {
            path: f.path.clone(),
            source: e,
        })?;
    }
    let snap = capture(sim.world_mut(), None);
    let mut writer = WalWriter::start(dir, next_tick(snap.tick)?, opts)?;
    writer.snapshot(snap)?;
    writer.flush()?;
    // The manifest comes last: a directory with a manifest always has a snapshot
    // and the segment after it.
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| WalError::Encode(e.to_string()))?;
    write_atomic(dir, MANIFEST, &[&json])?;
    attach(sim.world_mut(), writer, lock, opts);
    Ok(())
}

/// Writes a final snapshot of the state after the last journaled tick (when it
/// is newer than the last snapshot), flushes everything and detaches the journal.
/// Returns the writer's counters.
///
/// Commands applied or queued after the last tick are not journaled (the WAL
/// holds ticks): the WAL is still closed cleanly, without them and without a
/// snapshot, and the result is [`WalError::Unjournaled`].
///
/// # Errors
/// The writer failed earlier ([`WalError::WriterFailed`]) or fails now, or
/// commands were left unjournaled ([`WalError::Unjournaled`]).
pub fn close<H: Host>(sim: &mut H) -> Result<WalStats, WalError> {
    let world = sim.world_mut();
    let Some(mut j) = world.remove_resource::<Journal>() else {
        return Ok(WalStats::default());
    };
    let mut log = world.resource_mut::<CommandLog>();
    log.record = false;
    let applied = std::mem::take(&mut log.applied).len();
    if let Some(f) = j.failure.take() {
        return Err(WalError::WriterFailed(f));
    }
    let queued = world
        .resource::<crate::model::commands::CommandQueue>()
        .len();
    let tick = tick_of(world);
    let clean = applied == 0 && queued == 0;
    if clean && tick != j.last_snapshot {
        j.writer.snapshot(capture(world, None))?;
    }
    j.writer.flush()?;
    let Journal { writer, .. } = j;
    let stats = writer.close()?;
    if clean {
        Ok(stats)
    } else {
        Err(WalError::Unjournaled {
            tick,
            applied,
            queued,
        })
    }
}

/// Detaches the journal of a simulation whose state cannot be trusted (a tick
/// panicked half-way): flushes the records of the ticks that completed and
/// closes the writer, but writes no snapshot, so the log ends at the last
/// whole tick and [`recover`](super::recover) resumes from there.
///
/// # Errors
/// The writer failed earlier ([`WalError::WriterFailed`]) or cannot flush.
pub fn abandon<H: Host>(sim: &mut H) -> Result<WalStats, WalError> {
    let Some(j) = sim.world_mut().remove_resource::<Journal>() else {
        return Ok(WalStats::default());
    };
    let Journal {
        mut writer,
        failure,
        ..
    } = j;
    if let Some(f) = failure {
        return Err(WalError::WriterFailed(f));
    }
    writer.flush()?;
    writer.close()
}
