//! The black box: a ring buffer of the last notable events of a run (commands
//! refused, CDNA violations, group events, WAL events, errors, panics), each with
//! its tick and wall time, dumped as JSON lines on panic, on a fatal error and on
//! demand (`SIGUSR1`, or [`BlackBox::dump`] from code).

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

/// What kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A queued command was refused (bad value, unknown id, quota).
    CommandRefused,
    /// `Constrain` corrected CDNA violations in a tick.
    Violation,
    /// A new constitution took effect.
    Cdna,
    /// A hierarchy detection ran; its identity events.
    Groups,
    /// The WAL wrote a snapshot, or failed.
    Wal,
    /// An error that ended or degraded the run.
    Error,
    /// A tick panicked.
    Panic,
    /// The run recovered its state from the WAL.
    Recovery,
    /// Something a user or embedder noted.
    Note,
}

/// One entry of the black box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlackBoxEvent {
    /// Sequence number since the box was created (gaps show what the ring dropped).
    pub seq: u64,
    /// The simulation tick it happened at (the tick being run, for a panic).
    pub tick: u64,
    /// Wall time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The details, in words.
    pub message: String,
}

/// The ring buffer of the last [`BlackBox::capacity`] events, as a resource.
#[derive(Resource, Clone, Debug)]
pub struct BlackBox {
    events: VecDeque<BlackBoxEvent>,
    capacity: usize,
    next_seq: u64,
}

impl Default for BlackBox {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl BlackBox {
    /// Events kept by default.
    pub const DEFAULT_CAPACITY: usize = 1000;

    /// An empty box keeping the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            events: VecDeque::with_capacity(capacity),
            capacity,
            next_seq: 0,
        }
    }

    /// Records an event, dropping the oldest when full.
    pub fn record(&mut self, tick: u64, kind: EventKind, message: impl Into<String>) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.events.push_back(BlackBoxEvent {
            seq: self.next_seq,
            tick,
            unix_ms,
            kind,
            message: message.into(),
        });
        self.next_seq += 1;
    }

    /// The events held, oldest first.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &BlackBoxEvent> {
        self.events.iter()
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded (or everything was cleared).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The most events held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Events recorded since the start, including those the ring dropped.
    pub fn recorded(&self) -> u64 {
        self.next_seq
    }

    /// Writes the events as JSON lines, oldest first, to `path`: to a temporary
    /// file beside it, fsynced, then renamed over it, so a reader never sees half
    /// a dump. Returns the number of events written.
    ///
    /// # Errors
    /// The temporary file cannot be written or synced, or the rename fails
    /// (the temporary file is removed).
    pub fn dump(&self, path: &Path) -> std::io::Result<usize> {
        let tmp = path.with_extension("jsonl.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            for e in &self.events {
                serde_json::to_writer(&mut out, e)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)?;
        Ok(self.events.len())
    }

    /// Reads a dump back.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not an event.
    pub fn read_dump(path: &Path) -> Result<Vec<BlackBoxEvent>, DumpError> {
        let text = std::fs::read_to_string(path).map_err(|source| DumpError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| DumpError::Line {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }
}

/// Why a black-box dump could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The dump.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not an event.
    #[error("{}:{line}: {source}", path.display())]
    Line {
        /// The dump.
        path: std::path::PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_in_order() {
        let mut b = BlackBox::new(3);
        for t in 0..5 {
            b.record(t, EventKind::Note, format!("event {t}"));
        }
        let seqs: Vec<u64> = b.events().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(b.recorded(), 5);
        assert_eq!(b.events().next().unwrap().message, "event 2");
    }

    #[test]
    fn dump_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box.jsonl");
        let mut b = BlackBox::default();
        b.record(7, EventKind::CommandRefused, "spawn: mass NaN");
        b.record(8, EventKind::Panic, "boom");
        assert_eq!(b.dump(&path).unwrap(), 2);
        let back = BlackBox::read_dump(&path).unwrap();
        assert_eq!(back, b.events().cloned().collect::<Vec<_>>());
        assert!(!path.with_extension("jsonl.tmp").exists());
    }
}
