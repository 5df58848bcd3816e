//! The GPU-resident tick: positions, velocities, token parameters, links and
//! neighbour lists live in device buffers across ticks, and a tick is a
//! sequence of compute dispatches with nothing crossing the bus
//! (`shaders/resident.wgsl`, then `shaders/forces.wgsl` on the same buffers).
//!
//! One tick, all on the device:
//!
//! 1. **Neighbour search**, on the CPU's rule (`Travel`): a token's row holds
//!    every `j` within `max(R_i, R_j) + skin`, and is searched again once the
//!    token's path since its last search passes `skin / 2`. Every block of
//!    [`BLOCK`] tokens of a space-filling order, and every superblock of [`FAN`]
//!    blocks, is bounded by a box of its current positions; a search prunes by
//!    these boxes and keeps the row sorted by slot. Exact: it finds what the
//!    CPU's k-d tree finds (see the shader's header). A *refresh* searches the
//!    rows of the tokens past half the skin only (listed by `collect`, searched
//!    in an indirect dispatch), drops them from the other rows, adds each to its
//!    new neighbours' rows (`prune`, `insert`, `merge`: the CPU's symmetric
//!    refresh); a *rebuild* (after a load or a regrow) searches all.
//! 2. **Forces**: `forces.wgsl`'s `density` then `main` (the same shader as the
//!    CPU-assisted GPU backend, so the same law, the same summation order).
//! 3. **Integration and constraints**: the group pull (set with
//!    [`set_group_pull`](GpuResident::set_group_pull)), `Integrate`'s
//!    semi-implicit Euler and `Constrain`'s token rules (non-finite values,
//!    position bounds, speed).
//!
//! The space-filling order is the leaf order of the CPU's k-d tree
//! ([`KdTree::order`]), taken at [`load`](GpuResident::load) and
//! [`reorder`](GpuResident::reorder) (by [`step`](GpuResident::step) every
//! [`DEFAULT_REORDER_EVERY`] ticks unless set otherwise). It decides only how
//! tight the boxes are; rows are exact in any order.
//!
//! **What crosses the bus.** [`step`](GpuResident::step) writes nothing per
//! tick; it reads back one 64-byte block of counters per batch of at most
//! [`BATCH`] ticks (searches, rows searched, the longest row, the constraint
//! counts).
//! State comes back only when asked ([`read_state`](GpuResident::read_state) and
//! the others), and every byte each way is counted
//! ([`transfers`](GpuResident::transfers)).
//!
//! **Capacity.** Rows hold at most `cap` slots (first 64). The search counts
//! every row's true length; when one exceeded `cap`, the batch is recomputed from
//! a device-side copy of its starting state with rows of `longest + longest / 4 +
//! 8` slots and a rebuild first (results do not depend on when or how rows are
//! searched, so the recomputed batch is what a large enough `cap` would have
//! given, bit for bit). Every buffer's size is computed in 64 bits and checked
//! against the device's limits before it is made ([`GpuError::TooLarge`],
//! naming the buffer), and the rows' slots (tokens × `cap`) must stay below
//! 2³², so every index the shaders compute fits their 32 bits.
//!
//! **Determinism.** Every float is one invocation's own (no float atomics; the
//! atomics are integer counters, maxima and slot claims, and `merge` sorts the
//! claimed slots): the same device and driver replay a run bit for bit.
//!
//! Learning, `Organize`, the digest and the WAL are not part of this tick: it is
//! the physics of a world whose parameters are fixed between
//! [`load`](GpuResident::load)s; links change through
//! [`set_links`](GpuResident::set_links) (only the bytes that changed are
//! written). The engine runs it under `--backend gpu` through
//! [`ResidentEngine`](super::ResidentEngine), which reads back what its CPU
//! stages need every tick (see `docs/gpu.md`).

use super::forces::GpuParams;
use super::{DeviceErrors, FORCES_WGSL, GpuContext, GpuError};
use crate::geometry::spatial::KdTree;
use crate::model::math::Vec8;
use crate::physics::{ForceParams, LinkEnd, LinkTable, TokenParams};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The WGSL of the resident tick, as embedded.
pub const RESIDENT_WGSL: &str = include_str!("../../../shaders/resident.wgsl");

/// Tokens per block of the neighbour search (the shader's `BLOCK`).
pub const BLOCK: u32 = 8;
/// Blocks per superblock (the shader's `FAN`).
pub const FAN: u32 = 32;
/// Ticks per batch: one counter readback per batch.
pub const BATCH: u32 = 64;
/// Slots per row at first.
pub const FIRST_CAP: u32 = 64;
/// Ticks between two orderings of the tokens by [`GpuResident::step`].
pub const DEFAULT_REORDER_EVERY: u64 = 1000;

/// The resident tick's entry points, in dispatch order per tick (`density` and
/// `main` are `forces.wgsl`'s, at [`FORCE_ENTRIES`]).
/// The first [`TICK_ENTRIES`] are one tick's; the last, `place_links`, runs
/// between ticks when links formed or went.
pub const RESIDENT_ENTRY_POINTS: [&str; 13] = [
    "begin",
    "bounds_blocks",
    "bounds_super",
    "collect",
    "args",
    "build",
    "prune",
    "insert",
    "merge",
    "density",
    "main",
    "integrate",
    "place_links",
];

/// Dispatches per tick: the first entries of [`RESIDENT_ENTRY_POINTS`].
pub const TICK_ENTRIES: usize = 12;

/// The index of `place_links` in [`RESIDENT_ENTRY_POINTS`].
const PLACE_LINKS: usize = 12;

/// The indices in [`RESIDENT_ENTRY_POINTS`] of `forces.wgsl`'s entry points.
pub const FORCE_ENTRIES: [usize; 2] = [9, 10];

/// The indices of the entry points dispatched indirectly, one invocation per
/// token `collect` listed (`args` writes their arguments to a buffer of their
/// own).
const INDIRECT_ENTRIES: [usize; 2] = [5, 7];

/// The bindings each entry of [`RESIDENT_ENTRY_POINTS`] uses, in its own
/// shader's numbering (its bind group holds these and only these; a test checks
/// them against the WGSL).
pub const ENTRY_BINDINGS: [&[u32]; 13] = [
    &[0, 10],
    &[0, 1, 3, 6, 7, 10],
    &[0, 7, 10],
    &[0, 6, 9, 10, 12],
    &[10, 13],
    &[0, 1, 3, 4, 5, 6, 7, 10, 12],
    &[0, 4, 5, 9, 10],
    &[0, 4, 5, 9, 10, 11, 12],
    &[0, 4, 5, 9, 10, 11],
    &[0, 1, 2, 3, 4, 8],
    &[0, 1, 2, 3, 4, 5, 6, 7, 8],
    &[0, 1, 2, 3, 8, 9, 10, 14, 15],
    &[0, 4, 16],
];

