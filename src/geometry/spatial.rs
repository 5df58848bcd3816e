//! The spatial index: a k-d tree over 8D points, and Verlet neighbour lists built
//! from it.
//!
//! Why not a cell grid: in 8D a cell of side `R` has 3⁸ = 6561 neighbour cells, and at
//! ~30 neighbours per token the box is only 3–4.5 cutoffs wide, so cells hold about
//! one token each and the grid spends its time on empty cells. A k-d tree adapts to
//! the data and prunes by the exact distance to each node's bounding box.
//!
//! Why Verlet lists: even a good tree tests ~1,250 boxes and ~3,400 points per
//! query in 8D to find ~60 (100K `uniform` tokens), so the tree runs rarely. [`NeighborList`] keeps, for each token, the tokens
//! closer than `max(R_i, R_j) + skin`, sorted by id (which fixes the summation order
//! of every force). [`Travel`] tracks how far each token has moved since its row was
//! computed; only the rows of tokens past half the skin are recomputed
//! ([`NeighborList::refresh`], on the tree [`KdTree::refit`] to current positions), and
//! a tick otherwise only scans the rows.

use crate::model::components::TokenId;
use crate::model::math::Vec8;
use rayon::prelude::*;

/// Leaf size of the k-d tree.
pub const LEAF_SIZE: usize = 16;
/// Ranges larger than this are split on two threads while building the tree.
const PARALLEL_BUILD: usize = 32_768;

#[derive(Clone, Copy, Debug)]
struct Node {
    lo: Vec8,
    hi: Vec8,
    start: u32,
    end: u32,
    /// Children; both 0 for a leaf.
    left: u32,
    right: u32,
}

/// A k-d tree over a slice of points (median splits on the widest axis, tight
/// bounding boxes). It stores a permutation, not copies of the points.
#[derive(Clone, Debug, Default)]
pub struct KdTree {
    nodes: Vec<Node>,
    perm: Vec<u32>,
}

impl KdTree {
    /// Bytes on the heap (nodes and permutation at their capacity).
    pub fn heap_bytes(&self) -> u64 {
        (self.nodes.capacity() * size_of::<Node>() + self.perm.capacity() * size_of::<u32>()) as u64
    }
}

fn bbox(points: &[Vec8], perm: &[u32]) -> (Vec8, Vec8) {
    let mut lo = points[perm[0] as usize];
    let mut hi = lo;
    for &k in &perm[1..] {
        let p = points[k as usize];
        lo = lo.min(p);
        hi = hi.max(p);
    }
    (lo, hi)
}

/// Splits `perm` at its median along the widest axis of `[lo, hi]`; returns the
/// split position, or `None` when the range should be a leaf.
fn split(points: &[Vec8], perm: &mut [u32], lo: Vec8, hi: Vec8) -> Option<usize> {
    let extent = hi - lo;
    let mut dim = 0;
    for k in 1..8 {
        if extent[k] > extent[dim] {
            dim = k;
        }
    }
    // NaN extents fail `> 0.0` too.
    let splittable = extent[dim] > 0.0 && extent[dim].is_finite();
    if perm.len() <= LEAF_SIZE || !splittable {
        return None;
    }
    let mid = perm.len() / 2;
    perm.select_nth_unstable_by(mid, |&a, &b| {
        points[a as usize][dim].total_cmp(&points[b as usize][dim])
    });
    Some(mid)
}

/// Builds the subtree of `perm` (whose first element sits at `offset` in the full
/// permutation); node indices are local to the returned vector, root first.
fn build_range(points: &[Vec8], perm: &mut [u32], offset: usize) -> Vec<Node> {
    let (lo, hi) = bbox(points, perm);
    let leaf = Node {
        lo,
        hi,
        start: offset as u32,
        end: (offset + perm.len()) as u32,
        left: 0,
        right: 0,
    };
    if perm.len() > PARALLEL_BUILD {
        let Some(mid) = split(points, perm, lo, hi) else {
            return vec![leaf];
        };
        let (a, b) = perm.split_at_mut(mid);
        let (left, right) = rayon::join(
            || build_range(points, a, offset),
            || build_range(points, b, offset + mid),
        );
        let mut nodes = Vec::with_capacity(1 + left.len() + right.len());
        let l0 = 1u32;
        let r0 = 1 + left.len() as u32;
        nodes.push(Node {
            left: l0,
            right: r0,
            ..leaf
        });
        for (base, part) in [(l0, left), (r0, right)] {
            nodes.extend(part.into_iter().map(|mut n| {
                if n.left != 0 {
                    n.left += base;
                    n.right += base;
                }
                n
            }));
        }
        return nodes;
    }
    // Small ranges: iterative, children appended as found.
    let mut nodes = vec![leaf];
    let mut stack = vec![(0usize, 0usize, perm.len())];
    while let Some((ni, s, e)) = stack.pop() {
        let slice = &mut perm[s..e];
        let (lo, hi) = if ni == 0 {
            (lo, hi)
        } else {
            bbox(points, slice)
        };
        let node = Node {
            lo,
            hi,
            start: (offset + s) as u32,
            end: (offset + e) as u32,
            left: 0,
            right: 0,
        };
        let Some(mid) = split(points, slice, lo, hi) else {
            nodes[ni] = node;
            continue;
        };
        let left = nodes.len();
        nodes.push(node);
        nodes.push(node);
        nodes[ni] = Node {
            left: left as u32,
            right: left as u32 + 1,
            ..node
        };
        stack.push((left, s, s + mid));
        stack.push((left + 1, s + mid, e));
    }
    nodes
}

