//! The command API: every command validated, refusals leave the world untouched,
//! quotas enforced.

mod common;

use common::*;
use neurograph::prelude::*;

fn two_tokens() -> (Simulation, TokenId, TokenId) {
    let mut sim = sim_with_threads(1);
    let a = sim.spawn(TokenSpec::at(Vec8::ZERO)).unwrap();
    let b = sim.spawn(TokenSpec::at(Vec8::splat(0.2))).unwrap();
    (sim, a, b)
}

/// Applies `cmd`, expects a refusal whose message contains every `needle`, and
/// checks that the state digest did not move.
fn refused(sim: &mut Simulation, cmd: SimCommand, needles: &[&str]) -> CommandError {
    let before = sim.digest();
    let tokens = sim.token_count();
    let err = sim.apply(cmd).expect_err("the command should be refused");
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
    assert_eq!(sim.digest(), before, "a refused command changed the world");
    assert_eq!(sim.token_count(), tokens);
    err
}

#[test]
fn spawn_rejects_nan_infinity_and_out_of_range_values() {
    let (mut sim, _, _) = two_tokens();
    let mut p = Vec8::ZERO;
    p[3] = f32::NAN;
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(p)),
        &["position[3] (emotional)", "NaN", "finite"],
    );
    p[3] = f32::INFINITY;
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(p)),
        &["position[3]", "inf"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::splat(5000.0))),
        &["position[0]", "5000", "[-1000, 1000]"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_charge(1.5)),
        &["charge = 1.5", "[-1, 1]"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_mass(0.0)),
        &["mass = 0", "[0.01, 1000]"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_radius(-1.0)),
        &["radius = -1"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_strength(f32::NAN)),
        &["strength = NaN"],
    );
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_velocity(Vec8::splat(10.0))),
        &["|velocity|", "physics.max_speed = 1"],
    );
}

#[test]
fn a_batch_is_all_or_nothing() {
    let (mut sim, _, _) = two_tokens();
    let mut batch = vec![TokenSpec::at(Vec8::ONE); 10];
    batch[7].charge = -3.0;
    let err = refused(
        &mut sim,
        SimCommand::SpawnBatch(batch.clone()),
        &["batch item 7", "charge = -3"],
    );
    assert!(matches!(err, CommandError::BatchItem { index: 7, .. }));
    batch[7].charge = -0.3;
    let first = sim.spawn_batch(batch).unwrap();
    assert_eq!(first, TokenId(2));
    assert_eq!(sim.token_count(), 12);
}

#[test]
fn unknown_ids_are_named() {
    let (mut sim, a, _) = two_tokens();
    let ghost = TokenId(99);
    refused(&mut sim, SimCommand::Despawn(ghost), &["unknown token #99"]);
    refused(
        &mut sim,
        SimCommand::Set {
            id: ghost,
            value: SetValue::Charge(0.1),
        },
        &["#99"],
    );
    refused(
        &mut sim,
        SimCommand::Impulse {
            id: ghost,
            impulse: Vec8::ONE,
        },
        &["#99"],
    );
    refused(
        &mut sim,
        SimCommand::Link {
            a,
            b: ghost,
            spec: LinkSpec::new(1.0, 0.5),
        },
        &["#99"],
    );
    refused(
        &mut sim,
        SimCommand::Unlink { a, b: ghost },
        &["not linked"],
    );
}

#[test]
fn despawned_ids_stay_dead_and_are_not_reused() {
    let (mut sim, a, b) = two_tokens();
    sim.apply(SimCommand::Link {
        a,
        b,
        spec: LinkSpec::new(1.0, 0.5),
    })
    .unwrap();
    let out = sim.apply(SimCommand::Despawn(a)).unwrap();
    assert_eq!(out, CommandOutcome::Despawned { links_removed: 1 });
    assert_eq!(sim.link_count(), 0);
    refused(&mut sim, SimCommand::Despawn(a), &["unknown token #0"]);
    let c = sim.spawn(TokenSpec::at(Vec8::ONE)).unwrap();
    assert_eq!(c, TokenId(2));
    sim.step();
}

