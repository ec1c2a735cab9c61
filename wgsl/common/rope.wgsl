// RoPE rotation (NeoX rotate-half pairs). The f32 angle is reduced to [-pi, pi] (Cody-Waite,
// 2*pi split in four parts, the first three with 8 significant bits so k * C_i is exact for
// k < 2^16) before cos/sin, because GPU sin/cos of large arguments are inaccurate on some
// backends.

const INV_TWO_PI: f32 = 0.15915494309189535;
const C1: f32 = 6.28125;
const C2: f32 = 0.00193023681640625;
const C3: f32 = 5.066394805908203e-06;
const C4: f32 = 3.968374517882012e-09;

// a - 2*pi*round(a / (2*pi)), accurate to a few ulp of pi for |a| < 2^16 * 2 * pi.
fn reduce_angle(a: f32) -> f32 {
    let k = round(a * INV_TWO_PI);
    var r = a - k * C1;
    r = r - k * C2;
    r = r - k * C3;
    r = r - k * C4;
    return r;
}

// The pair (x0, x1) = (x_j, x_{j+half}) rotated by `angle`:
// (x0 cos - x1 sin, x1 cos + x0 sin).
fn rope_rotate(x0: f32, x1: f32, angle: f32) -> vec2<f32> {
    let a = reduce_angle(angle);
    let c = cos(a);
    let sn = sin(a);
    return vec2<f32>(x0 * c - x1 * sn, x1 * c + x0 * sn);
}
