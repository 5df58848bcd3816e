//! `Forces`: gather the tokens into contiguous arrays, keep the Verlet neighbour
//! lists valid, and compute every token's force (DESIGN §4, [`crate::physics`]) in
//! parallel: a density pass (each token's `ρ_i` over its neighbour row), then the
//! force pass, which reads the densities of both ends of every pair.

use crate::backend::ForceBackend;
use crate::geometry::spatial::{CHUNK, KdTree, NeighborList, SearchInput, Travel};
use crate::model::cdna::Cdna;
use crate::model::components::*;
use crate::model::config::{GpuTick, SimConfig};
use crate::model::math::Vec8;
use crate::model::registry::{LinkGraph, SpatialDirty};
use crate::physics::{
    ForceParams, LinkTable, TokenParams, density_weight, link_force, pair_force, slot_table,
};
use crate::schedule::{ComputePool, SimSystems, SimTick};
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use rayon::prelude::*;

/// Adds [`forces`] to `Forces`; when the app is finished (`App::finish`, after
/// every plugin is built), the [`ForceBackend`] that `SimConfig::backend` asks
/// for, unless the host inserted one of its own (before or after adding the
/// plugins). So the GPU device is opened once, in `finish`, and never for a
/// host that brings its own backend.
pub struct ForcesPlugin;

impl Plugin for ForcesPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ForceBuffers>()
            .add_systems(SimTick, forces.in_set(SimSystems::Forces));
    }

    fn finish(&self, app: &mut App) {
        if !app.world().contains_resource::<ForceBackend>() {
            let (asked, tick) = app
                .world()
                .get_resource::<SimConfig>()
                .map(|c| (c.backend, c.gpu_tick))
                .unwrap_or_default();
            if asked == crate::model::config::Backend::Cpu && tick == GpuTick::Assisted {
                tracing::warn!(
                    "gpu_tick = assisted has no effect on the cpu backend (it chooses what a GPU runs)"
                );
            }
            let mut backend = ForceBackend::resolve(asked);
            backend.set_gpu_tick(tick);
            app.insert_resource(backend);
        }
    }
}

/// Bytes held by [`ForceBuffers`], by part ([`ForceBuffers::heap_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForceBytes {
    /// Per-token arrays in slot order.
    pub gathered: u64,
    /// The Verlet neighbour rows.
    pub rows: u64,
    /// The k-d tree.
    pub tree: u64,
    /// The link table (slot order).
    pub links: u64,
}

/// Refits of the k-d tree between two builds of it, when rows are refreshed.
const TREE_REFITS: u32 = 8;

/// Counters of the force stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForceStats {
    /// Full neighbour-list rebuilds since the start.
    pub rebuilds: u64,
    /// Rows recomputed one by one (tokens that travelled past half the skin).
    pub refreshed_rows: u64,
    /// Ordered pairs within their cutoff in the last tick (each pair counts twice).
    pub pairs: u64,
    /// Candidates in the current neighbour lists.
    pub candidates: u64,
}

/// The gathered, contiguous view of the tokens the force stage works on. `forces[s]`
/// is the force on the token `ids[s]`; slots are in spatial order (see `slot`).
/// Integrators (CPU or GPU) read `forces` from here.
#[derive(Resource, Default)]
pub struct ForceBuffers {
    /// Token ids, slot order.
    pub ids: Vec<TokenId>,
    /// Slot of the k-th token of the ECS query: the arrays are kept in k-d tree
    /// order, so neighbours sit close in memory.
    pub slot: Vec<u32>,
    /// Positions, gathered order.
    pub positions: Vec<Vec8>,
    /// Charge, mass, radius, strength, gathered order.
    pub params: Vec<TokenParams>,
    /// Local densities `ρ` computed this tick (the density pass), gathered order.
    pub density: Vec<f32>,
    /// Forces computed this tick.
    pub forces: Vec<Vec8>,
    /// Verlet lists over the gathered order.
    pub neighbors: NeighborList,
    /// The k-d tree of the last full rebuild, refitted for row refreshes.
    tree: KdTree,
    /// Distance travelled since the lists were built (the integrator adds to it).
    pub travel: Travel,
    links: LinkTable,
    /// Bumped whenever slots are reassigned; cached tables keyed on it.
    layout: u64,
    links_key: Option<(u64, u64)>,
    /// The slot of each token id (`slot_table(&ids)`), rebuilt with `ids`.
    slot_of: Vec<u32>,
    /// The `LinkGraph::version` whose values the link table holds.
    link_values: u64,
    /// Refits of `tree` since it was built.
    tree_refits: u32,
    /// Counters.
    pub stats: ForceStats,
    /// `Learn`'s link proposals from this tick's pass (slot of the nearest
    /// unlinked partner within `form_within`, `u32::MAX` for none), and the
    /// `form_within` they were made for (`None`: not made).
    pub nearest: Vec<u32>,
    /// See `nearest`.
    pub proposed: Option<f32>,
    /// Whether the GPU computed this tick's forces (journaled with the tick,
    /// so that replay uses the same backend).
    pub gpu_pass: bool,
    /// What the resident GPU tick left for `Integrate` and `Constrain` when it
    /// ran this tick (then `Forces`, `Integrate` and the token rules of
    /// `Constrain` ran on the device; journaled, so that replay does too).
    pub resident: Option<ResidentOut>,
}

