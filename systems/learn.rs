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

use crate::cdna::Cdna;
use crate::components::*;
use crate::config::Quotas;
use crate::math::Vec8;
use crate::physics::{ForceParams, slot_table};
use crate::plugin::{ComputePool, SimSystems, SimTick};
use crate::registry::{LinkGraph, SpatialDirty};
use crate::spatial::{CHUNK, KdTree};
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

/// The learning system.
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
    // Current positions and radii, in the force stage's slot order when it
    // matches the tokens (then its neighbour lists can propose links).
    let n = tokens.iter().len();
    let mut pos = vec![Vec8::ZERO; n];
    let mut radius = vec![0.0f32; n];
    let mut ids: Vec<TokenId> = Vec::new();
    let mut slotted = buf.ids.len() == n && buf.slot.len() == n && buf.neighbors.len() == n;
    {
        puffin::profile_scope!("gather");
        if slotted {
            for (k, (id, x, f)) in tokens.iter().enumerate() {
                let s = buf.slot[k] as usize;
                if buf.ids[s] != *id {
                    slotted = false;
                    break;
                }
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
    }
    let ids: &[TokenId] = if slotted { &buf.ids } else { &ids };
    let owned;
    let slot_of: &[u32] = if slotted {
        buf.slot_of()
    } else {
        owned = slot_table(ids);
        &owned
    };

    if !graph.is_empty() {
        puffin::profile_scope!("weights");
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

    if !forming {
        return;
    }
    if !slotted {
        stats.formation_skipped += 1;
        return;
    }
    let from_forces = buf.proposed == Some(g.form_within) && buf.nearest.len() == n;
    let proposals: Vec<(TokenId, TokenId, f32)> = if from_forces {
        // The force pass found each token's nearest unlinked partner (at the
        // positions of the start of the tick).
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
    } else {
        puffin::profile_scope!("propose");
        let graph = &*graph;
        let (f2, max_degree) = (g.form_within * g.form_within, form_max_degree);
        let pos = &pos;
        // The lists propose every pair within `form_within` when they cover it;
        // otherwise (small radii, stale lists) a k-d tree does.
        let tree = (dirty.0 || !buf.lists_cover(g.form_within)).then(|| KdTree::build(pos));
        stats.tree_ticks += tree.is_some() as u64;
        let tree = tree.as_ref();
        let lists = &buf.neighbors;
        let degree: Vec<usize> = ids.iter().map(|&id| graph.degree(id)).collect();
        let degree = &degree;
        // Links form in settled fields only (ρ ≤ ρ₀ at the start of the tick), as
        // in the force pass's proposals.
        let fp = ForceParams::from_cdna(&cdna);
        let settled: Vec<bool> = (0..n)
            .map(|s| {
                buf.density
                    .get(s)
                    .is_none_or(|&rho| fp.pressure(rho) <= 1.0)
            })
            .collect();
        let settled = &settled;
        pool.0.install(|| {
            (0..n.div_ceil(CHUNK))
                .into_par_iter()
                .flat_map_iter(|c| {
                    puffin::profile_scope!("propose_chunk");
                    let mut out = Vec::new();
                    for i in c * CHUNK..((c + 1) * CHUNK).min(n) {
                        let (idi, xi) = (ids[i], pos[i]);
                        if degree[i] >= max_degree || !settled[i] {
                            continue;
                        }
                        let linked = graph.neighbors(idi);
                        let mut best: Option<(f32, TokenId)> = None;
                        let mut near = Vec::new();
                        let row: &[u32] = match tree {
                            None => lists.row(i),
                            Some(t) => {
                                t.for_each_within(pos, xi, f2, |j, _| near.push(j));
                                &near
                            }
                        };
                        for &j in row {
                            let d2 = (pos[j as usize] - xi).length_squared();
                            if d2 >= f2 || j as usize == i {
                                continue;
                            }
                            let idj = ids[j as usize];
                            let closer = best.is_none_or(|(bd, bid)| (d2, idj) < (bd, bid));
                            if closer
                                && degree[j as usize] < max_degree
                                && settled[j as usize]
                                && !linked.contains(&idj)
                            {
                                best = Some((d2, idj));
                            }
                        }
                        if let Some((d2, idj)) = best {
                            let (a, b) = if idi < idj { (idi, idj) } else { (idj, idi) };
                            out.push((a, b, d2.sqrt()));
                        }
                    }
                    out
                })
                .collect()
        })
    };
    let mut proposals = proposals;
    proposals.sort_unstable_by_key(|&(a, b, _)| (a, b));
    proposals.dedup_by_key(|&mut (a, b, _)| (a, b));
    let max_degree = form_max_degree;
    let mut formed = 0u64;
    for (a, b, r) in proposals {
        if quotas.check(n as u64, graph.len(), 0, 1).is_err() {
            // Learned links never push the world past its quotas.
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
    stats.last_formed = formed;
    stats.links_formed += formed;
}
