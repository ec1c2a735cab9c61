#!/usr/bin/env python3
"""Builds the tiny random Gemma 4 fixtures and their golden outputs (transformers fp32, eager attention).

Run from the repository root with the torch venv (see tools/oracle/README.md):

    tools/oracle/venv/bin/python tools/oracle/generate.py [--out tests/fixtures] [--skip-mlx]

The MLX case calls tools/oracle/mlx_side.py with tools/oracle/venv-mlx/bin/python.
Everything is seeded; a rerun writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
from transformers.models.gemma4.image_processing_pil_gemma4 import (
    Gemma4ImageProcessorPil,
    get_aspect_ratio_preserving_size,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tiny_tokenizer  # noqa: E402

SEED = 1234
IMAGE_TOKEN, BOI, EOI = 500, 501, 502
AUDIO_TOKEN, BOA, EOA, VIDEO_TOKEN = 503, 504, 505, 506
GREEDY_TOKENS = 16

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def versions() -> dict[str, str]:
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "tokenizers": tokenizers.__version__,
        "seed": str(SEED),
    }


# ----------------------------------------------------------------------------------------------- configs

ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}
S, F = "sliding_attention", "full_attention"


def e2b_text() -> dict:
    return dict(
        vocab_size=512, vocab_size_per_layer_input=512, hidden_size=128, intermediate_size=192,
        use_double_wide_mlp=True, num_hidden_layers=6, layer_types=[S, S, F, S, S, F], num_kv_shared_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, global_head_dim=64,
        hidden_size_per_layer_input=64, sliding_window=8, rope_parameters=ROPE, attention_k_eq_v=False,
        use_bidirectional_attention=None, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def e2b_vision() -> dict:
    return dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        head_dim=16, patch_size=4, pooling_kernel_size=3, position_embedding_size=64, use_clipped_linears=True,
        standardize=False, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    )


def e4b_text() -> dict:
    # (5 sliding + 1 full) x 2; the last 4 layers (8..11: S, S, S, F) read the K/V of layer 7 (S) and 5 (F).
    return dict(
        vocab_size=512, vocab_size_per_layer_input=512, hidden_size=64, intermediate_size=96,
        use_double_wide_mlp=False, num_hidden_layers=12, layer_types=([S] * 5 + [F]) * 2, num_kv_shared_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=32,
        hidden_size_per_layer_input=16, sliding_window=8, rope_parameters=ROPE, attention_k_eq_v=False,
        use_bidirectional_attention=None, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def e4b_vision() -> dict:
    return dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, patch_size=4, pooling_kernel_size=3, position_embedding_size=64, use_clipped_linears=True,
        standardize=False, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    )


def make_config(text: dict, vision: dict) -> Gemma4Config:
    cfg = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        image_token_id=IMAGE_TOKEN, boi_token_id=BOI, eoi_token_id=EOI, audio_token_id=AUDIO_TOKEN,
        boa_token_id=BOA, eoa_token_index=EOA, video_token_id=VIDEO_TOKEN, tie_word_embeddings=True,
    )
    cfg._attn_implementation = "eager"
    return cfg


# ----------------------------------------------------------------------------------------------- model

def rerandomize(model: torch.nn.Module, seed: int) -> None:
    """reference-oracle.md §4.4: overwrite every parameter and persistent buffer from one generator."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    targets = dict(model.named_parameters())
    targets.update({n: b for n, b in model.named_buffers() if n in sd})
    with torch.no_grad():
        for name in sorted(targets):
            t = targets[name]
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            shape = t.shape
            if leaf == "layer_scalar":
                v = 0.5 + torch.rand(shape, generator=g)
            elif leaf in ("input_min", "output_min"):
                v = -(3.0 + torch.rand(shape, generator=g))
            elif leaf in ("input_max", "output_max"):
                v = 3.0 + torch.rand(shape, generator=g)
            elif "norm" in name and leaf == "weight":
                v = 1.0 + 0.2 * torch.randn(shape, generator=g)
            elif leaf == "position_embedding_table":
                v = 0.5 * torch.randn(shape, generator=g)
            elif t.dim() >= 2:
                v = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
            else:
                v = 0.5 * torch.randn(shape, generator=g)
            t.copy_(v.to(t.dtype))


