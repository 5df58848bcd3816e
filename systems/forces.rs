//! `Forces`: gather the tokens into contiguous arrays, keep the Verlet neighbour
//! lists valid, and compute every token's force (DESIGN §4) in parallel.

use crate::cdna::Cdna;
use crate::components::*;
use crate::config::SimConfig;
use crate::math::Vec8;
use crate::physics::{ForceParams, LinkTable, TokenParams, link_force, pair_force};
use crate::plugin::{ComputePool, SimSystems, SimTick};
use crate::registry::{LinkGraph, SpatialDirty};
use crate::spatial::{CHUNK, NeighborList};
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use rayon::prelude::*;

/// Adds [`cpu_forces`] to `Forces`.
pub struct CpuForcesPlugin;

impl Plugin for CpuForcesPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ForceBuffers>()
            .add_systems(SimTick, cpu_forces.in_set(SimSystems::Forces));
    }
}

/// Counters of the force stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForceStats {
    /// Neighbour-list rebuilds since the start.
    pub rebuilds: u64,
    /// Ordered pairs within their cutoff in the last tick (each pair counts twice).
    pub pairs: u64,
    /// Candidates in the current neighbour lists.
    pub candidates: u64,
}

/// The gathered, contiguous view of the tokens the force stage works on. `forces[i]`
/// is the force on the token `ids[i]`; the order is the ECS query order of this tick.
/// Integrators (CPU or GPU) read `forces` from here.
#[derive(Resource, Default)]
pub struct ForceBuffers {
    /// Token ids, gathered order.
    pub ids: Vec<TokenId>,
    /// Positions, gathered order.
    pub positions: Vec<Vec8>,
    /// Charge, mass, radius, strength, gathered order.
    pub params: Vec<TokenParams>,
    /// Forces computed this tick.
    pub forces: Vec<Vec8>,
    /// Verlet lists over the gathered order.
    pub neighbors: NeighborList,
    links: LinkTable,
    links_version: Option<u64>,
    /// Counters.
    pub stats: ForceStats,
}

/// Computes `forces[i]` for every token from the neighbour lists and the link table,
/// in parallel on the current rayon pool. Returns the ordered pair count.
pub fn compute_forces(
    positions: &[Vec8],
    params: &[TokenParams],
    neighbors: &NeighborList,
    links: &LinkTable,
    fp: &ForceParams,
    forces: &mut [Vec8],
) -> u64 {
    forces
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(c, out)| {
            puffin::profile_scope!("force_chunk");
            let mut pairs = 0u64;
            for (k, f) in out.iter_mut().enumerate() {
                let i = c * CHUNK + k;
                let (xi, pi) = (positions[i], &params[i]);
                let mut acc = Vec8::ZERO;
                for &j in neighbors.row(i) {
                    let j = j as usize;
                    if let Some(fij) = pair_force(xi, pi, positions[j], &params[j], fp) {
                        acc += fij;
                        pairs += 1;
                    }
                }
                for l in links.row(i) {
                    acc += link_force(xi, positions[l.other as usize], fp.k_link * l.weight, l.rest);
                }
                *f = acc;
            }
            pairs
        })
        .sum()
}

/// The CPU force system.
#[allow(clippy::too_many_arguments)]
pub fn cpu_forces(
    tokens: Query<(&TokenId, &Position, &Charge, &Mass, &Field)>,
    mut buf: ResMut<ForceBuffers>,
    mut dirty: ResMut<SpatialDirty>,
    cdna: Res<Cdna>,
    config: Res<SimConfig>,
    graph: Res<LinkGraph>,
    pool: Res<ComputePool>,
) {
    puffin::profile_function!();
    let buf = &mut *buf;
    let mut order_changed = false;
    let mut n = 0;
    {
        puffin::profile_scope!("gather");
        for (i, (id, pos, q, m, field)) in tokens.iter().enumerate() {
            let p = TokenParams { charge: q.0, mass: m.0, radius: field.radius, strength: field.strength };
            if i < buf.ids.len() {
                if buf.ids[i] != *id {
                    buf.ids[i] = *id;
                    order_changed = true;
                }
                buf.positions[i] = pos.0;
                buf.params[i] = p;
            } else {
                buf.ids.push(*id);
                buf.positions.push(pos.0);
                buf.params.push(p);
                order_changed = true;
            }
            n = i + 1;
        }
    }
    if n < buf.ids.len() {
        buf.ids.truncate(n);
        buf.positions.truncate(n);
        buf.params.truncate(n);
        order_changed = true;
    }
    buf.forces.resize(n, Vec8::ZERO);
    let fp = ForceParams::from_cdna(&cdna);
    pool.0.install(|| {
        if order_changed || dirty.0 || buf.neighbors.len() != n || buf.neighbors.needs_rebuild() {
            puffin::profile_scope!("rebuild_neighbors");
            let radii: Vec<f32> = buf.params.iter().map(|p| p.radius).collect();
            buf.neighbors = NeighborList::build(&buf.positions, &radii, &buf.ids, config.neighbor_skin);
            buf.stats.rebuilds += 1;
            buf.stats.candidates = buf.neighbors.candidates() as u64;
            dirty.0 = false;
        }
        if order_changed || buf.links_version != Some(graph.version()) {
            buf.links = LinkTable::build(
                &buf.ids,
                graph.iter().map(|(&(a, b), l)| (a, b, l.weight, l.rest_length)),
            );
            buf.links_version = Some(graph.version());
        }
        puffin::profile_scope!("pair_forces");
        buf.stats.pairs = compute_forces(
            &buf.positions,
            &buf.params,
            &buf.neighbors,
            &buf.links,
            &fp,
            &mut buf.forces,
        );
    });
}
