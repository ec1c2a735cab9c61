//! CPU reference implementations of every kernel, in plain f32/f64 Rust. Tests compare the GPU
//! ops against these over awkward shapes; model parity debugging can use them too.

use super::{HostMatrix, ScaleDType, WeightFormat};
use crate::quant;

/// `gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let z = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    (0.5 * x * (1.0 + z.tanh())) as f32
}

/// `c * tanh(x / c)`.
pub fn softcap(x: f32, c: f32) -> f32 {
    ((c as f64) * ((x as f64) / (c as f64)).tanh()) as f32
}

/// `scale * avg_pool_kxk(x)` over a row-major `[ph * pw, c]` grid; output row-major over the
/// pooled grid, `[(ph / k) * (pw / k), c]` (f64 accumulation).
pub fn avg_pool_2d_ref(
    x: &[f32],
    ph: usize,
    pw: usize,
    c: usize,
    k: usize,
    scale: f32,
) -> Vec<f32> {
    let (oph, opw) = (ph / k, pw / k);
    let mut out = vec![0f32; oph * opw * c];
    for oy in 0..oph {
        for ox in 0..opw {
            for ch in 0..c {
                let mut acc = 0f64;
                for dy in 0..k {
                    for dx in 0..k {
                        acc += x[((oy * k + dy) * pw + ox * k + dx) * c + ch] as f64;
                    }
                }
                out[(oy * opw + ox) * c + ch] = (acc / (k * k) as f64 * scale as f64) as f32;
            }
        }
    }
    out
}

/// The order the selection kernels use: an order-preserving key of an f32 where NaN is the
/// largest value and -0.0 equals +0.0.
pub fn selection_key(v: f32) -> u32 {
    let mut bits = v.to_bits();
    if bits == 0x8000_0000 {
        bits = 0;
    }
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        u32::MAX
    } else if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Hugging Face's repetition penalty in place: each distinct id of `ids` below `logits.len()`
/// has its logit divided by `penalty` when positive, multiplied by it otherwise (duplicates are
/// applied once, as HF's gather/scatter does).
pub fn repetition_penalty_ref(logits: &mut [f32], ids: &[u32], penalty: f32) {
    let mut seen = std::collections::HashSet::new();
    for &t in ids {
        let t = t as usize;
        if t < logits.len() && seen.insert(t) {
            let x = logits[t];
            logits[t] = if x > 0.0 { x / penalty } else { x * penalty };
        }
    }
}

/// Index of the largest value, ties to the lowest index, NaN counts as the largest
/// (like `torch.argmax`).
pub fn argmax_ref(logits: &[f32]) -> u32 {
    top_k_ref(logits, 1).1[0]
}

/// The `k` largest values in descending order with their indices; ties by lower index, NaN
/// largest, -0.0 equal to +0.0.
pub fn top_k_ref(logits: &[f32], k: usize) -> (Vec<f32>, Vec<u32>) {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        selection_key(logits[b as usize])
            .cmp(&selection_key(logits[a as usize]))
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    (idx.iter().map(|&i| logits[i as usize]).collect(), idx)
}

/// The sampler of [`ops::sample::sample`](crate::gpu::ops::sample::sample), step by step in the
/// same f32 arithmetic: top-k candidates, weights `exp((v - v_max) / T)`, min_p prefix, top_p
/// prefix, inverse CDF at `uniform`.
pub fn sample_ref(logits: &[f32], params: &super::ops::sample::SampleParams) -> u32 {
    let k = params.effective_k(logits.len()) as usize;
    let (vals, idx) = top_k_ref(logits, k);
    let inv_temp = params.inv_temperature();
    let top = selection_key(vals[0]);
    if inv_temp <= 0.0 || k <= 1 || top >= 0xff80_0000 || top <= 0x007f_ffff {
        return idx[0];
    }
    // -0.0 is treated as +0.0 by the kernel's keys
    let canon = |v: f32| if v == 0.0 { 0.0 } else { v };
    let v0 = canon(vals[0]);
    let w: Vec<f32> = vals
        .iter()
        .map(|&v| ((canon(v) - v0) * inv_temp).exp())
        .collect();
    let mut m = 1;
    while m < k && w[m] >= params.min_p {
        m += 1;
    }
    let mut cut = m;
    if params.top_p < 1.0 {
        let mut total = 0f32;
        for &x in &w[..m] {
            total += x;
        }
        let thr = params.top_p * total;
        let mut cum = 0f32;
        for (i, &x) in w[..m].iter().enumerate() {
            cum += x;
            if cum >= thr {
                cut = i + 1;
                break;
            }
        }
    }
    let mut mass = 0f32;
    for &x in &w[..cut] {
        mass += x;
    }
    let target = params.uniform.clamp(0.0, 1.0) * mass;
    let mut acc = 0f32;
    let mut pick = cut - 1;
    for (i, &x) in w[..cut].iter().enumerate() {
        acc += x;
        if target < acc {
            pick = i;
            break;
        }
    }
    idx[pick]
}

