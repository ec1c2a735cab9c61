//! Image preprocessing (no GPU): the resize rule against transformers' arithmetic, PIL bicubic goldens,
//! patch order, decoding of every supported format, EXIF orientation and bad inputs.

use std::path::{Path, PathBuf};

use gemma_wgpu::prompt::preprocess::{
    ImageError, ImageOptions, ImageProcessor, SUPPORTED_SOFT_TOKENS, load_image,
    load_image_from_bytes, preprocess, resize_bicubic_pil, resize_bicubic_torchvision, target_size,
    to_rgb8,
};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};

fn opts(p: u32, k: u32, budget: u32) -> ImageOptions {
    ImageOptions::from_vision_config(p, k, budget).expect("valid options")
}

/// `(height, width, patch, kernel, budget, target h, target w, soft tokens)`, pasted from
/// `python3 tools/preprocess_golden.py sizes` (transformers 5.24 `get_aspect_ratio_preserving_size`).
/// One row of [`REFERENCE_SIZES`].
type SizeCase = (u32, u32, u32, u32, u32, u32, u32, u32);

const REFERENCE_SIZES: &[SizeCase] = &[
    (768, 1024, 16, 3, 280, 672, 912, 266),
    (1080, 1920, 16, 3, 280, 576, 1056, 264),
    (224, 224, 16, 3, 280, 768, 768, 256),
    (48, 64, 4, 3, 70, 84, 108, 63),
    (20, 30, 16, 3, 70, 288, 480, 60),
    (20, 30, 16, 3, 280, 624, 960, 260),
    (20, 30, 16, 3, 1120, 1296, 1920, 1080),
    (640, 480, 16, 3, 70, 432, 336, 63),
    (640, 480, 16, 3, 280, 912, 672, 266),
    (640, 480, 16, 3, 1120, 1824, 1344, 1064),
    (1920, 1080, 16, 3, 70, 528, 288, 66),
    (1920, 1080, 16, 3, 280, 1056, 576, 264),
    (1920, 1080, 16, 3, 1120, 2112, 1200, 1100),
    (480, 640, 16, 3, 70, 336, 432, 63),
    (480, 640, 16, 3, 280, 672, 912, 266),
    (480, 640, 16, 3, 1120, 1344, 1824, 1064),
    (4000, 3000, 16, 3, 70, 432, 336, 63),
    (4000, 3000, 16, 3, 280, 912, 672, 266),
    (4000, 3000, 16, 3, 1120, 1824, 1344, 1064),
    (10, 4000, 16, 3, 280, 48, 13440, 280),
    (4000, 10, 16, 3, 280, 13440, 48, 280),
    (1, 100000, 16, 3, 70, 48, 3360, 70),
    (3, 7, 16, 3, 1120, 1008, 2448, 1071),
    (333, 777, 16, 3, 140, 336, 864, 126),
    (1000, 1000, 16, 3, 560, 1104, 1104, 529),
    (97, 131, 4, 3, 70, 84, 108, 63),
    (150, 200, 4, 3, 70, 84, 108, 63),
];

#[test]
fn resize_rule_matches_reference() {
    for &(h, w, p, k, b, th, tw, tokens) in REFERENCE_SIZES {
        let o = opts(p, k, b);
        let got = target_size(h, w, &o).expect("target size");
        assert_eq!(got, (th, tw), "{h}x{w} p{p} k{k} budget {b}");
        assert_eq!((th / p) * (tw / p) / (k * k), tokens);
        assert!(tokens <= b);
    }
}

#[test]
fn soft_token_counts_end_to_end() {
    // Spec §5 examples through `preprocess` (flat images: only the shapes matter here).
    for &(h, w, p, k, b, th, tw, tokens) in &[
        (768u32, 1024u32, 16u32, 3u32, 280u32, 672u32, 912u32, 266u32),
        (224, 224, 16, 3, 280, 768, 768, 256),
        (48, 64, 4, 3, 70, 84, 108, 63),
    ] {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb([10, 20, 30])));
        let out = preprocess(&img, &opts(p, k, b)).expect("preprocess");
        assert_eq!(out.resized, (th, tw));
        assert_eq!(out.grid, (th / p, tw / p));
        assert_eq!(out.num_soft_tokens, tokens);
        assert_eq!(out.positions.len(), ((th / p) * (tw / p)) as usize);
        assert_eq!(
            out.pixel_values.len(),
            out.positions.len() * (3 * p * p) as usize
        );
        // A flat image stays flat through the normalised bicubic filter.
        assert!(out.pixel_values.chunks(3).all(|c| c
            == [
                (10.0f64 / 255.0) as f32,
                (20.0f64 / 255.0) as f32,
                (30.0f64 / 255.0) as f32
            ]));
    }
}

