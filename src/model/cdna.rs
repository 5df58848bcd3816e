//! CDNA — the constitution every token, link and tick is held to.
//!
//! A [`Cdna`] is a resource made of parameter blocks. It is chosen from a
//! [`Profile`] or loaded from a human-editable TOML file ([`Cdna::load`]), validated
//! as a whole ([`Cdna::validate`]: every error names the field, the value and the
//! limit), and identified by a [`checksum`](Cdna::checksum) of its canonical
//! MessagePack encoding. At run time an update is a command applied atomically at a
//! tick boundary; the previous version is kept in [`CdnaHistory`] and can be restored.
//!
//! The file format (see `examples/cdna.toml`):
//!
//! ```toml
//! checksum = "9f0c…"        # optional; when present it must match the content
//! [cdna]
//! profile = "default"
//! version = 1
//! [cdna.physics]
//! k_field = 1.0
//! …
//! ```

use crate::model::math::{DIM, Vec8};
use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A named set of CDNA defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Balanced defaults.
    Default,
    /// Fast, loosely damped motion, eager learning.
    Explorer,
    /// Slow, heavily damped motion, conservative learning.
    Analyst,
    /// Wide bounds and fields, strong attraction.
    Creative,
    /// Anything else (what an edited file should say).
    Custom,
}

impl Profile {
    /// Every profile, in documentation order.
    pub const ALL: [Profile; 5] = [
        Profile::Default,
        Profile::Explorer,
        Profile::Analyst,
        Profile::Creative,
        Profile::Custom,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Explorer => "explorer",
            Profile::Analyst => "analyst",
            Profile::Creative => "creative",
            Profile::Custom => "custom",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = CdnaError;
    fn from_str(s: &str) -> Result<Self, CdnaError> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| CdnaError::UnknownProfile(s.to_string()))
    }
}

/// Per-axis mobility scales and position bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimensionLimits {
    /// Mobility per axis in `[0, 10]`: the force on axis k is multiplied by `scales[k]`
    /// (0 freezes the axis).
    pub scales: [f32; DIM],
    /// Lower position bound per axis.
    pub min: [f32; DIM],
    /// Upper position bound per axis.
    pub max: [f32; DIM],
}

/// Limits on a token's field and charge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldLimits {
    /// Smallest field radius (> core radius).
    pub min_radius: f32,
    /// Largest field radius.
    pub max_radius: f32,
    /// Smallest field strength (>= 0).
    pub min_strength: f32,
    /// Largest field strength (<= 1).
    pub max_strength: f32,
    /// Smallest charge (>= -1).
    pub min_charge: f32,
    /// Largest charge (<= 1).
    pub max_charge: f32,
}

/// Physical constants of DESIGN §4 (the law is in [`crate::physics`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Physics {
    /// Field coupling `k_field`: attraction of like charges, repulsion of
    /// opposite ones.
    pub k_field: f32,
    /// Density repulsion `k_density` at the target density, in `(0, 1000]` and at
    /// least `k_field / 4`. Fields settle where `ρ/ρ₀ = √(k_field · c /
    /// k_density)` for their mean coupling `c = s_i s_j q_i q_j m_j`: for fully
    /// charged unit-mass tokens, at the target when the two are equal (the
    /// default). Heavier tokens attract harder and settle denser.
    #[serde(default = "defaults::k_density")]
    pub k_density: f32,
    /// The number of neighbours within the field radius a settled field of fully
    /// charged unit-mass tokens has in its bulk, in `[2, 10000]` (sets the target
    /// density `ρ₀`, see [`crate::physics::target_density`]; the calibration
    /// covers 10 to 60, within 8%).
    #[serde(default = "defaults::target_neighbors")]
    pub target_neighbors: f32,
    /// Core repulsion `k_core` (excluded volume at short range).
    pub k_core: f32,
    /// Core radius `σ` (below every field radius).
    pub core_radius: f32,
    /// Link spring constant `k_link`.
    pub k_link: f32,
    /// Velocity damping `γ` per simulated second.
    pub damping: f32,
    /// Speed limit `v_max`.
    pub max_speed: f32,
}