impl KdTree {
    /// Builds a tree over `points` (on the current rayon pool; the tree does not
    /// depend on its size).
    pub fn build(points: &[Vec8]) -> Self {
        let mut perm: Vec<u32> = (0..points.len() as u32).collect();
        if points.is_empty() {
            return Self {
                nodes: Vec::new(),
                perm,
            };
        }
        let nodes = build_range(points, &mut perm, 0);
        Self { nodes, perm }
    }

    /// Calls `f(j, |x_j − q|²)` for every point `j` with `|x_j − q|² <= r2`.
    #[inline]
    pub fn for_each_within(&self, points: &[Vec8], q: Vec8, r2: f32, f: impl FnMut(u32, f32)) {
        self.walk(points, q, r2, 0, f);
    }

    /// [`for_each_within`](Self::for_each_within) restricted to the points stored
    /// after tree position `after` (see [`order`](Self::order)): whole subtrees at or
    /// before it are skipped. A full neighbour build queries each pair from one side
    /// only this way.
    #[inline]
    pub fn for_each_within_after(
        &self,
        points: &[Vec8],
        q: Vec8,
        r2: f32,
        after: usize,
        f: impl FnMut(u32, f32),
    ) {
        self.walk(points, q, r2, after + 1, f);
    }

    /// The `k` points nearest to `q` (all of them when there are fewer), as
    /// `(j, |x_j − q|²)`, nearest first, ties by index: exact, by a
    /// depth-first walk that visits the nearer child first and prunes every
    /// box farther than the `k`-th best so far (Friedman, Bentley & Finkel
    /// 1977). `q` and the points must be finite.
    pub fn nearest(&self, points: &[Vec8], q: Vec8, k: usize) -> Vec<(u32, f32)> {
        let k = k.min(self.perm.len());
        // Non-negative finite f32s order as their bits.
        let mut best: std::collections::BinaryHeap<(u32, u32)> =
            std::collections::BinaryHeap::with_capacity(k + 1);
        if k == 0 || self.nodes.is_empty() {
            return Vec::new();
        }
        let box_d2 = |n: &Node| (n.lo - q).max(q - n.hi).max(Vec8::ZERO).length_squared();
        let mut stack = vec![(0u32, 0f32)];
        while let Some((ni, bd)) = stack.pop() {
            if best.len() == k && bd.to_bits() > best.peek().map_or(u32::MAX, |b| b.0) {
                continue;
            }
            let node = &self.nodes[ni as usize];
            if node.left == 0 {
                for &j in &self.perm[node.start as usize..node.end as usize] {
                    let key = ((points[j as usize] - q).length_squared().to_bits(), j);
                    if best.len() < k {
                        best.push(key);
                    } else if best.peek().is_some_and(|top| key < *top) {
                        best.pop();
                        best.push(key);
                    }
                }
            } else {
                let (l, r) = (node.left, node.right);
                let (dl, dr) = (
                    box_d2(&self.nodes[l as usize]),
                    box_d2(&self.nodes[r as usize]),
                );
                // The nearer child is popped first.
                if dl <= dr {
                    stack.push((r, dr));
                    stack.push((l, dl));
                } else {
                    stack.push((l, dl));
                    stack.push((r, dr));
                }
            }
        }
        let mut out: Vec<(u32, f32)> = best
            .into_iter()
            .map(|(d, j)| (j, f32::from_bits(d)))
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The range query over the points at tree positions `first..`.
    #[inline]
    fn walk(&self, points: &[Vec8], q: Vec8, r2: f32, first: usize, mut f: impl FnMut(u32, f32)) {
        if self.nodes.is_empty() {
            return;
        }
        let mut stack = [0u32; 128];
        let mut top = 1;
        while top > 0 {
            top -= 1;
            let node = &self.nodes[stack[top] as usize];
            if node.end as usize <= first {
                continue;
            }
            let gap = (node.lo - q).max(q - node.hi).max(Vec8::ZERO);
            if gap.length_squared() > r2 {
                continue;
            }
            if node.left == 0 {
                let from = (node.start as usize).max(first);
                for &j in &self.perm[from..node.end as usize] {
                    let d2 = (points[j as usize] - q).length_squared();
                    if d2 <= r2 {
                        f(j, d2);
                    }
                }
            } else {
                stack[top] = node.left;
                stack[top + 1] = node.right;
                top += 2;
            }
        }
    }

    /// Calls `union(a, b)` for enough pairs closer than `sqrt(r2)` that the
    /// connected components of "closer than" follow (friends-of-friends), without
    /// visiting every pair: a subtree whose points are known to be one component
    /// (compact: its diagonal is below the distance; or found wholly within reach of
    /// one point, which joins them all) is joined through one of its points from
    /// then on. Sequential; for distances comparable to the spread of the points,
    /// where the pairs are too many to list.
    pub fn link_within(&self, points: &[Vec8], r2: f32, mut union: impl FnMut(u32, u32)) {
        if self.nodes.is_empty() {
            return;
        }
        let nodes = &self.nodes;
        let perm = &self.perm;
        let mut merged = vec![false; nodes.len()];
        // Compact subtrees: join each (top-most) one's points, mark it and its
        // descendants.
        let mut stack = vec![(0u32, false)];
        while let Some((k, inside)) = stack.pop() {
            let n = &nodes[k as usize];
            let compact = inside || (n.hi - n.lo).length_squared() < r2;
            if compact {
                merged[k as usize] = true;
                if !inside {
                    let first = perm[n.start as usize];
                    for &p in &perm[n.start as usize + 1..n.end as usize] {
                        union(first, p);
                    }
                }
            }
            if n.left != 0 {
                stack.push((n.right, compact));
                stack.push((n.left, compact));
            }
        }
        // Any point of subtree `k` closer than r to `q`.
        let any_within = |k: u32, q: Vec8| -> Option<u32> {
            let mut st = vec![k];
            while let Some(k) = st.pop() {
                let n = &nodes[k as usize];
                let gap = (n.lo - q).max(q - n.hi).max(Vec8::ZERO);
                if gap.length_squared() >= r2 {
                    continue;
                }
                if n.left == 0 {
                    if let Some(&p) = perm[n.start as usize..n.end as usize]
                        .iter()
                        .find(|&&p| (points[p as usize] - q).length_squared() < r2)
                    {
                        return Some(p);
                    }
                } else {
                    st.push(n.right);
                    st.push(n.left);
                }
            }
            None
        };
        let mut stack: Vec<u32> = Vec::new();
        for &i in perm.iter() {
            let q = points[i as usize];
            stack.clear();
            stack.push(0);
            while let Some(k) = stack.pop() {
                let n = &nodes[k as usize];
                let gap = (n.lo - q).max(q - n.hi).max(Vec8::ZERO);
                if gap.length_squared() >= r2 {
                    continue;
                }
                let far = (q - n.lo).max(n.hi - q).length_squared() < r2;
                let range = &perm[n.start as usize..n.end as usize];
                if merged[k as usize] {
                    if far {
                        union(i, range[0]);
                    } else if let Some(p) = any_within(k, q) {
                        union(i, p);
                    }
                } else if far {
                    // Every point is a friend of i: all one component now.
                    for &p in range {
                        union(i, p);
                    }
                    merged[k as usize] = true;
                } else if n.left == 0 {
                    for &p in range {
                        if (points[p as usize] - q).length_squared() < r2 {
                            union(i, p);
                        }
                    }
                } else {
                    stack.push(n.right);
                    stack.push(n.left);
                }
            }
        }
    }

    /// The same tree for the points permuted into tree order (`points'[m] =
    /// points[order()[m]]`): leaves become contiguous ranges.
    pub fn into_sorted(mut self) -> Self {
        for (m, p) in self.perm.iter_mut().enumerate() {
            *p = m as u32;
        }
        self
    }

    /// Recomputes every bounding box from the current `points`, keeping the tree's
    /// structure: O(N), and queries stay exact (boxes are tight again), though a
    /// tree refitted after much motion prunes less well than a fresh one.
    pub fn refit(&mut self, points: &[Vec8]) {
        // Children always come after their parent, so a reverse pass sees them first.
        for k in (0..self.nodes.len()).rev() {
            let node = self.nodes[k];
            let (lo, hi) = if node.left == 0 {
                bbox(points, &self.perm[node.start as usize..node.end as usize])
            } else {
                let (l, r) = (
                    self.nodes[node.left as usize],
                    self.nodes[node.right as usize],
                );
                (l.lo.min(r.lo), l.hi.max(r.hi))
            };
            self.nodes[k].lo = lo;
            self.nodes[k].hi = hi;
        }
    }

    /// Number of points the tree was built over.
    pub fn len(&self) -> usize {
        self.perm.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.perm.is_empty()
    }

    /// Point indices in tree order (leaf by leaf).
    pub fn order(&self) -> &[u32] {
        &self.perm
    }
}

/// Tokens per parallel work item of the force pass.
pub const CHUNK: usize = 512;

/// The inputs of a neighbour search, in gathered order.
#[derive(Clone, Copy)]
pub struct SearchInput<'a> {
    /// Positions.
    pub points: &'a [Vec8],
    /// Field radii.
    pub radii: &'a [f32],
    /// Token ids (the sort key of every row).
    pub ids: &'a [TokenId],
    /// Verlet skin.
    pub skin: f32,
}

