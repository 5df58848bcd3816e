//! The command API: every change a user makes to the world.
//!
//! Commands are validated against the [`Cdna`] and the [`Quotas`] *before* anything
//! changes, so a refused command leaves the world exactly as it was. They are applied
//! at a tick boundary: queued commands ([`CommandQueue`]) are drained by the `Ingest`
//! stage, and [`Simulation::apply`](crate::sim::Simulation::apply) applies one
//! directly between ticks through the same [`apply_command`].

use crate::model::cdna::{Cdna, CdnaError, CdnaHistory};
use crate::model::components::*;
use crate::model::config::{MemoryAccount, QuotaError, Quotas, SimConfig};
use crate::model::math::{Axis, Vec8};
use crate::model::registry::{LinkGraph, SpatialDirty, TokenRegistry};
use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

/// A value a [`SimCommand::Set`] can change.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum SetValue {
    /// Teleport to this position (the neighbour lists are rebuilt).
    Position(Vec8),
    /// New velocity.
    Velocity(Vec8),
    /// New charge.
    Charge(f32),
    /// New mass.
    Mass(f32),
    /// New field radius.
    Radius(f32),
    /// New field strength.
    Strength(f32),
    /// New kind.
    Kind(TokenKind),
}

/// Everything a user can ask of the world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SimCommand {
    /// Spawn one token.
    Spawn(TokenSpec),
    /// Spawn many tokens; all or none.
    SpawnBatch(Vec<TokenSpec>),
    /// Despawn a token and its links.
    Despawn(TokenId),
    /// Link two tokens.
    Link {
        /// One end.
        a: TokenId,
        /// The other end.
        b: TokenId,
        /// The link.
        spec: LinkSpec,
    },
    /// Replace an existing link's values.
    SetLink {
        /// One end.
        a: TokenId,
        /// The other end.
        b: TokenId,
        /// The new values.
        spec: LinkSpec,
    },
    /// Remove a link.
    Unlink {
        /// One end.
        a: TokenId,
        /// The other end.
        b: TokenId,
    },
    /// Change one value of a token.
    Set {
        /// The token.
        id: TokenId,
        /// The new value.
        value: SetValue,
    },
    /// Add `impulse / mass` to a token's velocity.
    Impulse {
        /// The token.
        id: TokenId,
        /// The impulse `J` (velocity change is `J / m`).
        impulse: Vec8,
    },
    /// Replace the constitution (validated as a whole; version incremented).
    UpdateCdna(Box<Cdna>),
    /// Go back to the previous constitution.
    RevertCdna,
}

impl SimCommand {
    /// The command's name, as in logs and the black box.
    pub fn name(&self) -> &'static str {
        match self {
            SimCommand::Spawn(_) => "spawn",
            SimCommand::SpawnBatch(_) => "spawn_batch",
            SimCommand::Despawn(_) => "despawn",
            SimCommand::Link { .. } => "link",
            SimCommand::SetLink { .. } => "set_link",
            SimCommand::Unlink { .. } => "unlink",
            SimCommand::Set { .. } => "set",
            SimCommand::Impulse { .. } => "impulse",
            SimCommand::UpdateCdna(_) => "update_cdna",
            SimCommand::RevertCdna => "revert_cdna",
        }
    }
}

/// What an applied command produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Tokens `first .. first + count` were spawned.
    Spawned {
        /// The first new id.
        first: TokenId,
        /// How many.
        count: u64,
    },
    /// Links removed along with a despawned token.
    Despawned {
        /// Links removed with it.
        links_removed: u64,
    },
    /// The CDNA now has this version.
    CdnaVersion(u32),
    /// Done, nothing to report.
    Done,
}

