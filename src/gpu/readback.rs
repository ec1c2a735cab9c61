//! A persistent host-readable staging buffer: the decode loop copies the sampled token id into it
//! inside the step's single submit and maps it afterwards, so no buffer is created per step.

use super::context::GpuContext;
use super::error::GpuError;
use super::recorder::Recorder;

/// A small MAP_READ buffer reused for every readback.
#[derive(Debug)]
pub struct Readback {
    buffer: wgpu::Buffer,
    size: u64,
}

impl Readback {
    /// Allocates a readback buffer of `size` bytes (rounded up to 4).
    pub fn new(ctx: &GpuContext, size: u64) -> Result<Self, GpuError> {
        let size = size.max(4).next_multiple_of(4);
        if let Some(m) = &ctx.inner.measure {
            m.staging
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            return Ok(Readback { buffer, size });
        }
        ctx.take_allocation("readback buffer", size)?;
        ctx.counters()
            .buffers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.counters()
            .bytes
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        let buffer = ctx.scoped("readback buffer", || {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Readback { buffer, size })
    }

    /// Records a copy of `size` bytes at `offset` of `src` into this buffer.
    pub fn record(
        &self,
        rec: &mut Recorder,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<(), GpuError> {
        if size > self.size || !size.is_multiple_of(4) {
            return Err(GpuError::Kernel {
                kernel: "readback".into(),
                message: format!("{size} bytes into a {}-byte readback buffer", self.size),
            });
        }
        rec.copy(src, offset, &self.buffer, 0, size);
        rec.note_readback(size);
        Ok(())
    }

    /// Waits for the submitted copy and returns the first `size` bytes. A lost device, or one
    /// that does not finish within the wait timeout
    /// ([`GpuContext::set_wait_timeout`]), is [`GpuError::DeviceLost`], never a hang.
    pub fn read(&self, ctx: &GpuContext, size: u64) -> Result<Vec<u8>, GpuError> {
        let size = size.min(self.size);
        ctx.check_health()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.buffer
            .slice(..size.next_multiple_of(4))
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        let mapped = ctx.wait_for("reading a GPU buffer back", &rx)?;
        if let Err(e) = mapped {
            // A mapping fails on a lost device; report that rather than the mapping.
            ctx.check_health()?;
            return Err(GpuError::BufferMap(e.to_string()));
        }
        let out = {
            let view = self
                .buffer
                .slice(..size.next_multiple_of(4))
                .get_mapped_range()
                .map_err(|e| GpuError::BufferMap(e.to_string()))?;
            view[..size as usize].to_vec()
        };
        self.buffer.unmap();
        ctx.check_health()?;
        Ok(out)
    }

    /// Reads one u32 (e.g. a sampled token id).
    pub fn read_u32(&self, ctx: &GpuContext) -> Result<u32, GpuError> {
        let b = self.read(ctx, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
