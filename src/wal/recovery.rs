//! Recovery: the newest usable snapshot, then every later record replayed and
//! digest-checked; and resuming a run on the recovered log.

use super::journal::attach;
use super::manifest::DirLock;
use super::writer::{self, WalFile, list_dir, sync_dir};
use super::{
    FORMAT_VERSION, Host, Manifest, TickRecord, WalError, WalOptions, WalWriter, WorldSnapshot,
    format, next_tick, restore, tick_of,
};
use crate::digest::{StateDigest, state_digest};
use crate::model::commands::{CommandLog, apply_recorded_command};
use crate::model::config::SimConfig;
use crate::model::registry::{LinkGraph, TokenRegistry};
use crate::systems::ForceBuffers;
use format::{HeaderError, RecordKind};
use serde::Serialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// A recovered world, ready to be inspected or resumed.
pub struct Recovery<H> {
    /// The host of the world (a [`Simulation`](crate::sim::Simulation)), in
    /// the state after [`RecoveryReport::tick`].
    pub sim: H,
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

/// The run settings a snapshot is loaded with: the manifest's, on the CPU
/// (restoring computes nothing; [`replay_tick`] opens the GPU for the ticks
/// that used it).
fn settings(manifest: &Manifest, threads: usize) -> (SimConfig, crate::model::config::Quotas) {
    (
        SimConfig {
            threads,
            backend: crate::model::config::Backend::Cpu,
            ..manifest.sim.clone()
        },
        manifest.quotas.clone(),
    )
}

/// Loads and restores a snapshot to replay the log on; returns the world and
/// its (checked) digest.
fn load_snapshot<H: Host>(
    file: &WalFile,
    manifest: &Manifest,
    threads: usize,
) -> Result<(H, StateDigest), String> {
    load_snapshot_file(&file.path, Some(file.tick), settings(manifest, threads))
}

/// Loads and restores the snapshot file `path` (of any WAL directory, or copied
/// out of one) for inspection; the run settings come from the `manifest.json`
/// beside it, or are the defaults. The world is observed as a new one is
/// ([`Host::go_live`]).
///
/// # Errors
/// The file cannot be read or decoded, or its world's digest is not the one
/// it records ([`WalError::BadSnapshot`]).
pub fn open_snapshot<H: Host>(path: &Path, threads: usize) -> Result<H, WalError> {
    let base = match path.parent().map(Manifest::load) {
        Some(Ok(m)) => settings(&m, threads),
        _ => (
            SimConfig {
                threads,
                ..Default::default()
            },
            Default::default(),
        ),
    };
    let (mut sim, _) =
        load_snapshot_file::<H>(path, None, base).map_err(|reason| WalError::BadSnapshot {
            path: path.to_path_buf(),
            reason,
        })?;
    // Opened for inspection (and maybe to step on): observed as a new world is.
    sim.go_live();
    Ok(sim)
}

fn load_snapshot_file<H: Host>(
    path: &Path,
    name_tick: Option<u64>,
    (config, quotas): (SimConfig, crate::model::config::Quotas),
) -> Result<(H, StateDigest), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (tick, payload) = format::decode_snapshot_file(&bytes).map_err(|e| e.to_string())?;
    if name_tick.is_some_and(|t| t != tick) || tick > super::MAX_TICK {
        return Err(format!(
            "the header says tick {tick}, the file name says {} (limit {})",
            name_tick.unwrap_or(tick),
            super::MAX_TICK
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
    let mut sim = H::replica(config, snap.cdna.clone(), quotas).map_err(|e| e.to_string())?;
    // `restore` checks that the world's digest is the one recorded.
    restore(sim.world_mut(), &snap).map_err(|e| e.to_string())?;
    Ok((sim, StateDigest(snap.digest)))
}

pub(super) fn read_segment(path: &Path) -> Result<Vec<u8>, WalError> {
    std::fs::read(path).map_err(|e| WalError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

pub(super) fn header_error(path: &Path, e: HeaderError) -> WalError {
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
///
/// The host type says what the world is rebuilt as:
/// `wal::recover::<Simulation>(dir, &opts)`.
///
/// # Errors
/// Bad options ([`WalError::Options`]); no WAL in `dir`; the lock is held;
/// no snapshot is usable ([`WalError::NoSnapshot`]); damage anywhere but the
/// last segment's tail; records out of order or missing; a record that does
/// not replay to its digest ([`WalError::DigestMismatch`]); a log that ends
/// before its snapshot ([`WalError::LogBehindSnapshot`]).
pub fn recover<H: Host>(dir: &Path, opts: &RecoverOptions) -> Result<Recovery<H>, WalError> {
    // A bad thread count would otherwise make every snapshot look unusable.
    if opts.threads > crate::model::config::MAX_THREADS {
        return Err(WalError::Options(format!(
            "threads = {}: must be at most {}",
            opts.threads,
            crate::model::config::MAX_THREADS
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
    let (mut sim, digest, refused) =
        newest_snapshot::<H>(dir, &snapshots, &manifest, opts.threads, &mut report)?;
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
    let mut replay = Replay {
        base,
        expected: after_base,
        // The log must reach the snapshot: a record of its tick or later, or a
        // segment that starts right after it.
        reaches_base: needed.iter().any(|s| s.tick == after_base),
        last_record: 0,
        digest,
        fix: TailFix::None,
        report,
    };
    let replay_start = Instant::now();
    for (i, seg) in needed.iter().enumerate() {
        if !replay.segment(&mut sim, seg, i + 1 == needed.len())? {
            break;
        }
    }
    let Replay {
        mut report,
        fix,
        digest,
        ..
    } = replay;
    if !replay.reaches_base {
        return Err(WalError::LogBehindSnapshot {
            dir: dir.to_path_buf(),
            snapshot_tick: base,
            last_record: replay.last_record,
        });
    }
    report.replay_seconds = replay_start.elapsed().as_secs_f64();
    if report.replay_seconds > 0.0 {
        report.replay_ticks_per_s = report.records_replayed as f64 / report.replay_seconds;
    }
    let world = sim.world();
    report.tick = tick_of(world);
    report.digest = digest.to_string();
    report.tokens = world.resource::<TokenRegistry>().len();
    report.links = world.resource::<LinkGraph>().len();
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

/// The newest snapshot that loads, with its digest, and the snapshots refused
/// before it (each reason in `report.snapshots_skipped`).
fn newest_snapshot<H: Host>(
    dir: &Path,
    snapshots: &[WalFile],
    manifest: &Manifest,
    threads: usize,
    report: &mut RecoveryReport,
) -> Result<(H, StateDigest, Vec<PathBuf>), WalError> {
    let mut refused = Vec::new();
    for snap in snapshots.iter().rev() {
        match load_snapshot::<H>(snap, manifest, threads) {
            Ok((sim, digest)) => {
                report.snapshot_tick = snap.tick;
                return Ok((sim, digest, refused));
            }
            Err(reason) => {
                report
                    .snapshots_skipped
                    .push(format!("{}: {reason}", snap.path.display()));
                refused.push(snap.path.clone());
            }
        }
    }
    Err(WalError::NoSnapshot {
        dir: dir.to_path_buf(),
        tried: std::mem::take(&mut report.snapshots_skipped),
    })
}

/// The state of a replay as it walks the segments after the snapshot.
struct Replay {
    /// The snapshot's tick: records up to it are not replayed.
    base: u64,
    /// The tick the next replayed record must have.
    expected: u64,
    /// A record at or after `base` was seen (or a segment starts right after it).
    reaches_base: bool,
    /// The highest record tick seen.
    last_record: u64,
    /// The digest after the last replayed tick.
    digest: StateDigest,
    /// What to cut before appending.
    fix: TailFix,
    report: RecoveryReport,
}

impl Replay {
    /// Replays one segment; `false` when the walk stops here (a torn header
    /// ends the log).
    fn segment<H: Host>(
        &mut self,
        sim: &mut H,
        seg: &WalFile,
        last: bool,
    ) -> Result<bool, WalError> {
        let bytes = read_segment(&seg.path)?;
        self.report.segments_read += 1;
        let first_tick = match format::decode_segment_header(&bytes) {
            Ok(t) => t,
            // A last segment whose header never fully reached the disk, and
            // which holds no record: a torn creation.
            Err(e) if e.may_be_torn() && last && !format::has_valid_record(&bytes) => {
                self.report.bytes_dropped += bytes.len() as u64;
                self.report.tail = Some(format!(
                    "{}: segment header torn ({}), no record after it",
                    seg.path.display(),
                    header_error(&seg.path, e)
                ));
                self.fix = TailFix::Delete(seg.path.clone());
                return Ok(false);
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
        let copies = self.duplicates(seg, &scan.records)?;
        // A run of exact copies that ends the log is cut.
        let trailing = scan
            .records
            .iter()
            .rev()
            .take_while(|r| copies.contains(&r.offset))
            .last()
            .map(|r| (r.offset, r.tick));
        for r in scan.records.iter().filter(|r| !copies.contains(&r.offset)) {
            self.record(sim, seg, r)?;
        }
        if last && let Some((cut, copied)) = trailing {
            // The last records are copies of the one before them (an append
            // written twice): cut them, and anything after them.
            self.cut(
                seg,
                bytes.len(),
                cut,
                format!("exact duplicates of tick {copied} at the tail"),
            );
        } else if let Some(d) = scan.damage {
            self.cut(seg, bytes.len(), d.offset, d.reason.to_string());
        }
        if last && scan.records.is_empty() {
            // Nothing to keep: the resumed writer starts this segment afresh.
            self.fix = TailFix::Delete(seg.path.clone());
        }
        Ok(true)
    }

    /// Checks the order of a segment's records (only those after the snapshot
    /// must be in order) and returns the offsets of exact duplicates, which the
    /// replay skips (each reported).
    fn duplicates(
        &mut self,
        seg: &WalFile,
        records: &[format::RawRecord<'_>],
    ) -> Result<std::collections::HashSet<usize>, WalError> {
        let issues = format::order_issues(records);
        if let Some(bad) = issues.iter().find(|i| match i {
            format::OrderIssue::Duplicate { .. } => false,
            format::OrderIssue::Conflict { tick, .. }
            | format::OrderIssue::Backwards { tick, .. } => *tick > self.base,
        }) {
            return Err(WalError::OutOfOrder {
                path: seg.path.clone(),
                issue: *bad,
            });
        }
        let mut copies = std::collections::HashSet::new();
        for issue in issues
            .iter()
            .filter(|i| matches!(i, format::OrderIssue::Duplicate { .. }))
        {
            copies.insert(issue.offset());
            self.report
                .duplicates_skipped
                .push(format!("{}: {issue}", seg.path.display()));
        }
        Ok(copies)
    }

    /// Replays one record if it is after the snapshot.
    fn record<H: Host>(
        &mut self,
        sim: &mut H,
        seg: &WalFile,
        r: &format::RawRecord<'_>,
    ) -> Result<(), WalError> {
        self.last_record = self.last_record.max(r.tick);
        if r.tick >= self.base {
            self.reaches_base = true;
        }
        if r.tick <= self.base {
            return Ok(());
        }
        if r.tick != self.expected {
            return Err(WalError::MissingTicks {
                path: seg.path.clone(),
                expected: self.expected,
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
        let rec: TickRecord = rmp_serde::from_slice(r.payload).map_err(|e| WalError::Payload {
            path: seg.path.clone(),
            offset: r.offset,
            tick: r.tick,
            reason: e.to_string(),
        })?;
        self.digest = replay_tick(sim, r.tick, &rec)?;
        self.report.records_replayed += 1;
        self.report.commands_replayed += rec.commands.len() as u64;
        self.expected += 1;
        Ok(())
    }

    /// Cuts the last segment (`len` bytes) at byte `at`, for `why`.
    fn cut(&mut self, seg: &WalFile, len: usize, at: usize, why: String) {
        let dropped = len - at;
        self.report.bytes_dropped += dropped as u64;
        self.report.tail = Some(format!(
            "{}: cut {dropped} bytes at byte {at} ({why})",
            seg.path.display()
        ));
        self.fix = TailFix::Truncate {
            path: seg.path.clone(),
            len: at as u64,
        };
    }
}

/// Applies one record to `sim` and checks its digest; returns the digest.
///
/// # Errors
/// A recorded command is refused ([`WalError::ReplayCommand`]); the backend
/// that computed the tick cannot compute it again ([`WalError::Backend`]);
/// the replayed digest differs ([`WalError::DigestMismatch`]).
pub fn replay_tick<H: Host>(
    sim: &mut H,
    tick: u64,
    rec: &TickRecord,
) -> Result<StateDigest, WalError> {
    for (index, cmd) in rec.commands.iter().enumerate() {
        // Admitted once, live: replay does not decide the quotas again.
        apply_recorded_command(sim.world_mut(), cmd).map_err(|source| WalError::ReplayCommand {
            tick,
            index,
            source,
        })?;
    }
    use crate::backend::{ForceBackend, SpareBackend};
    use crate::model::config::Backend;
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
    // A GPU tick is replayed as it ran: the whole tick on the device, or its
    // forces only.
    if rec.gpu {
        use crate::model::config::GpuTick;
        let want = if rec.resident {
            GpuTick::Resident
        } else {
            GpuTick::Assisted
        };
        if let Some(mut b) = world.get_resource_mut::<ForceBackend>()
            && b.active_tick() != Some(want)
        {
            b.set_gpu_tick(want);
        }
    }
    // Without the `tick` span: a replayed tick is not traced again.
    world.run_schedule(crate::schedule::SimTick);
    if rec.gpu && !world.resource::<ForceBuffers>().gpu_pass {
        // The GPU failed during the tick (the CPU redid it): say so rather
        // than report a diverging digest. (A GPU record always has tokens.)
        let reason = world
            .get_resource::<ForceBackend>()
            .and_then(|b| b.error().or(b.fallback()).map(str::to_string))
            .unwrap_or_else(|| "the tick did not run on the GPU".into());
        return Err(WalError::Backend { tick, reason });
    }
    if rec.resident && world.resource::<ForceBuffers>().resident.is_none() {
        let reason = world
            .get_resource::<ForceBackend>()
            .and_then(|b| b.resident_refused().map(str::to_string))
            .unwrap_or_else(|| "the tick did not run on the GPU end to end".into());
        return Err(WalError::Backend {
            tick,
            reason: format!("it ran on the GPU end to end (resident), replay cannot: {reason}"),
        });
    }
    let replayed = state_digest(world);
    if replayed.0 != rec.digest || tick_of(world) != tick {
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
///
/// # Errors
/// Bad options; a recovery that was not exclusive or whose world changed
/// since ([`WalError::Options`]); a file operation on the directory fails.
pub fn resume<H: Host>(rec: Recovery<H>, opts: &WalOptions) -> Result<H, WalError> {
    opts.validate()
        .map_err(|e| WalError::Options(e.to_string()))?;
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
    let digest = state_digest(sim.world_mut()).to_string();
    let tick = tick_of(sim.world());
    if tick != report.tick || digest != report.digest {
        return Err(WalError::Options(format!(
            "the recovered simulation changed before resume (tick {} → {}, digest {} → {digest}): \
             nothing may touch it between recover and resume",
            report.tick, tick, report.digest,
        )));
    }
    let first = next_tick(tick)?;
    sim.go_live();
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
    attach(sim.world_mut(), writer, lock, opts);
    Ok(sim)
}
