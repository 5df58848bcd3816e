//! The state digest: one 64-bit hash of everything that defines the simulation's
//! future — tick, every token's id and components (exact bits), every link, the
//! next id and the CDNA checksum — taken in id order, so it does not depend on
//! entity ids, table order or thread count. The WAL checks replays against it.

use crate::cdna::Cdna;
use crate::components::*;
use crate::plugin::ComputePool;
use crate::registry::{LinkGraph, SimClock, TokenRegistry};
use bevy_ecs::prelude::*;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// A state digest (xxh3-64), shown as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateDigest(pub u64);

impl std::fmt::Display for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for StateDigest {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(StateDigest)
    }
}

type TokenRow<'a> = (
    &'a TokenId,
    &'a Position,
    &'a Velocity,
    &'a Charge,
    &'a Mass,
    &'a Field,
    &'a TokenKind,
    &'a Level,
);

/// One token as the digest sees it: the id, the bits of every float (position,
/// velocity, charge, mass, radius, strength), kind and level, little-endian,
/// zero-padded to 96 bytes.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DigestRow {
    id: u64,
    floats: [u32; 20],
    kind: u8,
    level: u8,
    pad: [u8; 6],
}

impl DigestRow {
    #[inline]
    fn new(row: &TokenRow) -> Self {
        let (id, x, v, q, m, f, kind, level) = *row;
        let mut floats = [0u32; 20];
        let (a, b) = floats.split_at_mut(8);
        let (b, c) = b.split_at_mut(8);
        for (o, f) in a.iter_mut().zip(x.0.to_array()) {
            *o = f.to_bits().to_le();
        }
        for (o, f) in b.iter_mut().zip(v.0.to_array()) {
            *o = f.to_bits().to_le();
        }
        for (o, f) in c.iter_mut().zip([q.0, m.0, f.radius, f.strength]) {
            *o = f.to_bits().to_le();
        }
        Self {
            id: id.0.to_le(),
            floats,
            kind: *kind as u8,
            level: level.0,
            pad: [0; 6],
        }
    }
}

/// Tokens per independently hashed chunk.
const CHUNK: usize = 8192;

/// Computes the digest of `world`.
///
/// Each token is laid out as `TOKEN_BYTES` fixed bytes (id, the bits of every
/// float, kind, level); the tokens, in id order, are cut into chunks of
/// `CHUNK` tokens, each chunk is hashed with xxh3-64 (in parallel on the
/// [`ComputePool`] when there is one), and the final hash covers a header (tick,
/// next id, CDNA checksum, token count), the chunk hashes in order, and the links.
/// The value depends only on the state, never on the thread count or the layout.
pub fn state_digest(world: &mut World) -> StateDigest {
    let mut q = world.query::<TokenRow>();
    let mut rows: Vec<DigestRow> =
        Vec::with_capacity(world.resource::<TokenRegistry>().len() as usize);
    rows.extend(q.iter(world).map(|r| DigestRow::new(&r)));
    if !rows.is_sorted_by_key(|r| r.id) {
        rows.sort_unstable_by_key(|r| u64::from_le(r.id));
    }
    let hash = |c: &[DigestRow]| xxh3_64(bytemuck::cast_slice(c));
    let chunks: Vec<u64> = match world.get_resource::<ComputePool>() {
        Some(pool) if rows.len() > CHUNK => pool.0.install(|| {
            use rayon::prelude::*;
            rows.par_chunks(CHUNK).map(hash).collect()
        }),
        _ => rows.chunks(CHUNK).map(hash).collect(),
    };
    let mut h = Xxh3::new();
    h.update(b"neurograph-state-v2");
    h.update(&world.resource::<SimClock>().tick.to_le_bytes());
    h.update(&world.resource::<TokenRegistry>().next_id().0.to_le_bytes());
    h.update(&world.resource::<Cdna>().checksum().to_le_bytes());
    h.update(&(rows.len() as u64).to_le_bytes());
    for c in chunks {
        h.update(&c.to_le_bytes());
    }
    let graph = world.resource::<LinkGraph>();
    h.update(&graph.len().to_le_bytes());
    let mut links = Vec::with_capacity(graph.len() as usize * 29);
    for (&(a, b), l) in graph.iter() {
        links.extend_from_slice(&a.0.to_le_bytes());
        links.extend_from_slice(&b.0.to_le_bytes());
        for s in [l.weight, l.rigidity, l.rest_length] {
            links.extend_from_slice(&s.to_bits().to_le_bytes());
        }
        links.push(l.kind as u8);
    }
    h.update(&xxh3_64(&links).to_le_bytes());
    StateDigest(h.digest())
}
