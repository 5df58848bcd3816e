// The GPU-resident tick (`src/backend/gpu/resident.rs`): neighbour search,
// integration and the CDNA's token constraints, on state that stays on the
// device across ticks. The forces between them are `forces.wgsl`'s `density`
// and `main`, run on the same buffers. One tick is these dispatches in order:
//
//   begin          1 invocation: does this tick refresh or rebuild the rows?
//                  (a flag the last tick's `integrate`, or the host, raised)
//   bounds_blocks  one per block of BLOCK consecutive tokens of the sort order
//   bounds_super   one per superblock of FAN blocks
//   collect        one per token: the tokens whose rows this tick searches
//   args           1 invocation: the indirect dispatch of `build` and `insert`
//   build          one per listed token: its Verlet row, exact
//   prune, insert, merge
//                  one per token, listed token, token: a refresh's symmetric
//                  update of the rows not searched
//   density, main  (forces.wgsl)
//   integrate      one per token: semi-implicit Euler, then the constraints
//
// and, between ticks when links formed or went, `place_links` (one per token).
//
// Neighbour search. The host orders the tokens along a k-d tree's leaves (a
// space-filling order; `perm` holds the slots in that order) at each load and
// reorder; the order only makes the pruning tight, never the result: each
// search bounds each block and superblock of the order by an axis-aligned box
// of its tokens' current positions (and the largest field radius in it), and a
// token's row is every j != i with |x_j - x_i| <= max(R_i, R_j) + skin (with the
// CPU's 1e-5 slack), found by skipping every superblock and block whose box is
// farther than max(R_i, R_box) + skin. A box's distance is a lower bound of its
// members' distances (min/max are exact, and subtraction, squaring and summing
// round monotonically), so no pair is skipped: a row holds exactly what the
// CPU's k-d tree finds. Each row is kept sorted by slot, so the force sums run
// in slot order: the order of the CPU's rows when slots are in id order.
//
// When rows are searched: the CPU's rule (`Travel`, `NeighborList::refresh`).
// Each token's path since its row was searched must stay within skin / 2;
// `integrate` adds |v| dt to the path and raises a refresh when a path passes
// it (or is not finite). A refresh searches the rows of those tokens only;
// `prune` drops them from every other row, `insert` adds each of them to the
// rows of its new neighbours, and `merge` sorts those rows again. A pair
// missing from the rows was at least cutoff + skin apart when last checked, and
// neither token has moved more than skin / 2 since, so it is not a pair.
// (Clamping to the bounds only shortens a move, since positions start inside
// them; a non-finite value makes the path non-finite and the row is searched.)
// A rebuild (after a load or a regrow, or always with `full_only`) searches
// every row. Results do not depend on when or how rows were searched: a row
// holds every pair within the cutoff, and the sums skip the others. "Exact" is
// the CPU's exactness: distances are f32 (with the 1e-5 slack at the edge), and
// the path bound does not count the rounding of x + v dt.
//
// Capacity: a row holds at most `cap` slots. `build` and `insert` raise
// `flags[MAX_COUNT]` to the length the row needs (an atomic max of integers:
// order-independent); the host reads it after a batch of ticks, and when it
// exceeds `cap` grows the rows and recomputes the batch from a device-side copy
// of its starting state (with a rebuild first).
//
// No float atomics: every float is one invocation's own; the atomics are
// integer counters, maxima, flags and slot claims whose results do not depend
// on order (`merge` sorts the claimed slots).

const WORKGROUP_SIZE: u32 = 64u;
// Tokens per block, blocks per superblock (`resident::BLOCK`, `resident::FAN`).
const BLOCK: u32 = 8u;
const FAN: u32 = 32u;
const BIG: f32 = 3.0e38;

// Indices into `flags`.
const NOW: u32 = 0u;
const NEXT: u32 = 1u;
const MAX_COUNT: u32 = 2u;
const REBUILDS: u32 = 3u;
const TICKS: u32 = 4u;
const LIMITED: u32 = 5u;
const NON_FINITE: u32 = 6u;
const BOUNDS: u32 = 7u;
const SPEED: u32 = 8u;
const MAX_STEP: u32 = 9u;
// A 64-bit count: low word, then high word.
const SCANNED: u32 = 10u;
const ROWS: u32 = 12u;
const FULL: u32 = 13u;
// Tokens in `list`.
const COUNT: u32 = 14u;

