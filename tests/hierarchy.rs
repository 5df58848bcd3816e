//! The `Learn` and `Organize` stages: friends-of-friends against brute force,
//! stable identities and their events, the `ChildOf` mirror, Hebbian learning
//! by its formulas, snapshots, and the quality figures of `run --json`.

mod common;

use bevy_ecs::prelude::*;
use common::*;
use neurograph::geometry::hierarchy::{
    Candidates, GroupId, Hierarchy, UnionFind, adjusted_rand_index, friends_of_friends,
};
use neurograph::geometry::spatial::{NeighborList, SearchInput};
use neurograph::model::registry::{LinkGraph, TokenRegistry};
use neurograph::prelude::*;
use neurograph::systems::{GroupEntities, OrganizeStats};
use neurograph::wal::snapshot::{capture, restore};
use std::collections::{BTreeSet, HashMap};
#[cfg(feature = "cli")]
use std::path::Path;

/// Reference friends-of-friends: every pair, union-find, components of at least
/// `min` points as sorted index sets.
fn brute_fof(points: &[Vec8], link: f32, min: usize) -> BTreeSet<Vec<u32>> {
    let mut uf = UnionFind::new(points.len());
    for i in 0..points.len() {
        for j in i + 1..points.len() {
            if (points[i] - points[j]).length_squared() < link * link {
                uf.union(i as u32, j as u32);
            }
        }
    }
    let mut comps: HashMap<u32, Vec<u32>> = HashMap::new();
    for i in 0..points.len() as u32 {
        comps.entry(uf.find(i)).or_default().push(i);
    }
    comps.into_values().filter(|c| c.len() >= min).collect()
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32) / (1u64 << 24) as f32
}

/// Blobs of points with a spread that makes chains and stragglers.
fn blobby_points(n: usize, seed: u64) -> Vec<Vec8> {
    let mut s = seed;
    let centres: Vec<Vec8> = (0..6)
        .map(|_| Vec8::from_array(std::array::from_fn(|_| lcg(&mut s) * 6.0)))
        .collect();
    (0..n)
        .map(|i| {
            let c = centres[i % centres.len()];
            c + Vec8::from_array(std::array::from_fn(|_| (lcg(&mut s) - 0.5) * 1.6))
        })
        .collect()
}

#[test]
fn friends_of_friends_matches_brute_force_with_lists_and_tree() {
    for (n, link, seed) in [
        (700, 0.45f32, 1u64),
        (900, 0.6, 2),
        (64, 0.8, 3),
        (1, 0.5, 4),
    ] {
        let points = blobby_points(n, seed);
        let want = brute_fof(&points, link, 3);
        let tree: BTreeSet<Vec<u32>> = friends_of_friends(&points, link, 3, Candidates::Tree)
            .into_iter()
            .collect();
        assert_eq!(tree, want, "k-d tree, n = {n}");
        let merging: BTreeSet<Vec<u32>> =
            friends_of_friends(&points, link, 3, Candidates::MergingTree)
                .into_iter()
                .collect();
        assert_eq!(merging, want, "merging k-d tree, n = {n}");
        // And with a linking length that spans the whole set.
        let wide = brute_fof(&points, link * 8.0, 3);
        let merged: BTreeSet<Vec<u32>> =
            friends_of_friends(&points, link * 8.0, 3, Candidates::MergingTree)
                .into_iter()
                .collect();
        assert_eq!(merged, wide, "merging k-d tree, wide, n = {n}");
        let tree_wide: BTreeSet<Vec<u32>> =
            friends_of_friends(&points, link * 8.0, 3, Candidates::Tree)
                .into_iter()
                .collect();
        assert_eq!(tree_wide, wide, "k-d tree, wide, n = {n}");
        let radii = vec![link; n];
        let ids: Vec<TokenId> = (0..n as u64).map(TokenId).collect();
        let lists = NeighborList::build(SearchInput {
            points: &points,
            radii: &radii,
            ids: &ids,
            skin: 0.1,
        });
        let listed: BTreeSet<Vec<u32>> =
            friends_of_friends(&points, link, 3, Candidates::Lists(&lists))
                .into_iter()
                .collect();
        assert_eq!(listed, want, "lists, n = {n}");
    }
}