/// Indices of the counters in the flags buffer (the shader's constants).
mod flag {
    pub const NEXT: usize = 1;
    pub const MAX_COUNT: usize = 2;
    pub const REBUILDS: usize = 3;
    pub const TICKS: usize = 4;
    pub const LIMITED: usize = 5;
    pub const NON_FINITE: usize = 6;
    pub const BOUNDS: usize = 7;
    pub const SPEED: usize = 8;
    pub const MAX_STEP: usize = 9;
    /// Low word; the high word follows.
    pub const SCANNED: usize = 10;
    pub const ROWS: usize = 12;
    pub const FULL: usize = 13;
    /// The value of `NEXT` that rebuilds every row (1 refreshes the rows of
    /// the tokens past half the skin; `integrate` raises it).
    pub const REBUILD: u32 = 2;
    pub const LEN: usize = 16;
}

/// The uniform block of `resident.wgsl` (`Params` there).
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct ResidentUniform {
    /// Tokens.
    pub n: u32,
    /// Workgroups along x of a per-token dispatch.
    pub groups_x: u32,
    /// Blocks.
    pub blocks: u32,
    /// Superblocks.
    pub supers: u32,
    /// Slots per row.
    pub cap: u32,
    /// Workgroups along x of a per-block dispatch.
    pub block_groups_x: u32,
    /// Time step.
    pub dt: f32,
    /// `1 − damping · dt`.
    pub keep: f32,
    /// Speed limit.
    pub max_speed: f32,
    /// Verlet skin.
    pub skin: f32,
    /// Half the skin.
    pub half_skin: f32,
    /// 1: every rebuild searches every row.
    pub full_only: u32,
    /// Mobility, axes 0..4 and 4..8.
    pub scale: [[f32; 4]; 2],
    /// Lower bounds.
    pub lo: [[f32; 4]; 2],
    /// Upper bounds.
    pub hi: [[f32; 4]; 2],
    /// `1 / ρ₀` (the group pull fades out at the target density).
    pub inv_target_density: f32,
    /// Padding to 16 bytes.
    pub pad: [u32; 3],
}

/// One token's group pull, as [`GpuResident::set_group_pull`] takes it: the
/// `Forces` stage's `group_pull` (`F += k·m·(1 − ρ/ρ₀)₊ · (c − x)`, after
/// the pair and link forces), on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct GroupPull {
    /// The centre `c` of the token's level-1 group.
    pub centre: Vec8,
    /// `hierarchy.group_pull · m` (0: the token is in no group).
    pub coefficient: f32,
    /// Padding to 48 bytes.
    pub pad: [f32; 3],
}

/// The constants of the resident tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResidentParams {
    /// The force law's constants.
    pub forces: ForceParams,
    /// Time step.
    pub dt: f32,
    /// Velocity damping per unit time.
    pub damping: f32,
    /// Speed limit.
    pub max_speed: f32,
    /// Per-axis mobility (the CDNA's scales).
    pub scales: Vec8,
    /// Lower position bounds.
    pub min_bounds: Vec8,
    /// Upper position bounds.
    pub max_bounds: Vec8,
    /// Verlet skin (length units).
    pub skin: f32,
}

impl ResidentParams {
    /// Every constant's bits, so that two sets compare bit for bit (a `-0.0`
    /// is not a `0.0` here).
    pub fn bits(&self) -> [u32; 34] {
        let f = &self.forces;
        let mut out = [0u32; 34];
        let scalars = [
            f.k_field,
            f.k_density,
            f.inv_target_density,
            f.k_core,
            f.core_radius,
            f.k_link,
            self.dt,
            self.damping,
            self.max_speed,
            self.skin,
        ];
        let vectors = [self.scales, self.min_bounds, self.max_bounds];
        for (o, v) in out.iter_mut().zip(
            scalars
                .into_iter()
                .chain(vectors.iter().flat_map(|v| v.to_array())),
        ) {
            *o = v.to_bits();
        }
        out
    }

    /// The constants a [`Cdna`](crate::model::cdna::Cdna) and a
    /// [`SimConfig`](crate::model::config::SimConfig) give, as the CPU tick uses them.
    pub fn new(cdna: &crate::model::cdna::Cdna, config: &crate::model::config::SimConfig) -> Self {
        Self {
            forces: ForceParams::from_cdna(cdna),
            dt: config.dt,
            damping: cdna.physics.damping,
            max_speed: cdna.physics.max_speed,
            scales: cdna.scales(),
            min_bounds: cdna.min_bounds(),
            max_bounds: cdna.max_bounds(),
            skin: config.neighbor_skin,
        }
    }
}

/// The state a resident world starts from, slot order. Rows and sums run in
/// slot order: give the tokens in id order to sum as the CPU does.
pub struct ResidentState<'a> {
    /// Positions.
    pub positions: &'a [Vec8],
    /// Velocities.
    pub velocities: &'a [Vec8],
    /// Charge, mass, radius and strength.
    pub params: &'a [TokenParams],
    /// Links, by slot (see [`LinkTable::build`]); empty for none.
    pub links: &'a LinkTable,
}

/// A world's state and constants as [`GpuResident::load`] takes them, owned
/// (`Simulation::resident_world` gathers one from an engine).
#[derive(Clone, Debug, Default)]
pub struct ResidentWorld {
    /// Positions, slot order (slot k: the k-th live id in increasing order).
    pub positions: Vec<Vec8>,
    /// Velocities.
    pub velocities: Vec<Vec8>,
    /// Charge, mass, radius and strength.
    pub params: Vec<TokenParams>,
    /// Links, by slot.
    pub links: LinkTable,
    /// The tick's constants.
    pub constants: Option<ResidentParams>,
}

impl ResidentWorld {
    /// The state, borrowed.
    pub fn state(&self) -> ResidentState<'_> {
        ResidentState {
            positions: &self.positions,
            velocities: &self.velocities,
            params: &self.params,
            links: &self.links,
        }
    }
}

/// Counters of the resident tick since the last [`load`](GpuResident::load).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ResidentStats {
    /// Ticks run.
    pub ticks: u64,
    /// Ticks that searched neighbour rows (refreshes and full rebuilds).
    pub rebuilds: u64,
    /// Of these, the ticks that searched every row.
    pub full_rebuilds: u64,
    /// The longest row (candidates within cutoff + skin) a search or refresh
    /// needed since the load.
    pub max_candidates: u32,
    /// Rows searched.
    pub rows_built: u64,
    /// Distances the search computed, over every row built:
    /// `distances_tested / rows_built` is how well the boxes prune.
    pub distances_tested: u64,
    /// Slots per row now.
    pub row_capacity: u32,
    /// Batches recomputed because a row outgrew its capacity.
    pub regrows: u64,
    /// Times the tokens were ordered again ([`GpuResident::reorder`]).
    pub reorders: u64,
    /// Token-steps capped at the speed limit by the integrator.
    pub speed_limited: u64,
    /// Non-finite positions or velocities reset.
    pub non_finite: u64,
    /// Positions clamped to the bounds.
    pub bounds: u64,
    /// Speeds capped by the constraints.
    pub speed: u64,
    /// Largest `|v| dt` of one token in one tick of the last batch (the step
    /// before the constraints; non-finite steps are left out).
    pub max_step: f32,
}

/// Bytes moved between host and device since the last [`load`](GpuResident::load)
/// (the load's own upload included).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Transfers {
    /// Bytes written to the device.
    pub uploaded: u64,
    /// Bytes read back.
    pub read_back: u64,
}

