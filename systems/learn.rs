//! `Learn`: links learn from co-activation within the CDNA's limits (DESIGN §3, §6).
//!
//! Every tick, for each link between `a` and `b` at distance `r`, with
//! `R = max(R_a, R_b)` (their field cutoff) and the CDNA's `graph` block:
//!
//! - **co-active** (`r < R`, each inside the other's field): Hebbian growth
//!   `w += learning_rate · (1 − r/R) · (max_weight − w)`;
//! - **otherwise**: decay `w −= decay_rate · (1 − rigidity) · w`;
//! - `w` is kept in `[min_weight, max_weight]`, and a link whose weight falls below
//!   `prune_below` is removed.
//!
//! Then each token at most at the target density (`ρ ≤ ρ₀`, the density of the
//! force pass: links form in settled fields, not in a crowd that is still
//! spreading out) proposes a link to its nearest unlinked neighbour closer than
//! `form_within` that is settled too. When `form_within` is at most every field
//! radius, the force pass made the proposals (at the positions, links and degrees
//! of the start of the tick); otherwise they are searched here, after this tick's
//! pruning (so a link pruned now may form again at once), in the neighbour lists
//! or a k-d tree. Proposals are accepted in id order while both ends have fewer
//! than `form_max_degree` links (at most `max_degree`) and the link and memory
//! quotas allow.
//! A formed link is `Associative`, of weight `formed_weight`, rigidity
//! `min_rigidity` and rest length the distance at which it formed, so it holds the
//! pair where learning found it.
//!
//! Learning is deterministic: weights are updated in key order, proposals are made
//! per token and accepted in a fixed order, whatever the thread count.

use crate::geometry::spatial::{CHUNK, KdTree};
use crate::model::cdna::Cdna;
use crate::model::components::*;
use crate::model::config::Quotas;
use crate::model::math::Vec8;
use crate::model::registry::{LinkGraph, SpatialDirty};
use crate::physics::{ForceParams, slot_table};
use crate::schedule::{ComputePool, SimSystems, SimTick};
use crate::systems::forces::ForceBuffers;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use rayon::prelude::*;

/// Adds [`learn`] to `Learn`.
pub struct LearnPlugin;

impl Plugin for LearnPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<LearnStats>()
            .add_systems(SimTick, learn.in_set(SimSystems::Learn));
    }
}

/// Counters of the learning stage.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnStats {
    /// Links formed since the start.
    pub links_formed: u64,
    /// Links pruned since the start.
    pub links_pruned: u64,
    /// Links formed in the last tick.
    pub last_formed: u64,
    /// Links pruned in the last tick.
    pub last_pruned: u64,
    /// Co-active links in the last tick.
    pub last_co_active: u64,
    /// Ticks in which new links could not be proposed because the force stage's
    /// neighbour lists did not match the tokens (weights still learned).
    pub formation_skipped: u64,
    /// Ticks in which formation stopped at the link or memory quota.
    pub quota_stops: u64,
    /// Ticks in which `Learn` searched for proposals itself and the neighbour
    /// lists did not cover `form_within` (or the world was marked dirty), so a
    /// k-d tree proposed the links.
    pub tree_ticks: u64,
}

/// The learning system: weights first, then new links (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn learn(
    tokens: Query<(&TokenId, &Position, &Field)>,
    mut graph: ResMut<LinkGraph>,
    buf: Res<ForceBuffers>,
    cdna: Res<Cdna>,
    quotas: Res<Quotas>,
    pool: Res<ComputePool>,
    dirty: Res<SpatialDirty>,
    mut stats: ResMut<LearnStats>,
) {
    crate::profile_system!("learn");
    let g = &cdna.graph;
    stats.last_formed = 0;
    stats.last_pruned = 0;
    stats.last_co_active = 0;
    let form_max_degree = g.form_max_degree.min(g.max_degree) as usize;
    let forming = g.form_within > 0.0 && form_max_degree > 0;
    if graph.is_empty() && !forming {
        return;
    }
    let here = Gathered::new(&tokens, &buf);
    let ids: &[TokenId] = if here.slotted { &buf.ids } else { &here.ids };
    let owned;
    let slot_of: &[u32] = if here.slotted {
        buf.slot_of()
    } else {
        owned = slot_table(ids);
        &owned
    };
    if !graph.is_empty() {
        learn_weights(&mut graph, g, slot_of, &here, &mut stats);
    }
    if !forming {
        return;
    }
    if !here.slotted {
        stats.formation_skipped += 1;
        return;
    }
    let n = here.pos.len();
    let mut proposals = if buf.proposed == Some(g.form_within) && buf.nearest.len() == n {
        proposals_from_forces(&buf, ids)
    } else {
        let search = Search {
            graph: &graph,
            ids,
            pos: &here.pos,
            buf: &buf,
            form_within: g.form_within,
            max_degree: form_max_degree,
        };
        let (proposals, used_tree) = search.run(&ForceParams::from_cdna(&cdna), dirty.0, &pool);
        stats.tree_ticks += used_tree as u64;
        proposals
    };
    proposals.sort_unstable_by_key(|&(a, b, _)| (a, b));
    proposals.dedup_by_key(|&mut (a, b, _)| (a, b));
    let formed = form_links(
        &mut graph,
        proposals,
        g,
        form_max_degree,
        &quotas,
        n,
        &mut stats,
    );
    stats.last_formed = formed;
    stats.links_formed += formed;
}

