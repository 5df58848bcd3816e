//! The WAL writer: a background thread that owns the segment file and writes
//! records and snapshots in the order the tick produced them.
//!
//! The tick encodes a record, hands it over a bounded channel (back-pressure: when
//! the writer is `queue_records` behind, the tick waits) and, under
//! [`Durability::Sync`], waits until the writer has fsynced it.

/// The histogram the writer thread records each segment fsync's seconds in
/// (catalogued with the others in `observe::metrics`).
pub const FSYNC_SECONDS: &str = "neurograph_wal_fsync_seconds";

use super::WalError;
use super::format::{self, SEGMENT_HEADER_LEN};
use super::snapshot::WorldSnapshot;
use crate::model::config::{InvalidSetting, UnknownName};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When journaled ticks become durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every tick's record is fsynced before the tick ends: a crash loses nothing.
    Sync,
    /// A background writer fsyncs every `batch_records` records or `batch_ms`
    /// milliseconds, whichever comes first; a crash loses at most that window plus
    /// the records still queued.
    #[default]
    Batched,
    /// Records are written but fsynced only at shutdown; a crash may lose any tick
    /// after the last snapshot.
    Off,
}

impl Durability {
    /// The name used by `--durability`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Batched => "batched",
            Self::Off => "off",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "sync" => Ok(Self::Sync),
            "batched" => Ok(Self::Batched),
            "off" => Ok(Self::Off),
            _ => Err(UnknownName::new(
                "durability",
                s,
                &["sync", "batched", "off"],
            )),
        }
    }
}

/// WAL settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalOptions {
    /// The durability policy.
    pub durability: Durability,
    /// A snapshot every this many ticks (0: only when the WAL is opened and closed).
    pub snapshot_every: u64,
    /// `batched`: fsync after this many records.
    pub batch_records: u32,
    /// `batched`: fsync at least this often, in milliseconds.
    pub batch_ms: u64,
    /// Records the writer may be behind before the tick waits.
    pub queue_records: usize,
    /// A new segment is started when one reaches this size.
    pub segment_bytes: u64,
    /// Snapshots kept; older snapshots and the segments only they need are deleted.
    pub keep_snapshots: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Batched,
            snapshot_every: 100,
            batch_records: 64,
            batch_ms: 50,
            queue_records: 1024,
            segment_bytes: 64 << 20,
            keep_snapshots: 2,
        }
    }
}

impl WalOptions {
    /// Checks the values.
    ///
    /// # Errors
    /// A value outside its range; the error names the field, the value and
    /// the limit.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let checks: [(&str, u64, u64, u64); 5] = [
            ("batch_records", self.batch_records as u64, 1, 1 << 20),
            ("batch_ms", self.batch_ms, 1, 60_000),
            ("queue_records", self.queue_records as u64, 1, 1 << 20),
            ("segment_bytes", self.segment_bytes, 4096, 1 << 40),
            ("keep_snapshots", self.keep_snapshots as u64, 1, 1000),
        ];
        for (name, v, lo, hi) in checks {
            if v < lo || v > hi {
                return Err(InvalidSetting::new(
                    format!("wal.{name}"),
                    v,
                    format!("must be in [{lo}, {hi}]"),
                ));
            }
        }
        Ok(())
    }
}

/// Counters of a WAL writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalStats {
    /// Bytes written (records, segment headers, snapshots).
    pub bytes: u64,
    /// fsync calls (files and directory).
    pub fsyncs: u64,
    /// Tick records written.
    pub records: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Highest tick known durable.
    pub durable_tick: u64,
}

enum Msg {
    Record { tick: u64, frame: Vec<u8> },
    Snapshot(Box<WorldSnapshot>),
    Flush,
    Close,
}