/// Wall time of each entry point of one tick, measured by
/// [`profile_tick`](GpuResident::profile_tick).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KernelTimes {
    /// `(entry point, seconds)`, in dispatch order.
    pub kernels: Vec<(&'static str, f64)>,
    /// Whether the tick searched neighbour rows (a refresh or a rebuild).
    pub rebuilt: bool,
    /// True: the device's timestamps at the start and end of each compute pass
    /// (the kernels' own time, all dispatched in one submission); false: the wall
    /// time of each dispatch submitted and waited for alone (an upper bound),
    /// where the device has no timestamp queries.
    pub timestamps: bool,
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// Every device buffer, by binding.
struct Buffers {
    uniform: wgpu::Buffer,
    forces_uniform: wgpu::Buffer,
    pos: wgpu::Buffer,
    vel: wgpu::Buffer,
    tok: wgpu::Buffer,
    rows: wgpu::Buffer,
    cand: wgpu::Buffer,
    perm: wgpu::Buffer,
    boxes: wgpu::Buffer,
    force: wgpu::Buffer,
    aux: wgpu::Buffer,
    rho: wgpu::Buffer,
    links: wgpu::Buffer,
    /// Per token: its group's centre and `group_pull · m` (three vec4).
    pull: wgpu::Buffer,
    /// Per token: its links' start and count (for `place_links`).
    places: wgpu::Buffer,
    travel: wgpu::Buffer,
    flags: wgpu::Buffer,
    extra: wgpu::Buffer,
    list: wgpu::Buffer,
    args: wgpu::Buffer,
    /// Device-side copies of the batch's starting state (pos, vel, travel, flags).
    backup: [wgpu::Buffer; 4],
}

impl Buffers {
    /// The buffer of `binding` for `entry` (`resident.wgsl`'s numbering, or
    /// `forces.wgsl`'s for `density` and `main`).
    fn binding(&self, entry: usize, binding: u32) -> &wgpu::Buffer {
        if FORCE_ENTRIES.contains(&entry) {
            return match binding {
                0 => &self.forces_uniform,
                1 => &self.pos,
                2 => &self.tok,
                3 => &self.rows,
                4 => &self.cand,
                5 => &self.links,
                6 => &self.force,
                7 => &self.aux,
                _ => &self.rho,
            };
        }
        match binding {
            0 => &self.uniform,
            1 => &self.pos,
            2 => &self.vel,
            3 => &self.tok,
            4 => &self.rows,
            5 => &self.cand,
            6 => &self.perm,
            7 => &self.boxes,
            8 => &self.force,
            9 => &self.travel,
            10 => &self.flags,
            11 => &self.extra,
            12 => &self.list,
            13 => &self.args,
            14 => &self.rho,
            15 => &self.pull,
            _ => &self.places,
        }
    }

    fn bytes(&self) -> u64 {
        [
            &self.uniform,
            &self.forces_uniform,
            &self.pos,
            &self.vel,
            &self.tok,
            &self.rows,
            &self.cand,
            &self.perm,
            &self.boxes,
            &self.force,
            &self.aux,
            &self.rho,
            &self.links,
            &self.travel,
            &self.flags,
            &self.extra,
            &self.list,
            &self.args,
            &self.pull,
            &self.places,
        ]
        .into_iter()
        .chain(&self.backup)
        .map(|b| b.size())
        .sum()
    }
}

/// What [`GpuResident::read_tick`] reads after a tick, slot order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickReadback {
    /// Positions after the tick.
    pub positions: Vec<Vec8>,
    /// Velocities after the tick.
    pub velocities: Vec<Vec8>,
    /// The tick's local densities `ρ` (at the positions before it).
    pub density: Vec<f32>,
    /// Each token's proposed link partner (slot; `u32::MAX` for none) when
    /// [`set_proposals`](GpuResident::set_proposals) asked for them.
    pub nearest: Vec<u32>,
    /// Ordered pairs within their cutoff in the tick (each pair counts twice).
    pub pairs: u64,
}

/// A world whose tick runs on the device (see the module docs).
pub struct GpuResident {
    ctx: GpuContext,
    pipelines: Vec<wgpu::ComputePipeline>,
    bufs: Option<Buffers>,
    binds: Vec<wgpu::BindGroup>,
    params: Option<ResidentParams>,
    n: u32,
    cap: u32,
    first_cap: u32,
    full_only: bool,
    reorder_every: u64,
    since_reorder: u64,
    grid: (u32, u32),
    block_grid: (u32, u32),
    stats: ResidentStats,
    transfers: Transfers,
    errors: DeviceErrors,
    /// `Learn`'s proposals: squared formation distance and degree limit.
    proposals: Option<(f32, u32)>,
    /// The link ends and per-token link placements on the device, as last
    /// written (for [`set_links`](Self::set_links) to write only what changed).
    link_ends: Vec<LinkEnd>,
    link_places: Vec<[u32; 4]>,
    /// The group pull on the device, as last written.
    pull: Vec<GroupPull>,
}

impl std::fmt::Debug for GpuResident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuResident")
            .field("adapter", &self.ctx.describe())
            .field("tokens", &self.n)
            .finish()
    }
}

fn create(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("neurograph.resident.{label}")),
        size: size.max(16).next_multiple_of(16),
        usage,
        mapped_at_creation: false,
    })
}

