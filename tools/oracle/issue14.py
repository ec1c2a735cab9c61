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



# ----------------------------------------------------------------------------------------------- unified12-like

def unified12_text() -> dict:
    return dict(
        vocab_size=512, hidden_size=128, intermediate_size=64, num_hidden_layers=6, layer_types=[S, S, F, S, S, F],
        num_attention_heads=8, num_key_value_heads=4, num_global_key_value_heads=1, head_dim=8, global_head_dim=32,
        num_kv_shared_layers=0, sliding_window=16, rope_parameters=G.ROPE, attention_k_eq_v=True,
        use_bidirectional_attention="vision", final_logit_softcapping=28.0, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096, use_double_wide_mlp=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def unified12_vision() -> dict:
    # 48x48 model patches (patch 16 x pooling 3 -> 6912 values); mm_embed_dim 64 != text hidden 128 (shape-loud).
    return dict(patch_size=16, pooling_kernel_size=3, mm_embed_dim=64, mm_posemb_size=32, output_proj_dims=64,
                rms_norm_eps=1e-6)


MASK_RULE_UNIFIED = (
    "transformers 5.24 Gemma4UnifiedModel.forward with use_bidirectional_attention='vision': "
    "masking_utils.create_masks_for_generate(block_sequence_ids=...): full_attention = OR(kv <= q, same_block(q, kv)); "
    "sliding_attention = OR(AND(kv <= q, kv > q - sliding_window), same_block(q, kv)) (overlay after the window, on "
    "both layer types; = mlx-vlm's gemma4 rule). NOT the rule of Gemma4Model (31B) nor of the unified module's own "
    "create_masks_for_vision_model (full causal, sliding AND(window, OR(causal, block))), which transformers only uses "
    "in generate() with a compileable (static) cache; logits under that rule: golden key alt_mask_logits")


@contextlib.contextmanager
def unified_mask(rule: str):
    """'causal' (overlay off) or 'gemma4' (the unified module's create_masks_for_vision_model in forward too)."""
    import transformers.models.gemma4_unified.modeling_gemma4_unified as m
    orig_ids, orig_gen = m.get_block_sequence_ids_for_mask, m.create_masks_for_generate
    if rule == "causal":
        m.get_block_sequence_ids_for_mask = lambda t, device: torch.full(t.shape, -1, device=device)
    elif rule == "gemma4":
        def gen(block_sequence_ids=None, **kw):
            if block_sequence_ids is None:
                return orig_gen(**kw)
            return m.create_masks_for_vision_model(block_sequence_ids=block_sequence_ids, **kw)
        m.create_masks_for_generate = gen
    else:
        raise ValueError(rule)
    try:
        yield
    finally:
        m.get_block_sequence_ids_for_mask, m.create_masks_for_generate = orig_ids, orig_gen


def build_unified(seed: int):
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration
    cfg = Gemma4UnifiedConfig(
        text_config=unified12_text(), vision_config=unified12_vision(), audio_config=None,
        image_token_id=IMAGE_TOKEN, boi_token_id=BOI, eoi_token_id=EOI, audio_token_id=G.AUDIO_TOKEN,
        boa_token_id=G.BOA, eoa_token_index=G.EOA, video_token_id=G.VIDEO_TOKEN, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Gemma4UnifiedForConditionalGeneration(cfg).eval()
    G.rerandomize(model, seed)
    return model


def load_unified(model_dir: Path, config_name: str = "config.json"):
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration
    cfg = Gemma4UnifiedConfig.from_json_file(str(model_dir / config_name))
    model, info = Gemma4UnifiedForConditionalGeneration.from_pretrained(
        str(model_dir), config=cfg, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys", "unexpected_keys")}
    assert not bad, f"{model_dir}: {bad}"
    return model.eval()


def unified_image_processor(patch_size: int = 16):
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor
    return Gemma4UnifiedImageProcessor(patch_size=patch_size, max_soft_tokens=70, pooling_kernel_size=3)


def unified_processor(tok_dir: Path):
    from transformers import AutoTokenizer
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor)
    from transformers.models.gemma4_unified.processing_gemma4_unified import Gemma4UnifiedProcessor
    from transformers.models.gemma4_unified.video_processing_gemma4_unified import Gemma4UnifiedVideoProcessor
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return Gemma4UnifiedProcessor(
        feature_extractor=Gemma4UnifiedAudioFeatureExtractor(), image_processor=unified_image_processor(),
        tokenizer=tok, video_processor=Gemma4UnifiedVideoProcessor(),
        chat_template=(tok_dir / "chat_template.jinja").read_text(), image_seq_length=70)


def synthetic_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A PNG-friendly test image with hard detail: gradient, random flat rectangles, 1-px lines, a noise square."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(w + h, 1))],
                   -1).astype(np.uint8)
    for _ in range(12):
        y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        y1, x1 = int(rng.integers(y0 + 1, h)), int(rng.integers(x0 + 1, w))
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(6):
        r = int(rng.integers(0, h))
        img[r, :] = rng.integers(0, 256, 3, dtype=np.uint8)
        c = int(rng.integers(0, w))
        img[:, c] = rng.integers(0, 256, 3, dtype=np.uint8)
    n = min(h, w) // 4
    y0, x0 = int(rng.integers(0, h - n)), int(rng.integers(0, w - n))
    img[y0:y0 + n, x0:x0 + n] = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    return np.ascontiguousarray(img)


def u8_of_pixel_values(pv: torch.Tensor) -> torch.Tensor:
    """The processor's pixel values are exactly f32(u8) * f32(1/255) (torchvision rescale); invert and check."""
    u8 = torch.round(pv * 255.0).to(torch.uint8)
    assert torch.equal(u8.float() * np.float32(1.0 / 255.0), pv), "pixel values are not f32(u8) * f32(1/255)"
    return u8


def unified_inputs(proc, images: list[np.ndarray], text: str, answer: str = "") -> dict:
    """Chat render of [user: image, text, (image,) "?"] + generation prompt + the start of an answer."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}] +
             [{"type": "image"}] * (len(images) - 1) + [{"type": "text", "text": "?"}]}]
    rendered = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + answer
    out = proc(text=[rendered], images=[[PIL.Image.fromarray(im) for im in images]], return_tensors="pt")
    ids = out["input_ids"][0]
    assert torch.equal(out["mm_token_type_ids"][0], (ids == IMAGE_TOKEN).long())
    pos = out["image_position_ids"]
    n_soft = [int((pos[i] != -1).all(-1).sum()) for i in range(len(images))]
    pp = {"pixel_values": out["pixel_values"].float(), "image_position_ids": pos, "num_soft_tokens": n_soft}
    return {"rendered": rendered, "ids": ids.tolist(), "pp": pp}


def unified_goldens(model, proc, images: list[np.ndarray], texts: list[str]) -> tuple[dict, dict]:
    """(The source images are the committed PNG files, not golden tensors: they are large.) Picks (deterministically, first that works) a prompt text whose greedy continuation is clean."""
    words = ["red", "blue", "cat", "tree", "sky", "count", "left", "right", "what", "is", "the", "big", "small",
             "two", "one", "dog", "sun", "sea", "box", "line"]
    rng = np.random.default_rng(UNIFIED_SEED + 99)
    extra = [" ".join(words[int(j)] for j in rng.integers(0, len(words), int(rng.integers(2, 6))))
             for _ in range(48)]
    # The tiny random model tends to repeat the last prompt token (tied embeddings); a generation prompt ending in
    # "\n" then gives 16 x "\n". Start the answer with a few words and keep the first varied continuation.
    for k, text in enumerate(texts + extra):
        inp = unified_inputs(proc, images, text, answer=extra[(k * 7 + 3) % len(extra)])
        with torch.no_grad():
            gr = G.greedy(model, inp["ids"], inp["pp"])
        # clean (no placeholder ids) and not a constant run: at least 4 distinct tokens
        if not (set(gr.tolist()) & G.MULTIMODAL_IDS) and len(set(gr.tolist())) >= 3:
            break
    else:
        raise RuntimeError("no clean, varied greedy continuation")
    ids, pp = inp["ids"], inp["pp"]
    input_ids = torch.tensor(ids, dtype=torch.int64)
    g: dict[str, torch.Tensor] = {"input_ids": input_ids, "mm_token_type_ids": (input_ids == IMAGE_TOKEN).long(),
                                  "num_soft_tokens": torch.tensor(pp["num_soft_tokens"], dtype=torch.int64),
                                  "num_patches": torch.tensor(pp["num_soft_tokens"], dtype=torch.int64)}
    pvs, pos = [], []
    for i, im in enumerate(images):
        n = pp["num_soft_tokens"][i]
        valid = (pp["image_position_ids"][i] != -1).all(-1)
        assert bool(valid[:n].all()) and not bool(valid[n:].any())
        pvs.append(pp["pixel_values"][i, :n])
        pos.append(pp["image_position_ids"][i, :n])
    g["pixel_values_u8"] = u8_of_pixel_values(torch.cat(pvs))
    g["image_position_ids"] = torch.cat(pos).to(torch.int64)
    with torch.no_grad():
        v = model.model.get_image_features(pp["pixel_values"], pp["image_position_ids"], return_dict=True)
        valid = (pp["image_position_ids"] != -1).all(-1)
        g["vision_last_hidden_state"] = v.last_hidden_state[valid]
        g["image_features"] = torch.cat(list(v.pooler_output), dim=0)
        g.update(G.forward_goldens(model, ids, pp))
        tids = [t for t in ids if t not in (IMAGE_TOKEN, BOI, EOI)]
        g["text_input_ids"] = torch.tensor(tids, dtype=torch.int64)
        g["text_logits"] = G.forward_goldens(model, tids, None)["logits"]
        g["greedy"] = gr
        g["greedy_logits"] = greedy_logits(model, ids, pp, gr)
        with unified_mask("causal"):
            causal = G.forward_goldens(model, ids, pp)["logits"]
        with unified_mask("gemma4"):
            g["alt_mask_logits"] = G.forward_goldens(model, ids, pp)["logits"]
    mask_check = {"vs_fully_causal": diff_stats(causal, g["logits"]),
                  "vs_gemma4_rule_alt_mask_logits": diff_stats(g["alt_mask_logits"], g["logits"])}
    assert mask_check["vs_fully_causal"]["max_abs"] > 0.1, mask_check
    info = {"rendered": inp["rendered"], "mask_check": mask_check, "pp": pp}
    return g, info


def write_processor_files(out: Path, tmp: Path, proc) -> None:
    d = tmp / "proc"
    proc.save_pretrained(str(d))
    pc = json.loads((d / "processor_config.json").read_text())
    (out / "processor_config.json").write_text(json.dumps(pc, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(d)


def case_unified12(root: Path, tmp: Path) -> dict:
    out = root / "unified12-like"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = build_unified(UNIFIED_SEED)
    G.round_to_bf16(model)
    tensors = G.checkpoint_tensors(model, tmp)
    assert "model.vision_embedder.patch_dense.weight" in tensors and \
        "model.embed_vision.embedding_projection.weight" in tensors, sorted(tensors)
    for i, t in enumerate(unified12_text()["layer_types"]):
        has_v = f"model.language_model.layers.{i}.self_attn.v_proj.weight" in tensors
        assert has_v == (t == S), (i, t)
    G.write_checkpoint(out, tensors, torch.bfloat16)
    G.write_configs(model, out, "bfloat16", tmp)
    G.write_model_dir_extras(out)
    m = load_unified(out)
    alt = load_unified(out, "config.per_layer_config.json")
    proc = unified_processor(out)
    write_processor_files(out, tmp, proc)
    rng = np.random.default_rng(UNIFIED_SEED)
    # image 0: 400x700 (HxW) -> antialiased downscale to 288x528 (6x11 model patches, 66 soft tokens)
    # image 1: 50x40 -> bicubic upscale to 432x336 (9x7, 63 soft tokens)
    images = [synthetic_scene(rng, 400, 700), G.random_image(rng, 50, 40)]
    for i, im in enumerate(images):
        save_png(out / f"image.{i}.png", im)
    texts = ["Describe.", "What is it", "Look", "Compare these", "Hi", "Say more", "Name it", "Why"]
    g, info = unified_goldens(m, proc, images, texts)
    assert [int(x) for x in g["num_soft_tokens"]] == [66, 63], g["num_soft_tokens"]
    with torch.no_grad():
        a = G.forward_goldens(alt, g["input_ids"].tolist(), info["pp"])["logits"]
        assert torch.equal(a, g["logits"]), "per_layer_config form must give identical logits"
    print("unified12-like mask check:", json.dumps(info["mask_check"]))
    meta = {"case": "unified12-like", "mask_rule": MASK_RULE_UNIFIED, "mask_check": json.dumps(info["mask_check"]),
            "rendered_prompt": info["rendered"],
            "pixel_values": "pixel_values = f32(pixel_values_u8) * f32(1/255) exactly (checked); rows = 48x48 "
                            "model patches, row-major over the patch grid (x fastest), inside (y, x, c), c fastest",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy",
            "processor": "Gemma4UnifiedProcessor (torchvision backend), Gemma4UnifiedImageProcessor(patch_size=16, "
                         "max_soft_tokens=70, pooling_kernel_size=3), chat template = chat_template.jinja"}
    G.save_golden(out / "golden.safetensors", g, meta)
    G.fixture_json(out, model=".", golden="golden.safetensors", layout="hf", kind="unified-multimodal",
                   weights_dtype="bfloat16", images=["image.0.png", "image.1.png"], mask_rule=MASK_RULE_UNIFIED,
                   mask_check=info["mask_check"])
    print("unified12-like:", dir_size(out), "bytes")
    return {"model": m, "tensors": tensors, "golden": g, "images": images, "proc": proc}



# ----------------------------------------------------------------------------------------------- unified12-like-mlx

def case_unified12_mlx(root: Path, u12: dict, tmp: Path) -> None:
    out = root / "unified12-like-mlx"
    mlx_quantize(root / "unified12-like", out, tmp, "u12")
    hf, n_quant = mlx_dequantized_hf(out, set(u12["tensors"]), G.mlx_to_hf_key)
    deq = tmp / "u12_deq"
    deq.mkdir()
    G.write_checkpoint(deq, hf, torch.float32)
    shutil.copy(root / "unified12-like" / "config.json", deq / "config.json")
    m = load_unified(deq)
    images = u12["images"][:1]  # one image (the downscaled one): keeps the golden small
    g, info = unified_goldens(m, u12["proc"], images, ["Tell me", "What", "Describe.", "Hi", "Look", "Why"])
    mres = run_mlx_forward(out, g, info["pp"], tmp, "u12")
    stats = mlx_stats(mres, g["logits"], g)
    ids = g["input_ids"].tolist()
    with torch.no_grad(), unified_mask("causal"):
        tf_causal = G.forward_goldens(m, ids, info["pp"])["logits"]
    ml = torch.from_numpy(mres["logits_f32"][0])
    stats["logits_f32_vs_transformers_fully_causal"] = diff_stats(ml, tf_causal)
    stats["logits_f32_vs_transformers_gemma4_rule"] = diff_stats(ml, g["alt_mask_logits"])
    stats["quantized_modules_by_bits"] = n_quant
    del g["alt_mask_logits"]  # size; its comparison is in mask_check / mlx_vs_transformers
    print("unified12-like-mlx: MLX vs transformers:", json.dumps(stats, indent=1))
    assert stats["image_features_f32_max_abs"] < 1e-3, stats
    meta = {"case": "unified12-like-mlx", "mlx_vs_transformers": json.dumps(stats, sort_keys=True),
            "mask_rule": MASK_RULE_UNIFIED, "mask_check": json.dumps(info["mask_check"]),
            "rendered_prompt": info["rendered"],
            "reference": "transformers fp32 on the f32-dequantized MLX weights (w = f32(scale)*q + f32(bias))",
            "pixel_values": "pixel_values = f32(pixel_values_u8) * f32(1/255) exactly (checked)",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy"}
    G.save_golden(out / "golden.safetensors", g, meta)
    save_png(out / "image.0.png", images[0])
    G.fixture_json(out, model=".", golden="golden.safetensors", layout="mlx", kind="unified-multimodal",
                   weights_dtype="bfloat16", images=["image.0.png"], mask_rule=MASK_RULE_UNIFIED,
                   quantization="affine, 4-bit group 64 (incl. vision_embedder.patch_dense and "
                                "embed_vision.embedding_projection); every text mlp.{gate,up,down}_proj 8-bit group 64",
                   mlx_vs_transformers=stats)
    print("unified12-like-mlx:", dir_size(out), "bytes")


# ----------------------------------------------------------------------------------------------- preprocess-unified

PRE_UNIFIED = [("down_mild", 97, 131), ("down_strong_portrait", 301, 203), ("up", 37, 23), ("wide", 150, 1000)]


def case_preprocess_unified(root: Path) -> None:
    """torchvision antialiased bicubic on uint8 (Gemma4UnifiedImageProcessor) at patch 4 (model patch 12): resized
    u8 and the final pixel values for awkward sizes."""
    out = root / "preprocess-unified"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ip = unified_image_processor(patch_size=4)
    rng = np.random.default_rng(UNIFIED_SEED + 7)
    g: dict[str, torch.Tensor] = {}
    cases = []
    for name, h, w in PRE_UNIFIED:
        img = synthetic_scene(rng, h, w) if h * w > 20000 else G.random_image(rng, h, w)
        save_png(out / f"{name}.png", img)
        r = ip(images=[PIL.Image.fromarray(img)], return_tensors="pt")
        pos = r["image_position_ids"][0]
        n = int((pos != -1).all(-1).sum())
        pv = r["pixel_values"][0, :n]
        chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        resized = ip.aspect_ratio_preserving_resize(chw, patch_size=4, max_patches=70 * 9, pooling_kernel_size=3,
                                                    resample=ip.resample if not isinstance(ip.resample, int)
                                                    else __import__("torchvision").transforms.v2.functional
                                                    .InterpolationMode.BICUBIC)
        assert resized.dtype == torch.uint8
        th, tw = resized.shape[-2:]
        # pixel_values = merge of 3x3 blocks of 4x4 patches = 12x12 model patches, (y, x, c) inside, / 255
        gh, gw = th // 12, tw // 12
        re = resized.permute(1, 2, 0).reshape(gh, 12, gw, 12, 3).permute(0, 2, 1, 3, 4).reshape(gh * gw, 432)
        assert n == gh * gw and torch.equal(re.float() * np.float32(1.0 / 255.0), pv), name
        gx, gy = torch.meshgrid(torch.arange(gw), torch.arange(gh), indexing="xy")
        assert torch.equal(pos[:n], torch.stack([gx, gy], -1).reshape(-1, 2)), name
        g[f"{name}.resized_u8"] = resized.permute(1, 2, 0).contiguous()
        g[f"{name}.pixel_values"] = pv.contiguous()
        g[f"{name}.image_position_ids"] = pos[:n].to(torch.int64).contiguous()
        cases.append({"name": name, "file": f"{name}.png", "height": h, "width": w, "resize_h": int(th),
                      "resize_w": int(tw), "grid_h": gh, "grid_w": gw, "soft_tokens": n})
    meta = G.versions()
    import torchvision
    meta["torchvision"] = torchvision.__version__
    meta["processor"] = ("transformers Gemma4UnifiedImageProcessor(patch_size=4, max_soft_tokens=70, "
                         "pooling_kernel_size=3): torchvision resize(BICUBIC, antialias=True) on uint8 CHW")
    G.save_golden(out / "golden.safetensors", g, meta)
    doc = {"processor": meta["processor"], "torchvision": torchvision.__version__,
           "keys": "<name>.resized_u8 [H', W', 3] u8 (the resized image, before rescale); <name>.pixel_values "
                   "[S, 432] f32 = f32(u8) * f32(1/255) of 12x12 model patches (row-major grid, x fastest; "
                   "inside (y, x, c), c fastest); <name>.image_position_ids [S, 2] (x, y)",
           "cases": cases}
    (out / "cases.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print("preprocess-unified:", dir_size(out), "bytes", cases)
