//! The ECS systems of the tick, one file per family, each with its plugin.
//!
//! | set | plugin | what it does |
//! |-----|--------|--------------|
//! | `Ingest` | [`IngestPlugin`] | applies queued commands ([`ingest()`](fn@ingest)) |
//! | `Forces` | [`ForcesPlugin`] | gathers tokens, refreshes neighbour lists, computes forces ([`ForceBuffers`]) |
//! | `Integrate` | [`IntegratePlugin`] | semi-implicit Euler with damping and a speed limit |
//! | `Forces` | [`OrganizePlugin`] | optional pull of grouped tokens to their group's centre ([`group_pull`]) |
//! | `Constrain` | [`ConstrainPlugin`] | enforces the CDNA, counts violations |
//! | `Learn` | [`LearnPlugin`] | Hebbian link weights, decay, pruning, new links ([`learn()`](fn@learn)) |
//! | `Organize` | [`OrganizePlugin`] | every K ticks: friends-of-friends groups, stable ids, `ChildOf` ([`organize()`](fn@organize)) |
//! | `Journal` | [`JournalPlugin`](crate::wal::JournalPlugin) (the WAL layer) | appends the tick's record to the WAL, snapshots when due |
//! | `Observe` | [`ObservePlugin`](crate::observe::ObservePlugin) (the observability layer) | metrics, black box, puffin frame |

pub mod constrain;
pub mod forces;
pub mod ingest;
pub mod integrate;
pub mod learn;
pub mod organize;

pub use constrain::{ConstrainPlugin, constrain_links, constrain_tokens};
pub use forces::{
    ForceBuffers, ForceBytes, ForceStats, ForcesPlugin, compute_densities, compute_forces, forces,
};
pub use ingest::{IngestPlugin, ingest};
pub use integrate::{IntegratePlugin, IntegrateStats, integrate};
pub use learn::{LearnPlugin, LearnStats, learn};
pub use organize::{
    GroupEntities, OrganizePlugin, OrganizeStats, group_pull, organize, organize_now,
};
