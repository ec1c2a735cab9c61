//! Opt-in per-kernel GPU timing (TIMESTAMP_QUERY).
//!
//! With profiling switched on ([`GpuContext::set_profiling`]) on a device that has
//! `TIMESTAMP_QUERY`, every [`Recorder::submit`](super::Recorder::submit) encodes each dispatch in
//! a compute pass of its own with beginning/end timestamp writes, resolves the timestamps into a
//! buffer, waits for the submit and reads them back, and adds each dispatch's GPU time to a
//! per-kernel total kept on the context. [`GpuContext::take_profile`] returns (and clears) the
//! totals as a [`Profile`], which groups them by kernel family (WGSL file and entry point) or by
//! specialisation (file, entry point and defines).
//!
//! Profiling perturbs what it measures (one pass per dispatch, a wait after every submit), so
//! use it to find where the time goes, not to measure throughput. With profiling off the
//! recorder encodes exactly as without this module: no extra passes, queries or readbacks.
//!
//! ```no_run
//! # fn main() -> Result<(), gemma_wgpu::gpu::GpuError> {
//! let ctx = gemma_wgpu::gpu::GpuContext::new()?;
//! if ctx.set_profiling(true) {
//!     // ... record and submit work ...
//!     let profile = ctx.take_profile();
//!     println!("{}", profile.markdown_by_family(1));
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::GpuContext;

/// Most queries one query set may hold (wgpu's `QUERY_SET_MAX_QUERIES`).
pub(crate) const MAX_QUERIES: u32 = 4096;

/// GPU time of one kernel (or kernel family) over a profiling window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEntry {
    /// The kernel: `file:entry` for a family, `file:entry;DEFINE=value...` for a
    /// specialisation.
    pub kernel: String,
    /// Dispatches timed.
    pub count: u64,
    /// Total GPU time in nanoseconds.
    pub total_ns: f64,
}

/// Per-kernel GPU times collected while profiling was on (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// One entry per kernel specialisation, largest total first.
    pub entries: Vec<ProfileEntry>,
    /// Submits that were timed.
    pub submits: u64,
}

impl Profile {
    /// Total GPU time of all timed dispatches, in nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.entries.iter().map(|e| e.total_ns).sum()
    }

    /// Dispatches timed.
    pub fn dispatches(&self) -> u64 {
        self.entries.iter().map(|e| e.count).sum()
    }

    /// True when nothing was timed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries merged by kernel family (`file:entry`, defines and access suffix dropped),
    /// largest total first.
    pub fn by_family(&self) -> Vec<ProfileEntry> {
        let mut map: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for e in &self.entries {
            let v = map.entry(family_of(&e.kernel)).or_default();
            v.0 += e.count;
            v.1 += e.total_ns;
        }
        sorted(map)
    }

    /// A markdown table of the kernel families: GPU µs and dispatches per unit of work (e.g.
    /// per decoded token when `per` tokens were profiled), and share of the total.
    pub fn markdown_by_family(&self, per: u64) -> String {
        table(&self.by_family(), self.total_ns(), per)
    }

    /// Like [`markdown_by_family`](Self::markdown_by_family), one row per specialisation.
    pub fn markdown_by_kernel(&self, per: u64) -> String {
        table(&self.entries, self.total_ns(), per)
    }
}

/// `file:entry` of a kernel specialisation name `file:entry;DEFINE=value...`.
pub fn family_of(kernel: &str) -> String {
    kernel.split(';').next().unwrap_or(kernel).to_string()
}

fn sorted(map: BTreeMap<String, (u64, f64)>) -> Vec<ProfileEntry> {
    let mut v: Vec<ProfileEntry> = map
        .into_iter()
        .map(|(kernel, (count, total_ns))| ProfileEntry {
            kernel,
            count,
            total_ns,
        })
        .collect();
    v.sort_by(|a, b| b.total_ns.total_cmp(&a.total_ns));
    v
}

fn table(entries: &[ProfileEntry], total: f64, per: u64) -> String {
    let per = per.max(1) as f64;
    let mut s =
        String::from("| kernel | µs per unit | dispatches per unit | share |\n|---|---|---|---|\n");
    for e in entries {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1}% |\n",
            e.kernel,
            e.total_ns / per / 1e3,
            e.count as f64 / per,
            if total > 0.0 {
                100.0 * e.total_ns / total
            } else {
                0.0
            }
        ));
    }
    s.push_str(&format!(
        "| **total** | {:.1} | {:.1} | 100% |\n",
        total / per / 1e3,
        entries.iter().map(|e| e.count).sum::<u64>() as f64 / per
    ));
    s
}

/// Kernel name → (dispatches, total ns).
type Totals = BTreeMap<String, (u64, f64)>;

/// Profiling state of a context.
#[derive(Debug, Default)]
pub(crate) struct Profiler {
    pub(crate) enabled: AtomicBool,
    data: Mutex<(Totals, u64)>,
}

impl Profiler {
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Adds one submit's dispatch durations (kernel name, ns).
    pub(crate) fn add(&self, times: impl IntoIterator<Item = (String, f64)>) {
        if let Ok(mut d) = self.data.lock() {
            for (k, ns) in times {
                let v = d.0.entry(k).or_default();
                v.0 += 1;
                v.1 += ns;
            }
            d.1 += 1;
        }
    }

    fn take(&self) -> Profile {
        match self.data.lock() {
            Ok(mut d) => {
                let (map, submits) = std::mem::take(&mut *d);
                Profile {
                    entries: sorted(map),
                    submits,
                }
            }
            Err(_) => Profile::default(),
        }
    }
}

impl GpuContext {
    /// Switches per-kernel GPU timing on or off (see [`crate::gpu::profile`]). Returns whether
    /// profiling is now active: always false on a device without `TIMESTAMP_QUERY`.
    pub fn set_profiling(&self, on: bool) -> bool {
        let on = on && self.caps().timestamps;
        self.inner.profiler.enabled.store(on, Ordering::Relaxed);
        on
    }

    /// Whether per-kernel timing is on.
    pub fn profiling(&self) -> bool {
        self.inner.profiler.is_enabled()
    }

    /// The per-kernel GPU times collected since the last call (or since profiling was switched
    /// on), clearing them.
    pub fn take_profile(&self) -> Profile {
        self.inner.profiler.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        assert_eq!(
            family_of("linear:matvec;BITS=4;SUBGROUP=1"),
            "linear:matvec"
        );
        assert_eq!(family_of("streaming:main"), "streaming:main");
        let p = Profile {
            entries: vec![
                ProfileEntry {
                    kernel: "a:x;B=1".into(),
                    count: 2,
                    total_ns: 3000.0,
                },
                ProfileEntry {
                    kernel: "a:x;B=2".into(),
                    count: 1,
                    total_ns: 1000.0,
                },
            ],
            submits: 1,
        };
        let f = p.by_family();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].count, 3);
        assert!(
            p.markdown_by_family(1)
                .contains("| a:x | 4.0 | 3.0 | 100.0% |")
        );
    }
}
