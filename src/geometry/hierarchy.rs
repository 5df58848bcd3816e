//! The emergent hierarchy as data: groups found by friends-of-friends, matched to
//! the groups of the previous detection so that identities are stable, and scored
//! against planted labels with the adjusted Rand index.
//!
//! The `Organize` stage (`systems/organize.rs`) owns the ECS side: it runs
//! [`friends_of_friends`] on level-0 tokens with the linking length ℓ₁, then on the
//! centres of level-1 groups with ℓ₂ = ℓ₁ · `level_scale`, and so on, and mirrors
//! the result as group entities with `ChildOf`/`Children`.

use crate::geometry::spatial::{KdTree, NeighborList};
use crate::model::Inconsistent;
use crate::model::components::TokenId;
use crate::model::math::Vec8;
use bevy_ecs::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The stable identity of a group token (any level above 0). Group ids are handed
/// out in increasing order and never reused; they are a separate space from
/// [`TokenId`]s (printed `G12`).
#[derive(
    Component, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "G{}", self.0)
    }
}

/// One group: a level-`level` token whose children are `members` (token ids at
/// level 1, group ids of the level below above that).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Stable id.
    pub id: GroupId,
    /// Level, 1 and up.
    pub level: u8,
    /// Children's ids (`TokenId.0` at level 1, `GroupId.0` above), increasing.
    pub members: Vec<u64>,
    /// Level-0 tokens under this group.
    pub size: u64,
    /// Centre of mass of the level-0 tokens under it.
    pub centre: Vec8,
    /// Total mass.
    pub mass: f32,
    /// Mass-weighted mean charge.
    pub charge: f32,
    /// Field radius: the largest distance of a child from the centre.
    pub radius: f32,
    /// The tick this identity first appeared.
    pub since: u64,
}

/// What happened to groups across re-detections, summed over levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEvents {
    /// Groups that kept their identity (most of an earlier group's members stayed).
    pub kept: u64,
    /// New groups made of no earlier group's majority.
    pub appeared: u64,
    /// Earlier groups whose members scattered (no majority anywhere).
    pub vanished: u64,
    /// New groups most of whose members came from one earlier group that lives
    /// on elsewhere or scattered.
    pub split: u64,
    /// Earlier groups absorbed into a group that kept another's identity.
    pub merged: u64,
}

impl GroupEvents {
    /// The sum of two counts.
    pub fn add(&mut self, o: &GroupEvents) {
        self.kept += o.kept;
        self.appeared += o.appeared;
        self.vanished += o.vanished;
        self.split += o.split;
        self.merged += o.merged;
    }
}

/// The hierarchy after the last detection.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// `levels[k]` holds the groups of level `k + 1`, by increasing smallest member.
    pub levels: Vec<Vec<Group>>,
    /// The id the next new group gets.
    pub next_group: u64,
    /// The tick of the last detection.
    pub last_organized: Option<u64>,
    /// Events since the start.
    pub events: GroupEvents,
}

impl Hierarchy {
    /// Bytes on the heap: the groups and their member lists at their capacity.
    pub fn heap_bytes(&self) -> u64 {
        let groups: usize = self
            .levels
            .iter()
            .map(|l| {
                l.capacity() * size_of::<Group>()
                    + l.iter()
                        .map(|g| g.members.capacity() * size_of::<u64>())
                        .sum::<usize>()
            })
            .sum();
        (groups + self.levels.capacity() * size_of::<Vec<Group>>()) as u64
    }

    /// Groups per level, from level 1.
    pub fn groups_per_level(&self) -> Vec<u64> {
        self.levels.iter().map(|l| l.len() as u64).collect()
    }

    /// For each level-0 token id in `ids`, the label of its ancestor at `level`
    /// (`1..`): the ancestor's group id, or, where the token has none at that
    /// level, its nearest grouped ancestor below, or the token itself. Labels of
    /// ungrouped tokens are distinct from each other and from every group.
    pub fn labels_at(&self, level: usize, ids: &[TokenId]) -> Vec<u64> {
        const SINGLE: u64 = 1 << 63;
        let mut parent: HashMap<u64, u64> = HashMap::new();
        let mut of_token: HashMap<u64, u64> = HashMap::new();
        for (k, groups) in self.levels.iter().enumerate().take(level) {
            for g in groups {
                for &m in &g.members {
                    if k == 0 {
                        of_token.insert(m, g.id.0);
                    } else {
                        parent.insert(m, g.id.0);
                    }
                }
            }
        }
        ids.iter()
            .map(|id| match of_token.get(&id.0) {
                None => SINGLE | id.0,
                Some(&g) => {
                    let mut g = g;
                    while let Some(&p) = parent.get(&g) {
                        g = p;
                    }
                    g
                }
            })
            .collect()
    }
}

