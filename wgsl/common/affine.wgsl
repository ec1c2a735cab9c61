// MLX affine codes: define BITS (2, 3, 4, 5, 6, 8), GROUP (32, 64, 128) and SB_FMT (0 f16,
// 1 bf16, 2 f32 scales/biases). A row is a little-endian bit stream of BITS-bit codes in u32 words
// (code k at bits [k * BITS, (k + 1) * BITS); 3/5/6-bit codes may straddle two words); each group
// of GROUP codes has a scale and a bias, w = scale * q + bias. Scales/biases: 16-bit formats one
// word per group (scale in the low half), f32 two words (scale, bias).
//
// The including kernel defines `fn sb_word(m: u32, i: u32) -> u32`, word i of the scale/bias
// stream of matrix m (kernels over one matrix ignore m).

//#include "common/bf16.wgsl"

const BITS: u32 = {{BITS}}u;
const GROUP: u32 = {{GROUP}}u;
const SB_FMT: u32 = {{SB_FMT}}u;
const MASK: u32 = (1u << BITS) - 1u;

// (scale, bias) of group index i of matrix m.
fn scale_bias(m: u32, i: u32) -> vec2<f32> {
    if (SB_FMT == 2u) {
        return vec2<f32>(bitcast<f32>(sb_word(m, 2u * i)), bitcast<f32>(sb_word(m, 2u * i + 1u)));
    }
    let w = sb_word(m, i);
    if (SB_FMT == 1u) {
        return unpack2x_bf16(w);
    }
    return unpack2x16float(w);
}

// Codes 4j .. 4j + 3 of a 32-code chunk whose BITS words are w (any BITS: generic bit-stream
// decode, codes may straddle words).
fn chunk_codes4(w: ptr<function, array<u32, {{BITS}}>>, j: u32) -> vec4<u32> {
    let bit = j * 4u * BITS;
    let wi = bit / 32u;
    let sh = bit % 32u;
    var v = (*w)[wi] >> sh;
    if (sh + 4u * BITS > 32u) {
        v = v | ((*w)[min(wi + 1u, BITS - 1u)] << (32u - sh));
    }
    return (vec4<u32>(v) >> vec4<u32>(0u, BITS, 2u * BITS, 3u * BITS)) & vec4<u32>(MASK);
}

// BITS 4 or 8 (codes never straddle words): BITS 4, the 8 codes of word w dotted with the x
// values a (codes 0..3) and b (codes 4..7); BITS 8, the 4 codes of w dotted with a (b unused).
fn word_dot(w: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    if (BITS == 8u) {
        let q = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
        return dot(q, a);
    }
    let qa = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    let qb = vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
    return dot(qa, a) + dot(qb, b);
}
