//! The write-ahead log: every tick journaled, snapshots, and recovery that proves
//! itself by re-simulating and checking every tick's digest.
//!
//! - [`format`](mod@format): the bytes on disk (the format specification is there).
//! - [`writer`]: the background writer and the durability policies.
//! - [`snapshot`]: capturing and restoring the whole world.
//! - `journal`: the `Journal` stage's system and resource ([`JournalPlugin`],
//!   [`Journal`]); creating ([`create`]) and closing ([`close`], [`abandon`]) a
//!   WAL for a running world.
//! - `recovery`: [`recover`] and [`resume`], through the [`Host`] seam.
//! - `manifest`: what a WAL belongs to ([`Manifest`]) and its lock ([`DirLock`]).
//! - `inspect`: listing a WAL without replaying it ([`inspect()`]).
//!
//! The WAL is a layer on top of the engine: it journals and replays a bevy
//! `World` through [`Host`] and never calls the code that owns the world.

pub mod format;
mod inspect;
mod journal;
mod manifest;
mod recovery;
pub mod snapshot;
pub mod writer;

pub use format::{FORMAT_VERSION, TickRecord};
pub use inspect::{SegmentInfo, SnapshotInfo, WalInfo, inspect};
pub use journal::{Journal, JournalPlugin, abandon, close, create, encode_tick, journal};
pub use manifest::{DirLock, MANIFEST, Manifest, exists};
pub use recovery::{
    RecoverOptions, Recovery, RecoveryReport, open_snapshot, recover, replay_tick, resume,
};
pub use snapshot::{WorldSnapshot, capture, restore};
pub use writer::{Durability, WalOptions, WalStats, WalWriter};

use crate::digest::StateDigest;
use crate::model::cdna::Cdna;
use crate::model::commands::CommandError;
use crate::model::config::{Quotas, SimConfig};
use bevy_ecs::prelude::*;
use std::path::PathBuf;

/// Why a WAL could not be written, read or recovered. Every variant names the
/// file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The directory has no manifest.
    #[error("{}: not a NeuroGraph WAL (no manifest.json)", .0.display())]
    NotAWal(PathBuf),
    /// An operation on a running WAL that cannot be done now (the reason says
    /// why and what to do).
    #[error("{0}")]
    Refused(String),
    /// The directory does not exist.
    #[error("{}: no such directory", .0.display())]
    NoDirectory(PathBuf),
    /// The directory holds a WAL already (when creating one).
    #[error("{}: holds a WAL already", .0.display())]
    Exists(PathBuf),
    /// The directory holds files that are not part of a WAL.
    #[error("{}: not empty and holds no WAL (found {found}); give a new or empty directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
        /// One of the foreign entries.
        found: String,
    },
    /// The directory holds WAL files but no manifest, and they are more than a
    /// crashed creation leaves: someone's data, not overwritten.
    #[error("{}: holds WAL files but no manifest.json, and more than a crashed creation leaves ({found}); not overwriting them: restore manifest.json, or move them away", dir.display())]
    Orphaned {
        /// The directory.
        dir: PathBuf,
        /// The first file that is more than leftovers, and why.
        found: String,
    },
    /// Another process is writing this WAL.
    #[error("{}: in use by another process (its LOCK is held)", .0.display())]
    Locked(PathBuf),
    /// The manifest cannot be read.
    #[error("{}: bad manifest: {reason}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file was written by a format version this build cannot read.
    #[error(
        "{}: format version {found}; this build reads version {supported}{}",
        path.display(),
        format::why_unsupported(*found)
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A segment header is damaged.
    #[error("{}: bad segment header: {reason}", path.display())]
    BadSegmentHeader {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A damaged record that is not at the tail: later records exist, so cutting
    /// there would silently drop them.
    #[error(
        "{}: corrupt record at byte {offset} ({reason}); {}",
        path.display(),
        match next_valid {
            Some(n) => format!("a valid record follows at byte {n}, so this is not a torn tail"),
            None => "this segment is not the last one, so it cannot be a torn tail".to_string(),
        }
    )]
    CorruptRecord {
        /// The file.
        path: PathBuf,
        /// Offset of the bad frame.
        offset: usize,
        /// What is wrong with it.
        reason: String,
        /// Offset of a later valid record, if any.
        next_valid: Option<usize>,
    },
    /// A record of a kind this build does not know.
    #[error("{}: record at byte {offset} has unknown kind {kind}", path.display())]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// Offset.
        offset: usize,
        /// The kind code.
        kind: u8,
    },
    /// A record whose CRC is right but whose payload does not decode.
    #[error("{}: record of tick {tick} at byte {offset}: payload does not decode: {reason}", path.display())]
    Payload {
        /// The file.
        path: PathBuf,
        /// Offset.
        offset: usize,
        /// Tick.
        tick: u64,
        /// Why.
        reason: String,
    },
    /// A segment's records are out of order: two different records of one tick,
    /// or a tick below the one before it (exact duplicates are not an error).
    #[error("{}: {issue}; recovery cannot tell which record is right", path.display())]
    OutOfOrder {
        /// The segment.
        path: PathBuf,
        /// What is wrong, where.
        issue: format::OrderIssue,
    },
    /// Records are missing between two ticks (a segment is missing or a segment's
    /// records do not follow on).
    #[error("missing records: expected tick {expected}, found tick {found} in {}", path.display())]
    MissingTicks {
        /// The file where the gap shows.
        path: PathBuf,
        /// The tick that should come next.
        expected: u64,
        /// The tick found.
        found: u64,
    },
    /// The log ends before the snapshot recovery starts from: a segment after it
    /// is missing.
    #[error("{}: the log ends at tick {last_record} but the snapshot is of tick {snapshot_tick}: a segment is missing or the log's tail is damaged", dir.display())]
    LogBehindSnapshot {
        /// The directory.
        dir: PathBuf,
        /// The snapshot's tick.
        snapshot_tick: u64,
        /// The last tick found in the log (0: none).
        last_record: u64,
    },
    /// `close` found commands applied or queued after the last journaled tick;
    /// the WAL was closed without them (and without a final snapshot holding them).
    #[error(
        "the WAL was closed, but {applied} commands applied and {queued} queued after tick {tick} are not in it"
    )]
    Unjournaled {
        /// The last journaled tick.
        tick: u64,
        /// Commands applied since that tick.
        applied: usize,
        /// Commands queued for the next tick.
        queued: usize,
    },
    /// No snapshot could be loaded.
    #[error("{}: no usable snapshot ({})", dir.display(), if tried.is_empty() { "there is none".to_string() } else { tried.join("; ") })]
    NoSnapshot {
        /// The directory.
        dir: PathBuf,
        /// Each snapshot tried and why it was refused.
        tried: Vec<String>,
    },
    /// A tick the GPU computed cannot be replayed: no GPU can be used here.
    #[error(
        "tick {tick} was computed on the GPU and must be replayed there, but the GPU cannot be used: {reason}"
    )]
    Backend {
        /// The tick.
        tick: u64,
        /// Why the GPU cannot be used.
        reason: String,
    },
    /// A replayed tick's digest differs from the recorded one.
    #[error(
        "replay diverged at tick {tick}: the record says digest {recorded}, replay gives {replayed}"
    )]
    DigestMismatch {
        /// Tick.
        tick: u64,
        /// Recorded digest.
        recorded: StateDigest,
        /// Replayed digest.
        replayed: StateDigest,
    },
    /// A recorded command was refused on replay.
    #[error("replay of tick {tick}: command {index} was refused: {source}")]
    ReplayCommand {
        /// Tick.
        tick: u64,
        /// Index of the command in the record.
        index: usize,
        /// Why.
        source: CommandError,
    },
    /// The simulation could not be rebuilt from the manifest.
    #[error("rebuilding the simulation: {0}")]
    Sim(String),
    /// A record or snapshot could not be encoded.
    #[error("encoding: {0}")]
    Encode(String),
    /// A record over the size limit.
    #[error("a record of tick {tick} is {bytes} bytes: the limit is {limit}", limit = format::MAX_PAYLOAD)]
    RecordTooLarge {
        /// Tick.
        tick: u64,
        /// Its size.
        bytes: usize,
    },
    /// Bad WAL options.
    #[error("{0}")]
    Options(String),
    /// The background writer failed; nothing after its last fsync is durable.
    #[error("the WAL writer failed: {0}")]
    WriterFailed(String),
    /// The writer is closed.
    #[error("the WAL writer is closed")]
    Closed,
    /// A snapshot file given by path could not be used.
    #[error("{}: unusable snapshot: {reason}", path.display())]
    BadSnapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The seam between the log and the engine it journals, in the manner of