#[derive(Default)]
struct Progress {
    /// Highest tick whose record has been written to the file.
    written: u64,
    /// Highest tick known on disk (fsynced).
    durable: u64,
    /// A snapshot flush is done up to this count of flush requests.
    flushes_done: u64,
    error: Option<String>,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    records: AtomicU64,
    snapshots: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The segment file being appended to.
struct Segment {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

/// File name of the segment whose first record is `tick`.
pub fn segment_name(tick: u64) -> String {
    format!("wal-{tick:020}.seg")
}

/// File name of the snapshot after `tick`.
pub fn snapshot_name(tick: u64) -> String {
    format!("snap-{tick:020}.snap")
}

fn io_err(path: &Path, e: std::io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// fsyncs a directory so that creations, renames and deletions in it are durable.
///
/// # Errors
/// [`WalError::Io`] when the directory cannot be opened or fsynced.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Writes `parts`, in order, to `dir/name` atomically: temp file, fsync, rename,
/// dir fsync.
///
/// # Errors
/// [`WalError::Io`] when creating, writing or fsyncing the temporary file, the
/// rename, or the directory fsync fails.
pub fn write_atomic(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), WalError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    for bytes in parts {
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    }
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)
}

/// Counts and CRCs the bytes written through it.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes a snapshot file in memory (tests and benches; the writer streams).
///
/// # Errors
/// [`WalError::Encode`] when the snapshot cannot be encoded as MessagePack.
pub fn encode_snapshot(snap: &WorldSnapshot) -> Result<Vec<u8>, WalError> {
    let payload = rmp_serde::to_vec(snap).map_err(|e| WalError::Encode(e.to_string()))?;
    Ok(format::encode_snapshot_file(snap.tick, &payload))
}

/// Writes a snapshot to `dir` atomically, streaming the payload to the file (no
/// copy of it in memory): a placeholder header, the payload through a CRC, then
/// the real header; fsync, rename, directory fsync. Returns the file's size.
///
/// # Errors
/// [`WalError::Io`] when creating, writing, fsyncing or renaming the file, or the
/// directory fsync, fails; [`WalError::Encode`] when the snapshot cannot be encoded.
pub fn write_snapshot(dir: &Path, snap: &WorldSnapshot) -> Result<u64, WalError> {
    use std::io::{Seek, SeekFrom};
    let name = snapshot_name(snap.tick);
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(&name);
    let err = |e| io_err(&tmp, e);
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(&[0u8; format::SNAPSHOT_HEADER_LEN])
        .map_err(err)?;
    let (crc, len) = {
        // Buffer first, so the CRC sees large blocks, not rmp's small writes.
        let mut out = BufWriter::with_capacity(
            1 << 20,
            CrcWriter {
                inner: &f,
                crc: crc32fast::Hasher::new(),
                len: 0,
            },
        );
        rmp_serde::encode::write(&mut out, snap).map_err(|e| WalError::Encode(e.to_string()))?;
        out.flush().map_err(err)?;
        let c = out.get_ref();
        (c.crc.clone().finalize(), c.len)
    };
    let header = format::snapshot_header(snap.tick, len, crc);
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(&header).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(format::SNAPSHOT_HEADER_LEN as u64 + len)
}

impl Segment {
    /// A new segment; `replace` swaps it atomically for an existing file of the
    /// same name (a resumed WAL's empty last segment), so that a segment of that
    /// name exists at every moment.
    fn create(dir: &Path, first_tick: u64, replace: bool) -> Result<Self, WalError> {
        let path = dir.join(segment_name(first_tick));
        let header = format::encode_segment_header(first_tick);
        let f = if replace {
            let tmp = dir.join(format!("{}.tmp", segment_name(first_tick)));
            let mut t = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            t.write_all(&header).map_err(|e| io_err(&tmp, e))?;
            t.sync_all().map_err(|e| io_err(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            t
        } else {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            f.write_all(&header).map_err(|e| io_err(&path, e))?;
            f.sync_all().map_err(|e| io_err(&path, e))?;
            f
        };
        sync_dir(dir)?;
        Ok(Self {
            path,
            out: BufWriter::with_capacity(1 << 20, f),
            len: SEGMENT_HEADER_LEN as u64,
        })
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.out.flush().map_err(|e| io_err(&self.path, e))?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| io_err(&self.path, e))
    }
}

struct WriterThread {
    dir: PathBuf,
    opts: WalOptions,
    shared: Arc<Shared>,
    segment: Segment,
    unsynced: u32,
    last_sync: Instant,
}

impl WriterThread {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let msg = if self.opts.durability == Durability::Batched && self.unsynced > 0 {
                let deadline = self.last_sync + Duration::from_millis(self.opts.batch_ms);
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Msg::Close),
                }
            } else {
                Some(rx.recv().unwrap_or(Msg::Close))
            };
            let close = matches!(msg, Some(Msg::Close));
            let result = match msg {
                None => self.sync(),
                Some(m) => self.handle(m),
            };
            if let Err(e) = result {
                let mut p = self.shared.lock();
                p.error = Some(e.to_string());
                self.shared.changed.notify_all();
                return;
            }
            if close {
                return;
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> Result<(), WalError> {
        match msg {
            Msg::Record { tick, frame } => {
                let len = frame.len() as u64;
                if self.segment.len > SEGMENT_HEADER_LEN as u64
                    && self.segment.len + len > self.opts.segment_bytes
                {
                    // Seal the full segment before the next one exists.
                    self.sync()?;
                    self.segment = Segment::create(&self.dir, tick, false)?;
                    self.add_fsyncs(2);
                    self.shared
                        .bytes
                        .fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
                }
                self.segment
                    .out
                    .write_all(&frame)
                    .map_err(|e| io_err(&self.segment.path, e))?;
                self.segment.len += len;
                self.shared.bytes.fetch_add(len, Ordering::Relaxed);
                self.shared.records.fetch_add(1, Ordering::Relaxed);
                self.shared.lock().written = tick;
                self.unsynced += 1;
                match self.opts.durability {
                    Durability::Sync => self.sync(),
                    Durability::Batched
                        if self.unsynced >= self.opts.batch_records
                            || self.last_sync.elapsed().as_millis()
                                >= self.opts.batch_ms as u128 =>
                    {
                        self.sync()
                    }
                    _ => Ok(()),
                }
            }
            Msg::Snapshot(snap) => {
                // Records up to the snapshot's tick reach the disk first, so a
                // snapshot never gets ahead of the log.
                self.sync()?;
                let bytes = write_snapshot(&self.dir, &snap)?;
                drop(snap);
                self.add_fsyncs(2);
                self.shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.shared.snapshots.fetch_add(1, Ordering::Relaxed);
                retire(&self.dir, self.opts.keep_snapshots)?;
                let mut p = self.shared.lock();
                p.flushes_done += 1;
                self.shared.changed.notify_all();
                Ok(())
            }
            Msg::Flush | Msg::Close => {
                self.sync()?;
                let mut p = self.shared.lock();
                p.flushes_done += 1;
                self.shared.changed.notify_all();
                Ok(())
            }
        }
    }

    fn add_fsyncs(&self, n: u64) {
        self.shared.fsyncs.fetch_add(n, Ordering::Relaxed);
    }

    fn sync(&mut self) -> Result<(), WalError> {
        let start = Instant::now();
        self.segment.sync()?;
        let took = start.elapsed();
        metrics::histogram!(FSYNC_SECONDS).record(took.as_secs_f64());
        self.add_fsyncs(1);
        self.unsynced = 0;
        self.last_sync = Instant::now();
        let mut p = self.shared.lock();
        p.durable = p.written;
        self.shared.changed.notify_all();
        Ok(())
    }
}

/// A file in a WAL directory, by kind and tick.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalFile {
    /// Segment first tick, or snapshot tick.
    pub tick: u64,
    /// Path.
    pub path: PathBuf,
}