fn settings(threads: usize, cdna: Cdna) -> SimSettings {
    SimSettings {
        config: SimConfig {
            threads,
            ..Default::default()
        },
        cdna,
        ..Default::default()
    }
}

/// A CDNA under which nothing moves and nothing learns: only `Organize` acts.
fn still_cdna() -> Cdna {
    let mut c = Cdna::default();
    c.physics.k_field = 0.0;
    c.physics.k_core = 0.0;
    c.graph.form_within = 0.0;
    c.hierarchy.group_pull = 0.0;
    c.hierarchy.attach_within = 0.0;
    c.hierarchy.organize_every = 1;
    c
}

/// Level-1 groups as sets of token ids.
fn level1_sets(h: &Hierarchy) -> BTreeSet<Vec<u64>> {
    h.levels
        .first()
        .map(|l| l.iter().map(|g| g.members.clone()).collect())
        .unwrap_or_default()
}

#[test]
fn organize_finds_exactly_the_friends_of_friends_groups_of_the_world() {
    // The system reads positions after Integrate and pairs from the force
    // stage's lists; compare with brute force over the same positions.
    let mut cdna = Cdna::default();
    cdna.hierarchy.attach_within = 0.0;
    let mut sim = scenario_sim_with("clusters", 1500, 5, 2, cdna);
    // All radii are 1: the derived ℓ₁ is measured in them.
    let link = sim
        .cdna()
        .hierarchy
        .level1_link_length(sim.cdna().physics.target_neighbors, 1.0);
    let min = sim.cdna().hierarchy.min_size as usize;
    for _ in 0..3 {
        sim.run(10);
        let mut q = sim.world_mut().query::<(&TokenId, &Position)>();
        let mut tokens: Vec<(TokenId, Vec8)> =
            q.iter(sim.world()).map(|(i, p)| (*i, p.0)).collect();
        tokens.sort_by_key(|t| t.0);
        let points: Vec<Vec8> = tokens.iter().map(|t| t.1).collect();
        let want: BTreeSet<Vec<u64>> = brute_fof(&points, link, min)
            .into_iter()
            .map(|c| c.into_iter().map(|k| tokens[k as usize].0.0).collect())
            .collect();
        assert_eq!(level1_sets(sim.hierarchy()), want, "tick {}", sim.tick());
        assert!(
            sim.world().resource::<OrganizeStats>().used_lists,
            "the lists cover ℓ₁ here; the k-d tree fallback should not be needed"
        );
    }
}

fn scenario_sim_with(
    name: &str,
    tokens: usize,
    seed: u64,
    threads: usize,
    cdna: Cdna,
) -> Simulation {
    let mut sim = Simulation::new(settings(threads, cdna)).unwrap();
    sim.world_mut()
        .insert_resource(neurograph::model::registry::SimRng::seeded(seed));
    neurograph::scenario::find(name)
        .unwrap()
        .spawn_into(
            &mut sim,
            &neurograph::scenario::ScenarioParams { tokens, seed },
            4096,
        )
        .unwrap();
    sim
}

