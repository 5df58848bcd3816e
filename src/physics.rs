//! The physics of DESIGN §4, as plain functions shared by every backend, and the
//! O(N²) reference the fast path is tested against.
//!
//! | term  | force on token *i* (`d = x_j − x_i`, `r = |d|`, `R_ij = max(R_i, R_j)`) | when |
//! |-------|------------------------------------------------------------------------|------|
//! | field | `+k_field · s_i s_j · q_i q_j · m_j · (1 − r/R_ij)² · d/r`               | `0 < r < R_ij` |
//! | core  | `−k_core · (1 − r/σ)² · d/r`                                             | `0 < r < min(σ, R_ij)` |
//! | link  | `+k_link · w_ij · (r − L_ij) · d/r`                                      | `r > 0`, per link |
//!
//! Coincident tokens (`r = 0`) count as a pair but exert no force: the direction
//! `d/r` is undefined. Each token's force is summed in a fixed order — pair terms by
//! ascending neighbour [`TokenId`], then link terms by ascending partner id — so the
//! result is bit-identical whatever the thread count or the spatial index.

use crate::cdna::Cdna;
use crate::components::TokenId;
use crate::math::Vec8;

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
            k_core: c.physics.k_core,
            core_radius: c.physics.core_radius,
            k_link: c.physics.k_link,
        }
    }
}

/// The pair force on `i` from `j`, or `None` when they are not a pair (`r ≥ R_ij`).
#[inline(always)]
pub fn pair_force(
    xi: Vec8,
    pi: &TokenParams,
    xj: Vec8,
    pj: &TokenParams,
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
    let r = r2.sqrt();
    let u = 1.0 - r / cutoff;
    let mut magnitude =
        fp.k_field * pi.strength * pj.strength * pi.charge * pj.charge * pj.mass * u * u;
    if r < fp.core_radius {
        let c = 1.0 - r / fp.core_radius;
        magnitude -= fp.k_core * c * c;
    }
    Some(d * (magnitude / r))
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
    /// Builds the table for tokens `ids` (gathered order) from `(a, b, weight, rest)`
    /// links; links with an end not in `ids` are skipped. Two passes over the links,
    /// no hashing: given in key order (as [`LinkGraph`](crate::registry::LinkGraph)
    /// iterates), every row comes out sorted by partner id; otherwise rows are
    /// sorted afterwards.
    pub fn build(
        ids: &[TokenId],
        links: impl Iterator<Item = (TokenId, TokenId, f32, f32)> + Clone,
    ) -> Self {
        let slot_of = slot_table(ids);
        let slot = |id: TokenId| match slot_of.get(id.0 as usize) {
            Some(&s) if s != u32::MAX => Some(s as usize),
            _ => None,
        };
        let mut offsets = vec![0u32; ids.len() + 1];
        let mut count = 0usize;
        for (a, b, ..) in links.clone() {
            count += 1;
            if let (Some(sa), Some(sb)) = (slot(a), slot(b)) {
                offsets[sa + 1] += 1;
                offsets[sb + 1] += 1;
            }
        }
        if offsets.iter().all(|&o| o == 0) {
            return Self::default();
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
        let mut ends = vec![empty; offsets[ids.len()] as usize];
        // The partner id of each end, to check (and if need be restore) row order.
        let mut partner = vec![TokenId(0); ends.len()];
        let mut places = vec![(u32::MAX, u32::MAX); count];
        let mut sorted = true;
        for (k, (a, b, weight, rest)) in links.enumerate() {
            let (Some(sa), Some(sb)) = (slot(a), slot(b)) else {
                continue;
            };
            for (first, s, other, oid) in [(true, sa, sb, b), (false, sb, sa, a)] {
                let p = cursor[s] as usize;
                cursor[s] += 1;
                sorted &= p == offsets[s] as usize || partner[p - 1] < oid;
                partner[p] = oid;
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
                idx.sort_by_key(|&p| partner[p]);
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
        Self {
            offsets,
            ends,
            places,
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

/// Forces and pair count by brute force: every token against every other, in
/// ascending id order. `pairs` counts ordered pairs (each unordered pair twice).
pub fn reference_forces(
    positions: &[Vec8],
    params: &[TokenParams],
    ids: &[TokenId],
    links: &LinkTable,
    fp: &ForceParams,
) -> (Vec<Vec8>, u64) {
    let n = positions.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ids[i]);
    let mut forces = vec![Vec8::ZERO; n];
    let mut pairs = 0;
    for i in 0..n {
        let mut f = Vec8::ZERO;
        for &j in &order {
            if j == i {
                continue;
            }
            if let Some(fij) = pair_force(positions[i], &params[i], positions[j], &params[j], fp) {
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
        k_core: 10.0,
        core_radius: 0.4,
        k_link: 0.5,
    };

    #[test]
    fn field_term_matches_the_formula_in_f64() {
        // r = 0.5 along axis 2, R_ij = max(1, 0.8) = 1; outside the core.
        let xi = Vec8::ZERO;
        let xj = Vec8::from_array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let (pi, pj) = (p(0.5, 1.0, 1.0, 0.9), p(0.8, 3.0, 0.8, 0.7));
        let f = pair_force(xi, &pi, xj, &pj, &FP).unwrap();
        let expect = 2.0f64 * 0.9 * 0.7 * 0.5 * 0.8 * 3.0 * (1.0 - 0.5f64).powi(2);
        assert!((f[2] as f64 - expect).abs() < 1e-6, "{} vs {expect}", f[2]);
        assert_eq!(f[0], 0.0);
        // Like charges attract: the force points towards j.
        assert!(f[2] > 0.0);
        // Opposite charges repel.
        let g = pair_force(xi, &p(-0.5, 1.0, 1.0, 0.9), xj, &pj, &FP).unwrap();
        assert!((g[2] + f[2]).abs() < 1e-7);
    }

    #[test]
    fn core_term_repels_inside_sigma() {
        let xj = Vec8::from_array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let zero = p(0.0, 1.0, 1.0, 1.0);
        let f = pair_force(Vec8::ZERO, &zero, xj, &zero, &FP).unwrap();
        let expect = -10.0f64 * (1.0 - 0.1f64 / 0.4).powi(2);
        assert!((f[0] as f64 - expect).abs() < 1e-5, "{} vs {expect}", f[0]);
    }

    #[test]
    fn cutoff_is_exclusive_and_coincident_is_a_forceless_pair() {
        let one = p(1.0, 1.0, 1.0, 1.0);
        let at_cutoff = Vec8::from_array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(pair_force(Vec8::ZERO, &one, at_cutoff, &one, &FP).is_none());
        assert_eq!(
            pair_force(Vec8::ONE, &one, Vec8::ONE, &one, &FP),
            Some(Vec8::ZERO)
        );
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