impl Hierarchy {
    /// The most group ids a hierarchy hands out (as for token ids).
    pub const MAX_GROUPS: u64 = 1 << 40;

    /// Checks a hierarchy read from a file: levels numbered from 1, ids unique and
    /// below `next_group` (at most [`MAX_GROUPS`](Self::MAX_GROUPS)), members
    /// non-empty, increasing and in one group per level, level-1 members below
    /// `next_id` (token ids), and every member above level 1 a group of the level
    /// below.
    ///
    /// # Errors
    /// The first rule broken, with the group and value.
    pub fn validate(&self, next_id: u64) -> Result<(), Inconsistent> {
        if self.next_group > Self::MAX_GROUPS {
            return Err(Inconsistent(format!(
                "next_group = {}: must be at most {}",
                self.next_group,
                Self::MAX_GROUPS
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut below: std::collections::HashSet<u64> = Default::default();
        for (k, level) in self.levels.iter().enumerate() {
            let mut members_seen = std::collections::HashSet::new();
            let mut here = std::collections::HashSet::new();
            for g in level {
                if g.level as usize != k + 1 {
                    return Err(Inconsistent(format!(
                        "group {} at level {} is listed at level {}",
                        g.id,
                        g.level,
                        k + 1
                    )));
                }
                if g.id.0 >= self.next_group || !seen.insert(g.id) {
                    return Err(Inconsistent(format!(
                        "group {} is repeated or not below next_group = {}",
                        g.id, self.next_group
                    )));
                }
                here.insert(g.id.0);
                if g.members.is_empty() || g.members.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Inconsistent(format!(
                        "group {}: members must be non-empty and increasing",
                        g.id
                    )));
                }
                for &m in &g.members {
                    if k == 0 && m >= next_id {
                        return Err(Inconsistent(format!(
                            "group {}: member #{m} is not below next_id = {next_id}",
                            g.id
                        )));
                    }
                    if !members_seen.insert(m) {
                        return Err(Inconsistent(format!(
                            "group {}: member {m} is in two groups of level {}",
                            g.id,
                            k + 1
                        )));
                    }
                    if k > 0 && !below.contains(&m) {
                        return Err(Inconsistent(format!(
                            "group {}: member G{m} is not a group of level {k}",
                            g.id
                        )));
                    }
                }
            }
            below = here;
        }
        Ok(())
    }
}

/// How well the hierarchy recovers planted labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Quality {
    /// ARI of level-1 groups against the fine labels (`None` without labels).
    pub ari_level1: Option<f64>,
    /// ARI of level-2 groups against the coarse labels.
    pub ari_level2: Option<f64>,
    /// Labelled tokens still alive that were scored.
    pub scored: u64,
}

/// Scores `hier` against ground truth: `labels[i]` and `groups[i]` belong to the
/// token with id `i` (tokens spawned in order into an empty world). A token in no
/// group counts as a cluster of its own; at level 2 a token whose level-1 group
/// has no parent keeps its level-1 group. Dead tokens are skipped.
pub fn quality(
    hier: &Hierarchy,
    labels: &[u32],
    groups: &[u32],
    alive: impl Fn(TokenId) -> bool,
) -> Quality {
    let ids: Vec<TokenId> = (0..labels.len() as u64)
        .map(TokenId)
        .filter(|&id| alive(id))
        .collect();
    if ids.is_empty() {
        return Quality::default();
    }
    let truth = |t: &[u32]| -> Vec<u64> { ids.iter().map(|id| t[id.0 as usize] as u64).collect() };
    let l1 = hier.labels_at(1, &ids);
    let l2 = hier.labels_at(2, &ids);
    Quality {
        ari_level1: Some(adjusted_rand_index(&l1, &truth(labels))),
        ari_level2: (groups.len() == labels.len())
            .then(|| adjusted_rand_index(&l2, &truth(groups))),
        scored: ids.len() as u64,
    }
}

impl Hierarchy {
    /// The tree as indented text: top-level groups first, each followed by its
    /// children (size, centre, charge, mass, radius, age); at most `max_children`
    /// children per group are listed. Groups of a level below with no parent
    /// are listed at the top with the rest.
    pub fn render_tree(&self, max_children: usize) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let levels = self.levels.len();
        if levels == 0 {
            return "no groups (the hierarchy is empty)\n".to_string();
        }
        let by_id: HashMap<GroupId, &Group> =
            self.levels.iter().flatten().map(|g| (g.id, g)).collect();
        let mut has_parent = std::collections::HashSet::new();
        for level in self.levels.iter().skip(1) {
            for g in level {
                has_parent.extend(g.members.iter().map(|&m| GroupId(m)));
            }
        }
        let line = |out: &mut String, g: &Group, indent: usize| {
            let c: Vec<String> = g
                .centre
                .to_array()
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect();
            let _ = writeln!(
                out,
                "{:indent$}{} level {}  {} tokens  centre ({})  charge {:.3}  mass {:.1}  radius {:.2}  since tick {}",
                "",
                g.id,
                g.level,
                g.size,
                c.join(", "),
                g.charge,
                g.mass,
                g.radius,
                g.since,
                indent = indent
            );
        };
        fn walk(
            out: &mut String,
            g: &Group,
            indent: usize,
            max_children: usize,
            by_id: &HashMap<GroupId, &Group>,
            line: &dyn Fn(&mut String, &Group, usize),
        ) {
            line(out, g, indent);
            if g.level == 1 {
                return;
            }
            for (k, &m) in g.members.iter().enumerate() {
                if k == max_children {
                    let _ = writeln!(
                        out,
                        "{:w$}… {} more",
                        "",
                        g.members.len() - k,
                        w = indent + 2
                    );
                    break;
                }
                if let Some(c) = by_id.get(&GroupId(m)) {
                    walk(out, c, indent + 2, max_children, by_id, line);
                }
            }
        }
        let counts: Vec<String> = self
            .levels
            .iter()
            .enumerate()
            .map(|(k, l)| format!("{} at level {}", l.len(), k + 1))
            .collect();
        let _ = writeln!(
            out,
            "hierarchy after tick {}: {}",
            self.last_organized.map_or("-".into(), |t| t.to_string()),
            counts.join(", ")
        );
        for level in self.levels.iter().rev() {
            for g in level.iter().filter(|g| !has_parent.contains(&g.id)) {
                walk(&mut out, g, 0, max_children, &by_id, &line);
            }
        }
        out
    }
}

