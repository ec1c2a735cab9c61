// GELU, tanh approximation (transformers' "gelu_pytorch_tanh"):
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with tanh's argument clamped for large |z|.
fn gelu_tanh(x: f32) -> f32 {
    let z = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    let zc = clamp(z, -15.0, 15.0);
    return 0.5 * x * (1.0 + tanh(zc));
}
