//! Image preprocessing for the Gemma 4 vision tower (spec §3.1 and §5).
//!
//! The reference is transformers' `Gemma4ImageProcessorPil` (transformers 5.24,
//! `models/gemma4/image_processing_pil_gemma4.py`):
//!
//! 1. decode, apply the EXIF orientation, convert to RGB8 (transparency composited onto white, as
//!    transformers' `convert_to_rgb` does) — [`load_image`];
//! 2. aspect-preserving resize to the soft-token budget — [`target_size`] reproduces
//!    `get_aspect_ratio_preserving_size` exactly (same f64 arithmetic), and the resampling reproduces
//!    PIL's `Image.resize(..., BICUBIC)` on 8-bit images (separable two-pass fixed-point filter);
//! 3. rescale by 1/255 (no mean/std normalisation; the model maps [0, 1] to [-1, 1] itself);
//! 4. patchify: row-major patches, `(y, x, channel)` order inside a patch — [`preprocess`].
//!
//! Nothing here pads to `max_patches`: the engine takes exactly `grid.0 * grid.1` patches.
//!
//! Verified against the reference: [`target_size`] on 27 sizes (all budgets, extreme aspect ratios),
//! and the resized bytes / `pixel_values` / positions bit-for-bit against PIL 13 and transformers 5.24
//! (tests/preprocess.rs, goldens made by `tools/preprocess_golden.py`).
//!
//! Known differences from Python, all outside the 8-bit RGB path the goldens cover:
//! - transformers' own `load_image(path)` does `convert("RGB")` (alpha dropped) before the processor, whose
//!   `convert_to_rgb` composites alpha onto white only for PIL images handed to it directly; we always
//!   composite onto white (transparent pixels often carry black or garbage RGB).
//! - 16-bit inputs are scaled to 8 bits (`v / 257`, rounded); PIL's handling of 16-bit modes differs.
//! - A truncated JPEG is detected by its missing end-of-image marker; PIL detects more cases.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// The soft-token budgets the reference processor accepts (`_SUPPORTED_SOFT_TOKENS`).
pub const SUPPORTED_SOFT_TOKENS: &[u32] = &[70, 140, 280, 560, 1120];

/// The unified image processor's default budget (`Gemma4UnifiedImageProcessor.max_soft_tokens`),
/// used when neither the options nor `processor_config.json` say.
pub const UNIFIED_DEFAULT_SOFT_TOKENS: u32 = 280;

/// Which reference image processor the options reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageProcessor {
    /// `Gemma4ImageProcessorPil` (E2B / E4B): PIL's bicubic resize, `patch_size`-pixel patches,
    /// values `f32(u8 · (1/255 in f64))`, `rows·cols / k²` soft tokens.
    #[default]
    Gemma4Pil,
    /// `Gemma4UnifiedImageProcessor` (12B unified, torchvision backend): the same resize rule,
    /// torchvision's antialiased bicubic on uint8 ([`resize_bicubic_torchvision`]), model
    /// patches of `patch_size · pooling_kernel_size` pixels (the k×k teacher patches merged,
    /// `(y, x, channel)` inside), values `f32(u8) · f32(1/255)`, one soft token per model patch.
    Unified,
}

/// Default decompression-bomb limit in pixels: PIL's `DecompressionBombError` threshold
/// (`2 * MAX_IMAGE_PIXELS` = 178 956 970), so e.g. 13 000 × 13 000 passes and 40 000 × 40 000 is refused.
pub const DEFAULT_MAX_PIXELS_DECODED: u64 = 178_956_970;

