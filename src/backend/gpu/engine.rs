//! The resident tick as the engine's tick: [`ResidentEngine`] pairs a
//! [`GpuResident`] with the host's copy of what the device holds, so the
//! `Forces` stage uploads nothing while the ECS state is what the device left
//! (see `systems::forces` and DESIGN §3).

use super::resident::{
    GpuResident, GroupPull, ResidentParams, ResidentState, ResidentStats, TickReadback,
};
use super::{GpuContext, GpuError};
use crate::backend::ResidentTotals;
use crate::model::components::TokenId;
use crate::model::math::Vec8;
use crate::physics::{LinkTable, TokenParams, slot_table};

/// The tokens of a world in increasing id order, as the `Forces` stage gathers
/// them for a resident tick.
pub struct HostState {
    /// Live token ids, increasing.
    pub ids: Vec<TokenId>,
    /// Positions, by the same index.
    pub positions: Vec<Vec8>,
    /// Velocities.
    pub velocities: Vec<Vec8>,
    /// Charge, mass, radius and strength.
    pub params: Vec<TokenParams>,
}

/// What one resident tick gives the CPU stages (slot = index in
/// [`HostState::ids`]).
pub struct ResidentTickOut {
    /// Positions, velocities, densities, proposals and pairs after the tick.
    pub read: TickReadback,
    /// The device's counters after the tick, since the last load.
    pub stats: ResidentStats,
    /// Of those, this tick's: speed-limited steps, non-finite resets,
    /// bound clamps and speed clamps.
    pub speed_limited: u64,
    /// See `speed_limited`.
    pub non_finite: u64,
    /// See `speed_limited`.
    pub bounds: u64,
    /// See `speed_limited`.
    pub speed: u64,
    /// Whether the state was uploaded before the tick (the host's state was
    /// not the device's: a command, a user system, a new constant).
    pub loaded: bool,
    /// Seconds of the device's tick (`step`: dispatch and the wait for it).
    pub device_seconds: f64,
    /// Seconds of the readback (copy, map, copy out).
    pub readback_seconds: f64,
}

/// A device world kept in step with an engine's ECS state.
pub struct ResidentEngine {
    gpu: GpuResident,
    ids: Vec<TokenId>,
    slot_of: Vec<u32>,
    positions: Vec<Vec8>,
    velocities: Vec<Vec8>,
    params: Vec<TokenParams>,
    constants: Option<ResidentParams>,
    loaded: bool,
    loads: u64,
    last: ResidentStats,
    totals: ResidentTotals,
    /// The group pulls on the device (slot, pull), sorted by slot, when set
    /// since the last load.
    pull: Option<Vec<(u32, GroupPull)>>,
}

impl std::fmt::Debug for ResidentEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidentEngine")
            .field("tokens", &self.ids.len())
            .field("loads", &self.loads)
            .finish()
    }
}

fn same_bits<T: bytemuck::Pod>(a: &[T], b: &[T]) -> bool {
    bytemuck::cast_slice::<T, u8>(a) == bytemuck::cast_slice::<T, u8>(b)
}

impl ResidentEngine {
    /// Compiles the resident tick on `ctx`.
    ///
    /// # Errors
    /// As [`GpuResident::new`].
    pub fn new(ctx: GpuContext) -> Result<Self, GpuError> {
        Ok(Self {
            gpu: GpuResident::new(ctx)?,
            ids: Vec::new(),
            slot_of: Vec::new(),
            positions: Vec::new(),
            velocities: Vec::new(),
            params: Vec::new(),
            constants: None,
            loaded: false,
            loads: 0,
            last: ResidentStats::default(),
            totals: ResidentTotals::default(),
            pull: None,
        })
    }

    /// The device world.
    pub fn gpu(&self) -> &GpuResident {
        &self.gpu
    }

    /// What it did since it opened.
    pub fn totals(&self) -> ResidentTotals {
        ResidentTotals {
            loads: self.loads,
            ..self.totals
        }
    }

    /// Bytes on the host: the copies of the ids, positions, velocities,
    /// parameters, links and group pulls on the device.
    pub fn host_bytes(&self) -> u64 {
        fn cap<T>(v: &Vec<T>) -> u64 {
            (v.capacity() * size_of::<T>()) as u64
        }
        cap(&self.ids)
            + cap(&self.slot_of)
            + cap(&self.positions)
            + cap(&self.velocities)
            + cap(&self.params)
            + self.pull.as_ref().map_or(0, cap)
            + self.gpu.host_bytes()
    }

