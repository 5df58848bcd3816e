//! `Organize`: every `hierarchy.organize_every` ticks, find the emergent hierarchy
//! (DESIGN §5) and mirror it in the ECS.
//!
//! Level 1 is friends-of-friends over the level-0 tokens with the linking length
//! ℓ₁ of
//! [`HierarchyParams::level1_link_length`](crate::model::cdna::HierarchyParams::level1_link_length)
//! (by default it follows the target density); a component of at least
//! `min_size` tokens is a group. Level k+1 repeats this on the centres of the level-k groups with
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

use crate::geometry::hierarchy::{
    Candidates, Group, GroupId, Hierarchy, friends_of_friends, match_groups,
};
use crate::geometry::spatial::{KdTree, NeighborList};
use crate::model::cdna::Cdna;
use crate::model::components::*;
use crate::model::math::Vec8;
use crate::model::registry::{SpatialDirty, TokenRegistry};
use crate::physics::ForceParams;
use crate::schedule::SimClock;
use crate::schedule::{ComputePool, SimSystems, SimTick};
use crate::systems::forces::{ForceBuffers, forces};
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
            .add_systems(SimTick, group_pull.in_set(SimSystems::Forces).after(forces));
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
    /// Detections whose level-1 pairs came from a k-d tree (the lists did not
    /// cover ℓ₁ or did not match the tokens).
    pub tree_runs: u64,
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
    /// The same for the halo distance.
    halo_lists_ok: bool,
}

