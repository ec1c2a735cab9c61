//! Soft-token placement (spec §4), the one place for it: expanding media placeholders in a
//! token stream, counting soft tokens, encoding media into feature rows, and pairing the soft
//! tokens of a token stream with the feature rows that replace their embeddings.
//!
//! ```text
//! chat template ── one <|image|> per image
//!   expand_image_tokens    <|image> + <|image|> × n_i + <image|>   (n_i = pooled_tokens(grid_i, k))
//!   encode_each            per-image features [n_i, H] (vision tower or unified embedder)
//!   MediaRuns::place       soft tokens of the ids = feature rows, checked here, once;
//!                          the runs (position, length, first feature row) the decoder scatters
//! ```
//!
//! Audio (later) places its soft tokens through the same [`MediaRuns`].

use std::borrow::Borrow;
use std::ops::Range;

use super::vision::{ImagePatches, VisionModel};
use crate::config::ImageBlockMask;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuTensor};

/// Soft tokens of an image of `grid` `(rows, cols)` patches with pooling kernel `k`:
/// `(rows / k) · (cols / k)`.
pub fn pooled_tokens(grid: (u32, u32), k: u32) -> usize {
    ((grid.0 / k) * (grid.1 / k)) as usize
}

/// How many soft tokens (`token`) `ids` holds.
pub fn count_soft_tokens(ids: &[u32], token: u32) -> usize {
    ids.iter().filter(|&&t| t == token).count()
}