/// Union-find with path halving and union by size.
#[derive(Clone, Debug)]
pub struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    /// The representative of `i`'s set.
    pub fn find(&mut self, mut i: u32) -> u32 {
        while self.parent[i as usize] != i {
            let g = self.parent[self.parent[i as usize] as usize];
            self.parent[i as usize] = g;
            i = g;
        }
        i
    }

    /// Joins the sets of `a` and `b`.
    pub fn union(&mut self, a: u32, b: u32) {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        let (big, small) = if self.size[a as usize] >= self.size[b as usize] {
            (a, b)
        } else {
            (b, a)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
    }
}

/// Where friends-of-friends finds its candidate pairs.
pub enum Candidates<'a> {
    /// Verlet lists over the same points that hold every pair within ℓ.
    Lists(&'a NeighborList),
    /// Build a k-d tree over the points and query it from every point, in
    /// parallel (for linking lengths small against the spread of the points).
    Tree,
    /// Build a k-d tree and join whole subtrees at once (sequential; for linking
    /// lengths comparable to the spread, as at the upper levels).
    MergingTree,
}

/// Friends-of-friends: the connected components of "closer than `link`". Returns
/// the components with at least `min_size` points, each as increasing point
/// indices, ordered by their first index. Deterministic whatever the thread count.
pub fn friends_of_friends(
    points: &[Vec8],
    link: f32,
    min_size: usize,
    candidates: Candidates<'_>,
) -> Vec<Vec<u32>> {
    let n = points.len();
    let l2 = link * link;
    let mut uf = match candidates {
        Candidates::MergingTree => {
            let mut uf = UnionFind::new(n);
            KdTree::build(points).link_within(points, l2, |a, b| uf.union(a, b));
            uf
        }
        Candidates::Lists(lists) => union_pairs(n, |i, join| {
            let xi = points[i];
            for &j in lists.row(i) {
                if (j as usize) > i && (points[j as usize] - xi).length_squared() < l2 {
                    join(j);
                }
            }
        }),
        Candidates::Tree => {
            let tree = KdTree::build(points);
            union_pairs(n, |i, join| {
                tree.for_each_within(points, points[i], l2, |j, d2| {
                    if j as usize > i && d2 < l2 {
                        join(j);
                    }
                });
            })
        }
    };
    let mut index: Vec<u32> = vec![u32::MAX; n];
    let mut groups: Vec<Vec<u32>> = Vec::new();
    for i in 0..n as u32 {
        let r = uf.find(i) as usize;
        if uf.size[r] < min_size as u32 {
            continue;
        }
        if index[r] == u32::MAX {
            index[r] = groups.len() as u32;
            groups.push(Vec::new());
        }
        groups[index[r] as usize].push(i);
    }
    groups
}

