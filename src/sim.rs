//! [`Simulation`]: the headless way to own and step a world.
//!
//! It is a `bevy_app::App` with [`NeuroGraphPlugins`] whose [`SimTick`](crate::schedule::SimTick) schedule is
//! run on demand, plus a small typed API over the command set.

use crate::backend::ForceBackend;
use crate::digest::{StateDigest, state_digest};
use crate::model::cdna::{Cdna, CdnaError, CdnaViolations};
use crate::model::commands::{
    CommandError, CommandLog, CommandOutcome, CommandQueue, SimCommand, apply_command,
};
use crate::model::components::*;
use crate::model::config::{Quotas, SimConfig};
use crate::model::math::Vec8;
use crate::model::registry::{LinkGraph, TokenRegistry};
use crate::observe::ObserveSettings;
use crate::plugin::NeuroGraphPlugins;
use crate::schedule::SimClock;
use crate::schedule::{ComputePool, TickDriver};
use crate::systems::{ForceBuffers, IntegrateStats};
use bevy_app::{App, PluginsState};
use bevy_ecs::prelude::*;

/// Why a simulation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad run settings.
    #[error("invalid config: {0}")]
    Config(#[from] crate::model::config::InvalidSetting),
    /// Bad constitution.
    #[error(transparent)]
    Cdna(#[from] CdnaError),
    /// `backend = gpu` and no GPU could be used.
    #[error("the gpu backend cannot start: {0}")]
    Gpu(String),
}

/// Everything a simulation starts from.
#[derive(Clone, Debug, Default)]
pub struct SimSettings {
    /// Run settings.
    pub config: SimConfig,
    /// The constitution.
    pub cdna: Cdna,
    /// Guardian quotas.
    pub quotas: Quotas,
}

/// A token's components, read back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenState {
    /// Stable id.
    pub id: TokenId,
    /// Position in the 8D space.
    pub position: crate::model::math::Vec8,
    /// Velocity, length per unit of simulated time.
    pub velocity: crate::model::math::Vec8,
    /// Charge in `[-1, 1]`.
    pub charge: f32,
    /// Mass (> 0).
    pub mass: f32,
    /// Field radius (the pair cutoff) and strength.
    pub field: Field,
    /// User token, hub or group.
    pub kind: TokenKind,
    /// Hierarchy level (0 for user tokens).
    pub level: u8,
}

/// A bad spatial query.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// The largest query coordinate and radius: squared distances stay finite in
/// `f32` (up to ~1.8e19 apart) with room to spare.
pub const QUERY_LIMIT: f32 = 1e15;

fn check_point(p: Vec8) -> Result<(), QueryError> {
    match p
        .to_array()
        .iter()
        .position(|v| !(v.is_finite() && v.abs() <= QUERY_LIMIT))
    {
        None => Ok(()),
        Some(k) => Err(QueryError(format!(
            "point[{k}] = {}: every component must be a finite number within ±{QUERY_LIMIT:e}",
            p.to_array()[k]
        ))),
    }
}

/// The spatial index of [`Simulation::nearest`] and [`Simulation::within`]:
/// a k-d tree over the live tokens' positions as of `key` (the tick).
/// [`Simulation::apply`] removes it when a command adds, removes or moves a
/// token; an embedder who edits positions through `world_mut` removes it to
/// have it rebuilt.
#[derive(Resource, Default)]
pub struct QueryIndex {
    key: Option<u64>,
    ids: Vec<u64>,
    points: Vec<Vec8>,
    tree: crate::geometry::spatial::KdTree,
}

/// A headless simulation.
pub struct Simulation {
    app: App,
}

impl Simulation {
    /// Builds a simulation after validating the settings.
    ///
    /// # Errors
    /// [`SimError::Config`] when a run setting is invalid; [`SimError::Cdna`] when the
    /// CDNA is invalid or unstable with the run's `dt`; [`SimError::Gpu`] when
    /// `backend = gpu` and no GPU could be used.
    pub fn new(settings: SimSettings) -> Result<Self, SimError> {
        settings.config.validate()?;
        settings.cdna.validate_for(settings.config.dt)?;
        let mut app = App::new();
        app.add_plugins(NeuroGraphPlugins {
            config: settings.config,
            cdna: settings.cdna,
            quotas: settings.quotas,
            driver: TickDriver::Manual,
        });
        if app.plugins_state() == PluginsState::Ready {
            app.finish();
            app.cleanup();
        }
        if let Some(e) = app
            .world()
            .get_resource::<ForceBackend>()
            .and_then(ForceBackend::error)
        {
            return Err(SimError::Gpu(e.to_string()));
        }
        Ok(Self { app })
    }

