//! CPU MLX affine quantization (`mx.quantize(w, group_size, bits)`, mode "affine"): the layout,
//! packing and unpacking of codes, the MLX-exact quantizer (tests, synthetic checkpoints and
//! quantize-on-load) and dequantization (the host PLE table, CPU references, tests).
//!
//! Layout (MLX): per row a little-endian bit stream of `bits`-bit codes in u32 words; code `k`
//! occupies bits `[k * bits, (k + 1) * bits)` of the row's stream, so 3/5/6-bit codes may straddle
//! two words. Per group of `group` consecutive columns one scale and one bias; `w = scale * q + bias`.
//! Scales may be negative (MLX anchors the group at the edge with the larger magnitude).
//! The GPU kernels decode the same layout (`wgsl/common/affine.wgsl`).

use crate::gpu::ScaleDType;

/// Words of one packed row of `cols` codes of `bits` bits.
pub fn row_words(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32)
}

/// Quantizes a row-major `[rows, cols]` matrix like MLX's `affine_quantize`:
/// per group `scale = max((max - min) / (2^bits - 1), 1e-7)`, negated unless `|min| > |max|`;
/// the anchor `edge` is `min` (positive scale) or `max` (negative scale); the scale is then adjusted
/// to `edge / round(edge / scale)` (so that 0 is exactly representable) and `bias = edge`
/// (0 when `round(edge / scale) == 0`); `q = clamp(round((w - bias) / scale), 0, 2^bits - 1)`.
///
/// Returns `(packed codes [rows, row_words], scales [rows, cols / group], biases [rows, cols / group])`.
/// `cols` must be a multiple of `group` (panics otherwise: a programming error, not user input).
pub fn quantize_affine(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    quantize_groups(w, rows, cols, bits, group, |x| x)
}

/// [`quantize_affine`] with each group's scale and bias passed through `store` (their rounding
/// to the storage type) before the codes are computed against them.
fn quantize_groups(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    store: impl Fn(f32) -> f32,
) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    assert!(group > 0 && cols.is_multiple_of(group), "cols % group != 0");
    assert_eq!(w.len(), rows * cols, "w has the wrong length");
    let n_bins = ((1u64 << bits) - 1) as f32;
    let eps = 1e-7f32;
    let groups = cols / group;
    let mut codes = vec![0u32; rows * cols];
    let mut scales = Vec::with_capacity(rows * groups);
    let mut biases = Vec::with_capacity(rows * groups);
    for (gi, chunk) in w.chunks(group).enumerate() {
        let w_max = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let w_min = chunk.iter().copied().fold(f32::INFINITY, f32::min);
        let mask = w_min.abs() > w_max.abs();
        let mut scale = ((w_max - w_min) / n_bins).max(eps);
        if !mask {
            scale = -scale;
        }
        let edge = if mask { w_min } else { w_max };
        let q0 = (edge / scale).round();
        let (scale, bias) = if q0 != 0.0 {
            (edge / q0, edge)
        } else {
            (scale, 0.0)
        };
        let (scale, bias) = (store(scale), store(bias));
        if scale != 0.0 {
            for (j, &v) in chunk.iter().enumerate() {
                codes[gi * group + j] = ((v - bias) / scale).round().clamp(0.0, n_bins) as u32;
            }
        }
        scales.push(scale);
        biases.push(bias);
    }
    (pack_codes(&codes, cols, bits), scales, biases)
}

/// Packs row-major codes (`cols` per row) into MLX's little-endian bit stream, one padded run of
/// [`row_words`] words per row. Codes are masked to `bits` bits.
pub fn pack_codes(codes: &[u32], cols: usize, bits: u32) -> Vec<u32> {
    let rw = row_words(cols, bits);
    let rows = codes.len().checked_div(cols).unwrap_or(0);
    let mask = ((1u64 << bits) - 1) as u32;
    let mut out = vec![0u32; rows * rw];
    for r in 0..rows {
        let row = &mut out[r * rw..(r + 1) * rw];
        for (k, &c) in codes[r * cols..(r + 1) * cols].iter().enumerate() {
            let bit = k * bits as usize;
            let (wi, sh) = (bit / 32, (bit % 32) as u32);
            let c = c & mask;
            row[wi] |= c << sh;
            if sh + bits > 32 {
                row[wi + 1] |= c >> (32 - sh);
            }
        }
    }
    out
}

