//! The force pass on the GPU (`shaders/forces.wgsl`).
//!
//! What lives on the GPU across ticks, and when it is written:
//!
//! | buffer | per token | written |
//! |--------|-----------|---------|
//! | `pos`  | 32 B      | every tick (the CPU integrates) |
//! | `tok`  | 16 B      | chunks that changed (charge, mass, field) |
//! | `rows` | 16 B      | after a rebuild, link change or new layout: the chunks that changed; after a refresh: the touched blocks |
//! | `cand` | 4 B × candidates | rebuild, or a block outgrowing its room: all; refresh: the touched blocks |
//! | `links`| 12 B × link ends | chunks that changed (weights learn) |
//! | `rho`  | 4 B       | by the density entry point every tick, read back with the forces |
//! | `force`, `aux` | 32 + 8 B | read back every tick |
//!
//! ("chunks": 4,096 elements compared byte for byte with what was last written;
//! "blocks": the 256-token blocks of [`NeighborList`].)
//!
//! Buffers grow by a quarter past what is needed and shrink when less than a
//! quarter is used (above 64 KiB). Every size is checked against the device's
//! limits first. Candidate lists larger than one binding are split into several
//! buffers, one dispatch each; a per-token buffer that does not fit is refused
//! with [`GpuError::TooLarge`]. After any error the device copy is dropped and
//! the next pass writes everything again.

use super::{DeviceErrors, GpuContext, GpuError};
pub use crate::backend::GpuTimings;
use crate::geometry::spatial::{BLOCK, NeighborList};
use crate::model::math::Vec8;
use crate::physics::{ForceParams, LinkEnd, LinkTable, TokenParams};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Invocations per workgroup; the shader's `WORKGROUP_SIZE` (a test checks).
pub const WORKGROUP_SIZE: u32 = 64;

/// How the force shader uses each binding of group 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingAccess {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// The bind group layout, binding `k` at index `k`: params, positions, token
/// parameters, rows, candidates, link ends; forces and proposals written; the
/// densities (written by the `density` entry point, read by `main`).
/// Both pipelines are built from it and a test checks it against the WGSL.
pub const BINDINGS: [BindingAccess; 9] = {
    use BindingAccess::*;
    [
        Uniform, Read, Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite,
    ]
};

/// The shader's entry points, in dispatch order: every token's density, then
/// the forces.
pub const ENTRY_POINTS: [&str; 2] = ["density", "main"];

/// The labels of the compute passes, one per entry point.
const PASS_LABELS: [&str; 2] = ["neurograph.density", "neurograph.main"];

/// Elements compared (and written when different) at a time when mirroring.
const MIRROR_CHUNK: usize = 4096;

/// The uniform block of the force shader (`Params` in WGSL).
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct GpuParams {
    /// Tokens of this dispatch.
    pub n: u32,
    /// The slot of its first token.
    pub first: u32,
    /// 1: fill the proposals.
    pub propose: u32,
    /// Fewer links than this on both ends to propose.
    pub max_degree: u32,
    /// Workgroups along x.
    pub groups_x: u32,
    /// `k_field`.
    pub k_field: f32,
    /// `k_core`.
    pub k_core: f32,
    /// `σ`.
    pub core_radius: f32,
    /// `k_link`.
    pub k_link: f32,
    /// Squared formation distance.
    pub within2: f32,
    /// `k_density`.
    pub k_density: f32,
    /// `1 / ρ₀`.
    pub inv_target_density: f32,
}

/// What one force pass reads and writes; the same data the CPU pass takes.
pub struct ForceInput<'a> {
    /// Positions, slot order.
    pub positions: &'a [Vec8],
    /// Per-token parameters, slot order.
    pub params: &'a [TokenParams],
    /// The Verlet lists (their touched blocks are taken).
    pub neighbors: &'a mut NeighborList,
    /// The link table.
    pub links: &'a LinkTable,
    /// Changes whenever the link table's structure changes.
    pub links_key: (u64, u64),
    /// The force constants.
    pub fp: &'a ForceParams,
    /// `(within², max_degree)` when `Learn`'s proposals are wanted.
    pub proposals: Option<(f32, u32)>,
    /// Out: local densities, slot order.
    pub density: &'a mut [f32],
    /// Out: forces, slot order.
    pub forces: &'a mut [Vec8],
    /// Out: proposals, slot order (filled when `proposals` is given).
    pub nearest: &'a mut [u32],
}

