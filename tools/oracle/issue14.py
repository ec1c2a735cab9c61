"""Fixture cases for issue #14 (31B-like dense and 12B-like unified), imported by generate.py.

Cases (see tools/oracle/README.md "Issue #14 cases"):
    dense31-like        gemma4, k_eq_v, bidirectional "vision" mask, standardized tower (head_dim 72), no PLE/KV sharing
    dense31-like-mlx    the same model through mlx-vlm's quantization (4-bit g64, MLP 8-bit); golden on dequantized weights
    unified12-like      gemma4_unified, encoder-free embedder (48x48 patches), torchvision processor
    unified12-like-mlx  the same model through mlx-vlm's quantization
    preprocess-unified  torchvision antialiased-bicubic resize goldens (resized u8 + pixel values)
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import PIL.Image
import safetensors.torch
import torch

import generate as G
from generate import BOI, EOI, F, IMAGE_TOKEN, S, SEED

DENSE_SEED = SEED + 14
UNIFIED_SEED = SEED + 12


# ----------------------------------------------------------------------------------------------- configs

def dense31_text() -> dict:
    return dict(
        vocab_size=512, vocab_size_per_layer_input=512, hidden_size=128, intermediate_size=64,
        use_double_wide_mlp=False, num_hidden_layers=6, layer_types=[S, S, S, F, S, F], num_kv_shared_layers=0,
        num_attention_heads=4, num_key_value_heads=2, num_global_key_value_heads=1, head_dim=16,
        global_head_dim=64, hidden_size_per_layer_input=0, sliding_window=16, rope_parameters=G.ROPE,
        attention_k_eq_v=True, use_bidirectional_attention="vision", final_logit_softcapping=25.0,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def dense31_vision() -> dict:
    # Large-tower style: head_dim 72 (not a power of two), standardize, no clipped linears, MLP 136 (not % 64).
    return dict(
        hidden_size=144, intermediate_size=136, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=72, patch_size=4, pooling_kernel_size=3, position_embedding_size=48, use_clipped_linears=False,
        standardize=True, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    )


def randomize_std(model, seed: int) -> None:
    """std_bias / std_scale: not identity. Pooled features are ~sqrt(Hv) large; bias N(0, 2), scale U[0.05, 0.15]."""
    vm = model.model.vision_tower
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vm.std_bias.copy_(2.0 * torch.randn(vm.std_bias.shape, generator=g))
        vm.std_scale.copy_(0.05 + 0.1 * torch.rand(vm.std_scale.shape, generator=g))


# ----------------------------------------------------------------------------------------------- mask rules

MASK_RULE_GEMMA4 = (
    "transformers 5.24 Gemma4Model.forward with use_bidirectional_attention='vision' and mm_token_type_ids: "
    "create_masks_for_vision_model: full_attention = causal (no overlay); sliding_attention = "
    "AND(kv > q - sliding_window, OR(kv <= q, same_block(q, kv))), block = maximal run of image tokens "
    "(mm_token_type_ids 1); text, boi, eoi tokens are in no block")


@contextlib.contextmanager
def gemma4_mask(rule: str):
    """Temporarily replaces transformers' gemma4 vision mask: 'causal' (overlay off) or 'mlx' (mlx-vlm's rule:
    OR(AND(causal, window), same_block) on sliding layers, OR(causal, same_block) on full layers)."""
    import transformers.models.gemma4.modeling_gemma4 as m
    from transformers.masking_utils import create_masks_for_generate
    orig_ids, orig_masks = m.get_block_sequence_ids_for_mask, m.create_masks_for_vision_model
    if rule == "causal":
        m.get_block_sequence_ids_for_mask = lambda t, device: torch.full(t.shape, -1, device=device)
    elif rule == "mlx":
        def masks(block_sequence_ids, **kw):
            return create_masks_for_generate(block_sequence_ids=block_sequence_ids, **kw)
        m.create_masks_for_vision_model = masks
    else:
        raise ValueError(rule)
    try:
        yield
    finally:
        m.get_block_sequence_ids_for_mask, m.create_masks_for_vision_model = orig_ids, orig_masks


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


# ----------------------------------------------------------------------------------------------- helpers

def greedy_logits(model, ids: list[int], pp: dict | None, want: torch.Tensor) -> torch.Tensor:
    """The logits [16, V] that produced each greedy token, from generate's cached decode (output_logits)."""
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kw = {}
    if pp is not None:
        kw = dict(pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                  mm_token_type_ids=(input_ids == IMAGE_TOKEN).long())
    out = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=G.GREEDY_TOKENS,
                         min_new_tokens=0, eos_token_id=None, pad_token_id=0, use_cache=True,
                         top_k=None, top_p=None, temperature=None, output_logits=True,
                         return_dict_in_generate=True, **kw)
    new = out.sequences[0, len(ids):]
    assert torch.equal(new, want), (new, want)
    lg = torch.stack([x[0] for x in out.logits]).float()
    assert torch.equal(lg.argmax(-1), want)
    return lg


