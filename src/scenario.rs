//! Built-in scenarios, in one registry used by the CLI, the tests and the benches.
//!
//! | name | what |
//! |------|------|
//! | `clusters` | a planted hierarchical Gaussian mixture: 4 groups × 5 subgroups, with ground-truth labels, spaced so that settled subgroups stay apart ([`ClusterGeometry`]) |
//! | `uniform` | tokens uniform in a cube sized for ~30 neighbours within the cutoff (boundary included) |
//! | `collapse` | like-charged tokens started inside a ball of radius 0.05: they must expand to the target density |
//!
//! Scenarios generate lazily ([`Scenario::stream`]) so that large worlds are spawned
//! in batches without holding every spec in memory at once.

use crate::model::commands::CommandError;
use crate::model::components::TokenSpec;
use crate::model::config::UnknownName;
use crate::model::math::{DIM, Vec8};
use crate::sim::Simulation;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a scenario is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScenarioParams {
    /// Number of tokens.
    pub tokens: usize,
    /// RNG seed.
    pub seed: u64,
}

/// One generated token with its ground truth, if the scenario plants any.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generated {
    /// The token.
    pub spec: TokenSpec,
    /// Fine label (e.g. subgroup).
    pub label: Option<u32>,
    /// Coarse label (e.g. group).
    pub group: Option<u32>,
}

/// Ground-truth labels, in spawn order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroundTruth {
    /// Fine labels.
    pub labels: Vec<u32>,
    /// Coarse labels.
    pub groups: Vec<u32>,
}

impl GroundTruth {
    /// Keeps the labels of `g`, if it carries both.
    pub fn record(&mut self, g: &Generated) {
        if let (Some(l), Some(gr)) = (g.label, g.group) {
            self.labels.push(l);
            self.groups.push(gr);
        }
    }
}

/// A whole scenario in memory (tests, small inputs).
#[derive(Clone, Debug, Default)]
pub struct ScenarioData {
    /// The tokens.
    pub tokens: Vec<TokenSpec>,
    /// Ground truth, when planted or given.
    pub truth: Option<GroundTruth>,
}

type Stream = Box<dyn Iterator<Item = Generated> + Send>;

/// A registered scenario.
pub struct Scenario {
    /// Name used by `--scenario`.
    pub name: &'static str,
    /// One line for `neurograph scenarios`.
    pub description: &'static str,
    /// Token count when none is given.
    pub default_tokens: usize,
    make: fn(&ScenarioParams) -> Stream,
}

/// Every scenario. The first is the default.
pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "clusters",
        description: "planted hierarchical Gaussian mixture in 8D: 4 groups x 5 subgroups, labelled",
        default_tokens: 10_000,
        make: clusters,
    },
    Scenario {
        name: "uniform",
        description: "uniform in a cube sized for ~30 neighbours within the cutoff",
        default_tokens: 100_000,
        make: uniform,
    },
    Scenario {
        name: "collapse",
        description: "like charges started inside a ball of radius 0.05, which must expand to the target density",
        default_tokens: 2_000,
        make: collapse,
    },
];

/// The scenario `neurograph run` uses when none is named.
pub fn default_scenario() -> &'static Scenario {
    &SCENARIOS[0]
}

/// Looks a scenario up by name.
///
/// # Errors
/// No built-in scenario has that name; the error lists those there are.
pub fn find(name: &str) -> Result<&'static Scenario, UnknownName> {
    SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&'static str> = SCENARIOS.iter().map(|s| s.name).collect();
        UnknownName::new("scenario", name, &known)
    })
}

impl Scenario {
    /// The tokens, lazily, in spawn order.
    pub fn stream(&self, params: &ScenarioParams) -> impl Iterator<Item = Generated> + Send {
        (self.make)(params)
    }

    /// The whole scenario in memory.
    pub fn generate(&self, params: &ScenarioParams) -> ScenarioData {
        let mut data = ScenarioData::default();
        let mut truth = GroundTruth::default();
        for g in self.stream(params) {
            data.tokens.push(g.spec);
            truth.record(&g);
        }
        if !truth.labels.is_empty() {
            data.truth = Some(truth);
        }
        data
    }

    /// The ground truth alone, without keeping the tokens (empty when the
    /// scenario plants none).
    pub fn truth(&self, params: &ScenarioParams) -> GroundTruth {
        let mut truth = GroundTruth::default();
        self.stream(params).for_each(|g| truth.record(&g));
        truth
    }

    /// Spawns the scenario into `sim` in batches of `batch` tokens; returns the
    /// ground truth (empty when the scenario plants none).
    ///
    /// # Errors
    /// [`CommandError::Quota`], before any token is spawned, when the quotas would not
    /// admit `params.tokens` more; otherwise whatever [`spawn_stream`] returns.
    pub fn spawn_into(
        &self,
        sim: &mut Simulation,
        params: &ScenarioParams,
        batch: usize,
    ) -> Result<GroundTruth, CommandError> {
        check_quotas(sim, params.tokens)?;
        spawn_stream(sim, self.stream(params), batch)
    }
}