/// Code `k` of one packed row.
#[inline]
pub fn unpack_code(row_words: &[u32], k: usize, bits: u32) -> u32 {
    let bit = k * bits as usize;
    let (wi, sh) = (bit / 32, (bit % 32) as u32);
    let mask = ((1u64 << bits) - 1) as u32;
    let mut v = row_words[wi] >> sh;
    if sh + bits > 32 {
        v |= row_words[wi + 1] << (32 - sh);
    }
    v & mask
}

/// Reads little-endian u32 words from bytes (e.g. a row of a stored `.weight` tensor).
pub fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Dequantizes one packed row: `out[k] = scales[k / group] * q_k + biases[k / group]`.
pub fn dequantize_row(
    words: &[u32],
    scales: &[f32],
    biases: &[f32],
    bits: u32,
    group: usize,
    out: &mut [f32],
) {
    for (k, o) in out.iter_mut().enumerate() {
        let g = k / group;
        *o = scales[g] * unpack_code(words, k, bits) as f32 + biases[g];
    }
}

/// Dequantizes packed codes with per-group scales and biases back to `[rows, cols]` f32.
pub fn dequantize_affine(
    packed: &[u32],
    scales: &[f32],
    biases: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
) -> Vec<f32> {
    let rw = row_words(cols, bits);
    let groups = cols / group.max(1);
    let mut out = vec![0f32; rows * cols];
    for (r, o) in out.chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
        let g = r * groups..(r + 1) * groups;
        dequantize_row(
            &packed[r * rw..(r + 1) * rw],
            &scales[g.clone()],
            &biases[g],
            bits,
            group,
            o,
        );
    }
    out
}

/// A quantized matrix in the MLX storage layout, scales and biases as stored bytes.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// `rows * row_words` packed words, row-major.
    pub words: Vec<u32>,
    /// `rows * cols / group` scales, little-endian in `scale_dtype`.
    pub scales: Vec<u8>,
    /// `rows * cols / group` biases, little-endian in `scale_dtype`.
    pub biases: Vec<u8>,
    /// Storage type of scales/biases.
    pub scale_dtype: ScaleDType,
}

fn push(out: &mut Vec<u8>, x: f32, t: ScaleDType) {
    match t {
        ScaleDType::F32 => out.extend_from_slice(&x.to_le_bytes()),
        ScaleDType::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
        ScaleDType::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
    }
}

/// Whether f16 scales and biases would lose precision (subnormal or out of range) for these
/// values.
fn f16_ok(values: &[f32], bits: u32, group: usize) -> bool {
    let n = ((1u32 << bits) - 1) as f32;
    values.chunks(group).all(|g| {
        let (mn, mx) = g
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let s = (mx - mn) / n;
        (s == 0.0 || s >= 6.2e-5) && mn.abs() < 60000.0 && mx.abs() < 60000.0
    })
}

fn round_to(x: f32, t: ScaleDType) -> f32 {
    match t {
        ScaleDType::F32 => x,
        ScaleDType::F16 => half::f16::from_f32(x).to_f32(),
        ScaleDType::BF16 => half::bf16::from_f32(x).to_f32(),
    }
}

