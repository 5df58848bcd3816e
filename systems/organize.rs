//! `Organize`: every `hierarchy.organize_every` ticks, find the emergent hierarchy
//! (DESIGN §5) and mirror it in the ECS.
//!
//! Level 1 is friends-of-friends over the level-0 tokens with the linking length
//! ℓ₁ = `hierarchy.link_length`; a component of at least `min_size` tokens is a
//! group. Level k+1 repeats this on the centres of the level-k groups with
//! ℓ₍ₖ₊₁₎ = ℓₖ · `level_scale` and `min_children`. Each group is matched to the
//! previous detection of its level ([`match_groups`]) so that it keeps its
//! [`GroupId`] and its entity while most of its members stay.
//!
//! In the ECS a group is an entity with [`GroupId`], [`Position`] (centre of mass),
//! [`Mass`] (sum), [`Charge`] (mass-weighted mean), [`Field`] (radius: the
//! group's extent), [`Level`] and [`TokenKind::Group`]; its members carry
//! `ChildOf(group)`. Group entities have no [`TokenId`] and no [`Velocity`], so the
//! force, integration and constraint stages never see them; with
//! `hierarchy.group_pull > 0` they act as coarse attractors on their members
//! ([`group_pull`]).

use crate::cdna::Cdna;
use crate::components::*;
use crate::hierarchy::{Candidates, Group, GroupId, Hierarchy, friends_of_friends, match_groups};
use crate::math::Vec8;
use crate::plugin::{ComputePool, SimSystems, SimTick};
use crate::registry::{SimClock, TokenRegistry};
use crate::spatial::KdTree;
use crate::systems::forces::{ForceBuffers, cpu_forces};
use bevy_app::{App, Plugin};
use bevy_ecs::prelude::*;
use rayon::prelude::*;
use std::collections::HashMap;

/// Adds [`organize`] to `Organize` and [`group_pull`] to `Forces`.
pub struct OrganizePlugin;

impl Plugin for OrganizePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<Hierarchy>()
            .init_resource::<GroupEntities>()
            .init_resource::<OrganizeStats>()
            .add_systems(SimTick, organize.in_set(SimSystems::Organize))
            .add_systems(
                SimTick,
                group_pull.in_set(SimSystems::Forces).after(cpu_forces),
            );
    }
}

/// The entity of each group (rebuilt from [`Hierarchy`] on restore).
#[derive(Resource, Clone, Debug, Default)]
pub struct GroupEntities(pub HashMap<GroupId, Entity>);

/// Counters of the last detection.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq)]
pub struct OrganizeStats {
    /// Detections since the start of this process.
    pub runs: u64,
    /// Whether the last detection used the force stage's neighbour lists (else a
    /// k-d tree built for it).
    pub used_lists: bool,
    /// Parent changes (`ChildOf` inserted or removed) in the last detection.
    pub reparented: u64,
}

/// Level-0 tokens gathered for a detection.
struct Gathered {
    ids: Vec<TokenId>,
    points: Vec<Vec8>,
    mass: Vec<f32>,
    charge: Vec<f32>,
    /// Whether the arrays are in the slot order of [`ForceBuffers`], whose lists
    /// hold every pair within the linking length.
    lists_ok: bool,
}

fn gather(world: &mut World, link: f32) -> Gathered {
    puffin::profile_function!();
    let mut q = world.query::<(&TokenId, &Position, &Mass, &Charge)>();
    let n = q.iter(world).len();
    let buf = world.resource::<ForceBuffers>();
    let mut g = Gathered {
        ids: Vec::new(),
        points: vec![Vec8::ZERO; n],
        mass: vec![0.0; n],
        charge: vec![0.0; n],
        lists_ok: false,
    };
    let mut slotted = buf.ids.len() == n && buf.slot.len() == n && buf.neighbors.len() == n;
    if slotted {
        for (k, (id, x, m, q)) in q.iter(world).enumerate() {
            let s = buf.slot[k] as usize;
            if buf.ids[s] != *id {
                slotted = false;
                break;
            }
            g.points[s] = x.0;
            g.mass[s] = m.0;
            g.charge[s] = q.0;
        }
    }
    if slotted {
        g.ids = buf.ids.clone();
        g.lists_ok = buf.lists_cover(link);
    } else {
        g.ids.clear();
        for (k, (id, x, m, q)) in q.iter(world).enumerate() {
            g.ids.push(*id);
            g.points[k] = x.0;
            g.mass[k] = m.0;
            g.charge[k] = q.0;
        }
    }
    g
}

