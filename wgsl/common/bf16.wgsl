// bf16 to f32: a bf16 is the high half of an f32. Two bf16 values share a u32 word, the first
// (lower address) in the low half.

// The bf16 in the low half of w.
fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

// The bf16 in the high half of w.
fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}

// The high half of w when `hi`, else the low half.
fn bf16_at(w: u32, hi: bool) -> f32 {
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, hi));
}

// Both values of w: (low, high).
fn unpack2x_bf16(w: u32) -> vec2<f32> {
    return vec2<f32>(bf16_lo(w), bf16_hi(w));
}

// The four values of the words w.x, w.y.
fn unpack4x_bf16(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}