/// What a resident GPU tick leaves for the CPU stages, slot order (see
/// [`ForceBuffers::resident`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResidentOut {
    /// Positions after the tick: `Integrate` writes them to the tokens.
    pub positions: Vec<Vec8>,
    /// Velocities after the tick.
    pub velocities: Vec<Vec8>,
    /// Token-steps whose speed the integrator capped.
    pub speed_limited: u64,
    /// Largest distance a token moved.
    pub max_step: f32,
    /// `Constrain`'s corrections on the device: non-finite resets, position
    /// bounds, speed.
    pub non_finite: u64,
    /// See `non_finite`.
    pub bounds: u64,
    /// See `non_finite`.
    pub speed: u64,
    /// Whether the whole state was uploaded before the tick.
    pub uploaded: bool,
    /// Seconds of the device's tick, and of the readback after it (the rest
    /// of the `Forces` stage is the host's work).
    pub device_seconds: f64,
    /// See `device_seconds`.
    pub readback_seconds: f64,
}

impl ForceBuffers {
    /// The slot of each id in `ids`, indexed by id (`u32::MAX`: none); kept with
    /// the slots, so readers need not rebuild it every tick.
    pub fn slot_of(&self) -> &[u32] {
        &self.slot_of
    }

    /// Bytes on the heap, by part: the gathered per-token arrays (ids, slots,
    /// positions, parameters, densities, forces, proposals, travel), the
    /// Verlet rows, the k-d tree, the link table.
    pub fn heap_bytes(&self) -> ForceBytes {
        fn cap<T>(v: &Vec<T>) -> u64 {
            (v.capacity() * size_of::<T>()) as u64
        }
        ForceBytes {
            gathered: cap(&self.ids)
                + cap(&self.slot)
                + cap(&self.slot_of)
                + cap(&self.positions)
                + cap(&self.params)
                + cap(&self.density)
                + cap(&self.forces)
                + cap(&self.nearest)
                + self.travel.heap_bytes(),
            rows: self.neighbors.heap_bytes(),
            tree: self.tree.heap_bytes(),
            links: self.links.heap_bytes(),
        }
    }

    /// The slot of token `id` in the last pass, if it had one. Other stages
    /// place their gathered arrays in slot order through this, by id: their
    /// queries need not iterate the tokens in the force stage's query order
    /// (two queries over the same tokens may visit their tables in different
    /// orders).
    pub fn slot_by_id(&self, id: TokenId) -> Option<usize> {
        let s = *self.slot_of.get(usize::try_from(id.0).ok()?)?;
        (s != u32::MAX && self.ids.get(s as usize) == Some(&id)).then_some(s as usize)
    }

    /// The link table of the last pass (slot order).
    pub fn links(&self) -> &LinkTable {
        &self.links
    }

    /// The smallest field radius of the gathered tokens (infinity for none).
    pub fn min_radius(&self) -> f32 {
        self.params
            .iter()
            .map(|p| p.radius)
            .fold(f32::INFINITY, f32::min)
    }

    /// Whether the neighbour lists hold every pair of tokens now closer than
    /// `dist` (true for slotted data only). They hold every pair closer than
    /// `R_ij + skin` at their build, and each token has moved at most its path
    /// since, so this holds when `dist ≤ min R + skin − 2 · longest path`.
    pub fn lists_cover(&self, dist: f32) -> bool {
        let n = self.ids.len();
        if self.travel.invalid || self.travel.path.len() != n || self.neighbors.len() != n {
            return false;
        }
        let min_r = self.min_radius();
        // A NaN path (a token that went non-finite) voids the bound.
        let path = self.travel.path.iter().copied().fold(0.0f32, |a, p| {
            if p.is_nan() { f32::INFINITY } else { a.max(p) }
        });
        dist <= min_r + self.neighbors.skin() - 2.0 * path
    }

