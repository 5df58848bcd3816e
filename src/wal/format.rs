//! The on-disk format of the write-ahead log, version 3.
//!
//! Replay re-simulates each tick and checks its digest, so a log can only be
//! replayed under the physics that wrote it. Older versions are refused as
//! `UnsupportedVersion`, naming the version found:
//!
//! | version | what changed |
//! |---------|--------------|
//! | 1 | the first format |
//! | 2 | snapshots carry the emergent hierarchy and the learning counters; ticks run the `Learn` and `Organize` stages |
//! | 3 | the stable force law (many-body DPD, [`crate::physics`]): ticks compute a density pass, the CDNA carries `physics.k_density` and `physics.target_neighbors`, links form only in settled fields, the group pull fades at the target density, the level-1 linking length follows the density |
//!
//! The bytes of the framing below are the same in all three; what differs is
//! what a tick computes and what a snapshot's CDNA holds.
//!
//! All integers are little-endian. CRC32 is the IEEE polynomial (`crc32fast`).
//!
//! # Directory
//!
//! ```text
//! DIR/manifest.json                the run the WAL belongs to (JSON, written once, atomically)
//! DIR/LOCK                         held (flock) by the one process writing the WAL
//! DIR/wal-{first_tick:020}.seg     segments of tick records, named by their first tick
//! DIR/snap-{tick:020}.snap         snapshots of the whole world after a tick
//! DIR/*.tmp                        unfinished snapshots (ignored, removed on resume)
//! ```
//!
//! # Segment
//!
//! A 32-byte header, then records back to back:
//!
//! | bytes | field |
//! |-------|-------|
//! | 8 | magic `NGWALSEG` |
//! | 4 | format version (`3`) |
//! | 4 | reserved, `0` |
//! | 8 | first tick: the tick of the segment's first record |
//! | 4 | reserved, `0` |
//! | 4 | CRC32 of the 28 bytes above |
//!
//! # Record
//!
//! A 21-byte frame header, then the payload:
//!
//! | bytes | field |
//! |-------|-------|
//! | 4 | magic `NGRC` (lets a reader tell a torn tail from damage in the middle) |
//! | 4 | payload length `len` (at most [`MAX_PAYLOAD`]) |
//! | 4 | CRC32 over `len`, `kind`, `tick` and the payload, in that order |
//! | 1 | kind ([`RecordKind`]) |
//! | 8 | tick |
//! | len | payload: rmp-serde (positional) of [`TickRecord`] for kind 1 (`[commands, digest]`, or `[commands, digest, true]` for a tick the GPU computed) |
//!
//! A record of kind [`RecordKind::Tick`] is written for every tick, with the
//! commands applied at or before the start of that tick (in order) and the state
//! digest after it. Record ticks are consecutive across segments.
//!
//! # Damage
//!
//! A reader stops at the first record that does not decode (bad magic, length past
//! the end of the file, CRC mismatch). It then searches the rest of the segment for
//! a record that does decode. If one exists the damage is in the middle and is an
//! error ([`super::WalError::CorruptRecord`]); if none exists and this is the last
//! segment, the damage is a torn or corrupt tail: it is cut and its size reported.
//! A segment that is not the last is sealed (fsynced before the next one is
//! created), so any damage in it is an error.
//!
//! # Snapshot
//!
//! A 40-byte header, then the payload (rmp-serde of [`super::WorldSnapshot`]):
//!
//! | bytes | field |
//! |-------|-------|
//! | 8 | magic `NGSNAPSH` |
//! | 4 | format version (`3`) |
//! | 4 | reserved, `0` |
//! | 8 | tick |
//! | 8 | payload length |
//! | 4 | CRC32 of the payload |
//! | 4 | CRC32 of the 36 bytes above |
//!
//! Snapshots are written to `*.tmp`, fsynced, renamed and the directory fsynced.

use crate::model::commands::SimCommand;
use serde::{Deserialize, Serialize};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;

