// NeuroGraph force pass (DESIGN §4, `src/physics.rs`) on the GPU: two entry
// points, one invocation per token each.
//
// They compute exactly what `compute_densities` and `compute_forces_proposing`
// compute on the CPU, in the same order, from the same Verlet candidate lists
// (built on the CPU, uploaded when they change). With u = r / R_ij,
// R_ij = max(R_i, R_j):
//
//   `density` (dispatched first, over every chunk):
//     rho_i = sum over candidates j within R_ij (ascending id) of W(u) = (1 − u⁸)²
//   `main`:
//     p_i = (rho_i / rho_0)²
//     for each candidate j of token i (ascending id), when r < R_ij:
//       F_i += [k_field · s_i s_j · q_i q_j · m_j − k_density · (p_i + p_j)/2]
//              · 16 u⁶ (1 − u⁸) / R_ij · d                 (= w(u) · d/r)
//       F_i −= k_core · (1 − r/σ)² · d/r                    (r < σ)
//     then for each link of i (ascending partner id):
//       F_i += k_link · w · (r − L) · d/r
//
// Coincident tokens (r = 0) count as a pair and exert no force. Each token's
// sums are one invocation's loops, so the result does not depend on scheduling;
// no atomics are used. Besides the force, `main` writes the pair count and
// `Learn`'s proposal: the nearest unlinked candidate closer than `within` (ties:
// the smaller id, i.e. the first found), both ends below `max_degree` links and
// at most the target density (p ≤ 1).

const WORKGROUP_SIZE: u32 = 64u;
const NONE: u32 = 0xffffffffu;

// Mirrors `gpu::forces::GpuParams` (a test checks the layout with naga).
struct Params {
    // Tokens of this dispatch (one per chunk of the candidate lists).
    n: u32,
    // The slot of its first token.
    first: u32,
    // 1: fill the proposals; 0: leave them NONE.
    propose: u32,
    // Fewer links than this on both ends to propose.
    max_degree: u32,
    // Workgroups along x in the dispatch (the grid is 2-D past 65535 groups).
    groups_x: u32,
    k_field: f32,
    k_core: f32,
    core_radius: f32,
    k_link: f32,
    // Squared formation distance.
    within2: f32,
    k_density: f32,
    // 1 / rho_0.
    inv_target_density: f32,
}

// One link end: the other token's slot, the weight, the rest length.
struct LinkEnd {
    other: u32,
    weight: f32,
    rest: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Positions: two vec4 per token (axes 0..4, 4..8).
@group(0) @binding(1) var<storage, read> pos: array<vec4<f32>>;
// Per token: charge, mass, radius, strength.
@group(0) @binding(2) var<storage, read> tok: array<vec4<f32>>;
// Per token: candidates start, candidates count, links start, links count.
@group(0) @binding(3) var<storage, read> rows: array<vec4<u32>>;
// Candidate slots, each row ascending by token id (this chunk's part; a row's
// start is relative to it).
@group(0) @binding(4) var<storage, read> cand: array<u32>;
// Link ends, each row ascending by partner id.
@group(0) @binding(5) var<storage, read> links: array<LinkEnd>;
// Out: two vec4 per token.
@group(0) @binding(6) var<storage, read_write> force: array<vec4<f32>>;
// Out per token: the proposed partner's slot (NONE for none), the pair count.
@group(0) @binding(7) var<storage, read_write> aux: array<vec2<u32>>;
// Per token: the local density (written by `density`, read by `main`).
@group(0) @binding(8) var<storage, read_write> rho: array<f32>;

fn is_linked(row: vec4<u32>, j: u32) -> bool {
    for (var k = 0u; k < row.w; k++) {
        if links[row.z + k].other == j {
            return true;
        }
    }
    return false;
}

// 1 − u⁸ for u² = r2 / cutoff², as `one_minus_u8` on the CPU.
fn one_minus_u8(u2: f32) -> f32 {
    let u4 = u2 * u2;
    return 1.0 - u4 * u4;
}

fn pressure(density: f32) -> f32 {
    let x = density * p.inv_target_density;
    return x * x;
}

// The slot of this invocation's token, or NONE past the dispatch's tokens.
fn token_slot(wg: vec3<u32>, local: u32) -> u32 {
    let k = (wg.y * p.groups_x + wg.x) * WORKGROUP_SIZE + local;
    if k >= p.n {
        return NONE;
    }
    return p.first + k;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn density(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = token_slot(wg, local);
    if i == NONE {
        return;
    }
    let xi0 = pos[2u * i];
    let xi1 = pos[2u * i + 1u];
    let ti = tok[i];
    let row = rows[i];
    var sum = 0.0;
    for (var k = 0u; k < row.y; k++) {
        let j = cand[row.x + k];
        let d0 = pos[2u * j] - xi0;
        let d1 = pos[2u * j + 1u] - xi1;
        let r2 = dot(d0, d0) + dot(d1, d1);
        let cutoff = max(ti.z, tok[j].z);
        let c2 = cutoff * cutoff;
        if r2 < c2 {
            let t = one_minus_u8(r2 / c2);
            sum += t * t;
        }
    }
    rho[i] = sum;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = token_slot(wg, local);
    if i == NONE {
        return;
    }
    let xi0 = pos[2u * i];
    let xi1 = pos[2u * i + 1u];
    let ti = tok[i];
    let row = rows[i];
    let pi = pressure(rho[i]);
    let propose = p.propose != 0u && row.w < p.max_degree && pi <= 1.0;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var pairs = 0u;
    var best = NONE;
    var best_d2 = 0.0;
    for (var k = 0u; k < row.y; k++) {
        let j = cand[row.x + k];
        let d0 = pos[2u * j] - xi0;
        let d1 = pos[2u * j + 1u] - xi1;
        let r2 = dot(d0, d0) + dot(d1, d1);
        let tj = tok[j];
        let cutoff = max(ti.z, tj.z);
        // Written so that NaN is "not a pair", as on the CPU.
        if !(r2 < cutoff * cutoff) {
            continue;
        }
        pairs += 1u;
        let pj = pressure(rho[j]);
        if r2 > 0.0 {
            let inv_c = 1.0 / cutoff;
            let u2 = r2 * (inv_c * inv_c);
            let u6 = u2 * u2 * u2;
            let profile = 16.0 * u6 * one_minus_u8(u2) * inv_c;
            let coupling = p.k_field * ti.w * tj.w * ti.x * tj.x * tj.y
                - p.k_density * 0.5 * (pi + pj);
            var s = coupling * profile;
            if r2 < p.core_radius * p.core_radius {
                let r = sqrt(r2);
                let c = 1.0 - r / p.core_radius;
                s -= p.k_core * c * c / r;
            }
            acc0 += d0 * s;
            acc1 += d1 * s;
        }
        if propose && r2 < p.within2 && pj <= 1.0 && (best == NONE || r2 < best_d2)
            && rows[j].w < p.max_degree && !is_linked(row, j) {
            best = j;
            best_d2 = r2;
        }
    }
    for (var k = 0u; k < row.w; k++) {
        let l = links[row.z + k];
        let d0 = pos[2u * l.other] - xi0;
        let d1 = pos[2u * l.other + 1u] - xi1;
        let r = sqrt(dot(d0, d0) + dot(d1, d1));
        if r != 0.0 {
            let s = p.k_link * l.weight * (r - l.rest) / r;
            acc0 += d0 * s;
            acc1 += d1 * s;
        }
    }
    force[2u * i] = acc0;
    force[2u * i + 1u] = acc1;
    aux[i] = vec2<u32>(best, pairs);
}
