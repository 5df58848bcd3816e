//! NeuroGraph: a data-oriented ECS simulation engine. Knowledge lives as
//! **tokens** in an 8-dimensional semantic space; tokens are `bevy_ecs` entities
//! with position, velocity, charge, mass and field components. A fixed schedule
//! of systems computes their forces (many-body DPD: like charges gather into
//! fields that settle at a bounded density), integrates them, holds them to a
//! constitution (the **CDNA**), lets links learn and hierarchies emerge, and
//! journals every tick to a crash-safe **write-ahead log**. Same inputs give
//! bit-identical states, whatever the thread count.
//!
//! ```
//! use neurograph::prelude::*;
//!
//! let mut sim = Simulation::with_defaults();
//! let a = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
//! let b = sim.spawn(TokenSpec::at(Vec8::splat(0.2)).with_charge(0.5)).unwrap();
//! sim.apply(SimCommand::Link { a, b, spec: LinkSpec::new(1.0, 0.3) }).unwrap();
//! // Bad input is refused with the value and the limit; the world is unchanged.
//! let err = sim.apply(SimCommand::Set { id: a, value: SetValue::Charge(f32::NAN) }).unwrap_err();
//! assert_eq!(err.to_string(), "charge = NaN: must be a finite number in [-1, 1] (CDNA)");
//! sim.run(10);
//! assert_eq!(sim.tick(), 10);
//! println!("digest {}", sim.digest());
//! ```
//!
//! In a bevy app, add [`NeuroGraphPlugin`](plugin::NeuroGraphPlugin) (or the
//! [`NeuroGraphPlugins`](plugin::NeuroGraphPlugins) group) and order your systems
//! around the [`SimSystems`](schedule::SimSystems) sets of the
//! [`SimTick`](schedule::SimTick) schedule.
//!
//! # Layers
//!
//! Bottom up; a module uses only the layers below it (CI checks this with
//! `.ci/module_cycles.py`):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | schedule | [`schedule`] | the `SimTick` schedule, its stages, the tick driver, the compute pool |
//! | data | [`model`] | vectors, components, registries, settings and quotas, the CDNA, commands |
//! | geometry and physics | [`geometry`], [`physics`], [`digest`] | the 8D spatial index and friends-of-friends hierarchy; the force law; the state digest |
//! | backends | [`backend`] | which backend computes forces; the wgpu pass (feature `gpu`) |
//! | stages | [`systems`] | one plugin per stage of the tick |
//! | layers | [`wal`], [`observe`] | the write-ahead log (recovery through the [`wal::Host`] seam) and observability |
//! | assembly | [`plugin`], [`sim`], [`scenario`], [`input`], [`memory`] | the plugin group, the headless `Simulation`, built-in scenarios, CSV input, bytes by structure |
//! | app | `app` (feature `cli`) | the runner, benches and plotting behind the `neurograph` binary |
//!
//! # Features
//!
//! - `cli` (default): the `neurograph` binary and the `app` module (clap, indicatif,
//!   plotters, hyper/tokio for `/metrics`, the Prometheus exporter). An embedder
//!   uses `default-features = false` and compiles none of them.
//! - `gpu` (default): the wgpu force backend.
//! - `fault-injection`: test-only faults (a tick that panics, a lost GPU).
//!
//! The reference is in `docs/` (CLI, CDNA, WAL format, hierarchy,
//! observability, GPU, performance) and in each module's docs.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// The layers, bottom up (`.ci/module_cycles.py` checks that no module reaches
// up): the schedule; the data; geometry and the physics; the state digest; the force backends; the stages;
// the WAL and observability; the assembly (plugins, `Simulation`, scenarios);
// the app (feature `cli`).
pub mod schedule;

pub mod model;

pub mod geometry;
pub mod physics;

pub mod digest;

pub mod backend;

#[path = "../systems/mod.rs"]
pub mod systems;

pub mod observe;
pub mod wal;

pub mod input;
pub mod memory;
pub mod plugin;
pub mod scenario;
pub mod sim;

#[cfg(feature = "cli")]
pub mod app;

/// The names most users need.
pub mod prelude {
    pub use crate::backend::ForceBackend;
    pub use crate::digest::StateDigest;
    pub use crate::model::cdna::{Cdna, CdnaError, CdnaViolations, Profile, ViolationKind};
    pub use crate::model::commands::{
        CommandError, CommandOutcome, CommandQueue, SetValue, SimCommand,
    };
    pub use crate::model::components::*;
    pub use crate::model::config::{Backend, GpuTick, QuotaError, Quotas, SimConfig};
    pub use crate::model::math::{Axis, Vec8};
    pub use crate::plugin::{NeuroGraphPlugin, NeuroGraphPlugins};
    pub use crate::schedule::{SimSystems, SimTick, TickDriver, run_tick};
    pub use crate::sim::{SimSettings, Simulation};
}