/// A freshly detected group before matching.
struct Fresh {
    members: Vec<u64>,
    size: u64,
    centre: Vec8,
    mass: f32,
    charge: f32,
    radius: f32,
}

/// Mass-weighted aggregate of `(position, mass, charge, extent)` items, summed in
/// the given order.
fn aggregate(items: impl Iterator<Item = (Vec8, f32, f32, f32)> + Clone) -> (Vec8, f32, f32, f32) {
    let (mut c, mut m, mut q) = ([0f64; 8], 0f64, 0f64);
    for (x, mi, qi, _) in items.clone() {
        for (ck, xk) in c.iter_mut().zip(x.to_array()) {
            *ck += mi as f64 * xk as f64;
        }
        m += mi as f64;
        q += mi as f64 * qi as f64;
    }
    let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
    let centre = Vec8::from_array(c.map(|v| (v * inv) as f32));
    let radius = items
        .map(|(x, _, _, r)| (x - centre).length() + r)
        .fold(0.0f32, f32::max);
    (centre, m as f32, (q * inv) as f32, radius)
}

/// Adds each point in no component to the component whose edge is nearest, if
/// closer than `within`: edge distance = |x − centre| − radius, with the centre
/// of mass and radius of the component's core. Deterministic (each point decides
/// alone, ties go to the earlier component).
fn attach_halos(points: &[Vec8], mass: &[f32], comps: &mut [Vec<u32>], within: f32) {
    puffin::profile_function!();
    if comps.is_empty() {
        return;
    }
    let cores: Vec<(Vec8, f32)> = comps
        .par_iter()
        .map(|c| {
            let (centre, _, _, radius) = aggregate(c.iter().map(|&s| {
                let s = s as usize;
                (points[s], mass[s], 0.0, 0.0)
            }));
            (centre, radius)
        })
        .collect();
    let centres: Vec<Vec8> = cores.iter().map(|c| c.0).collect();
    let reach = cores.iter().map(|c| c.1).fold(0.0f32, f32::max) + within;
    let tree = KdTree::build(&centres);
    let mut grouped = vec![false; points.len()];
    for c in comps.iter() {
        for &s in c {
            grouped[s as usize] = true;
        }
    }
    let choice: Vec<(u32, u32)> = (0..points.len() as u32)
        .into_par_iter()
        .filter(|&s| !grouped[s as usize])
        .filter_map(|s| {
            let x = points[s as usize];
            let mut best: Option<(f32, u32)> = None;
            tree.for_each_within(&centres, x, reach * reach, |k, d2| {
                let edge = d2.sqrt() - cores[k as usize].1;
                if edge < within && best.is_none_or(|b| (edge, k) < b) {
                    best = Some((edge, k));
                }
            });
            best.map(|(_, k)| (k, s))
        })
        .collect();
    for (k, s) in choice {
        comps[k as usize].push(s);
    }
}