/// Why a log of format `version` cannot be replayed by this build, as a clause
/// to append to the refusal (empty for versions this build knows nothing of).
pub fn why_unsupported(version: u32) -> &'static str {
    match version {
        1 => " (version 1 ticks ran neither Learn nor Organize, and the first force law)",
        2 => {
            " (version 2 ticks ran the first force law, whose fields collapse; replay cannot reproduce them)"
        }
        _ => "",
    }
}
/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"NGWALSEG";
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"NGRC";
/// Bytes of a record frame header.
pub const RECORD_HEADER_LEN: usize = 21;
/// The largest payload a record may carry (1 GiB).
pub const MAX_PAYLOAD: u32 = 1 << 30;
/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"NGSNAPSH";
/// Bytes of a snapshot header.
pub const SNAPSHOT_HEADER_LEN: usize = 40;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One tick: its commands and the digest after it ([`TickRecord`]).
    Tick = 1,
}

impl RecordKind {
    /// The kind with this code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Tick),
            _ => None,
        }
    }
}

/// The payload of a [`RecordKind::Tick`] record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TickRecord {
    /// Commands applied for this tick, in order.
    pub commands: Vec<SimCommand>,
    /// State digest after the tick.
    pub digest: u64,
    /// The GPU computed this tick's forces (replay must use it too). Absent,
    /// and so `false`, in CPU ticks: their records are as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpu: bool,
    /// The tick ran on the GPU end to end (the resident tick: forces,
    /// integration and the token constraints on the device), not only its
    /// forces; set only with `gpu`. Absent, and so `false`, in other ticks:
    /// their records are as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resident: bool,
}

/// Encodes a segment header.
pub fn encode_segment_header(first_tick: u64) -> [u8; SEGMENT_HEADER_LEN] {
    encode_segment_header_version(first_tick, FORMAT_VERSION)
}

/// Encodes a segment header claiming another format version (to test readers).
pub fn encode_segment_header_version(first_tick: u64, version: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&first_tick.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short(usize),
    /// Not a segment (magic differs).
    Magic,
    /// The header CRC does not match.
    Crc,
    /// A format version this build cannot read.
    Version(u32),
}

impl HeaderError {
    /// Whether the header may be a torn write (short, zeroed, failing its CRC)
    /// rather than another format's: with no record after it, a segment whose
    /// creation never reached the disk.
    pub fn may_be_torn(&self) -> bool {
        matches!(self, Self::Short(_) | Self::Crc | Self::Magic)
    }
}

/// Decodes a segment header; returns the first tick.
///
/// # Errors
/// [`HeaderError::Short`] when `bytes` is shorter than a header; [`HeaderError::Magic`]
/// when the magic differs; [`HeaderError::Crc`] when the header CRC does not match;
/// [`HeaderError::Version`] when the format version is not [`FORMAT_VERSION`].
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short(bytes.len()));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    if crc32fast::hash(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(HeaderError::Crc);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(u64_at(bytes, 16))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn record_crc(len: u32, kind: u8, tick: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&[kind]);
    h.update(&tick.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one framed record to `out`. The caller keeps `payload` under
/// [`MAX_PAYLOAD`].
pub fn encode_record(out: &mut Vec<u8>, kind: RecordKind, tick: u64, payload: &[u8]) {
    encode_record_raw(out, kind as u8, tick, payload);
}

/// [`encode_record`] with any kind code (to test readers against unknown kinds).
pub fn encode_record_raw(out: &mut Vec<u8>, kind: u8, tick: u64, payload: &[u8]) {
    let start = begin_record(out);
    out.extend_from_slice(payload);
    finish_record(out, start, kind, tick).expect("payload within MAX_PAYLOAD");
}

/// Starts a record at the end of `out`: reserves its frame header, after which
/// the caller appends the payload in place and calls [`finish_record`]. Returns
/// where the record starts.
pub fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    start
}

/// Fills in the frame header of the record begun at `start`, whose payload is
/// everything after its header. Returns the payload length.
///
/// # Errors
/// The payload's length, when it is over [`MAX_PAYLOAD`] (the bytes are then left
/// unframed).
///
/// # Panics
/// If fewer than [`RECORD_HEADER_LEN`] bytes follow `start` (a `start` not returned
/// by [`begin_record`] on this buffer).
pub fn finish_record(out: &mut [u8], start: usize, kind: u8, tick: u64) -> Result<u32, usize> {
    let (header, payload) = out[start..].split_at_mut(RECORD_HEADER_LEN);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or(payload.len())?;
    header[..4].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..12].copy_from_slice(&record_crc(len, kind, tick, payload).to_le_bytes());
    header[12] = kind;
    header[13..].copy_from_slice(&tick.to_le_bytes());
    Ok(len)
}