/// Expands each image placeholder: the i-th occurrence of `image_token` in `ids` becomes
/// `boi`, `image_token` × `soft_tokens[i]`, `eoi` (the processor's form, spec §4/§6).
///
/// The number of occurrences must equal `soft_tokens.len()`; otherwise
/// [`Error::ImageTokenMismatch`].
pub fn expand_image_tokens(
    ids: &[u32],
    image_token: u32,
    boi: u32,
    eoi: u32,
    soft_tokens: &[usize],
) -> Result<Vec<u32>> {
    let placeholders = count_soft_tokens(ids, image_token);
    if placeholders != soft_tokens.len() {
        return Err(Error::ImageTokenMismatch {
            placeholders,
            images: soft_tokens.len(),
        });
    }
    let extra: usize = soft_tokens.iter().map(|n| n + 1).sum();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut next = soft_tokens.iter();
    for &t in ids {
        if t == image_token {
            // Counts were checked above, so `next` cannot run out.
            let n = next.next().copied().unwrap_or(0);
            out.push(boi);
            out.extend(std::iter::repeat_n(image_token, n));
            out.push(eoi);
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// The runs of consecutive soft tokens (`token`) of `ids` as `(start, end)` positions (one per
/// image of an expanded prompt, in order).
pub fn image_runs(ids: &[u32], token: u32) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == token {
            let s = i;
            while i < ids.len() && ids[i] == token {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// The image blocks of a bidirectional-vision model (`use_bidirectional_attention: "vision"`),
/// as transformers delimits them (`mm_token_type_ids` marks the image soft tokens only, not
/// `<|image>` / `<image|>`; `get_block_sequence_ids_for_mask` makes each maximal run one block):
/// the runs of soft tokens `token` of `ids`, `(start, end)`.
pub fn image_blocks(ids: &[u32], token: u32) -> Vec<(usize, usize)> {
    image_runs(ids, token)
}

/// Where a prefill chunk of at most `max_len` tokens starting at `start` of an `n`-token
/// sequence ends so that it cuts none of `blocks` (sorted `(start, end)` runs; a chunk must hold
/// a whole block for the block's tokens to see each other): `start + max_len` (or `n`), moved
/// back to the start of a block it would cut. `None` when a block starting at `start` is longer
/// than `max_len` (the chunk must be enlarged).
pub fn chunk_end(blocks: &[(usize, usize)], start: usize, max_len: usize, n: usize) -> Option<usize> {
    let end = (start + max_len).min(n);
    match blocks.iter().find(|&&(s, e)| s < end && end < e) {
        None => Some(end),
        Some(&(s, _)) if s > start => Some(s),
        Some(_) => None,
    }
}

/// Per query of the chunk `range` of `ids` (absolute position of `ids[0]`: `pos0`), the
/// `(lowest, exclusive upper)` absolute key bounds the image-block overlay adds to its causal
/// range on a bidirectional-vision model (the bounds of
/// [`AttnMask::CausalBounded`](crate::gpu::ops::AttnMask::CausalBounded)), appended to `out`
/// as pairs: for a soft token, the end of its image block and — under
/// [`ImageBlockMask::EveryLayer`] (12B) — the block's start (else `u32::MAX`, no extension);
/// `(u32::MAX, q + 1)` (causal) for every other token.
pub fn block_bounds(
    blocks: &[(usize, usize)],
    pos0: usize,
    range: Range<usize>,
    rule: ImageBlockMask,
    out: &mut Vec<u32>,
) {
    out.clear();
    for p in range.clone() {
        out.extend([u32::MAX, (pos0 + p + 1) as u32]);
    }
    for &(s, e) in blocks {
        for p in s.max(range.start)..e.min(range.end) {
            let i = 2 * (p - range.start);
            if rule == ImageBlockMask::EveryLayer {
                out[i] = (pos0 + s) as u32;
            }
            out[i + 1] = (pos0 + e) as u32;
        }
    }
}

/// Most patches encoded together in one pass of the tower (a group grows while it stays within
/// this and the binding limit, see [`VisionModel::max_patches_together`], and always takes at
/// least one image): about 0.3 GB of E2B tower scratch; nine images at the 70-token budget, two
/// at 280, one at 560 and above.
pub const MAX_PATCHES_TOGETHER: usize = 5120;

/// Encodes images in order into per-image soft-token features `[n_i, H]`, preparing each with
/// `prepare` just before it joins a group: consecutive images are encoded together
/// ([`VisionModel::encode_many`]) while their patches stay within
/// [`VisionModel::max_patches_together`], so
/// only one group's patches are alive at a time. No images: no features, whether or not the
/// model has a vision tower.
pub fn encode_each<T, P: Borrow<ImagePatches>>(
    vision: Option<&VisionModel>,
    images: impl IntoIterator<Item = T>,
    mut prepare: impl FnMut(T) -> Result<P>,
) -> Result<Vec<GpuTensor>> {
    let mut images = images.into_iter().peekable();
    if images.peek().is_none() {
        return Ok(Vec::new());
    }
    let vision = vision.ok_or_else(|| {
        Error::InvalidArgument("images given but the checkpoint has no vision tower".into())
    })?;
    let limit = vision.max_patches_together();
    let mut out = Vec::with_capacity(images.size_hint().0);
    let mut group: Vec<P> = Vec::new();
    let mut patches = 0usize;
    let flush = |group: &mut Vec<P>, out: &mut Vec<GpuTensor>| -> Result<()> {
        let refs: Vec<&ImagePatches> = group.iter().map(Borrow::borrow).collect();
        out.extend(vision.encode_many(&refs)?);
        group.clear();
        Ok(())
    };
    for img in images {
        let p = prepare(img)?;
        let n = p.borrow().len();
        if !group.is_empty() && patches + n > limit {
            flush(&mut group, &mut out)?;
            patches = 0;
        }
        patches += n;
        group.push(p);
    }
    flush(&mut group, &mut out)?;
    Ok(out)
}

/// Concatenates feature tensors `[n_i, H]` into one `[Σ n_i, H]` (one submit; none: `None`,
/// one: that tensor itself).
pub fn concat_features(ctx: &GpuContext, parts: &[GpuTensor]) -> Result<Option<GpuTensor>> {
    Ok(match parts {
        [] => None,
        [one] => Some(one.clone()),
        _ => Some(GpuTensor::concat_rows(ctx, parts)?),
    })
}

/// One run of soft tokens and the feature rows that replace their embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaRun {
    /// Position of the run's first soft token in the ids it was placed on (or, from
    /// [`MediaRuns::within`], in the chunk).
    pub start: usize,
    /// Soft tokens in the run.
    pub len: usize,
    /// Feature row of the run's first soft token.
    pub feature_row: usize,
}

/// Media features placed on the soft tokens of a token sequence: all media's feature rows
/// (concatenated in prompt order) and the runs of soft tokens they replace, with "soft tokens
/// = feature rows" checked when it is made ([`place`](Self::place)), so a consumer (the text
/// decoder's embedding scatter) only copies [`within`](Self::within) each chunk.
#[derive(Debug, Clone)]
pub struct MediaRuns {
    features: GpuTensor,
    runs: Vec<MediaRun>,
}

impl MediaRuns {
    /// Places `parts` (per-medium features `[n_i, H]`, in prompt order) on the soft tokens
    /// `token` of `ids`. Errors when the soft tokens of `ids` are not exactly as many as the
    /// feature rows; `None` when both are zero. Concatenates the parts (one submit when there
    /// is more than one).
    pub fn place(
        ctx: &GpuContext,
        ids: &[u32],
        token: u32,
        parts: &[GpuTensor],
    ) -> Result<Option<Self>> {
        let soft = count_soft_tokens(ids, token);
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        if soft != rows {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {soft} media soft tokens (id {token}) but the media give {rows} \
                 feature rows"
            )));
        }
        let Some(features) = concat_features(ctx, parts)? else {
            return Ok(None);
        };
        Ok(Some(MediaRuns {
            features,
            runs: runs_of(ids, token),
        }))
    }

    /// The feature rows `[Σ n_i, H]`.
    pub fn features(&self) -> &GpuTensor {
        &self.features
    }

    /// The runs, in order.
    pub fn runs(&self) -> &[MediaRun] {
        &self.runs
    }

    /// The parts of the runs inside `positions` (e.g. one prefill chunk), with `start`
    /// relative to `positions.start`.
    pub fn within(&self, positions: Range<usize>) -> impl Iterator<Item = MediaRun> + '_ {
        clip_runs(&self.runs, positions)
    }
}

