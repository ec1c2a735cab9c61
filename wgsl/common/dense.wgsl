// Float weight formats: define W_FMT (0 f32, 1 f16, 2 bf16). A row-major matrix is a stream of
// u32 words: one f32, or two f16 / bf16 values (the first in the low half), per word.

//#include "common/bf16.wgsl"

const W_FMT: u32 = {{W_FMT}}u;

// Index of the word that holds element e of the stream.
fn dense_word(e: u32) -> u32 {
    if (W_FMT == 0u) {
        return e;
    }
    return e / 2u;
}

// Element e of the stream, from the word w = word dense_word(e).
fn dense_value(w: u32, e: u32) -> f32 {
    if (W_FMT == 0u) {
        return bitcast<f32>(w);
    }
    if (W_FMT == 1u) {
        let h = unpack2x16float(w);
        return select(h.x, h.y, (e & 1u) == 1u);
    }
    return bf16_at(w, (e & 1u) == 1u);
}