/// Detects the hierarchy now (whatever the tick) and mirrors it in the ECS.
pub fn organize_now(world: &mut World) {
    puffin::profile_function!();
    let params = world.resource::<Cdna>().hierarchy.clone();
    let tick = world.resource::<SimClock>().tick;
    let pool = world.resource::<ComputePool>().0.clone();
    let g = gather(world, params.link_length);
    let mut previous = std::mem::take(&mut *world.resource_mut::<Hierarchy>());
    let mut next = Hierarchy {
        levels: Vec::new(),
        next_group: previous.next_group,
        last_organized: Some(tick),
        events: previous.events,
    };
    let used_lists = g.lists_ok;
    pool.install(|| {
        let mut link = params.link_length;
        for level in 1..=params.depth {
            let fresh: Vec<Fresh> = if level == 1 {
                let lists = world.resource::<ForceBuffers>();
                let cands = if g.lists_ok {
                    Candidates::Lists(&lists.neighbors)
                } else {
                    Candidates::Tree
                };
                let mut comps =
                    friends_of_friends(&g.points, link, params.min_size as usize, cands);
                if params.attach_within > 0.0 {
                    attach_halos(&g.points, &g.mass, &mut comps, params.attach_within);
                }
                comps
                    .into_par_iter()
                    .map(|mut comp| {
                        comp.sort_unstable_by_key(|&s| g.ids[s as usize]);
                        let (centre, mass, charge, radius) = aggregate(comp.iter().map(|&s| {
                            let s = s as usize;
                            (g.points[s], g.mass[s], g.charge[s], 0.0)
                        }));
                        Fresh {
                            members: comp.iter().map(|&s| g.ids[s as usize].0).collect(),
                            size: comp.len() as u64,
                            centre,
                            mass,
                            charge,
                            radius,
                        }
                    })
                    .collect()
            } else {
                let below = &next.levels[level as usize - 2];
                let points: Vec<Vec8> = below.iter().map(|g| g.centre).collect();
                let comps = friends_of_friends(
                    &points,
                    link,
                    params.min_children as usize,
                    Candidates::Tree,
                );
                comps
                    .into_iter()
                    .map(|comp| {
                        let (centre, mass, charge, radius) = aggregate(comp.iter().map(|&k| {
                            let c = &below[k as usize];
                            (c.centre, c.mass, c.charge, c.radius)
                        }));
                        let mut members: Vec<u64> =
                            comp.iter().map(|&k| below[k as usize].id.0).collect();
                        members.sort_unstable();
                        Fresh {
                            members,
                            size: comp.iter().map(|&k| below[k as usize].size).sum(),
                            centre,
                            mass,
                            charge,
                            radius,
                        }
                    })
                    .collect()
            };
            let mut fresh = fresh;
            fresh.sort_unstable_by_key(|f| f.members[0]);
            let before = previous
                .levels
                .get(level as usize - 1)
                .map_or(&[][..], |v| v.as_slice());
            let members: Vec<Vec<u64>> = fresh.iter().map(|f| f.members.clone()).collect();
            let (ids, ev) = match_groups(before, &members);
            next.events.add(&ev);
            let since: HashMap<GroupId, u64> = before.iter().map(|g| (g.id, g.since)).collect();
            let groups: Vec<Group> = fresh
                .into_iter()
                .zip(ids)
                .map(|(f, id)| {
                    let id = id.unwrap_or_else(|| {
                        next.next_group += 1;
                        GroupId(next.next_group - 1)
                    });
                    Group {
                        id,
                        level,
                        members: f.members,
                        size: f.size,
                        centre: f.centre,
                        mass: f.mass,
                        charge: f.charge,
                        radius: f.radius,
                        since: since.get(&id).copied().unwrap_or(tick),
                    }
                })
                .collect();
            let empty = groups.is_empty();
            next.levels.push(groups);
            if empty {
                break;
            }
            link *= params.level_scale;
        }
    });
    while next.levels.last().is_some_and(|l| l.is_empty()) {
        next.levels.pop();
    }
    let reparented = mirror(world, &previous, &next);
    previous.levels.clear();
    world.insert_resource(next);
    let mut stats = world.resource_mut::<OrganizeStats>();
    stats.runs += 1;
    stats.used_lists = used_lists;
    stats.reparented = reparented;
}

/// The `Organize` system: [`organize_now`] on every tick that is a multiple of
/// `hierarchy.organize_every`; with `organize_every = 0` or `depth = 0` it
/// removes any hierarchy left from before.
pub fn organize(world: &mut World) {
    puffin::profile_function!();
    let params = &world.resource::<Cdna>().hierarchy;
    let (every, depth) = (params.organize_every as u64, params.depth);
    if every == 0 || depth == 0 {
        if !world.resource::<Hierarchy>().levels.is_empty() {
            let previous = std::mem::take(&mut *world.resource_mut::<Hierarchy>());
            let next = Hierarchy {
                levels: Vec::new(),
                next_group: previous.next_group,
                last_organized: previous.last_organized,
                events: previous.events,
            };
            mirror(world, &previous, &next);
            world.insert_resource(next);
        }
        return;
    }
    if world.resource::<SimClock>().tick.is_multiple_of(every) {
        organize_now(world);
    }
}