impl SearchInput<'_> {
    /// The exact row of `i`: every `j ≠ i` with `|x_j − x_i| < max(R_i, R_j) + skin`,
    /// sorted by id, into `row` (cleared first).
    fn row(&self, tree: &KdTree, q2: f32, i: usize, row: &mut Vec<(TokenId, u32)>) {
        row.clear();
        let (xi, ri) = (self.points[i], self.radii[i]);
        tree.for_each_within(self.points, xi, q2, |j, d2| {
            let c = ri.max(self.radii[j as usize]) + self.skin;
            // A hair of slack so that rounding never drops a pair at the edge.
            if j as usize != i && d2 <= c * c * (1.0 + 1e-5) {
                row.push((self.ids[j as usize], j));
            }
        });
        row.sort_unstable_by_key(|(id, _)| *id);
    }

    /// The neighbours of `i` stored after it in the tree (`pos` is the inverse of
    /// the tree order), unsorted, into `out` (cleared first).
    fn half_row(&self, tree: &KdTree, pos: &[u32], q2: f32, i: usize, out: &mut Vec<u32>) {
        out.clear();
        let (xi, ri) = (self.points[i], self.radii[i]);
        tree.for_each_within_after(self.points, xi, q2, pos[i] as usize, |j, d2| {
            let c = ri.max(self.radii[j as usize]) + self.skin;
            if d2 <= c * c * (1.0 + 1e-5) {
                out.push(j);
            }
        });
    }

    fn query_radius2(&self) -> f32 {
        let rmax = self.radii.iter().copied().fold(0.0f32, f32::max);
        let q = rmax + self.skin;
        q * q * (1.0 + 1e-5)
    }
}

