//! The physics of DESIGN §4, as plain functions shared by every backend, and the
//! O(N²) reference the fast path is tested against.
//!
//! # The law: many-body DPD with a density-dependent repulsion
//!
//! For a pair `i, j` with `d = x_j − x_i`, `r = |d|`, cutoff `R_ij = max(R_i, R_j)` and
//! `u = r / R_ij < 1`, two dimensionless weights (D = 8, the dimension):
//!
//! | weight | formula | role |
//! |--------|---------|------|
//! | density weight `W(u)` | `(1 − u⁸)²` | what a neighbour adds to the local density |
//! | force weight `w(u)`   | `−dW/du = 16 u⁷ (1 − u⁸)` | the profile of every pair force |
//!
//! Each token's **local density** is `ρ_i = Σ_j W(u_ij)` over its neighbours within
//! the cutoff, and its **pressure** is `p_i = (ρ_i / ρ₀)²`, where `ρ₀` is the target
//! density ([`target_density`]: the CDNA's `physics.target_neighbors` times
//! [`DENSITY_PER_NEIGHBOR`]). Then, on token *i*:
//!
//! | term | force on *i* | when |
//! |------|--------------|------|
//! | field and density | `+[k_field · s_i s_j · q_i q_j · m_j − k_density · (p_i + p_j)/2] · w(u) · d/r` | `0 < r < R_ij` |
//! | core  | `−k_core · (1 − r/σ)² · d/r` | `0 < r < min(σ, R_ij)` |
//! | link  | `+k_link · w_ij · (r − L_ij) · d/r` | `r > 0`, per link |
//!
//! A like-charged pair attracts while the two tokens' mean pressure is below
//! `k_field · s_i s_j q_i q_j m_j / k_density` and repels above it; an opposite pair
//! always repels. With the defaults (`k_density = k_field`) a field of fully charged,
//! unit-mass tokens comes to rest where `p = 1`, that is at `ρ = ρ₀`: the density is
//! a set point, not an outcome of the initial conditions.
//!
//! **Why this law.** It is the many-body dissipative particle dynamics of
//! Pagonabarraga & Frenkel (J. Chem. Phys. 115, 5015, 2001) — a potential
//! `U = Σ_i ψ(ρ_i)` of the local densities — together with a pair attraction, as in
//! Warren's many-body DPD (Phys. Rev. E 68, 066702, 2003), noise-free (the integrator
//! damps). For tokens of one radius and one mass the pair terms are `−R · ∇U` of
//!
//! `U = Σ_i (k_density ρ₀ / 6) (ρ_i/ρ₀)³ − Σ_{i<j} k_field s_i s_j q_i q_j m W(u_ij) + U_core`,
//!
//! and `U` is bounded below by `−N · (k_field m)^{3/2} ρ₀ / (3 √k_density)`
//! (each attraction term is at most `k_field m W`, and `Σ_j W = ρ_i`; minimise the
//! cubic per token), so the law is H-stable in Ruelle's sense: no group can collapse
//! into an ever-denser blob. The first version of this law, a bounded soft core
//! under a pair attraction, was not: in 8D the core ball holds (σ/R)⁸ ≈ 0.07% of
//! the field ball, and groups contracted until every member saw every other.
//!
//! Two choices are specific to eight dimensions:
//!
//! - **The weight `W = (1 − u⁸)²`**, where `u⁸` is the fraction of the field ball's
//!   volume closer than `r`. In 8D 83% of that volume lies beyond `u = 0.8`; weights
//!   peaked at the centre (Warren's `(1 − u)²`, the Lucy kernel) give those
//!   neighbours under 4% and cannot see most of the field, so the neighbour count
//!   drifts far from the density they control. `W` keeps every neighbour's weight
//!   above ½ up to `u = 0.86`, and its mean over a uniform ball is exactly ⅓. It
//!   needs no square root (`u⁸ = (r²/R²)⁴`), nor does the force profile
//!   (`w(u)/r = 16 u⁶ (1 − u⁸) / R`).
//! - **The soft core stays**, as excluded volume: one neighbour at contact adds
//!   `W(0)/ρ₀ ≈ 0.06` to `ρ/ρ₀`, too little for the density term to keep two tokens
//!   apart, so without it pairs and triples of tokens would fuse. It is a positive
//!   pair potential and does not affect the bound above.
//!
//! The pressure is quadratic (`ψ` cubic, a third-order virial expansion) rather than
//! linear as in Warren's form so that fields of partly charged tokens still settle
//! near the target: the rest density is `ρ₀ · √(k_field c / k_density)` for a mean
//! coupling `c = s_i s_j q_i q_j m_j`, so `c = 0.56` (charges uniform in [0.5, 1])
//! gives 0.75 ρ₀ instead of 0.56 ρ₀.
//!
//! # Calibration
//!
//! `ρ₀` is a density, the target a number of neighbours within the cutoff; the two
//! are tied by the structure the law settles into, which has more near neighbours
//! than a uniform ball (whose mean `W` would make the factor ⅓).
//! [`DENSITY_PER_NEIGHBOR`] was measured: `examples/calibrate_density.rs` settles
//! 2,000 like-charged tokens from a ball of radius 0.05 under several targets and
//! reports the mean neighbour count at rest and the factor each count implies
//! (see `docs/physics.md` for the run).
//!
//! # Order of summation
//!
//! Coincident tokens (`r = 0`) count as a pair but exert no force: the direction
//! `d/r` is undefined. Each token's density and force are sums in a fixed order —
//! pair terms by ascending neighbour [`TokenId`], then link terms by ascending partner
//! id — so the result is bit-identical whatever the thread count or the spatial index.