/// The segments and snapshots of `dir`, each sorted by tick. Other files
/// (manifest, lock, `*.tmp`) are not listed.
///
/// # Errors
/// [`WalError::Io`] when the directory cannot be read.
pub fn list_dir(dir: &Path) -> Result<(Vec<WalFile>, Vec<WalFile>), WalError> {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parse = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)?
                .strip_suffix(suffix)
                .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))?
                .parse::<u64>()
                .ok()
        };
        if let Some(tick) = parse("wal-", ".seg") {
            segments.push(WalFile {
                tick,
                path: entry.path(),
            });
        } else if let Some(tick) = parse("snap-", ".snap") {
            snapshots.push(WalFile {
                tick,
                path: entry.path(),
            });
        }
    }
    segments.sort();
    snapshots.sort();
    Ok((segments, snapshots))
}

/// Deletes all but the newest `keep` snapshots (at least one is always kept:
/// recovery starts from one), and the segments whose records all precede the
/// oldest snapshot kept. The newest segment is never deleted.
///
/// # Errors
/// [`WalError::Io`] when the directory cannot be read, a file cannot be deleted, or
/// the directory fsync fails (files deleted before the failure stay deleted).
pub fn retire(dir: &Path, keep: usize) -> Result<(), WalError> {
    let keep = keep.max(1);
    let (segments, snapshots) = list_dir(dir)?;
    if snapshots.len() <= keep {
        return Ok(());
    }
    let (old, kept) = snapshots.split_at(snapshots.len() - keep);
    for s in old {
        std::fs::remove_file(&s.path).map_err(|e| io_err(&s.path, e))?;
    }
    let oldest_kept = kept[0].tick;
    for pair in segments.windows(2) {
        if pair[1].tick <= oldest_kept.saturating_add(1) {
            std::fs::remove_file(&pair[0].path).map_err(|e| io_err(&pair[0].path, e))?;
        }
    }
    sync_dir(dir)
}