/// Limits on links and learning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphLimits {
    /// Most links one token may have.
    pub max_degree: u32,
    /// Smallest link weight.
    pub min_weight: f32,
    /// Largest link weight.
    pub max_weight: f32,
    /// Smallest rigidity.
    pub min_rigidity: f32,
    /// Largest rigidity.
    pub max_rigidity: f32,
    /// Longest rest length.
    pub max_rest_length: f32,
    /// Link weight decay per tick, in `[0, 1]`.
    pub decay_rate: f32,
    /// Hebbian learning rate per tick, in `[0, 1]`.
    pub learning_rate: f32,
    /// Links whose weight falls below this are pruned by `Learn` (0 = never).
    #[serde(default = "defaults::prune_below")]
    pub prune_below: f32,
    /// `Learn` links two unlinked tokens closer than this (0 = no new links).
    #[serde(default = "defaults::form_within")]
    pub form_within: f32,
    /// The weight of a link that `Learn` forms.
    #[serde(default = "defaults::formed_weight")]
    pub formed_weight: f32,
    /// `Learn` forms links only between tokens with fewer links than this (and
    /// than `max_degree`): learned networks stay sparse, and soft enough for the
    /// integrator (each link adds `k_link · w` of stiffness).
    #[serde(default = "defaults::form_max_degree")]
    pub form_max_degree: u32,
}

/// How the `Organize` stage finds the emergent hierarchy (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HierarchyParams {
    /// Detect groups every this many ticks (0 = never).
    pub organize_every: u32,
    /// Levels above the tokens (0 = none; at most 8).
    pub depth: u8,
    /// Linking length ℓ₁ of level 1 (friends-of-friends over level-0 tokens); 0
    /// (the default) follows the density, see [`HierarchyParams::level1_link_length`].
    pub link_length: f32,
    /// ℓ of level k+1 is ℓ of level k times this (≥ 1).
    pub level_scale: f32,
    /// Fewest tokens in a level-1 group.
    pub min_size: u32,
    /// Fewest children in a group of level 2 and up.
    pub min_children: u32,
    /// After friends-of-friends, a level-0 token left out of every group joins
    /// the group of its nearest grouped token, if closer than this (DBSCAN's
    /// border points): the group's halo (0 = no halos).
    pub attach_within: f32,
    /// Coarse attraction of every grouped token towards its level-1 group's centre:
    /// `F += group_pull · m · (c − x)` (0 = group tokens are passive summaries).
    pub group_pull: f32,
}

impl HierarchyParams {
    /// Friends within ℓ₁ per token of a settled field that the derived linking
    /// length aims for: friends-of-friends holds a group together only above the
    /// continuum percolation threshold, a mean of about 1–2 friends in 8D.
    pub const FRIENDS: f32 = 5.0;

    /// The linking length ℓ₁ of level 1: `link_length` when set, else derived from
    /// the density, `ℓ₁ = R (FRIENDS / target_neighbors)^{1/8}` for the field
    /// radius `R` (the median of the tokens'), so that a field settled at the
    /// target has about [`FRIENDS`](Self::FRIENDS) friends per token by the
    /// uniform-ball estimate (0.8 R at the default 30 neighbours).
    pub fn level1_link_length(&self, target_neighbors: f32, field_radius: f32) -> f32 {
        if self.link_length > 0.0 {
            self.link_length
        } else {
            field_radius * (Self::FRIENDS / target_neighbors).powf(1.0 / DIM as f32)
        }
    }
}

impl Default for HierarchyParams {
    fn default() -> Self {
        Self {
            organize_every: 10,
            depth: 2,
            link_length: 0.0,
            level_scale: 15.0,
            min_size: 5,
            min_children: 2,
            attach_within: 0.9,
            group_pull: 0.5,
        }
    }
}

/// Defaults of fields added after a block's first version (files without them
/// still parse).
mod defaults {
    pub fn k_density() -> f32 {
        1.0
    }
    pub fn target_neighbors() -> f32 {
        30.0
    }
    pub fn prune_below() -> f32 {
        0.05
    }
    pub fn form_within() -> f32 {
        0.5
    }
    pub fn formed_weight() -> f32 {
        0.2
    }
    pub fn form_max_degree() -> u32 {
        16
    }
}

/// Limits on token mass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimits {
    /// Smallest mass (> 0).
    pub min_mass: f32,
    /// Largest mass.
    pub max_mass: f32,
}

/// Rates of slow change and of observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evolution {
    /// How fast the constitution may drift under evolution, in `[0, 1]`.
    pub evolution_rate: f32,
    /// Fraction of ticks traced, in `[0, 1]`.
    pub trace_sample_rate: f32,
}