def round_to_bf16(model: torch.nn.Module) -> None:
    """Rounds every persistent float tensor to a bf16-representable value (inv_freq etc. untouched)."""
    sd_names = set(model.state_dict().keys())
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name in sd_names and t.is_floating_point():
                t.copy_(t.to(torch.bfloat16).to(t.dtype))


def build_model(text: dict, vision: dict, seed: int) -> tuple[Gemma4ForConditionalGeneration, Gemma4Config]:
    cfg = make_config(text, vision)
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(cfg).eval()
    rerandomize(model, seed)
    return model, cfg


def checkpoint_tensors(model, tmp: Path) -> dict[str, torch.Tensor]:
    """The tensors save_pretrained writes (canonical key set, tied head dropped), in fp32."""
    d = tmp / "sp"
    model.save_pretrained(d, safe_serialization=True)
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(safetensors.torch.load_file(str(f)))
    shutil.rmtree(d)
    return out


ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
             torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Deterministic safetensors writer: metadata keys sorted, tensors sorted by name and laid out in that order.

    (safetensors' own writer orders the metadata through a hash map, so two runs differ byte-wise.)"""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    off = 0
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    # Round-trip check with the reference reader.
    back = safetensors.torch.load_file(str(path))
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k].cpu()) for k in tensors), path


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype, shards: int = 1) -> None:
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    meta = {"format": "pt"}
    if shards == 1:
        write_safetensors(out / "model.safetensors", tensors, meta)
        return
    keys = sorted(tensors)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i * per:(i + 1) * per]}
        write_safetensors(out / name, part, meta)
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_configs(model, out: Path, dtype_name: str, tmp: Path) -> None:
    """config.json in the hub form (global_head_dim) + config.per_layer_config.json (transformers 5.24 form)."""
    d = tmp / "cfg"
    model.config.save_pretrained(d)
    tf_form = json.loads((d / "config.json").read_text())
    shutil.rmtree(d)
    tf_form["dtype"] = dtype_name
    tf_form["text_config"]["dtype"] = dtype_name
    tf_form["vision_config"]["dtype"] = dtype_name
    hub = json.loads(json.dumps(tf_form))
    tc = hub["text_config"]
    plc = tc.pop("per_layer_config")
    gheads = {v["head_dim"] for v in plc.values()}
    assert len(gheads) == 1 and set(int(k) for k in plc) == {
        i for i, t in enumerate(tc["layer_types"]) if t == F}, plc
    tc["global_head_dim"] = gheads.pop()
    gkv = {v.get("num_key_value_heads") for v in plc.values()}
    assert len(gkv) == 1, plc
    if (g := gkv.pop()) is not None:  # k_eq_v models: full layers' own KV head count
        tc["num_global_key_value_heads"] = g
    (out / "config.json").write_text(json.dumps(hub, indent=2, sort_keys=True) + "\n")
    (out / "config.per_layer_config.json").write_text(json.dumps(tf_form, indent=2, sort_keys=True) + "\n")


def load_hf(model_dir: Path, config_name: str = "config.json") -> Gemma4ForConditionalGeneration:
    cfg = Gemma4Config.from_json_file(str(model_dir / config_name))
    model, info = Gemma4ForConditionalGeneration.from_pretrained(
        str(model_dir), config=cfg, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    assert not bad, f"{model_dir}: {bad}"
    return model.eval()


# ----------------------------------------------------------------------------------------------- inputs

def tiny_processor() -> Gemma4ImageProcessorPil:
    return Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def text_ids(rng: np.random.Generator, n: int) -> list[int]:
    return [int(x) for x in rng.integers(10, 490, size=n)]


def preprocess(images: list[np.ndarray], proc) -> dict:
    out = proc(images=[PIL.Image.fromarray(im) for im in images], return_tensors="pt")
    return {"pixel_values": out["pixel_values"].float(), "image_position_ids": out["image_position_ids"],
            "num_soft_tokens": [int(n) for n in out["num_soft_tokens_per_image"]]}


def build_prompt(text_parts: list[list[int]], soft_counts: list[int]) -> list[int]:
    """[bos] + t0 + (boi, image*n, eoi, t_{i+1}) for every image."""
    ids = [2] + text_parts[0]
    for i, n in enumerate(soft_counts):
        ids += [BOI] + [IMAGE_TOKEN] * n + [EOI] + text_parts[i + 1]
    return ids


# ----------------------------------------------------------------------------------------------- goldens

class LayerTap:
    """Captures the raw output of every decoder layer (the last one is not in hidden_states)."""

    def __init__(self, model):
        self.out: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self.hook) for layer in model.model.language_model.layers]

    def hook(self, _module, _inputs, output):
        self.out.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    def close(self):
        for h in self.handles:
            h.remove()


