//! CDNA at run time: atomic updates at tick boundaries, refusal as a whole,
//! revert, enforcement with counters, and the documented example file.

mod common;

use common::*;
use neurograph::prelude::*;
use std::path::Path;

#[test]
fn update_is_applied_at_the_tick_boundary_and_revertible() {
    let mut sim = scenario_sim("clusters", 200, 1, 1);
    let v1 = sim.cdna().clone();
    let mut next = Cdna::profile(Profile::Analyst);
    next.physics.k_field = 2.0;
    sim.submit(SimCommand::UpdateCdna(Box::new(next.clone())));
    assert_eq!(sim.cdna(), &v1, "queued: not applied yet");
    sim.step();
    assert_eq!(sim.cdna().version, 2);
    assert_eq!(sim.cdna().physics.k_field, 2.0);
    assert_eq!(sim.cdna().profile, Profile::Analyst);
    assert_eq!(
        sim.apply(SimCommand::RevertCdna).unwrap(),
        CommandOutcome::CdnaVersion(1)
    );
    assert_eq!(sim.cdna(), &v1);
    assert!(matches!(
        sim.apply(SimCommand::RevertCdna),
        Err(CommandError::NoCdnaHistory)
    ));
}

#[test]
fn an_invalid_update_is_refused_as_a_whole() {
    let mut sim = scenario_sim("clusters", 100, 1, 1);
    let before = sim.cdna().clone();
    let digest = sim.digest();
    let mut bad = Cdna::default();
    bad.physics.k_field = 3.0; // valid on its own
    bad.graph.decay_rate = 1.5; // invalid
    let err = sim
        .apply(SimCommand::UpdateCdna(Box::new(bad)))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("graph.decay_rate = 1.5") && msg.contains("[0, 1]"),
        "{msg}"
    );
    assert_eq!(sim.cdna(), &before, "nothing of the update applied");
    assert_eq!(sim.digest(), digest);
    let mut unstable = Cdna::default();
    unstable.physics.damping = 100.0;
    let msg = sim
        .apply(SimCommand::UpdateCdna(Box::new(unstable)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("damping × dt"), "{msg}");
}

#[test]
fn narrowed_limits_are_enforced_and_counted() {
    let mut sim = sim_with_threads(1);
    let a = sim
        .spawn(TokenSpec::at(Vec8::splat(5.0)).with_charge(0.9))
        .unwrap();
    let b = sim
        .spawn(
            TokenSpec::at(Vec8::splat(-5.0))
                .with_mass(50.0)
                .with_charge(0.2),
        )
        .unwrap();
    let mut tight = Cdna::default();
    tight.field.max_charge = 0.5;
    tight.tokens.max_mass = 10.0;
    tight.dimensions.max = [4.0; 8];
    sim.apply(SimCommand::UpdateCdna(Box::new(tight))).unwrap();
    sim.step();
    let v = sim.violations();
    assert_eq!(v.get(ViolationKind::Charge), 1);
    assert_eq!(v.get(ViolationKind::Mass), 1);
    assert_eq!(v.get(ViolationKind::PositionBounds), 1);
    assert_eq!(v.sum(), 3);
    assert_eq!(sim.token(a).unwrap().charge, 0.5);
    assert_eq!(sim.token(a).unwrap().position, Vec8::splat(4.0));
    assert_eq!(sim.token(b).unwrap().mass, 10.0);
    sim.step();
    assert_eq!(
        sim.violations().sum(),
        3,
        "corrected once, then within limits"
    );
    assert_eq!(sim.violations().last_tick, [0; 10]);
}

#[test]
fn lowered_degree_limit_removes_the_weakest_links() {
    let mut sim = sim_with_threads(1);
    let f = sim
        .spawn_batch(vec![TokenSpec::at(Vec8::ZERO); 4])
        .unwrap()
        .0;
    for (k, w) in [(1u64, 3.0f32), (2, 1.0), (3, 2.0)] {
        sim.apply(SimCommand::Link {
            a: TokenId(f),
            b: TokenId(f + k),
            spec: LinkSpec::new(w, 0.5),
        })
        .unwrap();
    }
    let mut c = Cdna::default();
    c.graph.max_degree = 2;
    c.graph.max_weight = 2.5;
    // Only the constraint here: learning would link the co-located tokens.
    c.graph.form_within = 0.0;
    sim.apply(SimCommand::UpdateCdna(Box::new(c))).unwrap();
    sim.step();
    assert_eq!(sim.link_count(), 2);
    let v = sim.violations();
    assert_eq!(v.get(ViolationKind::Degree), 1);
    assert_eq!(v.get(ViolationKind::LinkWeight), 1);
    let g = sim
        .world()
        .resource::<neurograph::model::registry::LinkGraph>();
    assert!(
        g.get(TokenId(f), TokenId(f + 2)).is_none(),
        "the weakest (w = 1) went"
    );
    assert_eq!(
        g.get(TokenId(f), TokenId(f + 1)).unwrap().weight,
        2.5,
        "clamped"
    );
}

#[test]
fn the_documented_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cdna.toml");
    let c = Cdna::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.profile, Profile::Custom);
    c.validate().unwrap();
    // It documents every field, with the default values.
    assert_eq!(c, Cdna::profile(Profile::Custom));
    let text = std::fs::read_to_string(&path).unwrap();
    let defaults = Cdna::default().to_toml();
    for line in defaults.lines() {
        if let Some((key, _)) = line.split_once(" = ")
            && key != "checksum"
        {
            let written = text.lines().any(|l| l.starts_with(&format!("{key} = ")));
            assert!(written, "examples/cdna.toml does not set `{key}`");
        }
    }
}

#[test]
fn save_and_load_round_trip() {
    let dir = std::env::temp_dir().join(format!("ng-cdna-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    let c = Cdna::profile(Profile::Creative);
    c.save(&path).unwrap();
    assert_eq!(Cdna::load(&path).unwrap(), c);
    let missing = Cdna::load(&dir.join("nope.toml")).unwrap_err().to_string();
    assert!(missing.contains("nope.toml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