/// Why a command was refused. The world is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A value is NaN, infinite or out of its CDNA range.
    #[error("{field} = {value}: {limit}")]
    InvalidValue {
        /// What the value is, e.g. `charge` or `position[3] (emotional)`.
        field: String,
        /// The value given.
        value: String,
        /// The limit.
        limit: String,
    },
    /// One token of a batch was refused; none was spawned.
    #[error("batch item {index}: {source}")]
    BatchItem {
        /// Index in the batch.
        index: usize,
        /// Why.
        source: Box<CommandError>,
    },
    /// No live token has this id.
    #[error("unknown token {0}")]
    UnknownToken(TokenId),
    /// A link from a token to itself.
    #[error("cannot link token {0} to itself")]
    SelfLink(TokenId),
    /// The link exists already.
    #[error("tokens {0} and {1} are already linked (use SetLink to change it)")]
    AlreadyLinked(TokenId, TokenId),
    /// There is no such link.
    #[error("tokens {0} and {1} are not linked")]
    NotLinked(TokenId, TokenId),
    /// A token would have more links than CDNA allows.
    #[error("token {token} has {degree} links: graph.max_degree = {limit}")]
    DegreeLimit {
        /// The token.
        token: TokenId,
        /// Its current degree.
        degree: usize,
        /// The limit.
        limit: u32,
    },
    /// A quota would be exceeded.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The new CDNA is invalid.
    #[error(transparent)]
    Cdna(#[from] CdnaError),
    /// `RevertCdna` with no earlier version.
    #[error("no earlier CDNA version to revert to")]
    NoCdnaHistory,
}

/// Commands waiting for the next `Ingest`.
#[derive(Resource, Debug, Default)]
pub struct CommandQueue {
    pending: Vec<SimCommand>,
}

impl CommandQueue {
    /// Queues a command for the next tick.
    pub fn push(&mut self, cmd: SimCommand) {
        self.pending.push(cmd);
    }

    /// Number of queued commands.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes every queued command, in order.
    pub fn drain(&mut self) -> Vec<SimCommand> {
        std::mem::take(&mut self.pending)
    }
}

/// The outcome of the commands of the last `Ingest`, and (when `record` is on) the
/// applied commands themselves, for the journal.
#[derive(Resource, Debug, Default)]
pub struct CommandLog {
    /// Keep applied commands in `applied` (the WAL turns this on and drains them
    /// every tick; nothing else clears them).
    pub record: bool,
    /// Commands applied since the journal last took them.
    pub applied: Vec<SimCommand>,
    /// Commands refused in the last `Ingest`, with the reason.
    pub rejected: Vec<(SimCommand, String)>,
    /// Commands applied since the start.
    pub applied_total: u64,
    /// Commands refused since the start.
    pub rejected_total: u64,
    /// Refusals caused by a quota, since the start.
    pub quota_rejections: u64,
}

fn invalid(
    field: impl Into<String>,
    value: impl ToString,
    limit: impl Into<String>,
) -> CommandError {
    CommandError::InvalidValue {
        field: field.into(),
        value: value.to_string(),
        limit: limit.into(),
    }
}

fn check_range(field: &str, v: f32, min: f32, max: f32) -> Result<(), CommandError> {
    if v.is_finite() && v >= min && v <= max {
        Ok(())
    } else {
        Err(invalid(
            field,
            v,
            format!("must be a finite number in [{min}, {max}] (CDNA)"),
        ))
    }
}

fn check_position(field: &str, p: Vec8, cdna: &Cdna) -> Result<(), CommandError> {
    for axis in Axis::ALL {
        let k = axis.index();
        let (lo, hi) = (cdna.dimensions.min[k], cdna.dimensions.max[k]);
        let v = p[k];
        if !(v.is_finite() && v >= lo && v <= hi) {
            return Err(invalid(
                format!("{field}[{k}] ({})", axis.name()),
                v,
                format!("must be a finite number in [{lo}, {hi}] (CDNA dimensions)"),
            ));
        }
    }
    Ok(())
}

