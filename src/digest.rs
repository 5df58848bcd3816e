//! The state digest: one 64-bit hash of everything that defines the simulation's
//! future — tick, every token's id and components (exact bits), every link, the
//! next id, the CDNA checksum and those of its history, and the RNG state — taken
//! in id order, so it does not depend on
//! entity ids, table order or thread count. The WAL checks replays against it.

use crate::model::cdna::{Cdna, CdnaHistory};
use crate::model::components::*;
use crate::model::registry::{LinkGraph, SimRng, TokenRegistry};
use crate::schedule::ComputePool;
use crate::schedule::SimClock;
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
        Self::from_parts(id, x, v, q, m, f, kind, level)
    }

    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        id: &TokenId,
        x: &Position,
        v: &Velocity,
        q: &Charge,
        m: &Mass,
        f: &Field,
        kind: &TokenKind,
        level: &Level,
    ) -> Self {
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

fn hash_rows(rows: &[DigestRow]) -> u64 {
    puffin::profile_scope!("digest_chunk");
    xxh3_64(bytemuck::cast_slice(rows))
}

/// Runs `f` on the pool when there is one and the work is worth splitting.
fn maybe_parallel<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    n: usize,
    f: impl FnOnce(bool) -> R + Send,
) -> R {
    match pool {
        Some(pool) if n > CHUNK => pool.install(|| f(true)),
        _ => f(false),
    }
}

/// The number of tokens and the hashes of their `CHUNK`-token chunks, in id order.
fn token_chunk_hashes(world: &mut World, pool: Option<&rayon::ThreadPool>) -> (usize, Vec<u64>) {
    use rayon::prelude::*;
    let mut q = world.query::<TokenRow>();
    // Fast path: all tokens in one table, already in id order (spawned in order,
    // nothing despawned). Each chunk's rows are built in a small per-thread buffer
    // that stays in cache and hashed at once: no large allocation, no sort.
    if let Ok(mut tables) = q.contiguous_iter(world) {
        let first = tables.next();
        if tables.next().is_none() {
            let Some((ids, xs, vs, qs, ms, fs, ks, ls)) = first else {
                return (0, Vec::new());
            };
            if ids.is_sorted() {
                let n = ids.len();
                let chunk = |buf: &mut Vec<DigestRow>, c: usize| {
                    puffin::profile_scope!("digest_chunk");
                    buf.clear();
                    buf.extend((c * CHUNK..((c + 1) * CHUNK).min(n)).map(|i| {
                        DigestRow::from_parts(
                            &ids[i], &xs[i], &vs[i], &qs[i], &ms[i], &fs[i], &ks[i], &ls[i],
                        )
                    }));
                    hash_rows(buf)
                };
                let chunks = n.div_ceil(CHUNK);
                let hashes = maybe_parallel(pool, n, |parallel| {
                    if parallel {
                        (0..chunks)
                            .into_par_iter()
                            .map_init(|| Vec::with_capacity(CHUNK), chunk)
                            .collect()
                    } else {
                        let mut buf = Vec::with_capacity(CHUNK.min(n));
                        (0..chunks).map(|c| chunk(&mut buf, c)).collect()
                    }
                });
                return (n, hashes);
            }
        }
    }
    // General path (tokens in several tables, e.g. with and without `ChildOf`,
    // as at steady state): gather every row, sort the (id, index) pairs rather
    // than the 96-byte rows, and hash the chunks in id order, each built in a
    // small buffer as above.
    let rows: Vec<DigestRow> = q.iter(world).map(|r| DigestRow::new(&r)).collect();
    let mut order: Vec<(u64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| (u64::from_le(r.id), k as u32))
        .collect();
    order.sort_unstable();
    let chunk = |buf: &mut Vec<DigestRow>, part: &[(u64, u32)]| {
        buf.clear();
        buf.extend(part.iter().map(|&(_, k)| rows[k as usize]));
        hash_rows(buf)
    };
    let hashes = maybe_parallel(pool, rows.len(), |parallel| {
        if parallel {
            order
                .par_chunks(CHUNK)
                .map_init(|| Vec::with_capacity(CHUNK), chunk)
                .collect()
        } else {
            let mut buf = Vec::with_capacity(CHUNK.min(rows.len()));
            order.chunks(CHUNK).map(|c| chunk(&mut buf, c)).collect()
        }
    });
    (rows.len(), hashes)
}