impl GpuResident {
    /// Compiles both shaders on `ctx`.
    ///
    /// # Errors
    /// [`GpuError::Device`] when the device allows fewer than 8 storage buffers
    /// per stage; [`GpuError::Failed`] when a shader does not compile on it.
    pub fn new(ctx: GpuContext) -> Result<Self, GpuError> {
        if ctx.limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(GpuError::Device {
                adapter: ctx.describe(),
                reason: format!(
                    "it allows {} storage buffers per shader stage, the resident tick needs 8",
                    ctx.limits.max_storage_buffers_per_shader_stage
                ),
            });
        }
        let errors = ctx.errors.clone();
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |label: &str, src: &'static str| {
            ctx.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(label),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                })
        };
        let resident = module("neurograph.resident.wgsl", RESIDENT_WGSL);
        let forces = module("neurograph.forces.wgsl", FORCES_WGSL);
        let pipelines = RESIDENT_ENTRY_POINTS
            .iter()
            .enumerate()
            .map(|(k, entry)| {
                let m = if FORCE_ENTRIES.contains(&k) {
                    &forces
                } else {
                    &resident
                };
                ctx.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&format!("neurograph.resident.{entry}")),
                        layout: None,
                        module: m,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Failed(format!(
                "the resident tick's shaders do not compile: {e}"
            )));
        }
        Ok(Self {
            ctx,
            pipelines,
            bufs: None,
            binds: Vec::new(),
            params: None,
            n: 0,
            cap: FIRST_CAP,
            first_cap: FIRST_CAP,
            full_only: false,
            reorder_every: DEFAULT_REORDER_EVERY,
            since_reorder: 0,
            grid: (1, 1),
            block_grid: (1, 1),
            stats: ResidentStats::default(),
            transfers: Transfers::default(),
            errors,
            proposals: None,
            link_ends: Vec::new(),
            link_places: Vec::new(),
            pull: Vec::new(),
        })
    }

    /// Bytes on the host: the copies of the link ends, link placements and
    /// group pulls last written to the device.
    pub fn host_bytes(&self) -> u64 {
        (self.link_ends.capacity() * size_of::<LinkEnd>()
            + self.link_places.capacity() * 16
            + self.pull.capacity() * size_of::<GroupPull>()) as u64
    }

    /// The device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Tokens loaded.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// True when no world is loaded.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Slots per row that the next [`load`](Self::load) reserves (at least 1;
    /// [`FIRST_CAP`] unless set). Rows grow past it as needed.
    pub fn set_first_row_capacity(&mut self, slots: u32) {
        self.first_cap = slots.max(1);
    }

    /// With `true`, every tick that must update the rows searches all of them
    /// rather than refreshing those of the tokens past half the skin (the
    /// results are the same bits; a test compares them). Takes effect at the
    /// next [`load`](Self::load) (or when the rows next grow).
    pub fn set_full_rebuilds(&mut self, full: bool) {
        self.full_only = full;
    }

    /// Counters since the last load.
    pub fn stats(&self) -> ResidentStats {
        self.stats
    }

    /// Bytes moved each way since the last load.
    pub fn transfers(&self) -> Transfers {
        self.transfers
    }

    /// Bytes of the state proper: positions, velocities, token parameters (80 B a
    /// token) and link ends (12 B each). "1% of the state" is of this.
    pub fn state_bytes(&self, links: usize) -> u64 {
        self.n as u64 * 80 + links as u64 * 12
    }

    /// Bytes of every device buffer.
    pub fn device_bytes(&self) -> u64 {
        self.bufs.as_ref().map_or(0, Buffers::bytes)
    }

    /// A storage buffer of `bytes`, checked against the device's limits.
    fn storage(&self, what: &'static str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let limit = self.ctx.max_binding();
        if bytes > limit {
            return Err(GpuError::TooLarge { what, bytes, limit });
        }
        Ok(create(&self.ctx, what, bytes, STORAGE))
    }

    /// The neighbour rows' buffer: `n × cap` slots, fewer than 2³² (the shaders
    /// index them in 32 bits) and within one binding.
    fn rows_storage(&self, n: u64, cap: u64) -> Result<wgpu::Buffer, GpuError> {
        let slots = n * cap;
        if slots >= 1 << 32 {
            return Err(GpuError::TooLarge {
                what: "neighbour rows (2^32 slots at most)",
                bytes: slots * 4,
                limit: (1 << 32) * 4,
            });
        }
        self.storage("neighbour rows", slots * 4)
    }

    /// Uploads a world and its constants, replacing any world loaded before
    /// (which is gone even when this one is refused); the first tick builds
    /// every row.
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when the arrays disagree in length, a position,
    /// velocity, link weight or rest length is not finite, a position lies
    /// outside the bounds, a mass or radius is not positive, a link names a slot
    /// past the tokens, or a constant is out of range (the message names the
    /// slot or constant and the value); [`GpuError::TooLarge`] /
    /// [`GpuError::TooManyTokens`] when the world does not fit the device (the
    /// buffer, its bytes and the limit named); [`GpuError::Failed`] when the
    /// device fails.
    pub fn load(
        &mut self,
        state: ResidentState<'_>,
        params: ResidentParams,
    ) -> Result<(), GpuError> {
        self.drop_world();
        validate(&state, &params)?;
        let r = self.upload_world(state, params);
        if r.is_err() {
            self.drop_world();
        }
        r
    }

    /// [`load`](Self::load) after validation.
    fn upload_world(
        &mut self,
        state: ResidentState<'_>,
        params: ResidentParams,
    ) -> Result<(), GpuError> {
        let n = state.positions.len();
        if n as u64 > (u32::MAX / 2) as u64 {
            return Err(GpuError::TooManyTokens {
                tokens: n as u64,
                limit: (u32::MAX / 2) as u64,
            });
        }
        self.stats = ResidentStats::default();
        self.transfers = Transfers::default();
        self.since_reorder = 0;
        self.cap = self.first_cap;
        self.n = n as u32;
        self.grid = self.ctx.grid(n as u64)?;
        let blocks = (n as u64).div_ceil(BLOCK as u64);
        self.block_grid = self.ctx.grid(blocks)?;
        let supers = blocks.div_ceil(FAN as u64);
        let nn = n as u64;
        let ends = state.links.ends();
        let bufs = Buffers {
            uniform: create(
                &self.ctx,
                "params",
                size_of::<ResidentUniform>() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
            forces_uniform: create(
                &self.ctx,
                "force params",
                size_of::<GpuParams>() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
            pos: self.storage("positions", nn * 32)?,
            vel: self.storage("velocities", nn * 32)?,
            tok: self.storage("token parameters", nn * 16)?,
            rows: self.storage("rows", nn * 16)?,
            cand: self.rows_storage(nn, self.cap as u64)?,
            perm: self.storage("sort order", nn * 4)?,
            boxes: self.storage("boxes", (blocks + supers) * 80)?,
            force: self.storage("forces", nn * 32)?,
            aux: self.storage("pair counts", nn * 8)?,
            rho: self.storage("densities", nn * 4)?,
            links: self.storage("link ends", ends.len() as u64 * 12)?,
            pull: self.storage("group pull", nn * 48)?,
            places: self.storage("link placements", nn * 8)?,
            travel: self.storage("paths", nn * 4)?,
            flags: self.storage("counters", flag::LEN as u64 * 4)?,
            extra: self.storage("row additions", nn * 4)?,
            list: self.storage("rows to search", nn * 4)?,
            args: create(
                &self.ctx,
                "dispatch arguments",
                16,
                STORAGE | wgpu::BufferUsages::INDIRECT,
            ),
            backup: [
                self.storage("positions (batch start)", nn * 32)?,
                self.storage("velocities (batch start)", nn * 32)?,
                self.storage("paths (batch start)", nn * 4)?,
                self.storage("counters (batch start)", flag::LEN as u64 * 4)?,
            ],
        };
        self.bufs = Some(bufs);
        self.params = Some(params);
        let q = &self.ctx.queue;
        let b = self.bufs.as_ref().expect("just set");
        let mut up = 0u64;
        let mut write = |buf: &wgpu::Buffer, bytes: &[u8]| {
            if !bytes.is_empty() {
                q.write_buffer(buf, 0, bytes);
            }
            up += bytes.len() as u64;
        };
        write(&b.pos, bytemuck::cast_slice(state.positions));
        write(&b.vel, bytemuck::cast_slice(state.velocities));
        write(&b.tok, bytemuck::cast_slice(state.params));
        let places = link_rows(state.links, n);
        write(&b.links, bytemuck::cast_slice(ends));
        write(&b.rows, bytemuck::cast_slice(&places));
        write(&b.travel, bytemuck::cast_slice(&vec![0f32; n]));
        write(
            &b.pull,
            bytemuck::cast_slice(&vec![GroupPull::default(); n]),
        );
        write(&b.extra, bytemuck::cast_slice(&vec![0u32; n]));
        let mut flags = [0u32; flag::LEN];
        flags[flag::NEXT] = flag::REBUILD;
        write(&b.flags, bytemuck::cast_slice(&flags));
        self.transfers.uploaded += up;
        self.link_ends = ends.to_vec();
        self.link_places = places;
        self.pull = vec![GroupPull::default(); n];
        self.write_uniforms()?;
        self.upload_order(state.positions);
        self.rebind();
        self.flush()
    }

    /// Writes the order of a k-d tree over `positions`.
    fn upload_order(&mut self, positions: &[Vec8]) {
        let order = KdTree::build(positions).order().to_vec();
        let b = self.bufs.as_ref().expect("loaded");
        if !order.is_empty() {
            self.ctx
                .queue
                .write_buffer(&b.perm, 0, bytemuck::cast_slice(&order));
        }
        self.transfers.uploaded += order.len() as u64 * 4;
    }

    fn write_uniforms(&mut self) -> Result<(), GpuError> {
        let p = self
            .params
            .ok_or(GpuError::BadInput("no world loaded".into()))?;
        let b = self
            .bufs
            .as_ref()
            .ok_or(GpuError::BadInput("no world loaded".into()))?;
        let blocks = (self.n as u64).div_ceil(BLOCK as u64) as u32;
        let halves = |v: Vec8| {
            let a = v.to_array();
            [[a[0], a[1], a[2], a[3]], [a[4], a[5], a[6], a[7]]]
        };
        let u = ResidentUniform {
            n: self.n,
            groups_x: self.grid.0,
            blocks,
            supers: blocks.div_ceil(FAN),
            cap: self.cap,
            block_groups_x: self.block_grid.0,
            dt: p.dt,
            keep: 1.0 - p.damping * p.dt,
            max_speed: p.max_speed,
            skin: p.skin,
            half_skin: p.skin / 2.0,
            full_only: self.full_only as u32,
            scale: halves(p.scales),
            lo: halves(p.min_bounds),
            hi: halves(p.max_bounds),
            inv_target_density: p.forces.inv_target_density,
            pad: [0; 3],
        };
        let f = GpuParams {
            n: self.n,
            first: 0,
            propose: self.proposals.is_some() as u32,
            max_degree: self.proposals.map_or(0, |q| q.1),
            groups_x: self.grid.0,
            k_field: p.forces.k_field,
            k_core: p.forces.k_core,
            core_radius: p.forces.core_radius,
            k_link: p.forces.k_link,
            within2: self.proposals.map_or(0.0, |q| q.0),
            k_density: p.forces.k_density,
            inv_target_density: p.forces.inv_target_density,
        };
        self.ctx
            .queue
            .write_buffer(&b.uniform, 0, bytemuck::bytes_of(&u));
        self.ctx
            .queue
            .write_buffer(&b.forces_uniform, 0, bytemuck::bytes_of(&f));
        self.transfers.uploaded += (size_of_val(&u) + size_of_val(&f)) as u64;
        Ok(())
    }

    fn rebind(&mut self) {
        let Some(b) = &self.bufs else {
            self.binds.clear();
            return;
        };
        self.binds = self
            .pipelines
            .iter()
            .enumerate()
            .map(|(k, pipeline)| {
                let entries: Vec<wgpu::BindGroupEntry> = ENTRY_BINDINGS[k]
                    .iter()
                    .map(|&binding| wgpu::BindGroupEntry {
                        binding,
                        resource: b.binding(k, binding).as_entire_binding(),
                    })
                    .collect();
                self.ctx
                    .device
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&format!("neurograph.resident.{}", RESIDENT_ENTRY_POINTS[k])),
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    })
            })
            .collect();
    }

    /// Submits what was queued and waits for it.
    fn flush(&self) -> Result<(), GpuError> {
        self.ctx.queue.submit([]);
        self.ctx.wait(&self.errors)
    }

    /// Encodes dispatch `k` of a tick.
    fn dispatch(&self, enc: &mut wgpu::CommandEncoder, k: usize) {
        self.dispatch_timed(enc, k, None);
    }

    /// Encodes dispatch `k` of a tick in its own compute pass, writing the
    /// pass's start and end timestamps at `(queries, index)` and `index + 1`
    /// when given.
    fn dispatch_timed(
        &self,
        enc: &mut wgpu::CommandEncoder,
        k: usize,
        timestamps: Option<(&wgpu::QuerySet, u32)>,
    ) {
        let (gx, gy) = match k {
            0 | 4 => (1, 1),
            1 | 2 => self.block_grid,
            _ => self.grid,
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(RESIDENT_ENTRY_POINTS[k]),
            timestamp_writes: timestamps.map(|(query_set, at)| wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(at),
                end_of_pass_write_index: Some(at + 1),
            }),
        });
        pass.set_pipeline(&self.pipelines[k]);
        pass.set_bind_group(0, &self.binds[k], &[]);
        if INDIRECT_ENTRIES.contains(&k) {
            let b = self.bufs.as_ref().expect("loaded");
            pass.dispatch_workgroups_indirect(&b.args, 0);
        } else {
            pass.dispatch_workgroups(gx, gy, 1);
        }
    }

    /// Runs `ticks` ticks on the device, in batches of at most [`BATCH`], and
    /// returns the counters.
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when no world is loaded; [`GpuError::TooLarge`] when
    /// the rows a batch needs do not fit one binding; [`GpuError::Failed`] when the
    /// device fails. After any error the world is dropped: load it again.
    pub fn step(&mut self, ticks: u64) -> Result<ResidentStats, GpuError> {
        if self.bufs.is_none() {
            return Err(GpuError::BadInput("no world loaded".into()));
        }
        if self.n == 0 {
            self.stats.ticks += ticks;
            return Ok(self.stats);
        }
        // Counters are u32 on the device: a batch adds fewer than 2³² to each.
        let per_batch = (BATCH as u64).min((u32::MAX as u64 / self.n as u64).max(1));
        let mut left = ticks;
        while left > 0 {
            if self.reorder_every > 0 && self.since_reorder >= self.reorder_every {
                self.reorder()?;
            }
            let mut k = left.min(per_batch);
            if self.reorder_every > 0 {
                k = k.min(self.reorder_every - self.since_reorder);
            }
            if let Err(e) = self.batch(k as u32) {
                self.drop_world();
                return Err(e);
            }
            self.since_reorder += k;
            left -= k;
        }
        Ok(self.stats)
    }

    /// Copies what a batch changes and [`grow`](Self::grow) restores (positions,
    /// velocities, paths, counters) to the backups, on the device.
    fn save(&self, enc: &mut wgpu::CommandEncoder) {
        let b = self.bufs.as_ref().expect("loaded");
        let nn = self.n as u64;
        let saved = [(&b.pos, 32), (&b.vel, 32), (&b.travel, 4)];
        for ((src, w), dst) in saved.into_iter().zip(&b.backup) {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, nn * w);
        }
        enc.copy_buffer_to_buffer(&b.flags, 0, &b.backup[3], 0, flag::LEN as u64 * 4);
    }

    /// Forgets the world after a failure (load it again).
    fn drop_world(&mut self) {
        self.bufs = None;
        self.binds.clear();
        self.n = 0;
    }

    /// One batch, recomputed with longer rows until no row overflows.
    fn batch(&mut self, ticks: u32) -> Result<(), GpuError> {
        loop {
            let mut enc = self.encoder();
            self.save(&mut enc);
            clear_counters(&mut enc, &self.loaded()?.flags);
            for _ in 0..ticks {
                for k in 0..TICK_ENTRIES {
                    self.dispatch(&mut enc, k);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
            let flags = self.read_flags()?;
            let longest = flags[flag::MAX_COUNT];
            if longest <= self.cap {
                self.account(&flags, ticks);
                return Ok(());
            }
            self.grow(longest)?;
        }
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("neurograph.resident"),
            })
    }

    /// Adds a batch's counters to the stats.
    fn account(&mut self, flags: &[u32; flag::LEN], ticks: u32) {
        let s = &mut self.stats;
        s.ticks += ticks as u64;
        s.rebuilds += flags[flag::REBUILDS] as u64;
        s.full_rebuilds += flags[flag::FULL] as u64;
        s.rows_built += flags[flag::ROWS] as u64;
        s.distances_tested += flags[flag::SCANNED] as u64 | (flags[flag::SCANNED + 1] as u64) << 32;
        s.max_candidates = s.max_candidates.max(flags[flag::MAX_COUNT]);
        s.row_capacity = self.cap;
        s.speed_limited += flags[flag::LIMITED] as u64;
        s.non_finite += flags[flag::NON_FINITE] as u64;
        s.bounds += flags[flag::BOUNDS] as u64;
        s.speed += flags[flag::SPEED] as u64;
        s.max_step = f32::from_bits(flags[flag::MAX_STEP]);
        debug_assert_eq!(flags[flag::TICKS], ticks);
    }

    /// Rows of `longest + longest / 4 + 8` slots, and the batch's start restored
    /// with a rebuild at its first tick.
    fn grow(&mut self, longest: u32) -> Result<(), GpuError> {
        let cap = (longest as u64 + longest as u64 / 4 + 8).min(u32::MAX as u64);
        let nn = self.n as u64;
        let cand = self.rows_storage(nn, cap)?;
        tracing::debug!(target: "neurograph::gpu", "resident rows: {} -> {cap} slots", self.cap);
        self.cap = cap as u32;
        self.stats.regrows += 1;
        {
            let b = self.bufs.as_mut().expect("loaded");
            b.cand = cand;
        }
        self.write_uniforms()?;
        let b = self.bufs.as_ref().expect("loaded");
        let mut enc = self.encoder();
        let saved = [(&b.pos, 32), (&b.vel, 32), (&b.travel, 4)];
        for ((dst, w), src) in saved.into_iter().zip(&b.backup) {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, nn * w);
        }
        enc.copy_buffer_to_buffer(&b.backup[3], 0, &b.flags, 0, flag::LEN as u64 * 4);
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.queue.write_buffer(
            &b.flags,
            flag::NEXT as u64 * 4,
            bytemuck::bytes_of(&flag::REBUILD),
        );
        self.transfers.uploaded += 4;
        self.rebind();
        self.flush()
    }

    fn read_flags(&mut self) -> Result<[u32; flag::LEN], GpuError> {
        let flags = self.loaded()?.flags.clone();
        let bytes = self.read(&[(&flags, flag::LEN as u64 * 4)])?;
        let mut out = [0u32; flag::LEN];
        bytemuck::cast_slice_mut::<u32, u8>(&mut out).copy_from_slice(&bytes);
        Ok(out)
    }

    /// Copies `(buffer, bytes)` pairs into one staging buffer and reads it.
    fn read(&mut self, what: &[(&wgpu::Buffer, u64)]) -> Result<Vec<u8>, GpuError> {
        let total: u64 = what.iter().map(|w| w.1).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        if total > self.ctx.max_buffer() {
            return Err(GpuError::TooLarge {
                what: "readback",
                bytes: total,
                limit: self.ctx.max_buffer(),
            });
        }
        let staging = create(
            &self.ctx,
            "readback",
            total,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut enc = self.encoder();
        let mut at = 0;
        for &(buf, bytes) in what {
            enc.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
            at += bytes;
        }
        self.ctx.queue.submit([enc.finish()]);
        let mapped: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>> = Arc::default();
        {
            let mapped = mapped.clone();
            staging.map_async(wgpu::MapMode::Read, 0..total, move |r| {
                if let Ok(mut m) = mapped.lock() {
                    *m = Some(r);
                }
            });
        }
        if let Err(e) = self.ctx.wait(&self.errors) {
            self.drop_world();
            return Err(e);
        }
        let mapped = match mapped.lock().ok().and_then(|mut m| m.take()) {
            Some(Ok(())) => staging
                .get_mapped_range(0..total)
                .map(|view| view.to_vec())
                .map_err(|e| GpuError::Failed(format!("reading the results: {e}"))),
            Some(Err(e)) => Err(GpuError::Failed(format!("mapping the results: {e}"))),
            None => Err(GpuError::Failed("the results were never mapped".into())),
        };
        let out = match mapped {
            Ok(out) => out,
            Err(e) => {
                self.drop_world();
                return Err(e);
            }
        };
        staging.unmap();
        self.transfers.read_back += total;
        Ok(out)
    }

    fn loaded(&self) -> Result<&Buffers, GpuError> {
        self.bufs
            .as_ref()
            .ok_or(GpuError::BadInput("no world loaded".into()))
    }

    /// Has the force pass propose links for `Learn`, as the CPU pass does
    /// ([`compute_forces_proposing`](crate::systems::forces::compute_forces_proposing)):
    /// `Some((within², max_degree))`, or `None` for no proposals. Read them
    /// with [`read_tick`](Self::read_tick).
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when `within²` is not finite and non-negative.
    pub fn set_proposals(&mut self, proposals: Option<(f32, u32)>) -> Result<(), GpuError> {
        if let Some((w2, _)) = proposals
            && !(w2.is_finite() && w2 >= 0.0)
        {
            return Err(GpuError::BadInput(format!(
                "the squared formation distance is {w2}: it must be finite and not negative"
            )));
        }
        if self.proposals != proposals {
            self.proposals = proposals;
            if self.bufs.is_some() {
                self.write_uniforms()?;
            }
        }
        Ok(())
    }

    /// Replaces the links of the loaded tokens (`links` by slot, as for
    /// [`load`](Self::load)). Writes only what changed: the link ends (12
    /// bytes each) when weights or rest lengths changed, and also every
    /// token's link placement (8 bytes a token) when links formed or went,
    /// which `place_links` copies into the rows on the device (their
    /// candidates stay: no search).
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when no world is loaded or a link is bad (as for
    /// `load`); [`GpuError::TooLarge`] when the link ends outgrow a binding.
    /// On an error the loaded world is unchanged.
    pub fn set_links(&mut self, links: &LinkTable) -> Result<(), GpuError> {
        let n = self.n as usize;
        self.loaded()?;
        validate_links(links, n)?;
        let places = link_rows(links, n);
        let ends = links.ends();
        let same_ends = bytemuck::cast_slice::<LinkEnd, u8>(ends)
            == bytemuck::cast_slice::<LinkEnd, u8>(&self.link_ends);
        let same_places = places == self.link_places;
        if same_ends && same_places {
            return Ok(());
        }
        let bytes = ends.len() as u64 * 12;
        let grown = if bytes > self.loaded()?.links.size() {
            Some(self.storage("link ends", bytes)?)
        } else {
            None
        };
        let mut up = 0u64;
        let grew = grown.is_some();
        let b = self.bufs.as_mut().expect("loaded");
        if let Some(buffer) = grown {
            b.links = buffer;
        }
        let q = &self.ctx.queue;
        if !same_ends && !ends.is_empty() {
            q.write_buffer(&b.links, 0, bytemuck::cast_slice(ends));
            up += bytes;
        }
        if !same_places && n > 0 {
            let pairs: Vec<[u32; 2]> = places.iter().map(|r| [r[2], r[3]]).collect();
            q.write_buffer(&b.places, 0, bytemuck::cast_slice(&pairs));
            up += n as u64 * 8;
        }
        self.transfers.uploaded += up;
        self.link_ends = ends.to_vec();
        self.link_places = places;
        if grew {
            self.rebind();
        }
        if !same_places && n > 0 {
            let mut enc = self.encoder();
            self.dispatch(&mut enc, PLACE_LINKS);
            self.ctx.queue.submit([enc.finish()]);
        }
        Ok(())
    }

    /// Sets each token's group pull (slot order; all zero at a load). Writes
    /// the 48 bytes a token only when something changed, so at the
    /// hierarchy's cadence.
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when no world is loaded, the length is not the
    /// token count, or a value is not finite.
    pub fn set_group_pull(&mut self, pull: &[GroupPull]) -> Result<(), GpuError> {
        let n = self.n as usize;
        self.loaded()?;
        if pull.len() != n {
            return Err(GpuError::BadInput(format!(
                "{} group pulls for {n} tokens",
                pull.len()
            )));
        }
        if let Some(i) = pull
            .iter()
            .position(|g| !(g.centre.is_finite() && g.coefficient.is_finite()))
        {
            return Err(GpuError::BadInput(format!(
                "slot {i}: the group pull's centre and coefficient must be finite"
            )));
        }
        if bytemuck::cast_slice::<GroupPull, u8>(pull)
            == bytemuck::cast_slice::<GroupPull, u8>(&self.pull)
        {
            return Ok(());
        }
        let b = self.loaded()?;
        if n > 0 {
            self.ctx
                .queue
                .write_buffer(&b.pull, 0, bytemuck::cast_slice(pull));
        }
        self.transfers.uploaded += n as u64 * 48;
        self.pull = pull.to_vec();
        Ok(())
    }

    /// What one tick leaves that the CPU stages read (76 bytes a token):
    /// positions and velocities after it, and its densities, proposals and
    /// pair count (see [`TickReadback`]).
    ///
    /// # Errors
    /// As [`read_state`](Self::read_state).
    pub fn read_tick(&mut self) -> Result<TickReadback, GpuError> {
        let b = self.loaded()?;
        let (pos, vel, rho, aux) = (b.pos.clone(), b.vel.clone(), b.rho.clone(), b.aux.clone());
        let n = self.n as u64;
        let bytes = self.read(&[(&pos, n * 32), (&vel, n * 32), (&rho, n * 4), (&aux, n * 8)])?;
        let n = n as usize;
        let (x, rest) = bytes.split_at(n * 32);
        let (v, rest) = rest.split_at(n * 32);
        let (r, a) = rest.split_at(n * 4);
        let aux: Vec<[u32; 2]> = bytemuck::pod_collect_to_vec(a);
        Ok(TickReadback {
            positions: bytemuck::pod_collect_to_vec(x),
            velocities: bytemuck::pod_collect_to_vec(v),
            density: bytemuck::pod_collect_to_vec(r),
            nearest: aux.iter().map(|a| a[0]).collect(),
            pairs: aux.iter().map(|a| a[1] as u64).sum(),
        })
    }

    /// Positions and velocities, slot order (64 bytes a token cross the bus).
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when no world is loaded; [`GpuError::Failed`] when
    /// the device fails.
    pub fn read_state(&mut self) -> Result<(Vec<Vec8>, Vec<Vec8>), GpuError> {
        let b = self.loaded()?;
        let (pos, vel) = (b.pos.clone(), b.vel.clone());
        let nn = self.n as u64 * 32;
        let bytes = self.read(&[(&pos, nn), (&vel, nn)])?;
        let (x, v) = bytes.split_at(nn as usize);
        Ok((
            bytemuck::pod_collect_to_vec(x),
            bytemuck::pod_collect_to_vec(v),
        ))
    }

    /// The last tick's forces and densities, slot order (36 bytes a token).
    ///
    /// # Errors
    /// As [`read_state`](Self::read_state).
    pub fn read_forces(&mut self) -> Result<(Vec<Vec8>, Vec<f32>), GpuError> {
        let b = self.loaded()?;
        let (force, rho) = (b.force.clone(), b.rho.clone());
        let n = self.n as u64;
        let bytes = self.read(&[(&force, n * 32), (&rho, n * 4)])?;
        let (f, r) = bytes.split_at(n as usize * 32);
        Ok((
            bytemuck::pod_collect_to_vec(f),
            bytemuck::pod_collect_to_vec(r),
        ))
    }

    /// The neighbour rows as the last search left them (refresh or rebuild),
    /// slot order.
    ///
    /// # Errors
    /// As [`read_state`](Self::read_state).
    pub fn read_rows(&mut self) -> Result<Vec<Vec<u32>>, GpuError> {
        let b = self.loaded()?;
        let (rows, cand) = (b.rows.clone(), b.cand.clone());
        let n = self.n as u64;
        let bytes = self.read(&[(&rows, n * 16), (&cand, n * self.cap as u64 * 4)])?;
        let (r, c) = bytes.split_at(n as usize * 16);
        let rows: Vec<[u32; 4]> = bytemuck::pod_collect_to_vec(r);
        let cand: Vec<u32> = bytemuck::pod_collect_to_vec(c);
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let (start, len) = (r[0] as usize, r[1] as usize);
                cand.get(start..start + len)
                    .map(<[u32]>::to_vec)
                    .ok_or_else(|| {
                        GpuError::Failed(format!(
                            "row {i} spans slots {start}..{} of {}",
                            start + len,
                            cand.len()
                        ))
                    })
            })
            .collect()
    }

    /// Orders the tokens along a k-d tree over their current positions (a readback
    /// of the positions and an upload of the order: 36 bytes a token, and the
    /// tree built on the host), so the search's boxes stay tight as the world
    /// moves. The rows stay as they are (they are exact in any order).
    ///
    /// # Errors
    /// As [`read_state`](Self::read_state).
    pub fn reorder(&mut self) -> Result<(), GpuError> {
        let pos = self.loaded()?.pos.clone();
        let bytes = self.read(&[(&pos, self.n as u64 * 32)])?;
        let x: Vec<Vec8> = bytemuck::pod_collect_to_vec(&bytes);
        self.upload_order(&x);
        self.since_reorder = 0;
        self.stats.reorders += 1;
        let r = self.flush();
        if r.is_err() {
            self.drop_world();
        }
        r
    }

    /// Reorders (see [`reorder`](Self::reorder)) whenever `ticks` ticks have run
    /// since the last order, between batches of [`step`](Self::step); 0 never.
    /// [`DEFAULT_REORDER_EVERY`] unless set.
    pub fn set_reorder_every(&mut self, ticks: u64) {
        self.reorder_every = ticks;
    }

    /// Runs one tick and returns each entry point's time: from the device's
    /// timestamps when it has timestamp queries (`wgpu::Features::TIMESTAMP_QUERY`,
    /// requested by [`GpuContext::new`] when the adapter offers it), else the wall
    /// time of each dispatch submitted and waited for alone. The tick is a real
    /// one: the world advances.
    ///
    /// # Errors
    /// As [`step`](Self::step) (a row that outgrows its capacity is handled as
    /// there: the tick is recomputed with longer rows).
    pub fn profile_tick(&mut self) -> Result<KernelTimes, GpuError> {
        self.loaded()?;
        let r = self.profile_once();
        if r.is_err() {
            self.drop_world();
        }
        r
    }

    /// [`profile_tick`](Self::profile_tick), recomputed with longer rows (as a
    /// batch is) until no row overflows.
    fn profile_once(&mut self) -> Result<KernelTimes, GpuError> {
        loop {
            let before = self.stats.rebuilds;
            let mut enc = self.encoder();
            self.save(&mut enc);
            self.ctx.queue.submit([enc.finish()]);
            let mut out = if self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
                self.timed_by_timestamps()?
            } else {
                self.timed_by_waits()?
            };
            let flags = self.read_flags()?;
            if flags[flag::MAX_COUNT] > self.cap {
                self.grow(flags[flag::MAX_COUNT])?;
                continue;
            }
            self.account(&flags, 1);
            out.rebuilt = self.stats.rebuilds > before;
            return Ok(out);
        }
    }

    fn timed_by_waits(&mut self) -> Result<KernelTimes, GpuError> {
        let mut out = KernelTimes::default();
        for (k, name) in RESIDENT_ENTRY_POINTS.iter().take(TICK_ENTRIES).enumerate() {
            let start = Instant::now();
            let mut enc = self.encoder();
            if k == 0 {
                clear_counters(&mut enc, &self.loaded()?.flags);
            }
            self.dispatch_timed(&mut enc, k, None);
            self.ctx.queue.submit([enc.finish()]);
            self.ctx.wait(&self.errors)?;
            out.kernels.push((name, start.elapsed().as_secs_f64()));
        }
        Ok(out)
    }

    fn timed_by_timestamps(&mut self) -> Result<KernelTimes, GpuError> {
        let passes = TICK_ENTRIES as u32;
        let queries = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("neurograph.resident.timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * passes,
        });
        let bytes = 2 * passes as u64 * 8;
        let resolved = create(
            &self.ctx,
            "timestamps",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        );
        let mut enc = self.encoder();
        clear_counters(&mut enc, &self.loaded()?.flags);
        for k in 0..TICK_ENTRIES {
            self.dispatch_timed(&mut enc, k, Some((&queries, 2 * k as u32)));
        }
        enc.resolve_query_set(&queries, 0..2 * passes, &resolved, 0);
        self.ctx.queue.submit([enc.finish()]);
        let raw = self.read(&[(&resolved, bytes)])?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(KernelTimes {
            kernels: RESIDENT_ENTRY_POINTS
                .iter()
                .zip(ticks.chunks_exact(2))
                .map(|(name, t)| (*name, t[1].saturating_sub(t[0]) as f64 * period))
                .collect(),
            rebuilt: false,
            timestamps: true,
        })
    }
}

