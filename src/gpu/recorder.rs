//! Command batching: many dispatches encoded into one command encoder and submitted once, with
//! small per-dispatch parameters written into a shared uniform arena (dynamic offsets), and
//! bind groups cached so that steady-state recording allocates no GPU objects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::context::GpuContext;
use super::error::GpuError;
use super::kernel::Kernel;
use super::profile::MAX_QUERIES;

/// A view of a buffer passed to a kernel binding.
#[derive(Debug, Clone, Copy)]
pub struct BufSlice<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset (a multiple of the device's storage offset alignment).
    pub offset: u64,
    /// Byte size; `None` binds to the end of the buffer.
    pub size: Option<u64>,
}

impl<'a> From<&'a wgpu::Buffer> for BufSlice<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        BufSlice {
            buffer,
            offset: 0,
            size: None,
        }
    }
}

impl<'a> BufSlice<'a> {
    /// A window of `size` bytes at `offset`.
    pub fn window(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        BufSlice {
            buffer,
            offset,
            size: Some(size),
        }
    }
}

/// Size of the parameter arena in bytes; a dispatch takes its parameter size rounded up to
/// `uniform_align` (at least 32 bytes on most adapters).
const ARENA_BYTES: u64 = 1 << 20;
/// Largest parameter struct a kernel may use.
pub const MAX_PARAM_BYTES: usize = 256;
/// Bind groups kept per device before the cache is cleared.
const BIND_CACHE_LIMIT: usize = 8192;

pub(crate) struct ParamArena {
    buffer: wgpu::Buffer,
}

impl ParamArena {
    pub(crate) fn bytes(&self) -> u64 {
        self.buffer.size()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    kernel: u64,
    arena: wgpu::Buffer,
    buffers: Vec<(wgpu::Buffer, u64, u64)>,
}

impl BindKey {
    /// Whether the bind group binds `buffer`.
    pub(crate) fn binds(&self, buffer: &wgpu::Buffer) -> bool {
        self.arena == *buffer || self.buffers.iter().any(|(b, _, _)| b == buffer)
    }
}

enum Command {
    Dispatch {
        kernel: Arc<Kernel>,
        bind_group: wgpu::BindGroup,
        offset: u32,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    },
}

/// Counters of GPU work, per context.
#[derive(Debug, Default)]
pub struct Counters {
    /// Dispatches recorded.
    pub dispatches: AtomicU64,
    /// Queue submits.
    pub submits: AtomicU64,
    /// GPU buffers created by the engine.
    pub buffers: AtomicU64,
    /// Bind groups created (cache misses).
    pub bind_groups: AtomicU64,
    /// Bytes of all GPU buffers the engine created (storage, parameter arenas, readback
    /// staging), cumulative: buffers that were dropped since still count. Profiling query
    /// buffers are not counted.
    pub bytes: AtomicU64,
    /// Bytes copied into host-readable staging buffers (readbacks), cumulative.
    pub readback_bytes: AtomicU64,
}

impl Counters {
    /// (buffers, bind groups) created so far.
    pub fn allocations(&self) -> (u64, u64) {
        (
            self.buffers.load(Ordering::Relaxed),
            self.bind_groups.load(Ordering::Relaxed),
        )
    }

    /// Bytes of GPU buffers created so far (see [`Counters::bytes`]).
    pub fn bytes_allocated(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// (dispatches, submits) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.dispatches.load(Ordering::Relaxed),
            self.submits.load(Ordering::Relaxed),
        )
    }
}

/// Records dispatches and copies, then submits them all in one command buffer.
pub struct Recorder {
    ctx: GpuContext,
    arena: Option<ParamArena>,
    params: Vec<u8>,
    commands: Vec<Command>,
    slot: u32,
    stats: RecorderStats,
}

/// What one recorder did: dispatches recorded and submits made (including early submits when
/// the parameter arena filled up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecorderStats {
    /// Dispatches recorded.
    pub dispatches: u64,
    /// Queue submits.
    pub submits: u64,
    /// Buffer-to-buffer copies recorded.
    pub copies: u64,
    /// Bytes recorded for copying back to the host (through [`Readback`](super::Readback)).
    pub readback_bytes: u64,
}

impl GpuContext {
    /// Starts recording a batch of GPU work.
    pub fn recorder(&self) -> Recorder {
        let slot = self.caps().uniform_align;
        Recorder {
            ctx: self.clone(),
            arena: None,
            params: Vec::new(),
            commands: Vec::new(),
            slot,
            stats: RecorderStats::default(),
        }
    }

