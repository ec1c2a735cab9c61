//! The tower's input (spec §3.1): the patches of one image.

use crate::config::VisionConfig;
use crate::error::{Error, Result};

/// Patches of one image, ready for the tower.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    /// `[n_patches, 3·p·p]` values in [0, 1], (y, x, channel) order inside a patch.
    pub pixel_values: Vec<f32>,
    /// `(x, y)` patch position per patch, row-major patch order.
    pub positions: Vec<[u32; 2]>,
    /// Patch grid `(rows, cols)`.
    pub grid: (u32, u32),
}

impl ImagePatches {
    /// Soft tokens this image produces with pooling kernel `k`.
    pub fn soft_tokens(&self, k: u32) -> usize {
        crate::model::media::pooled_tokens(self.grid, k)
    }

    /// Number of patches.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether there are no patches.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Checks the patches against the tower's config: a full grid of `3·p²`-value patches, a
    /// grid that the pooling kernel divides, positions inside the position table.
    pub(crate) fn check(&self, c: &VisionConfig) -> Result<()> {
        let p = c.patch_size;
        let k = c.pooling_kernel_size as u32;
        let n = self.positions.len();
        let (gh, gw) = self.grid;
        if n == 0 || n != (gh * gw) as usize || self.pixel_values.len() != n * 3 * p * p {
            return Err(Error::InvalidArgument(format!(
                "image patches: {} positions, grid {:?}, {} values (patch size {p})",
                n,
                self.grid,
                self.pixel_values.len()
            )));
        }
        if gh % k != 0 || gw % k != 0 {
            return Err(Error::InvalidArgument(format!(
                "patch grid {gh}x{gw} is not a multiple of the pooling kernel {k}"
            )));
        }
        for pos in &self.positions {
            if pos[0] as usize >= c.position_embedding_size
                || pos[1] as usize >= c.position_embedding_size
            {
                return Err(Error::InvalidArgument(format!(
                    "patch position {pos:?} exceeds the position table size {}",
                    c.position_embedding_size
                )));
            }
        }
        Ok(())
    }
}
