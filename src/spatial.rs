//! The spatial index: a k-d tree over 8D points, and Verlet neighbour lists built
//! from it.
//!
//! Why not a cell grid: in 8D a cell of side `R` has 3⁸ = 6561 neighbour cells, and at
//! ~30 neighbours per token the box is only 3–4.5 cutoffs wide, so cells hold about
//! one token each and the grid spends its time on empty cells. A k-d tree adapts to
//! the data and prunes by the exact distance to each node's bounding box.
//!
//! Why Verlet lists: even a good tree visits many more candidates than the ~30 true
//! neighbours in 8D. So the tree runs rarely: it builds, for each token, the list of
//! tokens closer than `max(R_i, R_j) + skin`. While no token has moved more than
//! `skin / 2` since the build (tracked as a bound on the displacement, see
//! [`NeighborList::needs_rebuild`]), every pair closer than its cutoff is in the
//! lists, and a tick only scans the lists. Lists are sorted by neighbour id, which
//! fixes the summation order of every force.

use crate::components::TokenId;
use crate::math::Vec8;
use rayon::prelude::*;

/// Leaf size of the k-d tree.
pub const LEAF_SIZE: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Node {
    lo: Vec8,
    hi: Vec8,
    start: u32,
    end: u32,
    /// Index of the left child; the right child is `left + 1`. 0 for leaves.
    left: u32,
}

/// A k-d tree over a slice of points (median splits on the widest axis, tight
/// bounding boxes). It stores a permutation, not copies of the points.
#[derive(Clone, Debug, Default)]
pub struct KdTree {
    nodes: Vec<Node>,
    perm: Vec<u32>,
}

impl KdTree {
    /// Builds a tree over `points`.
    pub fn build(points: &[Vec8]) -> Self {
        let n = points.len();
        let mut perm: Vec<u32> = (0..n as u32).collect();
        let mut nodes = Vec::with_capacity(2 * n / LEAF_SIZE + 1);
        if n == 0 {
            return Self { nodes, perm };
        }
        let placeholder =
            Node { lo: Vec8::ZERO, hi: Vec8::ZERO, start: 0, end: 0, left: 0 };
        nodes.push(placeholder);
        let mut stack = vec![(0usize, 0usize, n)];
        while let Some((ni, s, e)) = stack.pop() {
            let slice = &mut perm[s..e];
            let mut lo = points[slice[0] as usize];
            let mut hi = lo;
            for &k in slice.iter() {
                let p = points[k as usize];
                lo = lo.min(p);
                hi = hi.max(p);
            }
            let extent = hi - lo;
            let mut dim = 0;
            for k in 1..8 {
                if extent[k] > extent[dim] {
                    dim = k;
                }
            }
            let node = Node { lo, hi, start: s as u32, end: e as u32, left: 0 };
            if e - s <= LEAF_SIZE || extent[dim] <= 0.0 || !extent[dim].is_finite() {
                nodes[ni] = node;
                continue;
            }
            let mid = (e - s) / 2;
            slice.select_nth_unstable_by(mid, |&a, &b| {
                points[a as usize][dim].total_cmp(&points[b as usize][dim])
            });
            let left = nodes.len();
            nodes.push(placeholder);
            nodes.push(placeholder);
            nodes[ni] = Node { left: left as u32, ..node };
            stack.push((left, s, s + mid));
            stack.push((left + 1, s + mid, e));
        }
        Self { nodes, perm }
    }

    /// Calls `f(j, |x_j − q|²)` for every point `j` with `|x_j − q|² <= r2`.
    #[inline]
    pub fn for_each_within(&self, points: &[Vec8], q: Vec8, r2: f32, mut f: impl FnMut(u32, f32)) {
        if self.nodes.is_empty() {
            return;
        }
        let mut stack = [0u32; 96];
        let mut top = 1;
        while top > 0 {
            top -= 1;
            let node = &self.nodes[stack[top] as usize];
            let gap = (node.lo - q).max(q - node.hi).max(Vec8::ZERO);
            if gap.length_squared() > r2 {
                continue;
            }
            if node.left == 0 {
                for &j in &self.perm[node.start as usize..node.end as usize] {
                    let d2 = (points[j as usize] - q).length_squared();
                    if d2 <= r2 {
                        f(j, d2);
                    }
                }
            } else {
                stack[top] = node.left;
                stack[top + 1] = node.left + 1;
                top += 2;
            }
        }
    }

