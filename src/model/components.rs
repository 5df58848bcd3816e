//! Token and link data: the ECS components of a token, and the link record.
//!
//! A token is an entity with the components of [`TokenBundle`]. Components are
//! newtypes so that systems can ask for exactly what they touch.

use crate::model::math::Vec8;
use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

/// The stable identity of a token: assigned by the engine at spawn, in increasing
/// order, never reused. Entities may change across a snapshot restore; ids do not.
#[derive(
    Component, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct TokenId(pub u64);

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Position in the semantic space.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Position(pub Vec8);

/// Velocity in the semantic space (units per simulated second).
#[derive(Component, Clone, Copy, Debug, Default, PartialEq)]
pub struct Velocity(pub Vec8);

/// Charge `q` in `[-1, 1]`: like charges attract, opposite charges repel.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct Charge(pub f32);

/// Mass `m > 0`.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct Mass(pub f32);

/// The token's field: radius `R > 0` (the interaction cutoff) and strength `s` in `[0, 1]`.
#[derive(Component, Clone, Copy, Debug, PartialEq)]
pub struct Field {
    /// Field radius `R`.
    pub radius: f32,
    /// Field strength `s`.
    pub strength: f32,
}

/// What a token stands for. Physics treats all kinds alike.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum TokenKind {
    /// A concept (the default).
    #[default]
    Concept = 0,
    /// A concrete instance of a concept.
    Instance = 1,
    /// A relation reified as a token.
    Relation = 2,
    /// A group found by the hierarchy stage.
    Group = 3,
}

/// Hierarchy level: 0 for user tokens, 1+ for emergent groups.
#[derive(Component, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(pub u8);

/// Everything a token is made of.
#[derive(Bundle, Clone, Copy, Debug)]
pub struct TokenBundle {
    /// Stable id.
    pub id: TokenId,
    /// Position in the 8D space (length units of the field radius).
    pub position: Position,
    /// Velocity, length units per unit of simulated time.
    pub velocity: Velocity,
    /// Charge in `[-1, 1]`: like charges attract below the target density.
    pub charge: Charge,
    /// Mass (> 0): divides the force in the integrator.
    pub mass: Mass,
    /// Field radius (the pair cutoff) and strength.
    pub field: Field,
    /// User token, hub or group.
    pub kind: TokenKind,
    /// Hierarchy level.
    pub level: Level,
}

/// The user-facing description of a token to spawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenSpec {
    /// Initial position.
    pub position: Vec8,
    /// Initial velocity.
    #[serde(default)]
    pub velocity: Vec8,
    /// Charge in `[-1, 1]` (CDNA may narrow it).
    pub charge: f32,
    /// Mass (CDNA range).
    pub mass: f32,
    /// Field radius (CDNA range).
    pub radius: f32,
    /// Field strength (CDNA range).
    pub strength: f32,
    /// User token (the default), hub or group.
    #[serde(default)]
    pub kind: TokenKind,
}

impl TokenSpec {
    /// A token at rest at `position` with charge 1, mass 1, radius 1 and strength 1.
    pub fn at(position: Vec8) -> Self {
        Self {
            position,
            velocity: Vec8::ZERO,
            charge: 1.0,
            mass: 1.0,
            radius: 1.0,
            strength: 1.0,
            kind: TokenKind::Concept,
        }
    }

    /// The same token with another charge.
    pub fn with_charge(mut self, charge: f32) -> Self {
        self.charge = charge;
        self
    }

    /// The same token with another mass.
    pub fn with_mass(mut self, mass: f32) -> Self {
        self.mass = mass;
        self
    }

    /// The same token with another field radius.
    pub fn with_radius(mut self, radius: f32) -> Self {
        self.radius = radius;
        self
    }

    /// The same token with another field strength.
    pub fn with_strength(mut self, strength: f32) -> Self {
        self.strength = strength;
        self
    }

    /// The same token with another velocity.
    pub fn with_velocity(mut self, velocity: Vec8) -> Self {
        self.velocity = velocity;
        self
    }

    /// The ECS bundle for this spec under `id`, at level 0.
    pub fn bundle(&self, id: TokenId) -> TokenBundle {
        TokenBundle {
            id,
            position: Position(self.position),
            velocity: Velocity(self.velocity),
            charge: Charge(self.charge),
            mass: Mass(self.mass),
            field: Field {
                radius: self.radius,
                strength: self.strength,
            },
            kind: self.kind,
            level: Level(0),
        }
    }
}

/// What a link means. Physics treats all kinds alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// Semantic association (the default).
    #[default]
    Semantic,
    /// Cause and effect.
    Causal,
    /// Part of / member of.
    Hierarchical,
    /// Learned co-activation.
    Associative,
}

/// A link between two tokens: a spring `F = k_link · weight · (r − rest_length)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Weight `w` (CDNA range).
    pub weight: f32,
    /// Rigidity (CDNA range): how strongly the link resists learning-driven decay.
    pub rigidity: f32,
    /// Rest length `L >= 0`.
    pub rest_length: f32,
    /// Explicit (made by a command) or associative (formed by learning).
    #[serde(default)]
    pub kind: LinkKind,
}

impl LinkSpec {
    /// A semantic link of the given weight and rest length, rigidity 0.5.
    pub fn new(weight: f32, rest_length: f32) -> Self {
        Self {
            weight,
            rigidity: 0.5,
            rest_length,
            kind: LinkKind::Semantic,
        }
    }
}
