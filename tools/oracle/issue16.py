#!/usr/bin/env python3
"""Issue #16 part 3: a two-image prompt whose images have different soft-token budgets.

transformers' Gemma 4 processor applies one `max_soft_tokens` to every image of a call, so each image is
processed on its own (with its budget) and the patch rows are padded to a common length (position -1, the
processor's own padding for batched images) before one forward. Writes tests/fixtures/budgets/ (golden only;
the model is ../e2b-like). Run from the repository root:

    tools/oracle/venv/bin/python tools/oracle/issue16.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import generate as G  # noqa: E402

BUDGETS = [140, 70]


def per_image(images: list[np.ndarray], budgets: list[int]) -> dict:
    parts = [G.preprocess([im], Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=b, pooling_kernel_size=3))
             for im, b in zip(images, budgets)]
    width = max(p["pixel_values"].shape[1] for p in parts)
    pvs, pos = [], []
    for p in parts:
        pv, ps = p["pixel_values"][0], p["image_position_ids"][0]
        pad = width - pv.shape[0]
        pvs.append(torch.cat([pv, torch.zeros(pad, pv.shape[1])]))
        pos.append(torch.cat([ps, torch.full((pad, 2), -1, dtype=ps.dtype)]))
    return {"pixel_values": torch.stack(pvs), "image_position_ids": torch.stack(pos),
            "num_soft_tokens": [p["num_soft_tokens"][0] for p in parts]}


def main() -> None:
    root = Path("tests/fixtures")
    model = G.load_hf(root / "e2b-like")
    rng = np.random.default_rng(G.SEED + 16)
    im1 = G.random_image(rng, 60, 88)   # landscape, budget 140
    im2 = G.random_image(rng, 72, 40)   # portrait, budget 70
    pp = per_image([im1, im2], BUDGETS)
    # the same images at one budget give other counts (what the test tells apart)
    for b in (70, 140):
        one = per_image([im1, im2], [b, b])["num_soft_tokens"]
        assert one != pp["num_soft_tokens"], (b, one)
    for attempt in range(64):
        r = np.random.default_rng([G.SEED + 16, attempt])
        parts = [G.text_ids(r, n) for n in (3, 4, 3)]
        ids = G.build_prompt(parts, pp["num_soft_tokens"])
        with torch.no_grad():
            gr = G.greedy(model, ids, pp)
        if not (set(gr.tolist()) & G.MULTIMODAL_IDS):
            break
    else:
        raise RuntimeError("no clean greedy continuation")
    with torch.no_grad():
        fw = G.forward_goldens(model, ids, pp)
    g = {
        "input_ids": torch.tensor(ids, dtype=torch.int64),
        "num_soft_tokens": torch.tensor(pp["num_soft_tokens"], dtype=torch.int64),
        "budgets": torch.tensor(BUDGETS, dtype=torch.int64),
        "image_u8.0": torch.from_numpy(np.ascontiguousarray(im1)),
        "image_u8.1": torch.from_numpy(np.ascontiguousarray(im2)),
        "logits": fw["logits"],
        "greedy": gr,
    }
    out = root / "budgets"
    out.mkdir(parents=True, exist_ok=True)
    G.save_golden(out / "golden.safetensors", g, {"case": "budgets", "budgets": str(BUDGETS)})
    G.fixture_json(out, model="../e2b-like", golden="golden.safetensors", layout="hf", kind="budgets")
    print(pp["num_soft_tokens"], len(ids), (out / "golden.safetensors").stat().st_size)


if __name__ == "__main__":
    main()