use crate::model::cdna::Cdna;
use crate::model::components::TokenId;
use crate::model::math::Vec8;

/// The target density `ρ₀` per target neighbour: `ρ₀ = target_neighbors ×
/// DENSITY_PER_NEIGHBOR`. Calibrated in 8D with the default CDNA (see the module
/// docs); a uniform ball would give ⅓.
pub const DENSITY_PER_NEIGHBOR: f32 = 0.52;

/// The target density `ρ₀` (in units of the density weight `W`) for a target
/// number of neighbours within the cutoff.
pub fn target_density(target_neighbors: f32) -> f32 {
    target_neighbors * DENSITY_PER_NEIGHBOR
}

/// The per-token values the pair force reads, gathered contiguously (and uploaded
/// to the GPU as they are: a `vec4<f32>` per token).
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct TokenParams {
    /// Charge `q`.
    pub charge: f32,
    /// Mass `m`.
    pub mass: f32,
    /// Field radius `R`.
    pub radius: f32,
    /// Field strength `s`.
    pub strength: f32,
}

/// The constants of the force law.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForceParams {
    /// `k_field`.
    pub k_field: f32,
    /// `k_density`: the density repulsion at the target density.
    pub k_density: f32,
    /// `1 / ρ₀`, the inverse target density.
    pub inv_target_density: f32,
    /// `k_core`.
    pub k_core: f32,
    /// `σ`.
    pub core_radius: f32,
    /// `k_link`.
    pub k_link: f32,
}

impl ForceParams {
    /// The constants from a CDNA.
    pub fn from_cdna(c: &Cdna) -> Self {
        Self {
            k_field: c.physics.k_field,
            k_density: c.physics.k_density,
            inv_target_density: 1.0 / target_density(c.physics.target_neighbors),
            k_core: c.physics.k_core,
            core_radius: c.physics.core_radius,
            k_link: c.physics.k_link,
        }
    }

    /// The pressure `p = (ρ/ρ₀)²` of a token with local density `density`.
    #[inline(always)]
    pub fn pressure(&self, density: f32) -> f32 {
        let x = density * self.inv_target_density;
        x * x
    }
}

/// `1 − u⁸` for `u² = r2 / cutoff²`: the square root of the density weight, and a
/// factor of the force profile. Negative past the cutoff.
#[inline(always)]
fn one_minus_u8(u2: f32) -> f32 {
    let u4 = u2 * u2;
    1.0 - u4 * u4
}

/// The density weight `W = (1 − u⁸)²` of a pair at squared distance `r2` with
/// cutoff `cutoff`, or `None` when they are not a pair (`r ≥ cutoff`, or NaN).
#[inline(always)]
pub fn density_weight(r2: f32, cutoff: f32) -> Option<f32> {
    // Written so that NaN is "not a pair".
    let within = r2 < cutoff * cutoff;
    if !within {
        return None;
    }
    let t = one_minus_u8(r2 / (cutoff * cutoff));
    Some(t * t)
}