/// Errors of image decoding and preprocessing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read or decoded.
    #[error("cannot read image {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file ends before the image data does.
    #[error("image {path} is truncated")]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// The image has no pixels.
    #[error("image has zero size ({width}x{height})")]
    ZeroSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The image header announces more pixels than `ImageOptions::max_pixels_decoded` allows.
    #[error("image of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit in pixels.
        limit: u64,
    },
    /// The bytes are not in a supported format (PNG, JPEG, WebP, GIF, BMP, TIFF) or use an
    /// unsupported feature of one.
    #[error("unsupported image format in {path}: {reason}")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Details from the decoder.
        reason: String,
    },
    /// `max_soft_tokens` is not one of the budgets the model was trained with.
    #[error("invalid soft-token budget {given}; allowed: {allowed:?}")]
    InvalidBudget {
        /// The budget asked for.
        given: u32,
        /// The accepted budgets.
        allowed: &'static [u32],
    },
    /// Options that cannot work (zero patch size or pooling kernel).
    #[error("invalid image options: {0}")]
    InvalidOptions(String),
    /// The resize rule has no valid target for this size (the reference raises `ValueError`).
    #[error("cannot resize a {height}x{width} image to the patch budget: {reason}")]
    Unresizable {
        /// Height in pixels.
        height: u32,
        /// Width in pixels.
        width: u32,
        /// Why.
        reason: &'static str,
    },
}

/// Preprocessing options. Build them with [`ImageOptions::from_vision_config`] from the model's vision
/// config; change the budget with [`ImageOptions::with_max_soft_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    /// Soft tokens per image at most: one of [`SUPPORTED_SOFT_TOKENS`] (70, 140, 280, 560, 1120).
    pub max_soft_tokens: u32,
    /// Vision patch size in pixels (`vision_config.patch_size`, 16 on E2B/E4B).
    pub patch_size: u32,
    /// Pooling kernel (`vision_config.pooling_kernel_size`, 3 on E2B/E4B).
    pub pooling_kernel_size: u32,
    /// Decompression-bomb limit: images whose header announces more pixels are refused before
    /// decoding ([`DEFAULT_MAX_PIXELS_DECODED`] by default).
    pub max_pixels_decoded: u64,
    /// The reference processor reproduced (resampler, patch form, rescale).
    pub processor: ImageProcessor,
}