def save_png(path: Path, img: np.ndarray) -> None:
    """Lossless, deterministic PNG (no metadata, fixed compression)."""
    PIL.Image.fromarray(img).save(path, format="PNG", optimize=False, compress_level=9)
    back = np.asarray(PIL.Image.open(path).convert("RGB"))
    assert np.array_equal(back, img), path


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------------------------- dense31-like

def case_dense31(root: Path, tmp: Path) -> dict:
    out = root / "dense31-like"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model, _ = G.build_model(dense31_text(), dense31_vision(), DENSE_SEED)
    randomize_std(model, DENSE_SEED + 1)
    G.round_to_bf16(model)
    tensors = G.checkpoint_tensors(model, tmp)
    for i, t in enumerate(dense31_text()["layer_types"]):
        has_v = f"model.language_model.layers.{i}.self_attn.v_proj.weight" in tensors
        assert has_v == (t == S), (i, t, "k_eq_v: full layers have no v_proj")
    G.write_checkpoint(out, tensors, torch.bfloat16)
    G.write_configs(model, out, "bfloat16", tmp)
    G.write_model_dir_extras(out)
    m = G.load_hf(out)
    alt = G.load_hf(out, "config.per_layer_config.json")
    # 98x140 (HxW) -> resized 84x120 (a real downscale) -> 21x30 patches -> 7x10 = 70 soft tokens
    rng = np.random.default_rng(DENSE_SEED)
    image = G.random_image(rng, 98, 140)
    save_png(out / "image.png", image)
    proc = G.tiny_processor()
    parts = G.choose_text(m, [image], [6, 5], DENSE_SEED, proc)
    g, stats = G.multimodal_goldens(m, [image], parts, proc)
    assert stats["elements"] == 0, "no clipped linears"
    n_soft = int(g["num_soft_tokens"][0])
    window = dense31_text()["sliding_window"]
    assert n_soft > 4 * window, (n_soft, window)
    ids = g["input_ids"].tolist()
    pp = G.preprocess([image], proc)
    with torch.no_grad():
        a = G.forward_goldens(alt, ids, pp)["logits"]
        assert torch.equal(a, g["logits"]), "per_layer_config form must give identical logits"
        g["greedy_logits"] = greedy_logits(m, ids, pp, g["greedy"])
        with gemma4_mask("causal"):
            causal = G.forward_goldens(m, ids, pp)["logits"]
        with gemma4_mask("mlx"):
            mlxrule = G.forward_goldens(m, ids, pp)["logits"]
    mask_check = {"vs_fully_causal": diff_stats(causal, g["logits"]),
                  "vs_mlx_vlm_rule": diff_stats(mlxrule, g["logits"])}
    assert mask_check["vs_fully_causal"]["max_abs"] > 0.1, mask_check
    assert mask_check["vs_mlx_vlm_rule"]["max_abs"] > 0.1, mask_check
    print("dense31-like mask check:", json.dumps(mask_check))
    meta = {"case": "dense31-like", "mask_rule": MASK_RULE_GEMMA4, "mask_check": json.dumps(mask_check),
            "image_file": "image.png (= image_u8.0, lossless)",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy"}
    G.save_golden(out / "golden.safetensors", g, meta)
    # text-only golden on the same model, 24 tokens (> window)
    tids = [2] + G.choose_text(m, [], [23], DENSE_SEED + 2, None)[0]
    tg = G.text_goldens(m, tids)
    with torch.no_grad():
        tg["greedy_logits"] = greedy_logits(m, tids, None, tg["greedy"])
    G.save_golden(out / "text_golden.safetensors", tg, {"case": "dense31-like text"})
    G.fixture_json(out, model=".", golden="golden.safetensors", text_golden="text_golden.safetensors",
                   layout="hf", kind="multimodal", weights_dtype="bfloat16", image="image.png",
                   mask_rule=MASK_RULE_GEMMA4, mask_check=mask_check)
    print("dense31-like:", dir_size(out), "bytes")
    return {"model": m, "tensors": tensors, "golden": g, "image": image, "parts": parts}



# ----------------------------------------------------------------------------------------------- MLX (generic)

def mlx_dequantized_hf(out: Path, expect_keys: set[str], key_map) -> tuple[dict, dict]:
    """Dequantizes the MLX checkpoint in f32 (our own unpacking) into HF-named tensors."""
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    mlx_t = safetensors.torch.load_file(str(out / "model.safetensors"))
    hf: dict[str, torch.Tensor] = {}
    n_quant: dict[str, int] = {}
    for k in sorted(mlx_t):
        if k.endswith(".scales") or k.endswith(".biases"):
            if k[:-7] + ".weight" in mlx_t and k[:-7] + ".scales" in mlx_t:
                continue
        if k.endswith(".weight") and (k[:-7] + ".scales") in mlx_t:
            path = k[:-7]
            over = qcfg.get(path)
            bits = over["bits"] if isinstance(over, dict) else qcfg["bits"]
            group = over["group_size"] if isinstance(over, dict) else qcfg["group_size"]
            hf[key_map(k)] = G.unpack_affine(mlx_t[k], mlx_t[path + ".scales"], mlx_t[path + ".biases"], bits, group)
            n_quant[str(bits)] = n_quant.get(str(bits), 0) + 1
        else:
            hf[key_map(k)] = mlx_t[k].float()
    assert set(hf) == expect_keys, set(hf) ^ expect_keys
    return hf, dict(sorted(n_quant.items()))


def run_mlx_forward(out: Path, g: dict, pp: dict, tmp: Path, tag: str) -> dict:
    venv_py = G.HERE / "venv-mlx" / "bin" / "python"
    ids = g["input_ids"]
    inputs = tmp / f"{tag}_inputs.npz"
    np.savez(inputs, input_ids=ids[None].numpy(), pixel_values=pp["pixel_values"].numpy(),
             image_position_ids=pp["image_position_ids"].numpy(),
             mm_token_type_ids=(ids[None] == IMAGE_TOKEN).long().numpy(), greedy_tokens=np.array(G.GREEDY_TOKENS))
    res = tmp / f"{tag}_result.npz"
    subprocess.run([str(venv_py), str(G.HERE / "mlx_side.py"), "forward", str(out), str(inputs), str(res)],
                   check=True)
    return dict(np.load(res))


def mlx_stats(mres: dict, ref_logits: torch.Tensor, g: dict) -> dict:
    tf = ref_logits.numpy()
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
    stats["mlx"] = str(mres["mlx_version"])
    stats["mlx_vlm"] = str(mres["mlx_vlm_version"])
    return stats


def mlx_quantize(src_case: Path, out: Path, tmp: Path, tag: str) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    venv_py = G.HERE / "venv-mlx" / "bin" / "python"
    src = tmp / f"{tag}_model"  # mlx-vlm globs *.safetensors: give it the model files only
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src_case / f, src / f)
    subprocess.run([str(venv_py), str(G.HERE / "mlx_side.py"), "quantize", str(src), str(out)], check=True)