/// Joins the pairs `pairs_of(i, join)` reports for every point `i`, in parallel:
/// each of a few contiguous ranges of points fills its own union-find, and the
/// forests are merged, so memory is O(points · ranges) however many pairs there
/// are (a collapsed field can have thousands per point). The partition does not
/// depend on the split.
fn union_pairs(n: usize, pairs_of: impl Fn(usize, &mut dyn FnMut(u32)) + Sync) -> UnionFind {
    let parts = (2 * rayon::current_num_threads()).clamp(1, n.max(1));
    let per = n.div_ceil(parts).max(1);
    let forests: Vec<UnionFind> = (0..parts)
        .into_par_iter()
        .map(|t| {
            puffin::profile_scope!("fof_part");
            let mut uf = UnionFind::new(n);
            for i in t * per..((t + 1) * per).min(n) {
                pairs_of(i, &mut |j| uf.union(i as u32, j));
            }
            uf
        })
        .collect();
    let mut forests = forests.into_iter();
    let mut uf = forests.next().unwrap_or_else(|| UnionFind::new(n));
    for f in forests {
        for (i, &p) in f.parent.iter().enumerate() {
            if p as usize != i {
                uf.union(i as u32, p);
            }
        }
    }
    uf
}

/// Matches freshly detected groups (`fresh[g]`: increasing member ids) to the
/// previous groups of the same level. A fresh group takes the id of an earlier
/// group when it holds more than half of that group's members; when several
/// earlier groups qualify, the largest keeps its id (ties: the older id) and the
/// others count as merged. Returns the id for each fresh group (`None`: new) and
/// the events.
pub fn match_groups(previous: &[Group], fresh: &[Vec<u64>]) -> (Vec<Option<GroupId>>, GroupEvents) {
    let mut ev = GroupEvents::default();
    // The earlier group of each member: a dense table when member ids are dense
    // enough (they are token ids at level 1), a hash map otherwise.
    let count: usize = previous.iter().map(|g| g.members.len()).sum();
    let top = previous
        .iter()
        .flat_map(|g| g.members.last())
        .map(|&m| m.saturating_add(1))
        .max()
        .unwrap_or(0);
    let dense = top <= 4 * count as u64 + 1024;
    let mut table = vec![u32::MAX; if dense { top as usize } else { 0 }];
    let mut map: HashMap<u64, u32> = HashMap::new();
    for (p, g) in previous.iter().enumerate() {
        for &m in &g.members {
            if dense {
                table[m as usize] = p as u32;
            } else {
                map.insert(m, p as u32);
            }
        }
    }
    let owner = |m: u64| -> Option<usize> {
        let p = if dense {
            table.get(m as usize).copied().unwrap_or(u32::MAX)
        } else {
            map.get(&m).copied().unwrap_or(u32::MAX)
        };
        (p != u32::MAX).then_some(p as usize)
    };
    // (p, f, n): n members of previous group p are in fresh group f; by f, then p.
    let mut keys: Vec<((usize, usize), u64)> = Vec::new();
    let mut counts = vec![0u64; previous.len()];
    let mut touched: Vec<usize> = Vec::new();
    for (f, members) in fresh.iter().enumerate() {
        for &m in members {
            if let Some(p) = owner(m) {
                if counts[p] == 0 {
                    touched.push(p);
                }
                counts[p] += 1;
            }
        }
        touched.sort_unstable();
        for p in touched.drain(..) {
            keys.push(((p, f), counts[p]));
            counts[p] = 0;
        }
    }
    keys.sort_unstable();
    let mut claims: Vec<Vec<usize>> = vec![Vec::new(); fresh.len()];
    let mut best_source: Vec<Option<(u64, usize)>> = vec![None; fresh.len()];
    for ((p, f), n) in keys {
        if 2 * n > previous[p].members.len() as u64 {
            claims[f].push(p);
        }
        let better = match best_source[f] {
            None => true,
            Some((bn, bp)) => n > bn || (n == bn && previous[p].id < previous[bp].id),
        };
        if better {
            best_source[f] = Some((n, p));
        }
    }
    let mut inherited = vec![false; previous.len()];
    let mut absorbed = vec![false; previous.len()];
    let mut split_from = vec![false; previous.len()];
    let mut ids = vec![None; fresh.len()];
    for f in 0..fresh.len() {
        let c = &claims[f];
        if let Some(&keep) = c.iter().max_by(|&&a, &&b| {
            let (ga, gb) = (&previous[a], &previous[b]);
            ga.members
                .len()
                .cmp(&gb.members.len())
                .then(gb.id.cmp(&ga.id))
        }) {
            ids[f] = Some(previous[keep].id);
            inherited[keep] = true;
            ev.kept += 1;
            for &p in c {
                if p != keep {
                    absorbed[p] = true;
                    ev.merged += 1;
                }
            }
        }
    }
    for f in 0..fresh.len() {
        if ids[f].is_some() {
            continue;
        }
        match best_source[f] {
            Some((n, p)) if 2 * n >= fresh[f].len() as u64 => {
                split_from[p] = true;
                ev.split += 1;
            }
            _ => ev.appeared += 1,
        }
    }
    for p in 0..previous.len() {
        if !inherited[p] && !absorbed[p] && !split_from[p] {
            ev.vanished += 1;
        }
    }
    (ids, ev)
}

