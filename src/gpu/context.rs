//! Device acquisition: the engine's own adapter, or a host application's `Device` / `Queue`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::error::GpuError;
use super::kernel::KernelCache;

/// Options for creating a [`GpuContext`].
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Never use subgroup operations or f16, even when the device has them (the portable
    /// fallback path every kernel carries; used by tests and by backends such as OpenGL).
    pub force_fallback: bool,
}

/// What the engine may use on this device, decided once when the context is built.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Subgroup operations are granted and enabled.
    pub subgroups: bool,
    /// Smallest subgroup size the adapter reports.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter reports.
    pub subgroup_max_size: u32,
    /// SHADER_F16 is granted and enabled.
    pub shader_f16: bool,
    /// TIMESTAMP_QUERY is granted.
    pub timestamps: bool,
    /// `max_storage_buffer_binding_size` in bytes.
    pub max_binding_size: u64,
    /// `max_buffer_size` in bytes.
    pub max_buffer_size: u64,
    /// `max_storage_buffers_per_shader_stage`.
    pub max_storage_buffers: u32,
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dim: u32,
    /// `max_compute_workgroup_storage_size` in bytes.
    pub max_workgroup_storage: u32,
    /// `min_uniform_buffer_offset_alignment`.
    pub uniform_align: u32,
}

/// A wgpu device and queue plus everything the engine caches per device
/// (pipelines, bind layouts, bind groups, parameter arenas).
///
/// Cheap to clone; all clones share the same device and caches.
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) adapter_info: Option<wgpu::AdapterInfo>,
    pub(crate) caps: Capabilities,
    pub(crate) kernels: KernelCache,
    pub(crate) arenas: Mutex<Vec<super::recorder::ParamArena>>,
    pub(crate) bind_groups: Mutex<HashMap<super::recorder::BindKey, wgpu::BindGroup>>,
    pub(crate) lost: Arc<Mutex<Option<String>>>,
    pub(crate) uncaptured: Arc<Mutex<Option<String>>>,
    pub(crate) is_lost: Arc<AtomicBool>,
    pub(crate) counters: super::recorder::Counters,
    pub(crate) profiler: super::profile::Profiler,
    /// Set on a dry-run context ([`GpuContext::measuring`]): buffers are 4-byte stand-ins and
    /// their requested sizes are added up here; writes are skipped.
    pub(crate) measure: Option<Arc<Measure>>,
    /// Faults injected by tests ([`GpuContext::limit_allocations`]), shared by sibling contexts.
    pub(crate) faults: Arc<Faults>,
}

/// What a dry-run context ([`GpuContext::measuring`]) was asked to allocate.
#[derive(Debug, Default)]
pub(crate) struct Measure {
    /// Bytes of every buffer requested.
    pub(crate) bytes: AtomicU64,
    /// Buffers requested.
    pub(crate) buffers: AtomicU64,
    /// Bytes of host-readable staging buffers requested (not in `bytes`: the memory report
    /// does not count them either).
    pub(crate) staging: AtomicU64,
}

/// Fault injection and waiting limits shared by the contexts of one device.
#[derive(Debug)]
pub(crate) struct Faults {
    /// Bytes of buffers that may still be created before creation fails as out of memory
    /// (`u64::MAX`: no limit).
    pub(crate) alloc_left: AtomicU64,
    /// Longest wait for the GPU in one readback or idle wait, in milliseconds.
    pub(crate) wait_ms: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            alloc_left: AtomicU64::new(u64::MAX),
            wait_ms: AtomicU64::new(DEFAULT_WAIT.as_millis() as u64),
        }
    }
}

/// Drops the context's cached bind groups that bind a buffer once the buffer's owner is gone.
///
/// A cached bind group holds its buffers alive: without this, the KV cache of a dropped session
/// or the features of a captioned image would stay on the GPU until the cache fills up. Owners
/// of buffers that kernels bind (tensors, scratch) keep one guard per buffer, shared by their
/// clones and views.
pub(crate) struct BindGuard {
    buffer: wgpu::Buffer,
    ctx: Weak<ContextInner>,
}