/// The soft-token runs of `ids`, each with the feature row of its first token.
fn runs_of(ids: &[u32], token: u32) -> Vec<MediaRun> {
    let mut row = 0;
    image_runs(ids, token)
        .into_iter()
        .map(|(s, e)| {
            let r = MediaRun {
                start: s,
                len: e - s,
                feature_row: row,
            };
            row += e - s;
            r
        })
        .collect()
}

/// The parts of `runs` inside `positions`, with `start` relative to `positions.start`.
fn clip_runs(runs: &[MediaRun], positions: Range<usize>) -> impl Iterator<Item = MediaRun> + '_ {
    runs.iter().filter_map(move |r| {
        let s = r.start.max(positions.start);
        let e = (r.start + r.len).min(positions.end);
        (s < e).then(|| MediaRun {
            start: s - positions.start,
            len: e - s,
            feature_row: r.feature_row + (s - r.start),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 9;

    #[test]
    fn runs_carry_their_feature_rows() {
        let ids = [1, IMG, IMG, 2, 3, IMG, IMG, IMG, 4];
        assert_eq!(image_runs(&ids, IMG), vec![(1, 3), (5, 8)]);
        assert_eq!(count_soft_tokens(&ids, IMG), 5);
        let runs = runs_of(&ids, IMG);
        assert_eq!(
            runs,
            vec![
                MediaRun {
                    start: 1,
                    len: 2,
                    feature_row: 0
                },
                MediaRun {
                    start: 5,
                    len: 3,
                    feature_row: 2
                },
            ]
        );
    }

    #[test]
    fn chunks_see_the_parts_of_runs_inside_them() {
        let ids = [1, IMG, IMG, 2, 3, IMG, IMG, IMG, 4];
        let runs = runs_of(&ids, IMG);
        // Chunks of 4 tokens: [0, 4), [4, 8), [8, 9).
        let chunk = |r: Range<usize>| clip_runs(&runs, r).collect::<Vec<_>>();
        assert_eq!(
            chunk(0..4),
            vec![MediaRun {
                start: 1,
                len: 2,
                feature_row: 0
            }]
        );
        assert_eq!(
            chunk(4..8),
            vec![MediaRun {
                start: 1,
                len: 3,
                feature_row: 2
            }]
        );
        assert!(chunk(8..9).is_empty());
        // A chunk boundary inside a run splits it; the rows stay in order.
        assert_eq!(
            chunk(6..9),
            vec![MediaRun {
                start: 0,
                len: 2,
                feature_row: 3
            }]
        );
        let rows: usize = [0..3, 3..6, 6..9]
            .into_iter()
            .flat_map(|r| clip_runs(&runs, r))
            .map(|r| r.len)
            .sum();
        assert_eq!(rows, 5);
    }

    #[test]
    fn chunks_never_cut_an_image_block() {
        // blocks [2, 7) and [9, 12) of a 14-token sequence
        let blocks = [(2, 7), (9, 12)];
        assert_eq!(chunk_end(&blocks, 0, 4, 14), Some(2)); // would cut [2, 7)
        assert_eq!(chunk_end(&blocks, 2, 5, 14), Some(7)); // exactly the block
        assert_eq!(chunk_end(&blocks, 2, 4, 14), None); // the block is longer than the chunk
        assert_eq!(chunk_end(&blocks, 7, 4, 14), Some(9));
        assert_eq!(chunk_end(&blocks, 7, 5, 14), Some(12));
        assert_eq!(chunk_end(&blocks, 0, 100, 14), Some(14));
        assert_eq!(chunk_end(&[], 3, 4, 5), Some(5));
    }

    #[test]
    fn block_bounds_are_block_ends_for_soft_tokens() {
        let ids = [1, IMG, IMG, IMG, 2, IMG, IMG, 3];
        let blocks = image_blocks(&ids, IMG);
        assert_eq!(blocks, vec![(1, 4), (5, 7)]);
        let mut b = Vec::new();
        let his = |b: &[u32]| b.chunks(2).map(|p| p[1]).collect::<Vec<_>>();
        let los = |b: &[u32]| b.chunks(2).map(|p| p[0]).collect::<Vec<_>>();
        const NO: u32 = u32::MAX;
        block_bounds(&blocks, 10, 0..8, ImageBlockMask::SlidingLayers, &mut b);
        assert_eq!(his(&b), vec![11, 14, 14, 14, 15, 17, 17, 18]);
        assert_eq!(los(&b), vec![NO; 8]);
        block_bounds(&blocks, 10, 2..6, ImageBlockMask::SlidingLayers, &mut b);
        assert_eq!(his(&b), vec![14, 14, 15, 17]);
        // the 12B rule: a soft token also sees its block from the block's start
        block_bounds(&blocks, 10, 0..8, ImageBlockMask::EveryLayer, &mut b);
        assert_eq!(his(&b), vec![11, 14, 14, 14, 15, 17, 17, 18]);
        assert_eq!(los(&b), vec![NO, 11, 11, 11, NO, 15, 15, NO]);
    }

    #[test]
    fn pooled_token_counts() {
        assert_eq!(pooled_tokens((48, 63), 3), 16 * 21);
        assert_eq!(pooled_tokens((6, 6), 3), 4);
    }
}