    /// The ids on the device, increasing (empty before the first tick).
    pub fn ids(&self) -> &[TokenId] {
        &self.ids
    }

    /// The slot of each id on the device (`u32::MAX`: none), by id.
    pub fn slot_of(&self) -> &[u32] {
        &self.slot_of
    }

    /// Runs one tick of `host` (ids increasing) on the device: uploads the
    /// whole state first when it is not, bit for bit, what the device holds,
    /// else only the links that changed; writes the group pulls when they
    /// changed (`pull`: (slot, pull) of the grouped tokens, sorted by slot);
    /// then steps and reads back what the CPU stages need (76 bytes a token).
    ///
    /// # Errors
    /// As [`GpuResident::load`], [`set_links`](GpuResident::set_links),
    /// [`step`](GpuResident::step) and [`read_tick`](GpuResident::read_tick);
    /// after an error the next tick uploads the state again.
    pub fn tick(
        &mut self,
        host: HostState,
        constants: ResidentParams,
        links: &LinkTable,
        proposals: Option<(f32, u32)>,
        pull: Vec<(u32, GroupPull)>,
    ) -> Result<ResidentTickOut, GpuError> {
        let r = self.try_tick(host, constants, links, proposals, pull);
        if r.is_err() {
            self.loaded = false;
        }
        r
    }

    fn try_tick(
        &mut self,
        host: HostState,
        constants: ResidentParams,
        links: &LinkTable,
        proposals: Option<(f32, u32)>,
        pull: Vec<(u32, GroupPull)>,
    ) -> Result<ResidentTickOut, GpuError> {
        debug_assert!(host.ids.windows(2).all(|w| w[0] < w[1]), "ids increasing");
        let in_sync = self.loaded
            && self.gpu.len() == host.ids.len()
            && self.ids == host.ids
            && self.constants.map(|c| c.bits()) == Some(constants.bits())
            && same_bits(&self.params, &host.params)
            && same_bits(&self.positions, &host.positions)
            && same_bits(&self.velocities, &host.velocities);
        // `load` starts the device's byte counts afresh.
        let before = if in_sync {
            self.gpu.transfers()
        } else {
            Default::default()
        };
        self.gpu.set_proposals(proposals)?;
        if in_sync {
            self.gpu.set_links(links)?;
        } else {
            self.loaded = false;
            self.gpu.load(
                ResidentState {
                    positions: &host.positions,
                    velocities: &host.velocities,
                    params: &host.params,
                    links,
                },
                constants,
            )?;
            if self.ids != host.ids {
                self.slot_of = slot_table(&host.ids);
                self.ids = host.ids;
            }
            self.params = host.params;
            self.constants = Some(constants);
            self.last = ResidentStats::default();
            self.loads += 1;
            self.pull = None;
        }
        let same_pull = self.pull.as_ref().is_some_and(|old| {
            old.len() == pull.len()
                && old.iter().zip(&pull).all(|(a, b)| {
                    a.0 == b.0 && bytemuck::bytes_of(&a.1) == bytemuck::bytes_of(&b.1)
                })
        });
        if !same_pull {
            let mut dense = vec![GroupPull::default(); self.ids.len()];
            for &(s, g) in &pull {
                dense[s as usize] = g;
            }
            self.gpu.set_group_pull(&dense)?;
            self.pull = Some(pull);
        }
        let started = std::time::Instant::now();
        let stats = self.gpu.step(1)?;
        let stepped = std::time::Instant::now();
        let read = self.gpu.read_tick()?;
        let device_seconds = (stepped - started).as_secs_f64();
        let readback_seconds = stepped.elapsed().as_secs_f64();
        self.positions.clone_from(&read.positions);
        self.velocities.clone_from(&read.velocities);
        self.loaded = true;
        let after = self.gpu.transfers();
        self.totals.ticks += 1;
        self.totals.uploaded_bytes += after.uploaded - before.uploaded;
        self.totals.readback_bytes += after.read_back - before.read_back;
        let last = std::mem::replace(&mut self.last, stats);
        Ok(ResidentTickOut {
            read,
            stats,
            speed_limited: stats.speed_limited - last.speed_limited,
            non_finite: stats.non_finite - last.non_finite,
            bounds: stats.bounds - last.bounds,
            speed: stats.speed - last.speed,
            loaded: !in_sync,
            device_seconds,
            readback_seconds,
        })
    }
}
