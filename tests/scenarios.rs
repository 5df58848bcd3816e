//! Scenario properties checked by brute force.

use neurograph::prelude::*;
use neurograph::scenario::{self, ScenarioParams};

#[test]
fn uniform_has_about_30_neighbours_within_the_cutoff() {
    let d = scenario::find("uniform")
        .unwrap()
        .generate(&ScenarioParams {
            tokens: 4000,
            seed: 9,
        });
    let pts: Vec<Vec8> = d.tokens.iter().map(|t| t.position).collect();
    let mut pairs = 0u64;
    for i in 0..pts.len() {
        for j in 0..pts.len() {
            if i != j && (pts[i] - pts[j]).length_squared() < 1.0 {
                pairs += 1;
            }
        }
    }
    let avg = pairs as f64 / pts.len() as f64;
    assert!((27.0..33.0).contains(&avg), "average neighbours {avg}");
}

#[test]
fn clusters_plant_4_groups_of_5_subgroups_far_apart() {
    let d = scenario::find("clusters")
        .unwrap()
        .generate(&ScenarioParams {
            tokens: 2000,
            seed: 9,
        });
    let t = d.truth.unwrap();
    let geo = scenario::ClusterGeometry::for_tokens(2000);
    let sub = geo.subgroup_distance;
    // 100 tokens per subgroup settle into droplets of radius (100/30)^(1/8).
    assert!(
        (sub - (3.0 * (100.0f32 / 30.0).powf(0.125) + 1.0)).abs() < 1e-5,
        "{sub}"
    );
    let mut centres = vec![(Vec8::ZERO, 0usize); 20];
    for (tok, &l) in d.tokens.iter().zip(&t.labels) {
        centres[l as usize].0 += tok.position;
        centres[l as usize].1 += 1;
    }
    let c: Vec<Vec8> = centres
        .iter()
        .map(|(s, n)| *s * (1.0 / *n as f32))
        .collect();
    for a in 0..20 {
        for b in a + 1..20 {
            let d = (c[a] - c[b]).length();
            // Subgroup centres are `sub` from their group's and at least `sub`
            // apart; group centres at least `6 sub` apart (centroids of 100
            // tokens are off by about 0.1).
            if a / 5 == b / 5 {
                assert!(
                    d > sub - 0.5 && d < 2.0 * sub + 0.5,
                    "subgroups {a},{b} of one group at {d}"
                );
            } else {
                assert!(d > 4.0 * sub - 0.5, "groups of {a},{b} too close: {d}");
            }
        }
    }
}

#[test]
fn collapse_starts_like_charged_inside_a_tiny_ball() {
    let d = scenario::find("collapse")
        .unwrap()
        .generate(&ScenarioParams {
            tokens: 2000,
            seed: 3,
        });
    assert_eq!(d.tokens.len(), 2000);
    assert!(d.truth.is_none());
    let radius = scenario::COLLAPSE_RADIUS;
    let mut far = 0.0f32;
    for t in &d.tokens {
        assert_eq!(
            (t.charge, t.mass, t.radius, t.strength),
            (1.0, 1.0, 1.0, 1.0)
        );
        far = far.max(t.position.length());
    }
    // Uniform in the 8-ball: most of the volume is near its edge.
    assert!(far <= radius && far > 0.95 * radius, "{far}");
}

#[test]
fn every_scenario_is_registered_with_a_description() {
    let names: Vec<&str> = scenario::SCENARIOS.iter().map(|s| s.name).collect();
    assert_eq!(names, ["clusters", "uniform", "collapse"]);
    assert!(
        scenario::SCENARIOS
            .iter()
            .all(|s| !s.description.is_empty())
    );
}
