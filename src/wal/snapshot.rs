//! [`WorldSnapshot`]: the whole world after a tick, as plain data.

use crate::digest::{StateDigest, state_digest};
use crate::geometry::hierarchy::Hierarchy;
use crate::model::Inconsistent;
use crate::model::cdna::{Cdna, CdnaHistory, CdnaViolations};
use crate::model::commands::CommandLog;
use crate::model::components::*;
use crate::model::math::Vec8;
use crate::model::registry::{LinkGraph, SimRng, SpatialDirty, TokenRegistry};
use crate::schedule::SimClock;
use crate::systems::organize::mirror;
use crate::systems::{GroupEntities, IntegrateStats, LearnStats};
use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

/// One token in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Stable id.
    pub id: TokenId,
    /// Position in the 8D space.
    pub position: Vec8,
    /// Velocity, length per unit of simulated time.
    pub velocity: Vec8,
    /// Charge in `[-1, 1]`.
    pub charge: f32,
    /// Mass (> 0).
    pub mass: f32,
    /// Field radius.
    pub radius: f32,
    /// Field strength.
    pub strength: f32,
    /// User token, hub or group.
    pub kind: TokenKind,
    /// Hierarchy level (0 for user tokens).
    pub level: u8,
}

/// Counters carried across a restore so that a resumed run's summary covers the
/// whole run. They do not affect the simulation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotCounters {
    /// CDNA violations since the start, by kind.
    pub violations: Vec<u64>,
    /// Token-steps whose speed was capped.
    pub speed_limited: u64,
    /// Commands applied since the start.
    pub commands_applied: u64,
    /// Commands refused since the start.
    pub commands_rejected: u64,
    /// Refusals caused by a quota.
    pub quota_rejections: u64,
    /// Links formed by learning since the start.
    #[serde(default)]
    pub links_formed: u64,
    /// Links pruned by learning since the start.
    #[serde(default)]
    pub links_pruned: u64,
}

/// The whole world after a tick: tokens, links, hierarchy levels, the CDNA and its
/// history, the clock and the RNG state, plus the digest it must restore to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldSnapshot {
    /// Ticks completed.
    pub tick: u64,
    /// The id the next spawned token gets.
    pub next_id: TokenId,
    /// Live tokens in id order.
    pub tokens: Vec<TokenRecord>,
    /// Links in key order.
    pub links: Vec<(TokenId, TokenId, LinkSpec)>,
    /// The constitution.
    pub cdna: Cdna,
    /// Earlier constitutions.
    pub cdna_history: CdnaHistory,
    /// The RNG.
    pub rng: SimRng,
    /// Counters.
    pub counters: SnapshotCounters,
    /// The emergent hierarchy (groups, their ids and members).
    pub hierarchy: Hierarchy,
    /// [`state_digest`] of the world captured.
    pub digest: u64,
}

/// The largest `next_id` a snapshot may claim ([`TokenRegistry::MAX_IDS`]).
pub const MAX_NEXT_ID: u64 = TokenRegistry::MAX_IDS;

/// Captures `world`; `digest` is its current [`state_digest`] (the journal has it
/// already; pass `None` to compute it).
pub fn capture(world: &mut World, digest: Option<StateDigest>) -> WorldSnapshot {
    puffin::profile_function!();
    let digest = digest.unwrap_or_else(|| state_digest(world)).0;
    let mut q = world.query::<(
        &TokenId,
        &Position,
        &Velocity,
        &Charge,
        &Mass,
        &Field,
        &TokenKind,
        &Level,
    )>();
    let mut tokens: Vec<TokenRecord> = q
        .iter(world)
        .map(|(id, x, v, q, m, f, k, l)| TokenRecord {
            id: *id,
            position: x.0,
            velocity: v.0,
            charge: q.0,
            mass: m.0,
            radius: f.radius,
            strength: f.strength,
            kind: *k,
            level: l.0,
        })
        .collect();
    tokens.sort_unstable_by_key(|t| t.id);
    let links = world
        .resource::<LinkGraph>()
        .iter()
        .map(|(&(a, b), s)| (a, b, *s))
        .collect();
    let log = world.resource::<CommandLog>();
    let counters = SnapshotCounters {
        violations: world
            .get_resource::<CdnaViolations>()
            .map(|v| v.total.to_vec())
            .unwrap_or_default(),
        speed_limited: world
            .get_resource::<IntegrateStats>()
            .map_or(0, |s| s.speed_limited),
        commands_applied: log.applied_total,
        commands_rejected: log.rejected_total,
        quota_rejections: log.quota_rejections,
        links_formed: world
            .get_resource::<LearnStats>()
            .map_or(0, |s| s.links_formed),
        links_pruned: world
            .get_resource::<LearnStats>()
            .map_or(0, |s| s.links_pruned),
    };
    WorldSnapshot {
        tick: world.resource::<SimClock>().tick,
        next_id: world.resource::<TokenRegistry>().next_id(),
        tokens,
        links,
        cdna: world.resource::<Cdna>().clone(),
        cdna_history: world.resource::<CdnaHistory>().clone(),
        rng: world.resource::<SimRng>().clone(),
        counters,
        hierarchy: world
            .get_resource::<Hierarchy>()
            .cloned()
            .unwrap_or_default(),
        digest,
    }
}