/// A device buffer that grows and shrinks with the world.
struct Slab {
    buf: wgpu::Buffer,
    cap: u64,
    usage: wgpu::BufferUsages,
    label: &'static str,
}

/// Grow by a quarter; shrink (above this size) when less than a quarter is used.
const SHRINK_ABOVE: u64 = 64 << 10;

impl Slab {
    fn new(ctx: &GpuContext, label: &'static str, usage: wgpu::BufferUsages) -> Self {
        let cap = 256;
        Self {
            buf: create(ctx, label, cap, usage),
            cap,
            usage,
            label,
        }
    }

    /// Makes room for `bytes`; true when the buffer was replaced (its contents
    /// are gone and bind groups must be remade).
    fn ensure(&mut self, ctx: &GpuContext, bytes: u64) -> Result<bool, GpuError> {
        // Bound buffers answer to the binding limit; the readback buffer (never
        // bound) to the buffer limit.
        let limit = if self.usage.contains(wgpu::BufferUsages::STORAGE) {
            ctx.max_binding()
        } else {
            ctx.max_buffer()
        };
        let need = bytes.max(256).next_multiple_of(256);
        if need > limit {
            return Err(GpuError::TooLarge {
                what: self.label,
                bytes,
                limit,
            });
        }
        let shrink = self.cap > SHRINK_ABOVE && need < self.cap / 4;
        if need <= self.cap && !shrink {
            return Ok(false);
        }
        let cap = (need + need / 4).next_multiple_of(256).min(limit);
        self.buf = create(ctx, self.label, cap, self.usage);
        self.cap = cap;
        Ok(true)
    }
}

/// A buffer labelled `neurograph.{label}` (the host app's own labels stay its own).
fn create(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&format!("neurograph.{label}")),
        size,
        usage,
        mapped_at_creation: false,
    })
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);

/// A device buffer holding a copy of a host array, patched chunk by chunk.
struct Mirror<T> {
    slab: Slab,
    shadow: Vec<T>,
}

impl<T: bytemuck::Pod> Mirror<T> {
    fn new(ctx: &GpuContext, label: &'static str) -> Self {
        Self {
            slab: Slab::new(ctx, label, STORAGE),
            shadow: Vec::new(),
        }
    }

    /// Makes the device copy equal `data`, writing only the chunks that differ
    /// from what was written before. Returns (buffer replaced, bytes written).
    fn sync(&mut self, ctx: &GpuContext, data: &[T]) -> Result<(bool, u64), GpuError> {
        let size = size_of_val(data) as u64;
        let replaced = self.slab.ensure(ctx, size)?;
        if replaced || self.shadow.len() != data.len() {
            if !data.is_empty() {
                ctx.queue
                    .write_buffer(&self.slab.buf, 0, bytemuck::cast_slice(data));
            }
            self.shadow.clear();
            self.shadow.extend_from_slice(data);
            return Ok((replaced, size));
        }
        let mut written = 0;
        for (k, (new, old)) in data
            .chunks(MIRROR_CHUNK)
            .zip(self.shadow.chunks_mut(MIRROR_CHUNK))
            .enumerate()
        {
            if bytemuck::cast_slice::<T, u8>(new) != bytemuck::cast_slice::<T, u8>(old) {
                let at = (k * MIRROR_CHUNK * size_of::<T>()) as u64;
                ctx.queue
                    .write_buffer(&self.slab.buf, at, bytemuck::cast_slice(new));
                old.copy_from_slice(new);
                written += size_of_val(new) as u64;
            }
        }
        Ok((false, written))
    }
}

/// One device buffer of candidates: the rows of the tokens of blocks
/// `blocks` (a world larger than one binding allows is split into several),
/// with its own uniform block and bind group.
struct CandChunk {
    slab: Slab,
    blocks: std::ops::Range<usize>,
    uniform: wgpu::Buffer,
}