/// Every group entity shows its group: position, level, and exactly its members
/// as `Children`; every grouped token has `ChildOf` its group, no other has one.
fn assert_mirror_matches(sim: &mut Simulation) {
    let hier = sim.hierarchy().clone();
    let entities = sim.world().resource::<GroupEntities>().0.clone();
    let registry = sim.world().resource::<TokenRegistry>().clone();
    let all: usize = hier.levels.iter().map(Vec::len).sum();
    assert_eq!(entities.len(), all, "one entity per group");
    let mut parent_of: HashMap<Entity, Entity> = HashMap::new();
    for (k, level) in hier.levels.iter().enumerate() {
        for g in level {
            let e = entities[&g.id];
            let world = sim.world();
            assert_eq!(world.get::<GroupId>(e), Some(&g.id));
            assert_eq!(world.get::<Position>(e).unwrap().0, g.centre);
            assert_eq!(world.get::<Level>(e).unwrap().0 as usize, k + 1);
            assert_eq!(world.get::<TokenKind>(e), Some(&TokenKind::Group));
            let mut want: Vec<Entity> = g
                .members
                .iter()
                .filter_map(|&m| {
                    if k == 0 {
                        registry.get(TokenId(m))
                    } else {
                        Some(entities[&GroupId(m)])
                    }
                })
                .collect();
            want.sort();
            let mut got: Vec<Entity> = world
                .get::<Children>(e)
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            got.sort();
            assert_eq!(got, want, "children of {}", g.id);
            for c in want {
                parent_of.insert(c, e);
            }
        }
    }
    let mut q = sim.world_mut().query::<(Entity, Option<&ChildOf>)>();
    for (e, p) in q.iter(sim.world()) {
        assert_eq!(p.map(|p| p.parent()), parent_of.get(&e).copied(), "{e:?}");
    }
}

#[test]
fn groups_keep_their_ids_and_the_ecs_mirrors_the_tree() {
    let mut sim = scenario_sim_with("clusters", 2000, 9, 2, Cdna::default());
    sim.run(60);
    assert_eq!(sim.hierarchy().groups_per_level(), vec![20, 4]);
    assert_mirror_matches(&mut sim);
    // Grouped tokens feel the pull of their group's centre, by the formula.
    assert!(sim.cdna().hierarchy.group_pull > 0.0);
    assert_forces_match_reference(&mut sim);
    let ids = |h: &Hierarchy| -> Vec<Vec<GroupId>> {
        h.levels
            .iter()
            .map(|l| l.iter().map(|g| g.id).collect())
            .collect()
    };
    let before = ids(sim.hierarchy());
    let kept = sim.hierarchy().events.kept;
    let entities = sim.world().resource::<GroupEntities>().0.clone();
    sim.run(30);
    assert_eq!(
        ids(sim.hierarchy()),
        before,
        "settled groups keep their ids"
    );
    assert_eq!(sim.hierarchy().events.kept, kept + 3 * 24);
    assert_eq!(
        sim.world().resource::<GroupEntities>().0,
        entities,
        "and their entities"
    );
    assert_mirror_matches(&mut sim);
    // The tree reads back: level 2 holds level-1 ids.
    let tree = sim.hierarchy().render_tree(3);
    assert!(tree.contains("20 at level 1, 4 at level 2"), "{tree}");
    assert_eq!(tree.matches("more").count(), 4, "{tree}");
}

fn teleport(sim: &mut Simulation, id: TokenId, to: Vec8) {
    sim.apply(SimCommand::Set {
        id,
        value: SetValue::Position(to),
    })
    .unwrap();
}

