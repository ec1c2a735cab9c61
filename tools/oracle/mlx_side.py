#!/usr/bin/env python3
"""MLX side of the fixture generator; run with tools/oracle/venv-mlx/bin/python (no torch).

    mlx_side.py quantize <hf model dir> <out dir>
        Loads the HF tiny checkpoint with mlx-vlm, casts every float parameter to bf16, quantizes
        (affine, 4-bit group 64 globally; every text mlp.{gate,up,down}_proj at 8-bit group 64 through a
        per-module override; embed_tokens, embed_tokens_per_layer, per_layer_model_projection and
        embed_vision.embedding_projection included; vision tower left in float) and saves
        model.safetensors + config.json in the mlx-community layout.
    mlx_side.py quantize-moe <hf model dir> <out dir>
        The MoE (26B-A4B-like) variant: mlx-vlm's own gemma4 quant_predicate decides the router (8-bit group 64),
        every dense mlp.{gate,up,down}_proj 8-bit group 64, everything else 4-bit group 64 with mlx-vlm's
        fallback_group_size 32 for in-features that 64 does not divide (the experts' down_proj, recorded as per-path
        entries); vision tower and (in-features 72) embed_vision.embedding_projection float.
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


def quantize_moe(src: Path, out: Path) -> None:
    model = load_model(src)
    config = load_config(src)
    params = tree_map(lambda p: p.astype(mx.bfloat16) if mx.issubdtype(p.dtype, mx.floating) else p,
                      model.parameters())
    model.update(params)
    own = model.quant_predicate  # mlx-vlm gemma4: {"group_size": 64, "bits": 8} for paths containing "router"

    def moe_predicate(path: str, module) -> bool | dict:
        if "vision_tower" in path or "audio_tower" in path:
            return False
        r = own(path, module)
        if isinstance(r, dict) or r is False:
            return r
        if path.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")):
            return dict(MLP_8BIT)
        if module.weight.shape[-1] % 64:  # only the experts' down_proj (in-features = moe_intermediate_size)
            return {"fallback_group_size": 32}
        return True

    model, qconfig = quantize_model(model, config, 64, 4, mode="affine", quant_predicate=moe_predicate)
    weights = dict(tree_flatten(model.parameters()))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), {k: weights[k] for k in sorted(weights)},
                        metadata={"format": "mlx"})
    save_config(qconfig, config_path=out / "config.json")
    tc = config["text_config"]
    e, inter, h = tc["num_experts"], tc["moe_intermediate_size"], tc["hidden_size"]
    for i, t in enumerate(tc["layer_types"]):
        p = f"language_model.model.layers.{i}."
        assert (p + "self_attn.v_proj.weight" in weights) == (t == "sliding_attention"), (i, t)
        assert not any(k.startswith(p + "experts.gate_up_proj") for k in weights), "gate_up split by sanitize"
        for name, (o, n) in {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}.items():
            q = p + "experts.switch_glu." + name
            cfg = qconfig["quantization"].get(q, qconfig["quantization"])
            assert weights[q + ".weight"].dtype == mx.uint32, q
            assert weights[q + ".weight"].shape == (e, o, n * cfg["bits"] // 32), (q, weights[q + ".weight"].shape)
            assert weights[q + ".scales"].shape == (e, o, n // cfg["group_size"]), q
            assert cfg["bits"] == 4, q
        r = qconfig["quantization"][p + "router.proj"]
        assert r["bits"] == 8 and weights[p + "router.proj.weight"].shape == (e, h * 8 // 32), r
        for n in ("scale", "per_expert_scale"):
            assert weights[p + "router." + n].dtype == mx.bfloat16, n
    assert "language_model.model.embed_tokens.scales" in weights
    assert not any(k.startswith(("vision_tower", "embed_vision")) and k.endswith(".scales") for k in weights)
    print("quantized:", sum(1 for k in weights if k.endswith(".scales")), "modules")


class RouterRecorder:
    """Wraps mlx-vlm's gemma4 Router.__call__ to record its (argpartition-ordered) expert ids while enabled."""

    def __init__(self):
        from mlx_vlm.models.gemma4 import language
        self.cls = getattr(language, "Router", None)
        self.calls: list = []
        self.on = False
        if self.cls is None:
            return
        orig = self.cls.__call__
        rec = self

        def call(router, x):
            idx, w = orig(router, x)
            if rec.on:
                rec.calls.append((idx, w))
            return idx, w
        self.cls.__call__ = call


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
    rec = RouterRecorder()
    rec.on = True
    logits = model(ids, **kw).logits
    rec.on = False
    routers = {f"router_ids_L{i}": np.array(idx.astype(mx.int32)) for i, (idx, _w) in enumerate(rec.calls)}
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
             mlx_version=np.array(mx.__version__), mlx_vlm_version=np.array(mlx_vlm.__version__), **routers)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "quantize":
        quantize(Path(sys.argv[2]), Path(sys.argv[3]))
    elif mode == "quantize-moe":
        quantize_moe(Path(sys.argv[2]), Path(sys.argv[3]))
    elif mode == "forward":
        forward(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