/// Current positions and radii, in the force stage's slot order when it
/// matches the tokens (then its neighbour lists can propose links), else in
/// query order with the ids alongside.
struct Gathered {
    pos: Vec<Vec8>,
    radius: Vec<f32>,
    /// Query-order ids (empty when `slotted`).
    ids: Vec<TokenId>,
    slotted: bool,
}

impl Gathered {
    fn new(tokens: &Query<(&TokenId, &Position, &Field)>, buf: &ForceBuffers) -> Self {
        puffin::profile_scope!("gather");
        let n = tokens.iter().len();
        let mut pos = vec![Vec8::ZERO; n];
        let mut radius = vec![0.0f32; n];
        let mut ids: Vec<TokenId> = Vec::new();
        // (The lists may be empty: a resident GPU tick keeps none on the CPU;
        // `Search` then uses a k-d tree.)
        let mut slotted = buf.ids.len() == n;
        if slotted {
            // By id: this query may visit the tables in another order than
            // the force stage's.
            for (id, x, f) in tokens.iter() {
                let Some(s) = buf.slot_by_id(*id) else {
                    slotted = false;
                    break;
                };
                pos[s] = x.0;
                radius[s] = f.radius;
            }
        }
        if !slotted {
            for (k, (id, x, f)) in tokens.iter().enumerate() {
                ids.push(*id);
                pos[k] = x.0;
                radius[k] = f.radius;
            }
        }
        Self {
            pos,
            radius,
            ids,
            slotted,
        }
    }
}

/// Hebbian weights: co-active links (ends within their cutoff) strengthen,
/// the others decay; links below `prune_below` are pruned.
fn learn_weights(
    graph: &mut LinkGraph,
    g: &crate::model::cdna::GraphLimits,
    slot_of: &[u32],
    here: &Gathered,
    stats: &mut LearnStats,
) {
    puffin::profile_scope!("weights");
    let (pos, radius) = (&here.pos, &here.radius);
    let (lr, decay) = (g.learning_rate, g.decay_rate);
    let mut prune: Vec<(TokenId, TokenId)> = Vec::new();
    let mut co_active = 0u64;
    let slot = |id: TokenId| match slot_of.get(id.0 as usize) {
        Some(&s) if s != u32::MAX => Some(s as usize),
        _ => None,
    };
    for (&(a, b), l) in graph.iter_mut() {
        // Links die with their tokens, so both ends are live.
        let (Some(sa), Some(sb)) = (slot(a), slot(b)) else {
            continue;
        };
        let r = (pos[sa] - pos[sb]).length();
        let cut = radius[sa].max(radius[sb]);
        if r < cut {
            l.weight += lr * (1.0 - r / cut) * (g.max_weight - l.weight);
            co_active += 1;
        } else {
            l.weight -= decay * (1.0 - l.rigidity) * l.weight;
        }
        l.weight = l.weight.clamp(g.min_weight, g.max_weight);
        if l.weight < g.prune_below {
            prune.push((a, b));
        }
    }
    for &(a, b) in &prune {
        graph.remove(a, b);
    }
    stats.last_co_active = co_active;
    stats.last_pruned = prune.len() as u64;
    stats.links_pruned += prune.len() as u64;
}

/// The force pass found each token's nearest unlinked partner (at the
/// positions of the start of the tick): those are the proposals.
fn proposals_from_forces(buf: &ForceBuffers, ids: &[TokenId]) -> Vec<(TokenId, TokenId, f32)> {
    buf.nearest
        .iter()
        .enumerate()
        .filter(|&(_, &j)| j != u32::MAX)
        .map(|(i, &j)| {
            let (a, b) = (ids[i], ids[j as usize]);
            let r = (buf.positions[i] - buf.positions[j as usize]).length();
            if a < b { (a, b, r) } else { (b, a, r) }
        })
        .collect()
}

