//! `Integrate`: semi-implicit Euler with damping and a speed limit (DESIGN §4):
//! `v += (s ⊙ F / m)·dt; v *= (1 − γ·dt); |v| ≤ v_max; x += v·dt`, where `s` is the
//! CDNA per-axis mobility.

use super::forces::ForceBuffers;
use crate::model::cdna::Cdna;
use crate::model::components::*;
use crate::model::config::SimConfig;
use crate::model::math::Vec8;
use crate::schedule::{SimSystems, SimTick};
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;

/// Adds [`integrate`] to `Integrate`.
pub struct IntegratePlugin;

impl Plugin for IntegratePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<IntegrateStats>()
            .add_systems(SimTick, integrate.in_set(SimSystems::Integrate));
    }
}

/// Counters of the integrator.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq)]
pub struct IntegrateStats {
    /// Token-steps whose speed was capped at `physics.max_speed`, since the start.
    pub speed_limited: u64,
    /// Largest distance any token moved in the last tick.
    pub max_step: f32,
}

/// The per-tick constants of the integrator.
#[derive(Clone, Copy)]
struct Step {
    scales: Vec8,
    dt: f32,
    keep: f32,
    vmax: f32,
}

#[inline]
fn step(k: Step, f: Vec8, m: f32, v: &mut Vec8, x: &mut Vec8) -> (bool, f32) {
    let Step {
        scales,
        dt,
        keep,
        vmax,
    } = k;
    let mut nv = (*v + f.mul_elem(scales) * (dt / m)) * keep;
    let speed2 = nv.length_squared();
    let limited = speed2 > vmax * vmax;
    if limited {
        nv *= vmax / speed2.sqrt();
    }
    *v = nv;
    *x += nv * dt;
    (limited, nv.length() * dt)
}

/// The integrator. Reads the forces of [`ForceBuffers`] (whichever backend wrote them).
pub fn integrate(
    mut tokens: Query<(&TokenId, &mut Position, &mut Velocity, &Mass)>,
    mut buf: ResMut<ForceBuffers>,
    mut stats: ResMut<IntegrateStats>,
    cdna: Res<Cdna>,
    config: Res<SimConfig>,
) {
    crate::profile_system!("integrate");
    let dt = config.dt;
    let k = Step {
        scales: cdna.scales(),
        dt,
        keep: 1.0 - cdna.physics.damping * dt,
        vmax: cdna.physics.max_speed,
    };
    if let Some(out) = &buf.resident {
        // The device integrated (and constrained) this tick: its positions
        // and velocities become the tokens'.
        for (id, mut x, mut v, _) in tokens.iter_mut() {
            if let Some(slot) = buf.slot_by_id(*id) {
                x.0 = out.positions[slot];
                v.0 = out.velocities[slot];
            }
        }
        stats.speed_limited += out.speed_limited;
        stats.max_step = out.max_step;
        return;
    }
    let mut limited = 0u64;
    let mut max_step = 0.0f32;
    for (id, mut x, mut v, m) in tokens.iter_mut() {
        // By id: this query may visit the tables in another order than the
        // force stage's, and a user system may have moved entities between
        // tables since. A token spawned since has no force yet.
        let Some(slot) = buf.slot_by_id(*id) else {
            continue;
        };
        let (l, s) = step(k, buf.forces[slot], m.0, &mut v.0, &mut x.0);
        limited += l as u64;
        max_step = max_step.max(s);
        if let Some(p) = buf.travel.path.get_mut(slot) {
            *p += s;
        }
    }
    stats.speed_limited += limited;
    stats.max_step = max_step;
}
