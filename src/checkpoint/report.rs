//! What the loader did: bytes, tensor formats, dropped and unexpected tensors, time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Summary of one load.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// safetensors files mapped.
    pub files: usize,
    /// Total size of the mapped files.
    pub bytes_mapped: u64,
    /// Bytes uploaded to the GPU (matrices in their GPU format plus f32 vectors).
    pub bytes_uploaded: u64,
    /// Bytes kept in host memory (the PLE table when it stays on the host).
    pub bytes_host: u64,
    /// Matrices by stored format ("bf16", "affine4", ...).
    pub tensors_by_format: BTreeMap<String, usize>,
    /// Matrices by uploaded format, when it differs from the stored one ("f16", "affine4", ...).
    pub uploaded_by_format: BTreeMap<String, usize>,
    /// Redundant tensors dropped by construction (K/V of KV-shared text layers, clip scalars
    /// when `use_clipped_linears` is off, vision tensors of a text-only config).
    pub dropped: usize,
    /// Tensors that no module claims (warned about once; never fatal).
    pub unexpected: Vec<String>,
    /// Audio-tower tensors recognised and skipped without reading them.
    pub audio_skipped: usize,
    /// Tensors every loader ignores (tied lm_head, rotary buffers, clip scalars outside the
    /// vision tower).
    pub ignored: usize,
    /// Wall time of the load.
    pub elapsed: Duration,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loaded {} file(s), {:.1} MiB mapped, {:.1} MiB uploaded, {:.1} MiB kept on the host in {:.2?}",
            self.files,
            mib(self.bytes_mapped),
            mib(self.bytes_uploaded),
            mib(self.bytes_host),
            self.elapsed
        )?;
        let fmts: Vec<String> = self
            .tensors_by_format
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        write!(f, "; matrices: {}", fmts.join(", "))?;
        if !self.uploaded_by_format.is_empty() {
            let up: Vec<String> = self
                .uploaded_by_format
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            write!(f, " (uploaded as {})", up.join(", "))?;
        }
        write!(
            f,
            "; {} dropped, {} unexpected, {} audio skipped, {} ignored",
            self.dropped,
            self.unexpected.len(),
            self.audio_skipped,
            self.ignored
        )
    }
}