def clip_stats(model, fn) -> dict[str, int]:
    """Counts vision activations that hit a clip bound while fn() runs."""
    stats = {"input_clipped": 0, "output_clipped": 0, "elements": 0}
    handles = []
    for name, m in model.named_modules():
        if type(m).__name__ == "Gemma4ClippableLinear" and m.use_clipped_linears:
            def pre(mod, inp):
                x = inp[0]
                stats["input_clipped"] += int(((x < mod.input_min) | (x > mod.input_max)).sum())
                stats["elements"] += x.numel()

            def post(mod, inp, out):
                y = mod.linear(torch.clamp(inp[0], mod.input_min, mod.input_max))
                stats["output_clipped"] += int(((y < mod.output_min) | (y > mod.output_max)).sum())
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return stats


def forward_goldens(model, ids: list[int], pp: dict | None, prefix: str = "") -> dict[str, torch.Tensor]:
    n_layers = model.config.text_config.num_hidden_layers
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kw = {}
    if pp is not None:
        kw = dict(pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                  mm_token_type_ids=(input_ids == IMAGE_TOKEN).long())
    tap = LayerTap(model)
    try:
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False, **kw)
    finally:
        tap.close()
    hs = out.hidden_states
    assert len(hs) == n_layers + 1 and len(tap.out) == n_layers
    for k in range(1, n_layers):  # hidden_states[k] == raw output of layer k-1
        assert torch.equal(hs[k], tap.out[k - 1]), k
    g = {f"{prefix}logits": out.logits[0]}
    g[f"{prefix}hidden_states.0"] = hs[0][0]
    for k in range(1, n_layers + 1):
        g[f"{prefix}hidden_states.{k}"] = tap.out[k - 1][0]
    g[f"{prefix}final_norm"] = hs[n_layers][0]
    return g


def greedy(model, ids: list[int], pp: dict | None) -> torch.Tensor:
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kw = {}
    if pp is not None:
        kw = dict(pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                  mm_token_type_ids=(input_ids == IMAGE_TOKEN).long())
    gen = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=GREEDY_TOKENS,
                         min_new_tokens=0, eos_token_id=None, pad_token_id=0, use_cache=True,
                         top_k=None, top_p=None, temperature=None, **kw)
    new = gen[0, len(ids):]
    assert new.numel() == GREEDY_TOKENS, new
    # Cross-check the cached decode against a cache-free forward over prompt + continuation.
    full = torch.cat([input_ids, new[None, :-1]], dim=1)
    kw2 = dict(kw)
    if pp is not None:
        kw2["mm_token_type_ids"] = (full == IMAGE_TOKEN).long()
    logits = model(input_ids=full, use_cache=False, **kw2).logits[0]
    nocache = logits[len(ids) - 1:].argmax(-1)
    assert torch.equal(nocache, new), (nocache, new)
    return new.to(torch.int64)


MULTIMODAL_IDS = {IMAGE_TOKEN, AUDIO_TOKEN, VIDEO_TOKEN}


def choose_text(model, images: list[np.ndarray], lengths: list[int], seed: int, proc) -> list[list[int]]:
    """Deterministically picks random text ids whose greedy continuation contains no multimodal placeholder id.

    transformers embeds a placeholder id (image 500, audio 503, video 506) as the pad token (id 0), also for the
    token embedding and PLE of generated tokens; keeping such ids out of the continuations keeps the goldens away
    from that corner."""
    pp = preprocess(images, proc) if images else None
    for attempt in range(64):
        rng = np.random.default_rng([seed, attempt])
        parts = [text_ids(rng, n) for n in lengths]
        ids = build_prompt(parts, pp["num_soft_tokens"]) if pp else [2] + parts[0]
        with torch.no_grad():
            g = greedy(model, ids, pp)
        if not (set(g.tolist()) & MULTIMODAL_IDS):
            return parts
    raise RuntimeError("no clean greedy continuation found")


