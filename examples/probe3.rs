use neurograph::physics::*;
use neurograph::prelude::*;
use neurograph::scenario;
use neurograph::spatial::*;
use std::time::Instant;
fn main() {
    let n = 100_000;
    let d = scenario::find("uniform")
        .unwrap()
        .generate(&scenario::ScenarioParams { tokens: n, seed: 1 });
    let tree = KdTree::build(&d.tokens.iter().map(|t| t.position).collect::<Vec<_>>());
    let toks: Vec<_> = tree.order().iter().map(|&o| d.tokens[o as usize]).collect();
    let pts: Vec<Vec8> = toks.iter().map(|t| t.position).collect();
    let params: Vec<TokenParams> = toks
        .iter()
        .map(|t| TokenParams {
            charge: t.charge,
            mass: t.mass,
            radius: t.radius,
            strength: t.strength,
        })
        .collect();
    let radii = vec![1.0f32; n];
    let ids: Vec<TokenId> = (0..n as u64).map(TokenId).collect();
    let fp = ForceParams::from_cdna(&Cdna::default());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for skin in [0.05f32, 0.15] {
        let nl = NeighborList::build(SearchInput {
            points: &pts,
            radii: &radii,
            ids: &ids,
            skin,
        });
        let mut f = vec![Vec8::ZERO; n];
        pool.install(|| {
            let t = Instant::now();
            for _ in 0..5 {
                neurograph::systems::compute_forces(
                    &pts,
                    &params,
                    &nl,
                    &LinkTable::default(),
                    &fp,
                    &mut f,
                );
            }
            let e = t.elapsed() / 5;
            println!(
                "skin {skin}: 1 thread force pass {:?}, {:.1} ns/candidate",
                e,
                e.as_nanos() as f64 / nl.candidates() as f64
            );
            let bodies: Vec<Body> = pts
                .iter()
                .zip(&params)
                .map(|(x, p)| Body { x: *x, p: *p })
                .collect();
            let t = Instant::now();
            for _ in 0..5 {
                aos_pass(&bodies, &nl, &fp, &mut f);
            }
            let e = t.elapsed() / 5;
            println!(
                "   aos {:?}, {:.1} ns/candidate",
                e,
                e.as_nanos() as f64 / nl.candidates() as f64
            );
            let t = Instant::now();
            for _ in 0..5 {
                soa_nocheck(&pts, &nl, &mut f);
            }
            let e = t.elapsed() / 5;
            println!(
                "   distance only {:?}, {:.1} ns/candidate",
                e,
                e.as_nanos() as f64 / nl.candidates() as f64
            );
            let t = Instant::now();
            for _ in 0..5 {
                soa_prefetch(&pts, &nl, &mut f);
            }
            let e = t.elapsed() / 5;
            println!(
                "   prefetch next row {:?}, {:.1} ns/candidate",
                e,
                e.as_nanos() as f64 / nl.candidates() as f64
            );
        });
    }
}
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub struct Body {
    pub x: Vec8,
    pub p: TokenParams,
}
pub fn aos_pass(bodies: &[Body], nl: &NeighborList, fp: &ForceParams, out: &mut [Vec8]) {
    for (i, f) in out.iter_mut().enumerate() {
        let bi = bodies[i];
        let mut acc = Vec8::ZERO;
        for &j in nl.row(i) {
            let bj = &bodies[j as usize];
            if let Some(fij) = pair_force(bi.x, &bi.p, bj.x, &bj.p, fp) {
                acc += fij;
            }
        }
        *f = acc;
    }
}
pub fn soa_nocheck(pts: &[Vec8], nl: &NeighborList, out: &mut [Vec8]) {
    for (i, f) in out.iter_mut().enumerate() {
        let xi = pts[i];
        let mut acc = Vec8::ZERO;
        for &j in nl.row(i) {
            let d = pts[j as usize] - xi;
            let r2 = d.length_squared();
            if r2 < 1.0 {
                acc += d * r2;
            }
        }
        *f = acc;
    }
}
pub fn soa_prefetch(pts: &[Vec8], nl: &NeighborList, out: &mut [Vec8]) {
    for (i, f) in out.iter_mut().enumerate() {
        let xi = pts[i];
        let mut acc = Vec8::ZERO;
        let row = nl.row(i);
        if i + 1 < pts.len() {
            for &j in nl.row(i + 1) {
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        pts.as_ptr().add(j as usize) as *const i8,
                        std::arch::x86_64::_MM_HINT_T0,
                    );
                }
            }
        }
        for &j in row {
            let d = pts[j as usize] - xi;
            let r2 = d.length_squared();
            if r2 < 1.0 {
                acc += d * r2;
            }
        }
        *f = acc;
    }
}