#[test]
fn invalid_budget_and_options() {
    for bad in [0u32, 69, 100, 281, 2240] {
        match ImageOptions::from_vision_config(16, 3, bad) {
            Err(ImageError::InvalidBudget { given, allowed }) => {
                assert_eq!(given, bad);
                assert_eq!(allowed, SUPPORTED_SOFT_TOKENS);
            }
            other => panic!("budget {bad}: {other:?}"),
        }
    }
    let o = opts(16, 3, 280);
    assert!(matches!(
        o.with_max_soft_tokens(300),
        Err(ImageError::InvalidBudget { given: 300, .. })
    ));
    assert_eq!(
        o.with_max_soft_tokens(1120).expect("ok").max_soft_tokens,
        1120
    );
    // A hand-built struct with a bad budget is refused by the functions too.
    let raw = ImageOptions {
        max_soft_tokens: 123,
        ..o
    };
    assert!(matches!(
        target_size(100, 100, &raw),
        Err(ImageError::InvalidBudget { .. })
    ));
    assert!(matches!(
        ImageOptions::from_vision_config(0, 3, 280),
        Err(ImageError::InvalidOptions(_))
    ));
    assert!(matches!(
        target_size(0, 100, &o),
        Err(ImageError::ZeroSize { .. })
    ));
    let empty = DynamicImage::new_rgb8(0, 5);
    assert!(matches!(
        preprocess(&empty, &o),
        Err(ImageError::ZeroSize { .. })
    ));
}

#[test]
fn patch_order_and_positions() {
    // 84x108 at patch 4 / k 3 / budget 70 is already the target size: no resize.
    let (w, h) = (108u32, 84u32);
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([x as u8, y as u8, ((x * 7 + y * 3) % 256) as u8])
    });
    let out =
        preprocess(&DynamicImage::ImageRgb8(img.clone()), &opts(4, 3, 70)).expect("preprocess");
    assert_eq!(out.resized, (84, 108));
    assert_eq!(out.grid, (21, 27));
    assert_eq!(out.num_soft_tokens, 63);
    let p = 4usize;
    let plen = 3 * p * p;
    for (i, pos) in out.positions.iter().enumerate() {
        let (row, col) = (i / 27, i % 27);
        assert_eq!(*pos, [col as u32, row as u32], "patch {i}");
        for y in 0..p {
            for x in 0..p {
                for c in 0..3 {
                    let px = img.get_pixel((col * p + x) as u32, (row * p + y) as u32)[c];
                    let got = out.pixel_values[i * plen + (y * p + x) * 3 + c];
                    assert_eq!(got, (f64::from(px) / 255.0) as f32);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PIL goldens (tools/preprocess_golden.py pil).

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess-pil")
}

#[test]
fn bicubic_matches_pil() {
    let dir = fixture_dir();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases.json"))
            .expect("json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    let mut worst = 0u8;
    for c in cases {
        let name = c["name"].as_str().expect("name");
        let get = |k: &str| c[k].as_u64().expect(k) as u32;
        let o = opts(
            get("patch_size"),
            get("pooling_kernel_size"),
            get("max_soft_tokens"),
        );
        let img = load_image(&dir.join(format!("{name}.png")), &o).expect("load");
        assert_eq!((img.height(), img.width()), (get("height"), get("width")));
        let (th, tw) = target_size(img.height(), img.width(), &o).expect("target");
        assert_eq!(
            (th, tw),
            (get("target_height"), get("target_width")),
            "{name}"
        );
        let want = std::fs::read(dir.join(format!("{name}.rgb"))).expect("rgb");
        let got = resize_bicubic_pil(&to_rgb8(&img), tw, th);
        assert_eq!(got.as_raw().len(), want.len());
        let max = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        worst = worst.max(max);
        assert_eq!(max, 0, "{name}: max |diff| {max}/255 vs PIL");
        // And through `preprocess`: the same bytes / 255.
        let pre = preprocess(&img, &o).expect("preprocess");
        let p = o.patch_size as usize;
        let (gw, tw) = (pre.grid.1 as usize, tw as usize);
        for (i, pos) in pre.positions.iter().enumerate().step_by(7) {
            let (col, row) = (pos[0] as usize, pos[1] as usize);
            assert_eq!((row * gw + col), i);
            for y in 0..p {
                for x in 0..p {
                    for ch in 0..3 {
                        let want_v = want[((row * p + y) * tw + col * p + x) * 3 + ch];
                        let got_v = pre.pixel_values[i * 3 * p * p + (y * p + x) * 3 + ch];
                        assert_eq!(got_v, (f64::from(want_v) / 255.0) as f32);
                    }
                }
            }
        }
    }
    eprintln!("max |diff| vs PIL over all goldens: {worst}/255");
}

#[test]
fn alpha_composited_on_white_like_pil() {
    // Values from PIL: Image.alpha_composite(white, rgba).convert("RGB").
    let px = [
        ([200u8, 100, 0, 128], [227u8, 177, 127]),
        ([10, 250, 77, 1], [254, 255, 254]),
        ([255, 0, 128, 254], [255, 1, 128]),
        ([33, 66, 99, 0], [255, 255, 255]),
        ([90, 91, 92, 255], [90, 91, 92]),
        ([0, 0, 0, 127], [128, 128, 128]),
    ];
    let img = ImageBuffer::from_fn(px.len() as u32, 1, |x, _| Rgba(px[x as usize].0));
    let dynimg = DynamicImage::ImageRgba8(img);
    let rgb = to_rgb8(&dynimg);
    for (i, (_, want)) in px.iter().enumerate() {
        assert_eq!(rgb.get_pixel(i as u32, 0).0, *want, "pixel {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "gemma-wgpu-preprocess-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt).expect("encode");
    buf.into_inner()
}

fn test_rgb(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 20) as u8, (y * 30) as u8, ((x + y) * 10) as u8])
    })
}