/// What `j` adds to the local density of `i`, or `None` when they are not a pair.
#[inline(always)]
pub fn pair_density(xi: Vec8, pi: &TokenParams, xj: Vec8, pj: &TokenParams) -> Option<f32> {
    density_weight((xj - xi).length_squared(), pi.radius.max(pj.radius))
}

/// The pair force on `i` from `j` given both pressures (`p = (ρ/ρ₀)²`, see
/// [`ForceParams::pressure`]), or `None` when they are not a pair (`r ≥ R_ij`).
#[inline(always)]
pub fn pair_force(
    xi: Vec8,
    pi: &TokenParams,
    pressure_i: f32,
    xj: Vec8,
    pj: &TokenParams,
    pressure_j: f32,
    fp: &ForceParams,
) -> Option<Vec8> {
    let d = xj - xi;
    let r2 = d.length_squared();
    let cutoff = pi.radius.max(pj.radius);
    // Written so that NaN is "not a pair", like the force pass's branch-free filter.
    let within = r2 < cutoff * cutoff;
    if !within {
        return None;
    }
    if r2 == 0.0 {
        return Some(Vec8::ZERO);
    }
    Some(d * pair_magnitude(r2, cutoff, pi, pressure_i, pj, pressure_j, fp))
}

/// The scalar `s` of the pair force `s · d` (see [`pair_force`]) for a pair within
/// its cutoff at `0 < r2`.
#[inline(always)]
fn pair_magnitude(
    r2: f32,
    cutoff: f32,
    pi: &TokenParams,
    pressure_i: f32,
    pj: &TokenParams,
    pressure_j: f32,
    fp: &ForceParams,
) -> f32 {
    let inv_c = 1.0 / cutoff;
    let u2 = r2 * (inv_c * inv_c);
    let u6 = u2 * u2 * u2;
    // w(u)/r = 16 u⁶ (1 − u⁸) / R.
    let profile = 16.0 * u6 * one_minus_u8(u2) * inv_c;
    let coupling = fp.k_field * pi.strength * pj.strength * pi.charge * pj.charge * pj.mass
        - fp.k_density * 0.5 * (pressure_i + pressure_j);
    let mut s = coupling * profile;
    if r2 < fp.core_radius * fp.core_radius {
        let r = r2.sqrt();
        let c = 1.0 - r / fp.core_radius;
        s -= fp.k_core * c * c / r;
    }
    s
}

/// The spring force on `i` from a link to `j` with `k_w = k_link · w` and rest length `rest`.
#[inline(always)]
pub fn link_force(xi: Vec8, xj: Vec8, k_w: f32, rest: f32) -> Vec8 {
    let d = xj - xi;
    let r = d.length();
    if r == 0.0 {
        Vec8::ZERO
    } else {
        d * (k_w * (r - rest) / r)
    }
}

/// The largest per-token difference of `other` from `reference` (same slots),
/// relative to max(|F_ref|, median |F_ref|): how backends are compared. The
/// median keeps tokens whose forces nearly cancel from dominating. NaN when the
/// lengths differ or any difference is not finite.
pub fn max_relative_difference(reference: &[Vec8], other: &[Vec8]) -> f32 {
    if reference.len() != other.len() {
        return f32::NAN;
    }
    let mut mags: Vec<f32> = reference.iter().map(|f| f.length()).collect();
    mags.sort_by(f32::total_cmp);
    let median = mags.get(mags.len() / 2).copied().unwrap_or(0.0);
    reference.iter().zip(other).fold(0.0f32, |worst, (a, b)| {
        let e = (*b - *a).length() / a.length().max(median).max(f32::MIN_POSITIVE);
        if e.is_nan() || worst.is_nan() {
            f32::NAN
        } else {
            worst.max(e)
        }
    })
}

/// The slot of each token id in `ids` (slot order): a table indexed by id,
/// `u32::MAX` for ids not present. Ids are dense (handed out in order, never
/// reused), so the table is at most the id space seen so far.
pub fn slot_table(ids: &[TokenId]) -> Vec<u32> {
    let top = ids.iter().map(|id| id.0 + 1).max().unwrap_or(0) as usize;
    let mut slot_of = vec![u32::MAX; top];
    for (s, id) in ids.iter().enumerate() {
        slot_of[id.0 as usize] = s as u32;
    }
    slot_of
}