fn check_velocity(field: &str, v: Vec8, cdna: &Cdna) -> Result<(), CommandError> {
    if !v.is_finite() {
        return Err(invalid(
            field,
            format!("{:?}", v.to_array()),
            "must be finite",
        ));
    }
    let speed = v.length();
    if speed > cdna.physics.max_speed {
        return Err(invalid(
            format!("|{field}|"),
            speed,
            format!(
                "must not exceed physics.max_speed = {}",
                cdna.physics.max_speed
            ),
        ));
    }
    Ok(())
}

/// The CDNA limits of a token, gathered once so that a batch is checked with a few
/// SIMD comparisons per token; a failing token is re-checked by [`validate_token`]
/// for the detailed error.
struct TokenBounds {
    lo: Vec8,
    hi: Vec8,
    max_speed: f32,
    scalar_lo: glam::Vec4,
    scalar_hi: glam::Vec4,
}

impl TokenBounds {
    fn new(cdna: &Cdna) -> Self {
        let f = &cdna.field;
        Self {
            lo: cdna.min_bounds(),
            hi: cdna.max_bounds(),
            max_speed: cdna.physics.max_speed,
            scalar_lo: glam::Vec4::new(
                f.min_charge,
                cdna.tokens.min_mass,
                f.min_radius,
                f.min_strength,
            ),
            scalar_hi: glam::Vec4::new(
                f.max_charge,
                cdna.tokens.max_mass,
                f.max_radius,
                f.max_strength,
            ),
        }
    }

    /// The same verdict as [`validate_token`], without the error.
    #[inline]
    fn admits(&self, s: &TokenSpec) -> bool {
        let scalars = glam::Vec4::new(s.charge, s.mass, s.radius, s.strength);
        s.position.is_finite()
            && s.position.clamp(self.lo, self.hi) == s.position
            && s.velocity.is_finite()
            && s.velocity.length() <= self.max_speed
            && scalars.is_finite()
            && scalars.cmpge(self.scalar_lo).all()
            && scalars.cmple(self.scalar_hi).all()
    }
}

/// Checks a batch of token descriptions against the CDNA.
///
/// # Errors
/// [`CommandError::BatchItem`], naming the first bad item and wrapping the error
/// [`validate_token`] gives for it.
pub fn validate_tokens(specs: &[TokenSpec], cdna: &Cdna) -> Result<(), CommandError> {
    let bounds = TokenBounds::new(cdna);
    for (index, spec) in specs.iter().enumerate() {
        if !bounds.admits(spec) {
            validate_token(spec, cdna).map_err(|e| CommandError::BatchItem {
                index,
                source: Box::new(e),
            })?;
        }
    }
    Ok(())
}

/// Checks a token description against the CDNA.
///
/// # Errors
/// [`CommandError::InvalidValue`] for the first value that is NaN or infinite or out of
/// its CDNA range: a position outside the dimensions, a speed over `physics.max_speed`,
/// or a charge, mass, radius or strength outside its limits.
pub fn validate_token(spec: &TokenSpec, cdna: &Cdna) -> Result<(), CommandError> {
    check_position("position", spec.position, cdna)?;
    check_velocity("velocity", spec.velocity, cdna)?;
    let f = &cdna.field;
    check_range("charge", spec.charge, f.min_charge, f.max_charge)?;
    check_range(
        "mass",
        spec.mass,
        cdna.tokens.min_mass,
        cdna.tokens.max_mass,
    )?;
    check_range("radius", spec.radius, f.min_radius, f.max_radius)?;
    check_range("strength", spec.strength, f.min_strength, f.max_strength)?;
    Ok(())
}

/// Checks a link description against the CDNA.
///
/// # Errors
/// [`CommandError::InvalidValue`] when the weight, rigidity or rest length is not
/// finite or lies outside its CDNA range.
pub fn validate_link(spec: &LinkSpec, cdna: &Cdna) -> Result<(), CommandError> {
    let g = &cdna.graph;
    check_range("link.weight", spec.weight, g.min_weight, g.max_weight)?;
    check_range(
        "link.rigidity",
        spec.rigidity,
        g.min_rigidity,
        g.max_rigidity,
    )?;
    check_range("link.rest_length", spec.rest_length, 0.0, g.max_rest_length)?;
    Ok(())
}

