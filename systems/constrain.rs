//! `Constrain`: enforce the CDNA on every token and link, every tick, and count each
//! correction by [`ViolationKind`].

use crate::model::cdna::{Cdna, CdnaViolations, ViolationKind};
use crate::model::components::*;
use crate::model::math::Vec8;
use crate::model::registry::{LinkGraph, SpatialDirty};
use crate::schedule::{SimSystems, SimTick};
use crate::systems::ForceBuffers;
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;

/// Adds [`constrain_tokens`] then [`constrain_links`] to `Constrain`.
pub struct ConstrainPlugin;

impl Plugin for ConstrainPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<CdnaViolations>().add_systems(
            SimTick,
            (constrain_tokens, constrain_links)
                .chain()
                .in_set(SimSystems::Constrain),
        );
    }
}

fn clamp_scalar(v: &mut f32, lo: f32, hi: f32) -> bool {
    if *v >= lo && *v <= hi {
        false
    } else {
        *v = if v.is_nan() { lo } else { v.clamp(lo, hi) };
        true
    }
}

/// Clamps positions to the per-axis bounds (stopping outward motion), speeds to
/// `max_speed`, and charge, mass, radius and strength to their ranges; replaces
/// non-finite positions and velocities.
pub fn constrain_tokens(
    mut tokens: Query<(
        &mut Position,
        &mut Velocity,
        &mut Charge,
        &mut Mass,
        &mut Field,
    )>,
    mut violations: ResMut<CdnaViolations>,
    mut dirty: ResMut<SpatialDirty>,
    cdna: Res<Cdna>,
    buf: Option<Res<ForceBuffers>>,
) {
    crate::profile_system!("constrain_tokens");
    violations.last_tick = Default::default();
    let (lo, hi) = (cdna.min_bounds(), cdna.max_bounds());
    let vmax = cdna.physics.max_speed;
    let f = &cdna.field;
    let mut counts = [0u64; ViolationKind::ALL.len()];
    // A resident GPU tick applied the position and velocity rules on the
    // device (below they then find nothing to correct): count its corrections.
    if let Some(out) = buf.as_ref().and_then(|b| b.resident.as_ref()) {
        counts[ViolationKind::NonFinite as usize] += out.non_finite;
        counts[ViolationKind::PositionBounds as usize] += out.bounds;
        counts[ViolationKind::Speed as usize] += out.speed;
    }
    let mut moved = false;
    for (mut x, mut v, mut q, mut m, mut field) in tokens.iter_mut() {
        if !x.0.is_finite() || !v.0.is_finite() {
            counts[ViolationKind::NonFinite as usize] += 1;
            let mut p = x.0.to_array();
            for (k, c) in p.iter_mut().enumerate() {
                if !c.is_finite() {
                    *c = 0.0f32.clamp(lo[k], hi[k]);
                }
            }
            x.0 = Vec8::from_array(p);
            v.0 = Vec8::ZERO;
            moved = true;
        }
        let p = x.0;
        if p.clamp(lo, hi) != p {
            counts[ViolationKind::PositionBounds as usize] += 1;
            let clamped = p.clamp(lo, hi);
            // Stop the motion that pushed the token out, axis by axis.
            let mut vel = v.0.to_array();
            for (k, vk) in vel.iter_mut().enumerate() {
                if clamped[k] != p[k] {
                    *vk = 0.0;
                }
            }
            v.0 = Vec8::from_array(vel);
            x.0 = clamped;
        }
        let speed2 = v.0.length_squared();
        if speed2 > vmax * vmax * (1.0 + 1e-5) {
            counts[ViolationKind::Speed as usize] += 1;
            v.0 *= vmax / speed2.sqrt();
        }
        if !(q.0 >= f.min_charge && q.0 <= f.max_charge) {
            counts[ViolationKind::Charge as usize] +=
                clamp_scalar(&mut q.0, f.min_charge, f.max_charge) as u64;
        }
        if !(m.0 >= cdna.tokens.min_mass && m.0 <= cdna.tokens.max_mass) {
            counts[ViolationKind::Mass as usize] +=
                clamp_scalar(&mut m.0, cdna.tokens.min_mass, cdna.tokens.max_mass) as u64;
        }
        if !(field.radius >= f.min_radius && field.radius <= f.max_radius) {
            counts[ViolationKind::Radius as usize] +=
                clamp_scalar(&mut field.radius, f.min_radius, f.max_radius) as u64;
            moved = true;
        }
        if !(field.strength >= f.min_strength && field.strength <= f.max_strength) {
            counts[ViolationKind::Strength as usize] +=
                clamp_scalar(&mut field.strength, f.min_strength, f.max_strength) as u64;
        }
    }
    for kind in ViolationKind::ALL {
        let n = counts[kind as usize];
        if n > 0 {
            violations.add(kind, n);
        }
    }
    if moved {
        dirty.0 = true;
    }
}

/// Clamps link weights and rigidities to their ranges and, where a token has more
/// links than `graph.max_degree` (after a CDNA update lowered it), removes its
/// weakest links (lowest weight, then highest partner id).
pub fn constrain_links(
    mut graph: ResMut<LinkGraph>,
    mut violations: ResMut<CdnaViolations>,
    cdna: Res<Cdna>,
) {
    crate::profile_system!("constrain_links");
    let g = &cdna.graph;
    let within = |v: f32, lo: f32, hi: f32| v >= lo && v <= hi;
    let bad = graph.iter().any(|(_, l)| {
        !within(l.weight, g.min_weight, g.max_weight)
            || !within(l.rigidity, g.min_rigidity, g.max_rigidity)
    });
    if bad {
        let (mut w, mut r) = (0, 0);
        for (_, l) in graph.bypass_change_detection().iter_mut() {
            w += clamp_scalar(&mut l.weight, g.min_weight, g.max_weight) as u64;
            r += clamp_scalar(&mut l.rigidity, g.min_rigidity, g.max_rigidity) as u64;
        }
        violations.add(ViolationKind::LinkWeight, w);
        violations.add(ViolationKind::LinkRigidity, r);
    }
    let max = g.max_degree as usize;
    if graph.max_degree() <= max {
        return;
    }
    let mut over: Vec<TokenId> = graph
        .iter()
        .flat_map(|(&(a, b), _)| [a, b])
        .filter(|&t| graph.degree(t) > max)
        .collect();
    if over.is_empty() {
        return;
    }
    over.sort_unstable();
    over.dedup();
    for t in over {
        let mut links: Vec<(f32, TokenId)> = graph
            .neighbors(t)
            .iter()
            .map(|&o| (graph.get(t, o).map_or(0.0, |l| l.weight), o))
            .collect();
        if links.len() <= max {
            continue;
        }
        links.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let excess = links.len() - max;
        for &(_, o) in links.iter().take(excess) {
            graph.remove(t, o);
        }
        violations.add(ViolationKind::Degree, excess as u64);
    }
}
