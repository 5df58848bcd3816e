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
            if a / 5 == b / 5 {
                assert!(d > 1.5 && d < 8.0, "subgroups {a},{b} of one group at {d}");
            } else {
                assert!(d > 8.0, "groups of {a},{b} too close: {d}");
            }
        }
    }
}