/// Refuses, before spawning any, `n` more tokens that the quotas would not
/// admit all of (the error names `n`, not how many went in before the limit).
///
/// # Errors
/// [`CommandError::Quota`] with the quota `n` more tokens would exceed.
pub fn check_quotas(sim: &Simulation, n: usize) -> Result<(), CommandError> {
    let quotas = sim.world().resource::<crate::model::config::Quotas>();
    quotas
        .check(sim.token_count(), sim.link_count(), n as u64, 0)
        .map_err(CommandError::Quota)
}

/// Spawns generated tokens in batches; returns their ground truth.
///
/// # Errors
/// [`CommandError::BatchItem`] (its index counted over the whole stream) when the CDNA
/// refuses a token, or [`CommandError::Quota`] when a batch would exceed a quota; the
/// batches spawned before the failing one stay in `sim`.
pub fn spawn_stream(
    sim: &mut Simulation,
    stream: impl Iterator<Item = Generated>,
    batch: usize,
) -> Result<GroundTruth, CommandError> {
    let mut truth = GroundTruth::default();
    let mut specs = Vec::with_capacity(batch);
    let mut done = 0usize;
    let flush = |sim: &mut Simulation, specs: &mut Vec<TokenSpec>, done: &mut usize| {
        let n = specs.len();
        let r = sim.spawn_batch(std::mem::take(specs)).map_err(|e| match e {
            CommandError::BatchItem { index, source } => CommandError::BatchItem {
                index: *done + index,
                source,
            },
            e => e,
        });
        *done += n;
        r.map(|_| ())
    };
    for g in stream {
        specs.push(g.spec);
        truth.record(&g);
        if specs.len() == batch {
            flush(sim, &mut specs, &mut done)?;
            specs.reserve(batch);
        }
    }
    if !specs.is_empty() {
        flush(sim, &mut specs, &mut done)?;
    }
    Ok(truth)
}

fn gaussian(rng: &mut ChaCha8Rng) -> Vec8 {
    Vec8::from_array(std::array::from_fn(|_| StandardNormal.sample(rng)))
}

fn unit(rng: &mut ChaCha8Rng) -> Vec8 {
    loop {
        let g = gaussian(rng);
        let l = g.length();
        if l > 1e-3 {
            return g * (1.0 / l);
        }
    }
}

/// Groups, subgroups per group, and the geometry of `clusters` (field radius 1).
pub const CLUSTER_GROUPS: u32 = 4;
/// Subgroups per group.
pub const CLUSTER_SUBGROUPS: u32 = 5;
/// The geometry of `clusters` for `tokens` tokens, in field radii (R = 1).
///
/// Each subgroup of `M` tokens settles into a droplet of radius about
/// `a = (M / 30)^{1/8}` (30 neighbours within R is the default CDNA's target).
/// Members start Gaussian with `σ = 0.8 a / √8`: their mean distance from the
/// centre is then 0.8 a, every member is close enough to the bulk to be drawn
/// in, and the start is only a little denser than the target (36 neighbours per
/// token on average at 10K tokens, 59 at 100K; the central density does not grow
/// with `M`, where a fixed σ would give every token all `M` of its subgroup's
/// members once `M` is large). Subgroup centres sit `3a + 1` from their group's
/// centre and at least that far apart, so settled droplets stay more than a field
/// radius apart; group centres `6 ×` that from the origin and from each other.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClusterGeometry {
    /// Gaussian σ of the members around their subgroup's centre, per axis.
    pub member_sigma: f32,
    /// Distance of a subgroup's centre from its group's, and least distance
    /// between the subgroup centres of a group.
    pub subgroup_distance: f32,
    /// Distance of a group's centre from the origin, and least distance between
    /// group centres.
    pub group_distance: f32,
}

/// `σ` of the members in units of `a / √8` (see [`ClusterGeometry`]).
const MEMBER_SPREAD: f32 = 0.8;

impl ClusterGeometry {
    /// The geometry for `tokens` tokens.
    pub fn for_tokens(tokens: usize) -> Self {
        let per_subgroup = tokens
            .div_ceil((CLUSTER_GROUPS * CLUSTER_SUBGROUPS) as usize)
            .max(1);
        let a = (per_subgroup as f64 / UNIFORM_TARGET_NEIGHBORS).powf(1.0 / DIM as f64) as f32;
        let subgroup_distance = 3.0 * a + 1.0;
        Self {
            member_sigma: MEMBER_SPREAD * a / (DIM as f32).sqrt(),
            subgroup_distance,
            group_distance: 6.0 * subgroup_distance,
        }
    }
}

/// `count` points at `distance` from `centre` in random directions, each at
/// least `distance` from the others (rejection sampling; in 8D two random
/// directions are that far apart, 60° or more, about four times in five).
fn spread(rng: &mut ChaCha8Rng, centre: Vec8, distance: f32, count: u32) -> Vec<Vec8> {
    let mut out: Vec<Vec8> = Vec::with_capacity(count as usize);
    while out.len() < count as usize {
        let x = centre + unit(rng) * distance;
        if out.iter().all(|y| (x - *y).length() >= distance) {
            out.push(x);
        }
    }
    out
}

