//! World bookkeeping: the id → entity table, the link graph, the clock.

use crate::model::Inconsistent;
use crate::model::components::{LinkSpec, TokenId};
use bevy_ecs::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Maps stable [`TokenId`]s to entities. Ids are handed out in increasing order and
/// never reused, so the table is a plain vector indexed by id.
#[derive(Resource, Clone, Debug, Default)]
pub struct TokenRegistry {
    slots: Vec<Option<Entity>>,
    live: u64,
}

impl TokenRegistry {
    /// Bytes on the heap: the id table, one entry per id ever handed out.
    pub fn heap_bytes(&self) -> u64 {
        (self.slots.capacity() * size_of::<Option<Entity>>()) as u64
    }

    /// The most ids a world hands out (ids are never reused). The id table is a
    /// vector of 8-byte slots, so this bounds it to 8 GiB; spawns past it are
    /// refused with a quota error, and snapshots claiming more are refused.
    pub const MAX_IDS: u64 = 1 << 30;

    /// The id the next spawned token will get.
    pub fn next_id(&self) -> TokenId {
        TokenId(self.slots.len() as u64)
    }

    /// Live tokens.
    pub fn len(&self) -> u64 {
        self.live
    }

    /// Whether no token is alive.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The entity of a live token.
    pub fn get(&self, id: TokenId) -> Option<Entity> {
        self.slots
            .get(usize::try_from(id.0).ok()?)
            .copied()
            .flatten()
    }

    /// Whether `id` is alive.
    pub fn contains(&self, id: TokenId) -> bool {
        self.get(id).is_some()
    }

    /// Records a spawned entity under the next id and returns the id.
    pub fn push(&mut self, entity: Entity) -> TokenId {
        let id = self.next_id();
        self.slots.push(Some(entity));
        self.live += 1;
        id
    }

    /// Reserves room for `n` more ids.
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve(n);
    }

    /// Forgets a despawned token; returns its entity.
    pub fn remove(&mut self, id: TokenId) -> Option<Entity> {
        let slot = self.slots.get_mut(usize::try_from(id.0).ok()?)?;
        let e = slot.take();
        if e.is_some() {
            self.live -= 1;
        }
        e
    }

    /// Rebuilds the table from live `(id, entity)` pairs (ids increasing, below
    /// `next_id`); ids in between are dead. Used when restoring a snapshot.
    ///
    /// # Errors
    /// The table cannot be allocated, or an id is not below `next_id`.
    pub fn restore(
        next_id: TokenId,
        live: impl IntoIterator<Item = (TokenId, Entity)>,
    ) -> Result<Self, Inconsistent> {
        let n = usize::try_from(next_id.0)
            .map_err(|_| Inconsistent(format!("next_id {next_id} is too large")))?;
        let mut slots = Vec::new();
        slots.try_reserve_exact(n).map_err(|e| {
            Inconsistent(format!(
                "next_id {next_id}: cannot allocate the id table: {e}"
            ))
        })?;
        slots.resize(n, None);
        let mut count = 0;
        for (id, e) in live {
            let slot = usize::try_from(id.0)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .ok_or_else(|| {
                    Inconsistent(format!("token id {id} is not below next_id {next_id}"))
                })?;
            *slot = Some(e);
            count += 1;
        }
        Ok(Self { slots, live: count })
    }

    /// Live (id, entity) pairs in id order.
    pub fn iter(&self) -> impl Iterator<Item = (TokenId, Entity)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| (TokenId(i as u64), e)))
    }
}

/// Every link, keyed by the ordered pair of its ends (smaller id first).
#[derive(Resource, Clone, Debug, Default)]
pub struct LinkGraph {
    links: BTreeMap<(TokenId, TokenId), LinkSpec>,
    adjacency: HashMap<TokenId, Vec<TokenId>>,
    version: u64,
    structure: u64,
}