impl ImageOptions {
    /// Options from the vision config values: `patch_size`, `pooling_kernel_size` and
    /// `default_output_length` (the default soft-token budget, 280 on E2B/E4B).
    pub fn from_vision_config(
        patch_size: u32,
        pooling_kernel_size: u32,
        default_output_length: u32,
    ) -> Result<Self, ImageError> {
        let opts = Self {
            max_soft_tokens: default_output_length,
            patch_size,
            pooling_kernel_size,
            max_pixels_decoded: DEFAULT_MAX_PIXELS_DECODED,
            processor: ImageProcessor::Gemma4Pil,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Options of the 12B unified model's processor ([`ImageProcessor::Unified`]) from its
    /// vision config's `patch_size` and `pooling_kernel_size` and a soft-token budget.
    pub fn unified(
        patch_size: u32,
        pooling_kernel_size: u32,
        max_soft_tokens: u32,
    ) -> Result<Self, ImageError> {
        Ok(Self {
            processor: ImageProcessor::Unified,
            ..Self::from_vision_config(patch_size, pooling_kernel_size, max_soft_tokens)?
        })
    }

    /// The same options with another soft-token budget (validated).
    pub fn with_max_soft_tokens(self, max_soft_tokens: u32) -> Result<Self, ImageError> {
        let opts = Self {
            max_soft_tokens,
            ..self
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Checks the budget and the sizes.
    pub fn validate(&self) -> Result<(), ImageError> {
        if !SUPPORTED_SOFT_TOKENS.contains(&self.max_soft_tokens) {
            return Err(ImageError::InvalidBudget {
                given: self.max_soft_tokens,
                allowed: SUPPORTED_SOFT_TOKENS,
            });
        }
        if self.patch_size == 0 || self.pooling_kernel_size == 0 {
            return Err(ImageError::InvalidOptions(format!(
                "patch_size {} and pooling_kernel_size {} must be positive",
                self.patch_size, self.pooling_kernel_size
            )));
        }
        if self.patch_size > 1024 || self.pooling_kernel_size > 64 {
            return Err(ImageError::InvalidOptions(format!(
                "patch_size {} / pooling_kernel_size {} out of range",
                self.patch_size, self.pooling_kernel_size
            )));
        }
        Ok(())
    }

    /// `max_soft_tokens · pooling_kernel_size²`: the patch budget.
    pub fn max_patches(&self) -> u64 {
        u64::from(self.max_soft_tokens) * u64::from(self.pooling_kernel_size).pow(2)
    }
}

/// A preprocessed image: the vision tower's input.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessedImage {
    /// `[n_patches, 3·p·p]` values in [0, 1]; patches row-major over the grid, inside a patch
    /// `(y, x, channel)` order with the channel fastest.
    pub pixel_values: Vec<f32>,
    /// `(x, y) = (col, row)` of every patch, in patch order.
    pub positions: Vec<[u32; 2]>,
    /// `(patch rows, patch cols)`.
    pub grid: (u32, u32),
    /// `(height, width)` after the resize.
    pub resized: (u32, u32),
    /// Soft tokens the image turns into: `rows·cols / k²`.
    pub num_soft_tokens: u32,
}

impl PreprocessedImage {
    /// Number of patches (`grid.0 · grid.1`).
    pub fn num_patches(&self) -> usize {
        self.positions.len()
    }
}

/// The resize rule of the reference (`get_aspect_ratio_preserving_size`), exactly: returns the target
/// `(height, width)` for an `h × w` image, both multiples of `patch_size · pooling_kernel_size`, with at
/// most `max_soft_tokens · k²` patches. Small images are upscaled.
pub fn target_size(h: u32, w: u32, opts: &ImageOptions) -> Result<(u32, u32), ImageError> {
    opts.validate()?;
    if h == 0 || w == 0 {
        return Err(ImageError::ZeroSize {
            width: w,
            height: h,
        });
    }
    let p = u64::from(opts.patch_size);
    let k = u64::from(opts.pooling_kernel_size);
    let max_patches = opts.max_patches();
    // Python: total_px = height * width (int), target_px = max_patches * patch_size**2 (int),
    // factor = math.sqrt(target_px / total_px) (true division, correctly rounded, as is `as f64 / as f64`
    // for integers below 2^53), ideal = factor * side, floor(ideal / side_mult) * side_mult.
    let total_px = u64::from(h) * u64::from(w);
    let target_px = max_patches * p * p;
    let factor = (target_px as f64 / total_px as f64).sqrt();
    let ideal_h = factor * f64::from(h);
    let ideal_w = factor * f64::from(w);
    let side = p * k;
    let mut th = (ideal_h / side as f64).floor() as u64 * side;
    let mut tw = (ideal_w / side as f64).floor() as u64 * side;
    if th == 0 && tw == 0 {
        return Err(ImageError::Unresizable {
            height: h,
            width: w,
            reason: "both sides round to 0",
        });
    }
    let max_side = (max_patches / (k * k)) * side;
    if th == 0 {
        th = side;
        // int(math.floor(width / height)): float division, then floor.
        tw = ((f64::from(w) / f64::from(h)).floor() as u64 * side).min(max_side);
    } else if tw == 0 {
        tw = side;
        th = ((f64::from(h) / f64::from(w)).floor() as u64 * side).min(max_side);
    }
    if th * tw > target_px {
        return Err(ImageError::Unresizable {
            height: h,
            width: w,
            reason: "target exceeds the patch budget",
        });
    }
    let th = u32::try_from(th).map_err(|_| ImageError::Unresizable {
        height: h,
        width: w,
        reason: "target height overflows",
    })?;
    let tw = u32::try_from(tw).map_err(|_| ImageError::Unresizable {
        height: h,
        width: w,
        reason: "target width overflows",
    })?;
    Ok((th, tw))
}

/// Preprocesses a decoded image: RGB conversion (alpha composited onto white), resize per
/// [`target_size`] with the processor's bicubic resampling (PIL's, or torchvision's for
/// [`ImageProcessor::Unified`]; skipped when the size is unchanged), rescale by 1/255 and
/// patchify.
pub fn preprocess(
    img: &DynamicImage,
    opts: &ImageOptions,
) -> Result<PreprocessedImage, ImageError> {
    opts.validate()?;
    let (w, h) = (img.width(), img.height());
    let (th, tw) = target_size(h, w, opts)?;
    let rgb = to_rgb8(img);
    let resized = if (th, tw) == (h, w) {
        rgb
    } else {
        Cow::Owned(match opts.processor {
            ImageProcessor::Gemma4Pil => resize_bicubic_pil(&rgb, tw, th),
            ImageProcessor::Unified => resize_bicubic_torchvision(&rgb, tw, th),
        })
    };
    Ok(patchify(&resized, opts))
}

/// Patchifies an RGB8 image whose sides are multiples of the patch (remainders are dropped, as
/// the reference's reshape would refuse them): `patch_size`-pixel patches, or for the unified
/// processor `patch_size · pooling_kernel_size`-pixel model patches (the reference merges k×k
/// teacher patches into exactly this: row-major model patches, `(y, x, channel)` inside).
fn patchify(img: &RgbImage, opts: &ImageOptions) -> PreprocessedImage {
    let (p, k) = match opts.processor {
        ImageProcessor::Gemma4Pil => (opts.patch_size as usize, opts.pooling_kernel_size),
        ImageProcessor::Unified => ((opts.patch_size * opts.pooling_kernel_size) as usize, 1),
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (rows, cols) = (h / p, w / p);
    let raw = img.as_raw();
    let patch_len = 3 * p * p;
    let mut pixel_values = Vec::with_capacity(rows * cols * patch_len);
    let mut positions = Vec::with_capacity(rows * cols);
    // The PIL backend rescales with `image.astype(np.float64) * (1/255)` then casts to
    // float32; the torchvision backend multiplies the uint8 tensor by the Python float, in
    // float32 (`f32(v) * f32(1/255)`): 126 of the 256 values differ by one ulp.
    let lut: Vec<f32> = (0..256u32)
        .map(|v| match opts.processor {
            ImageProcessor::Gemma4Pil => (f64::from(v) * (1.0 / 255.0)) as f32,
            ImageProcessor::Unified => v as f32 * (1.0f64 / 255.0) as f32,
        })
        .collect();
    for r in 0..rows {
        for c in 0..cols {
            for y in 0..p {
                let start = ((r * p + y) * w + c * p) * 3;
                pixel_values.extend(raw[start..start + 3 * p].iter().map(|&v| lut[v as usize]));
            }
            positions.push([c as u32, r as u32]);
        }
    }
    let n = (rows * cols) as u32;
    PreprocessedImage {
        pixel_values,
        positions,
        grid: (rows as u32, cols as u32),
        resized: (h as u32, w as u32),
        num_soft_tokens: n / (k * k),
    }
}

/// Converts to RGB8 as transformers' `convert_to_rgb` does: images with an alpha channel are
/// composited onto opaque white with PIL's `alpha_composite` integer arithmetic; others are
/// converted directly (gray replicated, 16-bit scaled to 8-bit).
pub fn to_rgb8(img: &DynamicImage) -> Cow<'_, RgbImage> {
    if let DynamicImage::ImageRgb8(rgb) = img {
        return Cow::Borrowed(rgb);
    }
    if !img.color().has_alpha() {
        return Cow::Owned(img.to_rgb8());
    }
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, s) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(s[3]);
        for ch in 0..3 {
            o[ch] = composite_on_white(u32::from(s[ch]), a);
        }
    }
    Cow::Owned(out)
}

/// PIL `AlphaComposite.c` for an opaque white destination (PRECISION_BITS = 7).
fn composite_on_white(c: u32, a: u32) -> u8 {
    if a == 0 {
        return 255;
    }
    const PB: u32 = 7;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PB);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PB).min(255) as u8
}