/// okaywal's `LogManager`: the WAL captures, restores, replays and journals a
/// bevy [`World`] through it and knows nothing else of what owns that world.
/// [`Simulation`](crate::sim::Simulation) is the host this crate ships; an
/// embedder's own type can be one too.
pub trait Host: Sized {
    /// Why a world could not be built.
    type Error: std::fmt::Display;

    /// A new world with no token, run settings `config`, constitution `cdna`
    /// and `quotas`: the one a snapshot is restored into and the log replayed
    /// on. Replayed ticks were observed when they first ran, so the host
    /// should observe nothing until [`Host::go_live`].
    ///
    /// # Errors
    /// The settings cannot build a world (the host's own error).
    fn replica(config: SimConfig, cdna: Cdna, quotas: Quotas) -> Result<Self, Self::Error>;

    /// The world.
    fn world(&self) -> &World;

    /// The world, mutable.
    fn world_mut(&mut self) -> &mut World;

    /// The replayed world is about to tick live again ([`resume`]): observe it
    /// from now on. Does nothing by default.
    fn go_live(&mut self) {}
}

/// Ticks completed by the world of `host`.
fn tick_of(world: &World) -> u64 {
    world
        .get_resource::<crate::schedule::SimClock>()
        .map_or(0, |c| c.tick)
}

/// The first tick a writer appends after `tick`.
fn next_tick(tick: u64) -> Result<u64, WalError> {
    tick.checked_add(1)
        .filter(|&t| t <= MAX_TICK)
        .ok_or_else(|| WalError::Options(format!("tick {tick} is past the limit {MAX_TICK}")))
}

/// The largest tick a WAL holds.
pub const MAX_TICK: u64 = 1 << 62;

/// A [`WalOptions`] for tests and tools: `sync`, a snapshot every `every` ticks.
pub fn sync_options(every: u64) -> WalOptions {
    WalOptions {
        durability: Durability::Sync,
        snapshot_every: every,
        ..Default::default()
    }
}