#[test]
fn links_are_validated() {
    let (mut sim, a, b) = two_tokens();
    refused(
        &mut sim,
        SimCommand::Link {
            a,
            b: a,
            spec: LinkSpec::new(1.0, 0.5),
        },
        &["itself"],
    );
    refused(
        &mut sim,
        SimCommand::Link {
            a,
            b,
            spec: LinkSpec::new(20.0, 0.5),
        },
        &["link.weight = 20", "[0, 10]"],
    );
    refused(
        &mut sim,
        SimCommand::Link {
            a,
            b,
            spec: LinkSpec::new(1.0, f32::NAN),
        },
        &["link.rest_length = NaN"],
    );
    let mut s = LinkSpec::new(1.0, 0.5);
    s.rigidity = 2.0;
    refused(
        &mut sim,
        SimCommand::Link { a, b, spec: s },
        &["link.rigidity = 2"],
    );
    sim.apply(SimCommand::Link {
        a,
        b,
        spec: LinkSpec::new(1.0, 0.5),
    })
    .unwrap();
    refused(
        &mut sim,
        SimCommand::Link {
            a: b,
            b: a,
            spec: LinkSpec::new(1.0, 0.5),
        },
        &["already linked"],
    );
    sim.apply(SimCommand::SetLink {
        a: b,
        b: a,
        spec: LinkSpec::new(2.0, 0.1),
    })
    .unwrap();
    sim.apply(SimCommand::Unlink { a, b }).unwrap();
    assert_eq!(sim.link_count(), 0);
}

#[test]
fn degree_limit_is_enforced_on_link() {
    let mut cdna = Cdna::default();
    cdna.graph.max_degree = 2;
    let mut sim = Simulation::new(SimSettings {
        cdna,
        ..Default::default()
    })
    .unwrap();
    let first = sim
        .spawn_batch(vec![TokenSpec::at(Vec8::ZERO); 4])
        .unwrap()
        .0;
    let t = |k: u64| TokenId(first + k);
    sim.apply(SimCommand::Link {
        a: t(0),
        b: t(1),
        spec: LinkSpec::new(1.0, 0.5),
    })
    .unwrap();
    sim.apply(SimCommand::Link {
        a: t(0),
        b: t(2),
        spec: LinkSpec::new(1.0, 0.5),
    })
    .unwrap();
    refused(
        &mut sim,
        SimCommand::Link {
            a: t(0),
            b: t(3),
            spec: LinkSpec::new(1.0, 0.5),
        },
        &["token #0 has 2 links", "graph.max_degree = 2"],
    );
}

#[test]
fn set_and_impulse_change_exactly_one_value() {
    let (mut sim, a, _) = two_tokens();
    sim.apply(SimCommand::Set {
        id: a,
        value: SetValue::Charge(-0.25),
    })
    .unwrap();
    sim.apply(SimCommand::Set {
        id: a,
        value: SetValue::Radius(1.5),
    })
    .unwrap();
    sim.apply(SimCommand::Set {
        id: a,
        value: SetValue::Kind(TokenKind::Relation),
    })
    .unwrap();
    sim.apply(SimCommand::Set {
        id: a,
        value: SetValue::Position(Vec8::splat(3.0)),
    })
    .unwrap();
    let t = sim.token(a).unwrap();
    assert_eq!(
        (t.charge, t.field.radius, t.kind, t.position),
        (-0.25, 1.5, TokenKind::Relation, Vec8::splat(3.0))
    );
    refused(
        &mut sim,
        SimCommand::Set {
            id: a,
            value: SetValue::Mass(f32::INFINITY),
        },
        &["mass = inf"],
    );
    refused(
        &mut sim,
        SimCommand::Impulse {
            id: a,
            impulse: Vec8::splat(f32::NAN),
        },
        &["impulse", "finite"],
    );
    sim.apply(SimCommand::Set {
        id: a,
        value: SetValue::Mass(2.0),
    })
    .unwrap();
    sim.apply(SimCommand::Impulse {
        id: a,
        impulse: Vec8::axis(Axis::Abstract) * 0.5,
    })
    .unwrap();
    assert_eq!(sim.token(a).unwrap().velocity[7], 0.25, "dv = J / m");
}

#[test]
fn queued_commands_apply_in_ingest_and_refusals_are_logged() {
    let (mut sim, a, _) = two_tokens();
    sim.submit(SimCommand::Set {
        id: a,
        value: SetValue::Charge(0.5),
    });
    sim.submit(SimCommand::Despawn(TokenId(77)));
    sim.submit(SimCommand::Spawn(TokenSpec::at(Vec8::ONE)));
    assert_eq!(
        sim.token(a).unwrap().charge,
        1.0,
        "nothing applies before the tick"
    );
    sim.step();
    assert_eq!(sim.token(a).unwrap().charge, 0.5);
    assert_eq!(sim.token_count(), 3);
    let log = sim.command_log();
    assert_eq!(log.rejected.len(), 1);
    assert!(log.rejected[0].1.contains("#77"));
    assert_eq!(log.rejected_total, 1);
    sim.step();
    assert!(
        sim.command_log().rejected.is_empty(),
        "refusals are per tick"
    );
}

