//! The write-ahead log: every tick journaled, snapshots, and recovery that proves
//! itself by re-simulating and checking every tick's digest.
//!
//! - [`format`]: the bytes on disk (the format specification is there).
//! - [`writer`]: the background writer and the durability policies.
//! - [`snapshot`]: capturing and restoring the whole world.
//! - this module: creating a WAL for a simulation ([`create`]), recovering one
//!   ([`recover`]), resuming a run on it ([`resume`]), listing it ([`inspect`]),
//!   and the [`Journal`] resource that the `Journal` stage writes through.

pub mod format;
pub mod snapshot;
pub mod writer;

pub use format::{FORMAT_VERSION, TickRecord};
pub use snapshot::{WorldSnapshot, capture, restore};
pub use writer::{Durability, WalOptions, WalStats, WalWriter};

use crate::commands::{CommandError, CommandLog, SimCommand, apply_command};
use crate::config::{Quotas, SimConfig};
use crate::digest::StateDigest;
use crate::sim::{SimSettings, Simulation};
use crate::systems::ForceBuffers;
use bevy_ecs::prelude::*;
use format::{HeaderError, RecordKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;
use writer::{WalFile, list_dir, sync_dir, write_atomic};

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

/// The name of the manifest file.
pub const MANIFEST: &str = "manifest.json";
const LOCK: &str = "LOCK";

/// What a WAL belongs to: written once when the WAL is created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format version of the files in this directory.
    pub format_version: u32,
    /// The simulation settings the WAL was written with (threads do not matter).
    pub sim: SimConfig,
    /// The quotas.
    pub quotas: Quotas,
    /// The job that writes the WAL, as named values (scenario, seed, …); a run
    /// that resumes the WAL must have the same values.
    pub run: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, WalError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.exists() {
                    WalError::NotAWal(dir.to_path_buf())
                } else {
                    WalError::NoDirectory(dir.to_path_buf())
                });
            }
            Err(e) => return Err(WalError::Io { path, source: e }),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| WalError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(WalError::UnsupportedVersion {
                path,
                found: m.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(m)
    }

    /// Identity keys that are only hints, beside the key they name: a path
    /// beside the hash of the file's content. A hint never makes two runs
    /// differ (the same file may be named by another path); it is shown when
    /// the key it names differs.
    pub const HINTS: [(&'static str, &'static str); 1] = [("input", "input_xxh3")];

    /// The differences between this manifest's run and `run`, one line each
    /// (`key: the WAL has X, this run has Y`); empty when they match. Keys in
    /// [`Manifest::HINTS`] are not compared.
    pub fn differences(&self, run: &BTreeMap<String, String>) -> Vec<String> {
        let none = String::from("(none)");
        let mut keys: Vec<&String> = self.run.keys().chain(run.keys()).collect();
        keys.sort();
        keys.dedup();
        let hint_for = |key: &str| Self::HINTS.iter().find(|(_, k)| *k == key).map(|(h, _)| *h);
        keys.into_iter()
            .filter(|k| !Self::HINTS.iter().any(|(h, _)| h == k))
            .filter_map(|k| {
                let (a, b) = (self.run.get(k), run.get(k));
                (a != b).then(|| {
                    let (a, b) = (a.unwrap_or(&none), b.unwrap_or(&none));
                    match hint_for(k) {
                        Some(h) => format!(
                            "{k}: the WAL has {a} (from {}), this run has {b} (from {}): not the same content",
                            self.run.get(h).unwrap_or(&none),
                            run.get(h).unwrap_or(&none)
                        ),
                        None => format!("{k}: the WAL has {a}, this run has {b}"),
                    }
                })
            })
            .collect()
    }
}