fn entity_of(world: &World, id: TokenId) -> Result<Entity, CommandError> {
    world
        .resource::<TokenRegistry>()
        .get(id)
        .ok_or(CommandError::UnknownToken(id))
}

/// Whether a command is decided now or was decided when it was journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    /// A live command: every check, the memory quota against the measured
    /// structures ([`MemoryAccount`]).
    Live,
    /// A journaled command being replayed: it was admitted once, against the
    /// live world's measurements; a replayed world has another allocation
    /// history (a snapshot restores into fresh, tight structures), so quotas
    /// are not decided again. Values, ids and links are still checked: they
    /// depend on the state alone, which replay reproduces.
    Recorded,
}

fn check_quota(
    world: &World,
    add_tokens: u64,
    add_links: u64,
    admission: Admission,
) -> Result<(), CommandError> {
    let next_id = world.resource::<TokenRegistry>().next_id().0;
    if next_id.saturating_add(add_tokens) > TokenRegistry::MAX_IDS {
        return Err(QuotaError::Ids {
            next_id,
            requested: add_tokens,
            limit: TokenRegistry::MAX_IDS,
        }
        .into());
    }
    if admission == Admission::Recorded {
        return Ok(());
    }
    let tokens = world.resource::<TokenRegistry>().len();
    let links = world.resource::<LinkGraph>().len();
    let account = world
        .get_resource::<MemoryAccount>()
        .copied()
        .unwrap_or_default();
    world
        .resource::<Quotas>()
        .check_measured(&account, tokens, links, add_tokens, add_links)?;
    Ok(())
}

fn spawn_all(world: &mut World, specs: &[TokenSpec]) -> CommandOutcome {
    let first = world.resource::<TokenRegistry>().next_id();
    let bundles = specs
        .iter()
        .enumerate()
        .map(|(i, s)| s.bundle(TokenId(first.0 + i as u64)));
    // The entities go straight into the id table as they are spawned (no
    // intermediate list of a whole batch).
    world.resource_scope(|world, mut reg: Mut<TokenRegistry>| {
        reg.reserve(specs.len());
        for e in world.spawn_batch(bundles) {
            reg.push(e);
        }
    });
    CommandOutcome::Spawned {
        first,
        count: specs.len() as u64,
    }
}

/// Validates `cmd` and, if it is valid, applies it to `world`. On error nothing changed.
///
/// # Errors
/// The [`CommandError`] that fits the refusal: a value not finite or out of its CDNA
/// range, an unknown token, a self-link, a link that exists already or does not exist,
/// a degree limit, a quota or id exhaustion ([`CommandError::Quota`]), an invalid new
/// CDNA ([`CommandError::Cdna`]), or no earlier CDNA ([`CommandError::NoCdnaHistory`]).
pub fn apply_command(world: &mut World, cmd: &SimCommand) -> Result<CommandOutcome, CommandError> {
    apply_admitted(world, cmd, Admission::Live)
}

/// [`apply_command`] for a command replayed from the journal: the quotas are
/// not decided again (the live run admitted it against its own measured
/// memory, which a replayed world does not reproduce byte for byte); every
/// other check is made.
///
/// # Errors
/// As [`apply_command`], less [`CommandError::Quota`] for the token, link and
/// memory quotas (id exhaustion is still refused).
pub fn apply_recorded_command(
    world: &mut World,
    cmd: &SimCommand,
) -> Result<CommandOutcome, CommandError> {
    apply_admitted(world, cmd, Admission::Recorded)
}

fn apply_admitted(
    world: &mut World,
    cmd: &SimCommand,
    admission: Admission,
) -> Result<CommandOutcome, CommandError> {
    let result = apply_inner(world, cmd, admission);
    let mut log = world.resource_mut::<CommandLog>();
    match &result {
        Ok(_) => log.applied_total += 1,
        Err(e) => {
            log.rejected_total += 1;
            if matches!(e, CommandError::Quota(_)) {
                log.quota_rejections += 1;
            }
        }
    }
    result
}