/// The constitution: every block, a profile and a version.
#[derive(Resource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cdna {
    /// Which profile these values came from.
    pub profile: Profile,
    /// Version, incremented by every applied update.
    pub version: u32,
    /// Per-axis scales and bounds.
    pub dimensions: DimensionLimits,
    /// Field, strength and charge limits.
    pub field: FieldLimits,
    /// Physical constants.
    pub physics: Physics,
    /// Link and learning limits.
    pub graph: GraphLimits,
    /// Token mass limits.
    pub tokens: TokenLimits,
    /// Evolution and trace sampling.
    pub evolution: Evolution,
    /// Group detection (the `Organize` stage).
    #[serde(default)]
    pub hierarchy: HierarchyParams,
}

impl Default for Cdna {
    fn default() -> Self {
        Cdna::profile(Profile::Default)
    }
}

/// One invalid field: its dotted path, the value found and the limit it broke.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Dotted path, e.g. `physics.damping`.
    pub field: String,
    /// The value found.
    pub value: String,
    /// The limit, e.g. `must be in [0, 1000]`.
    pub limit: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.limit)
    }
}

/// Why a CDNA was refused.
#[derive(Debug, thiserror::Error)]
pub enum CdnaError {
    /// One or more fields are out of their limits.
    #[error("invalid CDNA: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The file's checksum does not match its content.
    #[error(
        "CDNA file {path}: checksum mismatch: the file says {expected} but its content hashes to {actual} \
         (remove the checksum line after editing by hand)"
    )]
    ChecksumMismatch {
        /// The file (or where the text came from).
        path: String,
        /// Checksum written in the file.
        expected: String,
        /// Checksum of the content.
        actual: String,
    },
    /// The file could not be read or written.
    #[error("CDNA file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid CDNA TOML.
    #[error("CDNA file {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A profile name nobody knows.
    #[error("unknown CDNA profile '{0}' (known: default, explorer, analyst, creative, custom)")]
    UnknownProfile(String),
    /// The physics would be unstable with the run's time step.
    #[error("CDNA physics.damping = {damping} with dt = {dt}: damping × dt must be at most 1")]
    UnstableDamping {
        /// `physics.damping`, per unit of simulated time.
        damping: f32,
        /// Time step.
        dt: f32,
    },
}

/// The on-disk form: an optional checksum beside the constitution.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CdnaFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
    cdna: Cdna,
}

struct Checker(Vec<FieldError>);

impl Checker {
    fn range(&mut self, field: impl Into<String>, v: f32, min: f32, max: f32) {
        if !v.is_finite() || v < min || v > max {
            self.0.push(FieldError {
                field: field.into(),
                value: v.to_string(),
                limit: format!("must be a finite number in [{min}, {max}]"),
            });
        }
    }

    fn positive(&mut self, field: impl Into<String>, v: f32, max: f32) {
        if !v.is_finite() || v <= 0.0 || v > max {
            self.0.push(FieldError {
                field: field.into(),
                value: v.to_string(),
                limit: format!("must be a finite number in (0, {max}]"),
            });
        }
    }

    fn ordered(&mut self, lo_name: &str, lo: f32, hi_name: &str, hi: f32) {
        if lo.is_finite() && hi.is_finite() && lo > hi {
            self.0.push(FieldError {
                field: lo_name.to_string(),
                value: lo.to_string(),
                limit: format!("must not exceed {hi_name} = {hi}"),
            });
        }
    }
}

impl Cdna {
    /// The values of a profile (`Custom` starts from the defaults).
    pub fn profile(profile: Profile) -> Self {
        let mut c = Cdna {
            profile,
            version: 1,
            dimensions: DimensionLimits {
                scales: [1.0; DIM],
                min: [-1000.0; DIM],
                max: [1000.0; DIM],
            },
            field: FieldLimits {
                min_radius: 0.5,
                max_radius: 10.0,
                min_strength: 0.0,
                max_strength: 1.0,
                min_charge: -1.0,
                max_charge: 1.0,
            },
            physics: Physics {
                k_field: 1.0,
                k_density: defaults::k_density(),
                target_neighbors: defaults::target_neighbors(),
                k_core: 10.0,
                core_radius: 0.4,
                k_link: 0.5,
                damping: 2.0,
                max_speed: 1.0,
            },
            graph: GraphLimits {
                max_degree: 64,
                min_weight: 0.0,
                max_weight: 10.0,
                min_rigidity: 0.0,
                max_rigidity: 1.0,
                max_rest_length: 100.0,
                decay_rate: 0.01,
                learning_rate: 0.05,
                prune_below: defaults::prune_below(),
                form_within: defaults::form_within(),
                formed_weight: defaults::formed_weight(),
                form_max_degree: defaults::form_max_degree(),
            },
            tokens: TokenLimits {
                min_mass: 0.01,
                max_mass: 1000.0,
            },
            evolution: Evolution {
                evolution_rate: 0.01,
                trace_sample_rate: 0.01,
            },
            hierarchy: HierarchyParams::default(),
        };
        match profile {
            Profile::Default | Profile::Custom => {}
            Profile::Explorer => {
                c.physics.damping = 1.0;
                c.physics.max_speed = 2.0;
                c.graph.learning_rate = 0.1;
                c.graph.decay_rate = 0.02;
                c.evolution.evolution_rate = 0.05;
            }
            Profile::Analyst => {
                c.physics.damping = 4.0;
                c.physics.max_speed = 0.5;
                c.graph.learning_rate = 0.02;
                c.graph.decay_rate = 0.005;
                c.graph.max_degree = 32;
                c.evolution.evolution_rate = 0.0;
            }
            Profile::Creative => {
                c.field.max_radius = 20.0;
                c.physics.k_field = 1.5;
                // As strong a density repulsion: the fields are as dense as the
                // default's, held more stiffly.
                c.physics.k_density = 1.5;
                c.graph.max_degree = 128;
                c.evolution.evolution_rate = 0.1;
            }
        }
        c
    }