/// RMSNorm of each `dim`-wide row of `x` (f64 accumulation): `x * rsqrt(mean(x²) + eps) * w`
/// (weight used directly; `None` = weightless).
pub fn rms_norm_ref(x: &[f32], weight: Option<&[f32]>, dim: usize, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / dim as f64;
        let r = 1.0 / (ms + eps as f64).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let w = weight.map_or(1.0, |w| w[i] as f64);
            out.push((v as f64 * r * w) as f32);
        }
    }
    out
}

/// LayerNorm of each `dim`-wide row of `x` (f64 accumulation, PyTorch semantics): `(x - mean)
/// / sqrt(var + eps) * w + b` with the biased variance.
pub fn layer_norm_ref(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / dim as f64;
        let r = 1.0 / (var + eps as f64).sqrt();
        for (i, &v) in row.iter().enumerate() {
            out.push(((v as f64 - mean) * r * weight[i] as f64 + bias[i] as f64) as f32);
        }
    }
    out
}

/// Rotate-half rotation of one segment `x[0..seg]` by position `pos` (angle `f32(pos) *
/// inv_freq[j]` rounded to f32 like torch, then cos/sin in f64).
fn rotate_segment(x: &mut [f32], pos: u32, inv_freq: &[f32]) {
    let half = x.len() / 2;
    for j in 0..half {
        let angle = (pos as f32 * inv_freq[j]) as f64;
        let (s, c) = angle.sin_cos();
        let x0 = x[j] as f64;
        let x1 = x[j + half] as f64;
        x[j] = (x0 * c - x1 * s) as f32;
        x[j + half] = (x1 * c + x0 * s) as f32;
    }
}

/// NeoX RoPE of `x` `[tokens, heads, hd]` (token t at `positions[t]`), `inv_freq` `[hd/2]`.
pub fn rope_ref(
    x: &[f32],
    heads: usize,
    hd: usize,
    positions: &[u32],
    inv_freq: &[f32],
) -> Vec<f32> {
    let mut y = x.to_vec();
    for (r, head) in y.chunks_mut(hd).enumerate() {
        rotate_segment(head, positions[r / heads], inv_freq);
    }
    y
}

/// Axial 2-D RoPE of `x` `[tokens, heads, hd]`: positions `[tokens, 2]` = (x, y); the first
/// half of each head rotates with x, the second with y; `inv_freq` `[hd/4]`.
pub fn rope_2d_ref(
    x: &[f32],
    heads: usize,
    hd: usize,
    positions: &[u32],
    inv_freq: &[f32],
) -> Vec<f32> {
    let mut y = x.to_vec();
    for (r, head) in y.chunks_mut(hd).enumerate() {
        let t = r / heads;
        let (a, b) = head.split_at_mut(hd / 2);
        rotate_segment(a, positions[2 * t], inv_freq);
        rotate_segment(b, positions[2 * t + 1], inv_freq);
    }
    y
}