impl<T: bytemuck::Pod> Mirror<T> {
    /// Writes `data` at element `start` (within what the last `sync` sized);
    /// returns the bytes written.
    fn write_range(&mut self, ctx: &GpuContext, start: usize, data: &[T]) -> u64 {
        if data.is_empty() {
            return 0;
        }
        ctx.queue.write_buffer(
            &self.slab.buf,
            (start * size_of::<T>()) as u64,
            bytemuck::cast_slice(data),
        );
        self.shadow[start..start + data.len()].copy_from_slice(data);
        size_of_val(data) as u64
    }
}

/// The device copy of the Verlet lists: each block's arena at its own base in
/// its chunk, with room to grow, so a refresh rewrites only the blocks it touched.
struct Candidates {
    chunks: Vec<CandChunk>,
    generation: u64,
    /// Per block: its chunk, and its base (in u32s) and room there.
    chunk_of: Vec<usize>,
    base: Vec<u64>,
    room: Vec<u64>,
}

impl Candidates {
    /// Brings the device copy up to date after the blocks `touched` changed;
    /// returns (layout changed, a buffer was replaced, bytes written).
    fn sync(
        &mut self,
        ctx: &GpuContext,
        lists: &NeighborList,
        touched: &[usize],
    ) -> Result<(bool, bool, u64), GpuError> {
        let arenas = lists.arenas();
        let fits = self.generation == lists.generation()
            && self.base.len() == arenas.len()
            && touched
                .iter()
                .all(|&b| arenas[b].len() as u64 <= self.room[b]);
        if fits {
            let mut written = 0;
            for &b in touched.iter().filter(|&&b| !arenas[b].is_empty()) {
                ctx.queue.write_buffer(
                    &self.chunks[self.chunk_of[b]].slab.buf,
                    self.base[b] * 4,
                    bytemuck::cast_slice(&arenas[b]),
                );
                written += arenas[b].len() as u64 * 4;
            }
            return Ok((false, false, written));
        }
        // New layout: every arena with a quarter more room, packed into chunks
        // of at most one binding each.
        let limit = ctx.max_binding() / 4;
        self.chunk_of.clear();
        self.base.clear();
        self.room.clear();
        let mut plan: Vec<(std::ops::Range<usize>, u64)> = Vec::new();
        for (b, a) in arenas.iter().enumerate() {
            let room = (a.len() + a.len() / 4 + 16) as u64;
            if room > limit {
                return Err(GpuError::TooLarge {
                    what: "the neighbour candidates of one 256-token block",
                    bytes: room * 4,
                    limit: limit * 4,
                });
            }
            match plan.last_mut() {
                Some((blocks, total)) if *total + room <= limit => {
                    blocks.end = b + 1;
                    self.base.push(*total);
                    *total += room;
                }
                _ => {
                    plan.push((b..b + 1, room));
                    self.base.push(0);
                }
            }
            self.chunk_of.push(plan.len() - 1);
            self.room.push(room);
        }
        let mut replaced = self.chunks.len() != plan.len();
        self.chunks.truncate(plan.len());
        while self.chunks.len() < plan.len() {
            self.chunks.push(CandChunk {
                slab: Slab::new(ctx, "neighbour candidates", STORAGE),
                blocks: 0..0,
                uniform: uniform_buffer(ctx),
            });
        }
        for (chunk, (blocks, total)) in self.chunks.iter_mut().zip(plan) {
            replaced |= chunk.slab.ensure(ctx, total * 4)?;
            chunk.blocks = blocks;
        }
        let mut written = 0;
        for (b, a) in arenas.iter().enumerate().filter(|(_, a)| !a.is_empty()) {
            ctx.queue.write_buffer(
                &self.chunks[self.chunk_of[b]].slab.buf,
                self.base[b] * 4,
                bytemuck::cast_slice(a),
            );
            written += a.len() as u64 * 4;
        }
        self.generation = lists.generation();
        Ok((true, replaced, written))
    }
}

fn uniform_buffer(ctx: &GpuContext) -> wgpu::Buffer {
    create(
        ctx,
        "params",
        size_of::<GpuParams>() as u64,
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
    )
}