    /// Dispatch and submit counters of this device (all recorders).
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    fn take_arena(&self) -> Result<ParamArena, GpuError> {
        if let Some(a) = self.inner.arenas.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(a);
        }
        self.inner.counters.buffers.fetch_add(1, Ordering::Relaxed);
        self.inner
            .counters
            .bytes
            .fetch_add(ARENA_BYTES, Ordering::Relaxed);
        let buffer = self.scoped("parameter arena", || {
            self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("param-arena"),
                size: ARENA_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(ParamArena { buffer })
    }
}

impl Recorder {
    /// The context this recorder belongs to.
    pub fn ctx(&self) -> &GpuContext {
        &self.ctx
    }

    /// Dispatches, submits and copies of this recorder so far.
    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    /// Number of commands recorded and not yet submitted.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Records one dispatch of `kernel` with the uniform `params` and storage `buffers`
    /// (in binding order 1..), over `groups` workgroups.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[BufSlice<'_>],
        groups: [u32; 3],
    ) -> Result<(), GpuError> {
        let bytes = bytemuck::bytes_of(params);
        if bytes.len() > MAX_PARAM_BYTES || buffers.len() != kernel.storage.len() {
            return Err(GpuError::Kernel {
                kernel: kernel.name.clone(),
                message: format!(
                    "{} buffers given for {} bindings, params {} bytes",
                    buffers.len(),
                    kernel.storage.len(),
                    bytes.len()
                ),
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.ctx.caps().max_workgroups_per_dim;
        if groups.iter().any(|&g| g > max) {
            return Err(GpuError::LimitExceeded {
                what: format!("dispatch of {}", kernel.name),
                needed: groups.iter().copied().max().unwrap_or(0) as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        let max_bind = self.ctx.caps().max_binding_size;
        for b in buffers {
            let size = b.size.unwrap_or(b.buffer.size() - b.offset);
            if size > max_bind {
                return Err(GpuError::LimitExceeded {
                    what: format!("a binding of {}", kernel.name),
                    needed: size,
                    limit: max_bind,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
        }
        if self.arena.is_none() {
            self.arena = Some(self.ctx.take_arena()?);
        }
        // Each dispatch's parameters start at a multiple of the uniform offset alignment and
        // take as many aligned slots as they need; the 256-byte binding window at that offset
        // must lie inside the arena.
        let offset = self.params.len() as u64;
        if offset + MAX_PARAM_BYTES as u64 > ARENA_BYTES {
            // The arena is full: submit what is recorded and continue with a fresh batch.
            self.submit()?;
            return self.dispatch(kernel, params, buffers, groups);
        }
        let offset = offset as u32;
        self.params.extend_from_slice(bytes);
        let used = (bytes.len() as u32).max(1).next_multiple_of(self.slot);
        self.params.resize((offset + used) as usize, 0);
        let arena = self
            .arena
            .as_ref()
            .map(|a| a.buffer.clone())
            .ok_or_else(|| GpuError::Kernel {
                kernel: kernel.name.clone(),
                message: "no parameter arena".into(),
            })?;
        let bind_group = self.bind_group(kernel, &arena, buffers)?;
        self.commands.push(Command::Dispatch {
            kernel: kernel.clone(),
            bind_group,
            offset,
            groups,
        });
        self.ctx
            .inner
            .counters
            .dispatches
            .fetch_add(1, Ordering::Relaxed);
        self.stats.dispatches += 1;
        Ok(())
    }

    /// Records a dispatch of `n` workgroups laid out on a 2-D grid when `n` exceeds the
    /// per-dimension limit; kernels compute `wid.x + wid.y * num_workgroups.x`.
    pub fn dispatch_linear<P: bytemuck::Pod>(
        &mut self,
        kernel: &Arc<Kernel>,
        params: &P,
        buffers: &[BufSlice<'_>],
        n: u32,
    ) -> Result<(), GpuError> {
        let max = self.ctx.caps().max_workgroups_per_dim.max(1);
        let groups = if n <= max {
            [n, 1, 1]
        } else {
            let y = n.div_ceil(max);
            [n.div_ceil(y), y, 1]
        };
        self.dispatch(kernel, params, buffers, groups)
    }

    /// Records a buffer-to-buffer copy (ordered with the dispatches around it).
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        if size == 0 {
            return;
        }
        self.stats.copies += 1;
        self.commands.push(Command::Copy {
            src: src.clone(),
            src_offset,
            dst: dst.clone(),
            dst_offset,
            size,
        });
    }

    /// Counts `bytes` recorded for reading back to the host (called by the readback path).
    pub(crate) fn note_readback(&mut self, bytes: u64) {
        self.stats.readback_bytes += bytes;
        self.ctx
            .inner
            .counters
            .readback_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn bind_group(
        &self,
        kernel: &Kernel,
        arena: &wgpu::Buffer,
        buffers: &[BufSlice<'_>],
    ) -> Result<wgpu::BindGroup, GpuError> {
        let key = BindKey {
            kernel: kernel.id,
            arena: arena.clone(),
            buffers: buffers
                .iter()
                .map(|b| (b.buffer.clone(), b.offset, b.size.unwrap_or(u64::MAX)))
                .collect(),
        };
        let mut cache = self
            .ctx
            .inner
            .bind_groups
            .lock()
            .map_err(|_| GpuError::Kernel {
                kernel: kernel.name.clone(),
                message: "bind group cache poisoned".into(),
            })?;
        if let Some(bg) = cache.get(&key) {
            return Ok(bg.clone());
        }
        if cache.len() >= BIND_CACHE_LIMIT {
            cache.clear();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: arena,
                offset: 0,
                size: wgpu::BufferSize::new(MAX_PARAM_BYTES as u64),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: b.size.and_then(wgpu::BufferSize::new),
                }),
            });
        }
        let bg = self
            .ctx
            .scoped(&format!("bind group for {}", kernel.name), || {
                self.ctx
                    .device()
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &kernel.layout,
                        entries: &entries,
                    })
            })?;
        self.ctx
            .inner
            .counters
            .bind_groups
            .fetch_add(1, Ordering::Relaxed);
        cache.insert(key, bg.clone());
        Ok(bg)
    }

    /// Encodes everything recorded into one command buffer and submits it (one submit).
    /// Does not wait for completion.
    pub fn submit(&mut self) -> Result<(), GpuError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let commands = std::mem::take(&mut self.commands);
        let params = std::mem::take(&mut self.params);
        let arena = self.arena.take();
        if ctx.inner.profiler.is_enabled() && ctx.caps().timestamps {
            return self.submit_profiled(commands, params, arena);
        }
        ctx.scoped("submitting recorded work", || {
            if let Some(a) = &arena {
                ctx.queue().write_buffer(&a.buffer, 0, &params);
            }
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let mut i = 0;
            while i < commands.len() {
                match &commands[i] {
                    Command::Copy {
                        src,
                        src_offset,
                        dst,
                        dst_offset,
                        size,
                    } => {
                        enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                        i += 1;
                    }
                    Command::Dispatch { .. } => {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: None,
                        });
                        while let Some(Command::Dispatch {
                            kernel,
                            bind_group,
                            offset,
                            groups,
                        }) = commands.get(i)
                        {
                            pass.set_pipeline(&kernel.pipeline);
                            pass.set_bind_group(0, bind_group, &[*offset]);
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                            i += 1;
                        }
                    }
                }
            }
            ctx.queue().submit(Some(enc.finish()));
        })?;
        ctx.inner.counters.submits.fetch_add(1, Ordering::Relaxed);
        self.stats.submits += 1;
        if let Some(a) = arena
            && let Ok(mut pool) = ctx.inner.arenas.lock()
        {
            pool.push(a);
        }
        Ok(())
    }

    /// The profiled form of [`submit`](Self::submit): one compute pass per dispatch with
    /// beginning/end timestamps, resolved and read back after the submit completes (blocking).
    fn submit_profiled(
        &mut self,
        commands: Vec<Command>,
        params: Vec<u8>,
        arena: Option<ParamArena>,
    ) -> Result<(), GpuError> {
        let ctx = self.ctx.clone();
        let n_dispatch = commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count() as u32;
        let per_set = MAX_QUERIES / 2;
        let n_sets = n_dispatch.div_ceil(per_set).max(1);
        let device = ctx.device();
        let (sets, resolve, staging, names) = ctx.scoped("submitting profiled work", || {
            if let Some(a) = &arena {
                ctx.queue().write_buffer(&a.buffer, 0, &params);
            }
            let sets: Vec<wgpu::QuerySet> = (0..n_sets)
                .map(|s| {
                    let count = (n_dispatch - s * per_set).min(per_set).max(1) * 2;
                    device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count,
                    })
                })
                .collect();
            // One 256-byte aligned slot of resolved timestamps per query set.
            let slot = (u64::from(per_set) * 16).next_multiple_of(256);
            let size = slot * u64::from(n_sets);
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let mut names = Vec::with_capacity(n_dispatch as usize);
            for c in &commands {
                match c {
                    Command::Copy {
                        src,
                        src_offset,
                        dst,
                        dst_offset,
                        size,
                    } => enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
                    Command::Dispatch {
                        kernel,
                        bind_group,
                        offset,
                        groups,
                    } => {
                        let d = names.len() as u32;
                        let q = (d % per_set) * 2;
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: &sets[(d / per_set) as usize],
                                beginning_of_pass_write_index: Some(q),
                                end_of_pass_write_index: Some(q + 1),
                            }),
                        });
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, bind_group, &[*offset]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        drop(pass);
                        names.push(kernel.label().to_string());
                    }
                }
            }
            for (s, set) in sets.iter().enumerate() {
                let used = (n_dispatch - s as u32 * per_set).min(per_set) * 2;
                if used > 0 {
                    enc.resolve_query_set(set, 0..used, &resolve, s as u64 * slot);
                }
            }
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, size);
            ctx.queue().submit(Some(enc.finish()));
            (sets, resolve, staging, names)
        })?;
        ctx.inner.counters.submits.fetch_add(1, Ordering::Relaxed);
        self.stats.submits += 1;
        if let Some(a) = arena
            && let Ok(mut pool) = ctx.inner.arenas.lock()
        {
            pool.push(a);
        }
        // Wait for the submit, then read the timestamps.
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait_for("reading GPU timestamps", &rx)?
            .map_err(|e| GpuError::BufferMap(e.to_string()))?;
        let ticks: Vec<u64> = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::BufferMap(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        staging.unmap();
        let period = f64::from(ctx.queue().get_timestamp_period());
        let slot_words = (u64::from(per_set) * 16).next_multiple_of(256) as usize / 8;
        let times = names.into_iter().enumerate().map(|(d, name)| {
            let set = d / per_set as usize;
            let q = set * slot_words + (d % per_set as usize) * 2;
            let (a, b) = (
                ticks.get(q).copied().unwrap_or(0),
                ticks.get(q + 1).copied().unwrap_or(0),
            );
            (name, b.saturating_sub(a) as f64 * period)
        });
        ctx.inner.profiler.add(times);
        drop((sets, resolve));
        ctx.check_health()
    }

    /// Submits and blocks until the GPU has finished.
    pub fn finish(mut self) -> Result<(), GpuError> {
        self.submit()?;
        self.ctx.wait_idle()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(a) = self.arena.take()
            && let Ok(mut pool) = self.ctx.inner.arenas.lock()
        {
            pool.push(a);
        }
    }
}