#[test]
fn identity_events_keep_split_merge_appear_and_vanish() {
    let mut sim = Simulation::new(settings(1, still_cdna())).unwrap();
    let at = |axis: f32, k: usize| {
        Vec8::axis(Axis::Cognitive) * axis + Vec8::axis(Axis::Physical) * (0.3 * k as f32)
    };
    // Chains of tokens 0.3 apart: connected at ℓ₁ = 0.6.
    let a: Vec<TokenId> = (0..10)
        .map(|k| sim.spawn(TokenSpec::at(at(0.0, k))).unwrap())
        .collect();
    let b: Vec<TokenId> = (0..6)
        .map(|k| sim.spawn(TokenSpec::at(at(50.0, k))).unwrap())
        .collect();
    sim.step();
    let events = |sim: &Simulation| sim.hierarchy().events;
    let level1 = |sim: &Simulation| -> Vec<(GroupId, usize)> {
        sim.hierarchy().levels.first().map_or(vec![], |l| {
            l.iter().map(|g| (g.id, g.members.len())).collect()
        })
    };
    let (ga, gb) = (GroupId(0), GroupId(1));
    assert_eq!(level1(&sim), vec![(ga, 10), (gb, 6)]);
    assert_eq!(events(&sim).appeared, 2);
    assert_eq!(
        sim.hierarchy().levels.len(),
        1,
        "50 apart: no level-2 group"
    );

    // Four of A leave (too few to form a group): A keeps its id with 6 of 10.
    for (k, &id) in a[6..].iter().enumerate() {
        teleport(&mut sim, id, at(100.0, k));
    }
    sim.step();
    assert_eq!(level1(&sim), vec![(ga, 6), (gb, 6)]);
    assert_eq!(events(&sim).kept, 2);

    // B joins the end of A's chain: one group; A is older, so it keeps its id.
    for (k, &id) in b.iter().enumerate() {
        teleport(&mut sim, id, at(0.0, 6 + k));
    }
    sim.step();
    assert_eq!(level1(&sim), vec![(ga, 12)]);
    assert_eq!((events(&sim).kept, events(&sim).merged), (3, 1));

    // B's tokens leave again: half and half, no majority, two splits with new ids.
    for (k, &id) in b.iter().enumerate() {
        teleport(&mut sim, id, at(200.0, k));
    }
    sim.step();
    let l = level1(&sim);
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|(id, n)| *n == 6 && id.0 >= 2), "{l:?}");
    assert_eq!((events(&sim).split, events(&sim).vanished), (2, 0));

    // Scatter one of them: it vanishes; the other is kept.
    for (k, &id) in b.iter().enumerate() {
        teleport(&mut sim, id, at(300.0 + 5.0 * k as f32, 0));
    }
    sim.step();
    assert_eq!(level1(&sim).len(), 1);
    let e = events(&sim);
    assert_eq!((e.vanished, e.kept, e.appeared), (1, 4, 2));
    assert_mirror_matches(&mut sim);
}

/// No pair forces and no detection: only learning changes the links.
fn learning_cdna() -> Cdna {
    let mut c = Cdna::default();
    c.physics.k_field = 0.0;
    c.physics.k_core = 0.0;
    c.hierarchy.organize_every = 0;
    c
}

#[test]
fn learning_follows_its_formulas() {
    let mut c = learning_cdna();
    c.physics.k_link = 0.0;
    let g = c.graph.clone();
    let mut sim = Simulation::new(settings(1, c)).unwrap();
    let x = |k: f32| Vec8::axis(Axis::Physical) * k;
    // Radius 1: a and b co-active at 0.6; c and d apart at 3; e and f at 0.3
    // unlinked (formation); p and q apart with a weak link (pruned).
    let a = sim.spawn(TokenSpec::at(x(0.0))).unwrap();
    let b = sim.spawn(TokenSpec::at(x(0.6))).unwrap();
    let cc = sim.spawn(TokenSpec::at(x(10.0))).unwrap();
    let d = sim.spawn(TokenSpec::at(x(13.0))).unwrap();
    let e = sim.spawn(TokenSpec::at(x(20.0))).unwrap();
    let f = sim.spawn(TokenSpec::at(x(20.3))).unwrap();
    let p = sim.spawn(TokenSpec::at(x(30.0))).unwrap();
    let q = sim.spawn(TokenSpec::at(x(33.0))).unwrap();
    let link = |sim: &mut Simulation, a, b, w: f32, rigidity: f32| {
        let mut spec = LinkSpec::new(w, 1.0);
        spec.rigidity = rigidity;
        sim.apply(SimCommand::Link { a, b, spec }).unwrap();
    };
    link(&mut sim, a, b, 1.0, 0.5);
    link(&mut sim, cc, d, 1.0, 0.5);
    link(&mut sim, p, q, g.prune_below * 1.001, 0.0);
    sim.step();
    let graph = sim.world().resource::<LinkGraph>().clone();
    let grown = 1.0 + g.learning_rate * (1.0 - 0.6) * (g.max_weight - 1.0);
    let w_ab = graph.get(a, b).unwrap().weight;
    assert!(
        (w_ab - grown).abs() < 1e-5,
        "Hebbian growth: {w_ab} vs {grown}"
    );
    let decayed = 1.0 - g.decay_rate * 0.5;
    assert_eq!(graph.get(cc, d).unwrap().weight, decayed, "decay");
    assert!(graph.get(p, q).is_none(), "pruned below {}", g.prune_below);
    let formed = graph.get(e, f).expect("formed between close tokens");
    assert_eq!(formed.weight, g.formed_weight);
    assert_eq!(formed.kind, LinkKind::Associative);
    assert!((formed.rest_length - 0.3).abs() < 1e-5);
    let stats = sim.learn_stats();
    assert_eq!((stats.links_formed, stats.links_pruned), (1, 1));
    assert_eq!(sim.link_count(), 3);
}

