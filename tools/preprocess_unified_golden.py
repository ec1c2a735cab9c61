#!/usr/bin/env python3
"""Goldens for the 12B unified image processor (tests/model/preprocess.rs, `unified_*` tests).

transformers 5.24 `Gemma4UnifiedImageProcessor` (torchvision backend) resizes with
`torchvision.transforms.v2.functional.resize(uint8, BICUBIC, antialias=True)`, i.e. ATen's uint8
antialias path on CPU, then rescales in float32 and merges k x k teacher patches into 48-px model
patches. Run with the oracle venv (torch, torchvision, transformers 5.24):

    tools/oracle/venv/bin/python tools/preprocess_unified_golden.py tests/fixtures/preprocess-torchvision

Per case it writes `<name>.png` (the input, RGB8, deterministic content), `<name>.out.png` (the
resized uint8 image as the processor makes it, stored losslessly), and for the cases marked `pv`
`<name>.pv` (the processor's unpadded pixel_values, f32 little-endian [n, 3*(p*k)^2]) and
`<name>.pos` (image_position_ids, i64 [n, 2]); `cases.json` lists sizes, options, targets and the
library versions. The script asserts that the processor's pixel_values equal the resized bytes
times float32(1/255), merged, for every case.
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2.functional import InterpolationMode
from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
    Gemma4UnifiedImageProcessor,
)

# (name, height, width, patch, kernel, budget, content, store pixel values)
CASES = [
    ("down_mild", 97, 131, 4, 3, 70, "noise", False),
    ("down_strong", 150, 200, 4, 3, 70, "noise", False),
    ("down_smooth", 300, 220, 4, 3, 70, "smooth", False),
    ("up", 20, 30, 4, 3, 70, "noise", False),
    ("horizontal_only", 84, 113, 4, 3, 70, "noise", False),
    ("vertical_only", 113, 84, 4, 3, 70, "noise", False),
    ("down_huge", 420, 180, 4, 3, 70, "smooth", False),
    ("real_up", 100, 150, 16, 3, 70, "smooth", False),
]


def make_input(h, w, content, seed):
    rng = np.random.default_rng(seed)
    if content == "noise":
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            127.5 + 127.5 * np.sin(x / 7.0 + y / 11.0),
            127.5 + 127.5 * np.cos(x / 5.0 - y / 3.0),
            x * 255.0 / max(w - 1, 1),
        ],
        axis=-1,
    )
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main(out):
    os.makedirs(out, exist_ok=True)
    meta = {
        "processor": "transformers Gemma4UnifiedImageProcessor (torchvision backend)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": [],
    }
    for i, (name, h, w, p, k, b, content, store_pv) in enumerate(CASES):
        Image.fromarray(make_input(h, w, content, 1000 + i)).save(f"{out}/{name}.png")
        img = Image.open(f"{out}/{name}.png")
        proc = Gemma4UnifiedImageProcessor(patch_size=p, pooling_kernel_size=k, max_soft_tokens=b)
        r = proc(images=[img], return_tensors="pt")
        n = int(r["num_soft_tokens_per_image"][0])
        pv, pos = r["pixel_values"][0][:n], r["image_position_ids"][0][:n]
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
        rz = proc.aspect_ratio_preserving_resize(
            t, patch_size=p, max_patches=b * k * k, pooling_kernel_size=k,
            resample=InterpolationMode.BICUBIC,
        )
        th, tw = rz.shape[-2], rz.shape[-1]
        Image.fromarray(rz.permute(1, 2, 0).contiguous().numpy()).save(f"{out}/{name}.out.png")
        mp = p * k
        merged = (rz.float() * (1 / 255)).reshape(3, th // mp, mp, tw // mp, mp)
        merged = merged.permute(1, 3, 2, 4, 0).reshape(-1, mp * mp * 3)
        assert torch.equal(merged, pv), name
        if store_pv:
            pv.numpy().astype("<f4").tofile(f"{out}/{name}.pv")
            pos.numpy().astype("<i8").tofile(f"{out}/{name}.pos")
        meta["cases"].append(dict(
            name=name, height=h, width=w, patch_size=p, pooling_kernel_size=k,
            max_soft_tokens=b, target_height=th, target_width=tw, soft_tokens=n,
            pixel_values=store_pv,
        ))
    with open(f"{out}/cases.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
