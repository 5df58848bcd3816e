//! Run configuration: the time step, the spatial index, threads and quotas.

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

/// Simulation settings that are not part of the constitution.
#[derive(Resource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Time step `dt` in simulated seconds; simulated time is `tick × dt`.
    pub dt: f32,
    /// Verlet skin: neighbour lists hold pairs closer than cutoff + skin and are rebuilt
    /// only when tokens may have moved more than skin / 2. Larger = rarer rebuilds,
    /// longer lists.
    pub neighbor_skin: f32,
    /// Worker threads for the force computation; 0 = one per core.
    pub threads: usize,
    /// Where `Forces` runs: `cpu` (default), `gpu` or `auto` (see [`Backend`]).
    pub backend: Backend,
    /// What the GPU runs when it computes: the whole physics tick
    /// (`resident`, the default) or only the force pass (`assisted`); see
    /// [`GpuTick`]. Written to a WAL manifest only when not the default, so
    /// that manifests of other runs read as before.
    #[serde(skip_serializing_if = "GpuTick::is_resident")]
    pub gpu_tick: GpuTick,
}

/// What a GPU backend runs each tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuTick {
    /// `Forces`, `Integrate` and the token rules of `Constrain` on the device,
    /// with positions, velocities, parameters, links and neighbour rows kept
    /// there across ticks (`backend::gpu::resident`); the CPU reads back what
    /// its own stages need. A world whose rows do not fit the device falls back
    /// to `assisted`, with a warning naming the numbers.
    #[default]
    Resident,
    /// The CPU keeps the neighbour lists and integrates; the GPU computes the
    /// forces of each tick from rows it is sent (`backend::gpu::GpuForces`).
    Assisted,
}

impl GpuTick {
    /// Whether this is the default, `resident`.
    pub fn is_resident(&self) -> bool {
        *self == GpuTick::Resident
    }

    /// `resident` or `assisted`.
    pub fn name(self) -> &'static str {
        match self {
            GpuTick::Resident => "resident",
            GpuTick::Assisted => "assisted",
        }
    }
}

/// A name, whatever the format; anything else is refused naming the names.
impl<'de> Deserialize<'de> for GpuTick {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = GpuTick;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a GPU tick: \"resident\" or \"assisted\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GpuTick, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

impl std::str::FromStr for GpuTick {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "resident" => Ok(GpuTick::Resident),
            "assisted" => Ok(GpuTick::Assisted),
            other => Err(UnknownName::new(
                "gpu tick",
                other,
                &["resident", "assisted"],
            )),
        }
    }
}

/// The force backend a run asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// rayon on the CPU: bit-identical whatever the thread count.
    #[default]
    Cpu,
    /// wgpu compute shaders (the `gpu` feature); no usable adapter is an error.
    Gpu,
    /// A hardware GPU when there is one, else the CPU with a logged warning.
    /// Software adapters (lavapipe, llvmpipe) are used only when asked for with `gpu`.
    Auto,
}

impl Backend {
    /// `cpu`, `gpu` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
            Backend::Auto => "auto",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            "auto" => Ok(Backend::Auto),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// A backend name that is not `cpu`, `gpu` or `auto`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("backend {0:?}: must be cpu, gpu or auto")]
pub struct UnknownBackend(pub String);

/// A setting outside its range; the message names the setting, the value and
/// the rule (`sim.dt = 2: must be a finite number in (0, 1]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting} = {value}: {rule}")]
pub struct InvalidSetting {
    /// The setting, as written in a config file (`sim.dt`, `wal.batch_ms`).
    pub setting: String,
    /// The value given.
    pub value: String,
    /// What it must be.
    pub rule: String,
}

impl InvalidSetting {
    /// `setting = value: rule`.
    pub fn new(setting: impl Into<String>, value: impl ToString, rule: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// A name that is none of the known ones (`unknown backend 'x' (known: cpu,
/// gpu, auto)`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{found}' (known: {})", known.join(", "))]
pub struct UnknownName {
    /// What was looked up (`backend`, `scenario`, `durability`).
    pub what: &'static str,
    /// The name given.
    pub found: String,
    /// The names there are.
    pub known: Vec<&'static str>,
}

impl UnknownName {
    /// `found` is not a known `what`.
    pub fn new(what: &'static str, found: &str, known: &[&'static str]) -> Self {
        Self {
            what,
            found: found.to_string(),
            known: known.to_vec(),
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            dt: 0.05,
            neighbor_skin: 0.15,
            threads: 0,
            backend: Backend::Cpu,
            gpu_tick: GpuTick::Resident,
        }
    }
}

/// The most worker threads a simulation may ask for.
pub const MAX_THREADS: usize = 1024;

impl SimConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// `dt` outside (0, 1], `neighbor_skin` outside [0, 100] (or either not
    /// finite), or more than [`MAX_THREADS`] threads; the error names the
    /// field, the value and the limit.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.dt.is_finite() && self.dt > 0.0 && self.dt <= 1.0) {
            return Err(InvalidSetting::new(
                "sim.dt",
                self.dt,
                "must be a finite number in (0, 1]",
            ));
        }
        if !(self.neighbor_skin.is_finite()
            && self.neighbor_skin >= 0.0
            && self.neighbor_skin <= 100.0)
        {
            return Err(InvalidSetting::new(
                "sim.neighbor_skin",
                self.neighbor_skin,
                "must be a finite number in [0, 100]",
            ));
        }
        if self.threads > MAX_THREADS {
            return Err(InvalidSetting::new(
                "sim.threads",
                self.threads,
                format!("must be at most {MAX_THREADS}"),
            ));
        }
        Ok(())
    }

    /// The number of worker threads this config asks for (resolving 0).
    pub fn resolved_threads(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.threads
        }
    }
}