fn gather(world: &mut World, link: f32, halo: f32) -> Gathered {
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
        halo_lists_ok: false,
    };
    let mut slotted = buf.ids.len() == n && buf.neighbors.len() == n;
    if slotted {
        for (id, x, m, q) in q.iter(world) {
            let Some(s) = buf.slot_by_id(*id) else {
                slotted = false;
                break;
            };
            g.points[s] = x.0;
            g.mass[s] = m.0;
            g.charge[s] = q.0;
        }
    }
    if slotted {
        g.ids = buf.ids.clone();
        // Constrain may have moved tokens (non-finite resets) since the lists
        // were refreshed; it marks the world dirty then.
        let dirty = world.resource::<SpatialDirty>().0;
        g.lists_ok = !dirty && buf.lists_cover(link);
        g.halo_lists_ok = !dirty && buf.lists_cover(halo);
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

/// The median field radius of the level-0 tokens (1 for none), which a derived
/// linking length is measured in.
fn median_radius(world: &mut World) -> f32 {
    let mut q = world.query_filtered::<&Field, With<TokenId>>();
    let mut radii: Vec<f32> = q.iter(world).map(|f| f.radius).collect();
    if radii.is_empty() {
        return 1.0;
    }
    let mid = radii.len() / 2;
    *radii.select_nth_unstable_by(mid, f32::total_cmp).1
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

/// Adds each point in no component to the component of its nearest component
/// point closer than `within` (DBSCAN's border points): the group's halo. Pairs
/// come from `lists` when they cover `within`, else from a k-d tree. Ties go to
/// the smaller token id; each point decides alone, against the cores only, so the
/// result does not depend on the order or the thread count.
fn attach_halos(
    points: &[Vec8],
    ids: &[TokenId],
    comps: &mut [Vec<u32>],
    within: f32,
    lists: Option<&NeighborList>,
) {
    puffin::profile_function!();
    if comps.is_empty() {
        return;
    }
    let mut comp_of = vec![u32::MAX; points.len()];
    for (k, c) in comps.iter().enumerate() {
        for &s in c {
            comp_of[s as usize] = k as u32;
        }
    }
    let w2 = within * within;
    let tree = lists.is_none().then(|| KdTree::build(points));
    let comp_of = &comp_of;
    let choice: Vec<(u32, u32)> = (0..points.len() as u32)
        .into_par_iter()
        .filter(|&s| comp_of[s as usize] == u32::MAX)
        .filter_map(|s| {
            let x = points[s as usize];
            let mut best: Option<(f32, TokenId, u32)> = None;
            let mut consider = |j: u32| {
                let k = comp_of[j as usize];
                if k == u32::MAX {
                    return;
                }
                let d2 = (points[j as usize] - x).length_squared();
                let key = (d2, ids[j as usize]);
                if d2 < w2 && best.is_none_or(|(bd, bid, _)| key < (bd, bid)) {
                    best = Some((d2, ids[j as usize], k));
                }
            };
            match (&tree, lists) {
                (Some(t), _) => t.for_each_within(points, x, w2, |j, _| consider(j)),
                (None, Some(l)) => l.row(s as usize).iter().for_each(|&j| consider(j)),
                (None, None) => {}
            }
            best.map(|(_, _, k)| (k, s))
        })
        .collect();
    for (k, s) in choice {
        comps[k as usize].push(s);
    }
}

/// Level 1: friends-of-friends over the tokens with linking length `link`
/// (from the force stage's Verlet rows when they cover it), halos attached.
fn level1_groups(
    lists: &ForceBuffers,
    g: &Gathered,
    link: f32,
    params: &crate::model::cdna::HierarchyParams,
) -> Vec<Fresh> {
    let cands = if g.lists_ok {
        Candidates::Lists(&lists.neighbors)
    } else {
        Candidates::Tree
    };
    let mut comps = friends_of_friends(&g.points, link, params.min_size as usize, cands);
    if params.attach_within > 0.0 {
        let halo_lists = g.halo_lists_ok.then_some(&lists.neighbors);
        attach_halos(
            &g.points,
            &g.ids,
            &mut comps,
            params.attach_within,
            halo_lists,
        );
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
}

/// A level above 1: friends-of-friends over the centres of the groups `below`.
fn upper_groups(
    below: &[Group],
    link: f32,
    params: &crate::model::cdna::HierarchyParams,
) -> Vec<Fresh> {
    let points: Vec<Vec8> = below.iter().map(|g| g.centre).collect();
    let comps = friends_of_friends(
        &points,
        link,
        params.min_children as usize,
        Candidates::MergingTree,
    );
    comps
        .into_iter()
        .map(|comp| {
            let (centre, mass, charge, radius) = aggregate(comp.iter().map(|&k| {
                let c = &below[k as usize];
                (c.centre, c.mass, c.charge, c.radius)
            }));
            let mut members: Vec<u64> = comp.iter().map(|&k| below[k as usize].id.0).collect();
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
}

/// Gives the fresh groups of `level` (sorted by first member) their stable
/// ids by matching them with the groups `before` (new ids from
/// `next.next_group`), and counts the identity events in `next`.
fn identify(
    fresh: Vec<Fresh>,
    before: &[Group],
    level: u8,
    tick: u64,
    next: &mut Hierarchy,
) -> Vec<Group> {
    let members: Vec<Vec<u64>> = fresh.iter().map(|f| f.members.clone()).collect();
    let (ids, ev) = match_groups(before, &members);
    next.events.add(&ev);
    let since: HashMap<GroupId, u64> = before.iter().map(|g| (g.id, g.since)).collect();
    fresh
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
        .collect()
}

/// Detects the hierarchy now (whatever the tick) and mirrors it in the ECS.
pub fn organize_now(world: &mut World) {
    puffin::profile_function!();
    let cdna = world.resource::<Cdna>();
    let params = cdna.hierarchy.clone();
    let target = cdna.physics.target_neighbors;
    let tick = world.resource::<SimClock>().tick;
    let pool = world.resource::<ComputePool>().0.clone();
    // The median radius is needed only when ℓ₁ follows the density.
    let link1 = match params.link_length {
        l if l > 0.0 => l,
        _ => params.level1_link_length(target, median_radius(world)),
    };
    let g = gather(world, link1, params.attach_within);
    let mut previous = std::mem::take(&mut *world.resource_mut::<Hierarchy>());
    let mut next = Hierarchy {
        levels: Vec::new(),
        next_group: previous.next_group,
        last_organized: Some(tick),
        events: previous.events,
    };
    let used_lists = g.lists_ok;
    pool.install(|| {
        let mut link = link1;
        for level in 1..=params.depth {
            let mut fresh = if level == 1 {
                level1_groups(world.resource::<ForceBuffers>(), &g, link, &params)
            } else {
                upper_groups(&next.levels[level as usize - 2], link, &params)
            };
            fresh.sort_unstable_by_key(|f| f.members[0]);
            let before = previous
                .levels
                .get(level as usize - 1)
                .map_or(&[][..], |v| v.as_slice());
            let groups = identify(fresh, before, level, tick, &mut next);
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
    stats.tree_runs += !used_lists as u64;
    stats.reparented = reparented;
}

/// The `Organize` system: [`organize_now`] on every tick that is a multiple of
/// `hierarchy.organize_every`; with `organize_every = 0` or `depth = 0` it
/// removes any hierarchy left from before.
pub fn organize(world: &mut World) {
    crate::profile_system!("organize");
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
        let registry = world.resource::<TokenRegistry>();
        let child = |m: u64| -> Option<Entity> {
            if level == 0 {
                registry.get(TokenId(m))
            } else {
                live.get(&GroupId(m)).copied()
            }
        };
        // Only members whose parent changed are touched.
        for (m, new) in parent_changes(previous, next, level) {
            let Some(e) = child(m) else { continue };
            changes += 1;
            match new {
                Some(p) => inserts.push((e, ChildOf(live[&p]))),
                None => removals.push(e),
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

/// The members of `level` (0: tokens under level-1 groups) whose parent differs
/// between `a` and `b`, in member order, with their parent in `b`. Dense tables
/// when the ids are dense enough (tokens), hash maps otherwise.
fn parent_changes(a: &Hierarchy, b: &Hierarchy, level: usize) -> Vec<(u64, Option<GroupId>)> {
    let pairs = |h: &Hierarchy| -> Vec<(u64, GroupId)> {
        h.levels
            .get(level)
            .into_iter()
            .flatten()
            .flat_map(|g| g.members.iter().map(move |&m| (m, g.id)))
            .collect()
    };
    let (pa, pb) = (pairs(a), pairs(b));
    let top = pa
        .iter()
        .chain(&pb)
        .map(|p| p.0.saturating_add(1))
        .max()
        .unwrap_or(0);
    let mut out = Vec::new();
    if top <= 4 * (pa.len() + pb.len()) as u64 + 1024 {
        const NONE: u64 = u64::MAX;
        let (mut old, mut new) = (vec![NONE; top as usize], vec![NONE; top as usize]);
        for &(m, g) in &pa {
            old[m as usize] = g.0;
        }
        for &(m, g) in &pb {
            new[m as usize] = g.0;
        }
        for (m, (&o, &n)) in old.iter().zip(&new).enumerate() {
            if o != n {
                out.push((m as u64, (n != NONE).then_some(GroupId(n))));
            }
        }
    } else {
        let old: HashMap<u64, GroupId> = pa.into_iter().collect();
        let new: HashMap<u64, GroupId> = pb.into_iter().collect();
        let mut keys: Vec<u64> = old.keys().chain(new.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        for m in keys {
            let n = new.get(&m).copied();
            if old.get(&m).copied() != n {
                out.push((m, n));
            }
        }
    }
    out
}

/// With `hierarchy.group_pull > 0`, pulls every grouped level-0 token below the
/// target density towards its level-1 group's centre:
/// `F += group_pull · m · (1 − ρ/ρ₀)₊ · (c − x)`, added to the force of
/// [`ForceBuffers`] after the pair and link forces. It gathers a group's halo,
/// and fades out at the target density so that it never compresses the field.
pub fn group_pull(
    tokens: Query<(&TokenId, &Position, &Mass, &ChildOf)>,
    groups: Query<&Position, With<GroupId>>,
    mut buf: ResMut<ForceBuffers>,
    cdna: Res<Cdna>,
) {
    crate::profile_system!("group_pull");
    let k = cdna.hierarchy.group_pull;
    // A resident GPU tick applied the pull on the device.
    if k == 0.0 || tokens.is_empty() || buf.resident.is_some() {
        return;
    }
    let buf = &mut *buf;
    let inv_rho0 = ForceParams::from_cdna(&cdna).inv_target_density;
    for (id, x, m, parent) in tokens.iter() {
        let s = buf
            .slot_of()
            .get(id.0 as usize)
            .copied()
            .unwrap_or(u32::MAX);
        if let (Ok(c), true) = (groups.get(parent.parent()), s != u32::MAX) {
            let s = s as usize;
            let rho = buf.density.get(s).copied().unwrap_or(0.0);
            let below = (1.0 - rho * inv_rho0).max(0.0);
            buf.forces[s] += (c.0 - x.0) * (k * m.0 * below);
        }
    }
}
