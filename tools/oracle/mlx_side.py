#!/usr/bin/env python3
"""MLX side of the fixture generator; run with tools/oracle/venv-mlx/bin/python (no torch).

    mlx_side.py quantize <hf model dir> <out dir>
        Loads the HF tiny checkpoint with mlx-vlm, casts every float parameter to bf16, quantizes
        (affine, 4-bit group 64 globally; every text mlp.{gate,up,down}_proj at 8-bit group 64 through a
        per-module override; embed_tokens, embed_tokens_per_layer, per_layer_model_projection and
        embed_vision.embedding_projection included; vision tower left in float) and saves
        model.safetensors + config.json in the mlx-community layout.
    mlx_side.py forward <mlx dir> <inputs.npz> <result.npz>
        Runs mlx-vlm's own forward on the quantized checkpoint: natively (bf16 activations) and with every
        float parameter (scales/biases included) upcast to f32; plus a cached greedy decode in f32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map
import mlx_vlm
from mlx_vlm.quant_utils import quantize_model
from mlx_vlm.utils import load_config, load_model, save_config

MLP_8BIT = {"group_size": 64, "bits": 8, "mode": "affine"}


def predicate(path: str, module) -> bool | dict:
    if "vision_tower" in path or "audio_tower" in path:
        return False
    if path.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")):
        return dict(MLP_8BIT)
    return True


def quantize(src: Path, out: Path) -> None:
    model = load_model(src)
    config = load_config(src)
    params = tree_map(lambda p: p.astype(mx.bfloat16) if mx.issubdtype(p.dtype, mx.floating) else p,
                      model.parameters())
    model.update(params)
    model, qconfig = quantize_model(model, config, 64, 4, mode="affine", quant_predicate=predicate)
    weights = dict(tree_flatten(model.parameters()))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), {k: weights[k] for k in sorted(weights)},
                        metadata={"format": "mlx"})
    save_config(qconfig, config_path=out / "config.json")
    # Sanity checks on what was written.
    tc = config["text_config"]
    first_shared = tc["num_hidden_layers"] - tc.get("num_kv_shared_layers", 0)
    for i in range(first_shared, tc["num_hidden_layers"]):
        for n in ("k_proj", "v_proj", "k_norm"):
            assert not any(k.startswith(f"language_model.model.layers.{i}.self_attn.{n}") for k in weights), (i, n)
    if tc.get("attention_k_eq_v"):
        # k_eq_v full layers: no v_proj (V = raw k_proj output); sliding layers keep theirs.
        for i, t in enumerate(tc["layer_types"]):
            has_v = f"language_model.model.layers.{i}.self_attn.v_proj.weight" in weights
            assert has_v == (t == "sliding_attention"), (i, t)
    must = ["language_model.model.embed_tokens"]
    if tc.get("hidden_size_per_layer_input"):
        must += ["language_model.model.embed_tokens_per_layer", "language_model.model.per_layer_model_projection"]
    vc = config.get("vision_config") or {}
    if config.get("model_type") == "gemma4_unified":
        must += ["vision_embedder.patch_dense", "embed_vision.embedding_projection"]
    elif vc.get("hidden_size", 0) % 64 == 0:
        must += ["embed_vision.embedding_projection"]
    else:  # in-features not a multiple of the group size: mlx-vlm leaves it in float, silently
        assert "embed_vision.embedding_projection.scales" not in weights
    for m in must:
        assert m + ".scales" in weights, m
    assert not any(k.startswith("vision_tower") and k.endswith(".scales") for k in weights)
    for k, v in weights.items():
        if k.endswith(".weight") and k[:-7] + ".scales" in weights:
            bits = 8 if k[:-7].endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")) else 4
            ins = weights[k[:-7] + ".scales"].shape[-1] * 64
            assert v.dtype == mx.uint32 and v.shape[-1] == ins * bits // 32, (k, v.shape, bits)
    print("quantized:", sum(1 for k in weights if k.endswith(".scales")), "modules")


def to_f32(model) -> None:
    model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
                          model.parameters()))


def forward(mdir: Path, inputs: Path, result: Path) -> None:
    d = np.load(inputs)
    ids = mx.array(d["input_ids"])
    kw = dict(pixel_values=mx.array(d["pixel_values"]), image_position_ids=mx.array(d["image_position_ids"]),
              mm_token_type_ids=mx.array(d["mm_token_type_ids"]))
    model = load_model(mdir)
    native = model(ids, **kw).logits.astype(mx.float32)
    mx.eval(native)
    to_f32(model)
    logits = model(ids, **kw).logits
    feats = model.encode_image(kw["pixel_values"], kw["image_position_ids"])
    # Greedy decode with mlx-vlm's caches (prefill, then one token at a time).
    n_new = int(d["greedy_tokens"])
    cache = model.make_cache()
    out = model(ids, cache=cache, **kw).logits
    toks = []
    nxt = mx.argmax(out[:, -1, :], axis=-1)
    for _ in range(n_new):
        toks.append(int(nxt.item()))
        out = model.language_model(nxt[None], cache=cache).logits
        nxt = mx.argmax(out[:, -1, :], axis=-1)
    mx.eval(logits, feats)
    np.savez(result, logits_native=np.array(native), logits_f32=np.array(logits.astype(mx.float32)),
             image_features_f32=np.array(feats.astype(mx.float32)), greedy_f32=np.array(toks, dtype=np.int64),
             mlx_version=np.array(mx.__version__), mlx_vlm_version=np.array(mlx_vlm.__version__))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "quantize":
        quantize(Path(sys.argv[2]), Path(sys.argv[3]))
    elif mode == "forward":
        forward(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