/// The main-thread handle of the writer thread.
pub struct WalWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    durability: Durability,
    appended: u64,
    appended_records: u64,
    flushes_sent: u64,
}

impl WalWriter {
    /// Starts a writer that appends to a new segment whose first record is
    /// `first_tick`. Ticks before it are durable already (in a snapshot).
    ///
    /// # Errors
    /// As [`WalWriter::start_with`]; in particular [`WalError::Io`] when a segment
    /// of that first tick exists already.
    pub fn start(dir: &Path, first_tick: u64, opts: &WalOptions) -> Result<Self, WalError> {
        Self::start_with(dir, first_tick, opts, false)
    }

    /// [`WalWriter::start`], replacing an existing segment of the same name
    /// atomically when `replace` is set.
    ///
    /// # Errors
    /// [`WalError::Options`] when `opts` is invalid; [`WalError::Io`] when the segment
    /// cannot be created (or, without `replace`, exists already), written or fsynced,
    /// the directory fsync fails, or the writer thread cannot be spawned.
    pub fn start_with(
        dir: &Path,
        first_tick: u64,
        opts: &WalOptions,
        replace: bool,
    ) -> Result<Self, WalError> {
        opts.validate()
            .map_err(|e| WalError::Options(e.to_string()))?;
        let segment = Segment::create(dir, first_tick, replace)?;
        let done = first_tick.saturating_sub(1);
        let shared = Arc::new(Shared::default());
        {
            let mut p = shared.lock();
            p.written = done;
            p.durable = done;
        }
        shared
            .bytes
            .store(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        shared.fsyncs.store(2, Ordering::Relaxed);
        let (tx, rx) = sync_channel(opts.queue_records);
        let worker = WriterThread {
            dir: dir.to_path_buf(),
            opts: opts.clone(),
            shared: shared.clone(),
            segment,
            unsynced: 0,
            last_sync: Instant::now(),
        };
        let guard = shared.clone();
        let thread = std::thread::Builder::new()
            .name("neurograph-wal".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| worker.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    // Wake anyone waiting on the writer: it is gone.
                    let mut p = guard.lock();
                    p.error = Some("the writer thread panicked".into());
                    guard.changed.notify_all();
                }
            })
            .map_err(|e| io_err(dir, e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            shared,
            durability: opts.durability,
            appended: done,
            appended_records: 0,
            flushes_sent: 0,
        })
    }

    fn failure(&self) -> Option<WalError> {
        self.shared.lock().error.clone().map(WalError::WriterFailed)
    }

    fn send(&mut self, msg: Msg) -> Result<(), WalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let tx = self.tx.as_ref().ok_or(WalError::Closed)?;
        if tx.send(msg).is_err() {
            return Err(self.failure().unwrap_or(WalError::Closed));
        }
        Ok(())
    }

    /// Appends a framed record of `tick`; under `sync`, returns once it is on disk.
    ///
    /// # Errors
    /// [`WalError::WriterFailed`] when the writer thread has failed (earlier, or under
    /// `sync` while writing this record); [`WalError::Closed`] when it has stopped.
    pub fn append(&mut self, tick: u64, frame: Vec<u8>) -> Result<(), WalError> {
        self.send(Msg::Record { tick, frame })?;
        self.appended = tick;
        self.appended_records += 1;
        if self.durability == Durability::Sync {
            self.wait(|p| p.durable >= tick)?;
        }
        Ok(())
    }

    /// Queues a snapshot; it is written after every record appended before it.
    /// At most one snapshot is in flight: this waits for the previous one.
    ///
    /// # Errors
    /// [`WalError::WriterFailed`] when the writer thread has failed (writing the
    /// previous snapshot included); [`WalError::Closed`] when it has stopped. A failure
    /// writing this snapshot shows in a later call.
    pub fn snapshot(&mut self, snap: WorldSnapshot) -> Result<(), WalError> {
        let previous = self.flushes_sent;
        self.wait(|p| p.flushes_done >= previous)?;
        self.send(Msg::Snapshot(Box::new(snap)))?;
        self.flushes_sent += 1;
        Ok(())
    }

    /// Returns once everything appended and queued so far is on disk.
    ///
    /// # Errors
    /// [`WalError::WriterFailed`] when the writer thread has failed, before or during
    /// the flush; [`WalError::Closed`] when it has stopped.
    pub fn flush(&mut self) -> Result<(), WalError> {
        self.send(Msg::Flush)?;
        self.flushes_sent += 1;
        let target = self.flushes_sent;
        self.wait(|p| p.flushes_done >= target)
    }

    fn wait(&self, done: impl Fn(&Progress) -> bool) -> Result<(), WalError> {
        let mut p = self.shared.lock();
        loop {
            if let Some(e) = &p.error {
                return Err(WalError::WriterFailed(e.clone()));
            }
            if done(&p) {
                return Ok(());
            }
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Flushes everything and stops the writer thread.
    ///
    /// # Errors
    /// [`WalError::WriterFailed`] when the writer thread failed or panicked (what it
    /// had not fsynced is not durable); [`WalError::Closed`] when it had stopped
    /// before it could be asked to close.
    pub fn close(mut self) -> Result<WalStats, WalError> {
        self.shutdown()?;
        Ok(self.stats())
    }

    fn shutdown(&mut self) -> Result<(), WalError> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let sent = tx.send(Msg::Close).is_ok();
        drop(tx);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| WalError::WriterFailed("the writer thread panicked".into()))?;
        }
        match self.failure() {
            Some(e) => Err(e),
            None if !sent => Err(WalError::Closed),
            None => Ok(()),
        }
    }

    /// Records appended by this writer (queued or written).
    pub fn appended_records(&self) -> u64 {
        self.appended_records
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        WalStats {
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
            snapshots: self.shared.snapshots.load(Ordering::Relaxed),
            durable_tick: self.shared.lock().durable,
        }
    }

    /// The durability policy.
    pub fn durability(&self) -> Durability {
        self.durability
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "closing the WAL writer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `retire` never deletes the last snapshot, whatever `keep` says, and
    /// deletes only the segments that precede the oldest snapshot kept.
    #[test]
    fn retire_keeps_at_least_one_snapshot() {
        let dir = std::env::temp_dir().join(format!("neurograph-retire-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for t in [0u64, 10, 20] {
            std::fs::write(dir.join(snapshot_name(t)), b"s").unwrap();
            std::fs::write(dir.join(segment_name(t + 1)), b"g").unwrap();
        }
        retire(&dir, 0).unwrap();
        let (segments, snapshots) = list_dir(&dir).unwrap();
        let ticks = |v: &[WalFile]| v.iter().map(|f| f.tick).collect::<Vec<_>>();
        assert_eq!(ticks(&snapshots), [20]);
        assert_eq!(ticks(&segments), [21]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
