//! The data of a world, and the rules that check it: vectors, components,
//! registries, run settings and quotas, the CDNA, and commands.

pub mod cdna;
pub mod commands;
pub mod components;
pub mod config;
pub mod math;
pub mod registry;

/// Data read back (a snapshot, a dump) that is not consistent: the message
/// names the first value that is wrong and the rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);