    /// Maps each token of `tokens` (query order) to its slot by id and gathers it
    /// there. Returns false, with the buffers half-written, when the ids are not
    /// exactly the slotted ones.
    fn remap_by_id<'a>(
        &mut self,
        tokens: impl Iterator<Item = (&'a TokenId, &'a Position, &'a Charge, &'a Mass, &'a Field)>,
    ) -> bool {
        puffin::profile_function!();
        let mut slot_of = slot_table(&self.ids);
        let mut slot = Vec::with_capacity(self.ids.len());
        for (id, pos, q, m, field) in tokens {
            let Some(s) = slot_of.get_mut(id.0 as usize) else {
                return false;
            };
            if *s == u32::MAX {
                return false;
            }
            slot.push(*s);
            self.positions[*s as usize] = pos.0;
            self.params[*s as usize] = params_of(q, m, field);
            // Each id maps to one slot; a second token with it fails above.
            *s = u32::MAX;
        }
        if slot.len() != self.ids.len() {
            return false;
        }
        self.slot = slot;
        true
    }

    /// Puts the slots in k-d tree order and rebuilds every neighbour row.
    fn rebuild_spatial(&mut self, skin: f32) {
        let n = self.ids.len();
        let tree = KdTree::build(&self.positions);
        let order = tree.order();
        self.ids = order.iter().map(|&o| self.ids[o as usize]).collect();
        self.positions = order.iter().map(|&o| self.positions[o as usize]).collect();
        self.params = order.iter().map(|&o| self.params[o as usize]).collect();
        let mut inv = vec![0u32; n];
        for (m, &o) in order.iter().enumerate() {
            inv[o as usize] = m as u32;
        }
        for s in self.slot.iter_mut() {
            *s = inv[*s as usize];
        }
        self.layout += 1;
        self.slot_of = slot_table(&self.ids);
        self.tree = tree.into_sorted();
        self.tree_refits = 0;
        let radii: Vec<f32> = self.params.iter().map(|p| p.radius).collect();
        let input = SearchInput {
            points: &self.positions,
            radii: &radii,
            ids: &self.ids,
            skin,
        };
        // Free the old lists first: the build's own transients are large enough.
        self.neighbors = NeighborList::default();
        self.neighbors = NeighborList::build_with(input, &self.tree);
        self.travel.reset(n);
    }
}

/// Computes every token's local density `ρ_i = Σ_j W(u_ij)` over its neighbour
/// row (ascending id, so bit-identical to
/// [`reference_densities`](crate::physics::reference_densities)), in parallel on
/// the current rayon pool. `density` has one entry per token.
///
/// # Panics
///
/// When `params`, `neighbors` or `density` do not cover exactly the tokens of
/// `positions`.
pub fn compute_densities(
    positions: &[Vec8],
    params: &[TokenParams],
    neighbors: &NeighborList,
    density: &mut [f32],
) {
    let n = positions.len();
    assert!(
        params.len() == n && neighbors.len() == n && density.len() == n,
        "compute_densities: {n} positions, {} params, {} neighbour rows, {} densities",
        params.len(),
        neighbors.len(),
        density.len()
    );
    let candidates = Candidates {
        positions,
        params,
        common: common_radius(params),
    };
    density
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| {
            puffin::profile_scope!("density_chunk");
            let mut within: Vec<(f32, f32)> = Vec::new();
            for (k, rho) in out.iter_mut().enumerate() {
                let i = c * CHUNK + k;
                let (xi, pi) = (positions[i], &params[i]);
                // Pass 1, branch-free: keep `(r², cutoff)` of the candidates
                // within their cutoff, in row order (a third of them at the
                // default skin). Computing every candidate's weight, or a
                // branch per candidate (often mispredicted), costs 2.5 times
                // as much: the weight has a division.
                let row = neighbors.row(i);
                if within.len() < row.len() {
                    within.resize(row.len(), (0.0, 0.0));
                }
                let n = candidates.within(row, xi, pi.radius, &mut within, |_, r2, c| (r2, c));
                // Pass 2: their weights, in the same (id) order. The candidates
                // left out would add exactly 0 to a sum that starts at +0.
                let mut sum = 0.0f32;
                for &(r2, cutoff) in &within[..n] {
                    sum += density_weight(r2, cutoff).unwrap_or(0.0);
                }
                *rho = sum;
            }
        });
}

/// Computes `forces[i]` for every token from the neighbour lists, the densities
/// of [`compute_densities`] and the link table, in parallel on the current rayon
/// pool. Returns the ordered pair count.
pub fn compute_forces(
    positions: &[Vec8],
    params: &[TokenParams],
    density: &[f32],
    neighbors: &NeighborList,
    links: &LinkTable,
    fp: &ForceParams,
    forces: &mut [Vec8],
) -> u64 {
    compute_forces_proposing(
        positions, params, density, neighbors, links, fp, forces, None,
    )
}