/// One link end as the force loop sees it: the other end's index, weight, rest length.
/// `repr(C)`, so the table uploads to the GPU as it is.
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct LinkEnd {
    /// Index of the other token in the gathered arrays.
    pub other: u32,
    /// Link weight `w`.
    pub weight: f32,
    /// Rest length.
    pub rest: f32,
}

/// Links per token in compressed-row form, each row sorted by the partner's id.
#[derive(Clone, Debug, Default)]
pub struct LinkTable {
    offsets: Vec<u32>,
    ends: Vec<LinkEnd>,
    /// For the k-th link given to `build`, the positions of its two ends in
    /// `ends` (`u32::MAX` when the link was skipped).
    places: Vec<(u32, u32)>,
}

impl LinkTable {
    /// Bytes on the heap (rows, ends and link places at their capacity).
    pub fn heap_bytes(&self) -> u64 {
        (self.offsets.capacity() * size_of::<u32>()
            + self.ends.capacity() * size_of::<LinkEnd>()
            + self.places.capacity() * size_of::<(u32, u32)>()) as u64
    }

    /// Builds the table for tokens `ids` (gathered order) from `(a, b, weight, rest)`
    /// links; links with an end not in `ids` are skipped. Two passes over the links,
    /// no hashing: given in key order (as [`LinkGraph`](crate::model::registry::LinkGraph)
    /// iterates), every row comes out sorted by partner id; otherwise rows are
    /// sorted afterwards.
    pub fn build(
        ids: &[TokenId],
        links: impl Iterator<Item = (TokenId, TokenId, f32, f32)> + Clone,
    ) -> Self {
        let mut table = Self::default();
        table.rebuild(ids, &slot_table(ids), links);
        table
    }