/// Reference attention. `q` `[L, n_heads, hd]`, query i at absolute position `q_pos0 + i`;
/// `key(g, p)` / `value(g, p)` return the hd-vector of kv head g at absolute position p.
/// `window = Some(W)`: causal with window (`q − W < k ≤ q`); `causal = false`: keys
/// `0..n_keys`. Scores `scale · q·k` and softmax in f64.
#[allow(clippy::too_many_arguments)]
pub fn attention_ref(
    q: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    scale: f32,
    q_pos0: u32,
    causal: bool,
    window: Option<u32>,
    n_keys: u32,
    key: &dyn Fn(usize, u32) -> Vec<f32>,
    value: &dyn Fn(usize, u32) -> Vec<f32>,
) -> Vec<f32> {
    let n_q = q.len() / (n_heads * hd);
    let group = n_heads / n_kv_heads;
    let mut out = vec![0f32; q.len()];
    for i in 0..n_q {
        let qp = q_pos0 + i as u32;
        let (lo, hi) = if causal {
            let hi = qp + 1;
            let lo = match window {
                Some(w) if hi > w => hi - w,
                _ => 0,
            };
            (lo, hi)
        } else {
            (0, n_keys)
        };
        for h in 0..n_heads {
            let g = h / group;
            let qv = &q[(i * n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = (lo..hi)
                .map(|k| {
                    let kv = key(g, k);
                    scale as f64
                        * qv.iter()
                            .zip(&kv)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let o = &mut out[(i * n_heads + h) * hd..][..hd];
            let mut acc = vec![0f64; hd];
            for (k, w) in (lo..hi).zip(&e) {
                let vv = value(g, k);
                for d in 0..hd {
                    acc[d] += w * vv[d] as f64;
                }
            }
            for d in 0..hd {
                o[d] = if sum > 0.0 {
                    (acc[d] / sum) as f32
                } else {
                    0.0
                };
            }
        }
    }
    out
}

/// Attention with an arbitrary mask, in f64: query `i` (absolute position `q_pos0 + i`) of `q`
/// `[n_q, n_heads, hd]` sees key `k < n_keys` iff `visible(q_pos, k)`; `key(g, k)` /
/// `value(g, k)` give kv head `g`'s vectors. A query that sees nothing outputs zeros.
#[allow(clippy::too_many_arguments)]
pub fn attention_masked_ref(
    q: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    scale: f32,
    q_pos0: u32,
    n_keys: u32,
    visible: &dyn Fn(u32, u32) -> bool,
    key: &dyn Fn(usize, u32) -> Vec<f32>,
    value: &dyn Fn(usize, u32) -> Vec<f32>,
) -> Vec<f32> {
    let n_q = q.len() / (n_heads * hd);
    let group = n_heads / n_kv_heads;
    let mut out = vec![0f32; q.len()];
    for i in 0..n_q {
        let qp = q_pos0 + i as u32;
        let keys: Vec<u32> = (0..n_keys).filter(|&k| visible(qp, k)).collect();
        for h in 0..n_heads {
            let g = h / group;
            let qv = &q[(i * n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = keys
                .iter()
                .map(|&k| {
                    let kv = key(g, k);
                    scale as f64
                        * qv.iter()
                            .zip(&kv)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut acc = vec![0f64; hd];
            for (&k, w) in keys.iter().zip(&e) {
                let vv = value(g, k);
                for d in 0..hd {
                    acc[d] += w * vv[d] as f64;
                }
            }
            let o = &mut out[(i * n_heads + h) * hd..][..hd];
            for d in 0..hd {
                o[d] = if sum > 0.0 { (acc[d] / sum) as f32 } else { 0.0 };
            }
        }
    }
    out
}

/// transformers' `get_block_sequence_ids_for_mask`: each maximal run of vision tokens
/// (`is_vision`) gets the next block id 0, 1, ...; every other token -1.
pub fn block_sequence_ids_ref(is_vision: &[bool]) -> Vec<i64> {
    let mut next = 0i64;
    let mut out = Vec::with_capacity(is_vision.len());
    for (i, &v) in is_vision.iter().enumerate() {
        if !v {
            out.push(-1);
            continue;
        }
        if i > 0 && is_vision[i - 1] {
            out.push(next - 1);
        } else {
            out.push(next);
            next += 1;
        }
    }
    out
}

/// transformers' sliding-layer mask of bidirectional-vision models
/// (`create_masks_for_vision_model`): `sliding_window_overlay AND (causal OR blockwise_overlay)`,
/// i.e. key `k` is visible from query `q` iff `k > q − window` and (`k ≤ q` or both lie in the
/// same image block, `block[q] == block[k] ≥ 0`). `window = None`: no window (then it is the
/// blockwise overlay on a causal mask).
pub fn vision_sliding_visible(block: &[i64], window: Option<u32>, q: u32, k: u32) -> bool {
    let in_window = window.is_none_or(|w| k as i64 > q as i64 - w as i64);
    let (bq, bk) = (block[q as usize], block[k as usize]);
    in_window && (k <= q || (bq >= 0 && bq == bk))
}

/// transformers' mask of the 12B unified model on every layer (its forward and `generate()`):
/// `(causal AND sliding_window_overlay) OR blockwise_overlay`, i.e. key `k` is visible from
/// query `q` iff (`k ≤ q` and `k > q − window`) or both lie in the same image block.
/// `window = None`: full layers.
pub fn vision_every_layer_visible(block: &[i64], window: Option<u32>, q: u32, k: u32) -> bool {
    let in_window = window.is_none_or(|w| k as i64 > q as i64 - w as i64);
    let (bq, bk) = (block[q as usize], block[k as usize]);
    (k <= q && in_window) || (bq >= 0 && bq == bk)
}

/// `y[b, r] = Σ_k x[b, k] · w[r, k]` (i.e. `y = x @ W^T`) with f64 accumulation, for a row-major
/// dequantized `w: [rows, cols]` and `x: [batch, cols]`; returns `[batch, rows]`.
pub fn linear_ref(
    w_dequant: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    batch: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; batch * rows];
    for b in 0..batch {
        let xb = &x[b * cols..(b + 1) * cols];
        for r in 0..rows {
            let wr = &w_dequant[r * cols..(r + 1) * cols];
            let s: f64 = wr.iter().zip(xb).map(|(&a, &c)| a as f64 * c as f64).sum();
            y[b * rows + r] = s as f32;
        }
    }
    y
}

fn scale_values(bytes: &[u8], dtype: ScaleDType) -> Vec<f32> {
    match dtype {
        ScaleDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ScaleDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        ScaleDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// The f32 values of one row of a host matrix in any [`WeightFormat`] (dequantized for affine).
pub fn host_matrix_row(host: &HostMatrix<'_>, row: usize) -> Result<Vec<f32>, String> {
    let cols = host.cols;
    let rb = host.format.row_bytes(cols);
    if row >= host.rows || host.data.len() < (row + 1) * rb {
        return Err(format!("row {row} out of range or data too short"));
    }
    let data = &host.data[row * rb..(row + 1) * rb];
    Ok(match host.format {
        WeightFormat::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        WeightFormat::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightFormat::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        WeightFormat::Affine {
            bits,
            group,
            scales,
        } => {
            let (Some(s), Some(b)) = (host.scales, host.biases) else {
                return Err("affine matrix without scales or biases".into());
            };
            let groups = cols / group as usize;
            let es = scales.size();
            let range = row * groups * es..(row + 1) * groups * es;
            if s.len() < range.end || b.len() < range.end {
                return Err("scales or biases too short".into());
            }
            let sv = scale_values(&s[range.clone()], scales);
            let bv = scale_values(&b[range], scales);
            let words: Vec<u32> = data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (0..cols)
                .map(|k| {
                    let g = k / group as usize;
                    sv[g] * quant::unpack_code(&words, k, bits) as f32 + bv[g]
                })
                .collect()
        }
    })
}

/// All f32 values `[rows, cols]` of a host matrix in any [`WeightFormat`] (dequantized for affine).
pub fn host_matrix_f32(host: &HostMatrix<'_>) -> Result<Vec<f32>, String> {
    host.format.check_cols(host.cols)?;
    let mut out = Vec::with_capacity(host.rows * host.cols);
    for r in 0..host.rows {
        out.extend(host_matrix_row(host, r)?);
    }
    Ok(out)
}

/// Mixture-of-experts routing (transformers' `Gemma4TextRouter` after the projection) for
/// `tokens` rows of `logits [tokens, experts]`: `p = softmax(row)` in f32 (`exp(l - max) / sum`),
/// the `k` largest `p` in descending order (ties: lower index first), renormalised to sum 1
/// and multiplied by `per_expert_scale[id]`. Returns `(ids [tokens, k], weights [tokens, k])`.
///
/// Note: `torch.topk` on CPU does not order exactly equal values by index (it uses an
/// unstable selection); this reference, like the kernel, takes the lower index first.
pub fn moe_route_ref(
    logits: &[f32],
    per_expert_scale: &[f32],
    tokens: usize,
    experts: usize,
    k: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::with_capacity(tokens * k);
    let mut weights = Vec::with_capacity(tokens * k);
    for t in 0..tokens {
        let row = &logits[t * experts..(t + 1) * experts];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let ex: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
        let total: f64 = ex.iter().map(|&v| v as f64).sum();
        let p: Vec<f32> = ex.iter().map(|&v| v / total as f32).collect();
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        order.truncate(k);
        let sel: f64 = order.iter().map(|&e| p[e] as f64).sum();
        for &e in &order {
            ids.push(e as u32);
            weights.push(p[e] / sel as f32 * per_expert_scale[e]);
        }
    }
    (ids, weights)
}

/// Dequantized stacked expert weights for [`moe_experts_ref`]: expert `e`'s gate rows are rows
/// `e * gate_stride + gate_off ..+ inter` of `gate` (`[*, hidden]`), likewise up; its down rows
/// are rows `e * hidden ..+ hidden` of `down` (`[*, inter]`).
#[derive(Debug, Clone, Copy)]
pub struct ExpertsRef<'a> {
    /// Gate rows, `[*, hidden]` row-major.
    pub gate: &'a [f32],
    /// Rows per expert block of `gate`.
    pub gate_stride: usize,
    /// First gate row inside an expert block.
    pub gate_off: usize,
    /// Up rows, `[*, hidden]` row-major.
    pub up: &'a [f32],
    /// Rows per expert block of `up`.
    pub up_stride: usize,
    /// First up row inside an expert block.
    pub up_off: usize,
    /// Down rows, `[experts * hidden, inter]` row-major.
    pub down: &'a [f32],
    /// Hidden size H.
    pub hidden: usize,
    /// Expert intermediate size I.
    pub inter: usize,
}

/// Routed experts (transformers' `Gemma4TextExperts`) for `x [tokens, hidden]` with `ids` and
/// `weights` `[tokens, k]`: `y[t] = sum_j weights[t, j] * down_e (gelu_tanh(gate_e x[t]) * up_e
/// x[t])`, `e = ids[t, j]`, dot products in f64.
pub fn moe_experts_ref(w: &ExpertsRef<'_>, x: &[f32], ids: &[u32], weights: &[f32], k: usize) -> Vec<f32> {
    let (hd, inter) = (w.hidden, w.inter);
    let tokens = x.len() / hd;
    let dot = |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum() };
    let mut y = vec![0f32; tokens * hd];
    for t in 0..tokens {
        let xt = &x[t * hd..(t + 1) * hd];
        let mut acc = vec![0f64; hd];
        for j in 0..k {
            let e = ids[t * k + j] as usize;
            let h: Vec<f32> = (0..inter)
                .map(|r| {
                    let g = e * w.gate_stride + w.gate_off + r;
                    let u = e * w.up_stride + w.up_off + r;
                    let gv = dot(&w.gate[g * hd..(g + 1) * hd], xt) as f32;
                    let uv = dot(&w.up[u * hd..(u + 1) * hd], xt) as f32;
                    gelu_tanh(gv) * uv
                })
                .collect();
            let wt = weights[t * k + j] as f64;
            for (c, a) in acc.iter_mut().enumerate() {
                let d = e * hd + c;
                *a += wt * dot(&w.down[d * inter..(d + 1) * inter], &h);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            y[t * hd + c] = *a as f32;
        }
    }
    y
}