/// Makes the ECS show `next` where it showed `previous`: group entities are kept
/// (and updated) for kept ids, spawned for new ones and despawned for gone ones;
/// `ChildOf` changes only where a parent changed. Returns the parent changes.
pub(crate) fn mirror(world: &mut World, previous: &Hierarchy, next: &Hierarchy) -> u64 {
    puffin::profile_function!();
    let mut entities = std::mem::take(&mut world.resource_mut::<GroupEntities>().0);
    let mut live: HashMap<GroupId, Entity> = HashMap::with_capacity(entities.len());
    for g in next.levels.iter().flatten() {
        let bundle = (
            Position(g.centre),
            Mass(g.mass),
            Charge(g.charge),
            Field {
                radius: g.radius,
                strength: 1.0,
            },
            Level(g.level),
        );
        let e = match entities.remove(&g.id) {
            Some(e) => {
                world.entity_mut(e).insert(bundle);
                e
            }
            None => world.spawn((g.id, TokenKind::Group, bundle)).id(),
        };
        live.insert(g.id, e);
    }
    let mut changes = 0u64;
    let mut inserts: Vec<(Entity, ChildOf)> = Vec::new();
    let mut removals: Vec<Entity> = Vec::new();
    let depth = previous.levels.len().max(next.levels.len());
    for level in 0..depth {
        let parent_map = |h: &Hierarchy| -> HashMap<u64, GroupId> {
            h.levels
                .get(level)
                .into_iter()
                .flatten()
                .flat_map(|g| g.members.iter().map(move |&m| (m, g.id)))
                .collect()
        };
        let (old, new) = (parent_map(previous), parent_map(next));
        let registry = world.resource::<TokenRegistry>();
        let child = |m: u64| -> Option<Entity> {
            if level == 0 {
                registry.get(TokenId(m))
            } else {
                live.get(&GroupId(m)).copied()
            }
        };
        let mut keys: Vec<u64> = new.keys().copied().collect();
        keys.sort_unstable();
        for m in keys {
            let p = new[&m];
            if old.get(&m) != Some(&p)
                && let Some(e) = child(m)
            {
                inserts.push((e, ChildOf(live[&p])));
                changes += 1;
            }
        }
        let mut gone: Vec<u64> = old
            .keys()
            .filter(|m| !new.contains_key(m))
            .copied()
            .collect();
        gone.sort_unstable();
        for m in gone {
            if let Some(e) = child(m) {
                removals.push(e);
                changes += 1;
            }
        }
    }
    world.insert_batch(inserts);
    for e in removals {
        if let Ok(mut em) = world.get_entity_mut(e) {
            em.remove::<ChildOf>();
        }
    }
    for (_, e) in entities.drain() {
        // Detach what is left (nothing, normally) so that despawning the group
        // does not take members with it.
        let children: Vec<Entity> = world
            .get::<Children>(e)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        for c in children {
            world.entity_mut(c).remove::<ChildOf>();
        }
        world.despawn(e);
    }
    world.resource_mut::<GroupEntities>().0 = live;
    changes
}

/// With `hierarchy.group_pull > 0`, pulls every grouped level-0 token towards
/// its level-1 group's centre: `F += group_pull · m · (c − x)`, added to the
/// force of [`ForceBuffers`] after the pair and link forces.
pub fn group_pull(
    tokens: Query<(&TokenId, &Position, &Mass, &ChildOf)>,
    groups: Query<&Position, With<GroupId>>,
    mut buf: ResMut<ForceBuffers>,
    cdna: Res<Cdna>,
) {
    puffin::profile_function!();
    let k = cdna.hierarchy.group_pull;
    if k == 0.0 || tokens.is_empty() {
        return;
    }
    let buf = &mut *buf;
    let top = buf.ids.iter().map(|id| id.0 + 1).max().unwrap_or(0) as usize;
    let mut slot_of = vec![u32::MAX; top];
    for (s, id) in buf.ids.iter().enumerate() {
        slot_of[id.0 as usize] = s as u32;
    }
    for (id, x, m, parent) in tokens.iter() {
        let s = slot_of.get(id.0 as usize).copied().unwrap_or(u32::MAX);
        if let (Ok(c), true) = (groups.get(parent.parent()), s != u32::MAX) {
            buf.forces[s as usize] += (c.0 - x.0) * (k * m.0);
        }
    }
}