/// Why a snapshot could not be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The world already has tokens.
    #[error("the world already has tokens")]
    Populated,
    /// The snapshot's data is not consistent.
    #[error(transparent)]
    Inconsistent(#[from] Inconsistent),
    /// The restored world's digest is not the one recorded.
    #[error("the restored world's digest is {restored}, the snapshot recorded {recorded}")]
    Digest {
        /// The digest of the restored world.
        restored: StateDigest,
        /// The digest the snapshot recorded.
        recorded: StateDigest,
    },
}

/// Restores `snap` into a world that has the NeuroGraph resources and no tokens,
/// then checks that the world's digest is the one recorded. On error the world may
/// hold part of the snapshot; callers drop it.
///
/// # Errors
/// The world has tokens; the snapshot's ids, links or hierarchy are not
/// consistent; or the restored world's digest differs from the recorded one.
pub fn restore(world: &mut World, snap: &WorldSnapshot) -> Result<(), RestoreError> {
    puffin::profile_function!();
    if !world.resource::<TokenRegistry>().is_empty() {
        return Err(RestoreError::Populated);
    }
    if snap.next_id.0 > MAX_NEXT_ID {
        return Err(corrupt(format!(
            "next_id = {}: must be at most {MAX_NEXT_ID}",
            snap.next_id.0
        )));
    }
    let mut prev: Option<TokenId> = None;
    for t in &snap.tokens {
        if t.id >= snap.next_id || prev.is_some_and(|p| p >= t.id) {
            return Err(corrupt(format!(
                "token id {} is out of order or not below next_id = {}",
                t.id.0, snap.next_id.0
            )));
        }
        prev = Some(t.id);
    }
    let bundles: Vec<TokenBundle> = snap
        .tokens
        .iter()
        .map(|t| TokenBundle {
            id: t.id,
            position: Position(t.position),
            velocity: Velocity(t.velocity),
            charge: Charge(t.charge),
            mass: Mass(t.mass),
            field: Field {
                radius: t.radius,
                strength: t.strength,
            },
            kind: t.kind,
            level: Level(t.level),
        })
        .collect();
    let entities: Vec<Entity> = world.spawn_batch(bundles).collect();
    let registry =
        TokenRegistry::restore(snap.next_id, snap.tokens.iter().map(|t| t.id).zip(entities))?;
    let mut graph = LinkGraph::default();
    for &(a, b, spec) in &snap.links {
        if a >= b || !registry.contains(a) || !registry.contains(b) {
            return Err(corrupt(format!(
                "link {a}–{b} does not join two live tokens in order"
            )));
        }
        if graph.get(a, b).is_some() {
            return Err(corrupt(format!("link {a}–{b} appears twice")));
        }
        graph.insert(a, b, spec);
    }
    world.insert_resource(registry);
    world.insert_resource(graph);
    world.insert_resource(snap.cdna.clone());
    world.insert_resource(snap.cdna_history.clone());
    world.insert_resource(snap.rng.clone());
    world.insert_resource(SimClock { tick: snap.tick });
    world.insert_resource(SpatialDirty(true));
    let c = &snap.counters;
    if let Some(mut v) = world.get_resource_mut::<CdnaViolations>() {
        for (slot, n) in v.total.iter_mut().zip(&c.violations) {
            *slot = *n;
        }
    }
    if let Some(mut s) = world.get_resource_mut::<IntegrateStats>() {
        s.speed_limited = c.speed_limited;
    }
    if let Some(mut s) = world.get_resource_mut::<LearnStats>() {
        s.links_formed = c.links_formed;
        s.links_pruned = c.links_pruned;
    }
    snap.hierarchy.validate(snap.next_id.0)?;
    if world.contains_resource::<GroupEntities>() {
        mirror(world, &Hierarchy::default(), &snap.hierarchy);
    }
    world.insert_resource(snap.hierarchy.clone());
    let mut log = world.resource_mut::<CommandLog>();
    log.applied_total = c.commands_applied;
    log.rejected_total = c.commands_rejected;
    log.quota_rejections = c.quota_rejections;
    let got = state_digest(world);
    if got.0 != snap.digest {
        return Err(RestoreError::Digest {
            restored: got,
            recorded: StateDigest(snap.digest),
        });
    }
    Ok(())
}

fn corrupt(reason: String) -> RestoreError {
    RestoreError::Inconsistent(Inconsistent(reason))
}