/// The force pass on one device.
pub struct GpuForces {
    ctx: GpuContext,
    /// One pipeline per entry of [`ENTRY_POINTS`].
    pipelines: Vec<wgpu::ComputePipeline>,
    layout: wgpu::BindGroupLayout,
    pos: Slab,
    tok: Mirror<TokenParams>,
    rows: Mirror<[u32; 4]>,
    cand: Candidates,
    links: Mirror<LinkEnd>,
    force: Slab,
    aux: Slab,
    rho: Slab,
    staging: Slab,
    /// One bind group per candidate chunk.
    binds: Vec<wgpu::BindGroup>,
    /// Host scratch for the rows.
    rows_host: Vec<[u32; 4]>,
    rows_key: Option<(u64, (u64, u64), usize)>,
    aux_host: Vec<[u32; 2]>,
    /// Errors the device reported outside a call (validation, out of memory, lost).
    errors: DeviceErrors,
    last: GpuTimings,
    total: GpuTimings,
    passes: u64,
}

impl std::fmt::Debug for GpuForces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuForces")
            .field("adapter", &self.ctx.describe())
            .field("passes", &self.passes)
            .finish()
    }
}

impl GpuForces {
    /// Compiles the shader and sets up the (empty) buffers on `ctx`.
    ///
    /// # Errors
    /// The device allows fewer storage buffers per stage than the pass binds
    /// ([`GpuError::Device`]), or the shader does not compile on it.
    pub fn new(ctx: GpuContext) -> Result<Self, GpuError> {
        let errors = ctx.errors.clone();
        let storage = BINDINGS.len() as u32 - 1;
        if ctx.limits.max_storage_buffers_per_shader_stage < storage {
            return Err(GpuError::Device {
                adapter: ctx.describe(),
                reason: format!(
                    "it allows {} storage buffers per shader stage, the force pass needs {storage}",
                    ctx.limits.max_storage_buffers_per_shader_stage
                ),
            });
        }
        let (layout, pipelines) = Self::pipelines(&ctx)?;
        let out = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        Ok(Self {
            pos: Slab::new(&ctx, "positions", STORAGE),
            tok: Mirror::new(&ctx, "token parameters"),
            rows: Mirror::new(&ctx, "rows"),
            cand: Candidates {
                chunks: Vec::new(),
                generation: 0,
                chunk_of: Vec::new(),
                base: Vec::new(),
                room: Vec::new(),
            },
            links: Mirror::new(&ctx, "link ends"),
            force: Slab::new(&ctx, "forces", out),
            aux: Slab::new(&ctx, "proposals and pair counts", out),
            rho: Slab::new(&ctx, "densities", out),
            staging: Slab::new(
                &ctx,
                "readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            ctx,
            pipelines,
            layout,
            binds: Vec::new(),
            rows_host: Vec::new(),
            rows_key: None,
            aux_host: Vec::new(),
            errors,
            last: GpuTimings::default(),
            total: GpuTimings::default(),
            passes: 0,
        })
    }

    /// Compiles the force shader into one pipeline per entry point, with the
    /// bind group layout of [`BINDINGS`].
    fn pipelines(
        ctx: &GpuContext,
    ) -> Result<(wgpu::BindGroupLayout, Vec<wgpu::ComputePipeline>), GpuError> {
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("neurograph.forces.wgsl"),
                source: wgpu::ShaderSource::Wgsl(super::FORCES_WGSL.into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = BINDINGS
            .iter()
            .enumerate()
            .map(|(binding, access)| wgpu::BindGroupLayoutEntry {
                binding: binding as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match access {
                        BindingAccess::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingAccess::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        BindingAccess::ReadWrite => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                    },
                    has_dynamic_offset: false,
                    min_binding_size: (*access == BindingAccess::Uniform)
                        .then(|| wgpu::BufferSize::new(size_of::<GpuParams>() as u64))
                        .flatten(),
                },
                count: None,
            })
            .collect();
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("neurograph.forces"),
                entries: &entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("neurograph.forces"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipelines: Vec<wgpu::ComputePipeline> = ENTRY_POINTS
            .iter()
            .map(|entry| {
                ctx.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&format!("neurograph.{entry}")),
                        layout: Some(&pipeline_layout),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: Default::default(),
                        cache: None,
                    })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Failed(format!(
                "the force shader does not compile: {e}"
            )));
        }
        Ok((layout, pipelines))
    }

    /// The device.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The last pass's timings.
    pub fn last_timings(&self) -> GpuTimings {
        self.last
    }

    /// The sum over every pass.
    pub fn total_timings(&self) -> GpuTimings {
        self.total
    }

    /// Each token's pair count in the last pass (slot order).
    pub fn pair_counts(&self) -> impl Iterator<Item = u32> + '_ {
        self.aux_host.iter().map(|a| a[1])
    }

    /// How many buffers the candidate lists are split into (one per binding's
    /// worth, see [`GpuContext::max_binding`]).
    pub fn candidate_chunks(&self) -> usize {
        self.cand.chunks.len()
    }

    /// Mutable access to the device context, e.g. to lower its limits in tests.
    pub fn context_mut(&mut self) -> &mut GpuContext {
        &mut self.ctx
    }

    /// Bytes of device memory the pass holds now.
    pub fn device_bytes(&self) -> u64 {
        [
            &self.pos,
            &self.tok.slab,
            &self.rows.slab,
            &self.links.slab,
            &self.force,
            &self.aux,
            &self.rho,
            &self.staging,
        ]
        .iter()
        .map(|s| s.cap)
        .sum::<u64>()
            + self.cand.chunks.iter().map(|c| c.slab.cap).sum::<u64>()
    }

    /// Passes run.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Runs the force pass; returns the ordered pair count. On error the outputs
    /// are unspecified (the caller computes them on the CPU instead), and the
    /// device copy is dropped, so a later pass uploads everything again.
    ///
    /// # Errors
    /// [`GpuError::BadInput`] when the input slices disagree in length;
    /// [`GpuError::TooLarge`] or [`GpuError::TooManyTokens`] when the world exceeds the
    /// device's buffer or dispatch limits; [`GpuError::Failed`] when the device reports
    /// an error, is lost, or the results cannot be waited for, mapped or read.
    pub fn compute(&mut self, input: ForceInput<'_>) -> Result<u64, GpuError> {
        puffin::profile_function!();
        let n = input.positions.len();
        let lengths = [
            ("params", input.params.len()),
            ("neighbour lists", input.neighbors.len()),
            ("densities", input.density.len()),
            ("forces", input.forces.len()),
        ];
        for (what, len) in lengths {
            if len != n {
                return Err(GpuError::BadInput(format!(
                    "{what} cover {len} tokens, the positions {n}"
                )));
            }
        }
        if input.proposals.is_some() && input.nearest.len() != n {
            return Err(GpuError::BadInput(format!(
                "proposals asked for, but `nearest` holds {} slots for {n} tokens",
                input.nearest.len()
            )));
        }
        if !input.links.is_empty() && input.links.rows() != n {
            return Err(GpuError::BadInput(format!(
                "the link table covers {} tokens, the positions {n}",
                input.links.rows()
            )));
        }
        let result = self.pass(input);
        if result.is_err() {
            self.invalidate();
        }
        result
    }

    /// Forgets the device copy: every buffer is written in full by the next pass.
    fn invalidate(&mut self) {
        self.binds.clear();
        self.cand.generation = 0;
        self.rows_key = None;
        self.tok.shadow.clear();
        self.rows.shadow.clear();
        self.links.shadow.clear();
        // The readback buffer may be left mapped: replace it.
        self.staging = Slab::new(
            &self.ctx,
            "readback",
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
    }

    /// One pass: upload what changed, dispatch the density and force kernels
    /// chunk after chunk, read the results back. Returns the pair count.
    fn pass(&mut self, mut input: ForceInput<'_>) -> Result<u64, GpuError> {
        let n = input.positions.len();
        let mut t = GpuTimings::default();
        if n == 0 {
            self.last = t;
            return Ok(0);
        }
        self.errors.check()?;
        let start = Instant::now();
        let grids = self.upload(&mut input, &mut t)?;
        t.upload = start.elapsed().as_secs_f64();
        let start = Instant::now();
        self.dispatch(&grids)?;
        t.dispatch = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let pairs = self.read_back(&mut input, &mut t)?;
        t.readback = start.elapsed().as_secs_f64();
        self.last = t;
        self.total.add(&t);
        self.passes += 1;
        Ok(pairs)
    }

    /// Uploads what changed since the last pass (positions always; parameters,
    /// candidate rows and links when they changed), writes each chunk's
    /// uniforms, rebinds when a buffer grew; returns each chunk's grid.
    fn upload(
        &mut self,
        input: &mut ForceInput<'_>,
        t: &mut GpuTimings,
    ) -> Result<Vec<(u32, u32)>, GpuError> {
        let n = input.positions.len();
        let ctx = &self.ctx;
        let mut rebind = false;
        let pos_bytes = size_of_val(input.positions) as u64;
        rebind |= self.pos.ensure(ctx, pos_bytes)?;
        ctx.queue
            .write_buffer(&self.pos.buf, 0, bytemuck::cast_slice(input.positions));
        t.uploaded_bytes += pos_bytes;
        let (r, w) = self.tok.sync(ctx, input.params)?;
        rebind |= r;
        t.uploaded_bytes += w;
        let touched = input.neighbors.take_touched();
        let (relayout, r, w) = self.cand.sync(ctx, input.neighbors, &touched)?;
        rebind |= r;
        t.uploaded_bytes += w;
        // Rows: all of them after a new layout, a new build or new links; else
        // only the blocks a refresh touched.
        let (lists, links, cand) = (&*input.neighbors, input.links, &self.cand);
        let row = |i: usize| {
            let (s, l) = lists.placement(i);
            let (ls, ll) = links.placement(i);
            [(cand.base[i / BLOCK] + s as u64) as u32, l, ls, ll]
        };
        let key = (input.neighbors.generation(), input.links_key, n);
        if relayout || self.rows_key != Some(key) {
            self.rows_host.clear();
            self.rows_host.extend((0..n).map(row));
            let (r, w) = self.rows.sync(ctx, &self.rows_host)?;
            rebind |= r;
            t.uploaded_bytes += w;
            self.rows_key = Some(key);
        } else {
            for &b in &touched {
                let range = b * BLOCK..((b + 1) * BLOCK).min(n);
                for i in range.clone() {
                    self.rows_host[i] = row(i);
                }
                t.uploaded_bytes += self
                    .rows
                    .write_range(ctx, range.start, &self.rows_host[range]);
            }
        }
        let (r, w) = self.links.sync(ctx, input.links.ends())?;
        rebind |= r;
        t.uploaded_bytes += w;
        rebind |= self.force.ensure(ctx, n as u64 * 32)?;
        rebind |= self.aux.ensure(ctx, n as u64 * 8)?;
        rebind |= self.rho.ensure(ctx, n as u64 * 4)?;
        self.staging.ensure(ctx, n as u64 * 44)?;
        let (within2, max_degree) = input.proposals.unwrap_or((0.0, 0));
        let mut grids = Vec::with_capacity(self.cand.chunks.len());
        for chunk in &self.cand.chunks {
            let first = chunk.blocks.start * BLOCK;
            let count = (chunk.blocks.end * BLOCK).min(n) - first;
            let (gx, gy) = self.ctx.grid(count as u64)?;
            grids.push((gx, gy));
            let params = GpuParams {
                n: count as u32,
                first: first as u32,
                propose: input.proposals.is_some() as u32,
                max_degree,
                groups_x: gx,
                k_field: input.fp.k_field,
                k_core: input.fp.k_core,
                core_radius: input.fp.core_radius,
                k_link: input.fp.k_link,
                within2,
                k_density: input.fp.k_density,
                inv_target_density: input.fp.inv_target_density,
            };
            ctx.queue
                .write_buffer(&chunk.uniform, 0, bytemuck::bytes_of(&params));
        }
        if rebind || self.binds.len() != self.cand.chunks.len() {
            self.binds = (0..self.cand.chunks.len())
                .map(|c| self.bind_group(c))
                .collect();
        }
        self.ctx.queue.submit([]);
        self.ctx.wait(&self.errors)?;
        Ok(grids)
    }

    /// Dispatches chunk after chunk: every density first (one compute pass),
    /// then every force (a second pass, so it sees all densities).
    fn dispatch(&mut self, grids: &[(u32, u32)]) -> Result<(), GpuError> {
        let ctx = &self.ctx;
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("neurograph.forces"),
            });
        for (pipeline, label) in self.pipelines.iter().zip(PASS_LABELS) {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            for (bind, &(gx, gy)) in self.binds.iter().zip(grids) {
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
        }
        ctx.queue.submit([enc.finish()]);
        self.ctx.wait(&self.errors)
    }

    /// Reads back forces, proposals and pair counts, and densities into
    /// `input`; returns the pair count.
    fn read_back(
        &mut self,
        input: &mut ForceInput<'_>,
        t: &mut GpuTimings,
    ) -> Result<u64, GpuError> {
        let n = input.positions.len();
        let ctx = &self.ctx;
        let (fb, ab, db) = (n as u64 * 32, n as u64 * 8, n as u64 * 4);
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("neurograph.readback"),
            });
        enc.copy_buffer_to_buffer(&self.force.buf, 0, &self.staging.buf, 0, fb);
        enc.copy_buffer_to_buffer(&self.aux.buf, 0, &self.staging.buf, fb, ab);
        enc.copy_buffer_to_buffer(&self.rho.buf, 0, &self.staging.buf, fb + ab, db);
        ctx.queue.submit([enc.finish()]);
        let mapped: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>> = Arc::default();
        {
            let mapped = mapped.clone();
            self.staging
                .buf
                .map_async(wgpu::MapMode::Read, 0..fb + ab + db, move |r| {
                    if let Ok(mut m) = mapped.lock() {
                        *m = Some(r);
                    }
                });
        }
        self.ctx.wait(&self.errors)?;
        match mapped.lock().ok().and_then(|mut m| m.take()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(GpuError::Failed(format!("mapping the results: {e}"))),
            None => return Err(GpuError::Failed("the results were never mapped".into())),
        }
        let pairs;
        {
            let view = self
                .staging
                .buf
                .get_mapped_range(0..fb + ab + db)
                .map_err(|e| GpuError::Failed(format!("reading the results: {e}")))?;
            bytemuck::cast_slice_mut::<Vec8, u8>(input.forces)
                .copy_from_slice(&view[..fb as usize]);
            self.aux_host.resize(n, [0; 2]);
            bytemuck::cast_slice_mut::<[u32; 2], u8>(&mut self.aux_host)
                .copy_from_slice(&view[fb as usize..(fb + ab) as usize]);
            bytemuck::cast_slice_mut::<f32, u8>(input.density)
                .copy_from_slice(&view[(fb + ab) as usize..(fb + ab + db) as usize]);
            pairs = self.aux_host.iter().map(|a| a[1] as u64).sum();
            if input.proposals.is_some() {
                for (out, a) in input.nearest.iter_mut().zip(&self.aux_host) {
                    *out = a[0];
                }
            }
        }
        self.staging.buf.unmap();
        t.readback_bytes = fb + ab + db;
        Ok(pairs)
    }

    fn bind_group(&self, chunk: usize) -> wgpu::BindGroup {
        let chunk = &self.cand.chunks[chunk];
        fn entry(binding: u32, buf: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
            wgpu::BindGroupEntry {
                binding,
                resource: buf.as_entire_binding(),
            }
        }
        self.ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("neurograph.forces"),
                layout: &self.layout,
                entries: &[
                    entry(0, &chunk.uniform),
                    entry(1, &self.pos.buf),
                    entry(2, &self.tok.slab.buf),
                    entry(3, &self.rows.slab.buf),
                    entry(4, &chunk.slab.buf),
                    entry(5, &self.links.slab.buf),
                    entry(6, &self.force.buf),
                    entry(7, &self.aux.buf),
                    entry(8, &self.rho.buf),
                ],
            })
    }
}