/// One decoded record frame, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Offset of the frame in the segment file.
    pub offset: usize,
    /// Kind code (checked by the CRC, not yet against [`RecordKind`]).
    pub kind: u8,
    /// Tick.
    pub tick: u64,
    /// Payload.
    pub payload: &'a [u8],
}

impl RawRecord<'_> {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }
}

/// Why the bytes at an offset are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The file ends inside the frame header.
    ShortHeader,
    /// The magic differs.
    Magic,
    /// The length is over [`MAX_PAYLOAD`].
    Length(u32),
    /// The file ends inside the payload.
    ShortPayload {
        /// Declared payload bytes.
        len: u32,
        /// Bytes left in the file after the header.
        available: usize,
    },
    /// The CRC does not match.
    Crc,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ShortHeader => write!(f, "the file ends inside a record header"),
            Self::Magic => write!(f, "no record magic"),
            Self::Length(l) => write!(f, "record length {l} is over the limit {MAX_PAYLOAD}"),
            Self::ShortPayload { len, available } => write!(
                f,
                "record length {len} runs past the end of the file ({available} bytes left)"
            ),
            Self::Crc => write!(f, "CRC mismatch"),
        }
    }
}

/// Decodes the record frame at `offset` of `seg` (a whole segment file).
///
/// # Errors
/// [`FrameError::ShortHeader`] or [`FrameError::ShortPayload`] when the file ends
/// inside the frame; [`FrameError::Magic`] when the magic differs;
/// [`FrameError::Length`] when the length is over [`MAX_PAYLOAD`];
/// [`FrameError::Crc`] when the CRC does not match.
pub fn decode_record(seg: &[u8], offset: usize) -> Result<RawRecord<'_>, FrameError> {
    let rest = seg.get(offset..).unwrap_or(&[]);
    if rest.len() < RECORD_HEADER_LEN {
        return Err(FrameError::ShortHeader);
    }
    if rest[..4] != RECORD_MAGIC {
        return Err(FrameError::Magic);
    }
    let len = u32_at(rest, 4);
    if len > MAX_PAYLOAD {
        return Err(FrameError::Length(len));
    }
    let available = rest.len() - RECORD_HEADER_LEN;
    if len as usize > available {
        return Err(FrameError::ShortPayload { len, available });
    }
    let crc = u32_at(rest, 8);
    let kind = rest[12];
    let tick = u64_at(rest, 13);
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    if record_crc(len, kind, tick, payload) != crc {
        return Err(FrameError::Crc);
    }
    Ok(RawRecord {
        offset,
        kind,
        tick,
        payload,
    })
}

/// Where and why a segment's records stop before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad byte (the start of the bad frame).
    pub offset: usize,
    /// Why the frame there is bad.
    pub reason: FrameError,
    /// Offset of a later frame that decodes, if any: then the damage is in the
    /// middle, not at the tail.
    pub next_valid: Option<usize>,
}

/// The records of one segment's bytes (after its header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRecords<'a> {
    /// The records that decode, up to the first damage.
    pub records: Vec<RawRecord<'a>>,
    /// Bytes up to the end of the last good record.
    pub valid_len: usize,
    /// The first damage, if the records stop before the end of the file.
    pub damage: Option<Damage>,
}

/// Reads every record of a segment file (`seg` includes the header, which the
/// caller has checked). Never panics, whatever the bytes.
pub fn scan_records(seg: &[u8]) -> SegmentRecords<'_> {
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_LEN.min(seg.len());
    while at < seg.len() {
        match decode_record(seg, at) {
            Ok(r) => {
                at += r.frame_len();
                records.push(r);
            }
            Err(reason) => {
                let next_valid = find_valid_record(seg, at + 1);
                return SegmentRecords {
                    records,
                    valid_len: at,
                    damage: Some(Damage {
                        offset: at,
                        reason,
                        next_valid,
                    }),
                };
            }
        }
    }
    SegmentRecords {
        records,
        valid_len: at,
        damage: None,
    }
}