/// Guardian quotas: hard limits checked before any command changes the world.
#[derive(Resource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Most live tokens.
    pub max_tokens: u64,
    /// Most links.
    pub max_links: u64,
    /// Memory budget for tokens and links, in bytes. Commands are checked
    /// against the world's measured structures ([`MemoryAccount`]); learned
    /// links, and a world not yet measured, against the calibrated
    /// [`Quotas::BYTES_PER_TOKEN`] and [`Quotas::BYTES_PER_LINK`].
    pub memory_budget_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_tokens: 10_000_000,
            max_links: 100_000_000,
            memory_budget_bytes: 1 << 30,
        }
    }
}

/// A command that would exceed a quota.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Too many tokens.
    #[error("token quota exceeded: {current} live + {requested} requested > max_tokens = {limit}")]
    Tokens {
        /// Live tokens.
        current: u64,
        /// Tokens the command adds.
        requested: u64,
        /// The quota.
        limit: u64,
    },
    /// Too many links.
    #[error("link quota exceeded: {current} links + {requested} requested > max_links = {limit}")]
    Links {
        /// Existing links.
        current: u64,
        /// Links the command adds.
        requested: u64,
        /// The quota.
        limit: u64,
    },
    /// Token ids are never reused; the id space is finite.
    #[error(
        "token ids exhausted: next id {next_id} + {requested} requested > {limit} ids (ids are never reused)"
    )]
    Ids {
        /// The next id.
        next_id: u64,
        /// Tokens the command adds.
        requested: u64,
        /// The most ids a world hands out.
        limit: u64,
    },
    /// The world's measured structures, and the new tokens and links at their
    /// measured cost, would exceed the budget.
    #[error(
        "memory budget exceeded: {tokens} tokens and {links} links would need about {needed} \
         bytes (measured at tick {measured_tick}: {measured} bytes for {measured_tokens} tokens, \
         {bytes_per_token} B per token, {bytes_per_link} B per link) > memory_budget_bytes = {limit}"
    )]
    MeasuredMemory {
        /// Tokens after the command.
        tokens: u64,
        /// Links after the command.
        links: u64,
        /// Projected bytes after the command.
        needed: u64,
        /// Bytes measured.
        measured: u64,
        /// Tokens when measured.
        measured_tokens: u64,
        /// The tick of the measurement.
        measured_tick: u64,
        /// The cost per new token the projection used.
        bytes_per_token: u64,
        /// The cost per new link the projection used.
        bytes_per_link: u64,
        /// The budget.
        limit: u64,
    },
    /// The memory estimate would exceed the budget.
    #[error(
        "memory budget exceeded: {tokens} tokens and {links} links need about {needed} bytes \
         > memory_budget_bytes = {limit}"
    )]
    Memory {
        /// Tokens after the command.
        tokens: u64,
        /// Links after the command.
        links: u64,
        /// Estimated bytes.
        needed: u64,
        /// The budget.
        limit: u64,
    },
}