#[test]
fn formation_respects_the_degree_limit_and_is_nearest_first() {
    let mut c = learning_cdna();
    c.graph.form_max_degree = 2;
    let mut sim = Simulation::new(settings(2, c)).unwrap();
    // A hub with eight close neighbours on a line, at 0.05, 0.1, …
    let hub = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    let around: Vec<TokenId> = (1..=8)
        .map(|k| {
            let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
            let x = Vec8::axis(Axis::Social) * (sign * 0.05 * k as f32);
            sim.spawn(TokenSpec::at(x)).unwrap()
        })
        .collect();
    sim.run(5);
    let graph = sim.world().resource::<LinkGraph>();
    for id in std::iter::once(hub).chain(around.iter().copied()) {
        assert!(graph.degree(id) <= 2, "{id}: degree {}", graph.degree(id));
    }
    // The hub's first link went to its nearest neighbour.
    assert!(graph.get(hub, around[0]).is_some());
}

#[test]
fn a_snapshot_restores_the_hierarchy_and_the_run_continues_identically() {
    let mut sim = scenario_sim_with("clusters", 1500, 3, 2, Cdna::default());
    sim.run(25);
    let snap = capture(sim.world_mut(), None);
    assert_eq!(snap.hierarchy, *sim.hierarchy());
    let mut copy = Simulation::new(settings(1, snap.cdna.clone())).unwrap();
    restore(copy.world_mut(), &snap).unwrap();
    assert_eq!(copy.digest(), sim.digest());
    assert_mirror_matches(&mut copy);
    sim.run(20);
    copy.run(20);
    assert_eq!(copy.digest(), sim.digest(), "across two detections");
    assert_eq!(copy.hierarchy(), sim.hierarchy());
    // A snapshot whose hierarchy names a missing child group is refused.
    let mut bad = capture(sim.world_mut(), None);
    bad.hierarchy.levels[1][0].members.push(u64::MAX - 1);
    let mut fresh = Simulation::new(settings(1, bad.cdna.clone())).unwrap();
    let e = restore(fresh.world_mut(), &bad).unwrap_err();
    assert!(
        matches!(e, neurograph::wal::snapshot::RestoreError::Inconsistent(_))
            && e.to_string().contains("is not a group of level 1"),
        "{e}"
    );
    // So is one naming a token id past next_id (or u64::MAX), and a huge next_group.
    for member in [bad.next_id.0, u64::MAX] {
        let mut bad = capture(sim.world_mut(), None);
        bad.hierarchy.levels[0][0].members.push(member);
        let mut fresh = Simulation::new(settings(1, bad.cdna.clone())).unwrap();
        let e = restore(fresh.world_mut(), &bad).unwrap_err();
        assert!(e.to_string().contains("is not below next_id"), "{e}");
    }
    let mut bad = capture(sim.world_mut(), None);
    bad.hierarchy.next_group = u64::MAX;
    let mut fresh = Simulation::new(settings(1, bad.cdna.clone())).unwrap();
    let e = restore(fresh.world_mut(), &bad).unwrap_err();
    assert!(e.to_string().contains("next_group"), "{e}");
}

#[test]
fn ari_reference_values() {
    // sklearn.metrics.adjusted_rand_score([0,0,0,1,1,1],[0,0,1,1,2,2]) = 0.2424…
    let v = adjusted_rand_index(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]);
    assert!((v - 0.242_424_242_424).abs() < 1e-9, "{v}");
}