    /// Default settings.
    pub fn with_defaults() -> Self {
        Self::new(SimSettings::default()).expect("the default settings are valid")
    }

    /// Validates and applies a command now, at the tick boundary; on error nothing changed.
    ///
    /// # Errors
    /// The [`CommandError`] [`apply_command`] refuses the command with.
    pub fn apply(&mut self, cmd: SimCommand) -> Result<CommandOutcome, CommandError> {
        let world = self.app.world_mut();
        let out = apply_command(world, &cmd)?;
        // A command that adds, removes or moves a token makes the query index
        // stale (an impulse or a charge does not).
        if matches!(
            cmd,
            SimCommand::Spawn(_)
                | SimCommand::SpawnBatch(_)
                | SimCommand::Despawn(_)
                | SimCommand::Set {
                    value: crate::model::commands::SetValue::Position(_),
                    ..
                }
        ) {
            world.remove_resource::<QueryIndex>();
        }
        let mut log = world.resource_mut::<CommandLog>();
        if log.record {
            log.applied.push(cmd);
        }
        Ok(out)
    }

    /// Queues a command for the next tick's `Ingest`; see [`CommandLog`] for refusals.
    pub fn submit(&mut self, cmd: SimCommand) {
        self.app
            .world_mut()
            .resource_mut::<CommandQueue>()
            .push(cmd);
    }

    /// Spawns one token; returns its id.
    ///
    /// # Errors
    /// [`CommandError::InvalidValue`] when the CDNA refuses the token;
    /// [`CommandError::Quota`] when a quota or the id space would be exceeded.
    pub fn spawn(&mut self, spec: TokenSpec) -> Result<TokenId, CommandError> {
        match self.apply(SimCommand::Spawn(spec))? {
            CommandOutcome::Spawned { first, .. } => Ok(first),
            other => unreachable!("spawn produced {other:?}"),
        }
    }

    /// Spawns a batch, all or nothing; returns the first id (ids are consecutive).
    ///
    /// # Errors
    /// [`CommandError::BatchItem`] when the CDNA refuses a token (the first is named);
    /// [`CommandError::Quota`] when a quota or the id space would be exceeded.
    pub fn spawn_batch(&mut self, specs: Vec<TokenSpec>) -> Result<TokenId, CommandError> {
        match self.apply(SimCommand::SpawnBatch(specs))? {
            CommandOutcome::Spawned { first, .. } => Ok(first),
            other => unreachable!("spawn produced {other:?}"),
        }
    }

    /// Runs one tick.
    pub fn step(&mut self) {
        crate::schedule::run_tick(self.app.world_mut());
    }