/// `Learn`'s own search for proposals: each settled token below the degree
/// limit proposes its nearest settled, unlinked partner within `form_within`.
struct Search<'a> {
    graph: &'a LinkGraph,
    ids: &'a [TokenId],
    pos: &'a [Vec8],
    buf: &'a ForceBuffers,
    form_within: f32,
    max_degree: usize,
}

impl Search<'_> {
    /// The proposals, and whether a k-d tree found them: the lists propose
    /// every pair within `form_within` when they cover it; otherwise (small
    /// radii, stale lists, a dirty world) a k-d tree does.
    fn run(
        &self,
        fp: &ForceParams,
        dirty: bool,
        pool: &ComputePool,
    ) -> (Vec<(TokenId, TokenId, f32)>, bool) {
        puffin::profile_scope!("propose");
        let n = self.pos.len();
        let tree =
            (dirty || !self.buf.lists_cover(self.form_within)).then(|| KdTree::build(self.pos));
        let degree: Vec<usize> = self.ids.iter().map(|&id| self.graph.degree(id)).collect();
        // Links form in settled fields only (ρ ≤ ρ₀ at the start of the tick), as
        // in the force pass's proposals.
        let settled: Vec<bool> = (0..n)
            .map(|s| {
                self.buf
                    .density
                    .get(s)
                    .is_none_or(|&rho| fp.pressure(rho) <= 1.0)
            })
            .collect();
        let (tree_ref, degree, settled) = (tree.as_ref(), &degree, &settled);
        let proposals = pool.0.install(|| {
            (0..n.div_ceil(CHUNK))
                .into_par_iter()
                .flat_map_iter(|c| {
                    puffin::profile_scope!("propose_chunk");
                    (c * CHUNK..((c + 1) * CHUNK).min(n))
                        .filter_map(|i| self.nearest(i, tree_ref, degree, settled))
                        .collect::<Vec<_>>()
                })
                .collect()
        });
        (proposals, tree.is_some())
    }

    /// Token `i`'s proposal, if it has one.
    fn nearest(
        &self,
        i: usize,
        tree: Option<&KdTree>,
        degree: &[usize],
        settled: &[bool],
    ) -> Option<(TokenId, TokenId, f32)> {
        let (idi, xi) = (self.ids[i], self.pos[i]);
        if degree[i] >= self.max_degree || !settled[i] {
            return None;
        }
        let f2 = self.form_within * self.form_within;
        let linked = self.graph.neighbors(idi);
        let mut best: Option<(f32, TokenId)> = None;
        let mut near = Vec::new();
        let row: &[u32] = match tree {
            None => self.buf.neighbors.row(i),
            Some(t) => {
                t.for_each_within(self.pos, xi, f2, |j, _| near.push(j));
                &near
            }
        };
        for &j in row {
            let d2 = (self.pos[j as usize] - xi).length_squared();
            if d2 >= f2 || j as usize == i {
                continue;
            }
            let idj = self.ids[j as usize];
            let closer = best.is_none_or(|(bd, bid)| (d2, idj) < (bd, bid));
            if closer
                && degree[j as usize] < self.max_degree
                && settled[j as usize]
                && !linked.contains(&idj)
            {
                best = Some((d2, idj));
            }
        }
        best.map(|(d2, idj)| {
            let (a, b) = if idi < idj { (idi, idj) } else { (idj, idi) };
            (a, b, d2.sqrt())
        })
    }
}

/// Forms the proposed links (sorted, unique) that are new and within the
/// degree limit, until a quota would be exceeded; returns how many formed.
/// The graph is marked changed only when a link forms.
fn form_links(
    graph: &mut ResMut<LinkGraph>,
    proposals: Vec<(TokenId, TokenId, f32)>,
    g: &crate::model::cdna::GraphLimits,
    max_degree: usize,
    quotas: &Quotas,
    tokens: usize,
    stats: &mut LearnStats,
) -> u64 {
    let mut formed = 0u64;
    for (a, b, r) in proposals {
        if quotas.check(tokens as u64, graph.len(), 0, 1).is_err() {
            // Learned links never push the world past its quotas as the
            // calibrated figures count it (a replayable decision; see
            // `Quotas::check` and docs/embedding.md for how it can differ
            // from the measured memory commands are checked against).
            stats.quota_stops += 1;
            break;
        }
        if graph.get(a, b).is_some()
            || graph.degree(a) >= max_degree
            || graph.degree(b) >= max_degree
        {
            continue;
        }
        graph.insert(
            a,
            b,
            LinkSpec {
                weight: g.formed_weight,
                rigidity: g.min_rigidity,
                rest_length: r.min(g.max_rest_length),
                kind: LinkKind::Associative,
            },
        );
        formed += 1;
    }
    formed
}