/// Verlet neighbour lists: one row per token, each sorted by neighbour id. Rows of
/// each block of [`BLOCK`] consecutive tokens live in one arena with spare room per
/// row, so single rows can be refreshed in place and a full build needs no second
/// copy of the lists.
#[derive(Clone, Debug, Default)]
pub struct NeighborList {
    blocks: Vec<Vec<u32>>,
    start: Vec<u32>,
    len: Vec<u32>,
    cap: Vec<u32>,
    /// Arena entries left behind by relocated or shrunk rows, per block.
    block_waste: Vec<usize>,
    compactions: u64,
    skin: f32,
    /// Unique per full build, so a copy of the lists elsewhere (the GPU's) knows
    /// when it must be rebuilt rather than patched.
    generation: u64,
    /// Blocks whose arena changed since [`take_touched`](Self::take_touched).
    touched: Vec<bool>,
}

static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Tokens per arena block (and per parallel work item of a full build).
pub const BLOCK: usize = 256;

fn spare(len: usize) -> usize {
    len + len / 8 + 4
}

impl NeighborList {
    /// Bytes on the heap: the row arenas at their capacity (spare room and the
    /// entries relocated rows left behind included) and the per-row tables.
    pub fn heap_bytes(&self) -> u64 {
        let arenas: usize = self.blocks.iter().map(Vec::capacity).sum();
        let rows = self.start.capacity() + self.len.capacity() + self.cap.capacity();
        ((arenas + rows) * size_of::<u32>()
            + self.blocks.capacity() * size_of::<Vec<u32>>()
            + self.block_waste.capacity() * size_of::<usize>()
            + self.touched.capacity()) as u64
    }

    /// Builds every row from scratch. Runs on the current rayon pool; the result does
    /// not depend on its size.
    pub fn build(input: SearchInput<'_>) -> Self {
        Self::build_with(input, &KdTree::build(input.points))
    }

    /// [`build`](Self::build) with a tree already built over `input.points`.
    /// Queries run in token order, which is tree order when the caller sorted the
    /// tokens with [`KdTree::into_sorted`]: consecutive queries then touch the same
    /// leaves.
    pub fn build_with(input: SearchInput<'_>, tree: &KdTree) -> Self {
        let n = input.points.len();
        let q2 = input.query_radius2();
        let blocks = n.div_ceil(BLOCK);
        let mut pos = vec![0u32; n];
        for (k, &i) in tree.order().iter().enumerate() {
            pos[i as usize] = k as u32;
        }
        // 1. Each pair once: token i keeps the neighbours stored after it in the tree.
        let halves: Vec<(Vec<u32>, Vec<u32>)> = (0..blocks)
            .into_par_iter()
            .map(|b| {
                puffin::profile_scope!("neighbor_block");
                let range = b * BLOCK..((b + 1) * BLOCK).min(n);
                let mut lens = Vec::with_capacity(range.len());
                let mut list = Vec::with_capacity(range.len() * 32);
                let mut row = Vec::with_capacity(128);
                for i in range {
                    input.half_row(tree, &pos, q2, i, &mut row);
                    lens.push(row.len() as u32);
                    list.extend_from_slice(&row);
                }
                (lens, list)
            })
            .collect();
        drop(pos);
        // 2. Full row lengths: each half-row entry counts for both ends.
        let mut len = vec![0u32; n];
        for (b, (lens, list)) in halves.iter().enumerate() {
            let mut at = 0;
            for (k, &l) in lens.iter().enumerate() {
                len[b * BLOCK + k] += l;
                for &j in &list[at..at + l as usize] {
                    len[j as usize] += 1;
                }
                at += l as usize;
            }
        }
        // 3. Arenas with spare room, filled from both ends of every pair.
        let mut out = Self {
            skin: input.skin,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            touched: vec![false; blocks],
            block_waste: vec![0; blocks],
            ..Default::default()
        };
        out.start.reserve_exact(n);
        out.cap.reserve_exact(n);
        for b in 0..blocks {
            let mut total = 0u32;
            for &l in &len[b * BLOCK..((b + 1) * BLOCK).min(n)] {
                out.start.push(total);
                let c = spare(l as usize) as u32;
                out.cap.push(c);
                total += c;
            }
            out.blocks.push(vec![0u32; total as usize]);
        }
        out.len = vec![0u32; n];
        for (b, (lens, list)) in halves.into_iter().enumerate() {
            let mut at = 0;
            for (k, &l) in lens.iter().enumerate() {
                let i = b * BLOCK + k;
                for &j in &list[at..at + l as usize] {
                    out.push_unsorted(i, j);
                    out.push_unsorted(j as usize, i as u32);
                }
                at += l as usize;
            }
        }
        debug_assert_eq!(out.len, len);
        // 4. Every row in id order.
        let ids = input.ids;
        let (start, lens) = (&out.start, &out.len);
        out.blocks
            .par_iter_mut()
            .enumerate()
            .for_each(|(b, arena)| {
                puffin::profile_scope!("sort_block");
                for i in b * BLOCK..((b + 1) * BLOCK).min(n) {
                    let s = start[i] as usize;
                    arena[s..s + lens[i] as usize].sort_unstable_by_key(|&j| ids[j as usize]);
                }
            });
        out
    }