/// A record that does not follow on from the one before it in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderIssue {
    /// A byte-for-byte copy of the record before it (same kind, tick and
    /// payload), as an append written twice leaves: harmless, skipped.
    Duplicate {
        /// Its tick.
        tick: u64,
        /// Offset of the copy.
        offset: usize,
        /// Offset of the record it copies.
        of: usize,
    },
    /// A second, different record of the tick before it: which one is right
    /// cannot be known.
    Conflict {
        /// The tick.
        tick: u64,
        /// Offset of the second record.
        offset: usize,
        /// Offset of the first.
        first: usize,
    },
    /// A record whose tick is below the one before it.
    Backwards {
        /// Its tick.
        tick: u64,
        /// Its offset.
        offset: usize,
        /// The tick before it.
        after: u64,
    },
}

impl OrderIssue {
    /// Offset of the record at fault.
    pub fn offset(&self) -> usize {
        match *self {
            Self::Duplicate { offset, .. }
            | Self::Conflict { offset, .. }
            | Self::Backwards { offset, .. } => offset,
        }
    }
}

impl std::fmt::Display for OrderIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Duplicate { tick, offset, of } => write!(
                f,
                "a duplicate of tick {tick} at byte {offset} (the same bytes as the record at byte {of})"
            ),
            Self::Conflict {
                tick,
                offset,
                first,
            } => write!(
                f,
                "two different records of tick {tick}, at bytes {first} and {offset}"
            ),
            Self::Backwards {
                tick,
                offset,
                after,
            } => write!(f, "tick {tick} at byte {offset} comes after tick {after}"),
        }
    }
}

