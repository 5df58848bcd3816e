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

fn put_vec(h: &mut Xxh3, v: crate::math::Vec8) {
    for c in v.to_array() {
        h.update(&c.to_bits().to_le_bytes());
    }
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
    for (id, x, v, q, m, f, kind, level) in rows {
        h.update(&id.0.to_le_bytes());
        put_vec(&mut h, x.0);
        put_vec(&mut h, v.0);
        for s in [q.0, m.0, f.radius, f.strength] {
            h.update(&s.to_bits().to_le_bytes());
        }
        h.update(&[*kind as u8, level.0]);
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
