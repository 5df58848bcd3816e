//! Listing a WAL without replaying it.

use super::recovery::{header_error, read_segment};
use super::writer::list_dir;
use super::{Manifest, TickRecord, WalError, WorldSnapshot, format};
use serde::Serialize;
use std::path::Path;

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
    /// Records of ticks the GPU computed the forces of (resident ones included).
    pub gpu_ticks: u64,
    /// Of those, records of ticks that ran on the GPU end to end (the resident
    /// tick).
    pub resident_ticks: u64,
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
///
/// # Errors
/// Whatever [`Manifest::load`] returns for `dir` (no directory, no manifest, a bad or
/// unsupported manifest); [`WalError::Io`] when the directory, a segment or a snapshot
/// cannot be read. Damaged files are not errors: their `status` says what is wrong.
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
            gpu_ticks: 0,
            resident_ticks: 0,
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
                for r in scan
                    .records
                    .iter()
                    .filter_map(|r| rmp_serde::from_slice::<TickRecord>(r.payload).ok())
                {
                    seg.commands += r.commands.len() as u64;
                    seg.gpu_ticks += r.gpu as u64;
                    seg.resident_ticks += r.resident as u64;
                }
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
            .map_err(|e| e.to_string())
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