/// What a creation that crashed before writing its manifest can leave: at most
/// one whole snapshot (they are renamed into place) and at most one segment,
/// the one right after it, holding no record. `None` if the files are that;
/// else the first file that is more, and why.
fn not_leftovers(segments: &[WalFile], snapshots: &[WalFile]) -> Option<String> {
    if snapshots.len() > 1 {
        return Some(format!(
            "{} snapshots ({}, …)",
            snapshots.len(),
            snapshots[1].path.display()
        ));
    }
    if segments.len() > 1 {
        return Some(format!(
            "{} segments ({}, …)",
            segments.len(),
            segments[1].path.display()
        ));
    }
    if let Some(snap) = snapshots.first() {
        let whole = std::fs::read(&snap.path)
            .map_err(|e| e.to_string())
            .and_then(|b| format::decode_snapshot_file(&b).map(|_| ()));
        if let Err(why) = whole {
            return Some(format!("{} ({why})", snap.path.display()));
        }
    }
    if let Some(seg) = segments.first() {
        if snapshots
            .first()
            .is_some_and(|s| s.tick.checked_add(1) != Some(seg.tick))
        {
            return Some(format!(
                "{} (not the segment right after the snapshot)",
                seg.path.display()
            ));
        }
        let bytes = match std::fs::read(&seg.path) {
            Ok(b) => b,
            Err(e) => return Some(format!("{} (cannot be read: {e})", seg.path.display())),
        };
        // As recovery judges a last segment: a header that is whole, or torn
        // (short, zeroed, failing its CRC), and no record after it.
        let header = format::decode_segment_header(&bytes);
        let torn = header.as_ref().is_err_and(HeaderError::may_be_torn);
        if !(header.is_ok() || torn) || format::has_valid_record(&bytes) {
            return Some(format!(
                "{} ({} bytes{})",
                seg.path.display(),
                bytes.len(),
                if header.is_ok() {
                    ", with records"
                } else {
                    ", not a segment"
                }
            ));
        }
    }
    None
}

/// Whether `dir` holds a WAL (has a manifest).
pub fn exists(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// An advisory lock on a WAL directory (`DIR/LOCK`), released on drop or when the
/// process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: Option<File>,
}