// ---------------------------------------------------------------------------------------------
// PIL-compatible bicubic resampling (Pillow `libImaging/Resample.c`, 8-bit path).

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output sample: first input index and fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn precompute_coeffs(in_size: u32, out_size: u32) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    // PIL: in0 = 0.0f, in1 = (float)in_size; scale = (double)(in1 - in0) / outSize.
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // (int)(center - support + 0.5): truncation toward zero, then clamp at 0.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resamples `src` (`src_w × rows`, 3 channels, row stride `src_w * 3`) horizontally to `out_w`.
fn resample_horizontal(src: &[u8], src_w: u32, rows: usize, out_w: u32, c: &Coeffs) -> Vec<u8> {
    let (sw, ow) = (src_w as usize * 3, out_w as usize * 3);
    let mut out = vec![0u8; rows * ow];
    for (src_row, out_row) in src.chunks_exact(sw).zip(out.chunks_exact_mut(ow)) {
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let init = 1i64 << (PRECISION_BITS - 1);
            let mut ss = [init; 3];
            for (x, &kw) in k.iter().enumerate() {
                let s = &src_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] += i64::from(s[ch]) * i64::from(kw);
                }
            }
            for ch in 0..3 {
                px[ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// Resamples `src` (`w × src_h`, 3 channels) vertically to `out_h` rows.
fn resample_vertical(src: &[u8], w: u32, out_h: u32, c: &Coeffs) -> Vec<u8> {
    let rw = w as usize * 3;
    let mut out = vec![0u8; out_h as usize * rw];
    let mut acc = vec![0i64; rw];
    for (yy, out_row) in out.chunks_exact_mut(rw).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(1i64 << (PRECISION_BITS - 1));
        for (y, &kw) in k.iter().enumerate() {
            let src_row = &src[(ymin + y) * rw..(ymin + y + 1) * rw];
            for (a, &s) in acc.iter_mut().zip(src_row) {
                *a += i64::from(s) * i64::from(kw);
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// `Image.resize((out_w, out_h), Image.Resampling.BICUBIC)` of Pillow for an RGB8 image: a horizontal
/// pass (when the width changes) into an 8-bit intermediate, then a vertical pass (when the height
/// changes); the filter support grows with the downscale factor (antialiasing).
pub fn resize_bicubic_pil(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let mut data: Cow<'_, [u8]> = Cow::Borrowed(img.as_raw());
    let mut cur_w = w;
    if out_w != w {
        let c = precompute_coeffs(w, out_w);
        data = Cow::Owned(resample_horizontal(&data, w, h as usize, out_w, &c));
        cur_w = out_w;
    }
    if out_h != h {
        let c = precompute_coeffs(h, out_h);
        data = Cow::Owned(resample_vertical(&data, cur_w, out_h, &c));
    }
    let buf = data.into_owned();
    // Sizes match by construction.
    RgbImage::from_raw(out_w, out_h, buf).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

// ---------------------------------------------------------------------------------------------
// torchvision-compatible bicubic resampling: `torchvision.transforms.v2.functional.resize(uint8
// tensor, antialias=True, BICUBIC)`, which on CPU runs ATen's uint8 antialias path
// (`_upsample_bicubic2d_aa`, UpSampleKernel.cpp / UpSampleKernelAVXAntialias.h): weights of the
// Keys cubic (a = -0.5) computed in f64 over the PIL-style support, normalised, rescaled to
// int16 with a precision chosen from the largest weight, then two separable passes (horizontal
// into a uint8 intermediate, then vertical) accumulating in i32 from `1 << (precision - 1)`,
// shifted right and saturated to [0, 255]. It differs from PIL's resampler (22-bit i32 weights,
// another form of the cubic, f32 scale) by ±1 on some pixels.

/// The antialiased Keys cubic of ATen (`HelperInterpCubic::aa_filter`, a = -0.5), with its
/// `cubic_convolution1/2` forms.
fn torch_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Per output sample: first input index and count, int16 weights, and their precision
/// (`_compute_index_ranges_int16_weights` with antialias, align_corners false, no scale given).
struct TorchCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i16>,
    precision: u32,
}

fn torch_coeffs(in_size: u32, out_size: u32) -> TorchCoeffs {
    // area_pixel_compute_scale: input_size / output_size in f64.
    let scale = f64::from(in_size) / f64::from(out_size);
    let interp = 4.0; // bicubic
    let support = if scale >= 1.0 {
        interp * 0.5 * scale
    } else {
        interp * 0.5
    };
    let ksize = support.ceil() as usize * 2 + 1;
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut wf = vec![0f64; out_size as usize * ksize];
    let mut wt_max = 0f64;
    for i in 0..out_size as usize {
        let center = scale * (i as f64 + 0.5);
        // static_cast<int64_t>: truncation toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xsize = ((center + support + 0.5) as i64).min(i64::from(in_size)) - xmin;
        let xsize = xsize.clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let row = &mut wf[i * ksize..(i + 1) * ksize];
        let mut total = 0.0;
        for (j, w) in row.iter_mut().enumerate().take(xsize) {
            *w = torch_cubic(((j + xmin) as f64 - center + 0.5) * invscale);
            total += *w;
        }
        if total != 0.0 {
            for w in row.iter_mut().take(xsize) {
                *w /= total;
                wt_max = wt_max.max(*w);
            }
        }
        bounds.push((xmin, xsize));
    }
    // The largest precision whose doubled largest weight still fits in int16.
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + wt_max * f64::from(1u32 << (precision + 1))) as i32;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let weights = wf
        .iter()
        .map(|&w| {
            let v = w * f64::from(1u32 << precision);
            (if v < 0.0 { (-0.5 + v) as i32 } else { (0.5 + v) as i32 }) as i16
        })
        .collect();
    TorchCoeffs {
        ksize,
        bounds,
        weights,
        precision,
    }
}

/// `(acc >> precision)` saturated to a byte (`_mm256_srai_epi32`, then the signed 16-bit and
/// unsigned 8-bit saturating packs).
fn torch_clip8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Resamples `src` (`src_w × rows`, 3 channels) horizontally to `out_w`.
fn torch_horizontal(src: &[u8], src_w: u32, rows: usize, out_w: u32, c: &TorchCoeffs) -> Vec<u8> {
    let (sw, ow) = (src_w as usize * 3, out_w as usize * 3);
    let init = 1i32 << (c.precision.max(1) - 1);
    let mut out = vec![0u8; rows * ow];
    for (src_row, out_row) in src.chunks_exact(sw).zip(out.chunks_exact_mut(ow)) {
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [init; 3];
            for (x, &kw) in k.iter().enumerate() {
                let s = &src_row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                for ch in 0..3 {
                    ss[ch] += i32::from(s[ch]) * i32::from(kw);
                }
            }
            for ch in 0..3 {
                px[ch] = torch_clip8(ss[ch], c.precision);
            }
        }
    }
    out
}

/// Resamples `src` (`w × src_h`, 3 channels) vertically to `out_h` rows.
fn torch_vertical(src: &[u8], w: u32, out_h: u32, c: &TorchCoeffs) -> Vec<u8> {
    let rw = w as usize * 3;
    let init = 1i32 << (c.precision.max(1) - 1);
    let mut out = vec![0u8; out_h as usize * rw];
    let mut acc = vec![0i32; rw];
    for (yy, out_row) in out.chunks_exact_mut(rw).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(init);
        for (y, &kw) in k.iter().enumerate() {
            let src_row = &src[(ymin + y) * rw..(ymin + y + 1) * rw];
            for (a, &s) in acc.iter_mut().zip(src_row) {
                *a += i32::from(s) * i32::from(kw);
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = torch_clip8(a, c.precision);
        }
    }
    out
}

/// torchvision's `resize(img, [out_h, out_w], BICUBIC, antialias=True)` of an RGB8 image on the
/// CPU (ATen's uint8 path, see above): a horizontal pass when the width changes into a uint8
/// intermediate, then a vertical pass when the height changes.
pub fn resize_bicubic_torchvision(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let mut data: Cow<'_, [u8]> = Cow::Borrowed(img.as_raw());
    let mut cur_w = w;
    if out_w != w {
        let c = torch_coeffs(w, out_w);
        data = Cow::Owned(torch_horizontal(&data, w, h as usize, out_w, &c));
        cur_w = out_w;
    }
    if out_h != h {
        let c = torch_coeffs(h, out_h);
        data = Cow::Owned(torch_vertical(&data, cur_w, out_h, &c));
    }
    let buf = data.into_owned();
    // Sizes match by construction.
    RgbImage::from_raw(out_w, out_h, buf).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Reads and decodes an image file: any supported format (PNG, JPEG, WebP, GIF — first frame —,
/// BMP, TIFF), guessed from the content; the EXIF orientation is applied; the result is RGB8
/// (gray, alpha, 16-bit and palette inputs converted as [`to_rgb8`] does). The pixel count from the
/// header is checked against `opts.max_pixels_decoded` before any pixel buffer is allocated.
pub fn load_image(path: &Path, opts: &ImageOptions) -> Result<DynamicImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    decode_image(&bytes, path, opts)
}

/// [`load_image`] on bytes already in memory; `path` only labels errors.
pub fn load_image_from_bytes(
    bytes: &[u8],
    opts: &ImageOptions,
) -> Result<DynamicImage, ImageError> {
    decode_image(bytes, Path::new("<memory>"), opts)
}

fn decode_image(
    bytes: &[u8],
    path: &Path,
    opts: &ImageOptions,
) -> Result<DynamicImage, ImageError> {
    let err = |e: image::ImageError| map_image_error(e, path);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let Some(format) = reader.format() else {
        return Err(ImageError::UnsupportedFormat {
            path: path.to_path_buf(),
            reason: "unrecognised file signature".into(),
        });
    };
    // Decoders refuse zero dimensions with a generic format error; report them as such.
    if let Some((width, height)) = header_dimensions(bytes, format) {
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSize { width, height });
        }
    }
    // The JPEG decoder fills missing scan data with gray instead of failing (PIL raises
    // "image file is truncated"): a JPEG without any end-of-image marker is truncated.
    // (A truncated file that still contains an embedded thumbnail's EOI is not caught.)
    if format == ImageFormat::Jpeg && !bytes.windows(2).any(|w| w == [0xff, 0xd9]) {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
        });
    }
    // Allocation limit for the decoders: enough for the pixel limit at 8 bytes per pixel
    // (RGBA16) plus slack; the pixel limit itself is checked below from the header.
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        opts.max_pixels_decoded
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    if u64::from(width) * u64::from(height) > opts.max_pixels_decoded {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: opts.max_pixels_decoded,
        });
    }
    // A broken EXIF block is ignored (PIL's exif_transpose leaves such images as they are).
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(err)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(match to_rgb8(&img) {
        Cow::Borrowed(_) => img,
        Cow::Owned(rgb) => DynamicImage::ImageRgb8(rgb),
    })
}