/// The records of `records` (one segment's, in file order) that do not follow
/// on from the record before them. A run of copies is one issue per copy, each
/// pointing at the original.
pub fn order_issues(records: &[RawRecord<'_>]) -> Vec<OrderIssue> {
    let mut issues = Vec::new();
    let mut prev: Option<&RawRecord<'_>> = None;
    for r in records {
        if let Some(p) = prev {
            if r.tick == p.tick && r.kind == p.kind && r.payload == p.payload {
                issues.push(OrderIssue::Duplicate {
                    tick: r.tick,
                    offset: r.offset,
                    of: p.offset,
                });
                continue;
            }
            if r.tick == p.tick {
                issues.push(OrderIssue::Conflict {
                    tick: r.tick,
                    offset: r.offset,
                    first: p.offset,
                });
            } else if r.tick < p.tick {
                issues.push(OrderIssue::Backwards {
                    tick: r.tick,
                    offset: r.offset,
                    after: p.tick,
                });
            }
        }
        prev = Some(r);
    }
    issues
}

/// Whether any record after the segment header decodes.
pub fn has_valid_record(seg: &[u8]) -> bool {
    find_valid_record(seg, SEGMENT_HEADER_LEN.min(seg.len())).is_some()
}

/// The offset of the first frame at or after `from` that decodes.
fn find_valid_record(seg: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + RECORD_HEADER_LEN <= seg.len() {
        let pos = seg[at..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        let candidate = at + pos;
        if decode_record(seg, candidate).is_ok() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// Encodes a snapshot file: header + payload.
pub fn encode_snapshot_file(tick: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = snapshot_header(tick, payload.len() as u64, crc32fast::hash(payload)).to_vec();
    out.extend_from_slice(payload);
    out
}

/// The header of a snapshot file whose payload has `len` bytes and CRC `crc`.
pub fn snapshot_header(tick: u64, len: u64, crc: u32) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&tick.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&h[..36]);
    h[36..40].copy_from_slice(&header_crc.to_le_bytes());
    h
}

/// Why a snapshot file's framing is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    /// Shorter than the header.
    #[error("{0} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header")]
    Short(usize),
    /// The magic bytes are not a snapshot's.
    #[error("not a snapshot (bad magic)")]
    Magic,
    /// The header's CRC does not match.
    #[error("header CRC mismatch")]
    HeaderCrc,
    /// Another format version.
    #[error("format version {0}; this build reads version {FORMAT_VERSION}")]
    Version(u32),
    /// The payload's length is not the header's.
    #[error("payload is {found} bytes, the header says {header}")]
    Length {
        /// Bytes after the header.
        found: u64,
        /// Bytes the header announces.
        header: u64,
    },
    /// The payload's CRC does not match.
    #[error("payload CRC mismatch")]
    PayloadCrc,
}

/// Checks a snapshot file's header and CRCs; returns the tick and the payload.
///
/// # Errors
/// The file is short, not a snapshot, of another format version, or fails a
/// CRC or the length check.
pub fn decode_snapshot_file(bytes: &[u8]) -> Result<(u64, &[u8]), SnapshotFileError> {
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(SnapshotFileError::Short(bytes.len()));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotFileError::Magic);
    }
    if crc32fast::hash(&bytes[..36]) != u32_at(bytes, 36) {
        return Err(SnapshotFileError::HeaderCrc);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(SnapshotFileError::Version(version));
    }
    let tick = u64_at(bytes, 16);
    let len = u64_at(bytes, 24);
    let payload = &bytes[SNAPSHOT_HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(SnapshotFileError::Length {
            found: payload.len() as u64,
            header: len,
        });
    }
    if crc32fast::hash(payload) != u32_at(bytes, 32) {
        return Err(SnapshotFileError::PayloadCrc);
    }
    Ok((tick, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut seg = encode_segment_header(records.first().map_or(1, |r| r.0)).to_vec();
        for (tick, p) in records {
            encode_record(&mut seg, RecordKind::Tick, *tick, p);
        }
        seg
    }

    #[test]
    fn records_round_trip() {
        let seg = segment(&[(5, b"abc"), (6, b""), (7, &[0u8; 300])]);
        assert_eq!(decode_segment_header(&seg), Ok(5));
        let s = scan_records(&seg);
        assert_eq!(s.damage, None);
        assert_eq!(s.valid_len, seg.len());
        let ticks: Vec<u64> = s.records.iter().map(|r| r.tick).collect();
        assert_eq!(ticks, vec![5, 6, 7]);
        assert_eq!(s.records[0].payload, b"abc");
        assert_eq!(s.records[2].payload.len(), 300);
    }

    #[test]
    fn a_torn_tail_has_no_valid_record_after_it() {
        let seg = segment(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        let cut = seg.len() - 2;
        let s = scan_records(&seg[..cut]);
        assert_eq!(s.records.len(), 2);
        let d = s.damage.unwrap();
        assert_eq!(d.next_valid, None);
        assert_eq!(d.offset, s.valid_len);
        assert!(matches!(d.reason, FrameError::ShortPayload { .. }));
    }

    #[test]
    fn damage_in_the_middle_finds_the_next_record() {
        let mut seg = segment(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        let second = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 3;
        seg[second + RECORD_HEADER_LEN] ^= 0x10; // a payload bit of record 2
        let s = scan_records(&seg);
        assert_eq!(s.records.len(), 1);
        let d = s.damage.unwrap();
        assert_eq!(d.reason, FrameError::Crc);
        assert_eq!(d.offset, second);
        assert_eq!(d.next_valid, Some(second + RECORD_HEADER_LEN + 3));
    }

    #[test]
    fn headers_are_checked() {
        let mut h = encode_segment_header(9).to_vec();
        assert_eq!(decode_segment_header(&h[..10]), Err(HeaderError::Short(10)));
        h[17] ^= 1;
        assert_eq!(decode_segment_header(&h), Err(HeaderError::Crc));
        let next = encode_segment_header_version(9, FORMAT_VERSION + 1);
        assert_eq!(
            decode_segment_header(&next),
            Err(HeaderError::Version(FORMAT_VERSION + 1))
        );
        let old = encode_segment_header_version(9, FORMAT_VERSION - 1);
        assert_eq!(
            decode_segment_header(&old),
            Err(HeaderError::Version(FORMAT_VERSION - 1))
        );
    }

    #[test]
    fn snapshot_files_round_trip_and_refuse_damage() {
        let f = encode_snapshot_file(40, b"payload bytes");
        assert_eq!(decode_snapshot_file(&f), Ok((40, &b"payload bytes"[..])));
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x04;
            assert!(decode_snapshot_file(&g).is_err(), "flip at byte {i}");
        }
        assert!(decode_snapshot_file(&f[..f.len() - 1]).is_err());
    }
}
