//! GPU errors.

/// A failure of the GPU runtime, always returned (never a panic).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No adapter could be found for the requested backends.
    #[error(
        "no GPU adapter found ({0}); on Debian install a software Vulkan driver with \
         `apt-get install mesa-vulkan-drivers libvulkan1`, or set WGPU_BACKEND"
    )]
    NoAdapter(String),
    /// The device request failed.
    #[error("requesting the GPU device failed: {0}")]
    RequestDevice(String),
    /// wgpu reported a validation error (a bug in the engine, or an unsupported device).
    #[error("GPU validation error in {context}: {message}")]
    Validation {
        /// What the engine was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// The device ran out of memory.
    #[error("GPU out of memory in {context}: {message}")]
    OutOfMemory {
        /// What the engine was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, watchdog, unplugged).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Mapping a buffer for readback failed.
    #[error("mapping a GPU buffer for readback failed: {0}")]
    BufferMap(String),
    /// A tensor or binding exceeds a device limit.
    #[error("{what} needs {needed} bytes but the device allows {limit} bytes ({limit_name})")]
    LimitExceeded {
        /// The tensor or binding.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// The limit.
        limit: u64,
        /// The name of the wgpu limit.
        limit_name: &'static str,
    },
    /// A model does not fit the GPU: loading it needs more memory than the memory budget
    /// allows (checked before anything is uploaded), or the device ran out of memory while it
    /// was uploaded (everything created by that load was released again).
    #[error(
        "the model needs {needed} bytes of GPU memory ({breakdown}) but {available} bytes are \
         available ({limit}); nothing stays allocated. Try {advice}"
    )]
    DoesNotFit {
        /// Bytes the model needs with the options it was loaded with (weights, the KV cache
        /// of one session at the maximum context, its workspace).
        needed: u64,
        /// Bytes available: the memory budget, or what the device had given the load when it
        /// ran out.
        available: u64,
        /// Which limit: the memory budget, or device memory.
        limit: String,
        /// `needed` by part (weights, KV cache, workspace).
        breakdown: String,
        /// What to try, largest savings first.
        advice: String,
    },
    /// A shader failed to compile or a kernel was misused (engine bug).
    #[error("kernel {kernel}: {message}")]
    Kernel {
        /// Kernel name.
        kernel: String,
        /// What went wrong.
        message: String,
    },
    /// A kernel's WGSL source could not be expanded (a missing include, an include cycle, an
    /// unbalanced `//#if`, an undefined substitution: an engine bug).
    #[error("kernel {kernel}: {error}")]
    Preprocess {
        /// Kernel name.
        kernel: String,
        /// What the preprocessor found.
        #[source]
        error: super::kernel::PreprocessError,
    },
}

impl GpuError {
    pub(crate) fn from_wgpu(context: &str, err: wgpu::Error) -> Self {
        match err {
            wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory {
                context: context.to_string(),
                message: err.to_string(),
            },
            other => GpuError::Validation {
                context: context.to_string(),
                message: other.to_string(),
            },
        }
    }
}