    fn push_unsorted(&mut self, i: usize, j: u32) {
        let at = (self.start[i] + self.len[i]) as usize;
        self.blocks[i / BLOCK][at] = j;
        self.len[i] += 1;
    }

    /// Recomputes the rows of `tokens` exactly and keeps the lists symmetric:
    /// each refreshed token is added to the rows of its new neighbours and
    /// removed from the rows of those it left, so a pair is in both rows or in
    /// neither, as of the later of its two ends' last computation. `tree` must
    /// cover `input.points` with boxes that are current (see [`KdTree::refit`]).
    ///
    /// The queries, and each row's difference from its old one (rows are sorted
    /// by id: one merge), run in parallel; only the changes are applied in turn.
    pub fn refresh(&mut self, input: SearchInput<'_>, tree: &KdTree, tokens: &[u32]) {
        let q2 = input.query_radius2();
        let ids = input.ids;
        let this = &*self;
        let rows: Vec<RowChange> = tokens
            .par_iter()
            .map_init(
                || Vec::with_capacity(128),
                |found, &i| {
                    input.row(tree, q2, i as usize, found);
                    let row: Vec<u32> = found.iter().map(|(_, j)| *j).collect();
                    let (added, removed) = sorted_difference(this.row(i as usize), &row, ids);
                    RowChange {
                        i,
                        row,
                        added,
                        removed,
                    }
                },
            )
            .collect();
        for change in rows {
            let i = change.i;
            self.set_row(i as usize, &change.row);
            for &j in &change.added {
                self.insert_sorted(j as usize, i, ids);
            }
            for &j in &change.removed {
                self.remove_sorted(j as usize, i, ids);
            }
        }
        // A block whose relocated rows left an eighth of its arena unused is
        // repacked, so a block holds at most about 1.4 times its rows with their
        // spare room (an eighth of waste, a quarter of growth room) however long
        // refreshes go on: arenas are most of a long run's memory.
        for b in 0..self.blocks.len() {
            if self.block_waste[b] > self.blocks[b].len() / 8 {
                self.compact(b);
            }
        }
    }

    /// Moves row `i` to the end of its block's arena with room for `need` entries.
    /// An arena grows by a quarter at a time; [`refresh`](Self::refresh) compacts
    /// it once abandoned rows fill an eighth of it.
    fn relocate(&mut self, i: usize, need: usize) {
        let b = i / BLOCK;
        self.touched[b] = true;
        let arena = &mut self.blocks[b];
        let (s, l) = (self.start[i] as usize, self.len[i] as usize);
        let c = spare(need);
        let new_start = arena.len();
        if arena.capacity() < new_start + c {
            arena.reserve_exact((new_start / 4).max(c));
        }
        arena.extend_from_within(s..s + l);
        arena.resize(new_start + c, 0);
        self.block_waste[b] += self.cap[i] as usize;
        self.start[i] = new_start as u32;
        self.cap[i] = c as u32;
    }

    /// Repacks the rows of block `b` into a new arena of exactly their size with
    /// spare room, dropping the space of relocated rows.
    fn compact(&mut self, b: usize) {
        let rows = b * BLOCK..((b + 1) * BLOCK).min(self.start.len());
        let total: usize = rows.clone().map(|i| spare(self.len[i] as usize)).sum();
        let mut fresh = Vec::with_capacity(total);
        for i in rows {
            let (s, l) = (self.start[i] as usize, self.len[i] as usize);
            let c = spare(l);
            self.start[i] = fresh.len() as u32;
            self.cap[i] = c as u32;
            fresh.extend_from_slice(&self.blocks[b][s..s + l]);
            fresh.resize(fresh.len() - l + c, 0);
        }
        self.block_waste[b] = 0;
        self.blocks[b] = fresh;
        self.touched[b] = true;
        self.compactions += 1;
    }