#[cfg(feature = "cli")]
#[test]
fn the_default_run_recovers_the_planted_hierarchy() {
    // The README's main job, as is: clusters, 10K tokens, 300 ticks.
    let v = json_of(&bin().args(["run", "--quiet", "--json"]).output().unwrap());
    let (a1, a2) = (
        v["ari_level1"].as_f64().unwrap(),
        v["ari_level2"].as_f64().unwrap(),
    );
    assert!(a1 >= 0.95, "ARI level 1 = {a1}");
    assert!(a2 >= 0.9, "ARI level 2 = {a2}");
    assert_eq!(v["groups_per_level"], serde_json::json!([20, 4]));
    assert!(v["links_formed"].as_u64().unwrap() > 0);
    assert!(v["links_pruned"].is_u64());
}

#[cfg(feature = "cli")]
#[test]
fn input_files_with_labels_are_scored_too() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("points.csv");
    let out = bin()
        .args(["generate", "--tokens", "2000", "--seed", "4", "--out"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(
        &bin()
            .args(["run", "--quiet", "--json", "--ticks", "60", "--input"])
            .arg(&csv)
            .output()
            .unwrap(),
    );
    assert_eq!(v["labelled_tokens"], 2000);
    // The same tokens and labels as the scenario: the same figures, to the bit.
    let direct = json_of(
        &bin()
            .args([
                "run", "--quiet", "--json", "--ticks", "60", "--tokens", "2000",
            ])
            .args(["--seed", "4"])
            .output()
            .unwrap(),
    );
    for key in [
        "ari_level1",
        "ari_level2",
        "groups_per_level",
        "links_formed",
    ] {
        assert_eq!(v[key], direct[key], "{key}");
    }
    // 100 tokens per subgroup, 60 ticks: sparser than the default, still close.
    assert!(v["ari_level1"].as_f64().unwrap() >= 0.85, "{v}");
    assert!(v["ari_level2"].as_f64().unwrap() >= 0.85, "{v}");
    // Without labels the figures are null, the counts still there.
    let v = json_of(
        &bin()
            .args(["run", "--quiet", "--json", "--scenario", "uniform"])
            .args(["--tokens", "2000", "--ticks", "20"])
            .output()
            .unwrap(),
    );
    assert!(
        v["ari_level1"].is_null() && v["ari_level2"].is_null(),
        "{v}"
    );
    assert!(v["groups_per_level"].is_array());
}

#[cfg(feature = "cli")]
#[test]
fn inspect_tree_and_plot_read_a_wal_and_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let run = json_of(
        &bin()
            .args([
                "run", "--quiet", "--json", "--tokens", "1000", "--ticks", "30",
            ])
            .args(["--snapshot-every", "20", "--wal"])
            .arg(&wal)
            .output()
            .unwrap(),
    );
    let per_level = run["groups_per_level"].as_array().unwrap().clone();
    assert_eq!(per_level.len(), 2, "{run}");
    let tree = bin()
        .args(["inspect", "--tree", "--wal"])
        .arg(&wal)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let header = format!(
        "hierarchy after tick 30: {} at level 1, {} at level 2",
        per_level[0], per_level[1]
    );
    assert!(text.starts_with(&header), "{text}");
    // Every level-1 group is listed under its parent or at the top.
    assert_eq!(
        text.matches(" level 1 ").count(),
        per_level[0].as_u64().unwrap() as usize
    );
    let snap = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("00020.snap"))
        .expect("snapshot of tick 20");
    let v = json_of(
        &bin()
            .args(["inspect", "--json", "--snapshot"])
            .arg(&snap)
            .output()
            .unwrap(),
    );
    assert_eq!(v["tick"], 20);
    let groups = v["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "{v}");
    assert_eq!(
        v["groups_per_level"][0],
        groups.iter().filter(|g| g["level"] == 1).count()
    );
    let png = dir.path().join("p.png");
    let out = bin()
        .args(["plot", "--width", "320", "--height", "200", "--out"])
        .arg(&png)
        .arg("--wal")
        .arg(&wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (320, 200));
    // Bad input: a missing snapshot is a clear error, not a panic.
    let out = bin()
        .args(["inspect", "--snapshot"])
        .arg(Path::new("/nonexistent/snap.snap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unusable snapshot"));
}