/// Zeroes the counters of a batch (all but the rebuild flags `NOW` and `NEXT`).
fn clear_counters(enc: &mut wgpu::CommandEncoder, flags: &wgpu::Buffer) {
    let first = flag::MAX_COUNT as u64;
    let last = flag::FULL as u64;
    enc.clear_buffer(flags, first * 4, Some((last - first + 1) * 4));
}

/// Each token's link placement, as the fourth and third words of its row.
fn link_rows(links: &LinkTable, n: usize) -> Vec<[u32; 4]> {
    (0..n)
        .map(|i| {
            if links.is_empty() {
                [0, 0, 0, 0]
            } else {
                let (s, l) = links.placement(i);
                [0, 0, s, l]
            }
        })
        .collect()
}

fn validate(state: &ResidentState<'_>, p: &ResidentParams) -> Result<(), GpuError> {
    let n = state.positions.len();
    let bad = |s: String| Err(GpuError::BadInput(s));
    let f = &p.forces;
    let constants = [
        ("dt", p.dt, p.dt > 0.0 && p.dt <= 1.0),
        (
            "damping",
            p.damping,
            p.damping >= 0.0 && p.damping * p.dt <= 1.0,
        ),
        ("max_speed", p.max_speed, p.max_speed > 0.0),
        ("skin", p.skin, p.skin >= 0.0),
        ("k_field", f.k_field, true),
        ("k_density", f.k_density, true),
        ("inv_target_density", f.inv_target_density, true),
        ("k_core", f.k_core, true),
        ("core_radius", f.core_radius, f.core_radius >= 0.0),
        ("k_link", f.k_link, true),
    ];
    for (name, v, ok) in constants {
        if !v.is_finite() || !ok {
            return bad(format!(
                "the constant {name} is {v}: constants must be finite, dt in (0, 1], damping · dt at most 1, max_speed positive, skin and core_radius not negative"
            ));
        }
    }
    let (lo, hi) = (p.min_bounds, p.max_bounds);
    for k in 0..8 {
        if !(lo[k].is_finite() && hi[k].is_finite() && lo[k] <= hi[k] && p.scales[k].is_finite()) {
            return bad(format!(
                "axis {k}: bounds [{}, {}] and scale {} must be finite, the lower bound at most the upper",
                lo[k], hi[k], p.scales[k]
            ));
        }
    }
    if state.velocities.len() != n || state.params.len() != n {
        return bad(format!(
            "{n} positions, {} velocities, {} token parameters: they must agree",
            state.velocities.len(),
            state.params.len()
        ));
    }
    for (i, (x, v)) in state.positions.iter().zip(state.velocities).enumerate() {
        if !x.is_finite() || !v.is_finite() {
            return bad(format!("slot {i}: position or velocity is not finite"));
        }
        if let Some(k) = (0..8).find(|&k| x[k] < lo[k] || x[k] > hi[k]) {
            return bad(format!(
                "slot {i}: coordinate {k} is {}, outside the bounds [{}, {}]",
                x[k], lo[k], hi[k]
            ));
        }
    }
    for (i, t) in state.params.iter().enumerate() {
        let ok = t.mass > 0.0 && t.radius > 0.0 && t.charge.is_finite() && t.strength.is_finite();
        if !ok || !t.mass.is_finite() || !t.radius.is_finite() {
            return bad(format!(
                "slot {i}: mass {} and radius {} must be positive and finite, charge {} and strength {} finite",
                t.mass, t.radius, t.charge, t.strength
            ));
        }
    }
    validate_links(state.links, n)
}

/// Checks a link table against `n` tokens.
fn validate_links(links: &LinkTable, n: usize) -> Result<(), GpuError> {
    let bad = |s: String| Err(GpuError::BadInput(s));
    if !links.is_empty() && links.rows() != n {
        return bad(format!(
            "the link table covers {} tokens, the positions {n}",
            links.rows()
        ));
    }
    for e in links.ends() {
        if e.other as usize >= n {
            return bad(format!(
                "a link names slot {}, past the {n} tokens",
                e.other
            ));
        }
        if !e.weight.is_finite() || !e.rest.is_finite() {
            return bad(format!(
                "a link to slot {} has weight {} and rest length {}: they must be finite",
                e.other, e.weight, e.rest
            ));
        }
    }
    Ok(())
}