    /// Arena compactions since the build.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    fn set_row(&mut self, i: usize, row: &[u32]) {
        if row.len() > self.cap[i] as usize {
            self.len[i] = 0;
            self.relocate(i, row.len());
        } else {
            // A row that shrank far below its room (a crowd spreading out) gives
            // the excess up as waste, so that compaction can reclaim it.
            let (cap, fit) = (self.cap[i] as usize, spare(row.len()));
            if cap > 2 * fit {
                self.block_waste[i / BLOCK] += cap - fit;
                self.cap[i] = fit as u32;
            }
        }
        let s = self.start[i] as usize;
        self.blocks[i / BLOCK][s..s + row.len()].copy_from_slice(row);
        self.len[i] = row.len() as u32;
        self.touched[i / BLOCK] = true;
    }

    fn insert_sorted(&mut self, j: usize, i: u32, ids: &[TokenId]) {
        let key = ids[i as usize];
        let pos = match self.row(j).binary_search_by_key(&key, |&k| ids[k as usize]) {
            Ok(_) => return,
            Err(p) => p,
        };
        if self.len[j] == self.cap[j] {
            self.relocate(j, self.len[j] as usize + 1);
        }
        let s = self.start[j] as usize;
        let l = self.len[j] as usize;
        let arena = &mut self.blocks[j / BLOCK];
        arena.copy_within(s + pos..s + l, s + pos + 1);
        arena[s + pos] = i;
        self.len[j] += 1;
        self.touched[j / BLOCK] = true;
    }

    fn remove_sorted(&mut self, j: usize, i: u32, ids: &[TokenId]) {
        let key = ids[i as usize];
        let Ok(pos) = self.row(j).binary_search_by_key(&key, |&k| ids[k as usize]) else {
            return;
        };
        let s = self.start[j] as usize;
        let l = self.len[j] as usize;
        self.blocks[j / BLOCK].copy_within(s + pos + 1..s + l, s + pos);
        self.len[j] -= 1;
        self.touched[j / BLOCK] = true;
    }

    /// The candidate neighbours of token `i`, ascending by id.
    #[inline]
    pub fn row(&self, i: usize) -> &[u32] {
        let s = self.start[i] as usize;
        &self.blocks[i / BLOCK][s..s + self.len[i] as usize]
    }

    /// Number of tokens covered.
    pub fn len(&self) -> usize {
        self.start.len()
    }

    /// Identifies the full build these lists come from (refreshes keep it).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The arena of each block of [`BLOCK`] tokens; row `i` is
    /// `arenas()[i / BLOCK][start..start + len]` with `(start, len) = placement(i)`.
    pub fn arenas(&self) -> &[Vec<u32>] {
        &self.blocks
    }

    /// Where row `i` sits in its block's arena: `(start, len)`.
    #[inline]
    pub fn placement(&self, i: usize) -> (u32, u32) {
        (self.start[i], self.len[i])
    }

    /// The blocks whose arena (rows or placement) changed since the last call or
    /// the build, ascending; clears the record.
    pub fn take_touched(&mut self) -> Vec<usize> {
        let out = (0..self.touched.len())
            .filter(|&b| self.touched[b])
            .collect();
        self.touched.fill(false);
        out
    }

    /// Whether the list covers no token.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
    }

    /// Total candidates stored (sum of row lengths).
    pub fn candidates(&self) -> usize {
        self.len.iter().map(|&l| l as usize).sum()
    }

    /// The skin the lists were built with.
    pub fn skin(&self) -> f32 {
        self.skin
    }
}

/// A recomputed row and how it differs from the old one.
struct RowChange {
    i: u32,
    row: Vec<u32>,
    /// In the new row, not in the old.
    added: Vec<u32>,
    /// In the old row, not in the new.
    removed: Vec<u32>,
}

/// `(new − old, old − new)` for two rows sorted by id.
fn sorted_difference(old: &[u32], new: &[u32], ids: &[TokenId]) -> (Vec<u32>, Vec<u32>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (0, 0);
    while a < old.len() || b < new.len() {
        match (old.get(a), new.get(b)) {
            (Some(&o), Some(&n)) => match ids[o as usize].cmp(&ids[n as usize]) {
                std::cmp::Ordering::Equal => {
                    a += 1;
                    b += 1;
                }
                std::cmp::Ordering::Less => {
                    removed.push(o);
                    a += 1;
                }
                std::cmp::Ordering::Greater => {
                    added.push(n);
                    b += 1;
                }
            },
            (Some(&o), None) => {
                removed.push(o);
                a += 1;
            }
            (None, Some(&n)) => {
                added.push(n);
                b += 1;
            }
            (None, None) => unreachable!("the loop runs while either row has entries"),
        }
    }
    (added, removed)
}

/// How far each token has travelled since its row was last computed. A pair absent
/// from the lists was at least `cutoff + skin` apart when last checked, so it is
/// still beyond its cutoff while the two tokens' paths sum to at most the skin:
/// keeping every path within `skin / 2` (by refreshing the rows of the tokens past
/// it) keeps the lists complete. Path length bounds displacement; 4 bytes a token.
#[derive(Clone, Debug, Default)]
pub struct Travel {
    /// Path length per token (gathered order) since its row was computed.
    pub path: Vec<f32>,
    /// Set when the bound is void (tokens teleported, order changed).
    pub invalid: bool,
}

impl Travel {
    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> u64 {
        (self.path.capacity() * size_of::<f32>()) as u64
    }

    /// Starts over for `n` tokens.
    pub fn reset(&mut self, n: usize) {
        self.path.clear();
        self.path.resize(n, 0.0);
        self.invalid = false;
    }