/// The canonical key of an undirected link.
pub fn link_key(a: TokenId, b: TokenId) -> (TokenId, TokenId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl LinkGraph {
    /// Bytes on the heap. The adjacency lists are measured at their capacity;
    /// the two maps' own tables are estimated: the B-tree at 1.5 × its entries
    /// (nodes hold 5 to 11 of them), the hash map at its capacity plus one
    /// control byte per bucket.
    pub fn heap_bytes(&self) -> u64 {
        let entry = size_of::<(TokenId, TokenId)>() + size_of::<LinkSpec>();
        let tree = self.links.len() * entry * 3 / 2;
        let buckets =
            self.adjacency.capacity() * (size_of::<TokenId>() + size_of::<Vec<TokenId>>() + 1);
        let lists: usize =
            self.adjacency.values().map(Vec::capacity).sum::<usize>() * size_of::<TokenId>();
        (tree + buckets + lists) as u64
    }

    /// Number of links.
    pub fn len(&self) -> u64 {
        self.links.len() as u64
    }

    /// Whether there are no links.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Bumped on every change; lets systems cache derived tables.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Bumped when a link is added or removed (not when one changes); with
    /// [`version`](Self::version) it tells a cache whether only values changed.
    pub fn structure_version(&self) -> u64 {
        self.structure
    }

    /// The link between `a` and `b`.
    pub fn get(&self, a: TokenId, b: TokenId) -> Option<&LinkSpec> {
        self.links.get(&link_key(a, b))
    }

    /// Mutable access to a link (bumps the version).
    pub fn get_mut(&mut self, a: TokenId, b: TokenId) -> Option<&mut LinkSpec> {
        self.version += 1;
        self.links.get_mut(&link_key(a, b))
    }

    /// Number of links of `id`.
    pub fn degree(&self, id: TokenId) -> usize {
        self.adjacency.get(&id).map_or(0, Vec::len)
    }

    /// The largest degree of any token (0 without links).
    pub fn max_degree(&self) -> usize {
        self.adjacency.values().map(Vec::len).max().unwrap_or(0)
    }

    /// The tokens linked to `id`, in no particular order.
    pub fn neighbors(&self, id: TokenId) -> &[TokenId] {
        self.adjacency.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Inserts or replaces the link between `a` and `b`.
    pub fn insert(&mut self, a: TokenId, b: TokenId, spec: LinkSpec) {
        if self.links.insert(link_key(a, b), spec).is_none() {
            self.adjacency.entry(a).or_default().push(b);
            self.adjacency.entry(b).or_default().push(a);
            self.structure += 1;
        }
        self.version += 1;
    }

    /// Removes the link between `a` and `b`.
    pub fn remove(&mut self, a: TokenId, b: TokenId) -> Option<LinkSpec> {
        let spec = self.links.remove(&link_key(a, b))?;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(list) = self.adjacency.get_mut(&x) {
                list.retain(|&t| t != y);
                if list.is_empty() {
                    self.adjacency.remove(&x);
                }
            }
        }
        self.version += 1;
        self.structure += 1;
        Some(spec)
    }

    /// Removes every link of `id`; returns how many.
    pub fn remove_token(&mut self, id: TokenId) -> usize {
        let others = self.adjacency.get(&id).cloned().unwrap_or_default();
        for &o in &others {
            self.remove(id, o);
        }
        others.len()
    }

    /// Every link in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&(TokenId, TokenId), &LinkSpec)> + Clone {
        self.links.iter()
    }

    /// Every link in key order, mutable (bumps the version).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&(TokenId, TokenId), &mut LinkSpec)> {
        self.version += 1;
        self.links.iter_mut()
    }
}

/// The world's random number generator (ChaCha8; seeded with 0 by default, and
/// with the run seed by `neurograph run`). Its whole state is in snapshots and in
/// the state digest, so anything that draws from it replays exactly. No stage of
/// the tick draws from it yet.
#[derive(Resource, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimRng(pub rand_chacha::ChaCha8Rng);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }
}

impl Default for SimRng {
    fn default() -> Self {
        Self::seeded(0)
    }
}

/// Set by anything that moves tokens or changes radii outside the integrator, so
/// the force stage rebuilds its neighbour lists.
#[derive(Resource, Clone, Copy, Debug, Default)]
pub struct SpatialDirty(pub bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_graph_keeps_adjacency_in_step() {
        let mut g = LinkGraph::default();
        let (a, b, c) = (TokenId(1), TokenId(2), TokenId(3));
        g.insert(b, a, LinkSpec::new(1.0, 0.5));
        g.insert(a, c, LinkSpec::new(2.0, 0.5));
        assert_eq!(g.len(), 2);
        assert_eq!(g.degree(a), 2);
        assert!(g.get(a, b).is_some() && g.get(b, a).is_some());
        assert_eq!(g.remove_token(a), 2);
        assert!(g.is_empty());
        assert_eq!(g.degree(b), 0);
    }

    #[test]
    fn registry_ids_are_never_reused() {
        let mut w = World::new();
        let mut r = TokenRegistry::default();
        let e1 = w.spawn_empty().id();
        let e2 = w.spawn_empty().id();
        let a = r.push(e1);
        let b = r.push(e2);
        assert_eq!((a, b), (TokenId(0), TokenId(1)));
        assert_eq!(r.remove(a), Some(e1));
        assert_eq!(r.remove(a), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.next_id(), TokenId(2));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(b, e2)]);
    }
}