    /// [`build`](Self::build) in place, reusing this table's row, end and
    /// place buffers (a table rebuilt every tick, as links form, then
    /// allocates only a cursor per token, and more when the links come
    /// unsorted), with `slot_of` the [`slot_table`] of `ids`.
    pub fn rebuild(
        &mut self,
        ids: &[TokenId],
        slot_of: &[u32],
        links: impl Iterator<Item = (TokenId, TokenId, f32, f32)> + Clone,
    ) {
        let slot = |id: TokenId| match slot_of.get(id.0 as usize) {
            Some(&s) if s != u32::MAX => Some(s as usize),
            _ => None,
        };
        let offsets = &mut self.offsets;
        offsets.clear();
        offsets.resize(ids.len() + 1, 0);
        let mut count = 0usize;
        for (a, b, ..) in links.clone() {
            count += 1;
            if let (Some(sa), Some(sb)) = (slot(a), slot(b)) {
                offsets[sa + 1] += 1;
                offsets[sb + 1] += 1;
            }
        }
        if offsets.iter().all(|&o| o == 0) {
            // No links: empty rows (`row` reads no offsets), buffers kept.
            offsets.clear();
            self.ends.clear();
            self.places.clear();
            return;
        }
        for i in 0..ids.len() {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor = offsets.clone();
        let empty = LinkEnd {
            other: u32::MAX,
            weight: 0.0,
            rest: 0.0,
        };
        let ends = &mut self.ends;
        ends.clear();
        ends.resize(offsets[ids.len()] as usize, empty);
        let places = &mut self.places;
        places.clear();
        places.resize(count, (u32::MAX, u32::MAX));
        let mut sorted = true;
        for (k, (a, b, weight, rest)) in links.enumerate() {
            let (Some(sa), Some(sb)) = (slot(a), slot(b)) else {
                continue;
            };
            for (first, s, other, oid) in [(true, sa, sb, b), (false, sb, sa, a)] {
                let p = cursor[s] as usize;
                cursor[s] += 1;
                sorted &= p == offsets[s] as usize || ids[ends[p - 1].other as usize] < oid;
                ends[p] = LinkEnd {
                    other: other as u32,
                    weight,
                    rest,
                };
                if first {
                    places[k].0 = p as u32;
                } else {
                    places[k].1 = p as u32;
                }
            }
        }
        if !sorted {
            // Links came in another order: sort each row by partner id and move
            // the recorded places along.
            let mut moved = vec![0u32; ends.len()];
            for i in 0..ids.len() {
                let (lo, hi) = (offsets[i] as usize, offsets[i + 1] as usize);
                let mut idx: Vec<usize> = (lo..hi).collect();
                idx.sort_by_key(|&p| ids[ends[p].other as usize]);
                let row: Vec<LinkEnd> = idx.iter().map(|&p| ends[p]).collect();
                for (n, &p) in idx.iter().enumerate() {
                    moved[p] = (lo + n) as u32;
                }
                ends[lo..hi].copy_from_slice(&row);
            }
            for p in places.iter_mut() {
                if p.0 != u32::MAX {
                    *p = (moved[p.0 as usize], moved[p.1 as usize]);
                }
            }
        }
    }

    /// Rewrites weights and rest lengths from `(weight, rest)` values given in the
    /// same order, and for the same links, as the ones this table was built from.
    /// O(links), no allocation; for when only link values changed.
    pub fn refresh_values(&mut self, values: impl Iterator<Item = (f32, f32)>) {
        for (&(p, q), (weight, rest)) in self.places.iter().zip(values) {
            for e in [p, q] {
                if let Some(end) = self.ends.get_mut(e as usize) {
                    end.weight = weight;
                    end.rest = rest;
                }
            }
        }
    }

    /// The links of token `i` (empty when the table has no links at all).
    #[inline]
    pub fn row(&self, i: usize) -> &[LinkEnd] {
        if self.offsets.is_empty() {
            &[]
        } else {
            &self.ends[self.offsets[i] as usize..self.offsets[i + 1] as usize]
        }
    }

    /// Where token `i`'s row sits in [`ends`](Self::ends): `(start, len)`.
    #[inline]
    pub fn placement(&self, i: usize) -> (u32, u32) {
        if self.offsets.is_empty() {
            (0, 0)
        } else {
            (self.offsets[i], self.offsets[i + 1] - self.offsets[i])
        }
    }

    /// Tokens covered (0 for a table without links).
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Every link end, row after row.
    pub fn ends(&self) -> &[LinkEnd] {
        &self.ends
    }

    /// Total link ends (twice the number of links).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no links.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Every token's local density `ρ_i = Σ_j W(u_ij)` by brute force, summed in
/// ascending id order (the order of the fast path).
pub fn reference_densities(
    positions: &[Vec8],
    params: &[TokenParams],
    ids: &[TokenId],
) -> Vec<f32> {
    let order = id_order(ids);
    (0..positions.len())
        .map(|i| {
            let mut rho = 0.0f32;
            for &j in &order {
                if j != i
                    && let Some(w) =
                        pair_density(positions[i], &params[i], positions[j], &params[j])
                {
                    rho += w;
                }
            }
            rho
        })
        .collect()
}

fn id_order(ids: &[TokenId]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    order
}

/// Forces and pair count by brute force: the densities of
/// [`reference_densities`], then every token against every other, in ascending
/// id order. `pairs` counts ordered pairs (each unordered pair twice).
pub fn reference_forces(
    positions: &[Vec8],
    params: &[TokenParams],
    ids: &[TokenId],
    links: &LinkTable,
    fp: &ForceParams,
) -> (Vec<Vec8>, u64) {
    let n = positions.len();
    let order = id_order(ids);
    let pressure: Vec<f32> = reference_densities(positions, params, ids)
        .into_iter()
        .map(|rho| fp.pressure(rho))
        .collect();
    let mut forces = vec![Vec8::ZERO; n];
    let mut pairs = 0;
    for i in 0..n {
        let mut f = Vec8::ZERO;
        for &j in &order {
            if j == i {
                continue;
            }
            let (xi, xj) = (positions[i], positions[j]);
            let fij = pair_force(xi, &params[i], pressure[i], xj, &params[j], pressure[j], fp);
            if let Some(fij) = fij {
                f += fij;
                pairs += 1;
            }
        }
        for l in links.row(i) {
            f += link_force(
                positions[i],
                positions[l.other as usize],
                fp.k_link * l.weight,
                l.rest,
            );
        }
        forces[i] = f;
    }
    (forces, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(charge: f32, mass: f32, radius: f32, strength: f32) -> TokenParams {
        TokenParams {
            charge,
            mass,
            radius,
            strength,
        }
    }

    const FP: ForceParams = ForceParams {
        k_field: 2.0,
        k_density: 1.5,
        inv_target_density: 0.1,
        k_core: 10.0,
        core_radius: 0.4,
        k_link: 0.5,
    };

    /// `w(u) / r` in f64, from the formula `w = 16 u⁷ (1 − u⁸)`.
    fn profile(r: f64, cutoff: f64) -> f64 {
        let u = r / cutoff;
        16.0 * u.powi(7) * (1.0 - u.powi(8)) / r
    }

    #[test]
    fn field_and_density_terms_match_the_formula_in_f64() {
        // r = 0.5 along axis 2, R_ij = max(1, 0.8) = 1; outside the core.
        let xi = Vec8::ZERO;
        let xj = Vec8::from_array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let (pi, pj) = (p(0.5, 1.0, 1.0, 0.9), p(0.8, 3.0, 0.8, 0.7));
        let (pri, prj) = (0.3f32, 0.7f32);
        let f = pair_force(xi, &pi, pri, xj, &pj, prj, &FP).unwrap();
        let coupling = 2.0f64 * 0.9 * 0.7 * 0.5 * 0.8 * 3.0 - 1.5 * 0.5 * (0.3 + 0.7);
        let expect = coupling * profile(0.5, 1.0) * 0.5;
        assert!((f[2] as f64 - expect).abs() < 1e-6, "{} vs {expect}", f[2]);
        assert_eq!(f[0], 0.0);
        // Below the balance pressure like charges attract: the force points towards j.
        assert!(f[2] > 0.0);
        // Opposite charges repel, and more so than the density term alone.
        let g = pair_force(xi, &p(-0.5, 1.0, 1.0, 0.9), pri, xj, &pj, prj, &FP).unwrap();
        let alone = pair_force(xi, &p(0.0, 1.0, 1.0, 0.9), pri, xj, &pj, prj, &FP).unwrap();
        assert!(g[2] < alone[2] && alone[2] < 0.0, "{} {}", g[2], alone[2]);
        // Above the balance pressure the same like-charged pair repels.
        let h = pair_force(xi, &pi, 2.0, xj, &pj, 2.0, &FP).unwrap();
        assert!(h[2] < 0.0);
    }

    #[test]
    fn the_law_scales_with_the_pair_cutoff() {
        // R_ij = max(2, 1.5) = 2, r = 1.2 along axis 5: u = 0.6, outside the core.
        let xj = Vec8::from_array([0.0, 0.0, 0.0, 0.0, 0.0, 1.2, 0.0, 0.0]);
        let (pi, pj) = (p(1.0, 1.0, 2.0, 1.0), p(0.5, 2.0, 1.5, 0.8));
        let f = pair_force(Vec8::ZERO, &pi, 0.4, xj, &pj, 0.9, &FP).unwrap();
        let coupling = 2.0f64 * 0.8 * 0.5 * 2.0 - 1.5 * 0.5 * (0.4 + 0.9);
        let expect = coupling * profile(1.2, 2.0) * 1.2;
        assert!((f[5] as f64 - expect).abs() < 1e-6, "{} vs {expect}", f[5]);
        let w = pair_density(Vec8::ZERO, &pi, xj, &pj).unwrap() as f64;
        assert!((w - (1.0 - 0.6f64.powi(8)).powi(2)).abs() < 1e-6, "{w}");
        // Beyond the larger radius, nothing.
        let far = Vec8::from_array([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
        assert!(pair_force(Vec8::ZERO, &pi, 0.4, far, &pj, 0.9, &FP).is_none());
    }

    #[test]
    fn the_pair_force_vanishes_at_the_target_density() {
        // Unit charges, masses and strengths with k_density = k_field: the pair
        // force is zero exactly when both tokens sit at ρ₀ (p = 1).
        let fp = ForceParams {
            k_density: FP.k_field,
            ..FP
        };
        let one = p(1.0, 1.0, 1.0, 1.0);
        let xj = Vec8::from_array([0.0, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let at = fp.pressure(10.0);
        assert_eq!(at, 1.0);
        let f = pair_force(Vec8::ZERO, &one, at, xj, &one, at, &fp).unwrap();
        assert_eq!(f, Vec8::ZERO);
        assert!(pair_force(Vec8::ZERO, &one, 0.5, xj, &one, 0.5, &fp).unwrap()[1] > 0.0);
        assert!(pair_force(Vec8::ZERO, &one, 1.5, xj, &one, 1.5, &fp).unwrap()[1] < 0.0);
    }

    #[test]
    fn force_weight_is_minus_the_derivative_of_the_density_weight() {
        // Central differences of W(u) = (1 − u⁸)² against w(u) = 16 u⁷ (1 − u⁸).
        for k in 1..20 {
            let u = k as f64 / 20.0;
            let w = |u: f64| (1.0 - u.powi(8)).powi(2);
            let h = 1e-6;
            let numeric = -(w(u + h) - w(u - h)) / (2.0 * h);
            let analytic = profile(u, 1.0) * u;
            assert!(
                (numeric - analytic).abs() < 1e-6,
                "u = {u}: {numeric} vs {analytic}"
            );
        }
        // The density weight itself, in f32, and its cutoff.
        let got = density_weight(0.25, 1.0).unwrap() as f64;
        assert!((got - (1.0 - 0.5f64.powi(8)).powi(2)).abs() < 1e-7);
        assert_eq!(density_weight(0.0, 2.0), Some(1.0));
        assert_eq!(density_weight(4.0, 2.0), None);
        assert_eq!(density_weight(f32::NAN, 2.0), None);
    }

    #[test]
    fn the_mean_density_weight_over_a_uniform_ball_is_a_third() {
        // ∫₀¹ (1 − u⁸)² · 8u⁷ du = ∫₀¹ (1 − v)² dv = 1/3 (v = u⁸, the volume fraction).
        let n = 100_000;
        let mean: f64 = (0..n)
            .map(|k| {
                let v = (k as f64 + 0.5) / n as f64;
                let u = v.powf(1.0 / 8.0) as f32;
                density_weight(u * u, 1.0).unwrap() as f64
            })
            .sum::<f64>()
            / n as f64;
        assert!((mean - 1.0 / 3.0).abs() < 1e-4, "{mean}");
    }

    #[test]
    fn core_term_repels_inside_sigma() {
        let xj = Vec8::from_array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let zero = p(0.0, 1.0, 1.0, 1.0);
        let f = pair_force(Vec8::ZERO, &zero, 0.0, xj, &zero, 0.0, &FP).unwrap();
        let expect = -10.0f64 * (1.0 - 0.1f64 / 0.4).powi(2);
        assert!((f[0] as f64 - expect).abs() < 1e-5, "{} vs {expect}", f[0]);
    }

    #[test]
    fn cutoff_is_exclusive_and_coincident_is_a_forceless_pair() {
        let one = p(1.0, 1.0, 1.0, 1.0);
        let at_cutoff = Vec8::from_array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(pair_force(Vec8::ZERO, &one, 1.0, at_cutoff, &one, 1.0, &FP).is_none());
        assert!(pair_density(Vec8::ZERO, &one, at_cutoff, &one).is_none());
        assert_eq!(
            pair_force(Vec8::ONE, &one, 1.0, Vec8::ONE, &one, 1.0, &FP),
            Some(Vec8::ZERO)
        );
        assert_eq!(pair_density(Vec8::ONE, &one, Vec8::ONE, &one), Some(1.0));
    }

    /// `U = Σ_i (k_density ρ₀/6)(ρ_i/ρ₀)³ − Σ_{i<j} k_field W(u_ij)` for unit
    /// charges, masses, strengths and radii, no core: the energy of the module
    /// docs, in f64 from the formulas.
    fn energy(x: &[[f64; 8]], fp: &ForceParams) -> f64 {
        let rho0 = 1.0 / fp.inv_target_density as f64;
        let w = |a: &[f64; 8], b: &[f64; 8]| {
            let r2: f64 = (0..8).map(|k| (a[k] - b[k]).powi(2)).sum();
            if r2 < 1.0 {
                (1.0 - r2.powi(4)).powi(2)
            } else {
                0.0
            }
        };
        let mut u = 0.0;
        for i in 0..x.len() {
            let rho: f64 = (0..x.len())
                .filter(|&j| j != i)
                .map(|j| w(&x[i], &x[j]))
                .sum();
            u += fp.k_density as f64 * rho0 / 6.0 * (rho / rho0).powi(3);
            for j in i + 1..x.len() {
                u -= fp.k_field as f64 * w(&x[i], &x[j]);
            }
        }
        u
    }

    #[test]
    fn forces_are_minus_the_gradient_of_the_documented_energy() {
        // 14 tokens in a cube of side 0.6: most pairs within the cutoff, some near it.
        let fp = ForceParams { k_core: 0.0, ..FP };
        let n = 14;
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f64 / (1u64 << 24) as f64 - 0.5
        };
        let x: Vec<[f64; 8]> = (0..n)
            .map(|_| std::array::from_fn(|_| 0.6 * next()))
            .collect();
        let pos: Vec<Vec8> = x
            .iter()
            .map(|a| Vec8::from_array(a.map(|v| v as f32)))
            .collect();
        let x: Vec<[f64; 8]> = pos.iter().map(|p| p.to_array().map(|v| v as f64)).collect();
        let params = vec![p(1.0, 1.0, 1.0, 1.0); n];
        let ids: Vec<TokenId> = (0..n as u64).map(TokenId).collect();
        let (forces, pairs) = reference_forces(&pos, &params, &ids, &LinkTable::default(), &fp);
        assert!(pairs > (n * (n - 1) / 2) as u64, "{pairs}");
        let scale = forces.iter().map(|f| f.length()).fold(0.0f32, f32::max) as f64;
        assert!(scale > 0.1, "{scale}");
        let h = 1e-5;
        for i in 0..n {
            for k in 0..8 {
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i][k] += h;
                b[i][k] -= h;
                let grad = -(energy(&a, &fp) - energy(&b, &fp)) / (2.0 * h);
                let got = forces[i][k] as f64;
                assert!(
                    (got - grad).abs() <= 1e-3 * scale,
                    "token {i}, axis {k}: force {got} vs −dU/dx {grad}"
                );
            }
        }
    }

    #[test]
    fn a_collapsed_group_cannot_go_below_the_energy_bound() {
        // N tokens at one point: every pair within its cutoff, W = 1. The old law's
        // energy fell as −N²; this one is bounded by −N ρ₀ k_f^{3/2} / (3 √k_d).
        let fp = ForceParams { k_core: 0.0, ..FP };
        let rho0 = 1.0 / fp.inv_target_density as f64;
        let per_token = rho0 * (fp.k_field as f64).powf(1.5) / (3.0 * (fp.k_density as f64).sqrt());
        let mut lowest = f64::INFINITY;
        for n in [2usize, 5, 10, 14, 20, 40, 80, 160] {
            let x = vec![[0.25f64; 8]; n];
            let u = energy(&x, &fp);
            assert!(u >= -(n as f64) * per_token - 1e-9, "N = {n}: U = {u}");
            lowest = lowest.min(u / n as f64);
        }
        // The bound is reached near ρ = ρ₀ √(k_f / k_d) (N − 1 ≈ 11.5 here).
        assert!(lowest < -0.9 * per_token, "{lowest} vs {per_token}");
    }

    #[test]
    fn link_spring_pulls_when_stretched() {
        let xj = Vec8::from_array([0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let f = link_force(Vec8::ZERO, xj, 0.5 * 3.0, 0.5);
        assert!((f[1] - 1.5 * 1.5).abs() < 1e-6);
        assert_eq!(link_force(Vec8::ONE, Vec8::ONE, 1.0, 1.0), Vec8::ZERO);
    }

    #[test]
    fn relative_difference_scales_by_the_larger_of_own_and_median_magnitude() {
        let e = |x: f32| Vec8::from_array([x, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let reference = [e(1.0), e(2.0), e(4.0), e(0.0)];
        // Median |F| is 2: the zero force is measured against 2, the 4 against 4.
        let other = [e(1.0), e(2.0), e(4.2), e(0.1)];
        assert!((max_relative_difference(&reference, &other) - 0.05).abs() < 1e-6);
        assert_eq!(max_relative_difference(&reference, &reference), 0.0);
        let bad = [e(1.0), e(f32::NAN), e(4.0), e(0.0)];
        assert!(max_relative_difference(&reference, &bad).is_nan());
        assert!(max_relative_difference(&reference, &other[..2]).is_nan());
    }
}