    /// Tokens whose path exceeds `skin / 2` (NaN counts as exceeding).
    pub fn past_half_skin(&self, skin: f32) -> Vec<u32> {
        let h = skin / 2.0;
        (0..self.path.len() as u32)
            .filter(|&i| {
                let p = self.path[i as usize];
                p.is_nan() || p > h
            })
            .collect()
    }

    /// Forgets the paths of `tokens` (their rows were just recomputed).
    pub fn clear(&mut self, tokens: &[u32]) {
        for &i in tokens {
            self.path[i as usize] = 0.0;
        }
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
    fn refitted_tree_answers_exactly_after_points_move() {
        let mut pts = random_points(2000, 3.0, 4);
        let mut tree = KdTree::build(&pts);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for p in pts.iter_mut() {
            *p += Vec8::from_array(std::array::from_fn(|_| rng.random_range(-0.4..0.4)));
        }
        tree.refit(&pts);
        for q in pts.iter().step_by(101) {
            let mut got = Vec::new();
            tree.for_each_within(&pts, *q, 1.0, |j, _| got.push(j));
            got.sort();
            let want: Vec<u32> = (0..pts.len() as u32)
                .filter(|&j| (pts[j as usize] - *q).length_squared() <= 1.0)
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn nearest_matches_brute_force() {
        let pts = random_points(3000, 4.0, 11);
        let tree = KdTree::build(&pts);
        for (s, &q) in random_points(40, 5.0, 12).iter().enumerate() {
            for k in [0, 1, 7, 64, 3000, 5000] {
                let mut all: Vec<(u32, f32)> = pts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| (j as u32, (*p - q).length_squared()))
                    .collect();
                all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                assert_eq!(tree.nearest(&pts, q, k), all, "query {s}, k {k}");
            }
        }
        // Ties are broken by index: duplicates come back in index order.
        let dup = vec![Vec8::splat(1.0); 50];
        let t = KdTree::build(&dup);
        let got: Vec<u32> = t.nearest(&dup, Vec8::ZERO, 5).iter().map(|x| x.0).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
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
        let radii: Vec<f32> = (0..pts.len())
            .map(|i| if i % 3 == 0 { 1.0 } else { 0.7 })
            .collect();
        // Ids deliberately not in index order.
        let ids: Vec<TokenId> = (0..pts.len() as u64)
            .map(|i| TokenId((i * 7919) % 800))
            .collect();
        let nl = NeighborList::build(SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin: 0.1,
        });
        for i in 0..pts.len() {
            let row = nl.row(i);
            assert!(
                row.windows(2)
                    .all(|w| ids[w[0] as usize] < ids[w[1] as usize])
            );
            for j in 0..pts.len() {
                let c = radii[i].max(radii[j]);
                if j != i && (pts[j] - pts[i]).length_squared() < c * c {
                    assert!(row.contains(&(j as u32)), "pair ({i},{j}) missing");
                }
            }
        }
    }

    #[test]
    fn half_query_build_equals_full_queries() {
        let pts = random_points(2500, 2.7, 8);
        let radii: Vec<f32> = (0..pts.len()).map(|i| 0.7 + (i % 5) as f32 * 0.1).collect();
        let ids: Vec<TokenId> = (0..pts.len() as u64)
            .map(|i| TokenId((i * 31) % 2500))
            .collect();
        let input = SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin: 0.1,
        };
        let tree = KdTree::build(&pts);
        let nl = NeighborList::build_with(input, &tree);
        let q2 = input.query_radius2();
        let mut scratch = Vec::new();
        for i in 0..pts.len() {
            input.row(&tree, q2, i, &mut scratch);
            let want: Vec<u32> = scratch.iter().map(|(_, j)| *j).collect();
            assert_eq!(nl.row(i), want.as_slice(), "row {i}");
        }
    }