impl DirLock {
    /// The exclusive lock a writer holds.
    pub fn exclusive(dir: &Path) -> Result<Self, WalError> {
        let path = dir.join(LOCK);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::Io {
                path: path.clone(),
                source: e,
            })?;
        match f.try_lock() {
            Ok(()) => Ok(Self { _file: Some(f) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(WalError::Io { path, source: e }),
        }
    }

    /// A shared lock for readers; refused while a writer holds the lock. Creates
    /// nothing: without a `LOCK` file nobody is writing.
    pub fn shared(dir: &Path) -> Result<Self, WalError> {
        let path = dir.join(LOCK);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self { _file: None }),
            Err(e) => return Err(WalError::Io { path, source: e }),
        };
        match f.try_lock_shared() {
            Ok(()) => Ok(Self { _file: Some(f) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(WalError::Io { path, source: e }),
        }
    }
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
        let tick = world.resource::<crate::registry::SimClock>().tick;
        let commands = std::mem::take(&mut world.resource_mut::<CommandLog>().applied);
        let digest = crate::digest::state_digest(world);
        let snap = (snapshot_every > 0 && tick.is_multiple_of(snapshot_every))
            .then(|| capture(world, Some(digest)));
        // Whether the GPU computed this tick's forces (a pass that failed was
        // redone on the CPU), so that replay uses the same backend.
        let gpu = world
            .get_resource::<ForceBuffers>()
            .is_some_and(|b| b.gpu_pass);
        let result = encode_tick(tick, commands, digest, gpu);
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
pub fn encode_tick(
    tick: u64,
    commands: Vec<SimCommand>,
    digest: StateDigest,
    gpu: bool,
) -> Result<Vec<u8>, WalError> {
    let record = TickRecord {
        commands,
        digest: digest.0,
        gpu,
    };
    // The payload is encoded in place after its frame header: one buffer.
    let mut frame = Vec::with_capacity(64);
    let start = format::begin_record(&mut frame);
    rmp_serde::encode::write(&mut frame, &record).map_err(|e| WalError::Encode(e.to_string()))?;
    format::finish_record(&mut frame, start, RecordKind::Tick as u8, tick)
        .map_err(|bytes| WalError::RecordTooLarge { tick, bytes })?;
    Ok(frame)
}

/// The first tick a writer appends after `tick`.
fn next_tick(tick: u64) -> Result<u64, WalError> {
    tick.checked_add(1)
        .filter(|&t| t <= MAX_TICK)
        .ok_or_else(|| WalError::Options(format!("tick {tick} is past the limit {MAX_TICK}")))
}

/// The largest tick a WAL holds.
pub const MAX_TICK: u64 = 1 << 62;

fn attach(sim: &mut Simulation, writer: WalWriter, lock: DirLock, opts: &WalOptions) {
    let tick = sim.tick();
    let world = sim.world_mut();
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
pub fn create(
    dir: &Path,
    manifest: &Manifest,
    sim: &mut Simulation,
    opts: &WalOptions,
) -> Result<(), WalError> {
    opts.validate().map_err(WalError::Options)?;
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
    attach(sim, writer, lock, opts);
    Ok(())
}

/// Writes a final snapshot of the state after the last journaled tick (when it
/// is newer than the last snapshot), flushes everything and detaches the journal.
/// Returns the writer's counters.
///
/// Commands applied or queued after the last tick are not journaled (the WAL
/// holds ticks): the WAL is still closed cleanly, without them and without a
/// snapshot, and the result is [`WalError::Unjournaled`].
pub fn close(sim: &mut Simulation) -> Result<WalStats, WalError> {
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
    let queued = world.resource::<crate::commands::CommandQueue>().len();
    let tick = world.resource::<crate::registry::SimClock>().tick;
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
/// whole tick and [`recover`] resumes from there.
pub fn abandon(sim: &mut Simulation) -> Result<WalStats, WalError> {
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

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RecoveryReport {
    /// The last durable tick: the state recovered is the state after it.
    pub tick: u64,
    /// The digest of that state.
    pub digest: String,
    /// The snapshot recovery started from.
    pub snapshot_tick: u64,
    /// Snapshots refused before a usable one was found, with the reason.
    pub snapshots_skipped: Vec<String>,
    /// Tick records replayed (re-simulated and digest-checked).
    pub records_replayed: u64,
    /// Commands in those records.
    pub commands_replayed: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub bytes_dropped: u64,
    /// Why the tail was cut, if it was.
    pub tail: Option<String>,
    /// Exact duplicates of a record found right after it (an append written
    /// twice), one line each with the segment and byte offset: skipped in the
    /// replay, and cut when they end the log.
    pub duplicates_skipped: Vec<String>,
    /// Segments read.
    pub segments_read: u64,
    /// Live tokens after recovery.
    pub tokens: u64,
    /// Links after recovery.
    pub links: u64,
    /// Wall seconds to restore the snapshot.
    pub restore_seconds: f64,
    /// Wall seconds of the replay.
    pub replay_seconds: f64,
    /// Replayed ticks per second.
    pub replay_ticks_per_s: f64,
}

/// How to fix the last segment before appending after a recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TailFix {
    None,
    Truncate { path: PathBuf, len: u64 },
    Delete(PathBuf),
}

/// A recovered simulation, ready to be inspected or resumed.
pub struct Recovery {
    /// The simulation, in the state after [`RecoveryReport::tick`].
    pub sim: Simulation,
    /// What recovery found.
    pub report: RecoveryReport,
    /// The manifest.
    pub manifest: Manifest,
    dir: PathBuf,
    fix: TailFix,
    lock: DirLock,
    exclusive: bool,
    /// The last segment read (to fsync before appending after it).
    last_segment: Option<PathBuf>,
    /// Snapshots refused (renamed `*.bad` by [`resume`], out of retention's way).
    refused: Vec<PathBuf>,
}

/// Settings of a recovery.
#[derive(Clone, Debug, Default)]
pub struct RecoverOptions {
    /// Worker threads (the result does not depend on it); 0 = one per core.
    pub threads: usize,
    /// Take the writer's lock (to resume afterwards) instead of a reader's.
    pub exclusive: bool,
}

/// The settings a snapshot is loaded with: the manifest's, on the CPU (restoring
/// computes nothing; [`replay_tick`] opens the GPU for the ticks that used it).
fn settings(manifest: &Manifest, threads: usize) -> SimSettings {
    SimSettings {
        config: SimConfig {
            threads,
            backend: crate::config::Backend::Cpu,
            ..manifest.sim.clone()
        },
        cdna: Default::default(),
        quotas: manifest.quotas.clone(),
    }
}

/// Loads and restores a snapshot to replay the log on, observing nothing; returns
/// the world and its (checked) digest.
fn load_snapshot(
    file: &WalFile,
    manifest: &Manifest,
    threads: usize,
) -> Result<(Simulation, StateDigest), String> {
    let (mut sim, digest) =
        load_snapshot_file(&file.path, Some(file.tick), settings(manifest, threads))?;
    // Replayed ticks were observed when they first ran: they emit no metrics
    // and record nothing in the black box ([`resume`] turns that back on).
    sim.world_mut()
        .insert_resource(crate::observe::ObserveSettings::QUIET);
    Ok((sim, digest))
}

/// Loads and restores the snapshot file `path` (of any WAL directory, or copied
/// out of one) for inspection; the run settings come from the `manifest.json`
/// beside it, or are the defaults.
pub fn open_snapshot(path: &Path, threads: usize) -> Result<Simulation, WalError> {
    let base = match path.parent().map(Manifest::load) {
        Some(Ok(m)) => settings(&m, threads),
        _ => SimSettings {
            config: SimConfig {
                threads,
                ..Default::default()
            },
            ..Default::default()
        },
    };
    load_snapshot_file(path, None, base)
        .map(|(sim, _)| sim)
        .map_err(|reason| WalError::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        })
}

fn load_snapshot_file(
    path: &Path,
    name_tick: Option<u64>,
    base: SimSettings,
) -> Result<(Simulation, StateDigest), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (tick, payload) = format::decode_snapshot_file(&bytes)?;
    if name_tick.is_some_and(|t| t != tick) || tick > MAX_TICK {
        return Err(format!(
            "the header says tick {tick}, the file name says {} (limit {MAX_TICK})",
            name_tick.unwrap_or(tick)
        ));
    }
    let snap: WorldSnapshot =
        rmp_serde::from_slice(payload).map_err(|e| format!("payload does not decode: {e}"))?;
    if snap.tick != tick {
        return Err(format!(
            "header says tick {tick}, payload says {}",
            snap.tick
        ));
    }
    // The world is built with the snapshot's own constitution.
    let mut s = base;
    s.cdna = snap.cdna.clone();
    let mut sim = Simulation::new(s).map_err(|e| e.to_string())?;
    // `restore` checks that the world's digest is the one recorded.
    restore(sim.world_mut(), &snap)?;
    Ok((sim, StateDigest(snap.digest)))
}

fn read_segment(path: &Path) -> Result<Vec<u8>, WalError> {
    std::fs::read(path).map_err(|e| WalError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn header_error(path: &Path, e: HeaderError) -> WalError {
    match e {
        HeaderError::Version(found) => WalError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        other => WalError::BadSegmentHeader {
            path: path.to_path_buf(),
            reason: match other {
                HeaderError::Short(n) => format!("{n} bytes, shorter than a header"),
                HeaderError::Magic => "not a segment (bad magic)".into(),
                _ => "header CRC mismatch".into(),
            },
        },
    }
}

/// Recovers the WAL in `dir`: loads the newest usable snapshot, then replays
/// every later record, re-simulating each tick and checking its digest. A torn or
/// corrupt tail of the last segment is cut (and reported); any other damage is an
/// error. Reads only; [`resume`] repairs the tail before appending.
pub fn recover(dir: &Path, opts: &RecoverOptions) -> Result<Recovery, WalError> {
    // A bad thread count would otherwise make every snapshot look unusable.
    if opts.threads > crate::config::MAX_THREADS {
        return Err(WalError::Options(format!(
            "threads = {}: must be at most {}",
            opts.threads,
            crate::config::MAX_THREADS
        )));
    }
    let lock = if opts.exclusive {
        DirLock::exclusive(dir)?
    } else {
        DirLock::shared(dir)?
    };
    let manifest = Manifest::load(dir)?;
    let (segments, snapshots) = list_dir(dir)?;
    let mut report = RecoveryReport::default();

    let restore_start = Instant::now();
    let mut sim = None;
    let mut refused = Vec::new();
    for snap in snapshots.iter().rev() {
        match load_snapshot(snap, &manifest, opts.threads) {
            Ok(s) => {
                report.snapshot_tick = snap.tick;
                sim = Some(s);
                break;
            }
            Err(reason) => {
                report
                    .snapshots_skipped
                    .push(format!("{}: {reason}", snap.path.display()));
                refused.push(snap.path.clone());
            }
        }
    }
    let Some((mut sim, mut digest)) = sim else {
        return Err(WalError::NoSnapshot {
            dir: dir.to_path_buf(),
            tried: report.snapshots_skipped,
        });
    };
    report.restore_seconds = restore_start.elapsed().as_secs_f64();
    sim.world_mut().resource_mut::<CommandLog>().record = false;

    let base = report.snapshot_tick;
    let after_base = next_tick(base)?;
    // Segments whose successor starts at or before base + 1 hold nothing after base.
    let first_needed = segments
        .windows(2)
        .position(|w| w[1].tick > after_base)
        .unwrap_or(segments.len().saturating_sub(1));
    let needed: &[WalFile] = segments.get(first_needed..).unwrap_or(&[]);
    let mut fix = TailFix::None;
    let mut expected = after_base;
    // The log must reach the snapshot: a record of its tick or later, or a
    // segment that starts right after it.
    let mut reaches_base = needed.iter().any(|s| s.tick == after_base);
    let mut last_record = 0;
    let replay_start = Instant::now();
    for (i, seg) in needed.iter().enumerate() {
        let last = i + 1 == needed.len();
        let bytes = read_segment(&seg.path)?;
        report.segments_read += 1;
        let first_tick = match format::decode_segment_header(&bytes) {
            Ok(t) => t,
            // A last segment whose header never fully reached the disk, and
            // which holds no record: a torn creation.
            Err(e) if e.may_be_torn() && last && !format::has_valid_record(&bytes) => {
                report.bytes_dropped += bytes.len() as u64;
                report.tail = Some(format!(
                    "{}: segment header torn ({}), no record after it",
                    seg.path.display(),
                    header_error(&seg.path, e)
                ));
                fix = TailFix::Delete(seg.path.clone());
                break;
            }
            Err(e) => return Err(header_error(&seg.path, e)),
        };
        if first_tick != seg.tick {
            return Err(WalError::BadSegmentHeader {
                path: seg.path.clone(),
                reason: format!(
                    "header says first tick {first_tick}, the name says {}",
                    seg.tick
                ),
            });
        }
        let scan = format::scan_records(&bytes);
        if let Some(d) = &scan.damage
            && (d.next_valid.is_some() || !last)
        {
            return Err(WalError::CorruptRecord {
                path: seg.path.clone(),
                offset: d.offset,
                reason: d.reason.to_string(),
                next_valid: d.next_valid,
            });
        }
        let issues = format::order_issues(&scan.records);
        // Records up to the snapshot are not replayed: only later ones must
        // be in order.
        if let Some(bad) = issues.iter().find(|i| match i {
            format::OrderIssue::Duplicate { .. } => false,
            format::OrderIssue::Conflict { tick, .. }
            | format::OrderIssue::Backwards { tick, .. } => *tick > base,
        }) {
            return Err(WalError::OutOfOrder {
                path: seg.path.clone(),
                issue: *bad,
            });
        }
        // Exact copies are skipped; a run of them that ends the log is cut.
        let copies: std::collections::HashSet<usize> = issues
            .iter()
            .filter(|i| matches!(i, format::OrderIssue::Duplicate { .. }))
            .map(format::OrderIssue::offset)
            .collect();
        let trailing = scan
            .records
            .iter()
            .rev()
            .take_while(|r| copies.contains(&r.offset))
            .last()
            .map(|r| (r.offset, r.tick));
        for issue in issues
            .iter()
            .filter(|i| matches!(i, format::OrderIssue::Duplicate { .. }))
        {
            report
                .duplicates_skipped
                .push(format!("{}: {issue}", seg.path.display()));
        }
        for r in &scan.records {
            if copies.contains(&r.offset) {
                continue;
            }
            last_record = last_record.max(r.tick);
            if r.tick >= base {
                reaches_base = true;
            }
            if r.tick <= base {
                continue;
            }
            if r.tick != expected {
                return Err(WalError::MissingTicks {
                    path: seg.path.clone(),
                    expected,
                    found: r.tick,
                });
            }
            if RecordKind::from_code(r.kind) != Some(RecordKind::Tick) {
                return Err(WalError::UnknownKind {
                    path: seg.path.clone(),
                    offset: r.offset,
                    kind: r.kind,
                });
            }
            let rec: TickRecord =
                rmp_serde::from_slice(r.payload).map_err(|e| WalError::Payload {
                    path: seg.path.clone(),
                    offset: r.offset,
                    tick: r.tick,
                    reason: e.to_string(),
                })?;
            digest = replay_tick(&mut sim, r.tick, &rec)?;
            report.records_replayed += 1;
            report.commands_replayed += rec.commands.len() as u64;
            expected += 1;
        }
        if last && let Some((cut, copied)) = trailing {
            // The last records are copies of the one before them (an append
            // written twice): cut them, and anything after them.
            let dropped = bytes.len() - cut;
            report.bytes_dropped += dropped as u64;
            report.tail = Some(format!(
                "{}: cut {dropped} bytes at byte {cut} (exact duplicates of tick {copied} at the tail)",
                seg.path.display()
            ));
            fix = TailFix::Truncate {
                path: seg.path.clone(),
                len: cut as u64,
            };
        } else if let Some(d) = scan.damage {
            let dropped = bytes.len() - d.offset;
            report.bytes_dropped += dropped as u64;
            report.tail = Some(format!(
                "{}: cut {dropped} bytes at byte {} ({})",
                seg.path.display(),
                d.offset,
                d.reason
            ));
            fix = TailFix::Truncate {
                path: seg.path.clone(),
                len: d.offset as u64,
            };
        }
        if last && scan.records.is_empty() {
            // Nothing to keep: the resumed writer starts this segment afresh.
            fix = TailFix::Delete(seg.path.clone());
        }
    }
    if !reaches_base {
        return Err(WalError::LogBehindSnapshot {
            dir: dir.to_path_buf(),
            snapshot_tick: base,
            last_record,
        });
    }
    report.replay_seconds = replay_start.elapsed().as_secs_f64();
    if report.replay_seconds > 0.0 {
        report.replay_ticks_per_s = report.records_replayed as f64 / report.replay_seconds;
    }
    report.tick = sim.tick();
    report.digest = digest.to_string();
    report.tokens = sim.token_count();
    report.links = sim.link_count();
    Ok(Recovery {
        sim,
        report,
        manifest,
        dir: dir.to_path_buf(),
        fix,
        lock,
        exclusive: opts.exclusive,
        last_segment: needed.last().map(|s| s.path.clone()),
        refused,
    })
}

/// Applies one record to `sim` and checks its digest; returns the digest.
pub fn replay_tick(
    sim: &mut Simulation,
    tick: u64,
    rec: &TickRecord,
) -> Result<StateDigest, WalError> {
    for (index, cmd) in rec.commands.iter().enumerate() {
        apply_command(sim.world_mut(), cmd).map_err(|source| WalError::ReplayCommand {
            tick,
            index,
            source,
        })?;
    }
    use crate::backend::{ForceBackend, SpareBackend};
    use crate::config::Backend;
    // The backend that computed the tick computes it again; the other one is
    // kept aside, so a log that switches back does not open a new device.
    let world = sim.world_mut();
    let active = world
        .get_resource::<ForceBackend>()
        .map_or(Backend::Cpu, ForceBackend::active);
    if rec.gpu != (active == Backend::Gpu) {
        let spare = world
            .remove_resource::<SpareBackend>()
            .map(|s| s.0)
            .filter(|b| (b.active() == Backend::Gpu) == rec.gpu);
        let next = match spare {
            Some(b) => b,
            None if rec.gpu => ForceBackend::resolve(Backend::Gpu),
            None => ForceBackend::cpu(),
        };
        if let Some(e) = next.error() {
            return Err(WalError::Backend {
                tick,
                reason: e.to_string(),
            });
        }
        if let Some(old) = world.remove_resource::<ForceBackend>() {
            world.insert_resource(SpareBackend(old));
        }
        world.insert_resource(next);
    }
    // Without the `tick` span: a replayed tick is not traced again.
    world.run_schedule(crate::plugin::SimTick);
    if rec.gpu && !world.resource::<ForceBuffers>().gpu_pass {
        // The GPU failed during the tick (the CPU redid it): say so rather
        // than report a diverging digest. (A GPU record always has tokens.)
        let reason = world
            .get_resource::<ForceBackend>()
            .and_then(|b| b.error().or(b.fallback()).map(str::to_string))
            .unwrap_or_else(|| "the tick did not run on the GPU".into());
        return Err(WalError::Backend { tick, reason });
    }
    let replayed = sim.digest();
    if replayed.0 != rec.digest || sim.tick() != tick {
        return Err(WalError::DigestMismatch {
            tick,
            recorded: StateDigest(rec.digest),
            replayed,
        });
    }
    Ok(replayed)
}

/// Resumes journaling on a recovered WAL (recovered with
/// [`RecoverOptions::exclusive`]): cuts the torn tail, removes unfinished
/// snapshots, and appends from the next tick. Returns the simulation.
pub fn resume(rec: Recovery, opts: &WalOptions) -> Result<Simulation, WalError> {
    opts.validate().map_err(WalError::Options)?;
    let Recovery {
        mut sim,
        dir,
        fix,
        lock,
        exclusive,
        last_segment,
        refused,
        report,
        ..
    } = rec;
    if !exclusive {
        return Err(WalError::Options(
            "resume needs a recovery made with RecoverOptions::exclusive".into(),
        ));
    }
    let digest = sim.digest().to_string();
    if sim.tick() != report.tick || digest != report.digest {
        return Err(WalError::Options(format!(
            "the recovered simulation changed before resume (tick {} → {}, digest {} → {digest}): \
             nothing may touch it between recover and resume",
            report.tick,
            sim.tick(),
            report.digest,
        )));
    }
    let first = next_tick(sim.tick())?;
    sim.world_mut()
        .insert_resource(crate::observe::ObserveSettings::default());
    // The segment the writer starts is swapped in atomically over an empty one of
    // the same name, never deleted first: a segment named after the snapshot
    // must exist at every moment, or a crash here would leave a log that ends
    // before its snapshot.
    let first_name = writer::segment_name(first);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| WalError::Io { path, source: e }
    };
    match &fix {
        TailFix::None => {}
        TailFix::Truncate { path, len } => {
            let f = File::options().write(true).open(path).map_err(io(path))?;
            f.set_len(*len).map_err(io(path))?;
            f.sync_all().map_err(io(path))?;
        }
        TailFix::Delete(path) if path.file_name().and_then(|n| n.to_str()) == Some(&first_name) => {
        }
        TailFix::Delete(path) => std::fs::remove_file(path).map_err(io(path))?,
    }
    // What was replayed may still be only in the page cache (batched, off, or a
    // killed writer): it reaches the disk before anything is appended after it.
    if let Some(path) = last_segment.filter(|p| p.exists()) {
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io(&path))?;
    }
    // Refused snapshots are kept for inspection but out of retention's count.
    for path in &refused {
        let mut bad = path.clone().into_os_string();
        bad.push(".bad");
        std::fs::rename(path, &bad).map_err(io(path))?;
    }
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    // Segments that start after the recovered tick hold no usable records (their
    // predecessor's tail was cut); they would break the tick sequence.
    let (segments, _) = list_dir(&dir)?;
    for s in segments.iter().filter(|s| s.tick > first) {
        std::fs::remove_file(&s.path).map_err(io(&s.path))?;
    }
    sync_dir(&dir)?;
    let writer = WalWriter::start_with(&dir, first, opts, true)?;
    attach(&mut sim, writer, lock, opts);
    Ok(sim)
}

/// One segment as [`inspect`] sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentInfo {
    /// File name.
    pub file: String,
    /// Bytes.
    pub bytes: u64,
    /// First and last record tick, if it has records.
    pub ticks: Option<(u64, u64)>,
    /// Records that decode.
    pub records: u64,
    /// Commands in them.
    pub commands: u64,
    /// `ok`, or what is wrong: damage, duplicates, records out of order.
    pub status: String,
}

/// One snapshot as [`inspect`] sees it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// File name.
    pub file: String,
    /// Bytes.
    pub bytes: u64,
    /// Tick.
    pub tick: u64,
    /// Tokens, if it decodes.
    pub tokens: Option<u64>,
    /// Links, if it decodes.
    pub links: Option<u64>,
    /// `ok`, or what is wrong.
    pub status: String,
}

