//! What a world's memory is made of: bytes per structure, measured from the
//! structures themselves (their capacities), for `bench steady`, the run
//! summary and the memory quota's accounting.
//!
//! Measured: the ECS tables (capacity × row: each component's size, its two
//! change ticks, the entity), the token registry, the force stage's gathered
//! arrays, Verlet rows, k-d tree and link table, the links' adjacency lists,
//! and the hierarchy. Estimated (the standard library does not expose them):
//! the B-tree and hash-map tables of the link graph (see
//! [`LinkGraph::heap_bytes`]) and bevy's per-entity records (16 B each). Not
//! counted: allocator overhead and freed memory the process keeps, which is
//! why the peak RSS is higher.

use crate::geometry::hierarchy::Hierarchy;
use crate::model::registry::{LinkGraph, TokenRegistry};
use crate::systems::ForceBuffers;
use bevy_ecs::prelude::*;
use serde::Serialize;

/// Bytes of one structure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StructureBytes {
    /// The structure.
    pub name: &'static str,
    /// Bytes it holds.
    pub bytes: u64,
    /// `bytes` over the live tokens.
    pub bytes_per_token: f64,
}

/// A world's memory by structure, largest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryReport {
    /// Live tokens.
    pub tokens: u64,
    /// The structures, largest first.
    pub structures: Vec<StructureBytes>,
    /// Their sum.
    pub total_bytes: u64,
    /// `total_bytes` over the live tokens.
    pub bytes_per_token: f64,
}

/// The name of the link graph's entry in [`MemoryReport::structures`].
pub const LINK_GRAPH: &str = "link graph";
/// The name of the force stage's link table in [`MemoryReport::structures`].
pub const LINK_TABLE: &str = "link table (forces stage)";

impl MemoryReport {
    /// The bytes of the link structures ([`LINK_GRAPH`] and [`LINK_TABLE`]).
    pub fn link_bytes(&self) -> u64 {
        self.structures
            .iter()
            .filter(|s| s.name == LINK_GRAPH || s.name == LINK_TABLE)
            .map(|s| s.bytes)
            .sum()
    }
}

/// Bytes per entity of bevy's entity records (location and generation), an
/// estimate.
const ENTITY_RECORD_BYTES: u64 = 16;

/// Bytes of the ECS tables at their capacity, and of the entity records.
fn ecs_bytes(world: &World) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0u64;
    for archetype in world.archetypes().iter() {
        let table_id = archetype.table_id();
        if !seen.insert(table_id.as_usize()) {
            continue;
        }
        let Some(table) = world.storages().tables.get(table_id) else {
            continue;
        };
        let row: usize = archetype
            .table_components()
            .filter_map(|id| world.components().get_info(id))
            .map(|info| info.layout().size() + 2 * size_of::<bevy_ecs::change_detection::Tick>())
            .sum::<usize>()
            + size_of::<Entity>();
        bytes += (table.capacity() * row) as u64;
    }
    bytes + world.entities().len() as u64 * ENTITY_RECORD_BYTES
}