#[test]
fn token_quota_refuses_and_keeps_the_world() {
    let mut sim = Simulation::new(SimSettings {
        quotas: Quotas {
            max_tokens: 5,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    sim.spawn_batch(vec![TokenSpec::at(Vec8::ZERO); 4]).unwrap();
    let err = refused(
        &mut sim,
        SimCommand::SpawnBatch(vec![TokenSpec::at(Vec8::ONE); 2]),
        &[
            "token quota exceeded",
            "4 live + 2 requested > max_tokens = 5",
        ],
    );
    assert!(matches!(
        err,
        CommandError::Quota(QuotaError::Tokens { .. })
    ));
    sim.spawn(TokenSpec::at(Vec8::ONE)).unwrap();
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ONE)),
        &["max_tokens = 5"],
    );
    assert_eq!(sim.command_log().quota_rejections, 2);
}

#[test]
fn link_and_memory_quotas() {
    let mut sim = Simulation::new(SimSettings {
        quotas: Quotas {
            max_links: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let f = sim
        .spawn_batch(vec![TokenSpec::at(Vec8::ZERO); 3])
        .unwrap()
        .0;
    sim.apply(SimCommand::Link {
        a: TokenId(f),
        b: TokenId(f + 1),
        spec: LinkSpec::new(1.0, 0.5),
    })
    .unwrap();
    refused(
        &mut sim,
        SimCommand::Link {
            a: TokenId(f),
            b: TokenId(f + 2),
            spec: LinkSpec::new(1.0, 0.5),
        },
        &["link quota exceeded", "max_links = 1"],
    );

    let budget = 100 * Quotas::BYTES_PER_TOKEN;
    let mut sim = Simulation::new(SimSettings {
        quotas: Quotas {
            memory_budget_bytes: budget,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    sim.spawn_batch(vec![TokenSpec::at(Vec8::ZERO); 100])
        .unwrap();
    refused(
        &mut sim,
        SimCommand::Spawn(TokenSpec::at(Vec8::ZERO)),
        &[
            "memory budget exceeded",
            &format!("memory_budget_bytes = {budget}"),
        ],
    );
}

/// The memory quota of a command is checked against the world's measured
/// structures (`MemoryAccount`, measured at the end of a tick), and a refusal
/// names the measured figure; a journaled command replays without the quota
/// being decided again.
#[test]
fn the_memory_quota_is_checked_against_measured_memory() {
    use neurograph::model::commands::{apply_command, apply_recorded_command};
    use neurograph::model::config::MemoryAccount;
    let specs = |n: usize, seed: u64| scenario_tokens("uniform", n, seed);
    let mut sim = Simulation::new(SimSettings::default()).unwrap();
    sim.spawn_batch(specs(2_000, 1)).unwrap();
    assert_eq!(
        *sim.world().resource::<MemoryAccount>(),
        MemoryAccount::default(),
        "nothing is measured before the first tick"
    );
    for _ in 0..3 {
        sim.step();
    }
    let account = *sim.world().resource::<MemoryAccount>();
    assert_eq!(account.tokens, 2_000);
    assert_eq!(account.links, sim.link_count());
    assert!((1..=3).contains(&account.tick), "{account:?}");
    // The measured cost, not the calibrated constant.
    let per = account.bytes_per_token();
    assert!(per > 100 && per != Quotas::BYTES_PER_TOKEN, "{account:?}");
    if account.tick == 3 {
        assert_eq!(account.bytes, sim.memory().total_bytes);
    }

    // A budget that holds 10 more tokens at the measured cost, not 11.
    let budget = account.projected(2_010, sim.link_count());
    assert_eq!(budget, account.bytes + 10 * per);
    sim.world_mut().insert_resource(Quotas {
        memory_budget_bytes: budget,
        ..Default::default()
    });
    refused(
        &mut sim,
        SimCommand::SpawnBatch(specs(11, 2)),
        &[
            "memory budget exceeded",
            &format!("{} bytes for 2000 tokens", account.bytes),
            &format!("{per} B per token"),
            &format!("memory_budget_bytes = {budget}"),
        ],
    );
    sim.spawn_batch(specs(10, 3)).unwrap();

    // A recorded command is not refused for the quota it was admitted under.
    let cmd = SimCommand::Spawn(TokenSpec::at(Vec8::ZERO));
    let world = sim.world_mut();
    let err = apply_command(world, &cmd).unwrap_err();
    assert!(err.to_string().contains("memory budget exceeded"), "{err}");
    apply_recorded_command(world, &cmd).unwrap();
    assert_eq!(sim.token_count(), 2_011);
    // Other checks still apply to recorded commands.
    let bad = SimCommand::Spawn(TokenSpec::at(Vec8::ZERO).with_charge(f32::NAN));
    assert!(apply_recorded_command(sim.world_mut(), &bad).is_err());
}