/// Quantizes for storage with scales and biases as `st` (quantize-on-load, checkpoint writers):
/// per group `scale = (max - min) / (2^bits - 1)`, `bias = min`, both rounded to `st` *before*
/// the codes are computed against them. Not MLX's anchor rule ([`quantize_affine`]): on bf16
/// storage that rule's range adjustment loses more (the loader tests bound the 8-bit error by
/// 2/255), so the stored bytes stay those of the loader's rule.
pub fn quantize_affine_with(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    st: ScaleDType,
) -> Quantized {
    let maxq = (1u32 << bits) - 1;
    let wpr = cols * bits as usize / 32;
    let mut words = vec![0u32; rows * wpr];
    let ng = rows * cols / group;
    let mut scales = Vec::with_capacity(ng * st.size());
    let mut biases = Vec::with_capacity(ng * st.size());
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let rw = &mut words[r * wpr..(r + 1) * wpr];
        for (gi, g) in row.chunks(group).enumerate() {
            let (mn, mx) = g
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let bias = round_to(mn, st);
            let mut scale = round_to((mx - mn) / maxq as f32, st);
            if scale == 0.0 || !scale.is_finite() {
                scale = round_to(1e-7f32.max(0.0), st);
            }
            push(&mut scales, scale, st);
            push(&mut biases, bias, st);
            for (j, &v) in g.iter().enumerate() {
                let q = if scale == 0.0 {
                    0
                } else {
                    (((v - bias) / scale).round().clamp(0.0, maxq as f32)) as u32
                };
                let k = gi * group + j;
                let bit = k * bits as usize;
                let (w, o) = (bit / 32, (bit % 32) as u32);
                rw[w] |= q << o;
                if o + bits > 32 {
                    rw[w + 1] |= q >> (32 - o);
                }
            }
        }
    }
    Quantized {
        words,
        scales,
        biases,
        scale_dtype: st,
    }
}

