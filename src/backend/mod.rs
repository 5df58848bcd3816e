//! Which backend computes the physics of a tick: the [`ForceBackend`] resource.
//!
//! The choice comes from [`SimConfig::backend`](crate::model::config::SimConfig) (CLI
//! `--backend cpu|gpu|auto`) and, on a GPU, [`SimConfig::gpu_tick`](crate::model::config::SimConfig)
//! (`--gpu-tick resident|assisted`); embedders may insert their own `ForceBackend`
//! before adding the plugins. On the CPU and the assisted GPU tick the `Forces`
//! stage fills [`ForceBuffers`](crate::systems::ForceBuffers) and `Integrate`
//! moves the tokens; on the resident GPU tick the device runs `Forces`,
//! `Integrate` and `Constrain`'s token rules, and `Integrate` writes back its
//! positions and velocities (`ForceBuffers::resident`). The later stages read
//! the same components either way, so nothing downstream knows which ran.
//!
//! | asked | GPU usable | runs | on failure |
//! |-------|-----------|------|------------|
//! | `cpu` | —         | CPU  | — |
//! | `gpu` | any adapter, software (lavapipe) included | GPU: resident (default) or assisted | setup: [`SimError::Gpu`](crate::sim::SimError); at run time: that tick and later ones on the CPU, [`error`](ForceBackend::error) set (the runner stops); a world too large for the resident tick: assisted, [`resident_refused`](ForceBackend::resident_refused) set |
//! | `auto`| hardware adapters only | GPU, else CPU with a warning | the CPU from then on, with a warning |

#[cfg(feature = "gpu")]
pub mod gpu;

use crate::model::config::{Backend, GpuTick};
use bevy_ecs::prelude::*;

/// Wall time of the GPU phases of a pass (or summed over passes), and bytes moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct GpuTimings {
    /// Seconds writing buffers until the device holds them.
    pub upload: f64,
    /// Seconds of the compute dispatch.
    pub dispatch: f64,
    /// Seconds copying results back and out of the mapped buffer.
    pub readback: f64,
    /// Bytes written to the device.
    pub uploaded_bytes: u64,
    /// Bytes read back.
    pub readback_bytes: u64,
}

impl GpuTimings {
    /// Adds `o` to these.
    pub fn add(&mut self, o: &GpuTimings) {
        self.upload += o.upload;
        self.dispatch += o.dispatch;
        self.readback += o.readback;
        self.uploaded_bytes += o.uploaded_bytes;
        self.readback_bytes += o.readback_bytes;
    }
}

/// What the resident GPU tick of a [`ForceBackend`] did since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResidentTotals {
    /// Ticks run on the device.
    pub ticks: u64,
    /// Uploads of the whole state (the first, and one after each change the
    /// device did not make: a command, a user system, a new constant).
    pub loads: u64,
    /// Bytes written to the device, in all.
    pub uploaded_bytes: u64,
    /// Bytes read back, in all.
    pub readback_bytes: u64,
}

/// A force backend set aside while another computes (WAL replay switches
/// between the backends its records name without reopening a device).
#[derive(Resource, Debug)]
pub struct SpareBackend(pub ForceBackend);

/// The force backend of a world.
#[derive(Resource, Debug)]
pub struct ForceBackend {
    requested: Backend,
    #[cfg(feature = "gpu")]
    gpu: Option<Box<crate::backend::gpu::GpuForces>>,
    fallback: Option<String>,
    error: Option<String>,
    tick: GpuTick,
    /// The resident tick, opened on the force pass's device at its first use.
    #[cfg(feature = "gpu")]
    resident: Option<Box<crate::backend::gpu::ResidentEngine>>,
    /// Why the resident tick gave way to the assisted one.
    resident_refused: Option<String>,
}

impl Default for ForceBackend {
    fn default() -> Self {
        Self::cpu()
    }
}

impl ForceBackend {
    /// The CPU.
    pub fn cpu() -> Self {
        Self {
            requested: Backend::Cpu,
            #[cfg(feature = "gpu")]
            gpu: None,
            fallback: None,
            error: None,
            tick: GpuTick::Resident,
            #[cfg(feature = "gpu")]
            resident: None,
            resident_refused: None,
        }
    }

    /// What the GPU runs each tick when it computes (`resident` unless set).
    pub fn gpu_tick(&self) -> GpuTick {
        self.tick
    }

    /// Chooses what the GPU runs each tick from the next one on; choosing
    /// `resident` again clears an earlier [`resident_refused`](Self::resident_refused).
    pub fn set_gpu_tick(&mut self, tick: GpuTick) {
        if tick == GpuTick::Resident {
            self.resident_refused = None;
        }
        self.tick = tick;
    }

    /// What the GPU runs now: `None` on the CPU; `assisted` after the resident
    /// tick was refused.
    pub fn active_tick(&self) -> Option<GpuTick> {
        (self.active() == Backend::Gpu).then(|| {
            if self.tick == GpuTick::Resident && self.resident_refused.is_none() {
                GpuTick::Resident
            } else {
                GpuTick::Assisted
            }
        })
    }

    /// Why the resident tick gave way to the assisted one (a world whose rows
    /// do not fit the device, a device without enough storage bindings).
    pub fn resident_refused(&self) -> Option<&str> {
        self.resident_refused.as_deref()
    }