fn apply_inner(
    world: &mut World,
    cmd: &SimCommand,
    admission: Admission,
) -> Result<CommandOutcome, CommandError> {
    match cmd {
        SimCommand::Spawn(spec) => {
            validate_token(spec, world.resource::<Cdna>())?;
            check_quota(world, 1, 0, admission)?;
            Ok(spawn_all(world, std::slice::from_ref(spec)))
        }
        SimCommand::SpawnBatch(specs) => {
            validate_tokens(specs, world.resource::<Cdna>())?;
            check_quota(world, specs.len() as u64, 0, admission)?;
            Ok(spawn_all(world, specs))
        }
        SimCommand::Despawn(id) => {
            let e = entity_of(world, *id)?;
            let links_removed = world.resource_mut::<LinkGraph>().remove_token(*id) as u64;
            world.resource_mut::<TokenRegistry>().remove(*id);
            world.despawn(e);
            Ok(CommandOutcome::Despawned { links_removed })
        }
        SimCommand::Link { a, b, spec } => {
            entity_of(world, *a)?;
            entity_of(world, *b)?;
            if a == b {
                return Err(CommandError::SelfLink(*a));
            }
            let cdna = world.resource::<Cdna>();
            validate_link(spec, cdna)?;
            let limit = cdna.graph.max_degree;
            let graph = world.resource::<LinkGraph>();
            if graph.get(*a, *b).is_some() {
                return Err(CommandError::AlreadyLinked(*a, *b));
            }
            for t in [*a, *b] {
                let degree = graph.degree(t);
                if degree >= limit as usize {
                    return Err(CommandError::DegreeLimit {
                        token: t,
                        degree,
                        limit,
                    });
                }
            }
            check_quota(world, 0, 1, admission)?;
            world.resource_mut::<LinkGraph>().insert(*a, *b, *spec);
            Ok(CommandOutcome::Done)
        }
        SimCommand::SetLink { a, b, spec } => {
            validate_link(spec, world.resource::<Cdna>())?;
            let mut graph = world.resource_mut::<LinkGraph>();
            let link = graph
                .get_mut(*a, *b)
                .ok_or(CommandError::NotLinked(*a, *b))?;
            *link = *spec;
            Ok(CommandOutcome::Done)
        }
        SimCommand::Unlink { a, b } => {
            let mut graph = world.resource_mut::<LinkGraph>();
            graph
                .remove(*a, *b)
                .ok_or(CommandError::NotLinked(*a, *b))?;
            Ok(CommandOutcome::Done)
        }
        SimCommand::Set { id, value } => apply_set(world, *id, *value),
        SimCommand::Impulse { id, impulse } => {
            let e = entity_of(world, *id)?;
            if !impulse.is_finite() {
                return Err(invalid(
                    "impulse",
                    format!("{:?}", impulse.to_array()),
                    "must be finite",
                ));
            }
            let mass = world.get::<Mass>(e).map_or(1.0, |m| m.0);
            let mut v = world
                .get_mut::<Velocity>(e)
                .ok_or(CommandError::UnknownToken(*id))?;
            v.0 += *impulse * (1.0 / mass);
            Ok(CommandOutcome::Done)
        }
        SimCommand::UpdateCdna(new) => {
            let dt = world.resource::<SimConfig>().dt;
            new.validate_for(dt)?;
            new.check_reach()?;
            let old = world.resource::<Cdna>().clone();
            let mut next = (**new).clone();
            next.version = old.version + 1;
            let version = next.version;
            world.resource_mut::<CdnaHistory>().push(old);
            world.insert_resource(next);
            Ok(CommandOutcome::CdnaVersion(version))
        }
        SimCommand::RevertCdna => {
            let prev = world
                .resource_mut::<CdnaHistory>()
                .previous
                .pop()
                .ok_or(CommandError::NoCdnaHistory)?;
            let version = prev.version;
            world.insert_resource(prev);
            Ok(CommandOutcome::CdnaVersion(version))
        }
    }
}

