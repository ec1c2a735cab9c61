//! CPU reference implementations of every kernel, in plain f32/f64 Rust. Tests compare the GPU
//! ops against these over awkward shapes; model parity debugging can use them too.

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