/// The world's structures as last measured (`neurograph::memory::measure`,
/// which the engine runs at the end of a tick when the world has grown or
/// shrunk, and every [`MemoryAccount::EVERY`] ticks), for the memory quota.
/// Zero until the first measurement.
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryAccount {
    /// Bytes of every measured structure.
    pub bytes: u64,
    /// Of those, the bytes of the link structures (graph and force table).
    pub link_bytes: u64,
    /// Tokens when measured.
    pub tokens: u64,
    /// Links when measured.
    pub links: u64,
    /// The tick of the measurement.
    pub tick: u64,
}

impl MemoryAccount {
    /// Ticks between two measurements of a world whose size does not change.
    pub const EVERY: u64 = 16;
    /// Tokens (or links) below which the measured cost per token (per link)
    /// is not used: a small world's fixed costs would dominate it.
    pub const MIN_MEASURED: u64 = 1_000;

    /// The cost of one more token: the measured bytes per token (links
    /// excluded) once the world has [`MIN_MEASURED`](Self::MIN_MEASURED)
    /// tokens, else [`Quotas::BYTES_PER_TOKEN`].
    pub fn bytes_per_token(&self) -> u64 {
        if self.tokens >= Self::MIN_MEASURED {
            (self.bytes - self.link_bytes.min(self.bytes)).div_ceil(self.tokens)
        } else {
            Quotas::BYTES_PER_TOKEN
        }
    }

    /// The cost of one more link, like [`bytes_per_token`](Self::bytes_per_token)
    /// with [`Quotas::BYTES_PER_LINK`].
    pub fn bytes_per_link(&self) -> u64 {
        if self.links >= Self::MIN_MEASURED {
            self.link_bytes.div_ceil(self.links)
        } else {
            Quotas::BYTES_PER_LINK
        }
    }

    /// The bytes a world of `tokens` and `links` would hold: the measured
    /// bytes, plus the tokens and links beyond the measured ones at their
    /// cost. (A world that shrank since is counted at its measured size:
    /// structures keep their capacity.)
    pub fn projected(&self, tokens: u64, links: u64) -> u64 {
        self.bytes
            .saturating_add(
                tokens
                    .saturating_sub(self.tokens)
                    .saturating_mul(self.bytes_per_token()),
            )
            .saturating_add(
                links
                    .saturating_sub(self.links)
                    .saturating_mul(self.bytes_per_link()),
            )
    }
}

impl Quotas {
    /// Bytes per token for a world not yet measured and for learned links'
    /// quota check: the measured structures of 100K `uniform` tokens at tick
    /// 1,000 (default learning and hierarchy), links excluded: 1,167, rounded
    /// up (`neurograph bench steady --tokens 100000 --ticks 1000 --json`, its
    /// `memory`; see docs/performance.md).
    pub const BYTES_PER_TOKEN: u64 = 1_200;
    /// Bytes per link, measured alike: the link graph and the force stage's
    /// link table, 127 B per link for 178,141 links, rounded up.
    pub const BYTES_PER_LINK: u64 = 130;

    /// Checks that the world may grow from (`tokens`, `links`) by (`add_tokens`,
    /// `add_links`), against the measured structures in `account`.
    ///
    /// # Errors
    /// [`QuotaError::Tokens`] or [`QuotaError::Links`] when the new total would
    /// exceed `max_tokens` or `max_links`; [`QuotaError::MeasuredMemory`] when
    /// [`MemoryAccount::projected`] would exceed `memory_budget_bytes`.
    pub fn check_measured(
        &self,
        account: &MemoryAccount,
        tokens: u64,
        links: u64,
        add_tokens: u64,
        add_links: u64,
    ) -> Result<(), QuotaError> {
        self.check_counts(tokens, links, add_tokens, add_links)?;
        let t = tokens.saturating_add(add_tokens);
        let l = links.saturating_add(add_links);
        let needed = account.projected(t, l);
        if needed > self.memory_budget_bytes {
            return Err(QuotaError::MeasuredMemory {
                tokens: t,
                links: l,
                needed,
                measured: account.bytes,
                measured_tokens: account.tokens,
                measured_tick: account.tick,
                bytes_per_token: account.bytes_per_token(),
                bytes_per_link: account.bytes_per_link(),
                limit: self.memory_budget_bytes,
            });
        }
        Ok(())
    }

    fn check_counts(
        &self,
        tokens: u64,
        links: u64,
        add_tokens: u64,
        add_links: u64,
    ) -> Result<(), QuotaError> {
        if tokens.saturating_add(add_tokens) > self.max_tokens {
            return Err(QuotaError::Tokens {
                current: tokens,
                requested: add_tokens,
                limit: self.max_tokens,
            });
        }
        if links.saturating_add(add_links) > self.max_links {
            return Err(QuotaError::Links {
                current: links,
                requested: add_links,
                limit: self.max_links,
            });
        }
        Ok(())
    }