/// The adjusted Rand index of two labellings of the same items (Hubert & Arabie
/// 1985): 1 for identical partitions, about 0 for independent ones.
pub fn adjusted_rand_index(a: &[u64], b: &[u64]) -> f64 {
    assert_eq!(a.len(), b.len(), "labellings of different lengths");
    let n = a.len() as f64;
    if a.len() < 2 {
        return 1.0;
    }
    let pairs = |c: u64| (c as f64) * (c as f64 - 1.0) / 2.0;
    let mut table: HashMap<(u64, u64), u64> = HashMap::new();
    let mut rows: HashMap<u64, u64> = HashMap::new();
    let mut cols: HashMap<u64, u64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *table.entry((x, y)).or_default() += 1;
        *rows.entry(x).or_default() += 1;
        *cols.entry(y).or_default() += 1;
    }
    let index: f64 = table.values().map(|&c| pairs(c)).sum();
    let sa: f64 = rows.values().map(|&c| pairs(c)).sum();
    let sb: f64 = cols.values().map(|&c| pairs(c)).sum();
    let expected = sa * sb / (n * (n - 1.0) / 2.0);
    let max = (sa + sb) / 2.0;
    if max == expected {
        // Both partitions are all-singletons or one block: identical or trivial.
        return if sa == sb { 1.0 } else { 0.0 };
    }
    (index - expected) / (max - expected)
}

