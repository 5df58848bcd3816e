//! The `neurograph` application on top of the engine (feature `cli`): the
//! headless runner, the benchmarks, plotting, and the output-path checks they
//! share. The binary (`src/main.rs`) parses the command line and calls these.

pub mod benchmarks;
pub mod embed;
pub mod paths;
pub mod plot;
pub mod repl;
pub mod runner;
pub mod serve;