// Values of `flags[NOW]` and `flags[NEXT]`.
const REFRESH: u32 = 1u;
const REBUILD: u32 = 2u;

// Mirrors `resident::ResidentUniform` (a test checks the layout with naga).
struct Params {
    // Tokens.
    n: u32,
    // Workgroups along x of a per-token dispatch (the grid is 2-D past 65535).
    groups_x: u32,
    // Blocks, and superblocks (stored after the blocks in `boxes`).
    blocks: u32,
    supers: u32,
    // Slots per row.
    cap: u32,
    // Workgroups along x of a per-block dispatch.
    block_groups_x: u32,
    dt: f32,
    // 1 − damping · dt.
    keep: f32,
    max_speed: f32,
    skin: f32,
    half_skin: f32,
    // 1: every rebuild builds every row (no refreshes).
    full_only: u32,
    // Per-axis mobility and position bounds, axes 0..4 and 4..8.
    scale0: vec4<f32>,
    scale1: vec4<f32>,
    lo0: vec4<f32>,
    lo1: vec4<f32>,
    hi0: vec4<f32>,
    hi1: vec4<f32>,
    // 1 / ρ₀, for the group pull's fade.
    inv_target_density: f32,
}

// An axis-aligned box in 8D and the largest field radius of its tokens (x).
struct Box {
    lo0: vec4<f32>,
    lo1: vec4<f32>,
    hi0: vec4<f32>,
    hi1: vec4<f32>,
    radius: vec4<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
// Two vec4 per token (axes 0..4, 4..8).
@group(0) @binding(1) var<storage, read_write> pos: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> vel: array<vec4<f32>>;
// Per token: charge, mass, radius, strength.
@group(0) @binding(3) var<storage, read> tok: array<vec4<f32>>;
// Per token: candidates start, count (written by `build`, `prune` and `merge`),
// links start, count.
@group(0) @binding(4) var<storage, read_write> rows: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> cand: array<u32>;
// Slots in the sort order.
@group(0) @binding(6) var<storage, read> perm: array<u32>;
// The blocks' boxes, then the superblocks'.
@group(0) @binding(7) var<storage, read_write> boxes: array<Box>;
// The forces of this tick (written by forces.wgsl's `main`).
@group(0) @binding(8) var<storage, read> force: array<vec4<f32>>;
// Per token: path length since its row was built.
@group(0) @binding(9) var<storage, read_write> travel: array<f32>;
@group(0) @binding(10) var<storage, read_write> flags: array<atomic<u32>, 16>;
// Per token: slots other tokens' refreshes added to its row (`insert`).
@group(0) @binding(11) var<storage, read_write> extra: array<atomic<u32>>;
// The tokens whose rows this tick searches (`collect`).
@group(0) @binding(12) var<storage, read_write> list: array<u32>;
// The indirect dispatch arguments (x, y, z) of `build` and `insert` (a buffer
// of its own: one that a dispatch reads its arguments from cannot be bound).
@group(0) @binding(13) var<storage, read_write> dispatch: array<u32, 4>;
// The densities of this tick (written by forces.wgsl's `density`).
@group(0) @binding(14) var<storage, read> rho: array<f32>;
// Per token, three vec4: its group's centre (axes 0..4, 4..8), then
// (group_pull · m, 0, 0, 0); zero when it is in no group.
@group(0) @binding(15) var<storage, read> pull: array<vec4<f32>>;
// Per token: its links' start and count in the link ends (`place_links`
// copies them into `rows` when links formed or went).
@group(0) @binding(16) var<storage, read> places: array<vec2<u32>>;

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn finite4(v: vec4<f32>) -> bool {
    return finite(v.x) && finite(v.y) && finite(v.z) && finite(v.w);
}

fn invocation(wg: vec3<u32>, local: u32, groups_x: u32) -> u32 {
    return (wg.y * groups_x + wg.x) * WORKGROUP_SIZE + local;
}

@compute @workgroup_size(1)
fn begin() {
    var next = atomicExchange(&flags[NEXT], 0u);
    if next == REFRESH && p.full_only != 0u {
        next = REBUILD;
    }
    atomicStore(&flags[NOW], next);
    if next != 0u {
        atomicAdd(&flags[REBUILDS], 1u);
    }
    if next == REBUILD {
        atomicAdd(&flags[FULL], 1u);
    }
    atomicStore(&flags[COUNT], 0u);
    atomicAdd(&flags[TICKS], 1u);
}

// The tokens to search: all of them in a rebuild (in the sort order, so that
// the invocations of a workgroup, which run in lockstep, are near one another
// and visit nearly the same boxes), else those past half the skin (in the order
// they claim slots: each row comes out the same whichever invocation builds
// it). Each is marked as searched in this tick (for `insert` and `merge`);
// `integrate` counts its path from zero.
@compute @workgroup_size(WORKGROUP_SIZE)
fn collect(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let k = invocation(wg, local, p.groups_x);
    let now = atomicLoad(&flags[NOW]);
    if k >= p.n || now == 0u {
        return;
    }
    let i = perm[k];
    if now == REBUILD {
        travel[i] = -1.0;
        list[k] = i;
        if k == 0u {
            atomicStore(&flags[COUNT], p.n);
        }
        return;
    }
    let path = travel[i];
    if path <= p.half_skin && finite(path) {
        return;
    }
    travel[i] = -1.0;
    list[atomicAdd(&flags[COUNT], 1u)] = i;
}

// The indirect dispatch of `build` and `insert`: one invocation per listed token.
@compute @workgroup_size(1)
fn args() {
    let groups = (atomicLoad(&flags[COUNT]) + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    dispatch[0] = min(groups, 65535u);
    dispatch[1] = max((groups + 65534u) / 65535u, 1u);
    dispatch[2] = 1u;
}

// The k-th listed token of an indirect dispatch, or NONE.
fn listed(wg: vec3<u32>, groups: vec3<u32>, local: u32) -> u32 {
    let k = (wg.y * groups.x + wg.x) * WORKGROUP_SIZE + local;
    if k >= atomicLoad(&flags[COUNT]) {
        return 0xffffffffu;
    }
    return list[k];
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn bounds_blocks(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let b = invocation(wg, local, p.block_groups_x);
    if b >= p.blocks || atomicLoad(&flags[NOW]) == 0u {
        return;
    }
    var lo0 = vec4<f32>(BIG);
    var lo1 = vec4<f32>(BIG);
    var hi0 = vec4<f32>(-BIG);
    var hi1 = vec4<f32>(-BIG);
    var r = 0.0;
    let end = min(b * BLOCK + BLOCK, p.n);
    for (var k = b * BLOCK; k < end; k++) {
        let s = perm[k];
        let x0 = pos[2u * s];
        let x1 = pos[2u * s + 1u];
        lo0 = min(lo0, x0);
        lo1 = min(lo1, x1);
        hi0 = max(hi0, x0);
        hi1 = max(hi1, x1);
        r = max(r, tok[s].z);
    }
    boxes[b] = Box(lo0, lo1, hi0, hi1, vec4<f32>(r, 0.0, 0.0, 0.0));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn bounds_super(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let s = invocation(wg, local, p.block_groups_x);
    if s >= p.supers || atomicLoad(&flags[NOW]) == 0u {
        return;
    }
    var out = boxes[s * FAN];
    let end = min(s * FAN + FAN, p.blocks);
    for (var b = s * FAN + 1u; b < end; b++) {
        let x = boxes[b];
        out.lo0 = min(out.lo0, x.lo0);
        out.lo1 = min(out.lo1, x.lo1);
        out.hi0 = max(out.hi0, x.hi0);
        out.hi1 = max(out.hi1, x.hi1);
        out.radius.x = max(out.radius.x, x.radius.x);
    }
    boxes[p.blocks + s] = out;
}

// True when some point of `bx` may lie within max(r, R_box) + skin of x (with
// twice the pair test's slack, against fused multiply-adds).
fn near(bx: Box, x0: vec4<f32>, x1: vec4<f32>, r: f32) -> bool {
    let g0 = max(max(bx.lo0 - x0, x0 - bx.hi0), vec4<f32>(0.0));
    let g1 = max(max(bx.lo1 - x1, x1 - bx.hi1), vec4<f32>(0.0));
    let d2 = dot(g0, g0) + dot(g1, g1);
    let c = max(r, bx.radius.x) + p.skin;
    return d2 <= c * c * (1.0 + 2e-5);
}

// Puts slot `o` into the row at `base` whose first `len` entries are ascending
// (an insertion sort's step: larger entries move up one place).
fn sort_in(base: u32, len: u32, o: u32) {
    var at = len;
    while at > 0u && cand[base + at - 1u] > o {
        cand[base + at] = cand[base + at - 1u];
        at -= 1u;
    }
    cand[base + at] = o;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn build(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = listed(wg, groups, local);
    if i == 0xffffffffu {
        return;
    }
    atomicAdd(&flags[ROWS], 1u);
    let xi0 = pos[2u * i];
    let xi1 = pos[2u * i + 1u];
    let ri = tok[i].z;
    let base = i * p.cap;
    var count = 0u;
    var scanned = 0u;
    for (var s = 0u; s < p.supers; s++) {
        if !near(boxes[p.blocks + s], xi0, xi1, ri) {
            continue;
        }
        let last_block = min(s * FAN + FAN, p.blocks);
        for (var b = s * FAN; b < last_block; b++) {
            if !near(boxes[b], xi0, xi1, ri) {
                continue;
            }
            let end = min(b * BLOCK + BLOCK, p.n);
            scanned += end - b * BLOCK;
            for (var m = b * BLOCK; m < end; m++) {
                let j = perm[m];
                if j == i {
                    continue;
                }
                let d0 = pos[2u * j] - xi0;
                let d1 = pos[2u * j + 1u] - xi1;
                let d2 = dot(d0, d0) + dot(d1, d1);
                let c = max(ri, tok[j].z) + p.skin;
                if d2 <= c * c * (1.0 + 1e-5) {
                    if count < p.cap {
                        sort_in(base, count, j);
                    }
                    count += 1u;
                }
            }
        }
    }
    rows[i].x = base;
    rows[i].y = min(count, p.cap);
    atomicMax(&flags[MAX_COUNT], count);
    // Distances computed, summed in 64 bits: an add that wraps the low word
    // carries one into the high word.
    let before = atomicAdd(&flags[SCANNED], scanned);
    if before + scanned < before {
        atomicAdd(&flags[SCANNED + 1u], 1u);
    }
}

// Refresh, step 3: every token i searched in this tick adds itself to the row
// of each neighbour j that was not searched (whose row may lack i), after the
// row's entries, at a slot counted by `extra[j]` (an integer atomic: which
// token takes which slot varies, `merge` sorts them). The row's length is then
// what it keeps plus what it gains: the longest is reported as needed.
@compute @workgroup_size(WORKGROUP_SIZE)
fn insert(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = listed(wg, groups, local);
    if i == 0xffffffffu || atomicLoad(&flags[NOW]) != REFRESH {
        return;
    }
    let row = rows[i];
    for (var k = 0u; k < row.y; k++) {
        let j = cand[row.x + k];
        if travel[j] < 0.0 {
            continue;
        }
        let at = rows[j].y + atomicAdd(&extra[j], 1u);
        if at < p.cap {
            cand[j * p.cap + at] = i;
        }
        atomicMax(&flags[MAX_COUNT], at + 1u);
    }
}

// Refresh, step 2 (before `insert`): the row of every token j not searched in
// this tick drops its entries of searched tokens (their new rows say where they
// are now), so that `insert` appends to what the row keeps.
@compute @workgroup_size(WORKGROUP_SIZE)
fn prune(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let j = invocation(wg, local, p.groups_x);
    if j >= p.n || atomicLoad(&flags[NOW]) != REFRESH || travel[j] < 0.0 {
        return;
    }
    let row = rows[j];
    var len = 0u;
    for (var k = 0u; k < row.y; k++) {
        let o = cand[row.x + k];
        if !(travel[o] < 0.0) {
            cand[row.x + len] = o;
            len += 1u;
        }
    }
    rows[j].y = len;
}

// Refresh, step 4: the entries `insert` appended to the row of every token j
// not searched in this tick are sorted into it. The row then holds exactly the
// pairs within cutoff + skin at their last check, as a full rebuild's rows
// would for those checks: the CPU's refresh (`NeighborList::refresh`) by the
// same argument (`Travel`).
@compute @workgroup_size(WORKGROUP_SIZE)
fn merge(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let j = invocation(wg, local, p.groups_x);
    if j >= p.n || atomicLoad(&flags[NOW]) != REFRESH || travel[j] < 0.0 {
        return;
    }
    let row = rows[j];
    let added = atomicExchange(&extra[j], 0u);
    let end = min(row.y + added, p.cap);
    for (var k = row.y; k < end; k++) {
        sort_in(row.x, k, cand[row.x + k]);
    }
    rows[j].y = end;
}

// `Integrate` then `Constrain`'s token rules, as `systems/integrate.rs` and
// `systems/constrain.rs` compute them: v' = (v + (s ⊙ F) · dt/m) · (1 − γ dt),
// capped at v_max; x' = x + v' dt; then non-finite coordinates are reset, the
// position is clamped to the bounds (stopping the motion across them, axis by
// axis) and the speed capped again.
@compute @workgroup_size(WORKGROUP_SIZE)
fn integrate(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = invocation(wg, local, p.groups_x);
    if i >= p.n {
        return;
    }
    var f0 = force[2u * i];
    var f1 = force[2u * i + 1u];
    // The group pull (`systems::organize::group_pull`), after the pair and
    // link forces: F += k·m·(1 − ρ/ρ₀)₊ · (c − x), with k·m in `pull[3i+2].x`
    // (0: not grouped) and the group's centre c in `pull[3i]`, `pull[3i+1]`.
    let coef = pull[3u * i + 2u].x;
    if coef != 0.0 {
        let s = coef * max(1.0 - rho[i] * p.inv_target_density, 0.0);
        f0 += (pull[3u * i] - pos[2u * i]) * s;
        f1 += (pull[3u * i + 1u] - pos[2u * i + 1u]) * s;
    }
    let a = p.dt / tok[i].y;
    var v0 = (vel[2u * i] + f0 * p.scale0 * a) * p.keep;
    var v1 = (vel[2u * i + 1u] + f1 * p.scale1 * a) * p.keep;
    let speed2 = dot(v0, v0) + dot(v1, v1);
    if speed2 > p.max_speed * p.max_speed {
        let k = p.max_speed / sqrt(speed2);
        v0 *= k;
        v1 *= k;
        atomicAdd(&flags[LIMITED], 1u);
    }
    var x0 = pos[2u * i] + v0 * p.dt;
    var x1 = pos[2u * i + 1u] + v1 * p.dt;
    let step = sqrt(dot(v0, v0) + dot(v1, v1)) * p.dt;
    // A row searched in this tick is marked −1: its path starts at 0.
    let path = max(travel[i], 0.0) + step;
    travel[i] = path;
    if !(path <= p.half_skin) || !finite(path) {
        atomicMax(&flags[NEXT], REFRESH);
    }
    if finite(step) {
        atomicMax(&flags[MAX_STEP], bitcast<u32>(step));
    }

    if !finite4(x0) || !finite4(x1) || !finite4(v0) || !finite4(v1) {
        atomicAdd(&flags[NON_FINITE], 1u);
        let z0 = clamp(vec4<f32>(0.0), p.lo0, p.hi0);
        let z1 = clamp(vec4<f32>(0.0), p.lo1, p.hi1);
        x0 = select(z0, x0, vec4<bool>(finite(x0.x), finite(x0.y), finite(x0.z), finite(x0.w)));
        x1 = select(z1, x1, vec4<bool>(finite(x1.x), finite(x1.y), finite(x1.z), finite(x1.w)));
        v0 = vec4<f32>(0.0);
        v1 = vec4<f32>(0.0);
    }
    let c0 = clamp(x0, p.lo0, p.hi0);
    let c1 = clamp(x1, p.lo1, p.hi1);
    if any(c0 != x0) || any(c1 != x1) {
        atomicAdd(&flags[BOUNDS], 1u);
        v0 = select(v0, vec4<f32>(0.0), c0 != x0);
        v1 = select(v1, vec4<f32>(0.0), c1 != x1);
        x0 = c0;
        x1 = c1;
    }
    let s2 = dot(v0, v0) + dot(v1, v1);
    if s2 > p.max_speed * p.max_speed * (1.0 + 1e-5) {
        atomicAdd(&flags[SPEED], 1u);
        let k = p.max_speed / sqrt(s2);
        v0 *= k;
        v1 *= k;
    }
    pos[2u * i] = x0;
    pos[2u * i + 1u] = x1;
    vel[2u * i] = v0;
    vel[2u * i + 1u] = v1;
}

// Between ticks, after the host wrote new link placements: each row's links
// start and count, leaving its candidates as they are (no search needed).
@compute @workgroup_size(WORKGROUP_SIZE)
fn place_links(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = invocation(wg, local, p.groups_x);
    if i >= p.n {
        return;
    }
    let r = rows[i];
    rows[i] = vec4<u32>(r.x, r.y, places[i].x, places[i].y);
}