    /// Checks that the world may grow from (`tokens`, `links`) by (`add_tokens`,
    /// `add_links`), with the calibrated per-token and per-link figures: a
    /// decision that depends on the counts alone, so a replay makes it again
    /// exactly (how `Learn` checks the links it forms).
    ///
    /// # Errors
    /// [`QuotaError::Tokens`] or [`QuotaError::Links`] when the new total would exceed
    /// `max_tokens` or `max_links`; [`QuotaError::Memory`] when the estimated bytes
    /// would exceed `memory_budget_bytes`.
    pub fn check(
        &self,
        tokens: u64,
        links: u64,
        add_tokens: u64,
        add_links: u64,
    ) -> Result<(), QuotaError> {
        self.check_counts(tokens, links, add_tokens, add_links)?;
        let t = tokens.saturating_add(add_tokens);
        let l = links.saturating_add(add_links);
        let needed = t
            .saturating_mul(Self::BYTES_PER_TOKEN)
            .saturating_add(l.saturating_mul(Self::BYTES_PER_LINK));
        if needed > self.memory_budget_bytes {
            return Err(QuotaError::Memory {
                tokens: t,
                links: l,
                needed,
                limit: self.memory_budget_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_name_the_limit() {
        let q = Quotas {
            max_tokens: 10,
            max_links: 5,
            memory_budget_bytes: 1 << 20,
        };
        assert!(q.check(5, 0, 5, 0).is_ok());
        let e = q.check(5, 0, 6, 0).unwrap_err();
        assert_eq!(
            e,
            QuotaError::Tokens {
                current: 5,
                requested: 6,
                limit: 10
            }
        );
        assert!(e.to_string().contains("max_tokens = 10"));
        assert!(matches!(q.check(0, 5, 0, 1), Err(QuotaError::Links { .. })));
        let q = Quotas {
            max_tokens: u64::MAX,
            max_links: u64::MAX,
            memory_budget_bytes: 1000,
        };
        assert!(matches!(
            q.check(0, 0, 100, 0),
            Err(QuotaError::Memory { .. })
        ));
    }

    #[test]
    fn default_budget_is_one_gib() {
        let q = Quotas::default();
        assert_eq!(q.memory_budget_bytes, 1 << 30);
        assert_eq!(q.max_tokens, 10_000_000);
    }

    #[test]
    fn a_gpu_tick_is_a_name_and_a_bad_one_lists_the_names() {
        let ok: SimConfig = toml::from_str("gpu_tick = \"assisted\"").unwrap();
        assert_eq!(ok.gpu_tick, GpuTick::Assisted);
        for bad in ["gpu_tick = 3", "gpu_tick = \"x\"", "gpu_tick = { a = 1 }"] {
            let e = toml::from_str::<SimConfig>(bad).unwrap_err().to_string();
            assert!(
                e.contains("resident") && e.contains("assisted"),
                "{bad}: {e}"
            );
        }
        // The default is not written (manifests of other runs read as before).
        let text = toml::to_string(&SimConfig::default()).unwrap();
        assert!(!text.contains("gpu_tick"), "{text}");
        let assisted = SimConfig {
            gpu_tick: GpuTick::Assisted,
            ..Default::default()
        };
        assert!(
            toml::to_string(&assisted)
                .unwrap()
                .contains("gpu_tick = \"assisted\"")
        );
    }

    #[test]
    fn config_validation() {
        assert!(SimConfig::default().validate().is_ok());
        let c = SimConfig {
            dt: f32::NAN,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sim.dt = NaN")
        );
    }
}

/// A TOML error as one line: ``line L, column C (`the line`): message`` (toml's
/// own `Display` draws the offending line over several lines).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The line itself names the key (toml's message often does not).
            let source: String = text
                .lines()
                .nth(line - 1)
                .unwrap_or("")
                .trim()
                .chars()
                .take(80)
                .collect();
            format!("line {line}, column {column} (`{source}`): {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod toml_error_tests {
    #[test]
    fn a_toml_error_is_one_line_with_its_place() {
        let text = "a = 1\nx = [1,\n";
        let e = toml::from_str::<toml::Value>(text).unwrap_err();
        let line = super::toml_error(text, &e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("line 2, column 8 (`x = [1,`): "), "{line}");
    }
}