def multimodal_goldens(model, images: list[np.ndarray], text_parts: list[list[int]], proc) -> tuple[dict, dict]:
    pp = preprocess(images, proc)
    ids = build_prompt(text_parts, pp["num_soft_tokens"])
    input_ids = torch.tensor(ids, dtype=torch.int64)
    g: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "mm_token_type_ids": (input_ids == IMAGE_TOKEN).long(),
        "num_soft_tokens": torch.tensor(pp["num_soft_tokens"], dtype=torch.int64),
    }
    pvs, pos, npatch = [], [], []
    for i, im in enumerate(images):
        g[f"image_u8.{i}"] = torch.from_numpy(np.ascontiguousarray(im))
        valid = (pp["image_position_ids"][i] != -1).all(-1)
        n = int(valid.sum())
        assert bool(valid[:n].all()) and not bool(valid[n:].any())
        pvs.append(pp["pixel_values"][i, :n])
        pos.append(pp["image_position_ids"][i, :n])
        npatch.append(n)
    g["pixel_values"] = torch.cat(pvs).float()
    g["image_position_ids"] = torch.cat(pos).to(torch.int64)
    g["num_patches"] = torch.tensor(npatch, dtype=torch.int64)
    with torch.no_grad():
        feats = {}

        def vis():
            feats["v"] = model.model.get_image_features(pp["pixel_values"], pp["image_position_ids"],
                                                        return_dict=True)
        stats = clip_stats(model, vis)
        v = feats["v"]
        lhs = v.last_hidden_state
        total = sum(pp["num_soft_tokens"])
        lhs = lhs.reshape(-1, lhs.shape[-1])
        assert lhs.shape[0] == total, (lhs.shape, total)
        g["vision_last_hidden_state"] = lhs
        g["image_features"] = torch.cat(list(v.pooler_output), dim=0)
        assert g["image_features"].shape[0] == total
        g.update(forward_goldens(model, ids, pp))
        # text-only path: the same text without the image blocks
        tids = [2] + [t for part in text_parts for t in part]
        g["text_input_ids"] = torch.tensor(tids, dtype=torch.int64)
        g["text_logits"] = forward_goldens(model, tids, None)["logits"]
        g["greedy"] = greedy(model, ids, pp)
        assert not (set(g["greedy"].tolist()) & MULTIMODAL_IDS), g["greedy"]
    return g, stats


def text_goldens(model, ids: list[int]) -> dict:
    g = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    with torch.no_grad():
        g.update(forward_goldens(model, ids, None))
        g["greedy"] = greedy(model, ids, None)
        assert not (set(g["greedy"].tolist()) & MULTIMODAL_IDS), g["greedy"]
    return g


def save_golden(path: Path, g: dict[str, torch.Tensor], extra_meta: dict[str, str] | None = None) -> None:
    meta = versions()
    meta["hidden_states_indexing"] = (
        "hidden_states.0 = merged input embeddings (scaled, image features scattered); hidden_states.k (k=1..N) = raw "
        "output of decoder layer k-1 (forward hook); final_norm = hidden_states.N after the final norm")
    meta.update(extra_meta or {})
    t = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in g.items()}
    write_safetensors(path, t, meta)