fn apply_set(
    world: &mut World,
    id: TokenId,
    value: SetValue,
) -> Result<CommandOutcome, CommandError> {
    let e = entity_of(world, id)?;
    let cdna = world.resource::<Cdna>();
    let f = &cdna.field;
    match value {
        SetValue::Position(p) => check_position("position", p, cdna)?,
        SetValue::Velocity(v) => check_velocity("velocity", v, cdna)?,
        SetValue::Charge(q) => check_range("charge", q, f.min_charge, f.max_charge)?,
        SetValue::Mass(m) => check_range("mass", m, cdna.tokens.min_mass, cdna.tokens.max_mass)?,
        SetValue::Radius(r) => check_range("radius", r, f.min_radius, f.max_radius)?,
        SetValue::Strength(s) => check_range("strength", s, f.min_strength, f.max_strength)?,
        SetValue::Kind(_) => {}
    }
    let mut ent = world.entity_mut(e);
    match value {
        SetValue::Position(p) => {
            if let Some(mut c) = ent.get_mut::<Position>() {
                c.0 = p;
            }
        }
        SetValue::Velocity(v) => {
            if let Some(mut c) = ent.get_mut::<Velocity>() {
                c.0 = v;
            }
        }
        SetValue::Charge(q) => {
            if let Some(mut c) = ent.get_mut::<Charge>() {
                c.0 = q;
            }
        }
        SetValue::Mass(m) => {
            if let Some(mut c) = ent.get_mut::<Mass>() {
                c.0 = m;
            }
        }
        SetValue::Radius(r) => {
            if let Some(mut c) = ent.get_mut::<Field>() {
                c.radius = r;
            }
        }
        SetValue::Strength(s) => {
            if let Some(mut c) = ent.get_mut::<Field>() {
                c.strength = s;
            }
        }
        SetValue::Kind(k) => {
            if let Some(mut c) = ent.get_mut::<TokenKind>() {
                *c = k;
            }
        }
    }
    if matches!(value, SetValue::Position(_) | SetValue::Radius(_)) {
        world.resource_mut::<SpatialDirty>().0 = true;
    }
    Ok(CommandOutcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn batch_fast_check_agrees_with_the_detailed_one() {
        let cdna = Cdna::default();
        let bounds = TokenBounds::new(&cdna);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -0.0,
            0.0,
            1.0,
            -1.0,
            1000.0,
            1000.5,
            0.01,
            0.5,
            10.0,
            1e-3,
            2.0,
        ];
        let (mut good, mut bad) = (0, 0);
        for _ in 0..20_000 {
            // A valid token, then (half the time) one field replaced by a special value.
            let mut fields: Vec<f32> = (0..8).map(|_| rng.random_range(-900.0..900.0)).collect();
            fields.extend((0..8).map(|_| rng.random_range(-0.3f32..0.3)));
            fields.extend([rng.random_range(-1.0..1.0), rng.random_range(0.01..1000.0)]);
            fields.extend([rng.random_range(0.5..10.0), rng.random_range(0.0..1.0)]);
            if rng.random_range(0..2) == 0 {
                let k = rng.random_range(0..fields.len());
                fields[k] = specials[rng.random_range(0..specials.len())];
            }
            let spec = TokenSpec {
                position: Vec8::from_array(std::array::from_fn(|k| fields[k])),
                velocity: Vec8::from_array(std::array::from_fn(|k| fields[8 + k])),
                charge: fields[16],
                mass: fields[17],
                radius: fields[18],
                strength: fields[19],
                kind: TokenKind::Concept,
            };
            let ok = validate_token(&spec, &cdna).is_ok();
            assert_eq!(bounds.admits(&spec), ok, "{spec:?}");
            if ok { good += 1 } else { bad += 1 }
        }
        assert!(
            good > 100 && bad > 100,
            "both verdicts exercised: {good} {bad}"
        );
    }
}
