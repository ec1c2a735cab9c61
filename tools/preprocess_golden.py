#!/usr/bin/env python3
"""Reference values for the Gemma 4 image preprocessor tests (tests/preprocess.rs).

Two parts:

1. `sizes`: the resize rule, copied verbatim (pure arithmetic) from transformers 5.24
   `models/gemma4/image_processing_pil_gemma4.py::get_aspect_ratio_preserving_size`. Runs with any python3:
       python3 tools/preprocess_golden.py sizes
   prints one line per case; the table `REFERENCE_SIZES` in tests/preprocess.rs was pasted from it.

2. `pil`: PIL BICUBIC resize goldens in tests/fixtures/preprocess-pil/. Needs Pillow and numpy:
       python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
       /tmp/pilvenv/bin/python tools/preprocess_golden.py pil
   For each case it writes `<name>.png` (the input, RGB8, deterministic pseudo-random content) and
   `<name>.rgb` (the expected output, raw uint8 H*W*3, row-major, made with
   `Image.resize((tw, th), Image.Resampling.BICUBIC)` exactly as transformers' PIL backend does for uint8
   RGB images), plus `cases.json` listing name, input size, options and target size.
   Pillow version used is recorded in cases.json.

3. `verify`: checks, with transformers 5.24 installed, that `Gemma4ImageProcessorPil` on each golden input gives
   exactly the golden bytes / 255, patchified (i.e. that the goldens stand for the whole reference processor):
       <venv with transformers>/bin/python tools/preprocess_golden.py verify
   (done once with transformers 5.24.0 / Pillow of that venv: all cases bit-equal, padding zero,
   positions (col, row)).
"""

import json
import math
import os
import sys

SUPPORTED = (70, 140, 280, 560, 1120)


def get_aspect_ratio_preserving_size(height, width, patch_size, max_patches, pooling_kernel_size):
    # Copied from transformers (see module docstring).
    total_px = height * width
    target_px = max_patches * (patch_size**2)
    factor = math.sqrt(target_px / total_px)
    ideal_height = factor * height
    ideal_width = factor * width
    side_mult = pooling_kernel_size * patch_size
    target_height = int(math.floor(ideal_height / side_mult)) * side_mult
    target_width = int(math.floor(ideal_width / side_mult)) * side_mult
    if target_height == 0 and target_width == 0:
        raise ValueError("0 x 0")
    max_side_length = (max_patches // pooling_kernel_size**2) * side_mult
    if target_height == 0:
        target_height = side_mult
        target_width = min(int(math.floor(width / height)) * side_mult, max_side_length)
    elif target_width == 0:
        target_width = side_mult
        target_height = min(int(math.floor(height / width)) * side_mult, max_side_length)
    if target_height * target_width > target_px:
        raise ValueError("exceeds")
    return target_height, target_width


def tokens(th, tw, p, k):
    return (th // p) * (tw // p) // (k * k)


# (height, width, patch, kernel, budget)
SIZE_CASES = [
    (768, 1024, 16, 3, 280),
    (1080, 1920, 16, 3, 280),
    (224, 224, 16, 3, 280),
    (48, 64, 4, 3, 70),
]
for (h, w) in [(20, 30), (640, 480), (1920, 1080), (480, 640), (4000, 3000)]:
    for b in (70, 280, 1120):
        SIZE_CASES.append((h, w, 16, 3, b))
# extreme aspect ratios (zero-side rule) and odd sizes
SIZE_CASES += [
    (10, 4000, 16, 3, 280),
    (4000, 10, 16, 3, 280),
    (1, 100000, 16, 3, 70),
    (3, 7, 16, 3, 1120),
    (333, 777, 16, 3, 140),
    (1000, 1000, 16, 3, 560),
    (97, 131, 4, 3, 70),
    (150, 200, 4, 3, 70),
]


def sizes():
    for (h, w, p, k, b) in SIZE_CASES:
        th, tw = get_aspect_ratio_preserving_size(h, w, p, b * k * k, k)
        print(f"    ({h}, {w}, {p}, {k}, {b}, {th}, {tw}, {tokens(th, tw, p, k)}),")


# PIL goldens: (name, height, width, patch, kernel, budget, content)
PIL_CASES = [
    ("down_mild", 97, 131, 4, 3, 70, "noise"),
    ("down_strong", 150, 200, 4, 3, 70, "noise"),
    ("down_smooth", 300, 220, 4, 3, 70, "smooth"),
    ("up", 20, 30, 4, 3, 70, "noise"),
    ("down_big", 300, 400, 4, 3, 70, "smooth"),
    ("horizontal_only", 84, 113, 4, 3, 70, "noise"),
    ("vertical_only", 113, 84, 4, 3, 70, "noise"),
]


def make_input(h, w, content, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            127.5 + 127.5 * np.sin(x / 7.0 + y / 11.0),
            127.5 + 127.5 * np.cos(x / 5.0 - y / 3.0),
            (x * 255.0 / max(w - 1, 1)),
        ],
        axis=-1,
    )
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def pil():
    import numpy as np
    import PIL
    from PIL import Image

    out_dir = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "preprocess-pil")
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for i, (name, h, w, p, k, b, content) in enumerate(PIL_CASES):
        th, tw = get_aspect_ratio_preserving_size(h, w, p, b * k * k, k)
        arr = make_input(h, w, content, 1234 + i)
        im = Image.fromarray(arr, mode="RGB")
        im.save(os.path.join(out_dir, f"{name}.png"))
        out = np.asarray(im.resize((tw, th), Image.Resampling.BICUBIC))
        assert out.shape == (th, tw, 3) and out.dtype == np.uint8
        with open(os.path.join(out_dir, f"{name}.rgb"), "wb") as f:
            f.write(out.tobytes())
        cases.append(dict(name=name, height=h, width=w, patch_size=p, pooling_kernel_size=k,
                          max_soft_tokens=b, target_height=th, target_width=tw))
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(dict(pillow=PIL.__version__, generator="tools/preprocess_golden.py pil", cases=cases), f, indent=1)
        f.write("\n")


def verify():
    import numpy as np
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    d = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "preprocess-pil")
    for c in json.load(open(os.path.join(d, "cases.json")))["cases"]:
        proc = Gemma4ImageProcessorPil(patch_size=c["patch_size"], pooling_kernel_size=c["pooling_kernel_size"],
                                       max_soft_tokens=c["max_soft_tokens"])
        out = proc(images=[Image.open(os.path.join(d, c["name"] + ".png"))], return_tensors="np")
        pv = out["pixel_values"][0]
        th, tw, p = c["target_height"], c["target_width"], c["patch_size"]
        want = np.frombuffer(open(os.path.join(d, c["name"] + ".rgb"), "rb").read(), np.uint8).reshape(th, tw, 3)
        wp = want.reshape(th // p, p, tw // p, p, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 3 * p * p)
        wp = (wp.astype(np.float64) * (1 / 255)).astype(np.float32)
        n = wp.shape[0]
        ok = np.array_equal(pv[:n], wp) and np.all(pv[n:] == 0)
        print(c["name"], "OK" if ok else "MISMATCH", out["num_soft_tokens_per_image"])


if __name__ == "__main__":
    {"sizes": sizes, "pil": pil, "verify": verify}[sys.argv[1] if len(sys.argv) > 1 else "sizes"]()
