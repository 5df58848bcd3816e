//! The state digest: one 64-bit hash of everything that defines the simulation's
//! future — tick, every token's id and components (exact bits), every link, the
//! next id and the CDNA checksum — taken in id order, so it does not depend on
//! entity ids, table order or thread count. The WAL checks replays against it.

use crate::cdna::Cdna;
use crate::components::*;
use crate::registry::{LinkGraph, SimClock, TokenRegistry};
use bevy_ecs::prelude::*;
use xxhash_rust::xxh3::Xxh3;

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

/// Bytes of one token in the digest: id, position, velocity, 4 scalars, kind, level.
const TOKEN_BYTES: usize = 8 + 32 + 32 + 16 + 2;

fn token_bytes(row: &TokenRow) -> [u8; TOKEN_BYTES] {
    let (id, x, v, q, m, f, kind, level) = *row;
    let mut b = [0u8; TOKEN_BYTES];
    b[..8].copy_from_slice(&id.0.to_le_bytes());
    let scalars = [q.0, m.0, f.radius, f.strength];
    let floats =
        x.0.to_array()
            .into_iter()
            .chain(v.0.to_array())
            .chain(scalars);
    for (k, c) in floats.enumerate() {
        b[8 + 4 * k..12 + 4 * k].copy_from_slice(&c.to_bits().to_le_bytes());
    }
    b[TOKEN_BYTES - 2] = *kind as u8;
    b[TOKEN_BYTES - 1] = level.0;
    b
}

/// Computes the digest of `world`.
pub fn state_digest(world: &mut World) -> StateDigest {
    let mut q = world.query::<TokenRow>();
    let mut rows: Vec<TokenRow> = q.iter(world).collect();
    rows.sort_unstable_by_key(|r| *r.0);
    let mut h = Xxh3::new();
    h.update(b"neurograph-state-v1");
    h.update(&world.resource::<SimClock>().tick.to_le_bytes());
    h.update(&world.resource::<TokenRegistry>().next_id().0.to_le_bytes());
    h.update(&world.resource::<Cdna>().checksum().to_le_bytes());
    h.update(&(rows.len() as u64).to_le_bytes());
    for row in &rows {
        h.update(&token_bytes(row));
    }
    let graph = world.resource::<LinkGraph>();
    h.update(&graph.len().to_le_bytes());
    for (&(a, b), l) in graph.iter() {
        h.update(&a.0.to_le_bytes());
        h.update(&b.0.to_le_bytes());
        for s in [l.weight, l.rigidity, l.rest_length] {
            h.update(&s.to_bits().to_le_bytes());
        }
        h.update(&[l.kind as u8]);
    }
    StateDigest(h.digest())
}