    /// Runs `n` ticks.
    pub fn run(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Ticks completed.
    pub fn tick(&self) -> u64 {
        self.world().resource::<SimClock>().tick
    }

    /// Live tokens.
    pub fn token_count(&self) -> u64 {
        self.world().resource::<TokenRegistry>().len()
    }

    /// Links in the graph (each pair once).
    pub fn link_count(&self) -> u64 {
        self.world().resource::<LinkGraph>().len()
    }

    /// The digest of the current state.
    pub fn digest(&mut self) -> StateDigest {
        state_digest(self.app.world_mut())
    }

    /// Reads one token back.
    pub fn token(&self, id: TokenId) -> Option<TokenState> {
        let e = self.world().resource::<TokenRegistry>().get(id)?;
        let r = self.world().entity(e);
        Some(TokenState {
            id,
            position: r.get::<Position>()?.0,
            velocity: r.get::<Velocity>()?.0,
            charge: r.get::<Charge>()?.0,
            mass: r.get::<Mass>()?.0,
            field: *r.get::<Field>()?,
            kind: *r.get::<TokenKind>()?,
            level: r.get::<Level>()?.0,
        })
    }

    /// Live token ids in increasing order: the row order of every
    /// [`column`](Self::column). Shape `(N,)`.
    pub fn ids(&self) -> Vec<u64> {
        let registry = self.world().resource::<TokenRegistry>();
        let mut ids = Vec::with_capacity(registry.len() as usize);
        ids.extend(registry.iter().map(|(id, _)| id.0));
        ids
    }

    /// `f` of component `C` of every live token, `K` values per token, rows in
    /// increasing id order (as [`ids`](Self::ids)): a flat row-major `(N, K)`
    /// array. Reads the ECS tables in storage order and scatters each row to
    /// its id's place, so it costs one pass over the tables (no per-token
    /// lookups, no sort).
    pub fn column<C: Component, T: Copy + Default, const K: usize>(
        &mut self,
        f: impl Fn(&C) -> [T; K],
    ) -> Vec<T> {
        let registry = self.world().resource::<TokenRegistry>();
        let n = registry.len() as usize;
        let next = registry.next_id().0 as usize;
        // With no despawned ids, a token's row is its id.
        let rank: Option<Vec<u32>> = (n != next).then(|| {
            let mut rank = vec![u32::MAX; next];
            for (row, (id, _)) in registry.iter().enumerate() {
                rank[id.0 as usize] = row as u32;
            }
            rank
        });
        let mut out = vec![T::default(); n * K];
        let world = self.app.world_mut();
        let mut query = world.query::<(&TokenId, &C)>();
        for (id, c) in query.iter(world) {
            let row = match &rank {
                Some(rank) => rank.get(id.0 as usize).map_or(usize::MAX, |&r| r as usize),
                None => id.0 as usize,
            };
            // Every token entity is registered; anything else is not a row.
            if row < n {
                out[row * K..(row + 1) * K].copy_from_slice(&f(c));
            }
        }
        out
    }

    /// The `k` live tokens nearest to `point` (Euclidean, in 8D), nearest
    /// first (ties by id), with their distances: exact. The spatial index is a
    /// k-d tree over the current positions, built on the first query after a
    /// tick or a command and reused until the next ([`QueryIndex`]).
    ///
    /// # Errors
    /// [`QueryError`] when `point` has a component that is not finite or
    /// beyond ±[`QUERY_LIMIT`].
    pub fn nearest(&mut self, point: Vec8, k: usize) -> Result<Vec<(TokenId, f32)>, QueryError> {
        check_point(point)?;
        let index = self.query_index();
        Ok(index
            .tree
            .nearest(&index.points, point, k)
            .into_iter()
            .map(|(j, d2)| (TokenId(index.ids[j as usize]), d2.sqrt()))
            .collect())
    }

    /// Every live token within `radius` of `point` (`|x − point| ≤ radius`),
    /// nearest first (ties by id), with their distances: exact, from the same
    /// index as [`nearest`](Self::nearest).
    ///
    /// # Errors
    /// [`QueryError`] when `point` has a component that is not finite or
    /// beyond ±[`QUERY_LIMIT`], or `radius` is not in `[0, QUERY_LIMIT]`.
    pub fn within(&mut self, point: Vec8, radius: f32) -> Result<Vec<(TokenId, f32)>, QueryError> {
        check_point(point)?;
        if !(radius.is_finite() && (0.0..=QUERY_LIMIT).contains(&radius)) {
            return Err(QueryError(format!(
                "radius = {radius}: must be a finite number in [0, {QUERY_LIMIT:e}]"
            )));
        }
        let index = self.query_index();
        let mut out = Vec::new();
        index
            .tree
            .for_each_within(&index.points, point, radius * radius, |j, d2| {
                out.push((TokenId(index.ids[j as usize]), d2.sqrt()));
            });
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The query index, rebuilt after a tick, or after a command that added,
    /// removed or moved a token (which removed it).
    fn query_index(&mut self) -> &QueryIndex {
        let key = self.tick();
        let stale = self
            .world()
            .get_resource::<QueryIndex>()
            .is_none_or(|q| q.key != Some(key));
        if stale {
            let ids = self.ids();
            let points: Vec<Vec8> = self
                .column::<Position, f32, 8>(|p| p.0.to_array())
                .chunks_exact(8)
                .map(|c| Vec8::from_array(c.try_into().expect("8 values")))
                .collect();
            let tree = crate::geometry::spatial::KdTree::build(&points);
            self.world_mut().insert_resource(QueryIndex {
                key: Some(key),
                ids,
                points,
                tree,
            });
        }
        self.world().resource::<QueryIndex>()
    }

    /// The current constitution.
    pub fn cdna(&self) -> &Cdna {
        self.world().resource::<Cdna>()
    }

    /// CDNA violation counters.
    pub fn violations(&self) -> &CdnaViolations {
        self.world().resource::<CdnaViolations>()
    }

    /// Command counters and the last tick's refusals.
    pub fn command_log(&self) -> &CommandLog {
        self.world().resource::<CommandLog>()
    }

    /// Ordered pairs within cutoff in the last tick (each pair counted twice).
    pub fn last_pair_count(&self) -> u64 {
        self.world().resource::<ForceBuffers>().stats.pairs
    }

    /// Force-stage counters.
    pub fn force_stats(&self) -> crate::systems::ForceStats {
        self.world().resource::<ForceBuffers>().stats
    }

    /// The world as the GPU-resident tick loads it
    /// ([`GpuResident::load`](crate::backend::gpu::resident::GpuResident::load)):
    /// positions, velocities, token parameters and links with slots in
    /// increasing id order (as [`ids`](Self::ids)), and the constants of this
    /// world's CDNA and configuration.
    #[cfg(feature = "gpu")]
    pub fn resident_world(&mut self) -> crate::backend::gpu::resident::ResidentWorld {
        use crate::backend::gpu::resident::{ResidentParams, ResidentWorld};
        let vecs = |flat: Vec<f32>| -> Vec<Vec8> {
            flat.chunks_exact(8)
                .map(|c| Vec8::from_array(std::array::from_fn(|k| c[k])))
                .collect()
        };
        let ids: Vec<TokenId> = self.ids().into_iter().map(TokenId).collect();
        let positions = vecs(self.column::<Position, f32, 8>(|p| p.0.to_array()));
        let velocities = vecs(self.column::<Velocity, f32, 8>(|v| v.0.to_array()));
        let q = self.column::<Charge, f32, 1>(|c| [c.0]);
        let m = self.column::<Mass, f32, 1>(|c| [c.0]);
        let f = self.column::<Field, f32, 2>(|f| [f.radius, f.strength]);
        let params = (0..ids.len())
            .map(|i| crate::physics::TokenParams {
                charge: q[i],
                mass: m[i],
                radius: f[2 * i],
                strength: f[2 * i + 1],
            })
            .collect();
        let links = crate::physics::LinkTable::build(
            &ids,
            self.world()
                .resource::<LinkGraph>()
                .iter()
                .map(|(&(a, b), l)| (a, b, l.weight, l.rest_length)),
        );
        let constants = ResidentParams::new(self.cdna(), self.world().resource::<SimConfig>());
        ResidentWorld {
            positions,
            velocities,
            params,
            links,
            constants: Some(constants),
        }
    }

    /// Integrator counters.
    pub fn integrate_stats(&self) -> IntegrateStats {
        *self.world().resource::<IntegrateStats>()
    }

    /// The emergent hierarchy after the last detection.
    pub fn hierarchy(&self) -> &crate::geometry::hierarchy::Hierarchy {
        self.world()
            .resource::<crate::geometry::hierarchy::Hierarchy>()
    }

    /// Learning counters.
    pub fn learn_stats(&self) -> crate::systems::LearnStats {
        *self.world().resource::<crate::systems::LearnStats>()
    }

    /// The world's memory by structure ([`crate::memory::measure`]).
    pub fn memory(&self) -> crate::memory::MemoryReport {
        crate::memory::measure(self.world())
    }

    /// The force backend: what was asked for, what runs, the adapter, timings.
    pub fn backend(&self) -> &ForceBackend {
        self.app.world().resource::<ForceBackend>()
    }

    /// Worker threads of the compute pool.
    pub fn threads(&self) -> usize {
        self.world().resource::<ComputePool>().threads()
    }

    /// The world.
    pub fn world(&self) -> &World {
        self.app.world()
    }

    /// The world, mutable (for embedders who know what they do).
    pub fn world_mut(&mut self) -> &mut World {
        self.app.world_mut()
    }

    /// The app.
    pub fn app_mut(&mut self) -> &mut App {
        &mut self.app
    }
}

/// The WAL journals and replays a [`Simulation`]; replayed ticks are observed
/// by nothing ([`ObserveSettings::QUIET`]) until the recovered run goes live.
impl crate::wal::Host for Simulation {
    type Error = SimError;

    fn replica(config: SimConfig, cdna: Cdna, quotas: Quotas) -> Result<Self, SimError> {
        let mut sim = Simulation::new(SimSettings {
            config,
            cdna,
            quotas,
        })?;
        sim.world_mut().insert_resource(ObserveSettings::QUIET);
        Ok(sim)
    }

    fn world(&self) -> &World {
        self.app.world()
    }

    fn world_mut(&mut self) -> &mut World {
        self.app.world_mut()
    }

    fn go_live(&mut self) {
        self.world_mut().insert_resource(ObserveSettings::default());
    }
}