    /// The resident tick, opened on the force pass's device at its first call
    /// (`None` when [`active_tick`](Self::active_tick) is not `resident`, or when
    /// it cannot open: then it is refused, with a warning).
    #[cfg(feature = "gpu")]
    pub fn resident_mut(&mut self) -> Option<&mut crate::backend::gpu::ResidentEngine> {
        if self.active_tick() != Some(GpuTick::Resident) {
            return None;
        }
        if self.resident.is_none() {
            let ctx = self.gpu.as_ref()?.context().clone();
            match crate::backend::gpu::ResidentEngine::new(ctx) {
                Ok(r) => self.resident = Some(Box::new(r)),
                Err(e) => {
                    self.refuse_resident(e.to_string());
                    return None;
                }
            }
        }
        self.resident.as_deref_mut()
    }

    /// What the resident tick did since it opened (`None` if it never did).
    pub fn resident_totals(&self) -> Option<ResidentTotals> {
        #[cfg(feature = "gpu")]
        if let Some(r) = &self.resident {
            return Some(r.totals());
        }
        None
    }

    /// Host bytes the resident tick keeps (its copies of what the device
    /// holds), if it was opened.
    pub fn resident_host_bytes(&self) -> Option<u64> {
        #[cfg(feature = "gpu")]
        if let Some(r) = &self.resident {
            return Some(r.host_bytes());
        }
        None
    }

    /// The resident tick, if it was opened.
    #[cfg(feature = "gpu")]
    pub fn resident(&self) -> Option<&crate::backend::gpu::ResidentEngine> {
        self.resident.as_deref()
    }

    /// Hands the GPU's ticks to the assisted force pass, saying why.
    pub fn refuse_resident(&mut self, reason: String) {
        tracing::warn!(
            target: "neurograph::gpu",
            "the resident GPU tick cannot run: {reason}; the GPU computes the forces only (gpu_tick assisted)"
        );
        #[cfg(feature = "gpu")]
        {
            self.resident = None;
        }
        self.resident_refused = Some(reason);
    }

    /// Opens what `requested` asks for. Never fails: a GPU that cannot be used
    /// leaves the CPU in charge, with [`error`](Self::error) set when the GPU was
    /// required, or [`fallback`](Self::fallback) (and a warning) under `auto`.
    pub fn resolve(requested: Backend) -> Self {
        let mut out = Self {
            requested,
            ..Self::cpu()
        };
        if requested == Backend::Cpu {
            return out;
        }
        #[cfg(feature = "gpu")]
        {
            use crate::backend::gpu::{AdapterPolicy, GpuContext, GpuForces};
            let policy = if requested == Backend::Auto {
                AdapterPolicy::Hardware
            } else {
                AdapterPolicy::Any
            };
            match GpuContext::new(policy).and_then(GpuForces::new) {
                Ok(gpu) => {
                    let name = gpu.context().describe();
                    tracing::info!(target: "neurograph::gpu", "forces on the GPU: {name}");
                    out.gpu = Some(Box::new(gpu));
                }
                Err(e) => out.failed(e.to_string()),
            }
        }
        #[cfg(not(feature = "gpu"))]
        out.failed("this build has no GPU support (built without the `gpu` cargo feature)".into());
        out
    }

    /// A backend running on a GPU force pass set up by the caller.
    #[cfg(feature = "gpu")]
    pub fn with_gpu(gpu: crate::backend::gpu::GpuForces) -> Self {
        Self {
            requested: Backend::Gpu,
            gpu: Some(Box::new(gpu)),
            ..Self::cpu()
        }
    }

    /// What was asked for.
    pub fn requested(&self) -> Backend {
        self.requested
    }

    /// What computes forces now: [`Backend::Cpu`] or [`Backend::Gpu`].
    pub fn active(&self) -> Backend {
        #[cfg(feature = "gpu")]
        if self.gpu.is_some() {
            return Backend::Gpu;
        }
        Backend::Cpu
    }

    /// The GPU adapter ("name (type, driver)") when the GPU computes forces.
    pub fn adapter(&self) -> Option<String> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Some(g.context().describe());
        }
        None
    }

    /// Why the GPU, required with `gpu`, is not computing forces.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Why `auto` runs on the CPU.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The GPU force pass, when active.
    #[cfg(feature = "gpu")]
    pub fn gpu(&self) -> Option<&crate::backend::gpu::GpuForces> {
        self.gpu.as_deref()
    }

    /// The GPU force pass, when active.
    #[cfg(feature = "gpu")]
    pub fn gpu_mut(&mut self) -> Option<&mut crate::backend::gpu::GpuForces> {
        self.gpu.as_deref_mut()
    }

    /// The last GPU pass's timings, the sum over every pass, and the pass count
    /// (`None` when the GPU is not in use).
    pub fn gpu_timings(&self) -> Option<(GpuTimings, GpuTimings, u64)> {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return Some((g.last_timings(), g.total_timings(), g.passes()));
        }
        None
    }

    /// Drops the GPU after a failure: the CPU takes over.
    pub fn failed(&mut self, reason: String) {
        #[cfg(feature = "gpu")]
        {
            self.gpu = None;
            self.resident = None;
        }
        if self.requested == Backend::Auto {
            tracing::warn!(
                target: "neurograph::gpu",
                "backend auto: {reason}; computing forces on the CPU"
            );
            self.fallback = Some(reason);
        } else {
            tracing::error!(target: "neurograph::gpu", "backend gpu: {reason}");
            self.error = Some(reason);
        }
    }
}