/// The two leading principal axes of `points` (unit vectors, by decreasing
/// variance) and the mean, by power iteration on the 8×8 covariance.
pub fn principal_axes(points: &[Vec8]) -> (Vec8, [Vec8; 2]) {
    let n = points.len().max(1) as f64;
    let mut mean = [0f64; 8];
    for p in points {
        for (m, v) in mean.iter_mut().zip(p.to_array()) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut cov = [[0f64; 8]; 8];
    for p in points {
        let d: Vec<f64> = p
            .to_array()
            .iter()
            .zip(&mean)
            .map(|(&v, m)| v as f64 - m)
            .collect();
        for r in 0..8 {
            for c in 0..8 {
                cov[r][c] += d[r] * d[c];
            }
        }
    }
    let mut axes = [[0f64; 8]; 2];
    for (k, axis) in axes.iter_mut().enumerate() {
        let mut v = [1.0f64, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];
        for _ in 0..500 {
            let mut w = [0f64; 8];
            for r in 0..8 {
                w[r] = (0..8).map(|c| cov[r][c] * v[c]).sum();
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-300 {
                // No variance left: any unit vector orthogonal to the first.
                w = [0.0; 8];
                w[k] = 1.0;
                v = w;
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            v = w;
        }
        *axis = v;
        // Deflate: remove this axis' variance.
        let lambda: f64 = (0..8)
            .map(|r| v[r] * (0..8).map(|c| cov[r][c] * v[c]).sum::<f64>())
            .sum();
        for r in 0..8 {
            for c in 0..8 {
                cov[r][c] -= lambda * v[r] * v[c];
            }
        }
    }
    let to = |a: [f64; 8]| Vec8::from_array(a.map(|x| x as f32));
    (to(mean), [to(axes[0]), to(axes[1])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_of_identical_permuted_and_independent_labellings() {
        let a = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let relabelled = [7, 7, 7, 3, 3, 3, 9, 9, 9];
        assert_eq!(adjusted_rand_index(&a, &relabelled), 1.0);
        // Known value: sklearn.metrics.adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714…
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((v - 4.0 / 7.0).abs() < 1e-12, "{v}");
        let singletons: Vec<u64> = (0..9).collect();
        assert!(adjusted_rand_index(&a, &singletons).abs() < 1e-12);
    }

    #[test]
    fn union_find_joins_chains() {
        let mut uf = UnionFind::new(6);
        uf.union(0, 1);
        uf.union(2, 1);
        uf.union(4, 5);
        assert_eq!(uf.find(0), uf.find(2));
        assert_ne!(uf.find(0), uf.find(4));
        assert_ne!(uf.find(3), uf.find(5));
    }

    fn group(id: u64, members: &[u64]) -> Group {
        Group {
            id: GroupId(id),
            level: 1,
            members: members.to_vec(),
            size: members.len() as u64,
            centre: Vec8::ZERO,
            mass: 0.0,
            charge: 0.0,
            radius: 0.0,
            since: 0,
        }
    }

    #[test]
    fn matching_keeps_merges_splits_and_counts() {
        let prev = [
            group(1, &[0, 1, 2, 3]),
            group(2, &[10, 11, 12]),
            group(3, &[20, 21, 22, 23, 24, 25]),
            group(4, &[30, 31, 32]),
        ];
        let fresh = vec![
            vec![0, 1, 2, 40],            // keeps G1 (3 of 4)
            vec![10, 11, 12, 30, 31, 32], // G2 and G4 merge; G2 (older, same size) keeps
            vec![20, 21, 22],             // half of G3: a split
            vec![23, 24, 25, 26],         // the other half: a split
            vec![50, 51, 52],             // new
        ];
        let (ids, ev) = match_groups(&prev, &fresh);
        assert_eq!(
            ids,
            vec![Some(GroupId(1)), Some(GroupId(2)), None, None, None]
        );
        assert_eq!(
            ev,
            GroupEvents {
                kept: 2,
                appeared: 1,
                vanished: 0,
                split: 2,
                merged: 1
            }
        );
        // Everything scattered: every earlier group vanishes.
        let (ids, ev) = match_groups(&prev, &[vec![0, 10, 20, 30, 99]]);
        assert_eq!(ids, vec![None]);
        assert_eq!((ev.appeared, ev.vanished), (1, 4));
    }

    #[test]
    fn principal_axes_find_the_long_direction() {
        let dir = Vec8::from_array([0.0, 3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]) * 0.2;
        let side = Vec8::from_array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let pts: Vec<Vec8> = (0..200)
            .map(|i| dir * ((i % 20) as f32 - 9.5) + side * (0.1 * ((i / 20) as f32 - 4.5)))
            .collect();
        let (_, [a, b]) = principal_axes(&pts);
        assert!((a.dot(dir).abs() - 1.0).abs() < 1e-4, "{a:?}");
        assert!((b.dot(side).abs() - 1.0).abs() < 1e-4, "{b:?}");
    }
}
