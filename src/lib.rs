#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
#[cfg(feature = "cli")]
pub mod benchmarks;
pub mod cdna;
pub mod commands;
pub mod components;
pub mod config;
pub mod digest;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod hierarchy;
pub mod input;
pub mod math;
pub mod observe;
pub mod paths;
pub mod physics;
#[cfg(feature = "cli")]
pub mod plot;
pub mod plugin;
pub mod registry;
#[cfg(feature = "cli")]
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod spatial;
pub mod wal;

#[path = "../systems/mod.rs"]
pub mod systems;

/// The names most users need.
pub mod prelude {
    pub use crate::backend::ForceBackend;
    pub use crate::cdna::{Cdna, CdnaError, CdnaViolations, Profile, ViolationKind};
    pub use crate::commands::{CommandError, CommandOutcome, CommandQueue, SetValue, SimCommand};
    pub use crate::components::*;
    pub use crate::config::{Backend, QuotaError, Quotas, SimConfig};
    pub use crate::digest::StateDigest;
    pub use crate::math::{Axis, Vec8};
    pub use crate::plugin::{NeuroGraphPlugin, NeuroGraphPlugins, SimSystems, SimTick, TickDriver};
    pub use crate::sim::{SimSettings, Simulation};
}