/// Quantize-on-load of a matrix produced row by row (`row(r, out)` fills row `r`), so that a
/// large stored matrix is never materialised in f32: one pass picks the scale type (f16 unless a
/// group's range needs f32), a second quantizes each row with [`quantize_affine_with`].
pub fn quantize_rows(
    rows: usize,
    cols: usize,
    bits: u32,
    group: usize,
    row: impl Fn(usize, &mut [f32]),
) -> Quantized {
    let mut buf = vec![0f32; cols];
    let mut ok = true;
    for r in 0..rows {
        row(r, &mut buf);
        if !f16_ok(&buf, bits, group) {
            ok = false;
            break;
        }
    }
    let st = if ok { ScaleDType::F16 } else { ScaleDType::F32 };
    let ng = cols / group.max(1);
    let mut q = Quantized {
        words: Vec::with_capacity(rows * row_words(cols, bits)),
        scales: Vec::with_capacity(rows * ng * st.size()),
        biases: Vec::with_capacity(rows * ng * st.size()),
        scale_dtype: st,
    };
    for r in 0..rows {
        row(r, &mut buf);
        let one = quantize_affine_with(&buf, 1, cols, bits, group, st);
        q.words.extend_from_slice(&one.words);
        q.scales.extend_from_slice(&one.scales);
        q.biases.extend_from_slice(&one.biases);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn normal(&mut self) -> f32 {
            // sum of uniforms, roughly normal
            (0..4)
                .map(|_| self.next() as f32 / (1u64 << 31) as f32)
                .sum::<f32>()
                - 2.0
        }
    }

    #[test]
    fn pack_unpack_round_trip_every_width() {
        let mut rng = Lcg(5);
        for bits in [2u32, 3, 4, 5, 6, 8] {
            for cols in [32usize, 64, 96, 160] {
                let rows = 3;
                let max = (1u32 << bits) - 1;
                let mut codes: Vec<u32> =
                    (0..rows * cols).map(|_| rng.next() % (max + 1)).collect();
                // extremes, so that straddling codes carry set high bits
                codes[0] = max;
                codes[cols - 1] = max;
                let packed = pack_codes(&codes, cols, bits);
                let rw = row_words(cols, bits);
                assert_eq!(rw, cols * bits as usize / 32);
                assert_eq!(packed.len(), rows * rw);
                for r in 0..rows {
                    for k in 0..cols {
                        assert_eq!(
                            unpack_code(&packed[r * rw..(r + 1) * rw], k, bits),
                            codes[r * cols + k],
                            "bits {bits} cols {cols} row {r} code {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn straddling_codes_match_bit_stream() {
        // 3-bit codes: code 10 spans bits 30..33 (word 0 bits 30,31 + word 1 bit 0)
        let mut codes = vec![0u32; 32];
        codes[10] = 0b101;
        let p = pack_codes(&codes, 32, 3);
        assert_eq!(p, vec![0b01 << 30, 0b1, 0]);
        assert_eq!(unpack_code(&p, 10, 3), 0b101);
        // 6-bit code 5 spans bits 30..36
        let mut codes = vec![0u32; 32];
        codes[5] = 0b111111;
        let p = pack_codes(&codes, 32, 6);
        assert_eq!(p[0], 0b11 << 30);
        assert_eq!(p[1], 0b1111);
        // 5-bit code 6 spans bits 30..35
        let mut codes = vec![0u32; 32];
        codes[6] = 0b10011;
        let p = pack_codes(&codes, 32, 5);
        assert_eq!(p[0], 0b11 << 30);
        assert_eq!(p[1], 0b100);
        assert_eq!(unpack_code(&p, 6, 5), 0b10011);
        // 4-bit: element j at bits 4 (j mod 8) of word j / 8
        let codes: Vec<u32> = (0..32).map(|i| i % 16).collect();
        let p = pack_codes(&codes, 32, 4);
        assert_eq!(p[0], 0x7654_3210);
        assert_eq!(p[1], 0xfedc_ba98);
    }

    #[test]
    fn dequantize_quantize_error_bounds() {
        let mut rng = Lcg(11);
        for bits in [2u32, 3, 4, 5, 6, 8] {
            for group in [32usize, 64, 128] {
                let (rows, cols) = (4, 256);
                let mut w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.1).collect();
                // one constant group and one all-positive group
                for v in &mut w[..group] {
                    *v = 0.25;
                }
                for v in &mut w[group..2 * group] {
                    *v = v.abs() + 1.0;
                }
                let (p, s, b) = quantize_affine(&w, rows, cols, bits, group);
                let d = dequantize_affine(&p, &s, &b, rows, cols, bits, group);
                let n_bins = ((1u32 << bits) - 1) as f32;
                for (gi, (wg, dg)) in w.chunks(group).zip(d.chunks(group)).enumerate() {
                    let hi = wg.iter().copied().fold(f32::MIN, f32::max);
                    let lo = wg.iter().copied().fold(f32::MAX, f32::min);
                    let range = hi - lo;
                    let sc = s[gi].abs();
                    // rounding (half a step) plus what the scale adjustment pushes out of range
                    let bound =
                        0.5 * sc + (range - n_bins * sc).max(0.0) + 1e-6 * (range + hi.abs());
                    for (x, y) in wg.iter().zip(dg) {
                        assert!(
                            (x - y).abs() <= bound,
                            "bits {bits} group {group} g{gi}: {x} vs {y} (bound {bound})"
                        );
                    }
                    // at 4 bits and up the adjusted scale is within one step of the ideal one
                    if bits >= 4 && range > 0.0 {
                        assert!(sc <= range / n_bins * (1.0 + 2.0 / n_bins) + 1e-7);
                    }
                }
            }
        }
    }

    #[test]
    fn roundtrip_all_bit_widths() {
        let cols = 128;
        let vals: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let q = quantize_affine_with(&vals, 2, cols, bits, 64, ScaleDType::F32);
            let s: Vec<f32> = bytemuck::pod_collect_to_vec(&q.scales);
            let b: Vec<f32> = bytemuck::pod_collect_to_vec(&q.biases);
            let wpr = cols * bits as usize / 32;
            for r in 0..2 {
                let mut out = vec![0f32; cols];
                let words = words_of(bytemuck::cast_slice(&q.words[r * wpr..(r + 1) * wpr]));
                dequantize_row(
                    &words,
                    &s[r * 2..r * 2 + 2],
                    &b[r * 2..r * 2 + 2],
                    bits,
                    64,
                    &mut out,
                );
                for k in 0..cols {
                    let step = s[r * 2 + k / 64];
                    assert!(
                        (out[k] - vals[r * cols + k]).abs() <= step * 0.5 + 1e-6,
                        "bits {bits}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantize_matches_mlx_anchor_rule() {
        // |min| > |max|: positive scale anchored at min
        let mut w = vec![0.0f32; 32];
        w[0] = -1.5;
        w[1] = 1.0;
        let (_, s, b) = quantize_affine(&w, 1, 32, 4, 32);
        assert!(s[0] > 0.0);
        assert_eq!(b[0], -1.5);
        // |max| >= |min|: negative scale anchored at max
        w[0] = -1.0;
        w[1] = 1.5;
        let (p, s, b) = quantize_affine(&w, 1, 32, 4, 32);
        assert!(s[0] < 0.0);
        assert_eq!(b[0], 1.5);
        assert_eq!(unpack_code(&p, 1, 4), 0);
    }
}