/// Width and height straight from a PNG or GIF header (for the zero-size check), if present.
fn header_dimensions(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    let be32 = |o: usize| Some(u32::from_be_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let le16 = |o: usize| {
        Some(u32::from(u16::from_le_bytes(
            bytes.get(o..o + 2)?.try_into().ok()?,
        )))
    };
    match format {
        ImageFormat::Png if bytes.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        ImageFormat::Gif => Some((le16(6)?, le16(8)?)),
        _ => None,
    }
}

fn map_image_error(e: image::ImageError, path: &Path) -> ImageError {
    use image::ImageError as E;
    let path_buf = path.to_path_buf();
    if is_truncation(&e) {
        return ImageError::Truncated { path: path_buf };
    }
    match e {
        E::Unsupported(u) => ImageError::UnsupportedFormat {
            path: path_buf,
            reason: u.to_string(),
        },
        E::Limits(l) => ImageError::Unreadable {
            path: path_buf,
            reason: format!("decoder limit exceeded: {l}"),
        },
        other => ImageError::Unreadable {
            path: path_buf,
            reason: other.to_string(),
        },
    }
}

/// Whether an error (or one of its sources) is an unexpected end of file.
fn is_truncation(e: &image::ImageError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        let msg = err.to_string().to_ascii_lowercase();
        if msg.contains("unexpected end")
            || msg.contains("unexpected eof")
            || msg.contains("end of file")
            || msg.contains("truncated")
            || msg.contains("no more data")
        {
            return true;
        }
        cur = err.source();
    }
    false
}
