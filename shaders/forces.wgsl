// NeuroGraph force pass (DESIGN §4) on the GPU: one invocation per token.
//
// It computes exactly what `compute_forces_proposing` computes on the CPU, in the
// same order, from the same Verlet candidate lists (built on the CPU, uploaded
// when they change):
//
//   for each candidate j of token i (ascending id), when r < R_ij = max(R_i, R_j):
//     field: F_i += k_field · s_i s_j · q_i q_j · m_j · (1 − r/R_ij)² · d/r
//     core:  F_i −= k_core · (1 − r/σ)² · d/r          (r < σ)
//   then for each link of i (ascending partner id):
//     link:  F_i += k_link · w · (r − L) · d/r
//
// Coincident tokens (r = 0) count as a pair and exert no force. Each token's sum
// is one invocation's loop, so the result does not depend on scheduling; no
// atomics are used. Besides the force, each invocation writes its pair count and
// `Learn`'s proposal: the nearest unlinked candidate closer than `within` (ties:
// the smaller id, i.e. the first found), both ends below `max_degree` links.

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
    _pad0: u32,
    _pad1: u32,
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

fn is_linked(row: vec4<u32>, j: u32) -> bool {
    for (var k = 0u; k < row.w; k++) {
        if links[row.z + k].other == j {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let k = (wg.y * p.groups_x + wg.x) * WORKGROUP_SIZE + local;
    if k >= p.n {
        return;
    }
    let i = p.first + k;
    let xi0 = pos[2u * i];
    let xi1 = pos[2u * i + 1u];
    let ti = tok[i];
    let row = rows[i];
    let propose = p.propose != 0u && row.w < p.max_degree;

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
        if r2 > 0.0 {
            let r = sqrt(r2);
            let u = 1.0 - r / cutoff;
            var magnitude = p.k_field * ti.w * tj.w * ti.x * tj.x * tj.y * u * u;
            if r < p.core_radius {
                let c = 1.0 - r / p.core_radius;
                magnitude -= p.k_core * c * c;
            }
            let s = magnitude / r;
            acc0 += d0 * s;
            acc1 += d1 * s;
        }
        if propose && r2 < p.within2 && (best == NONE || r2 < best_d2)
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