# ----------------------------------------------------------------------------------------------- dense31-like-mlx

def case_dense31_mlx(root: Path, d31: dict, tmp: Path) -> None:
    out = root / "dense31-like-mlx"
    mlx_quantize(root / "dense31-like", out, tmp, "d31")
    hf, n_quant = mlx_dequantized_hf(out, set(d31["tensors"]), G.mlx_to_hf_key)
    deq = tmp / "d31_deq"
    deq.mkdir()
    G.write_checkpoint(deq, hf, torch.float32)
    shutil.copy(root / "dense31-like" / "config.json", deq / "config.json")
    m = G.load_hf(deq)
    proc = G.tiny_processor()
    image = d31["image"]
    parts = G.choose_text(m, [image], [6, 5], DENSE_SEED + 5, proc)
    g, _ = G.multimodal_goldens(m, [image], parts, proc)
    ids = g["input_ids"].tolist()
    pp = G.preprocess([image], proc)
    with torch.no_grad():
        g["greedy_logits"] = greedy_logits(m, ids, pp, g["greedy"])
        with gemma4_mask("mlx"):
            tf_mlxrule = G.forward_goldens(m, ids, pp)["logits"]
    mres = run_mlx_forward(out, g, pp, tmp, "d31")
    stats = mlx_stats(mres, g["logits"], g)
    # mlx-vlm applies its own mask rule; against transformers patched to that rule everything else must agree.
    ml = torch.from_numpy(mres["logits_f32"][0])
    stats["logits_f32_vs_transformers_with_mlx_mask_rule"] = diff_stats(ml, tf_mlxrule)
    stats["quantized_modules_by_bits"] = n_quant
    print("dense31-like-mlx: MLX vs transformers:", json.dumps(stats, indent=1))
    assert stats["logits_f32_vs_transformers_with_mlx_mask_rule"]["max_abs"] < 1e-3, stats
    assert stats["image_features_f32_max_abs"] < 1e-3, stats
    meta = {"case": "dense31-like-mlx", "mlx_vs_transformers": json.dumps(stats, sort_keys=True),
            "mask_rule": MASK_RULE_GEMMA4,
            "reference": "transformers fp32 on the f32-dequantized MLX weights (w = f32(scale)*q + f32(bias))",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy"}
    G.save_golden(out / "golden.safetensors", g, meta)
    save_png(out / "image.png", image)
    G.fixture_json(out, model=".", golden="golden.safetensors", layout="mlx", kind="multimodal",
                   weights_dtype="bfloat16", image="image.png", mask_rule=MASK_RULE_GEMMA4,
                   quantization="affine, 4-bit group 64; every text mlp.{gate,up,down}_proj 8-bit group 64; "
                                "vision tower and embed_vision.embedding_projection (in-features 144) float",
                   mlx_vs_transformers=stats)
    print("dense31-like-mlx:", dir_size(out), "bytes")


def case_unified12(root, tmp):
    raise NotImplementedError


def case_preprocess_unified(root):
    raise NotImplementedError


def case_unified12_mlx(root, u12, tmp):
    raise NotImplementedError
