//! The GPU context (the `gpu` feature): one wgpu adapter, device and queue, found
//! without ever unwrapping, with the adapter's own limits so large worlds fit when
//! the hardware allows. [`GpuForces`] runs the force pass on it;
//! [`resident::GpuResident`] runs the whole physics tick on it.

mod engine;
mod forces;
pub mod resident;

pub use engine::{HostState, ResidentEngine, ResidentTickOut};

pub use forces::{
    BINDINGS, BindingAccess, ENTRY_POINTS, ForceInput, GpuForces, GpuParams, GpuTimings,
    WORKGROUP_SIZE,
};

/// The WGSL of the force pass, as embedded.
pub const FORCES_WGSL: &str = include_str!("../../../shaders/forces.wgsl");

/// Every WGSL file the library embeds, by file name (for validation).
pub const SHADERS: &[(&str, &str)] = &[
    ("forces.wgsl", FORCES_WGSL),
    ("resident.wgsl", resident::RESIDENT_WGSL),
];

/// Why the GPU cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    /// No adapter (or none of the kind asked for).
    #[error("no usable GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("the GPU adapter {adapter} refused a device: {reason}")]
    Device {
        /// The adapter's name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// A buffer the world needs is larger than the device allows.
    #[error(
        "the world is too large for the GPU: {what} needs {bytes} bytes, the device allows {limit} bytes per buffer; use the CPU backend"
    )]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Bytes needed.
        bytes: u64,
        /// The device limit.
        limit: u64,
    },
    /// More tokens than one dispatch grid can address.
    #[error(
        "the world is too large for the GPU: {tokens} tokens in one dispatch, the device addresses at most {limit}; use the CPU backend"
    )]
    TooManyTokens {
        /// Tokens.
        tokens: u64,
        /// The most the grid allows.
        limit: u64,
    },
    /// The inputs of a pass disagree in length (a caller's bug).
    #[error("bad input to the GPU force pass: {0}")]
    BadInput(String),
    /// The device failed while running the pass (lost, out of memory, validation).
    #[error("the GPU force pass failed: {0}")]
    Failed(String),
}

/// Errors a device reports outside a call (validation, out of memory, its
/// loss), kept for the next [`GpuContext::wait`].
#[derive(Clone, Default)]
pub(crate) struct DeviceErrors(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl DeviceErrors {
    /// Collects `device`'s uncaptured errors and its loss.
    fn watch(device: &wgpu::Device) -> Self {
        let out = Self::default();
        let errors = out.0.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            tracing::error!(target: "neurograph::gpu", "GPU error: {e}");
            if let Ok(mut v) = errors.lock() {
                v.push(e.to_string());
            }
        }));
        let errors = out.0.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut v) = errors.lock() {
                v.push(format!("device lost ({reason:?}): {message}"));
            }
        });
        out
    }

    /// The errors collected since the last check, as one.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        let mut v = self
            .0
            .lock()
            .map_err(|_| GpuError::Failed("error log poisoned".into()))?;
        if v.is_empty() {
            Ok(())
        } else {
            let msg = v.join("; ");
            v.clear();
            Err(GpuError::Failed(msg))
        }
    }
}

/// How long a wait for the device may last before the work counts as failed.
const WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// What kind of adapter a backend choice accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterPolicy {
    /// Any adapter, software ones (lavapipe) included.
    Any,
    /// Hardware only: integrated, discrete or virtual GPUs.
    Hardware,
}

/// An open device. Clones share the device, its queue and its error log, so a
/// force pass and a resident tick can run on one device.
#[derive(Clone)]
pub struct GpuContext {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What the adapter says of itself.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was opened with (the adapter's own).
    pub limits: wgpu::Limits,
    /// The optional features the device was opened with: timestamp queries
    /// when the adapter has them (for profiling), nothing else.
    pub features: wgpu::Features,
    /// The device's uncaptured errors and its loss (one log per device: wgpu
    /// keeps one handler).
    pub(crate) errors: DeviceErrors,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.describe())
            .finish()
    }
}

impl GpuContext {
    /// Opens the first adapter the policy accepts (high performance preferred).
    ///
    /// # Errors
    /// [`GpuError::NoAdapter`] when Vulkan lists no adapter, or (under
    /// [`AdapterPolicy::Hardware`]) only software ones; [`GpuError::Device`] when the
    /// chosen adapter refuses a device with its own limits.
    pub fn new(policy: AdapterPolicy) -> Result<Self, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter(
                "Vulkan lists no adapter (install a driver; for software, Mesa's lavapipe: mesa-vulkan-drivers, libvulkan1)"
                    .into(),
            ));
        }
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let names: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                policy == AdapterPolicy::Any || a.get_info().device_type != wgpu::DeviceType::Cpu
            })
            .min_by_key(rank)
            .ok_or_else(|| {
                GpuError::NoAdapter(format!(
                    "only software adapters ({}); ask for them with --backend gpu",
                    names.join(", ")
                ))
            })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries (for profiling) when the adapter has them; a device
        // that refuses them is asked again without.
        let wanted = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let open = |features: wgpu::Features| {
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("neurograph"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            }))
        };
        let (features, opened) = match open(wanted) {
            Err(_) if !wanted.is_empty() => {
                (wgpu::Features::empty(), open(wgpu::Features::empty()))
            }
            r => (wanted, r),
        };
        let (device, queue) = opened.map_err(|e| GpuError::Device {
            adapter: describe(&info),
            reason: e.to_string(),
        })?;
        let errors = DeviceErrors::watch(&device);
        Ok(Self {
            device,
            queue,
            info,
            limits,
            features,
            errors,
        })
    }

    /// Waits for the device to finish what was submitted (at most 120 s), then
    /// reports any error `errors` collected.
    pub(crate) fn wait(&self, errors: &DeviceErrors) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: Some(WAIT),
            })
            .map_err(|e| GpuError::Failed(format!("waiting for the device: {e}")))?;
        errors.check()
    }

    /// Workgroups of [`WORKGROUP_SIZE`] for `count` invocations, 2-D past the
    /// per-dimension limit.
    pub(crate) fn grid(&self, count: u64) -> Result<(u32, u32), GpuError> {
        let max_dim = (self.limits.max_compute_workgroups_per_dimension as u64).max(1);
        let groups = count.div_ceil(WORKGROUP_SIZE as u64).max(1);
        let x = groups.min(max_dim);
        let y = groups.div_ceil(x);
        if y > max_dim {
            return Err(GpuError::TooManyTokens {
                tokens: count,
                limit: max_dim * max_dim * WORKGROUP_SIZE as u64,
            });
        }
        Ok((x as u32, y as u32))
    }

    /// "name (type, driver)".
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// The largest buffer a binding may hold (rounded down to 256 bytes).
    pub fn max_binding(&self) -> u64 {
        let limit = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        (limit / 256) * 256
    }

    /// The largest buffer, bound or not (rounded down to 256 bytes).
    pub fn max_buffer(&self) -> u64 {
        (self.limits.max_buffer_size / 256) * 256
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "software",
        wgpu::DeviceType::Other => "other",
    };
    if info.driver.is_empty() {
        format!("{} ({kind})", info.name)
    } else {
        format!(
            "{} ({kind}, {} {})",
            info.name, info.driver, info.driver_info
        )
    }
}