def fixture_json(out: Path, **kw) -> None:
    (out / "fixture.json").write_text(json.dumps(kw, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------- model dirs

def write_model_dir_extras(out: Path) -> None:
    tiny_tokenizer.write_tokenizer_files(out)
    gen = {"do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95, "pad_token_id": 0,
           "bos_token_id": 2, "eos_token_id": [1, 5, 494]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    ip = tiny_processor().to_dict()
    ip = {k: v for k, v in ip.items() if not k.startswith("_")}
    proc = {"image_processor": ip, "image_seq_length": 70, "processor_class": "Gemma4Processor",
            "audio_seq_length": 750, "audio_ms_per_token": 40}
    (out / "processor_config.json").write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")


def check_tokenizer_with_transformers(model_dir: Path) -> None:
    """transformers' own GemmaTokenizer + chat template must reproduce tokenizer_golden.json."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    golden = json.loads((model_dir / "tokenizer_golden.json").read_text())
    for c in golden["encode"]:
        assert tok.encode(c["text"], add_special_tokens=False) == c["ids"], c
    for c in golden["chat"]:
        r = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True,
                                    enable_thinking=c["enable_thinking"])
        assert r == c["rendered"], (r, c["rendered"])
        assert tok.encode(r, add_special_tokens=False) == c["ids"]


def case_e2b(root: Path, tmp: Path) -> dict:
    out = root / "e2b-like"
    out.mkdir(parents=True, exist_ok=True)
    model, _ = build_model(e2b_text(), e2b_vision(), SEED)
    round_to_bf16(model)
    tensors = checkpoint_tensors(model, tmp)
    write_checkpoint(out, tensors, torch.bfloat16)
    write_configs(model, out, "bfloat16", tmp)
    write_model_dir_extras(out)
    check_tokenizer_with_transformers(out)
    reloaded = load_hf(out)
    alt = load_hf(out, "config.per_layer_config.json")
    rng = np.random.default_rng(SEED)
    image = random_image(rng, 48, 64)
    proc = tiny_processor()
    ta, tb = choose_text(reloaded, [image], [6, 5], SEED, proc)
    g, stats = multimodal_goldens(reloaded, [image], [ta, tb], proc)
    assert stats["input_clipped"] > 0 and stats["output_clipped"] > 0, stats
    with torch.no_grad():
        ids = g["input_ids"].tolist()
        pp = preprocess([image], proc)
        a = forward_goldens(alt, ids, pp)["logits"]
        assert torch.equal(a, g["logits"]), "per_layer_config form must give identical logits"
    save_golden(out / "golden.safetensors", g, {"case": "e2b-like", "clip_stats": json.dumps(stats)})
    fixture_json(out, model=".", golden="golden.safetensors", layout="hf", kind="multimodal",
                 weights_dtype="bfloat16")
    return {"model": reloaded, "tensors": tensors, "golden": g, "image": image, "text": (ta, tb)}


def case_e2b_ptq(root: Path, e2b: dict, tmp: Path) -> None:
    out = root / "e2b-like-ptq"
    out.mkdir(parents=True, exist_ok=True)
    tc = e2b_text()
    first_shared = tc["num_hidden_layers"] - tc["num_kv_shared_layers"]
    g = torch.Generator().manual_seed(SEED + 1)
    tensors = dict(e2b["tensors"])
    for i in range(first_shared, tc["num_hidden_layers"]):
        hd = tc["global_head_dim"] if tc["layer_types"][i] == F else tc["head_dim"]
        p = f"model.language_model.layers.{i}.self_attn."
        for name in ("k_proj", "v_proj"):
            w = torch.randn(tc["num_key_value_heads"] * hd, tc["hidden_size"], generator=g) / math.sqrt(tc["hidden_size"])
            tensors[p + name + ".weight"] = w
        tensors[p + "k_norm.weight"] = 1.0 + 0.2 * torch.randn(hd, generator=g)
    write_checkpoint(out, tensors, torch.bfloat16)
    shutil.copy(root / "e2b-like" / "config.json", out / "config.json")
    m = load_hf(out)
    with torch.no_grad():
        ids = e2b["golden"]["input_ids"].tolist()
        pp = preprocess([e2b["image"]], tiny_processor())
        lg = forward_goldens(m, ids, pp)["logits"]
    assert torch.equal(lg, e2b["golden"]["logits"]), "PTQ extras must not change the logits"
    fixture_json(out, model=".", golden="../e2b-like/golden.safetensors", layout="hf", kind="multimodal",
                 weights_dtype="bfloat16",
                 note="e2b-like plus random unused k_proj/v_proj/k_norm on KV-shared text layers 3..5")


def case_long_text(root: Path, e2b: dict) -> None:
    out = root / "long-text"
    out.mkdir(parents=True, exist_ok=True)
    # 48 tokens = 6x the sliding window
    ids = [2] + choose_text(e2b["model"], [], [47], SEED + 2, None)[0]
    g = text_goldens(e2b["model"], ids)
    save_golden(out / "golden.safetensors", g, {"case": "long-text"})
    fixture_json(out, model="../e2b-like", golden="golden.safetensors", layout="hf", kind="text")


def case_two_images(root: Path, e2b: dict) -> None:
    out = root / "two-images"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 3)
    im1 = random_image(rng, 48, 64)   # landscape -> 84x108, 63 soft tokens
    im2 = random_image(rng, 64, 40)   # portrait
    parts = choose_text(e2b["model"], [im1, im2], [4, 3, 4], SEED + 3, tiny_processor())
    g, _ = multimodal_goldens(e2b["model"], [im1, im2], parts, tiny_processor())
    save_golden(out / "golden.safetensors", g, {"case": "two-images"})
    fixture_json(out, model="../e2b-like", golden="golden.safetensors", layout="hf", kind="multimodal")


def case_e4b(root: Path, tmp: Path) -> None:
    out = root / "e4b-like"
    out.mkdir(parents=True, exist_ok=True)
    model, _ = build_model(e4b_text(), e4b_vision(), SEED + 4)
    tensors = checkpoint_tensors(model, tmp)
    write_checkpoint(out, tensors, torch.float32, shards=2)
    write_configs(model, out, "float32", tmp)
    m = load_hf(out)
    rng = np.random.default_rng(SEED + 4)
    image = random_image(rng, 48, 64)
    parts = choose_text(m, [image], [6, 5], SEED + 4, tiny_processor())
    g, stats = multimodal_goldens(m, [image], parts, tiny_processor())
    # transformers writes per_layer_config keys zero-padded here ("05", "11"); it must still load identically.
    alt = load_hf(out, "config.per_layer_config.json")
    with torch.no_grad():
        pp = preprocess([image], tiny_processor())
        a = forward_goldens(alt, g["input_ids"].tolist(), pp)["logits"]
    assert torch.equal(a, g["logits"]), "per_layer_config form must give identical logits"
    save_golden(out / "golden.safetensors", g, {"case": "e4b-like", "clip_stats": json.dumps(stats)})
    fixture_json(out, model=".", golden="golden.safetensors", layout="hf", kind="multimodal",
                 weights_dtype="float32", sharded=True)


# ----------------------------------------------------------------------------------------------- MLX

def unpack_affine(w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """MLX affine dequantization in f32: element k of a row = bits [k*bits, (k+1)*bits) of the row's LE u32 stream."""
    words = w.to(torch.int64) & 0xFFFFFFFF  # [out, in*bits/32]
    rows = words.shape[0]
    n_in = words.shape[1] * 32 // bits
    k = torch.arange(n_in)
    bit = k * bits
    lo_word = bit // 32
    shift = bit % 32
    stream = words
    v = stream[:, lo_word] >> shift
    straddle = (shift + bits) > 32
    if bool(straddle.any()):
        hi = torch.where(straddle, lo_word + 1, lo_word).clamp(max=words.shape[1] - 1)
        v = v | torch.where(straddle, stream[:, hi] << (32 - shift), torch.zeros_like(v))
    q = (v & ((1 << bits) - 1)).float()
    s = scales.float().repeat_interleave(group, dim=1)
    b = biases.float().repeat_interleave(group, dim=1)
    assert q.shape == (rows, n_in) == s.shape
    return s * q + b


def mlx_to_hf_key(k: str) -> str:
    if k.startswith("language_model.model."):
        return "model.language_model." + k[len("language_model.model."):]
    return "model." + k


def case_mlx(root: Path, e2b: dict, tmp: Path) -> None:
    out = root / "mlx-mixed"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    venv_py = HERE / "venv-mlx" / "bin" / "python"
    # mlx-vlm globs *.safetensors: give it the model files only (not golden.safetensors).
    src = tmp / "e2b_model"
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(root / "e2b-like" / f, src / f)
    subprocess.run([str(venv_py), str(HERE / "mlx_side.py"), "quantize", str(src), str(out)], check=True)
    # Dequantize the MLX checkpoint in f32 and rebuild an HF checkpoint (reference-oracle.md §9).
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    mlx_t = safetensors.torch.load_file(str(out / "model.safetensors"))
    hf = {}
    n_quant: dict[int, int] = {}
    for k in sorted(mlx_t):
        if k.endswith(".scales") or k.endswith(".biases"):
            continue
        if k.endswith(".weight") and (k[:-7] + ".scales") in mlx_t:
            path = k[:-7]
            over = qcfg.get(path)
            bits = over["bits"] if isinstance(over, dict) else qcfg["bits"]
            group = over["group_size"] if isinstance(over, dict) else qcfg["group_size"]
            hf[mlx_to_hf_key(k)] = unpack_affine(mlx_t[k], mlx_t[path + ".scales"], mlx_t[path + ".biases"],
                                                 bits, group)
            n_quant[bits] = n_quant.get(bits, 0) + 1
        else:
            hf[mlx_to_hf_key(k)] = mlx_t[k].float()
    assert set(hf) == set(e2b["tensors"]), set(hf) ^ set(e2b["tensors"])
    deq = tmp / "deq"
    deq.mkdir()
    write_checkpoint(deq, hf, torch.float32)
    shutil.copy(root / "e2b-like" / "config.json", deq / "config.json")
    m = load_hf(deq)
    proc = tiny_processor()
    parts = choose_text(m, [e2b["image"]], [6, 5], SEED + 5, proc)
    g, _ = multimodal_goldens(m, [e2b["image"]], parts, proc)
    # mlx-vlm's own forward on the same inputs.
    pp = preprocess([e2b["image"]], proc)
    ids = g["input_ids"]
    inputs = tmp / "mlx_inputs.npz"
    np.savez(inputs, input_ids=ids[None].numpy(), pixel_values=pp["pixel_values"].numpy(),
             image_position_ids=pp["image_position_ids"].numpy(),
             mm_token_type_ids=(ids[None] == IMAGE_TOKEN).long().numpy(), greedy_tokens=np.array(GREEDY_TOKENS))
    res = tmp / "mlx_result.npz"
    subprocess.run([str(venv_py), str(HERE / "mlx_side.py"), "forward", str(out), str(inputs), str(res)],
                   check=True)
    mres = np.load(res)
    tf = g["logits"].numpy()
    stats: dict = {}
    for name in ("logits_f32", "logits_native"):
        ml = mres[name][0]
        d = np.abs(ml - tf)
        stats[name] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
                       "argmax_agree": float((ml.argmax(-1) == tf.argmax(-1)).mean())}
    feats = mres["image_features_f32"].reshape(-1, g["image_features"].shape[-1])
    stats["image_features_f32_max_abs"] = float(np.abs(feats - g["image_features"].numpy()).max())
    stats["mlx_greedy_f32"] = [int(x) for x in mres["greedy_f32"]]
    stats["mlx_greedy_matches"] = bool(stats["mlx_greedy_f32"] == g["greedy"].tolist())
    stats["quantized_modules_by_bits"] = {str(k): v for k, v in sorted(n_quant.items())}
    stats["mlx"] = str(mres["mlx_version"])
    stats["mlx_vlm"] = str(mres["mlx_vlm_version"])
    print("MLX vs transformers:", json.dumps(stats, indent=1))
    meta = {"case": "mlx-mixed", "mlx_vs_transformers": json.dumps(stats, sort_keys=True),
            "reference": "transformers fp32 on the f32-dequantized MLX weights (w = f32(scale)*q + f32(bias))"}
    save_golden(out / "golden.safetensors", g, meta)
    fixture_json(out, model=".", golden="golden.safetensors", layout="mlx", kind="multimodal",
                 weights_dtype="bfloat16",
                 quantization="affine, 4-bit group 64; every text mlp.{gate,up,down}_proj 8-bit group 64",
                 mlx_vs_transformers=stats)


# ----------------------------------------------------------------------------------------------- preprocess

PRE_SIZES = [(20, 30), (640, 480), (1920, 1080), (480, 640), (4000, 3000)]  # (W, H)
PRE_BUDGETS = [70, 280, 1120]


def synthetic_image(w: int, h: int) -> np.ndarray:
    """pixel(x, y, c) = (x*7 + y*13 + c*29) % 256, u8 RGB, row-major [H, W, 3]."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 7 + y * 13 + c * 29) % 256).astype(np.uint8)


def case_preprocess(root: Path) -> None:
    out = root / "preprocess"
    out.mkdir(parents=True, exist_ok=True)
    g: dict[str, torch.Tensor] = {}
    records = []
    for (w, h) in PRE_SIZES:
        img = synthetic_image(w, h)
        for budget in PRE_BUDGETS:
            proc = Gemma4ImageProcessorPil(patch_size=16, max_soft_tokens=budget, pooling_kernel_size=3)
            r = proc(images=[PIL.Image.fromarray(img)], return_tensors="pt")
            pos = r["image_position_ids"][0]
            valid = (pos != -1).all(-1)
            n = int(valid.sum())
            gx, gy = int(pos[:n, 0].max()) + 1, int(pos[:n, 1].max()) + 1
            th, tw = get_aspect_ratio_preserving_size(h, w, 16, budget * 9, 3)
            assert (gy * 16, gx * 16) == (th, tw)
            soft = int(r["num_soft_tokens_per_image"][0])
            assert soft == n // 9
            rec = {"width": w, "height": h, "budget": budget, "resize_h": th, "resize_w": tw,
                   "grid_w": gx, "grid_h": gy, "num_patches": n, "soft_tokens": soft}
            key = f"{w}x{h}.{budget}"
            g[f"{key}.info"] = torch.tensor([th, tw, gy, gx, n, soft], dtype=torch.int64)
            if (w, h) in [(20, 30), (640, 480)] and budget == 70:
                pv = r["pixel_values"][0, :n].float()
                # the resized image (PIL bicubic, u8) from which pixel_values = patchify(u8) / 255
                resized = np.asarray(PIL.Image.fromarray(img).resize((tw, th), PIL.Image.BICUBIC))
                re_pv = torch.from_numpy(resized.astype(np.float64) / 255.0).float()
                re_pv = re_pv.reshape(gy, 16, gx, 16, 3).permute(0, 2, 1, 3, 4).reshape(n, 768)
                assert torch.allclose(re_pv, pv, atol=1e-6), float((re_pv - pv).abs().max())
                g[f"{key}.resized_u8"] = torch.from_numpy(np.array(resized, copy=True))
                g[f"{key}.pixel_values_head"] = pv[:32].contiguous()
                g[f"{key}.image_position_ids_head"] = pos[:32].to(torch.int64).contiguous()
                rec["stored"] = ["resized_u8", "pixel_values_head", "image_position_ids_head"]
            records.append(rec)
    g["20x30.source_u8"] = torch.from_numpy(synthetic_image(20, 30))
    meta = versions()
    meta["image_formula"] = "pixel(x, y, c) = (x*7 + y*13 + c*29) % 256, u8, [H, W, 3]"
    save_golden(out / "golden.safetensors", g, meta)
    doc = {
        "processor": "transformers Gemma4ImageProcessorPil(patch_size=16, max_soft_tokens=budget, pooling_kernel_size=3)",
        "image_formula": "pixel(x, y, c) = (x*7 + y*13 + c*29) % 256 (u8 RGB, W x H as listed)",
        "info_tensor": "<W>x<H>.<budget>.info = [resize_h, resize_w, grid_h, grid_w, num_patches, soft_tokens]",
        "pixel_values": "patch p = row-major over the grid (x fastest); within a patch (py, px, c) with c fastest;"
                        " value = u8 / 255 of the PIL-bicubic resized image (resized_u8 [H, W, 3])",
        "cases": records,
    }
    (out / "preprocess.json").write_text(json.dumps(doc, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parent.parent / "tests" / "fixtures"))
    ap.add_argument("--skip-mlx", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated groups to (re)generate: e-series, dense31, unified12, moe26"
                    " (default: all)")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    groups = set(filter(None, args.only.split(","))) or {"e-series", "dense31", "unified12", "moe26"}
    assert groups <= {"e-series", "dense31", "unified12", "moe26"}, groups
    import issue14
    import issue15
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if "dense31" in groups:
            d31 = issue14.case_dense31(root, tmp)
            if not args.skip_mlx:
                issue14.case_dense31_mlx(root, d31, tmp)
        if "unified12" in groups:
            u12 = issue14.case_unified12(root, tmp)
            issue14.case_preprocess_unified(root)
            if not args.skip_mlx:
                issue14.case_unified12_mlx(root, u12, tmp)
        if "moe26" in groups:
            moe = issue15.case_moe26(root, tmp)
            if not args.skip_mlx:
                issue15.case_moe26_mlx(root, moe, tmp)
        if "e-series" not in groups:
            print("done:", root)
            return
        case_preprocess(root)
        e2b = case_e2b(root, tmp)
        case_e2b_ptq(root, e2b, tmp)
        case_long_text(root, e2b)
        case_two_images(root, e2b)
        case_e4b(root, tmp)
        if not args.skip_mlx:
            case_mlx(root, e2b, tmp)
    print("done:", root)


if __name__ == "__main__":
    main()
