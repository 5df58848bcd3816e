//! The manifest (what a WAL belongs to), the directory lock, and the rule for
//! the leftovers of a creation that crashed.

use super::format::{self, HeaderError};
use super::writer::WalFile;
use super::{FORMAT_VERSION, WalError};
use crate::model::config::{Quotas, SimConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// The name of the manifest file.
pub const MANIFEST: &str = "manifest.json";
pub(super) const LOCK: &str = "LOCK";

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
    ///
    /// # Errors
    /// [`WalError::NoDirectory`] when `dir` does not exist; [`WalError::NotAWal`] when it
    /// has no manifest; [`WalError::Io`] when the manifest cannot be read;
    /// [`WalError::Manifest`] when it does not parse; [`WalError::UnsupportedVersion`]
    /// when its format version is not [`FORMAT_VERSION`].
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
pub(super) fn not_leftovers(segments: &[WalFile], snapshots: &[WalFile]) -> Option<String> {
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
            .and_then(|b| {
                format::decode_snapshot_file(&b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
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
    ///
    /// # Errors
    /// [`WalError::Locked`] when the lock is held elsewhere (shared or exclusive);
    /// [`WalError::Io`] when `LOCK` cannot be created, opened or locked.
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

    /// A shared lock for readers. Creates nothing: without a `LOCK` file nobody is
    /// writing.
    ///
    /// # Errors
    /// Refused while a writer holds the lock ([`WalError::Locked`]); [`WalError::Io`]
    /// when `LOCK` exists but cannot be opened or locked.
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