/// What the force pass proposes to `Learn` while it visits the pairs: for each
/// token, its nearest partner closer than `sqrt(within2)` that it has no link
/// to, both having fewer than `max_degree` links and a local density at most the
/// target (`ρ ≤ ρ₀`: links form in settled fields, not in a crowd that is still
/// spreading out) (ties: the smaller id). Valid when `sqrt(within2)` is at most
/// every token's field radius, as the pass only sees pairs within their cutoff.
pub struct Proposals<'a> {
    /// Squared formation distance.
    pub within2: f32,
    /// Fewer links than this on both ends.
    pub max_degree: usize,
    /// Token ids, slot order (for ties).
    pub ids: &'a [TokenId],
    /// Out: the partner's slot per slot, `u32::MAX` for none.
    pub nearest: &'a mut [u32],
}

/// [`compute_forces`], also filling `proposals` when given.
///
/// # Panics
///
/// When `params`, `density`, `neighbors`, `forces` or the proposals' `nearest`
/// do not cover exactly the tokens of `positions`.
#[allow(clippy::too_many_arguments)]
pub fn compute_forces_proposing(
    positions: &[Vec8],
    params: &[TokenParams],
    density: &[f32],
    neighbors: &NeighborList,
    links: &LinkTable,
    fp: &ForceParams,
    forces: &mut [Vec8],
    proposals: Option<Proposals<'_>>,
) -> u64 {
    let n = positions.len();
    assert!(
        params.len() == n && density.len() == n && neighbors.len() == n && forces.len() == n,
        "compute_forces: {n} positions, {} params, {} densities, {} neighbour rows, {} forces",
        params.len(),
        density.len(),
        neighbors.len(),
        forces.len()
    );
    if let Some(p) = &proposals {
        assert_eq!(
            p.nearest.len(),
            n,
            "compute_forces: proposals for another world"
        );
    }
    let candidates = Candidates {
        positions,
        params,
        common: common_radius(params),
    };
    let (within2, max_degree, ids) = proposals
        .as_ref()
        .map_or((0.0, 0, &[][..]), |p| (p.within2, p.max_degree, p.ids));
    let chunk = |c: usize, out: &mut [Vec8], mut near: Option<&mut [u32]>| -> u64 {
        puffin::profile_scope!("force_chunk");
        let mut pairs = 0u64;
        let mut within: Vec<u32> = Vec::new();
        for (k, f) in out.iter_mut().enumerate() {
            let i = c * CHUNK + k;
            let (xi, pi) = (positions[i], &params[i]);
            let pressure_i = fp.pressure(density[i]);
            // Pass 1, branch-free: keep the candidates within their cutoff (the
            // same test `pair_force` makes), in row order. An unpredictable
            // branch per candidate costs more than the arithmetic.
            let row = neighbors.row(i);
            if within.len() < row.len() {
                within.resize(row.len(), 0);
            }
            let n = candidates.within(row, xi, pi.radius, &mut within, |j, _, _| j);
            // Pass 2: the forces of the pairs, in the same (id) order, and the
            // nearest unlinked partner for `Learn`.
            let lrow = links.row(i);
            let propose = near.is_some() && lrow.len() < max_degree && pressure_i <= 1.0;
            let mut best: Option<(f32, TokenId, u32)> = None;
            let mut acc = Vec8::ZERO;
            for &j in &within[..n] {
                let j = j as usize;
                let pressure_j = fp.pressure(density[j]);
                if let Some(fij) =
                    pair_force(xi, pi, pressure_i, positions[j], &params[j], pressure_j, fp)
                {
                    acc += fij;
                }
                if propose {
                    let d2 = (positions[j] - xi).length_squared();
                    if d2 < within2
                        && pressure_j <= 1.0
                        && best.is_none_or(|(bd, bid, _)| (d2, ids[j]) < (bd, bid))
                        && links.row(j).len() < max_degree
                        && !lrow.iter().any(|l| l.other as usize == j)
                    {
                        best = Some((d2, ids[j], j as u32));
                    }
                }
            }
            if let Some(near) = near.as_deref_mut() {
                near[k] = best.map_or(u32::MAX, |b| b.2);
            }
            pairs += n as u64;
            for l in lrow {
                acc += link_force(
                    xi,
                    positions[l.other as usize],
                    fp.k_link * l.weight,
                    l.rest,
                );
            }
            *f = acc;
        }
        pairs
    };
    match proposals {
        None => forces
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, out)| chunk(c, out, None))
            .sum(),
        Some(p) => forces
            .par_chunks_mut(CHUNK)
            .zip(p.nearest.par_chunks_mut(CHUNK))
            .enumerate()
            .map(|(c, (out, near))| chunk(c, out, Some(near)))
            .sum(),
    }
}