/// What is in a WAL directory, without replaying it.
#[derive(Clone, Debug, Serialize)]
pub struct WalInfo {
    /// The manifest.
    pub manifest: Manifest,
    /// Segments in tick order.
    pub segments: Vec<SegmentInfo>,
    /// Snapshots in tick order.
    pub snapshots: Vec<SnapshotInfo>,
}

/// Lists the segments and snapshots of a WAL, checking every CRC.
pub fn inspect(dir: &Path) -> Result<WalInfo, WalError> {
    let manifest = Manifest::load(dir)?;
    let (segments, snapshots) = list_dir(dir)?;
    let name = |p: &Path| {
        p.file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into())
    };
    let mut info = WalInfo {
        manifest,
        segments: Vec::new(),
        snapshots: Vec::new(),
    };
    for s in &segments {
        let bytes = read_segment(&s.path)?;
        let mut seg = SegmentInfo {
            file: name(&s.path),
            bytes: bytes.len() as u64,
            ticks: None,
            records: 0,
            commands: 0,
            status: "ok".into(),
        };
        match format::decode_segment_header(&bytes) {
            Err(e) => seg.status = header_error(&s.path, e).to_string(),
            Ok(_) => {
                let scan = format::scan_records(&bytes);
                seg.records = scan.records.len() as u64;
                if let (Some(a), Some(b)) = (scan.records.first(), scan.records.last()) {
                    seg.ticks = Some((a.tick, b.tick));
                }
                seg.commands = scan
                    .records
                    .iter()
                    .filter_map(|r| rmp_serde::from_slice::<TickRecord>(r.payload).ok())
                    .map(|r| r.commands.len() as u64)
                    .sum();
                let issues = format::order_issues(&scan.records);
                if !issues.is_empty() {
                    let list: Vec<String> = issues.iter().map(ToString::to_string).collect();
                    seg.status = list.join("; ");
                }
                if let Some(d) = scan.damage {
                    let damage = match d.next_valid {
                        Some(n) => format!(
                            "damaged at byte {} ({}); valid records resume at byte {n}",
                            d.offset, d.reason
                        ),
                        None => format!(
                            "{} bytes of tail after byte {} do not decode ({})",
                            bytes.len() - d.offset,
                            d.offset,
                            d.reason
                        ),
                    };
                    seg.status = if issues.is_empty() {
                        damage
                    } else {
                        format!("{}; {damage}", seg.status)
                    };
                }
            }
        }
        info.segments.push(seg);
    }
    for s in &snapshots {
        let bytes = std::fs::read(&s.path).map_err(|e| WalError::Io {
            path: s.path.clone(),
            source: e,
        })?;
        let mut snap = SnapshotInfo {
            file: name(&s.path),
            bytes: bytes.len() as u64,
            tick: s.tick,
            tokens: None,
            links: None,
            status: "ok".into(),
        };
        match format::decode_snapshot_file(&bytes)
            .and_then(|(_, p)| rmp_serde::from_slice::<WorldSnapshot>(p).map_err(|e| e.to_string()))
        {
            Ok(w) => {
                snap.tokens = Some(w.tokens.len() as u64);
                snap.links = Some(w.links.len() as u64);
            }
            Err(e) => snap.status = e,
        }
        info.snapshots.push(snap);
    }
    Ok(info)
}

/// A [`WalOptions`] for tests and tools: `sync`, a snapshot every `every` ticks.
pub fn sync_options(every: u64) -> WalOptions {
    WalOptions {
        durability: Durability::Sync,
        snapshot_every: every,
        ..Default::default()
    }
}