    /// How far from the origin, in smallest field radii, a position bound may
    /// lie. f32 positions are spaced 2⁻²³·|x| apart, so below 2048 ×
    /// `field.min_radius` a move of 1/8192 of the smallest field radius still
    /// registers; a structure anywhere inside gives the links, groups and
    /// neighbour counts it gives at the origin (tested), while at 10⁵ (with
    /// radius 0.5) moves below 0.008 vanish and the physics changes silently.
    pub const MAX_BOUND_PER_RADIUS: f32 = 2048.0;

    /// Checks every field against its limit; reports all that fail.
    ///
    /// # Errors
    /// [`CdnaError::Invalid`] listing every field outside its limit, with the
    /// value and the limit.
    pub fn validate(&self) -> Result<(), CdnaError> {
        let mut c = Checker(Vec::new());
        self.check_bounds(&mut c);
        self.check_field(&mut c);
        self.check_physics(&mut c);
        self.check_graph(&mut c);
        self.check_hierarchy_and_tokens(&mut c);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(CdnaError::Invalid(c.0))
        }
    }

    /// The per-axis bounds: finite, ordered, within reach of the field.
    fn check_bounds(&self, c: &mut Checker) {
        for (k, axis) in crate::model::math::Axis::ALL.iter().enumerate() {
            let n = axis.name();
            c.range(
                format!("dimensions.scales[{k}] ({n})"),
                self.dimensions.scales[k],
                0.0,
                10.0,
            );
            // Bounds farther out than f32 resolves are refused by
            // `check_reach`, for every CDNA a run starts with.
            for (which, v) in [
                ("min", self.dimensions.min[k]),
                ("max", self.dimensions.max[k]),
            ] {
                c.range(format!("dimensions.{which}[{k}] ({n})"), v, -1e6, 1e6);
            }
            if self.dimensions.min[k] >= self.dimensions.max[k] {
                c.0.push(FieldError {
                    field: format!("dimensions.min[{k}] ({n})"),
                    value: self.dimensions.min[k].to_string(),
                    limit: format!(
                        "must be below dimensions.max[{k}] = {}",
                        self.dimensions.max[k]
                    ),
                });
            }
        }
    }

    /// Field radii, strengths and charges.
    fn check_field(&self, c: &mut Checker) {
        let f = &self.field;
        c.positive("field.min_radius", f.min_radius, 1000.0);
        c.positive("field.max_radius", f.max_radius, 1000.0);
        c.ordered(
            "field.min_radius",
            f.min_radius,
            "field.max_radius",
            f.max_radius,
        );
        c.range("field.min_strength", f.min_strength, 0.0, 1.0);
        c.range("field.max_strength", f.max_strength, 0.0, 1.0);
        c.ordered(
            "field.min_strength",
            f.min_strength,
            "field.max_strength",
            f.max_strength,
        );
        c.range("field.min_charge", f.min_charge, -1.0, 1.0);
        c.range("field.max_charge", f.max_charge, -1.0, 1.0);
        c.ordered(
            "field.min_charge",
            f.min_charge,
            "field.max_charge",
            f.max_charge,
        );
    }

    /// The force law's constants, and their relations to the field.
    fn check_physics(&self, c: &mut Checker) {
        let f = &self.field;
        let p = &self.physics;
        c.range("physics.k_field", p.k_field, 0.0, 1000.0);
        c.positive("physics.k_density", p.k_density, 1000.0);
        if p.k_density.is_finite() && p.k_field.is_finite() && p.k_field > 4.0 * p.k_density {
            // Past this the density of a settled field is more than twice the
            // target's, and the target no longer says what the run will do.
            c.0.push(FieldError {
                field: "physics.k_density".into(),
                value: p.k_density.to_string(),
                limit: format!(
                    "must be at least physics.k_field / 4 = {} (fields of unit charge and mass settle at √(k_field / k_density) × the target density)",
                    p.k_field / 4.0
                ),
            });
        }
        c.range("physics.target_neighbors", p.target_neighbors, 2.0, 10000.0);
        c.range("physics.k_core", p.k_core, 0.0, 10000.0);
        c.positive("physics.core_radius", p.core_radius, 1000.0);
        if p.core_radius.is_finite() && f.min_radius.is_finite() && p.core_radius >= f.min_radius {
            c.0.push(FieldError {
                field: "physics.core_radius".into(),
                value: p.core_radius.to_string(),
                limit: format!("must be below field.min_radius = {}", f.min_radius),
            });
        }
        c.range("physics.k_link", p.k_link, 0.0, 1000.0);
        c.range("physics.damping", p.damping, 0.0, 1000.0);
        c.positive("physics.max_speed", p.max_speed, 10000.0);
    }

    /// Link weights, rigidity, learning and formation.
    fn check_graph(&self, c: &mut Checker) {
        let g = &self.graph;
        if g.max_degree > 65_535 {
            c.0.push(FieldError {
                field: "graph.max_degree".into(),
                value: g.max_degree.to_string(),
                limit: "must be in [0, 65535]".into(),
            });
        }
        c.range("graph.min_weight", g.min_weight, 0.0, 1000.0);
        c.range("graph.max_weight", g.max_weight, 0.0, 1000.0);
        c.ordered(
            "graph.min_weight",
            g.min_weight,
            "graph.max_weight",
            g.max_weight,
        );
        c.range("graph.min_rigidity", g.min_rigidity, 0.0, 1.0);
        c.range("graph.max_rigidity", g.max_rigidity, 0.0, 1.0);
        c.ordered(
            "graph.min_rigidity",
            g.min_rigidity,
            "graph.max_rigidity",
            g.max_rigidity,
        );
        c.range("graph.max_rest_length", g.max_rest_length, 0.0, 1e6);
        c.range("graph.decay_rate", g.decay_rate, 0.0, 1.0);
        c.range("graph.learning_rate", g.learning_rate, 0.0, 1.0);
        c.range("graph.prune_below", g.prune_below, 0.0, g.max_weight);
        c.range("graph.form_within", g.form_within, 0.0, g.max_rest_length);
        c.range(
            "graph.formed_weight",
            g.formed_weight,
            g.min_weight.max(g.prune_below),
            g.max_weight,
        );
    }

    /// Hierarchy detection and token mass limits.
    fn check_hierarchy_and_tokens(&self, c: &mut Checker) {
        let h = &self.hierarchy;
        if h.depth > 8 {
            c.0.push(FieldError {
                field: "hierarchy.depth".into(),
                value: h.depth.to_string(),
                limit: "must be in [0, 8]".into(),
            });
        }
        c.range("hierarchy.link_length", h.link_length, 0.0, 1e6);
        c.range("hierarchy.level_scale", h.level_scale, 1.0, 1e6);
        for (name, v) in [
            ("hierarchy.min_size", h.min_size),
            ("hierarchy.min_children", h.min_children),
        ] {
            if v < 2 {
                c.0.push(FieldError {
                    field: name.into(),
                    value: v.to_string(),
                    limit: "must be at least 2".into(),
                });
            }
        }
        c.range("hierarchy.attach_within", h.attach_within, 0.0, 1e6);
        c.range("hierarchy.group_pull", h.group_pull, 0.0, 1000.0);
        c.positive("tokens.min_mass", self.tokens.min_mass, 1e9);
        c.positive("tokens.max_mass", self.tokens.max_mass, 1e9);
        c.ordered(
            "tokens.min_mass",
            self.tokens.min_mass,
            "tokens.max_mass",
            self.tokens.max_mass,
        );
        c.range(
            "evolution.evolution_rate",
            self.evolution.evolution_rate,
            0.0,
            1.0,
        );
        c.range(
            "evolution.trace_sample_rate",
            self.evolution.trace_sample_rate,
            0.0,
            1.0,
        );
    }

    /// Checks that every position bound lies within ±[`Cdna::MAX_BOUND_PER_RADIUS`]
    /// × `field.min_radius`, where f32 positions still resolve the physics'
    /// moves. Applied to every CDNA a run starts with or switches to (files,
    /// profiles, updates), but not by [`validate`](Self::validate): a WAL
    /// written before this rule, with wider bounds, still recovers.
    ///
    /// # Errors
    /// [`CdnaError::Invalid`] naming each bound too far out, its value and the limit.
    pub fn check_reach(&self) -> Result<(), CdnaError> {
        let reach = Self::MAX_BOUND_PER_RADIUS * self.field.min_radius;
        let mut errors = Vec::new();
        for (k, axis) in crate::model::math::Axis::ALL.iter().enumerate() {
            for (which, v) in [
                ("min", self.dimensions.min[k]),
                ("max", self.dimensions.max[k]),
            ] {
                if reach.is_finite() && v.abs() > reach {
                    errors.push(FieldError {
                        field: format!("dimensions.{which}[{k}] ({})", axis.name()),
                        value: v.to_string(),
                        limit: format!(
                            "must be within ±{reach} ({} × field.min_radius = {}): farther out, f32 positions are too coarse for the physics",
                            Self::MAX_BOUND_PER_RADIUS,
                            self.field.min_radius
                        ),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CdnaError::Invalid(errors))
        }
    }

    /// [`validate`](Self::validate), plus the checks that need the run's time step.
    ///
    /// # Errors
    /// [`CdnaError::Invalid`] when a field is out of its limits;
    /// [`CdnaError::UnstableDamping`] when `physics.damping × dt` exceeds 1.
    pub fn validate_for(&self, dt: f32) -> Result<(), CdnaError> {
        self.validate()?;
        if self.physics.damping * dt > 1.0 {
            return Err(CdnaError::UnstableDamping {
                damping: self.physics.damping,
                dt,
            });
        }
        Ok(())
    }

    /// xxh3-64 of the canonical MessagePack encoding of every field.
    pub fn checksum(&self) -> u64 {
        let bytes = rmp_serde::to_vec(self).expect("CDNA is plain data and always encodes");
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// The checksum as 16 hex digits.
    pub fn checksum_hex(&self) -> String {
        format!("{:016x}", self.checksum())
    }

    /// Lower position bounds as a vector.
    pub fn min_bounds(&self) -> Vec8 {
        Vec8::from_array(self.dimensions.min)
    }

    /// Upper position bounds as a vector.
    pub fn max_bounds(&self) -> Vec8 {
        Vec8::from_array(self.dimensions.max)
    }

    /// Mobility scales as a vector.
    pub fn scales(&self) -> Vec8 {
        Vec8::from_array(self.dimensions.scales)
    }

    /// The TOML text of this CDNA, with its checksum.
    pub fn to_toml(&self) -> String {
        let file = CdnaFile {
            checksum: Some(self.checksum_hex()),
            cdna: self.clone(),
        };
        toml::to_string(&file).expect("CDNA is plain data and always encodes")
    }

    /// Parses TOML text; `origin` names the source in errors. Verifies the checksum
    /// when one is given, then validates.
    ///
    /// # Errors
    /// [`CdnaError::Parse`] when the text is not valid CDNA TOML;
    /// [`CdnaError::ChecksumMismatch`] when a given checksum does not match the content;
    /// [`CdnaError::Invalid`] when a field is out of its limits or a position bound is
    /// too far out ([`check_reach`](Self::check_reach)).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, CdnaError> {
        let file: CdnaFile = toml::from_str(text).map_err(|e| CdnaError::Parse {
            path: origin.to_string(),
            message: crate::model::config::toml_error(text, &e),
        })?;
        if let Some(expected) = file.checksum {
            let actual = file.cdna.checksum_hex();
            if !expected.trim().eq_ignore_ascii_case(&actual) {
                return Err(CdnaError::ChecksumMismatch {
                    path: origin.to_string(),
                    expected,
                    actual,
                });
            }
        }
        file.cdna.validate()?;
        file.cdna.check_reach()?;
        Ok(file.cdna)
    }

    /// Loads and validates a TOML file.
    ///
    /// # Errors
    /// [`CdnaError::Io`] when the file cannot be read (or is not UTF-8); otherwise
    /// whatever [`from_toml`](Self::from_toml) returns for its text.
    pub fn load(path: &Path) -> Result<Self, CdnaError> {
        let text = std::fs::read_to_string(path).map_err(|source| CdnaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Writes the TOML form (with checksum) to `path`.
    ///
    /// # Errors
    /// [`CdnaError::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), CdnaError> {
        std::fs::write(path, self.to_toml()).map_err(|source| CdnaError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Earlier CDNA versions, newest last, for [`SimCommand::RevertCdna`](crate::model::commands::SimCommand::RevertCdna).
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CdnaHistory {
    /// Previous versions, oldest first (at most [`CdnaHistory::LIMIT`]).
    pub previous: Vec<Cdna>,
}

impl CdnaHistory {
    /// How many previous versions are kept.
    pub const LIMIT: usize = 32;

    /// Remembers `old` as the version before the current one.
    pub fn push(&mut self, old: Cdna) {
        if self.previous.len() == Self::LIMIT {
            self.previous.remove(0);
        }
        self.previous.push(old);
    }
}

/// The kinds of CDNA violation that `Constrain` corrects and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum ViolationKind {
    /// A position outside the per-axis bounds (clamped).
    PositionBounds,
    /// A speed above `physics.max_speed` (clamped).
    Speed,
    /// A charge outside the field limits (clamped).
    Charge,
    /// A mass outside the token limits (clamped).
    Mass,
    /// A field radius outside the limits (clamped).
    Radius,
    /// A field strength outside the limits (clamped).
    Strength,
    /// A NaN or infinite position or velocity (velocity zeroed, position clamped or reset).
    NonFinite,
    /// A link weight outside the limits (clamped).
    LinkWeight,
    /// A link rigidity outside the limits (clamped).
    LinkRigidity,
    /// A token above the degree limit (its weakest links removed).
    Degree,
}

impl ViolationKind {
    /// Every kind, in counter order.
    pub const ALL: [ViolationKind; 10] = [
        ViolationKind::PositionBounds,
        ViolationKind::Speed,
        ViolationKind::Charge,
        ViolationKind::Mass,
        ViolationKind::Radius,
        ViolationKind::Strength,
        ViolationKind::NonFinite,
        ViolationKind::LinkWeight,
        ViolationKind::LinkRigidity,
        ViolationKind::Degree,
    ];

    /// Snake-case name, as used in JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::PositionBounds => "position_bounds",
            ViolationKind::Speed => "speed",
            ViolationKind::Charge => "charge",
            ViolationKind::Mass => "mass",
            ViolationKind::Radius => "radius",
            ViolationKind::Strength => "strength",
            ViolationKind::NonFinite => "non_finite",
            ViolationKind::LinkWeight => "link_weight",
            ViolationKind::LinkRigidity => "link_rigidity",
            ViolationKind::Degree => "degree",
        }
    }
}

/// Violation counters by kind: since the start, and in the last tick.
#[derive(Resource, Clone, Debug, Default, PartialEq, Eq)]
pub struct CdnaViolations {
    /// Totals since the simulation started.
    pub total: [u64; ViolationKind::ALL.len()],
    /// Counts of the last tick.
    pub last_tick: [u64; ViolationKind::ALL.len()],
}

impl CdnaViolations {
    /// Total of one kind.
    pub fn get(&self, kind: ViolationKind) -> u64 {
        self.total[kind as usize]
    }

    /// Sum over all kinds.
    pub fn sum(&self) -> u64 {
        self.total.iter().sum()
    }

    /// Adds `n` violations of `kind` to this tick and the total.
    pub fn add(&mut self, kind: ViolationKind, n: u64) {
        self.total[kind as usize] += n;
        self.last_tick[kind as usize] += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_valid_and_distinct() {
        let mut sums = std::collections::HashSet::new();
        for p in Profile::ALL {
            let c = Cdna::profile(p);
            c.validate().unwrap_or_else(|e| panic!("{p:?}: {e}"));
            c.validate_for(0.05).unwrap();
            c.check_reach().unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert!(
                sums.insert(c.checksum()),
                "{p:?} has the same checksum as another profile"
            );
        }
    }

    #[test]
    fn bounds_beyond_f32_reach_are_refused_for_runs_but_not_for_recovery() {
        let mut c = Cdna::default();
        c.dimensions.max[3] = 5000.0;
        c.validate()
            .expect("validate accepts it: old WALs must recover");
        let e = c.check_reach().unwrap_err().to_string();
        assert!(
            e.contains("dimensions.max[3] (emotional) = 5000: must be within ±1024 (2048 × field.min_radius = 0.5)"),
            "{e}"
        );
        // The reach scales with the smallest radius.
        c.field.min_radius = 4.0;
        c.physics.core_radius = 0.4;
        c.check_reach().unwrap();
        let e = Cdna::from_toml(
            &{
                let mut far = Cdna::default();
                far.dimensions.min[0] = -2000.0;
                far.to_toml()
            },
            "far.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dimensions.min[0] (physical) = -2000"), "{e}");
    }

    #[test]
    fn toml_round_trip_is_exact() {
        for p in Profile::ALL {
            let c = Cdna::profile(p);
            let text = c.to_toml();
            let back = Cdna::from_toml(&text, "test").unwrap();
            assert_eq!(back, c);
            assert_eq!(back.checksum(), c.checksum());
        }
    }

    #[test]
    fn errors_name_field_value_and_limit() {
        let mut c = Cdna::default();
        c.physics.damping = -1.0;
        c.field.max_charge = 2.0;
        c.dimensions.scales[3] = f32::NAN;
        let err = c.validate().unwrap_err();
        let CdnaError::Invalid(list) = &err else {
            panic!("{err}")
        };
        assert_eq!(list.len(), 3, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("physics.damping = -1: must be a finite number in [0, 1000]"),
            "{msg}"
        );
        assert!(msg.contains("field.max_charge = 2"), "{msg}");
        assert!(
            msg.contains("dimensions.scales[3] (emotional) = NaN"),
            "{msg}"
        );
    }

    #[test]
    fn the_density_law_fields_are_validated_with_their_limits() {
        let mut c = Cdna::default();
        c.physics.k_field = 2.0;
        c.physics.k_density = 0.4;
        c.physics.target_neighbors = 1.0;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("physics.k_density = 0.4: must be at least physics.k_field / 4 = 0.5"),
            "{msg}"
        );
        assert!(
            msg.contains("physics.target_neighbors = 1: must be a finite number in [2, 10000]"),
            "{msg}"
        );
        c.physics.k_density = 0.0;
        c.physics.target_neighbors = f32::NAN;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("physics.k_density = 0: must be a finite number in (0, 1000]"),
            "{msg}"
        );
        assert!(msg.contains("physics.target_neighbors = NaN"), "{msg}");
        // At the bound it is accepted.
        c.physics.k_density = 0.5;
        c.physics.target_neighbors = 2.0;
        c.validate().unwrap();
    }

    #[test]
    fn files_without_the_density_law_fields_load_with_the_defaults() {
        let text: String = Cdna::default()
            .to_toml()
            .lines()
            .filter(|l| {
                !l.starts_with("checksum")
                    && !l.starts_with("k_density")
                    && !l.starts_with("target_neighbors")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = Cdna::from_toml(&text, "old.toml").unwrap();
        assert_eq!(c, Cdna::default());
    }

    #[test]
    fn the_derived_linking_length_follows_the_target_density() {
        let h = HierarchyParams::default();
        assert_eq!(h.link_length, 0.0);
        // 5 friends out of 30 neighbours: (1/6)^(1/8) field radii.
        let l = h.level1_link_length(30.0, 1.0);
        assert!((l - (1.0f32 / 6.0).powf(0.125)).abs() < 1e-6, "{l}");
        assert!((h.level1_link_length(30.0, 2.0) - 2.0 * l).abs() < 1e-6);
        assert!(h.level1_link_length(60.0, 1.0) < l);
        let fixed = HierarchyParams {
            link_length: 0.6,
            ..h
        };
        assert_eq!(fixed.level1_link_length(30.0, 1.0), 0.6);
    }

    #[test]
    fn core_radius_must_stay_below_field_radius() {
        let mut c = Cdna::default();
        c.physics.core_radius = c.field.min_radius;
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("physics.core_radius") && msg.contains("field.min_radius"),
            "{msg}"
        );
    }

    #[test]
    fn edited_file_with_stale_checksum_is_refused() {
        let text = Cdna::default()
            .to_toml()
            .replace("k_field = 1.0", "k_field = 2.0");
        let err = Cdna::from_toml(&text, "t").unwrap_err();
        assert!(matches!(err, CdnaError::ChecksumMismatch { .. }), "{err}");
        // Without the checksum line the edit is accepted.
        let unsigned: String = text
            .lines()
            .filter(|l| !l.starts_with("checksum"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Cdna::from_toml(&unsigned, "t").unwrap();
        assert_eq!(c.physics.k_field, 2.0);
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_parse_errors() {
        let text = Cdna::default().to_toml().replace("k_field", "k_feild");
        let err = Cdna::from_toml(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("k_feild"), "{err}");
        assert!(Cdna::from_toml("[cdna", "y").is_err());
    }

    #[test]
    fn damping_times_dt_bounded() {
        let mut c = Cdna::default();
        c.physics.damping = 30.0;
        assert!(matches!(
            c.validate_for(0.05),
            Err(CdnaError::UnstableDamping { .. })
        ));
    }
}
