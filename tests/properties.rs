//! Property tests: for arbitrary small worlds the fast path equals the O(N²)
//! reference, and arbitrary input bytes never make the CSV reader panic.

mod common;

use common::*;
use neurograph::prelude::*;
use proptest::prelude::*;

fn token() -> impl Strategy<Value = TokenSpec> {
    // Coordinates on a coarse grid so that coincident points and exact-cutoff
    // distances happen often.
    (
        proptest::array::uniform8(-8i32..8),
        -1.0f32..1.0,
        0.5f32..1.5,
        prop_oneof![Just(1.0f32), 0.5f32..2.0],
        0.0f32..1.0,
    )
        .prop_map(|(grid, q, m, r, s)| {
            TokenSpec::at(Vec8::from_array(grid.map(|g| g as f32 * 0.25)))
                .with_charge(q)
                .with_mass(m)
                .with_radius(r)
                .with_strength(s)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fast_forces_equal_the_reference(tokens in proptest::collection::vec(token(), 0..150), ticks in 1u64..4) {
        let mut sim = sim_with_threads(2);
        sim.spawn_batch(tokens).unwrap();
        for _ in 0..ticks {
            sim.step();
            assert_forces_match_reference(&mut sim);
        }
    }

    #[test]
    fn csv_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = neurograph::input::read_csv(bytes.as_slice(), "fuzz.csv", &Cdna::default());
    }

    #[test]
    fn csv_rows_with_random_cells_are_accepted_or_refused_cleanly(
        cells in proptest::collection::vec("[-+0-9.eNaIf]{0,6}", 8..=8)
    ) {
        let text = format!("x0,x1,x2,x3,x4,x5,x6,x7\n{}\n", cells.join(","));
        match neurograph::input::read_csv(text.as_bytes(), "p.csv", &Cdna::default()) {
            Ok(d) => prop_assert_eq!(d.tokens.len(), 1),
            Err(e) => prop_assert!(e.to_string().starts_with("p.csv: line 2"), "{}", e),
        }
    }
}