use super::readback::Readback;
use super::tensor::GpuTensor;

/// Tensor-level copies for model code (no buffers or byte offsets outside the runtime).
impl Recorder {
    /// Records a copy of rows `src_row..src_row + n` of `src` into rows `dst_row..` of `dst`
    /// (both `[rows, …]` with the same row size and element type).
    pub fn copy_rows(
        &mut self,
        src: &GpuTensor,
        src_row: usize,
        dst: &GpuTensor,
        dst_row: usize,
        n: usize,
    ) -> Result<(), GpuError> {
        let (rs, rd) = (src.row_len(), dst.row_len());
        let rows_of = |t: &GpuTensor| t.shape.first().copied().unwrap_or(1);
        if rs != rd
            || src.dtype != dst.dtype
            || src_row + n > rows_of(src)
            || dst_row + n > rows_of(dst)
        {
            return Err(GpuError::Kernel {
                kernel: "copy_rows".into(),
                message: format!(
                    "rows {src_row}..+{n} of {:?} {:?} into rows {dst_row}.. of {:?} {:?}",
                    src.shape, src.dtype, dst.shape, dst.dtype
                ),
            });
        }
        let (s, d) = (src.rows(src_row, n), dst.rows(dst_row, n));
        let size = (n * rs * src.dtype.size()) as u64;
        self.copy(&s.buffer, s.offset, &d.buffer, d.offset, size);
        Ok(())
    }

    /// Records the concatenation of `parts` (each `[rows_i, …]`, same row size) along the rows
    /// into `dst`, from its first row; returns the rows written.
    pub fn concat_rows(
        &mut self,
        parts: &[&GpuTensor],
        dst: &GpuTensor,
    ) -> Result<usize, GpuError> {
        let mut row = 0;
        for p in parts {
            let n = p.shape.first().copied().unwrap_or(1);
            self.copy_rows(p, 0, dst, row, n)?;
            row += n;
        }
        Ok(row)
    }

    /// Records a copy of `src` (its whole extent) into the readback buffer `rb`.
    pub fn read_back(&mut self, rb: &Readback, src: &GpuTensor) -> Result<(), GpuError> {
        rb.record(self, &src.buffer, src.offset, src.bytes())
    }
}