impl std::fmt::Debug for BindGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindGuard")
            .field("bytes", &self.buffer.size())
            .finish()
    }
}

impl Drop for BindGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.ctx.upgrade() {
            inner.forget_bind_groups(&self.buffer);
        }
    }
}

/// The default of [`GpuContext::set_wait_timeout`]: far longer than any single submit of the
/// engine takes on a working device (a 512-token prefill chunk of a large model on a software
/// rasterizer), short enough that a hung device is reported instead of waited for forever.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

impl ContextInner {
    /// Removes every cached bind group that binds `buffer`.
    fn forget_bind_groups(&self, buffer: &wgpu::Buffer) {
        let mut cache = self.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|key, _| !key.binds(buffer));
    }
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_name())
            .field("caps", &self.inner.caps)
            .finish()
    }
}

/// Features the engine can use when present.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY
}

impl GpuContext {
    /// Picks an adapter (honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`), requests the adapter's
    /// own limits and the optional features SHADER_F16, SUBGROUP and TIMESTAMP_QUERY where present.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_options(GpuOptions::default())
    }

    /// Like [`GpuContext::new`] with explicit options.
    pub fn with_options(options: GpuOptions) -> Result<Self, GpuError> {
        pollster::block_on(Self::new_async(options))
    }

    /// Async form of [`GpuContext::with_options`].
    pub async fn new_async(options: GpuOptions) -> Result<Self, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) if !name.is_empty() => {
                let wanted = name.to_lowercase();
                let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| {
                        GpuError::NoAdapter(format!(
                            "WGPU_ADAPTER_NAME={name} matches none of {names:?}"
                        ))
                    })?
            }
            _ => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    ..Default::default()
                })
                .await
                .map_err(|e| GpuError::NoAdapter(e.to_string()))?,
        };
        let info = adapter.get_info();
        let features = adapter.features() & wanted_features();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("gemma-wgpu"),
                required_features: features,
                required_limits: limits,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        log::info!(
            "gemma-wgpu: adapter {} ({:?}, {:?}), features {:?}",
            info.name,
            info.backend,
            info.device_type,
            features
        );
        Ok(Self::build(device, queue, Some(info), true, options))
    }

    /// Wraps a device that a host application already owns (e.g. an egui/eframe or Bevy renderer).
    /// The engine adapts to whatever features and limits that device was created with.
    ///
    /// # Sharing a host's device
    ///
    /// The engine records its own command buffers and submits them on the host's queue (from
    /// whatever thread generates); the host keeps rendering on the same queue. It installs no
    /// device-wide callbacks on a host device (errors are caught with thread-local error scopes)
    /// and only blocks (`Device::poll`) on the thread that generates, never on the host's.
    ///
    /// What the engine gains from the device's features and limits, so a host should create its
    /// device with [`GpuContext::device_descriptor`] (or add those features and limits to its own):
    ///
    /// - `SUBGROUP`: the subgroup kernels (matrix-vector products, reductions, norms, softmax,
    ///   attention, sampling) instead of the portable thread-per-row / workgroup-memory ones; on
    ///   real GPUs the reductions are where the decode time goes.
    /// - `SHADER_F16`: recorded in [`Capabilities::shader_f16`] for f16-arithmetic kernels; today
    ///   every kernel reads f16/bf16 from u32 words and computes in f32, so it is never required.
    /// - `TIMESTAMP_QUERY`: GPU timings in profiling tools.
    /// - `max_storage_buffer_binding_size` / `max_buffer_size`: weight matrices are split into
    ///   row windows of at most one binding each, and a KV cache or workspace buffer must fit
    ///   `max_buffer_size`; wgpu's defaults (128 MiB binding, 256 MiB buffer) force more windows
    ///   (more dispatches) and limit the context length and prefill chunk of large models.
    /// - `max_storage_buffers_per_shader_stage`: kernels need at most 8 (the default).
    ///
    /// Without the adapter (see [`GpuContext::from_host`]) the subgroup size range is unknown;
    /// kernels never depend on it, so this only affects diagnostics.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::from_device_with_options(device, queue, GpuOptions::default())
    }

    /// Like [`GpuContext::from_device`] with explicit options.
    pub fn from_device_with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: GpuOptions,
    ) -> Self {
        Self::build(device, queue, None, false, options)
    }

    /// Like [`GpuContext::from_device`], also recording the host's adapter (its name and subgroup
    /// size range for diagnostics). The device stays the host's: no callbacks are installed.
    pub fn from_host(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(
            device,
            queue,
            Some(adapter.get_info()),
            false,
            GpuOptions::default(),
        )
    }

    /// The device descriptor the engine would request on `adapter`: the adapter's own limits
    /// and the optional features SHADER_F16, SUBGROUP and TIMESTAMP_QUERY where the adapter
    /// has them. A host application that wants the engine at full speed on its device creates
    /// the device with this (or merges it into its own descriptor), e.g. eframe's
    /// `WgpuSetupCreateNew::device_descriptor` hook.
    pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
        wgpu::DeviceDescriptor {
            label: Some("gemma-wgpu"),
            required_features: adapter.features() & wanted_features(),
            required_limits: adapter.limits(),
            ..Default::default()
        }
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
        own_device: bool,
        options: GpuOptions,
    ) -> Self {
        let features = device.features();
        let limits = device.limits();
        let (sg_min, sg_max) = adapter_info
            .as_ref()
            .map(|i| (i.subgroup_min_size, i.subgroup_max_size))
            .unwrap_or((4, 128));
        let caps = Capabilities {
            subgroups: !options.force_fallback && features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: sg_min.max(1),
            subgroup_max_size: sg_max.max(sg_min.max(1)),
            shader_f16: !options.force_fallback && features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            uniform_align: limits.min_uniform_buffer_offset_alignment.max(16),
        };
        let lost = Arc::new(Mutex::new(None));
        let is_lost = Arc::new(AtomicBool::new(false));
        let uncaptured = Arc::new(Mutex::new(None));
        // Only install device-wide callbacks on a device the engine owns: a host application's
        // own handlers must stay in place. Errors are still caught through error scopes.
        if own_device {
            let lost = lost.clone();
            let is_lost = is_lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                is_lost.store(true, Ordering::SeqCst);
                if let Ok(mut l) = lost.lock() {
                    *l = Some(format!("{reason:?}: {msg}"));
                }
            });
        }
        if own_device {
            let uncaptured = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
                log::error!("gemma-wgpu: uncaptured GPU error: {err}");
                if let Ok(mut u) = uncaptured.lock() {
                    u.get_or_insert_with(|| err.to_string());
                }
            }));
        }
        GpuContext {
            inner: Arc::new(ContextInner {
                device,
                queue,
                adapter_info,
                caps,
                kernels: KernelCache::default(),
                arenas: Mutex::new(Vec::new()),
                bind_groups: Mutex::new(HashMap::new()),
                lost,
                uncaptured,
                is_lost,
                counters: Default::default(),
                profiler: Default::default(),
                measure: None,
                faults: Default::default(),
            }),
        }
    }

    /// A context on the same device whose kernels never use subgroups or f16 (the portable
    /// fallback path), with its own pipeline cache.
    pub fn fallback(&self) -> GpuContext {
        let mut caps = self.inner.caps.clone();
        caps.subgroups = false;
        caps.shader_f16 = false;
        GpuContext {
            inner: Arc::new(ContextInner {
                device: self.inner.device.clone(),
                queue: self.inner.queue.clone(),
                adapter_info: self.inner.adapter_info.clone(),
                caps,
                kernels: KernelCache::default(),
                arenas: Mutex::new(Vec::new()),
                bind_groups: Mutex::new(HashMap::new()),
                lost: self.inner.lost.clone(),
                uncaptured: self.inner.uncaptured.clone(),
                is_lost: self.inner.is_lost.clone(),
                counters: Default::default(),
                profiler: Default::default(),
                measure: None,
                faults: self.inner.faults.clone(),
            }),
        }
    }

    /// A dry-run context with this one's device and limits: every buffer it is asked for is a
    /// 4-byte stand-in whose requested size is added up, and writes are skipped. Running an
    /// allocation routine (a session's KV cache and workspace) on it gives the bytes that
    /// routine would allocate here, without allocating them.
    pub(crate) fn measuring(&self) -> (GpuContext, Arc<Measure>) {
        let measure = Arc::new(Measure::default());
        let ctx = GpuContext {
            inner: Arc::new(ContextInner {
                device: self.inner.device.clone(),
                queue: self.inner.queue.clone(),
                adapter_info: self.inner.adapter_info.clone(),
                caps: self.inner.caps.clone(),
                kernels: KernelCache::default(),
                arenas: Mutex::new(Vec::new()),
                bind_groups: Mutex::new(HashMap::new()),
                lost: self.inner.lost.clone(),
                uncaptured: self.inner.uncaptured.clone(),
                is_lost: self.inner.is_lost.clone(),
                counters: Default::default(),
                profiler: Default::default(),
                measure: Some(measure.clone()),
                faults: Arc::new(Faults::default()),
            }),
        };
        (ctx, measure)
    }

    /// Destroys the device (`wgpu::Device::destroy`) and marks the context lost: from now on
    /// every call on this context, and on every model and session on it, returns
    /// [`GpuError::DeviceLost`]. wgpu reports a destroyed device to the device-lost callback
    /// only on a device the engine created itself (and only once its queue is empty); the
    /// context is marked lost here so that a host application's device behaves the same.
    /// For tearing a device down, and for testing how an application survives a lost device.
    pub fn destroy(&self) {
        self.inner.device.destroy();
        self.mark_lost("the device was destroyed (GpuContext::destroy)");
        // Lets wgpu run its device-lost steps (and the engine's callback, if installed).
        let _ = self.poll_guarded(wgpu::PollType::Poll);
    }

    /// Marks the device lost with `reason` (kept when a reason was recorded already).
    pub(crate) fn mark_lost(&self, reason: &str) {
        if let Ok(mut l) = self.inner.lost.lock() {
            l.get_or_insert_with(|| reason.to_string());
        }
        self.inner.is_lost.store(true, Ordering::SeqCst);
    }

    /// Whether the device was lost (or destroyed).
    pub fn is_lost(&self) -> bool {
        self.inner.is_lost.load(Ordering::SeqCst)
    }

    /// Makes buffer creation fail with [`GpuError::OutOfMemory`] once `bytes` more bytes of
    /// buffers were created on this device (`None`: no limit), as a device that runs out of
    /// memory part way through loading would. For testing how an application (and the
    /// loader's cleanup) handles out-of-memory; the limit counts bytes created, not bytes live.
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn limit_allocations(&self, bytes: Option<u64>) {
        self.inner
            .faults
            .alloc_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The longest the engine waits for the GPU in one readback or [`wait_idle`](Self::wait_idle)
    /// before it reports the device as lost (default [`DEFAULT_WAIT`]). Shared by every
    /// context on this device.
    pub fn set_wait_timeout(&self, timeout: Duration) {
        self.inner
            .faults
            .wait_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.faults.wait_ms.load(Ordering::SeqCst))
    }

    /// `Device::poll`, with wgpu's panic on a device error (it treats those as fatal) turned
    /// into [`GpuError::DeviceLost`] and the device marked lost.
    fn poll_guarded(
        &self,
        poll: wgpu::PollType,
    ) -> Result<Result<wgpu::PollStatus, wgpu::PollError>, GpuError> {
        let device = &self.inner.device;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.poll(poll))) {
            Ok(r) => Ok(r),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "polling the device failed".into());
                self.mark_lost(&msg);
                Err(GpuError::DeviceLost(msg))
            }
        }
    }

    /// Polls the device until `rx` has the answer of a callback (a buffer mapping), the device
    /// is lost, or the wait timeout passes (then the device is marked lost: a device that does
    /// not finish work it was given is not usable).
    #[cfg_attr(not(feature = "dev"), doc(hidden))]
    pub fn wait_for<T>(&self, what: &str, rx: &Receiver<T>) -> Result<T, GpuError> {
        let start = Instant::now();
        let limit = self.wait_timeout();
        // Wait for a submission of our own, made after the work the callback waits for: a
        // timed wait on "the latest submission" (`submission_index: None`) races with other
        // threads' submits in wgpu-core 30 (its queue can look empty while the fence is behind
        // the index it read, which it asserts against: a panic under concurrent sessions).
        let index = self.inner.queue.submit([]);
        loop {
            match rx.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => {
                    self.check_lost()?;
                    return Err(GpuError::BufferMap(format!(
                        "{what}: the callback was dropped"
                    )));
                }
                Err(TryRecvError::Empty) => {}
            }
            self.check_lost()?;
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                let msg = format!("{what}: the GPU did not answer within {limit:?}");
                self.mark_lost(&msg);
                return Err(GpuError::DeviceLost(msg));
            }
            let step = left.min(Duration::from_millis(250));
            match self.poll_guarded(wgpu::PollType::Wait {
                submission_index: Some(index.clone()),
                timeout: Some(step),
            })? {
                Ok(_) | Err(wgpu::PollError::Timeout) => {}
                Err(e) => return Err(GpuError::BufferMap(format!("{what}: {e}"))),
            }
        }
    }

    /// [`GpuError::DeviceLost`] if the device was lost.
    fn check_lost(&self) -> Result<(), GpuError> {
        if self.is_lost() {
            let msg = self
                .inner
                .lost
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(GpuError::DeviceLost(msg));
        }
        Ok(())
    }

    /// True when kernels take the subgroup fast path on this context.
    pub fn uses_subgroups(&self) -> bool {
        self.inner.caps.subgroups
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// What the engine uses on this device.
    pub fn caps(&self) -> &Capabilities {
        &self.inner.caps
    }

    /// Adapter name, or "host device" for a context built with [`GpuContext::from_device`]
    /// (without the adapter).
    pub fn adapter_name(&self) -> String {
        self.inner
            .adapter_info
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_else(|| "host device".to_string())
    }

    /// Adapter info when the engine created the device itself or the host gave its adapter
    /// ([`GpuContext::from_host`]).
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.inner.adapter_info.as_ref()
    }

    /// Returns an error if the device was lost or an uncaptured error was reported.
    pub fn check_health(&self) -> Result<(), GpuError> {
        self.check_lost()?;
        if let Some(msg) = self.inner.uncaptured.lock().ok().and_then(|mut u| u.take()) {
            return Err(GpuError::Validation {
                context: "uncaptured".into(),
                message: msg,
            });
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and returns the first error.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        let oom = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val_err = pollster::block_on(val.pop());
        let oom_err = pollster::block_on(oom.pop());
        if let Some(e) = oom_err {
            return Err(GpuError::from_wgpu(what, e));
        }
        if let Some(e) = val_err {
            return Err(GpuError::from_wgpu(what, e));
        }
        self.check_health()?;
        Ok(out)
    }

    /// A guard that forgets the cached bind groups of `buffer` when dropped (see [`BindGuard`]).
    pub(crate) fn bind_guard(&self, buffer: &wgpu::Buffer) -> BindGuard {
        BindGuard {
            buffer: buffer.clone(),
            ctx: Arc::downgrade(&self.inner),
        }
    }

    /// Drops every cached bind group (e.g. once a model's weights are gone).
    pub(crate) fn clear_bind_groups(&self) {
        self.inner
            .bind_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Bytes of the parameter arenas pooled for reuse (one per recorder that ran at the same
    /// time as another; kept for the next recorders).
    pub fn pooled_arena_bytes(&self) -> u64 {
        self.inner
            .arenas
            .lock()
            .map(|p| p.iter().map(|a| a.bytes()).sum())
            .unwrap_or(0)
    }

    /// Bind groups in the cache now (each holds the buffers it binds alive).
    pub fn cached_bind_groups(&self) -> usize {
        self.inner.bind_groups.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Creates a storage buffer of `size` bytes (zeroed), usable as a kernel input or output and
    /// as a copy source/destination.
    pub fn create_storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer, GpuError> {
        let size = size.max(4).next_multiple_of(4);
        if size > self.inner.caps.max_buffer_size {
            return Err(GpuError::LimitExceeded {
                what: label.to_string(),
                needed: size,
                limit: self.inner.caps.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        if let Some(m) = &self.inner.measure {
            m.bytes.fetch_add(size, Ordering::Relaxed);
            m.buffers.fetch_add(1, Ordering::Relaxed);
            return Ok(self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 4,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }));
        }
        self.check_lost()?;
        self.take_allocation(label, size)?;
        self.inner
            .counters
            .buffers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .counters
            .bytes
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        self.scoped(label, || {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })
        .map_err(|e| match e {
            // Say how much was asked for.
            GpuError::OutOfMemory { context, message } => GpuError::OutOfMemory {
                context: format!("{context} ({size} bytes)"),
                message,
            },
            e => e,
        })
    }

    /// Creates a storage buffer holding `data` (padded to 4 bytes).
    pub fn create_storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer, GpuError> {
        let buf = self.create_storage(label, data.len() as u64)?;
        self.write(&buf, 0, data);
        Ok(buf)
    }

    /// Takes `size` bytes from the injected allocation limit ([`limit_allocations`](Self::limit_allocations));
    /// [`GpuError::OutOfMemory`] when they are not left.
    pub(crate) fn take_allocation(&self, label: &str, size: u64) -> Result<(), GpuError> {
        let left = &self.inner.faults.alloc_left;
        let taken = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
            if l == u64::MAX {
                Some(l)
            } else {
                l.checked_sub(size)
            }
        });
        match taken {
            Ok(_) => Ok(()),
            Err(l) => Err(GpuError::OutOfMemory {
                context: format!("{label} ({size} bytes)"),
                message: format!(
                    "creating a buffer of {size} bytes failed: {l} bytes left (injected limit)"
                ),
            }),
        }
    }

    /// Queues a write of `data` at `offset` (padded to 4 bytes); it executes before the next submit.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        if data.is_empty() || self.inner.measure.is_some() {
            return;
        }
        if data.len().is_multiple_of(4) {
            self.inner.queue.write_buffer(buffer, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            self.inner.queue.write_buffer(buffer, offset, &padded);
        }
    }

    /// Copies `size` bytes at `offset` of `buffer` back to the host (blocking; for tests,
    /// debugging and explicit logits requests, never in the decode loop).
    pub fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let padded = size.next_multiple_of(4).max(4);
        let staging = super::readback::Readback::new(self, padded)?;
        let mut rec = self.recorder();
        staging.record(&mut rec, buffer, offset, padded)?;
        rec.submit()?;
        staging.read(self, size)
    }

    /// Reads `len` f32 values starting at element `offset`.
    pub fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let bytes = self.read_bytes(buffer, (offset * 4) as u64, (len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads `len` u32 values starting at element `offset`.
    pub fn read_u32(
        &self,
        buffer: &wgpu::Buffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u32>, GpuError> {
        let bytes = self.read_bytes(buffer, (offset * 4) as u64, (len * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Bytes of GPU memory the driver's allocator holds for this device (all allocations,
    /// including wgpu's own), where the backend reports it (Vulkan, DX12); `None` elsewhere.
    pub fn gpu_allocated_bytes(&self) -> Option<u64> {
        self.inner
            .device
            .generate_allocator_report()
            .map(|r| r.total_allocated_bytes)
    }

    /// Blocks until all submitted work has finished.
    /// Reports [`GpuError::DeviceLost`] (and marks the device lost) when the device does not
    /// finish within the wait timeout ([`set_wait_timeout`](Self::set_wait_timeout)).
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        self.check_lost()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.wait_for("waiting for the GPU to finish", &rx)?;
        self.check_health()
    }
}