/// What the passes' cutoff filter reads.
struct Candidates<'a> {
    positions: &'a [Vec8],
    params: &'a [TokenParams],
    /// [`common_radius`] of `params`.
    common: Option<f32>,
}

impl Candidates<'_> {
    /// Writes `keep(j, r², cutoff)` of the candidates `j` of `row` within
    /// their cutoff of a token at `xi` with radius `ri` (the test
    /// `pair_force` makes: `r² < max(R_i, R_j)²`, false for NaN) to the front
    /// of `out`, in row order, and returns how many. Branch-free: every
    /// candidate is written and the count advances by the test, as an
    /// unpredictable branch per candidate costs more than the arithmetic.
    /// With one radius for all, no candidate's parameters are loaded.
    #[inline(always)]
    fn within<T>(
        &self,
        row: &[u32],
        xi: Vec8,
        ri: f32,
        out: &mut [T],
        keep: impl Fn(u32, f32, f32) -> T,
    ) -> usize {
        let mut n = 0;
        if let Some(r) = self.common {
            let c2 = r * r;
            for &j in row {
                let r2 = (self.positions[j as usize] - xi).length_squared();
                out[n] = keep(j, r2, r);
                n += (r2 < c2) as usize;
            }
        } else {
            for &j in row {
                let pj = &self.params[j as usize];
                let r2 = (self.positions[j as usize] - xi).length_squared();
                let cutoff = ri.max(pj.radius);
                out[n] = keep(j, r2, cutoff);
                n += (r2 < cutoff * cutoff) as usize;
            }
        }
        n
    }
}

/// The field radius every token has, if they all have one (bit for bit):
/// then every pair's cutoff is that radius, and the passes' filters need not
/// load a candidate's parameters (one cache line per candidate instead of two;
/// the scenarios' tokens all have radius 1).
fn common_radius(params: &[TokenParams]) -> Option<f32> {
    let r = params.first()?.radius;
    params
        .iter()
        .all(|p| p.radius.to_bits() == r.to_bits())
        .then_some(r)
}

fn params_of(q: &Charge, m: &Mass, field: &Field) -> TokenParams {
    TokenParams {
        charge: q.0,
        mass: m.0,
        radius: field.radius,
        strength: field.strength,
    }
}

/// The tokens with what the resident GPU tick reads of them.
pub type MovingTokens<'w, 's> = Query<
    'w,
    's,
    (
        &'static TokenId,
        &'static Position,
        &'static Velocity,
        &'static Charge,
        &'static Mass,
        &'static Field,
    ),
>;