fn clusters(p: &ScenarioParams) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let geo = ClusterGeometry::for_tokens(p.tokens);
    let groups = spread(&mut rng, Vec8::ZERO, geo.group_distance, CLUSTER_GROUPS);
    let subs: Vec<Vec8> = groups
        .iter()
        .flat_map(|&g| spread(&mut rng, g, geo.subgroup_distance, CLUSTER_SUBGROUPS))
        .collect();
    let k = subs.len();
    let n = p.tokens;
    Box::new((0..n).map(move |i| {
        // Round-robin keeps subgroup sizes within one of each other.
        let s = i % k;
        let spec = TokenSpec::at(subs[s] + gaussian(&mut rng) * geo.member_sigma)
            .with_charge(rng.random_range(0.5..1.0));
        Generated {
            spec,
            label: Some(s as u32),
            group: Some(s as u32 / CLUSTER_SUBGROUPS),
        }
    }))
}

/// Mean neighbours within the cutoff the `uniform` scenario aims for.
pub const UNIFORM_TARGET_NEIGHBORS: f64 = 30.0;

/// Volume of the unit ball in 8D: π⁴ / 24.
const UNIT_BALL_8: f64 =
    std::f64::consts::PI * std::f64::consts::PI * std::f64::consts::PI * std::f64::consts::PI
        / 24.0;

/// The side of the cube in which `n` uniform tokens with cutoff `r` have `target`
/// neighbours on average, tokens near the faces included. The boundary factor is a
/// fixed Monte Carlo estimate of E[Π_k (1 − |d_k| / L)] over `d` uniform in the ball,
/// and L is found by bisection.
pub fn uniform_side(n: usize, r: f64, target: f64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let samples: Vec<[f64; DIM]> = (0..4096)
        .map(|_| {
            let u = unit(&mut rng);
            let rad = r * rng.random_range(0.0f64..1.0).powf(1.0 / DIM as f64);
            std::array::from_fn(|k| u[k] as f64 * rad)
        })
        .collect();
    let expected = |l: f64| {
        let boundary: f64 = samples
            .iter()
            .map(|d| {
                d.iter()
                    .map(|x| (1.0 - x.abs() / l).max(0.0))
                    .product::<f64>()
            })
            .sum::<f64>()
            / samples.len() as f64;
        (n.saturating_sub(1)) as f64 * UNIT_BALL_8 * r.powi(8) / l.powi(8) * boundary
    };
    let (mut lo, mut hi) = (r * 1e-3, r * 1e3);
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if expected(mid) > target {
            lo = mid
        } else {
            hi = mid
        }
    }
    hi
}

fn uniform(p: &ScenarioParams) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let side = uniform_side(p.tokens, 1.0, UNIFORM_TARGET_NEIGHBORS) as f32;
    let half = side / 2.0;
    Box::new((0..p.tokens).map(move |_| {
        let x = Vec8::from_array(std::array::from_fn(|_| rng.random_range(-half..half)));
        Generated {
            spec: TokenSpec::at(x).with_charge(rng.random_range(-1.0..1.0)),
            label: None,
            group: None,
        }
    }))
}

/// Radius of the ball the `collapse` scenario starts in.
pub const COLLAPSE_RADIUS: f32 = 0.05;

fn collapse(p: &ScenarioParams) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    Box::new((0..p.tokens).map(move |_| {
        // Uniform in the 8-ball: a direction, and a radius with density ∝ r⁷.
        let r = COLLAPSE_RADIUS * rng.random_range(0.0f32..1.0).powf(1.0 / DIM as f32);
        Generated {
            spec: TokenSpec::at(unit(&mut rng) * r),
            label: None,
            group: None,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lookup() {
        assert_eq!(find("clusters").unwrap().name, "clusters");
        let e = find("nope").err().unwrap();
        assert!(
            e.to_string().contains("known: clusters, uniform, collapse"),
            "{e}"
        );
        assert_eq!(default_scenario().name, "clusters");
    }

    #[test]
    fn clusters_are_labelled_and_deterministic() {
        let s = find("clusters").unwrap();
        let p = ScenarioParams {
            tokens: 1000,
            seed: 7,
        };
        let a = s.generate(&p);
        let b = s.generate(&p);
        assert_eq!(a.tokens, b.tokens);
        let t = a.truth.unwrap();
        assert_eq!(t.labels.len(), 1000);
        assert_eq!(*t.labels.iter().max().unwrap(), 19);
        assert_eq!(*t.groups.iter().max().unwrap(), 3);
        for (l, g) in t.labels.iter().zip(&t.groups) {
            assert_eq!(l / 5, *g);
        }
        let c = s.generate(&ScenarioParams {
            tokens: 1000,
            seed: 8,
        });
        assert_ne!(a.tokens, c.tokens);
    }

    #[test]
    fn uniform_side_grows_with_n() {
        let a = uniform_side(10_000, 1.0, 30.0);
        let b = uniform_side(1_000_000, 1.0, 30.0);
        assert!(a < b && a > 1.0, "{a} {b}");
    }
}