/// Measures the world's structures.
pub fn measure(world: &World) -> MemoryReport {
    let tokens = world
        .get_resource::<TokenRegistry>()
        .map_or(0, TokenRegistry::len);
    let mut structures: Vec<(&'static str, u64)> =
        vec![("ECS tables and entities", ecs_bytes(world))];
    if let Some(r) = world.get_resource::<TokenRegistry>() {
        structures.push(("token id table", r.heap_bytes()));
    }
    if let Some(b) = world.get_resource::<ForceBuffers>() {
        let f = b.heap_bytes();
        structures.push(("Verlet neighbour rows", f.rows));
        structures.push(("gathered arrays (forces stage)", f.gathered));
        structures.push(("k-d tree", f.tree));
        structures.push((LINK_TABLE, f.links));
    }
    if let Some(g) = world.get_resource::<LinkGraph>() {
        structures.push((LINK_GRAPH, g.heap_bytes()));
    }
    if let Some(b) = world.get_resource::<crate::backend::ForceBackend>()
        && let Some(bytes) = b.resident_host_bytes()
    {
        structures.push(("GPU resident tick (host copies)", bytes));
    }
    if let Some(h) = world.get_resource::<Hierarchy>() {
        structures.push(("hierarchy", h.heap_bytes()));
    }
    structures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let per = |b: u64| {
        if tokens > 0 {
            b as f64 / tokens as f64
        } else {
            0.0
        }
    };
    let total_bytes = structures.iter().map(|s| s.1).sum();
    MemoryReport {
        tokens,
        structures: structures
            .into_iter()
            .map(|(name, bytes)| StructureBytes {
                name,
                bytes,
                bytes_per_token: per(bytes),
            })
            .collect(),
        total_bytes,
        bytes_per_token: per(total_bytes),
    }
}

impl MemoryReport {
    /// One line per structure: bytes per token, MiB, share.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "memory by structure ({} tokens): {:.0} B/token, {:.1} MiB in all",
            self.tokens,
            self.bytes_per_token,
            self.total_bytes as f64 / 1048576.0
        );
        for st in &self.structures {
            s.push_str(&format!(
                "\n  {:<32} {:>8.0} B/token {:>9.1} MiB {:>5.1}%",
                st.name,
                st.bytes_per_token,
                st.bytes as f64 / 1048576.0,
                100.0 * st.bytes as f64 / self.total_bytes.max(1) as f64
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::commands::SimCommand;
    use crate::model::components::{LinkSpec, TokenId, TokenSpec};
    use crate::model::math::Vec8;
    use crate::sim::Simulation;

    fn bytes_of(r: &MemoryReport, name: &str) -> u64 {
        r.structures.iter().find(|s| s.name == name).unwrap().bytes
    }

    /// A small world, ticked so that every structure exists.
    fn world(n: usize) -> Simulation {
        let mut sim = Simulation::with_defaults();
        let specs = (0..n)
            .map(|i| {
                TokenSpec::at(Vec8::from_array(std::array::from_fn(|k| {
                    ((i * 8 + k) as f32 * 0.37).sin() * 3.0
                })))
            })
            .collect();
        sim.spawn_batch(specs).unwrap();
        sim.run(3);
        sim
    }

    #[test]
    fn the_parts_add_up_and_bound_what_they_hold() {
        let mut sim = world(2000);
        let r = sim.memory();
        assert_eq!(r.tokens, 2000);
        assert_eq!(
            r.total_bytes,
            r.structures.iter().map(|s| s.bytes).sum::<u64>()
        );
        assert!((r.bytes_per_token - r.total_bytes as f64 / 2000.0).abs() < 1e-9);
        assert!(
            r.structures.windows(2).all(|w| w[0].bytes >= w[1].bytes),
            "largest first"
        );
        // Each structure holds at least what it stores.
        let buf = sim.world().resource::<ForceBuffers>();
        let candidates = buf.neighbors.candidates() as u64;
        assert!(candidates > 0);
        assert!(bytes_of(&r, "Verlet neighbour rows") >= 4 * candidates);
        assert!(bytes_of(&r, "gathered arrays (forces stage)") >= 2000 * (8 + 32 + 32 + 4));
        // A token row: its components, two change ticks each, the entity.
        assert!(bytes_of(&r, "ECS tables and entities") >= 2000 * (32 + 32 + 4 + 4 + 8 + 8));
        assert!(bytes_of(&r, "token id table") >= 2000 * 8);
        // Links add to the graph what they hold at least.
        let before = bytes_of(&r, "link graph");
        for k in 0..500u64 {
            let (a, b) = (TokenId(k), TokenId(1000 + k));
            sim.apply(SimCommand::Link {
                a,
                b,
                spec: LinkSpec::new(1.0, 0.3),
            })
            .unwrap();
        }
        let after = bytes_of(&sim.memory(), "link graph");
        assert!(after >= before + 500 * 32, "{before} → {after}");
    }

    #[test]
    fn an_empty_world_holds_little() {
        let r = Simulation::with_defaults().memory();
        assert_eq!(r.tokens, 0);
        assert_eq!(r.bytes_per_token, 0.0);
        assert!(r.total_bytes < 64 * 1024, "{}", r.to_text());
    }
}