    /// Number of nodes (for memory accounting).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Verlet neighbour lists in compressed-row form.
#[derive(Clone, Debug, Default)]
pub struct NeighborList {
    offsets: Vec<u32>,
    neighbors: Vec<u32>,
    /// Upper bound on how far any token moved since the build.
    displacement_bound: f32,
    skin: f32,
}

/// Tokens per parallel work item.
pub const CHUNK: usize = 512;

impl NeighborList {
    /// Builds the lists: for each token `i`, every `j ≠ i` with
    /// `|x_j − x_i| < max(R_i, R_j) + skin`, sorted by `ids[j]`.
    ///
    /// Runs on the current rayon pool; the result does not depend on its size.
    pub fn build(points: &[Vec8], radii: &[f32], ids: &[TokenId], skin: f32) -> Self {
        let n = points.len();
        let tree = KdTree::build(points);
        let rmax = radii.iter().copied().fold(0.0f32, f32::max);
        // A hair above (rmax + skin)² so that rounding never drops a pair at the edge.
        let q = rmax + skin;
        let q2 = q * q * (1.0 + 1e-5);
        let chunks: Vec<(Vec<u32>, Vec<u32>)> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let range = c * CHUNK..((c + 1) * CHUNK).min(n);
                let mut counts = Vec::with_capacity(range.len());
                let mut list = Vec::with_capacity(range.len() * 48);
                let mut row: Vec<(TokenId, u32)> = Vec::with_capacity(128);
                for i in range {
                    row.clear();
                    let (xi, ri) = (points[i], radii[i]);
                    tree.for_each_within(points, xi, q2, |j, d2| {
                        let c = ri.max(radii[j as usize]) + skin;
                        if j as usize != i && d2 <= c * c * (1.0 + 1e-5) {
                            row.push((ids[j as usize], j));
                        }
                    });
                    row.sort_unstable_by_key(|(id, _)| *id);
                    counts.push(row.len() as u32);
                    list.extend(row.iter().map(|(_, j)| *j));
                }
                (counts, list)
            })
            .collect();
        let total: usize = chunks.iter().map(|(_, l)| l.len()).sum();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut neighbors = Vec::with_capacity(total);
        offsets.push(0u32);
        for (counts, list) in chunks {
            for c in counts {
                let last = *offsets.last().expect("offsets starts non-empty");
                offsets.push(last + c);
            }
            neighbors.extend_from_slice(&list);
        }
        Self { offsets, neighbors, displacement_bound: 0.0, skin }
    }

    /// The candidate neighbours of token `i`, ascending by id.
    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        &self.neighbors[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Number of tokens covered.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether the list covers no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total candidates stored (sum of row lengths).
    pub fn candidates(&self) -> usize {
        self.neighbors.len()
    }

    /// Records that no token moved farther than `step` in the last tick.
    pub fn note_displacement(&mut self, step: f32) {
        self.displacement_bound += step;
    }

    /// True when some token may have moved more than `skin / 2` since the build,
    /// so a pair could be missing from the lists.
    pub fn needs_rebuild(&self) -> bool {
        !(2.0 * self.displacement_bound <= self.skin)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        (self.offsets.capacity() + self.neighbors.capacity()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn random_points(n: usize, side: f32, seed: u64) -> Vec<Vec8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| Vec8::from_array(std::array::from_fn(|_| rng.random_range(0.0..side))))
            .collect()
    }

    #[test]
    fn tree_range_query_matches_brute_force() {
        let pts = random_points(3000, 3.0, 1);
        let tree = KdTree::build(&pts);
        for (qi, q) in pts.iter().enumerate().step_by(97) {
            let mut got = Vec::new();
            tree.for_each_within(&pts, *q, 1.2 * 1.2, |j, _| got.push(j));
            got.sort();
            let want: Vec<u32> = (0..pts.len() as u32)
                .filter(|&j| (pts[j as usize] - *q).length_squared() <= 1.44)
                .collect();
            assert_eq!(got, want, "query {qi}");
        }
    }

    #[test]
    fn tree_handles_duplicates_and_empty() {
        let pts = vec![Vec8::ONE; 100];
        let tree = KdTree::build(&pts);
        let mut n = 0;
        tree.for_each_within(&pts, Vec8::ONE, 0.0, |_, _| n += 1);
        assert_eq!(n, 100);
        let empty = KdTree::build(&[]);
        empty.for_each_within(&[], Vec8::ZERO, 1.0, |_, _| panic!("no points"));
    }

    #[test]
    fn lists_are_sorted_by_id_and_complete() {
        let pts = random_points(800, 2.5, 2);
        let radii: Vec<f32> = (0..pts.len()).map(|i| if i % 3 == 0 { 1.0 } else { 0.7 }).collect();
        // Ids deliberately not in index order.
        let ids: Vec<TokenId> = (0..pts.len() as u64).map(|i| TokenId((i * 7919) % 800)).collect();
        let nl = NeighborList::build(&pts, &radii, &ids, 0.1);
        for i in 0..pts.len() {
            let row = nl.row(i);
            assert!(row.windows(2).all(|w| ids[w[0] as usize] < ids[w[1] as usize]));
            for j in 0..pts.len() {
                let c = radii[i].max(radii[j]);
                if j != i && (pts[j] - pts[i]).length_squared() < c * c {
                    assert!(row.contains(&(j as u32)), "pair ({i},{j}) missing");
                }
            }
        }
    }

    #[test]
    fn rebuild_needed_after_half_the_skin() {
        let mut nl = NeighborList::build(&[Vec8::ZERO], &[1.0], &[TokenId(0)], 0.2);
        assert!(!nl.needs_rebuild());
        nl.note_displacement(0.06);
        assert!(!nl.needs_rebuild());
        nl.note_displacement(0.06);
        assert!(nl.needs_rebuild());
        nl.note_displacement(f32::NAN);
        assert!(nl.needs_rebuild());
    }
}