/// The tokens in a group (`group_pull`'s).
pub type GroupedTokens<'w, 's> = Query<'w, 's, (&'static TokenId, &'static Mass, &'static ChildOf)>;

/// The groups' centres.
pub type GroupCentres<'w, 's> =
    Query<'w, 's, &'static Position, With<crate::geometry::hierarchy::GroupId>>;

/// The force system: gathers the tokens, keeps the neighbour lists and the link
/// table current (on the CPU), then computes the forces on the backend of
/// [`ForceBackend`] (the CPU without one); a GPU pass that fails is redone on
/// the CPU.
#[allow(clippy::too_many_arguments)]
pub fn forces(
    tokens: Query<(&TokenId, &Position, &Charge, &Mass, &Field)>,
    moving: MovingTokens,
    grouped: GroupedTokens,
    groups: GroupCentres,
    mut buf: ResMut<ForceBuffers>,
    mut dirty: ResMut<SpatialDirty>,
    cdna: Res<Cdna>,
    config: Res<SimConfig>,
    graph: Res<LinkGraph>,
    pool: Res<ComputePool>,
    mut backend: Option<ResMut<ForceBackend>>,
    mut warned: Local<bool>,
) {
    crate::profile_system!("forces");
    if backend.is_none() && config.backend != crate::model::config::Backend::Cpu && !*warned {
        *warned = true;
        tracing::warn!(
            asked = config.backend.name(),
            "no ForceBackend resource (the app was never finished): forces run on the CPU"
        );
    }
    let buf = &mut *buf;
    buf.resident = None;
    #[cfg(feature = "gpu")]
    if let Some(backend) = backend.as_deref_mut()
        && resident_tick(
            buf,
            backend,
            &moving,
            (&grouped, &groups),
            (&cdna, &config, &graph),
        )
    {
        dirty.0 = false;
        return;
    }
    #[cfg(not(feature = "gpu"))]
    let _ = (&moving, &grouped, &groups);
    let n = tokens.iter().len();
    let order_changed = buf.gather(&tokens);
    buf.forces.resize(n, Vec8::ZERO);
    buf.density.resize(n, 0.0);
    let fp = ForceParams::from_cdna(&cdna);
    pool.0.install(|| {
        if buf.keep_neighbors(order_changed || dirty.0, config.neighbor_skin) {
            dirty.0 = false;
        }
        buf.keep_link_table(&graph);
        // Learn's link proposals ride along when every pair closer than
        // `form_within` is a pair of this pass (within everyone's radius).
        let g = &cdna.graph;
        let propose = g.form_within > 0.0 && g.form_within <= buf.min_radius();
        buf.proposed = propose.then_some(g.form_within);
        buf.nearest.resize(if propose { n } else { 0 }, u32::MAX);
        let max_degree = g.form_max_degree.min(g.max_degree);
        let within2 = g.form_within * g.form_within;
        buf.gpu_pass = false;

        #[cfg(feature = "gpu")]
        if let Some(backend) = backend.as_deref_mut()
            && let Some(gpu) = backend.gpu_mut()
        {
            puffin::profile_scope!("gpu_forces");
            let links_key = (buf.layout, graph.structure_version());
            let result = gpu.compute(crate::backend::gpu::ForceInput {
                positions: &buf.positions,
                params: &buf.params,
                neighbors: &mut buf.neighbors,
                links: &buf.links,
                links_key,
                fp: &fp,
                proposals: propose.then_some((within2, max_degree)),
                density: &mut buf.density,
                forces: &mut buf.forces,
                nearest: &mut buf.nearest,
            });
            match result {
                Ok(pairs) => {
                    buf.stats.pairs = pairs;
                    buf.gpu_pass = n > 0;
                    return;
                }
                Err(e) => backend.failed(e.to_string()),
            }
        }
        #[cfg(not(feature = "gpu"))]
        let _ = &mut backend;

        {
            puffin::profile_scope!("densities");
            compute_densities(
                &buf.positions,
                &buf.params,
                &buf.neighbors,
                &mut buf.density,
            );
        }
        puffin::profile_scope!("pair_forces");
        let proposals = propose.then(|| Proposals {
            within2,
            max_degree: max_degree as usize,
            ids: &buf.ids,
            nearest: &mut buf.nearest,
        });
        buf.stats.pairs = compute_forces_proposing(
            &buf.positions,
            &buf.params,
            &buf.density,
            &buf.neighbors,
            &buf.links,
            &fp,
            &mut buf.forces,
            proposals,
        );
    });
}

/// Runs the tick on the device when `backend` runs resident ticks; returns
/// whether it did. When the device refuses, says why and leaves the tick to
/// the assisted pass (a world too large for its bindings: from now on; a
/// state it refuses: this tick) or, when it failed, to the CPU.
#[cfg(feature = "gpu")]
fn resident_tick(
    buf: &mut ForceBuffers,
    backend: &mut ForceBackend,
    moving: &MovingTokens,
    grouped: (&GroupedTokens, &GroupCentres),
    (cdna, config, graph): (&Cdna, &SimConfig, &LinkGraph),
) -> bool {
    use crate::backend::gpu::GpuError;
    if moving.is_empty() {
        return false;
    }
    let Some(engine) = backend.resident_mut() else {
        return false;
    };
    match resident_pass(buf, moving, grouped, engine, cdna, config, graph) {
        Ok(()) => return true,
        // The world does not fit the device's bindings: the assisted pass
        // (which splits its rows) takes over for good.
        Err(e @ (GpuError::TooLarge { .. } | GpuError::TooManyTokens { .. })) => {
            backend.refuse_resident(e.to_string())
        }
        // A state the device refuses (a non-finite velocity a user system
        // wrote): this tick runs assisted and `Constrain` repairs it.
        Err(GpuError::BadInput(e)) => tracing::warn!(
            target: "neurograph::gpu",
            "the resident GPU tick refused the state ({e}); this tick computes forces only"
        ),
        Err(e) => backend.failed(e.to_string()),
    }
    false
}

/// The resident GPU tick of `Forces` (with `Integrate` and `Constrain`'s token
/// rules, on the device): gathers the tokens in id order (the device's slot
/// order), hands the state to the [`ResidentEngine`](crate::backend::gpu::ResidentEngine)
/// (which uploads it only when it is not what the device left), and leaves
/// the densities, proposals and the new positions and velocities in `buf`.
#[cfg(feature = "gpu")]
fn resident_pass(
    buf: &mut ForceBuffers,
    tokens: &MovingTokens,
    (grouped, groups): (&GroupedTokens, &GroupCentres),
    engine: &mut crate::backend::gpu::ResidentEngine,
    cdna: &Cdna,
    config: &SimConfig,
    graph: &LinkGraph,
) -> Result<(), crate::backend::gpu::GpuError> {
    use crate::backend::gpu::resident::ResidentParams;
    puffin::profile_scope!("gpu_resident");
    let host = gather_by_id(tokens, engine.ids(), engine.slot_of());
    if buf.ids != host.ids {
        buf.ids.clone_from(&host.ids);
        buf.slot_of = slot_table(&buf.ids);
        buf.layout += 1;
    }
    let pull = group_pulls(grouped, groups, &buf.slot_of, cdna.hierarchy.group_pull);
    // The CPU's lists are not kept: a later CPU or assisted tick lays the
    // slots out and builds them again.
    buf.slot.clear();
    if !buf.neighbors.is_empty() {
        buf.neighbors = NeighborList::default();
        buf.tree = KdTree::default();
    }
    buf.travel.path.clear();
    buf.positions.clone_from(&host.positions);
    buf.params.clone_from(&host.params);
    buf.keep_link_table(graph);
    let g = &cdna.graph;
    let propose = g.form_within > 0.0 && g.form_within <= buf.min_radius();
    let max_degree = g.form_max_degree.min(g.max_degree);
    let proposals = propose.then_some((g.form_within * g.form_within, max_degree));
    let out = engine.tick(
        host,
        ResidentParams::new(cdna, config),
        &buf.links,
        proposals,
        pull,
    )?;
    buf.density = out.read.density;
    buf.forces.clear();
    buf.nearest = if propose {
        out.read.nearest
    } else {
        Vec::new()
    };
    buf.proposed = propose.then_some(g.form_within);
    buf.stats.pairs = out.read.pairs;
    buf.gpu_pass = true;
    buf.resident = Some(ResidentOut {
        positions: out.read.positions,
        velocities: out.read.velocities,
        speed_limited: out.speed_limited,
        max_step: out.stats.max_step,
        non_finite: out.non_finite,
        bounds: out.bounds,
        speed: out.speed,
        uploaded: out.loaded,
        device_seconds: out.device_seconds,
        readback_seconds: out.readback_seconds,
    });
    Ok(())
}

/// The group pull of every grouped token (`group_pull`'s rule, for the device):
/// (slot, centre and `k·m`), sorted by slot; empty when `k` is 0.
#[cfg(feature = "gpu")]
fn group_pulls(
    grouped: &GroupedTokens,
    groups: &GroupCentres,
    slot_of: &[u32],
    k: f32,
) -> Vec<(u32, crate::backend::gpu::resident::GroupPull)> {
    use crate::backend::gpu::resident::GroupPull;
    if k == 0.0 || grouped.is_empty() {
        return Vec::new();
    }
    puffin::profile_scope!("group_pulls");
    let mut out: Vec<(u32, GroupPull)> = grouped
        .iter()
        .filter_map(|(id, m, parent)| {
            let s = *slot_of.get(id.0 as usize)?;
            let c = groups.get(parent.parent()).ok()?;
            (s != u32::MAX).then_some((
                s,
                GroupPull {
                    centre: c.0,
                    coefficient: k * m.0,
                    pad: [0.0; 3],
                },
            ))
        })
        .collect();
    out.sort_unstable_by_key(|g| g.0);
    out
}

/// The tokens in increasing id order: through `slot_of` when they are the
/// tokens of `ids`, else sorted afresh.
#[cfg(feature = "gpu")]
fn gather_by_id(
    tokens: &MovingTokens,
    ids: &[TokenId],
    slot_of: &[u32],
) -> crate::backend::gpu::HostState {
    puffin::profile_scope!("gather_by_id");
    let n = tokens.iter().len();
    if ids.len() == n {
        let mut positions = vec![Vec8::ZERO; n];
        let mut velocities = vec![Vec8::ZERO; n];
        let mut params = vec![TokenParams::default(); n];
        // n tokens, each with a slot no other took, fill every slot once.
        let mut taken = vec![false; n];
        let all = tokens
            .iter()
            .all(|(id, x, v, q, m, f)| match slot_of.get(id.0 as usize) {
                Some(&s) if s != u32::MAX && !std::mem::replace(&mut taken[s as usize], true) => {
                    let s = s as usize;
                    positions[s] = x.0;
                    velocities[s] = v.0;
                    params[s] = params_of(q, m, f);
                    true
                }
                _ => false,
            });
        if all {
            return crate::backend::gpu::HostState {
                ids: ids.to_vec(),
                positions,
                velocities,
                params,
            };
        }
    }
    let mut all: Vec<_> = tokens
        .iter()
        .map(|(id, x, v, q, m, f)| (*id, x.0, v.0, params_of(q, m, f)))
        .collect();
    all.sort_unstable_by_key(|t| t.0);
    crate::backend::gpu::HostState {
        ids: all.iter().map(|t| t.0).collect(),
        positions: all.iter().map(|t| t.1).collect(),
        velocities: all.iter().map(|t| t.2).collect(),
        params: all.iter().map(|t| t.3).collect(),
    }
}

impl ForceBuffers {
    /// Copies the tokens' positions and parameters into their slots; when the
    /// tokens are not those of the slots (spawns, despawns), lays the slots
    /// out anew. Returns whether the layout changed.
    fn gather(&mut self, tokens: &Query<(&TokenId, &Position, &Charge, &Mass, &Field)>) -> bool {
        puffin::profile_scope!("gather");
        let n = tokens.iter().len();
        let mut order_changed = n != self.ids.len() || n != self.slot.len();
        if !order_changed {
            for (k, (id, pos, q, m, field)) in tokens.iter().enumerate() {
                let s = self.slot[k] as usize;
                if self.ids[s] != *id {
                    order_changed = true;
                    break;
                }
                self.positions[s] = pos.0;
                self.params[s] = params_of(q, m, field);
            }
        }
        if order_changed && n == self.ids.len() && n > 0 {
            // Same count, other order: entities moved between tables (e.g. a
            // `ChildOf` added by `Organize`). If the ids are the same set, only the
            // query-to-slot map changes; the lists stay valid.
            order_changed = !self.remap_by_id(tokens.iter());
        }
        if order_changed {
            self.ids.clear();
            self.positions.clear();
            self.params.clear();
            for (id, pos, q, m, field) in tokens.iter() {
                self.ids.push(*id);
                self.positions.push(pos.0);
                self.params.push(params_of(q, m, field));
            }
            self.slot = (0..n as u32).collect();
            self.layout += 1;
            self.slot_of = slot_table(&self.ids);
        }
        order_changed
    }

    /// Keeps the Verlet rows valid: a full rebuild when `invalid` (new layout,
    /// dirty world), the skin changed, or more than an eighth of the tokens
    /// moved past half the skin; else a refresh of the rows of those that did.
    /// Returns whether it rebuilt.
    fn keep_neighbors(&mut self, invalid: bool, skin: f32) -> bool {
        let n = self.ids.len();
        let full = invalid
            || self.neighbors.len() != n
            || self.neighbors.skin() != skin
            || self.travel.path.len() != n
            || self.travel.invalid;
        let stale = if full {
            Vec::new()
        } else {
            self.travel.past_half_skin(skin)
        };
        if full || stale.len() > n / 8 {
            puffin::profile_scope!("rebuild_neighbors");
            self.rebuild_spatial(skin);
            self.stats.rebuilds += 1;
            self.stats.candidates = self.neighbors.candidates() as u64;
            return true;
        }
        if !stale.is_empty() {
            puffin::profile_scope!("refresh_neighbors");
            let radii: Vec<f32> = self.params.iter().map(|p| p.radius).collect();
            // A refitted tree keeps its old partition, whose boxes overlap more
            // and more as the tokens move: after TREE_REFITS refits it is built
            // afresh. At 100K `uniform` tokens (ticks 400–600) a build costs 8 ms
            // and makes a tick's row queries 28 → 17 ms.
            if self.tree_refits >= TREE_REFITS || self.tree.len() != n {
                self.tree = KdTree::build(&self.positions);
                self.tree_refits = 0;
            } else {
                self.tree.refit(&self.positions);
                self.tree_refits += 1;
            }
            let input = SearchInput {
                points: &self.positions,
                radii: &radii,
                ids: &self.ids,
                skin,
            };
            self.neighbors.refresh(input, &self.tree, &stale);
            self.travel.clear(&stale);
            self.stats.refreshed_rows += stale.len() as u64;
            self.stats.candidates = self.neighbors.candidates() as u64;
        }
        false
    }

    /// Keeps the link table in step with the graph: rebuilt when the links or
    /// the layout changed, values rewritten in place when only weights did.
    fn keep_link_table(&mut self, graph: &LinkGraph) {
        let links_key = (self.layout, graph.structure_version());
        if self.links_key != Some(links_key) {
            puffin::profile_scope!("link_table");
            self.links.rebuild(
                &self.ids,
                &self.slot_of,
                graph
                    .iter()
                    .map(|(&(a, b), l)| (a, b, l.weight, l.rest_length)),
            );
            self.links_key = Some(links_key);
            self.link_values = graph.version();
        } else if self.link_values != graph.version() {
            // Same links, new weights (learning): rewrite them in place.
            puffin::profile_scope!("link_values");
            self.links
                .refresh_values(graph.iter().map(|(_, l)| (l.weight, l.rest_length)));
            self.link_values = graph.version();
        }
    }
}
