//! `neurograph._neurograph`: the Rust side of the `neurograph` Python package.
//!
//! A [`Simulation`] owns a [`Session`]: the same run `neurograph run` drives
//! (a scenario or a CSV input, an optional write-ahead log, the run summary),
//! stepped from Python. Arrays cross as numpy arrays built from one pass over
//! the ECS tables ([`neurograph::sim::Simulation::column`]); no per-token
//! Python objects are made.

use neurograph::app::embed;
use neurograph::app::runner::{GivenTokens, RunConfig, RunError, RunOptions, RunSummary, Session};
use neurograph::model::cdna::Profile;
use neurograph::model::commands::{CommandError, SetValue, SimCommand};
use neurograph::model::components::{Charge, Mass};
use neurograph::model::components::{Field, LinkSpec, Position, TokenId, TokenSpec, Velocity};
use neurograph::model::math::Vec8;
use neurograph::model::registry::LinkGraph;
use neurograph::wal::{self, Durability, RecoverOptions};
use numpy::{AllowTypeChange, PyArray1, PyArrayLike1, PyArrayLike2, PyArrayMethods};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;

/// The session, movable between Python threads.
///
/// `neurograph::sim::Simulation` is neither `Send` nor `Sync` only because of
/// closures bevy's `App` keeps: its runner (`Box<dyn FnOnce(App)>`, never
/// called here: the engine steps the world itself) and its sub-apps' extract
/// functions (`Send` but not `Sync`; the engine has no sub-app). Its world is
/// `Send + Sync` and holds no non-`Send` resource, and the tick runs on the
/// engine's own thread pool. pyo3's borrow flag gives one thread at a time
/// `&mut` access (another thread's call while `step` runs is refused with
/// "already borrowed"), so sharing the handle between threads is sound.
struct Shared(Session);
// SAFETY: see the type's documentation: nothing in the session is tied to a
// thread, and pyo3 serialises access through its borrow flag.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` is only used under pyo3's shared borrow, which
// excludes a concurrent `&mut`.
unsafe impl Sync for Shared {}

// Methods, not field accesses, inside `detach`: a closure that named
// `shared.0` would capture the (non-`Send`) session itself.
impl Shared {
    fn step(&mut self) -> Result<(), RunError> {
        self.0.step()
    }

    fn spawn_batch(&mut self, specs: Vec<TokenSpec>) -> Result<TokenId, CommandError> {
        self.0.sim_mut().spawn_batch(specs)
    }

    fn close(self) -> Result<(RunSummary, Shared2), RunError> {
        self.0.close().map(|(summary, sim)| (summary, Shared2(sim)))
    }
}