    /// Every pair within its cutoff is in both rows, and each arena holds at most
    /// about 1.4 times its rows with their spare room.
    fn check_lists(nl: &NeighborList, pts: &[Vec8], radii: &[f32], ids: &[TokenId]) {
        let n = pts.len();
        for (b, arena) in nl.blocks.iter().enumerate() {
            let rows = b * BLOCK..((b + 1) * BLOCK).min(n);
            let live: usize = rows.clone().map(|i| spare(nl.len[i] as usize)).sum();
            assert!(nl.block_waste[b] <= arena.len() / 8);
            assert!(
                arena.capacity() * 2 <= 3 * live,
                "block {b}: {} for {live}",
                arena.capacity()
            );
            for i in rows {
                assert!(
                    nl.row(i)
                        .windows(2)
                        .all(|w| ids[w[0] as usize] < ids[w[1] as usize])
                );
            }
        }
        // Symmetric: a refresh adds a token to its new neighbours' rows and
        // removes it from the rows of those it left.
        for i in 0..n {
            for &j in nl.row(i) {
                assert!(
                    nl.row(j as usize).contains(&(i as u32)),
                    "{j} is in row {i}, but {i} is not in row {j}"
                );
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                let c = radii[i].max(radii[j]);
                if (pts[j] - pts[i]).length_squared() < c * c {
                    assert!(
                        nl.row(i).contains(&(j as u32)),
                        "({i},{j}) missing from row {i}"
                    );
                    assert!(
                        nl.row(j).contains(&(i as u32)),
                        "({i},{j}) missing from row {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_that_grow_then_shrink_are_repacked() {
        // A third of the tokens gather into a small ball (their rows grow and move
        // to the end of their arenas), then spread out again (their rows shrink):
        // the arenas are compacted and the lists stay exact throughout.
        let n = 1200;
        let skin = 0.1;
        let mut pts = random_points(n, 3.0, 21);
        let radii = vec![1.0f32; n];
        let ids: Vec<TokenId> = (0..n as u64).map(TokenId).collect();
        let mut nl = NeighborList::build(SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin,
        });
        let mut tree = KdTree::build(&pts);
        let moved: Vec<u32> = (0..n as u32).filter(|i| i % 3 == 0).collect();
        let original = pts.clone();
        let centre = Vec8::splat(1.5);
        for &i in &moved {
            pts[i as usize] = centre + (pts[i as usize] - centre) * 0.1;
        }
        for (stage, targets) in [("gathered", None), ("spread", Some(&original))] {
            if let Some(o) = targets {
                for &i in &moved {
                    pts[i as usize] = o[i as usize];
                }
            }
            tree.refit(&pts);
            nl.refresh(
                SearchInput {
                    points: &pts,
                    radii: &radii,
                    ids: &ids,
                    skin,
                },
                &tree,
                &moved,
            );
            check_lists(&nl, &pts, &radii, &ids);
            assert!(nl.compactions() > 0, "{stage}: no arena was compacted");
        }
    }

    #[test]
    fn rows_stay_complete_through_many_partial_refreshes() {
        // The engine's rule on a random walk with a few fast tokens: refresh the rows
        // of tokens whose path passed half the skin, then every pair within its
        // cutoff must be in both rows. Tokens drop out of rows and come back.
        let n = 1000;
        let skin = 0.1;
        let mut pts = random_points(n, 2.4, 11);
        let radii: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 1.0 } else { 0.8 }).collect();
        let ids: Vec<TokenId> = (0..n as u64).map(|i| TokenId((i * 7) % n as u64)).collect();
        let mut nl = NeighborList::build(SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin,
        });
        let mut tree = KdTree::build(&pts);
        let mut travel = Travel::default();
        travel.reset(n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let mut refreshed = 0;
        for step in 0..60 {
            for (i, (p, path)) in pts.iter_mut().zip(travel.path.iter_mut()).enumerate() {
                let speed = if i % 10 == 0 { 0.03 } else { 0.003 };
                let dir = Vec8::from_array(std::array::from_fn(|_| rng.random_range(-1.0f32..1.0)));
                let step = dir * (speed / dir.length().max(1e-6));
                *p += step;
                *path += step.length();
            }
            // The engine's rule (see `forces`).
            let stale = travel.past_half_skin(skin);
            if step % 8 == 7 {
                tree = KdTree::build(&pts);
            } else {
                tree.refit(&pts);
            }
            nl.refresh(
                SearchInput {
                    points: &pts,
                    radii: &radii,
                    ids: &ids,
                    skin,
                },
                &tree,
                &stale,
            );
            travel.clear(&stale);
            refreshed += stale.len();
            check_lists(&nl, &pts, &radii, &ids);
        }
        assert!(
            refreshed > 2 * n,
            "the walk should refresh many rows: {refreshed}"
        );
    }

    #[test]
    fn travel_reports_tokens_past_half_the_skin() {
        let mut t = Travel::default();
        t.reset(4);
        assert!(t.past_half_skin(0.2).is_empty());
        t.path = vec![0.05, 0.12, f32::NAN, 0.07];
        assert_eq!(t.past_half_skin(0.2), vec![1, 2]);
        t.clear(&[1, 2]);
        assert!(t.past_half_skin(0.2).is_empty());
    }

    #[test]
    fn refreshed_rows_match_a_fresh_build() {
        let mut pts = random_points(1500, 2.8, 3);
        let radii = vec![1.0f32; pts.len()];
        let ids: Vec<TokenId> = (0..pts.len() as u64).map(TokenId).collect();
        let mut nl = NeighborList::build(SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin: 0.1,
        });
        let mut tree = KdTree::build(&pts);
        // Move a few tokens far, refresh only them, and check every true pair is listed.
        let moved: Vec<u32> = (0..pts.len() as u32).step_by(37).collect();
        for &i in &moved {
            pts[i as usize] += Vec8::splat(0.3);
        }
        // The tree from before the move, refitted, serves the refresh.
        tree.refit(&pts);
        nl.refresh(
            SearchInput {
                points: &pts,
                radii: &radii,
                ids: &ids,
                skin: 0.1,
            },
            &tree,
            &moved,
        );
        for i in 0..pts.len() {
            let row = nl.row(i);
            assert!(
                row.windows(2)
                    .all(|w| ids[w[0] as usize] < ids[w[1] as usize]),
                "row {i} unsorted"
            );
            for j in 0..pts.len() {
                if j != i && (pts[j] - pts[i]).length_squared() < 1.0 {
                    assert!(
                        row.contains(&(j as u32)),
                        "pair ({i},{j}) missing after refresh"
                    );
                }
            }
        }
    }
}