/// Computes the digest of `world`.
///
/// Each token is laid out as `TOKEN_BYTES` fixed bytes (id, the bits of every
/// float, kind, level); the tokens, in id order, are cut into chunks of
/// `CHUNK` tokens, each chunk is hashed with xxh3-64 (in parallel on the
/// [`ComputePool`] when there is one), and the final hash covers a header (tick,
/// next id, CDNA checksum, token count), the chunk hashes in order, and the links.
/// The value depends only on the state, never on the thread count or the layout.
pub fn state_digest(world: &mut World) -> StateDigest {
    let pool = world.get_resource::<ComputePool>().map(|p| p.0.clone());
    let (count, chunks) = token_chunk_hashes(world, pool.as_deref());
    let mut h = Xxh3::new();
    h.update(b"neurograph-state-v3");
    h.update(&world.resource::<SimClock>().tick.to_le_bytes());
    h.update(&world.resource::<TokenRegistry>().next_id().0.to_le_bytes());
    h.update(&world.resource::<Cdna>().checksum().to_le_bytes());
    h.update(&(count as u64).to_le_bytes());
    for c in chunks {
        h.update(&c.to_le_bytes());
    }
    // What a revert would restore, and the random stream.
    if let Some(history) = world.get_resource::<CdnaHistory>() {
        h.update(&(history.previous.len() as u64).to_le_bytes());
        for c in &history.previous {
            h.update(&c.checksum().to_le_bytes());
        }
    }
    if let Some(rng) = world.get_resource::<SimRng>() {
        h.update(&rng.0.get_seed());
        h.update(&rng.0.get_stream().to_le_bytes());
        h.update(&rng.0.get_word_pos().to_le_bytes());
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
    if let Some(hier) = world.get_resource::<crate::geometry::hierarchy::Hierarchy>() {
        h.update(&hierarchy_hash(hier).to_le_bytes());
    }
    StateDigest(h.digest())
}

/// The hierarchy's share of the digest: every group, the id counter and the
/// detection tick. (`ChildOf` mirrors it; the event counters are statistics.)
fn hierarchy_hash(hier: &crate::geometry::hierarchy::Hierarchy) -> u64 {
    let mut b: Vec<u8> = Vec::new();
    b.extend_from_slice(&hier.next_group.to_le_bytes());
    b.extend_from_slice(&hier.last_organized.map_or(u64::MAX, |t| t).to_le_bytes());
    for level in &hier.levels {
        b.extend_from_slice(&(level.len() as u64).to_le_bytes());
        for g in level {
            for v in [
                g.id.0,
                g.level as u64,
                g.size,
                g.since,
                g.members.len() as u64,
            ] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            for m in &g.members {
                b.extend_from_slice(&m.to_le_bytes());
            }
            for v in g
                .centre
                .to_array()
                .into_iter()
                .chain([g.mass, g.charge, g.radius])
            {
                b.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
    xxh3_64(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::math::Vec8;
    use crate::schedule::ComputePool;

    fn bundle(i: u64) -> TokenBundle {
        let f = i as f32;
        TokenSpec::at(Vec8::from_array([
            f,
            -f,
            0.5 * f,
            1.0,
            2.0,
            3.0,
            4.0,
            f * f,
        ]))
        .with_velocity(Vec8::splat(f * 1e-3))
        .with_charge((i % 7) as f32 / 7.0)
        .bundle(TokenId(i))
    }

    #[derive(Component)]
    struct Marker;

    /// A world holding tokens `0..n` spawned in `order`, `marked` of them with an
    /// extra component (so in a second table), with or without a compute pool.
    fn world(n: u64, order: &[u64], marked: &[u64], pool: bool) -> World {
        let mut w = World::new();
        w.insert_resource(SimClock { tick: 9 });
        w.insert_resource(Cdna::default());
        w.insert_resource(LinkGraph::default());
        let mut live = Vec::new();
        for &i in order {
            let e = if marked.contains(&i) {
                w.spawn((bundle(i), Marker)).id()
            } else {
                w.spawn(bundle(i)).id()
            };
            live.push((TokenId(i), e));
        }
        live.sort();
        w.insert_resource(TokenRegistry::restore(TokenId(n), live).unwrap());
        if pool {
            w.insert_resource(ComputePool::new(2).unwrap());
        }
        w
    }

    #[test]
    fn the_fast_and_general_paths_agree_whatever_the_layout_and_threads() {
        let n = 3 * CHUNK as u64 + 123;
        let ordered: Vec<u64> = (0..n).collect();
        let mut shuffled = ordered.clone();
        shuffled.reverse();
        shuffled.swap(5, 9000);
        let want = state_digest(&mut world(n, &ordered, &[], false));
        assert_eq!(state_digest(&mut world(n, &ordered, &[], true)), want);
        assert_eq!(state_digest(&mut world(n, &shuffled, &[], true)), want);
        assert_eq!(state_digest(&mut world(n, &shuffled, &[], false)), want);
        assert_eq!(
            state_digest(&mut world(n, &ordered, &[3, 4000, n - 1], true)),
            want
        );
        // And it sees a single bit of a single token.
        let mut w = world(n, &ordered, &[], true);
        let mut q = w.query::<(&TokenId, &mut Velocity)>();
        for (id, mut v) in q.iter_mut(&mut w) {
            if id.0 == 20_000 {
                v.0[3] = f32::from_bits(v.0[3].to_bits() ^ 1);
            }
        }
        assert_ne!(state_digest(&mut w), want);
    }
}