fn assert_rgb8(img: &DynamicImage, w: u32, h: u32) -> &RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => {
            assert_eq!(rgb.dimensions(), (w, h));
            rgb
        }
        other => panic!("expected RGB8, got {:?}", other.color()),
    }
}

#[test]
fn decodes_every_supported_format() {
    let dir = TempDir::new("formats");
    let o = opts(16, 3, 280);
    let rgb = test_rgb(8, 6);

    // Lossless RGB formats: exact round trip.
    for (fmt, ext) in [
        (ImageFormat::Png, "png"),
        (ImageFormat::Bmp, "bmp"),
        (ImageFormat::Tiff, "tiff"),
        (ImageFormat::WebP, "webp"),
    ] {
        // Misleading extension: the format is guessed from the content.
        let path = dir.file(
            &format!("rgb-{ext}.img"),
            &encode(&DynamicImage::ImageRgb8(rgb.clone()), fmt),
        );
        let img = load_image(&path, &o).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!(assert_rgb8(&img, 8, 6), &rgb, "{ext}");
    }

    // JPEG (lossy).
    let path = dir.file(
        "a.jpg",
        &encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Jpeg),
    );
    let img = load_image(&path, &o).expect("jpeg");
    let got = assert_rgb8(&img, 8, 6);
    let max = got
        .as_raw()
        .iter()
        .zip(rgb.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(max.unwrap_or(0) < 40, "jpeg max diff {max:?}");

    // 16-bit gray PNG: replicated to RGB, scaled to 8 bits.
    let g16 = ImageBuffer::from_fn(5, 3, |x, y| Luma([(x * 10000 + y * 1000) as u16]));
    let path = dir.file(
        "g16.png",
        &encode(&DynamicImage::ImageLuma16(g16.clone()), ImageFormat::Png),
    );
    let img = load_image(&path, &o).expect("gray16");
    let got = assert_rgb8(&img, 5, 3);
    for (x, y, p) in got.enumerate_pixels() {
        let v = g16.get_pixel(x, y)[0];
        let want = ((f64::from(v) / 257.0).round()) as u8;
        assert_eq!(p.0, [want; 3], "gray16 at {x},{y}");
    }

    // RGBA PNG: composited onto white.
    let rgba = ImageBuffer::from_fn(4, 2, |x, _| {
        Rgba([
            200u8,
            100,
            0,
            if x == 0 { 0 } else { 128 * (x as u8 % 2) + 127 },
        ])
    });
    let path = dir.file(
        "rgba.png",
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
    );
    let img = load_image(&path, &o).expect("rgba");
    let got = assert_rgb8(&img, 4, 2);
    assert_eq!(got.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(got.get_pixel(1, 0).0, [200, 100, 0]);

    // Gray + alpha PNG.
    let la = ImageBuffer::from_fn(2, 1, |x, _| LumaA([100u8, if x == 0 { 255 } else { 0 }]));
    let path = dir.file(
        "la.png",
        &encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png),
    );
    let img = load_image(&path, &o).expect("gray alpha");
    let got = assert_rgb8(&img, 2, 1);
    assert_eq!(got.get_pixel(0, 0).0, [100; 3]);
    assert_eq!(got.get_pixel(1, 0).0, [255; 3]);

    // GIF (palette), first frame.
    let path = dir.file(
        "a.gif",
        &encode(
            &DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb.clone()).to_rgba8()),
            ImageFormat::Gif,
        ),
    );
    let img = load_image(&path, &o).expect("gif");
    let got = assert_rgb8(&img, 8, 6);
    let max = got
        .as_raw()
        .iter()
        .zip(rgb.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(max.unwrap_or(0) <= 24, "gif max diff {max:?}");

    // Palette PNG with a transparent entry (hand-made: the image crate writes no palette PNGs).
    let path = dir.file("palette.png", &palette_png());
    let img = load_image(&path, &o).expect("palette png");
    let got = assert_rgb8(&img, 3, 1);
    assert_eq!(got.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(got.get_pixel(1, 0).0, [0, 0, 255]);
    assert_eq!(
        got.get_pixel(2, 0).0,
        [255, 255, 255],
        "transparent entry composited on white"
    );
}

// --- tiny PNG writer (stored deflate blocks) for forged files -------------------------------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend(crc32(&body).to_be_bytes());
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend((data.len() as u16).to_le_bytes());
    z.extend((!(data.len() as u16)).to_le_bytes());
    z.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &d in data {
        a = (a + u32::from(d)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    z
}

fn png(
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
    extra: &[(&[u8; 4], Vec<u8>)],
    raw: &[u8],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([bit_depth, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        chunk(&mut out, kind, data);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

fn palette_png() -> Vec<u8> {
    // 3x1, 8-bit indices 0, 1, 2; palette red, blue, green; entry 2 fully transparent.
    png(
        3,
        1,
        8,
        3,
        &[
            (b"PLTE", vec![255, 0, 0, 0, 0, 255, 0, 255, 0]),
            (b"tRNS", vec![255, 255, 0]),
        ],
        &[0, 0, 1, 2],
    )
}

#[test]
fn bad_images() {
    let dir = TempDir::new("bad");
    let o = opts(16, 3, 280);

    // Header claiming 40000x40000: refused from the header, nothing large allocated.
    let bomb = png(40000, 40000, 8, 2, &[], &[0, 0, 0, 0]);
    let path = dir.file("bomb.png", &bomb);
    match load_image(&path, &o) {
        Err(ImageError::TooLarge {
            width: 40000,
            height: 40000,
            limit,
        }) => {
            assert_eq!(limit, o.max_pixels_decoded)
        }
        other => panic!("bomb: {other:?}"),
    }
    // A lower limit applies to ordinary sizes too.
    let small_limit = ImageOptions {
        max_pixels_decoded: 10,
        ..o
    };
    let png8 = encode(&DynamicImage::ImageRgb8(test_rgb(8, 6)), ImageFormat::Png);
    assert!(matches!(
        load_image_from_bytes(&png8, &small_limit),
        Err(ImageError::TooLarge {
            width: 8,
            height: 6,
            limit: 10
        })
    ));

    // Truncated PNG.
    let noisy = RgbImage::from_fn(64, 64, |x, y| {
        Rgb([(x * 37 + y * 11) as u8, (x * y) as u8, (x ^ y) as u8])
    });
    let full = encode(&DynamicImage::ImageRgb8(noisy), ImageFormat::Png);
    let path = dir.file("trunc.png", &full[..full.len() / 2]);
    match load_image(&path, &o) {
        Err(ImageError::Truncated { path: p }) => assert_eq!(p, path),
        other => panic!("truncated png: {other:?}"),
    }
    // Truncated JPEG (cut inside the entropy-coded data): an error, never a panic.
    let jpg = encode(
        &DynamicImage::ImageRgb8(test_rgb(64, 64)),
        ImageFormat::Jpeg,
    );
    let r = load_image_from_bytes(&jpg[..jpg.len() / 3], &o);
    assert!(
        matches!(r, Err(ImageError::Truncated { .. })),
        "truncated jpeg: {r:?}"
    );
    // Cut just before the end-of-image marker too.
    let r = load_image_from_bytes(&jpg[..jpg.len() - 2], &o);
    assert!(
        matches!(r, Err(ImageError::Truncated { .. })),
        "truncated jpeg: {r:?}"
    );
    // Truncated GIF: an error, never a panic.
    let gif = encode(&DynamicImage::ImageRgb8(test_rgb(32, 32)), ImageFormat::Gif);
    let r = load_image_from_bytes(&gif[..gif.len() / 2], &o);
    assert!(
        matches!(
            r,
            Err(ImageError::Truncated { .. }) | Err(ImageError::Unreadable { .. })
        ),
        "truncated gif: {r:?}"
    );

    // Zero width in the header.
    let zero = png(0, 4, 8, 2, &[], &[0]);
    assert!(matches!(
        load_image_from_bytes(&zero, &o),
        Err(ImageError::ZeroSize {
            width: 0,
            height: 4
        })
    ));

    // Unknown bytes.
    let path = dir.file("notes.png", b"this is not an image at all, just text\n");
    assert!(matches!(
        load_image(&path, &o),
        Err(ImageError::UnsupportedFormat { .. })
    ));
    // Missing file.
    assert!(matches!(
        load_image(&dir.0.join("missing.png"), &o),
        Err(ImageError::Unreadable { .. })
    ));
    // Errors convert into the crate error.
    let e: gemma_wgpu::Error = ImageError::Truncated { path: path.clone() }.into();
    assert!(matches!(e, gemma_wgpu::Error::Image(_)));
}

// --- EXIF orientation --------------------------------------------------------------------------

/// Inserts an APP1 Exif segment with the given orientation right after the JPEG SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend(1u16.to_be_bytes()); // one IFD entry
    tiff.extend(0x0112u16.to_be_bytes()); // Orientation
    tiff.extend(3u16.to_be_bytes()); // SHORT
    tiff.extend(1u32.to_be_bytes()); // count
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend(tiff);
    let mut out = vec![0xff, 0xd8, 0xff, 0xe1];
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn exif_orientation_applied() {
    let o = opts(16, 3, 280);
    // 16x8: left half black, right half white (8x8 blocks, so JPEG keeps them clean).
    let src = RgbImage::from_fn(16, 8, |x, _| {
        if x < 8 {
            Rgb([0, 0, 0])
        } else {
            Rgb([255, 255, 255])
        }
    });
    let jpg = encode(&DynamicImage::ImageRgb8(src), ImageFormat::Jpeg);
    let dark = |p: &Rgb<u8>| p.0.iter().all(|&v| v < 40);
    let bright = |p: &Rgb<u8>| p.0.iter().all(|&v| v > 215);

    // Orientation 1: as stored.
    let img = load_image_from_bytes(&with_exif_orientation(&jpg, 1), &o).expect("o1");
    let rgb = assert_rgb8(&img, 16, 8);
    assert!(dark(rgb.get_pixel(2, 4)) && bright(rgb.get_pixel(13, 4)));

    // Orientation 6: rotate 90° clockwise to display -> 8 wide, 16 tall, the left (black) half on top.
    let img = load_image_from_bytes(&with_exif_orientation(&jpg, 6), &o).expect("o6");
    let rgb = assert_rgb8(&img, 8, 16);
    assert!(dark(rgb.get_pixel(4, 2)) && bright(rgb.get_pixel(4, 13)));

    // Orientation 8: rotate 90° counter-clockwise -> black half at the bottom.
    let img = load_image_from_bytes(&with_exif_orientation(&jpg, 8), &o).expect("o8");
    let rgb = assert_rgb8(&img, 8, 16);
    assert!(bright(rgb.get_pixel(4, 2)) && dark(rgb.get_pixel(4, 13)));

    // Orientation 2: mirrored horizontally -> black half on the right.
    let img = load_image_from_bytes(&with_exif_orientation(&jpg, 2), &o).expect("o2");
    let rgb = assert_rgb8(&img, 16, 8);
    assert!(bright(rgb.get_pixel(2, 4)) && dark(rgb.get_pixel(13, 4)));
}

#[test]
fn large_photo_downscale() {
    // 4000x3000 (HxW) at budget 280 -> 912x672, 266 tokens; a smooth gradient stays in range and monotone.
    let img = RgbImage::from_fn(3000, 4000, |x, y| {
        Rgb([(x / 12) as u8, (y / 16) as u8, 128])
    });
    let t = std::time::Instant::now();
    let out = preprocess(&DynamicImage::ImageRgb8(img), &opts(16, 3, 280)).expect("preprocess");
    eprintln!("4000x3000 -> {:?} in {:?}", out.resized, t.elapsed());
    assert_eq!(out.resized, (912, 672));
    assert_eq!(out.num_soft_tokens, 266);
    assert!(out.pixel_values.iter().all(|v| (0.0..=1.0).contains(v)));
    // Red grows along x inside the first patch row.
    let p = 16usize;
    let first_row: Vec<f32> = (0..p).map(|x| out.pixel_values[x * 3]).collect();
    assert!(first_row.windows(2).all(|w| w[0] <= w[1]));
}

// ---------------------------------------------------------------------------------------------
// Goldens from the reference processor (tests/fixtures/preprocess/, made by the fixtures tooling with
// transformers' Gemma4ImageProcessorPil). Skipped with a note while the file is absent.

#[test]
fn reference_processor_golden() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess/golden.safetensors");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("SKIP: {} not present", path.display());
        return;
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let i64s = |name: &str| -> Vec<i64> {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let mut checked = 0;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for name in names.iter().filter(|n| n.ends_with(".info")) {
        // "<W>x<H>.<budget>.info" = [resize_h, resize_w, grid_h, grid_w, num_patches, soft_tokens]
        let stem = name.trim_end_matches(".info");
        let (size, budget) = stem.split_once('.').expect("name");
        let (w, h) = size.split_once('x').expect("size");
        let (w, h, budget): (u32, u32, u32) = (
            w.parse().expect("w"),
            h.parse().expect("h"),
            budget.parse().expect("budget"),
        );
        let info = i64s(name);
        let o = opts(16, 3, budget);
        let (th, tw) = target_size(h, w, &o).expect("target");
        let (gh, gw) = (th / 16, tw / 16);
        let got = [th, tw, gh, gw, gh * gw, gh * gw / 9].map(i64::from);
        assert_eq!(&got[..], &info[..], "{stem}");
        checked += 1;

        // Full pixel check where the resized image is stored.
        let Ok(resized) = st.tensor(&format!("{stem}.resized_u8")) else {
            continue;
        };
        let img = RgbImage::from_fn(w, h, |x, y| {
            let f = |c: u32| ((x * 7 + y * 13 + c * 29) % 256) as u8;
            Rgb([f(0), f(1), f(2)])
        });
        if let Ok(src) = st.tensor(&format!("{size}.source_u8")) {
            assert_eq!(src.data(), img.as_raw().as_slice(), "{size} source formula");
        }
        let ours = resize_bicubic_pil(&img, tw, th);
        assert_eq!(resized.shape(), &[th as usize, tw as usize, 3]);
        let max = ours
            .as_raw()
            .iter()
            .zip(resized.data())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0);
        assert_eq!(max, 0, "{stem}: resized max |diff| {max}/255");
        let pre = preprocess(&DynamicImage::ImageRgb8(img), &o).expect("preprocess");
        let head = st
            .tensor(&format!("{stem}.pixel_values_head"))
            .expect("head");
        let head: Vec<f32> = head
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        assert_eq!(
            &pre.pixel_values[..head.len()],
            &head[..],
            "{stem} pixel_values head"
        );
        let pos = i64s(&format!("{stem}.image_position_ids_head"));
        let ours_pos: Vec<i64> = pre.positions[..pos.len() / 2]
            .iter()
            .flat_map(|p| [i64::from(p[0]), i64::from(p[1])])
            .collect();
        assert_eq!(ours_pos, pos, "{stem} positions head");
    }
    assert!(checked >= 15, "only {checked} golden cases");
}

// ---------------------------------------------------------------------------------------------
// The 12B unified processor (tests/fixtures/preprocess-torchvision/, made by
// tools/preprocess_unified_golden.py with transformers' Gemma4UnifiedImageProcessor, torchvision
// backend): torchvision's antialiased bicubic on uint8, bit for bit (the generator asserts the
// processor's pixel_values are these bytes · f32(1/255), merged; the unified12-probe parity test
// checks the crate's pixel_values against the processor's bit for bit).

fn unified_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess-torchvision")
}

#[test]
fn unified_resize_matches_torchvision_bit_for_bit() {
    let dir = unified_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases"))
            .expect("json");
    let mut checked = 0;
    let mut differs_from_pil = 0;
    for c in meta["cases"].as_array().expect("cases") {
        let name = c["name"].as_str().expect("name");
        let get = |k: &str| c[k].as_u64().expect(k) as u32;
        let o = ImageOptions::unified(
            get("patch_size"),
            get("pooling_kernel_size"),
            get("max_soft_tokens"),
        )
        .expect("options");
        let img = load_image(&dir.join(format!("{name}.png")), &o).expect("load");
        assert_eq!((img.height(), img.width()), (get("height"), get("width")));
        let (th, tw) = target_size(img.height(), img.width(), &o).expect("target");
        assert_eq!(
            (th, tw),
            (get("target_height"), get("target_width")),
            "{name}"
        );
        let want = image::open(dir.join(format!("{name}.out.png")))
            .expect("golden")
            .to_rgb8();
        let got = resize_bicubic_torchvision(&to_rgb8(&img), tw, th);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diff = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "{name}: {diff} bytes differ from torchvision");
        // The two resamplers really differ (what this path exists for).
        if resize_bicubic_pil(&to_rgb8(&img), tw, th).as_raw() != want.as_raw() {
            differs_from_pil += 1;
        }
        // The whole preprocessing: one soft token per 48-px (p·k) model patch.
        let pre = preprocess(&img, &o).expect("preprocess");
        let mp = (get("patch_size") * get("pooling_kernel_size")) as usize;
        assert_eq!(pre.num_soft_tokens, get("soft_tokens"), "{name}");
        assert_eq!(pre.num_patches(), get("soft_tokens") as usize, "{name}");
        assert_eq!(pre.pixel_values.len(), pre.num_patches() * 3 * mp * mp);
        if c["pixel_values"].as_bool() == Some(true) {
            let pv: Vec<f32> = std::fs::read(dir.join(format!("{name}.pv")))
                .expect("pv")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            let pos: Vec<i64> = std::fs::read(dir.join(format!("{name}.pos")))
                .expect("pos")
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            assert_eq!(pre.pixel_values.len(), pv.len(), "{name}");
            let bad = pre
                .pixel_values
                .iter()
                .zip(&pv)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                bad, 0,
                "{name}: {bad} pixel values differ from the processor's"
            );
            let ours: Vec<i64> = pre
                .positions
                .iter()
                .flat_map(|p| [i64::from(p[0]), i64::from(p[1])])
                .collect();
            assert_eq!(ours, pos, "{name} positions");
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} cases");
    assert!(
        differs_from_pil >= 5,
        "PIL agrees on {} cases",
        checked - differs_from_pil
    );
}

#[test]
fn unified_options() {
    let o = ImageOptions::unified(16, 3, 280).expect("ok");
    assert_eq!(o.processor, ImageProcessor::Unified);
    assert_eq!(o.max_patches(), 280 * 9);
    assert!(matches!(
        ImageOptions::unified(16, 3, 100),
        Err(ImageError::InvalidBudget { .. })
    ));
    // A 336x480 image fills budget 70 exactly (7 x 10 model patches): no resize, model patches
    // row-major, (y, x, channel) inside a patch.
    let img = RgbImage::from_fn(480, 336, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    let o = ImageOptions::unified(16, 3, 70).expect("ok");
    assert_eq!(target_size(336, 480, &o).expect("t"), (336, 480));
    let pre = preprocess(&DynamicImage::ImageRgb8(img), &o).expect("pre");
    assert_eq!(pre.grid, (7, 10));
    assert_eq!(pre.num_soft_tokens, 70);
    assert_eq!(&pre.positions[..3], &[[0, 0], [1, 0], [2, 0]]);
    assert_eq!(pre.positions[11], [1, 1]);
    let v = |patch: usize, y: usize, x: usize, c: usize| {
        pre.pixel_values[patch * 6912 + (y * 48 + x) * 3 + c]
    };
    let s = |b: u8| f32::from(b) * (1.0f64 / 255.0) as f32;
    assert_eq!(v(11, 5, 9, 0), s(48 + 9));
    assert_eq!(v(11, 5, 9, 1), s(48 + 5));
    assert_eq!(v(2, 47, 0, 2), s(7));
    assert_eq!(v(2, 47, 0, 0), s(96));
}