/// A NeuroGraph simulation: tokens in an 8D space, stepped tick by tick.
///
/// Built from a built-in scenario (`scenario`, `tokens`, `seed`) or a CSV file
/// (`Simulation.from_csv`), with an optional run configuration (`config`: a
/// TOML file or a dict with the same keys), CDNA (`cdna`: a profile name or a
/// TOML file) and write-ahead log (`wal`: a directory; a WAL of the same run
/// there is resumed). Arrays come back in increasing token-id order (the
/// order of `ids()`).
#[pyclass(module = "neurograph")]
struct Simulation {
    session: Option<Shared>,
    /// The reduction report of `from_embeddings`, as JSON.
    embedding: Option<String>,
    /// Why the run is over (a failed tick, a closed WAL).
    ended: Option<String>,
}

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A refused command as Python sees it: bad values are `ValueError`s (a batch
/// names its row), unknown ids `KeyError`s, exceeded quotas `RuntimeError`s.
fn command_error(e: CommandError) -> PyErr {
    match e {
        CommandError::BatchItem { index, source } => {
            PyValueError::new_err(format!("row {index}: {source}"))
        }
        CommandError::UnknownToken(_) => PyKeyError::new_err(e.to_string()),
        CommandError::Quota(_) => PyRuntimeError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn run_error(e: RunError) -> PyErr {
    match e {
        RunError::Command(CommandError::Quota(_)) => PyRuntimeError::new_err(e.to_string()),
        RunError::Config(_) | RunError::Cdna(_) | RunError::Input(_) | RunError::Command(_) => {
            value_error(e)
        }
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

fn to_json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// A run configuration from a path (TOML) or a dict (the same keys).
fn run_config(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<RunConfig> {
    let Some(c) = config else {
        return Ok(RunConfig::default());
    };
    if c.is_instance_of::<PyDict>() {
        let text: String = py.import("json")?.call_method1("dumps", (c,))?.extract()?;
        return serde_json::from_str(&text).map_err(|e| value_error(format!("config: {e}")));
    }
    let path: PathBuf = c.extract().map_err(|_| {
        PyValueError::new_err("config must be a dict or the path of a TOML run configuration")
    })?;
    RunConfig::load(&path).map_err(run_error)
}

/// Options shared by the constructors.
struct Opened<'a, 'py> {
    config: Option<&'a Bound<'py, PyAny>>,
    cdna: Option<&'a Bound<'py, PyAny>>,
    wal: Option<PathBuf>,
    durability: Option<&'a str>,
    snapshot_every: Option<u64>,
    threads: Option<usize>,
    memory_budget: Option<u64>,
}

impl Opened<'_, '_> {
    fn options(
        &self,
        py: Python<'_>,
        edit: impl FnOnce(&mut RunConfig) -> PyResult<()>,
    ) -> PyResult<RunOptions> {
        let mut config = run_config(py, self.config)?;
        edit(&mut config)?;
        if let Some(c) = self.cdna {
            let text: String = if c.is_instance_of::<PyString>() {
                c.extract()?
            } else {
                let p: PathBuf = c.extract().map_err(|_| {
                    PyValueError::new_err("cdna must be a profile name or the path of a TOML file")
                })?;
                p.display().to_string()
            };
            if text.parse::<Profile>().is_ok() {
                config.profile = Some(text);
                config.cdna = None;
            } else {
                config.cdna = Some(PathBuf::from(text));
                config.profile = None;
            }
        }
        if let Some(d) = self.durability {
            config.wal.durability = d.parse::<Durability>().map_err(value_error)?;
        }
        if let Some(s) = self.snapshot_every {
            config.wal.snapshot_every = s;
        }
        if let Some(t) = self.threads {
            config.sim.threads = t;
        }
        if let Some(b) = self.memory_budget {
            config.quotas.memory_budget_bytes = b;
        }
        Ok(RunOptions {
            config,
            wal_dir: self.wal.clone(),
            ..RunOptions::default()
        })
    }
}

impl Simulation {
    fn open(py: Python<'_>, opts: RunOptions) -> PyResult<Self> {
        let session = py
            .detach(move || Session::open(opts).map(Shared))
            .map_err(run_error)?;
        Ok(Self {
            session: Some(session),
            embedding: None,
            ended: None,
        })
    }

    fn session(&self) -> PyResult<&Session> {
        match &self.session {
            Some(s) => Ok(&s.0),
            None => Err(self.ended_error()),
        }
    }

    fn session_mut(&mut self) -> PyResult<&mut Session> {
        if self.session.is_none() {
            return Err(self.ended_error());
        }
        Ok(&mut self.session.as_mut().expect("checked above").0)
    }

    fn ended_error(&self) -> PyErr {
        PyRuntimeError::new_err(format!(
            "the simulation has ended: {}",
            self.ended.as_deref().unwrap_or("closed")
        ))
    }

    fn apply(&mut self, cmd: SimCommand) -> PyResult<()> {
        self.session_mut()?
            .sim_mut()
            .apply(cmd)
            .map(|_| ())
            .map_err(command_error)
    }

    fn column<'py, C: bevy_ecs::component::Component, const K: usize>(
        &mut self,
        py: Python<'py>,
        f: impl Fn(&C) -> [f32; K],
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = self.session_mut()?.sim_mut().column::<C, f32, K>(f);
        let n = v.len() / K;
        let a = PyArray1::from_vec(py, v);
        if K == 1 {
            Ok(a.into_any())
        } else {
            Ok(a.reshape([n, K])?.into_any())
        }
    }
}

fn vec8(v: &[f32], what: &str) -> PyResult<Vec8> {
    let a: [f32; 8] = v
        .try_into()
        .map_err(|_| value_error(format!("{what} must have 8 components, not {}", v.len())))?;
    Ok(Vec8::from_array(a))
}

/// Query hits as numpy arrays: ids and distances.
type Hits<'py> = (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<f32>>);

fn hit_arrays(py: Python<'_>, hits: Vec<(TokenId, f32)>) -> Hits<'_> {
    let (ids, d): (Vec<u64>, Vec<f32>) = hits.into_iter().map(|(id, d)| (id.0, d)).unzip();
    (PyArray1::from_vec(py, ids), PyArray1::from_vec(py, d))
}

/// An optional per-row column: absent, or shape `(n,)`.
fn optional_column(
    col: &Option<PyArrayLike1<'_, f32, AllowTypeChange>>,
    n: usize,
    name: &str,
) -> PyResult<Option<Vec<f32>>> {
    let Some(a) = col else {
        return Ok(None);
    };
    let a = a.as_array();
    if a.len() != n {
        return Err(value_error(format!(
            "{name} has {} rows; positions has {n}",
            a.len()
        )));
    }
    Ok(Some(a.iter().copied().collect()))
}

#[pymethods]
impl Simulation {
    /// Builds a simulation of a built-in scenario (`neurograph scenarios` lists
    /// them; default `clusters`) with `tokens` tokens and RNG `seed` (42).
    ///
    /// Raises `ValueError` for bad settings (an unknown scenario, key or
    /// profile, a bad value, a bad CDNA file) and `RuntimeError` when a WAL
    /// cannot be created or recovered.
    #[new]
    #[pyo3(signature = (scenario=None, tokens=None, seed=None, cdna=None, config=None, *, wal=None, durability=None, snapshot_every=None, threads=None, memory_budget=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        scenario: Option<String>,
        tokens: Option<usize>,
        seed: Option<u64>,
        cdna: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyAny>>,
        wal: Option<PathBuf>,
        durability: Option<&str>,
        snapshot_every: Option<u64>,
        threads: Option<usize>,
        memory_budget: Option<u64>,
    ) -> PyResult<Self> {
        let opened = Opened {
            config,
            cdna,
            wal,
            durability,
            snapshot_every,
            threads,
            memory_budget,
        };
        let opts = opened.options(py, |c| {
            if scenario.is_some() {
                c.scenario = scenario;
            }
            if tokens.is_some() {
                c.tokens = tokens;
            }
            if seed.is_some() {
                c.seed = seed;
            }
            Ok(())
        })?;
        Self::open(py, opts)
    }

    /// Builds a simulation of the tokens in a CSV file (the `--input` format:
    /// `x0..x7` and optional `charge, mass, radius, strength, label, group`).
    #[staticmethod]
    #[pyo3(signature = (path, *, seed=None, cdna=None, config=None, wal=None, durability=None, snapshot_every=None, threads=None, memory_budget=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_csv(
        py: Python<'_>,
        path: PathBuf,
        seed: Option<u64>,
        cdna: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyAny>>,
        wal: Option<PathBuf>,
        durability: Option<&str>,
        snapshot_every: Option<u64>,
        threads: Option<usize>,
        memory_budget: Option<u64>,
    ) -> PyResult<Self> {
        let opened = Opened {
            config,
            cdna,
            wal,
            durability,
            snapshot_every,
            threads,
            memory_budget,
        };
        let opts = opened.options(py, |c| {
            c.input = Some(path);
            c.scenario = None;
            c.tokens = None;
            if seed.is_some() {
                c.seed = seed;
            }
            Ok(())
        })?;
        Self::open(py, opts)
    }

    /// Builds a simulation of a data set of any dimension `8 <= D <= 4096`:
    /// `X` `(N, D)` (any real dtype) is reduced to 8D by PCA and scaled so that
    /// the median distance to the 10th nearest neighbour is 1.1 field radii
    /// (or by `scale`, when given). `labels` (fine) and `groups` (coarse)
    /// `(N,)` non-negative integers become the ground truth of the ARI in
    /// `summary()`; either one alone serves for both levels. The reduction is reported by the
    /// `embedding` property (explained variance, the scale chosen).
    ///
    /// Raises `ValueError` for a bad shape, a NaN or infinite value (naming
    /// the row and column), a bad scale, or labels of the wrong length.
    #[staticmethod]
    #[pyo3(name = "from_embeddings", signature = (X, labels=None, groups=None, *, scale=None, seed=None, cdna=None, config=None, wal=None, durability=None, snapshot_every=None, threads=None, memory_budget=None))]
    #[allow(clippy::too_many_arguments, non_snake_case)]
    fn from_embeddings<'py>(
        py: Python<'py>,
        X: PyArrayLike2<'py, f64, AllowTypeChange>,
        labels: Option<PyArrayLike1<'py, i64, AllowTypeChange>>,
        groups: Option<PyArrayLike1<'py, i64, AllowTypeChange>>,
        scale: Option<f64>,
        seed: Option<u64>,
        cdna: Option<&Bound<'py, PyAny>>,
        config: Option<&Bound<'py, PyAny>>,
        wal: Option<PathBuf>,
        durability: Option<&str>,
        snapshot_every: Option<u64>,
        threads: Option<usize>,
        memory_budget: Option<u64>,
    ) -> PyResult<Self> {
        let a = X.as_array();
        let (rows, dims) = a.dim();
        let values: Vec<f64> = a.iter().copied().collect();
        let label_column = |l: &Option<PyArrayLike1<'py, i64, AllowTypeChange>>, name: &str| {
            let Some(l) = l else {
                return Ok(None);
            };
            let l = l.as_array();
            if l.len() != rows {
                return Err(value_error(format!(
                    "{name} has {} rows; X has {rows}",
                    l.len()
                )));
            }
            l.iter()
                .enumerate()
                .map(|(i, &v)| {
                    u32::try_from(v).map_err(|_| {
                        value_error(format!("{name}[{i}] = {v}: must be in [0, {}]", u32::MAX))
                    })
                })
                .collect::<PyResult<Vec<u32>>>()
                .map(Some)
        };
        let labels = label_column(&labels, "labels")?;
        let groups = label_column(&groups, "groups")?;
        let e = py
            .detach(|| embed::reduce(&values, rows, dims, scale))
            .map_err(value_error)?;
        let tokens = embed::tokens(&e, labels.as_deref(), groups.as_deref());
        let opened = Opened {
            config,
            cdna,
            wal,
            durability,
            snapshot_every,
            threads,
            memory_budget,
        };
        let mut opts = opened.options(py, |c| {
            if seed.is_some() {
                c.seed = seed;
            }
            Ok(())
        })?;
        opts.given = Some(GivenTokens {
            name: "embeddings".into(),
            tokens: std::sync::Arc::new(tokens),
        });
        let mut sim = Self::open(py, opts)?;
        sim.embedding = Some(to_json(&e)?);
        Ok(sim)
    }

    /// The reduction report of `from_embeddings` (`None` otherwise): a dict
    /// with `rows`, `dims`, `explained_variance_ratio` (8 floats),
    /// `explained_variance`, `knn_k`, `knn_median` (input units),
    /// `auto_scale`, `scale` (applied) and `knn_target` (field radii).
    #[getter]
    fn embedding<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.embedding
            .as_deref()
            .map(|t| json_to_py(py, t))
            .transpose()
    }

    /// Runs `n` ticks with the GIL released; returns the tick reached.
    ///
    /// Ctrl-C (`KeyboardInterrupt`) is checked between ticks: the ticks run
    /// so far stay applied (and journaled). A tick that fails (a panic with no
    /// WAL to recover from, a failed WAL writer) ends the simulation with a
    /// `RuntimeError`.
    #[pyo3(signature = (n=1))]
    fn step(&mut self, py: Python<'_>, n: u64) -> PyResult<u64> {
        for _ in 0..n {
            let shared = match &mut self.session {
                Some(s) => s,
                None => return Err(self.ended_error()),
            };
            if let Err(e) = py.detach(|| shared.step()) {
                self.ended = Some(e.to_string());
                self.session = None;
                return Err(PyRuntimeError::new_err(e.to_string()));
            }
            if let Err(e) = py.check_signals() {
                shared.0.mark_interrupted();
                return Err(e);
            }
        }
        Ok(self.session()?.tick())
    }

    /// Ticks completed.
    #[getter]
    fn tick(&self) -> PyResult<u64> {
        Ok(self.session()?.tick())
    }

    /// The state digest (16 hex digits), as `neurograph run --json` prints it.
    #[getter]
    fn digest(&mut self) -> PyResult<String> {
        Ok(self.session_mut()?.sim_mut().digest().to_string())
    }

    /// Live tokens.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.session()?.sim().token_count() as usize)
    }

    /// Live token ids, increasing: `(N,) uint64`.
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(PyArray1::from_vec(py, self.session()?.sim().ids()))
    }

    /// Positions: `(N, 8) float32`, in field-radius units.
    fn positions<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Position, 8>(py, |p| p.0.to_array())
    }

    /// Velocities: `(N, 8) float32`, length units per unit of simulated time.
    fn velocities<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Velocity, 8>(py, |v| v.0.to_array())
    }

    /// Charges in `[-1, 1]`: `(N,) float32`.
    fn charges<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Charge, 1>(py, |c| [c.0])
    }

    /// Masses: `(N,) float32`.
    fn masses<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Mass, 1>(py, |m| [m.0])
    }

    /// Field radii (the pair cutoff): `(N,) float32`.
    fn radii<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Field, 1>(py, |f| [f.radius])
    }

    /// Field strengths in `[0, 1]`: `(N,) float32`.
    fn strengths<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.column::<Field, 1>(py, |f| [f.strength])
    }

    /// The links: `(pairs, weights)`, `pairs` `(L, 2) uint64` (each pair once,
    /// smaller id first, sorted) and `weights` `(L,) float32`.
    fn links<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyArray1<f32>>)> {
        let graph = self.session()?.sim().world().resource::<LinkGraph>();
        let mut pairs = Vec::with_capacity(graph.len() as usize * 2);
        let mut weights = Vec::with_capacity(graph.len() as usize);
        for ((a, b), spec) in graph.iter() {
            pairs.push(a.0);
            pairs.push(b.0);
            weights.push(spec.weight);
        }
        let l = weights.len();
        let pairs = PyArray1::from_vec(py, pairs).reshape([l, 2])?.into_any();
        Ok((pairs, PyArray1::from_vec(py, weights)))
    }

    /// Each token's group at hierarchy `level` (1 = the finest), or −1 where
    /// it has none: `(N,) int64`, rows as `ids()`. As of the last detection.
    #[pyo3(signature = (level=1))]
    fn groups<'py>(&self, py: Python<'py>, level: usize) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let sim = self.session()?.sim();
        let h = sim.hierarchy();
        if level == 0 {
            return Err(value_error("level = 0: groups start at level 1"));
        }
        let mut of: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        if let Some(groups) = h.levels.first() {
            for g in groups {
                for &m in &g.members {
                    of.insert(m, g.id.0 as i64);
                }
            }
        }
        if level > h.levels.len() {
            of.clear();
        }
        // Walk the token → group map up to `level`.
        for k in 1..level.min(h.levels.len()) {
            let mut parent = std::collections::HashMap::new();
            if let Some(groups) = h.levels.get(k) {
                for g in groups {
                    for &m in &g.members {
                        parent.insert(m as i64, g.id.0 as i64);
                    }
                }
            }
            for v in of.values_mut() {
                *v = parent.get(v).copied().unwrap_or(-1);
            }
        }
        let out: Vec<i64> = sim
            .ids()
            .iter()
            .map(|id| of.get(id).copied().unwrap_or(-1))
            .collect();
        Ok(PyArray1::from_vec(py, out))
    }

    /// The `k` tokens nearest to `point` (8 numbers), nearest first (ties by
    /// id), exact: `(ids (k,) uint64, distances (k,) float32)`. The index is a
    /// k-d tree over the current positions, rebuilt after a tick or command.
    #[pyo3(signature = (point, k=10))]
    fn nearest<'py>(&mut self, py: Python<'py>, point: Vec<f32>, k: usize) -> PyResult<Hits<'py>> {
        let p = vec8(&point, "point")?;
        let hits = self
            .session_mut()?
            .sim_mut()
            .nearest(p, k)
            .map_err(value_error)?;
        Ok(hit_arrays(py, hits))
    }

    /// Every token within `radius` of `point`, nearest first (ties by id),
    /// exact: `(ids (M,) uint64, distances (M,) float32)`.
    fn within<'py>(
        &mut self,
        py: Python<'py>,
        point: Vec<f32>,
        radius: f32,
    ) -> PyResult<Hits<'py>> {
        let p = vec8(&point, "point")?;
        let hits = self
            .session_mut()?
            .sim_mut()
            .within(p, radius)
            .map_err(value_error)?;
        Ok(hit_arrays(py, hits))
    }

    /// The group table, as of the last detection: a dict of arrays, one row
    /// per group: `id` `(G,) int64`, `level` `(G,) uint8`, `size` `(G,) int64`
    /// (tokens under it), `parent` `(G,) int64` (−1 at the top), `centre`
    /// `(G, 8) float32`, `mass`, `charge`, `radius` `(G,) float32`, `since`
    /// `(G,) int64` (the tick it appeared).
    fn group_table<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.session()?.sim().hierarchy();
        let mut parent_of = std::collections::HashMap::new();
        for groups in h.levels.iter().skip(1) {
            for g in groups {
                for &m in &g.members {
                    parent_of.insert(m, g.id.0 as i64);
                }
            }
        }
        let all: Vec<_> = h.levels.iter().flatten().collect();
        let d = PyDict::new(py);
        let ints = |f: &dyn Fn(&neurograph::geometry::hierarchy::Group) -> i64| {
            PyArray1::from_vec(py, all.iter().map(|g| f(g)).collect::<Vec<i64>>())
        };
        let floats = |f: &dyn Fn(&neurograph::geometry::hierarchy::Group) -> f32| {
            PyArray1::from_vec(py, all.iter().map(|g| f(g)).collect::<Vec<f32>>())
        };
        d.set_item("id", ints(&|g| g.id.0 as i64))?;
        d.set_item(
            "level",
            PyArray1::from_vec(py, all.iter().map(|g| g.level).collect::<Vec<u8>>()),
        )?;
        d.set_item("size", ints(&|g| g.size as i64))?;
        d.set_item(
            "parent",
            ints(&|g| parent_of.get(&g.id.0).copied().unwrap_or(-1)),
        )?;
        let centres: Vec<f32> = all.iter().flat_map(|g| g.centre.to_array()).collect();
        d.set_item(
            "centre",
            PyArray1::from_vec(py, centres).reshape([all.len(), 8])?,
        )?;
        d.set_item("mass", floats(&|g| g.mass))?;
        d.set_item("charge", floats(&|g| g.charge))?;
        d.set_item("radius", floats(&|g| g.radius))?;
        d.set_item("since", ints(&|g| g.since as i64))?;
        Ok(d)
    }

    /// Spawns `N` tokens, all or nothing; returns their ids `(N,) uint64`.
    ///
    /// `positions` `(N, 8)`; `charges` (default 1), `masses` (1), `radii` (1),
    /// `strengths` (1) `(N,)`; any real dtype (converted to float32). The
    /// engine validates every value against the CDNA; a bad one raises
    /// `ValueError` naming the row, field, value and limit, and nothing is
    /// spawned. An exceeded quota raises `RuntimeError`.
    #[pyo3(signature = (positions, charges=None, masses=None, radii=None, strengths=None))]
    fn spawn_batch<'py>(
        &mut self,
        py: Python<'py>,
        positions: PyArrayLike2<'py, f32, AllowTypeChange>,
        charges: Option<PyArrayLike1<'py, f32, AllowTypeChange>>,
        masses: Option<PyArrayLike1<'py, f32, AllowTypeChange>>,
        radii: Option<PyArrayLike1<'py, f32, AllowTypeChange>>,
        strengths: Option<PyArrayLike1<'py, f32, AllowTypeChange>>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let p = positions.as_array();
        let (n, d) = p.dim();
        if d != 8 {
            return Err(value_error(format!(
                "positions has shape ({n}, {d}); it must be (N, 8)"
            )));
        }
        let charges = optional_column(&charges, n, "charges")?;
        let masses = optional_column(&masses, n, "masses")?;
        let radii = optional_column(&radii, n, "radii")?;
        let strengths = optional_column(&strengths, n, "strengths")?;
        let mut specs = Vec::with_capacity(n);
        for (i, row) in p.outer_iter().enumerate() {
            let mut a = [0f32; 8];
            for (k, x) in row.iter().enumerate() {
                a[k] = *x;
            }
            let mut s = TokenSpec::at(Vec8::from_array(a));
            if let Some(c) = &charges {
                s.charge = c[i];
            }
            if let Some(m) = &masses {
                s.mass = m[i];
            }
            if let Some(r) = &radii {
                s.radius = r[i];
            }
            if let Some(st) = &strengths {
                s.strength = st[i];
            }
            specs.push(s);
        }
        if specs.is_empty() {
            return Ok(PyArray1::from_vec(py, Vec::new()));
        }
        let Some(shared) = &mut self.session else {
            return Err(self.ended_error());
        };
        let first = py
            .detach(|| shared.spawn_batch(specs))
            .map_err(command_error)?;
        Ok(PyArray1::from_vec(
            py,
            (first.0..first.0 + n as u64).collect(),
        ))
    }

    /// Links tokens `a` and `b` (weight and rest length in the CDNA's ranges;
    /// rigidity 0.5 by default). `KeyError` for an unknown id, `ValueError`
    /// for a refused value.
    #[pyo3(signature = (a, b, weight=1.0, rest_length=0.5, rigidity=0.5))]
    fn link(
        &mut self,
        a: u64,
        b: u64,
        weight: f32,
        rest_length: f32,
        rigidity: f32,
    ) -> PyResult<()> {
        let mut spec = LinkSpec::new(weight, rest_length);
        spec.rigidity = rigidity;
        self.apply(SimCommand::Link {
            a: TokenId(a),
            b: TokenId(b),
            spec,
        })
    }

    /// Sets one field of token `id`: `position` or `velocity` (8 numbers),
    /// `charge`, `mass`, `radius` or `strength` (a number).
    fn set(&mut self, id: u64, field: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let scalar = || -> PyResult<f32> {
            value
                .extract::<f32>()
                .map_err(|_| value_error(format!("{field} takes a number")))
        };
        let vector = || -> PyResult<Vec8> {
            let v: Vec<f32> = value
                .extract()
                .map_err(|_| value_error(format!("{field} takes 8 numbers")))?;
            vec8(&v, field)
        };
        let value = match field {
            "position" => SetValue::Position(vector()?),
            "velocity" => SetValue::Velocity(vector()?),
            "charge" => SetValue::Charge(scalar()?),
            "mass" => SetValue::Mass(scalar()?),
            "radius" => SetValue::Radius(scalar()?),
            "strength" => SetValue::Strength(scalar()?),
            other => {
                return Err(value_error(format!(
                    "unknown field {other:?}: position, velocity, charge, mass, radius or strength"
                )));
            }
        };
        self.apply(SimCommand::Set {
            id: TokenId(id),
            value,
        })
    }

    /// Adds `impulse` (8 numbers, momentum units) to token `id`'s momentum.
    fn impulse(&mut self, id: u64, impulse: Vec<f32>) -> PyResult<()> {
        let impulse = vec8(&impulse, "impulse")?;
        self.apply(SimCommand::Impulse {
            id: TokenId(id),
            impulse,
        })
    }

    /// Removes token `id` and its links.
    fn despawn(&mut self, id: u64) -> PyResult<()> {
        self.apply(SimCommand::Despawn(TokenId(id)))
    }

    /// The run summary as a dict, with the keys of `neurograph run --json`
    /// (`digest`, `ari_level1`, `groups_per_level`, `memory`, …).
    fn summary<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.session_mut()?.summary();
        json_to_py(py, &to_json(&s)?)
    }

    /// Ends the run: closes the WAL (a final snapshot; everything durable)
    /// and returns the final summary. The simulation cannot be used after.
    ///
    /// With a WAL, commands applied since the last tick are journaled with the
    /// next tick: `close()` then raises `RuntimeError` and closes nothing
    /// (`step()` once first).
    fn close<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pending = {
            let sim = self.session()?.sim();
            let world = sim.world();
            let journaled = world.get_resource::<neurograph::wal::Journal>().is_some();
            let applied = world
                .get_resource::<neurograph::model::commands::CommandLog>()
                .map_or(0, |l| l.applied.len());
            (journaled && applied > 0).then(|| (applied, sim.tick()))
        };
        if let Some((applied, tick)) = pending {
            let what = if applied == 1 { "command" } else { "commands" };
            return Err(PyRuntimeError::new_err(format!(
                "{applied} {what} applied after tick {tick} not in the WAL yet (commands are \
                 journaled with the next tick): step() once, then close(); nothing was closed"
            )));
        }
        let Some(shared) = self.session.take() else {
            return Err(self.ended_error());
        };
        self.ended = Some("closed".into());
        let (summary, _sim) = py.detach(move || shared.close()).map_err(run_error)?;
        json_to_py(py, &to_json(&summary)?)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.session.is_some() {
            self.close(py)?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &self.session {
            Some(s) => format!(
                "Simulation(tokens={}, links={}, tick={})",
                s.0.sim().token_count(),
                s.0.sim().link_count(),
                s.0.tick()
            ),
            None => "Simulation(ended)".into(),
        }
    }
}

/// A finished simulation, carried out of `detach` (see [`Shared`]).
struct Shared2(#[allow(dead_code)] neurograph::sim::Simulation);
// SAFETY: as for `Shared`.
unsafe impl Send for Shared2 {}

/// Recovers the WAL in `dir` (read-only: a shared lock; nothing is changed)
/// and returns the recovery report as a dict: `tick`, `digest`,
/// `snapshot_tick`, `records_replayed`, `bytes_dropped`, `tail`, …
#[pyfunction]
fn recover<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    let report = py
        .detach(|| {
            wal::recover::<neurograph::sim::Simulation>(
                &dir,
                &RecoverOptions {
                    threads: 0,
                    exclusive: false,
                },
            )
            .map(|r| r.report)
        })
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    json_to_py(py, &to_json(&report)?)
}

/// The names of the built-in scenarios.
#[pyfunction]
fn scenarios() -> Vec<&'static str> {
    neurograph::scenario::SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect()
}

#[pymodule]
fn _neurograph(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Simulation>()?;
    m.add_function(wrap_pyfunction!(recover, m)?)?;
    m.add_function(wrap_pyfunction!(scenarios, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
