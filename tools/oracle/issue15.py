"""Fixture cases for issue #15 (26B-A4B-like mixture of experts), imported by generate.py (`--only moe26`).

Cases (see tools/oracle/README.md "Issue #15 cases"):
    moe26-like      gemma4 with enable_moe_block (router + stacked experts on every layer), k_eq_v, bidirectional
                    "vision" mask, standardized tower (head_dim 72); HF layout, bf16; goldens incl. router decisions
    moe26-like-mlx  the same model through mlx-vlm's quantization (experts 4-bit split into switch_glu.*, router
                    8-bit by mlx-vlm's own gemma4 predicate, dense MLP 8-bit); golden on the dequantized weights
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from transformers import Gemma4Config, Gemma4ForConditionalGeneration

import generate as G
import issue14 as I14
from generate import F, IMAGE_TOKEN, S, SEED

MOE_SEED = SEED + 15
EXPERTS_IMPL = "eager"  # transformers' own per-expert loop (the default would pick grouped_mm where available)


# ----------------------------------------------------------------------------------------------- configs

def moe26_text() -> dict:
    # 26B-A4B style at toy size: every layer is an MoE layer (dense MLP branch + experts branch), k_eq_v full layers
    # with fewer KV heads than the sliding ones, bidirectional "vision" mask, no PLE / KV sharing.
    # Expert count 6 (not a multiple of 4 or 8), top-k 3, expert width 32 (not a multiple of 64; != dense width 64).
    return dict(
        vocab_size=512, vocab_size_per_layer_input=512, hidden_size=64, intermediate_size=64,
        use_double_wide_mlp=False, num_hidden_layers=5, layer_types=[S, S, F, S, F], num_kv_shared_layers=0,
        num_attention_heads=4, num_key_value_heads=2, num_global_key_value_heads=1, head_dim=16,
        global_head_dim=32, hidden_size_per_layer_input=0, sliding_window=16, rope_parameters=G.ROPE,
        attention_k_eq_v=True, use_bidirectional_attention="vision", final_logit_softcapping=30.0,
        enable_moe_block=True, num_experts=6, top_k_experts=3, moe_intermediate_size=32,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=4096, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def moe26_vision() -> dict:
    # Large-tower style (standardize, no clipped linears, head_dim 72) at the smallest size that keeps it:
    # one head of 72, MLP 40 (not a multiple of 64), 1 layer, position table 32 (widest grid here: 30).
    return dict(
        hidden_size=72, intermediate_size=40, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
        head_dim=72, patch_size=4, pooling_kernel_size=3, position_embedding_size=32, use_clipped_linears=False,
        standardize=True, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    )


def randomize_router(model, seed: int) -> None:
    """Routers that really route: proj 2*N(0, 1) (scores of std ~2 instead of ~1/sqrt(H), so the softmax is far from
    uniform and the top-k margins are not tiny), scale 1 + 0.2*N, per_expert_scale U[0.5, 1.5] (positive, not 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            r = layer.router
            r.proj.weight.copy_(2.0 * torch.randn(r.proj.weight.shape, generator=g))
            r.scale.copy_(1.0 + 0.2 * torch.randn(r.scale.shape, generator=g))
            r.per_expert_scale.copy_(0.5 + torch.rand(r.per_expert_scale.shape, generator=g))


def load_hf(model_dir: Path, config_name: str = "config.json",
            experts: str = EXPERTS_IMPL) -> Gemma4ForConditionalGeneration:
    cfg = Gemma4Config.from_json_file(str(model_dir / config_name))
    model, info = Gemma4ForConditionalGeneration.from_pretrained(
        str(model_dir), config=cfg, attn_implementation="eager", experts_implementation=experts,
        dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys", "unexpected_keys")}
    assert not bad, f"{model_dir}: {bad}"
    assert model.config.text_config._experts_implementation == experts, model.config.text_config._experts_implementation
    return model.eval()


# ----------------------------------------------------------------------------------------------- router capture

class RouterTap:
    """Forward hooks on every layer's Gemma4TextRouter: (probs [T, E], weights [T, k], ids [T, k]) per call."""

    def __init__(self, model):
        self.calls: dict[int, list] = {}
        self.handles = []
        for i, layer in enumerate(model.model.language_model.layers):
            self.handles.append(layer.router.register_forward_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(_m, _inp, out):
            probs, w, idx = out
            self.calls.setdefault(i, []).append((probs.detach().clone(), w.detach().clone(), idx.detach().clone()))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def router_goldens(model, ids: list[int], pp: dict | None, want_logits: torch.Tensor) -> tuple[dict, dict]:
    """Router decisions of the fp32 prompt forward (the same call as forward_goldens; logits asserted equal)."""
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kw = {}
    if pp is not None:
        kw = dict(pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                  mm_token_type_ids=(input_ids == IMAGE_TOKEN).long())
    tap = RouterTap(model)
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, use_cache=False, **kw)
    finally:
        tap.close()
    assert torch.equal(out.logits[0], want_logits), "router capture run must reproduce the golden logits"
    tc = model.config.text_config
    n, k, e = tc.num_hidden_layers, tc.top_k_experts, tc.num_experts
    g: dict[str, torch.Tensor] = {}
    hist: dict[str, list[int]] = {}
    min_gap = {"topk_boundary": float("inf"), "within_topk": float("inf")}  # min score gap, k-th vs (k+1)-th / inside
    for i in range(n):
        assert len(tap.calls[i]) == 1, (i, len(tap.calls[i]))
        probs, w, idx = tap.calls[i][0]
        assert probs.shape == (len(ids), e) and idx.shape == (len(ids), k) and w.shape == (len(ids), k)
        # Recompute the documented formula from the probabilities: topk -> renormalise -> * per_expert_scale.
        top_p, top_i = torch.topk(probs, k, dim=-1)
        assert torch.equal(top_i, idx)
        pes = model.model.language_model.layers[i].router.per_expert_scale.detach()
        assert torch.allclose(top_p / top_p.sum(-1, keepdim=True) * pes[idx], w, rtol=0, atol=1e-6)
        # gaps in router score space (log-probabilities: softmax is shift-invariant, so these are score gaps)
        srt = torch.sort(torch.log(probs.double()), dim=-1, descending=True).values
        min_gap["topk_boundary"] = min(min_gap["topk_boundary"], float((srt[:, k - 1] - srt[:, k]).min()))
        min_gap["within_topk"] = min(min_gap["within_topk"], float((srt[:, :k - 1] - srt[:, 1:k]).min()))
        g[f"router.L{i}.ids"] = idx.to(torch.int32).contiguous()
        g[f"router.L{i}.weights"] = w.float().contiguous()
        g[f"router.L{i}.probs"] = probs.float().contiguous()
        c = Counter(idx.reshape(-1).tolist())
        hist[f"L{i}"] = [int(c.get(x, 0)) for x in range(e)]
    return g, {"histogram": hist, "min_score_gap": min_gap}


# ----------------------------------------------------------------------------------------------- moe26-like

def the_image() -> np.ndarray:
    """dense31-like's image (98x140 HxW, same seed and recipe) -> 70 soft tokens with the tiny processor."""
    rng = np.random.default_rng(I14.DENSE_SEED)
    return G.random_image(rng, 98, 140)


def check_tensors(tensors: dict, tc: dict) -> None:
    e, i_, h = tc["num_experts"], tc["moe_intermediate_size"], tc["hidden_size"]
    for li, t in enumerate(tc["layer_types"]):
        p = f"model.language_model.layers.{li}."
        assert (p + "self_attn.v_proj.weight" in tensors) == (t == S), (li, t, "k_eq_v: full layers have no v_proj")
        assert tuple(tensors[p + "experts.gate_up_proj"].shape) == (e, 2 * i_, h)
        assert tuple(tensors[p + "experts.down_proj"].shape) == (e, h, i_)
        assert tuple(tensors[p + "router.proj.weight"].shape) == (e, h)
        assert tuple(tensors[p + "router.scale"].shape) == (h,)
        assert tuple(tensors[p + "router.per_expert_scale"].shape) == (e,)
        assert tuple(tensors[p + "mlp.gate_proj.weight"].shape) == (tc["intermediate_size"], h)
        for n in ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"):
            assert tuple(tensors[p + n + ".weight"].shape) == (h,), n
        assert not any(k.startswith(p + "router.norm") for k in tensors), "router norm is weightless"


MIN_SCORE_GAP = 1e-3  # router score gaps (k-th vs (k+1)-th and inside the top-k) at every golden prompt position


def router_ok(info: dict) -> bool:
    gaps = info["min_score_gap"]
    return min(gaps.values()) >= MIN_SCORE_GAP and all(min(h) > 0 for h in info["histogram"].values())


def prompt_router_info(model, ids: list[int], pp: dict) -> dict:
    input_ids = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        lg = model(input_ids=input_ids, pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                   mm_token_type_ids=(input_ids == IMAGE_TOKEN).long(), use_cache=False).logits[0]
    return router_goldens(model, ids, pp, lg)[1]


def build_moe26(tmp: Path, attempt: int):
    tc = moe26_text()
    model, _ = G.build_model(tc, moe26_vision(), MOE_SEED)
    model.set_experts_implementation(EXPERTS_IMPL)
    I14.randomize_std(model, MOE_SEED + 1)
    randomize_router(model, (MOE_SEED + 2) * 1000 + attempt)
    G.round_to_bf16(model)
    return model


def case_moe26(root: Path, tmp: Path) -> dict:
    out = root / "moe26-like"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tc = moe26_text()
    image = the_image()
    proc = G.tiny_processor()
    pp = G.preprocess([image], proc)
    # Router seeds are tried in order until every expert is chosen somewhere in every layer and no router decision
    # of the golden prompt is a near-tie (score gaps >= MIN_SCORE_GAP), so an fp32 engine's routing can be compared
    # exactly at every position.
    for attempt in range(64):
        model = build_moe26(tmp, attempt)
        parts = G.choose_text(model, [image], [4, 3], MOE_SEED, proc)
        info = prompt_router_info(model, G.build_prompt(parts, pp["num_soft_tokens"]), pp)
        print(f"moe26-like router seed attempt {attempt}: {json.dumps(info['min_score_gap'])}")
        if router_ok(info):
            break
    else:
        raise RuntimeError("no router seed without near-ties")
    tensors = G.checkpoint_tensors(model, tmp)
    check_tensors(tensors, tc)
    G.write_checkpoint(out, tensors, torch.bfloat16)
    G.write_configs(model, out, "bfloat16", tmp)
    # The real 26B-A4B config.json is the hub form (global_head_dim / num_global_key_value_heads); the transformers
    # form only has to load identically (checked below), it is not committed for this case.
    plc = tmp / "moe26_plc"
    plc.mkdir()
    shutil.move(str(out / "config.per_layer_config.json"), str(plc / "config.json"))
    shutil.copy(out / "model.safetensors", plc / "model.safetensors")
    G.write_model_dir_extras(out)
    m = load_hf(out)
    d31_png = root / "dense31-like" / "image.png"
    if d31_png.exists():
        import PIL.Image
        assert np.array_equal(np.asarray(PIL.Image.open(d31_png).convert("RGB")), image), "same image as dense31-like"
    I14.save_png(out / "image.png", image)
    assert G.choose_text(m, [image], [4, 3], MOE_SEED, proc) == parts
    g, stats = G.multimodal_goldens(m, [image], parts, proc)
    assert stats["elements"] == 0, "no clipped linears"
    n_soft = int(g["num_soft_tokens"][0])
    assert n_soft > 4 * tc["sliding_window"], n_soft
    ids = g["input_ids"].tolist()
    rg, rinfo = router_goldens(m, ids, pp, g["logits"])
    g.update(rg)
    assert rinfo == info and router_ok(rinfo), (rinfo, info)
    checks: dict = {"router": rinfo, "router_seed_attempt": attempt}
    with torch.no_grad():
        a = G.forward_goldens(load_hf(plc), ids, pp)["logits"]
        assert torch.equal(a, g["logits"]), "per_layer_config form must give identical logits"
        g["greedy_logits"] = I14.greedy_logits(m, ids, pp, g["greedy"])
        with I14.gemma4_mask("causal"):
            causal = G.forward_goldens(m, ids, pp)["logits"]
        with I14.gemma4_mask("mlx"):
            mlxrule = G.forward_goldens(m, ids, pp)["logits"]
        try:  # transformers' other experts implementations on the same weights (not the reference; a cross-check)
            for impl in ("grouped_mm", "batched_mm"):
                other = G.forward_goldens(load_hf(out, experts=impl), ids, pp)["logits"]
                checks[f"experts_{impl}_vs_eager"] = I14.diff_stats(other, g["logits"])
        except Exception as e:  # noqa: BLE001 (implementation not available on this machine)
            checks["experts_impl_cross_check_error"] = repr(e)[:200]
    mask_check = {"vs_fully_causal": I14.diff_stats(causal, g["logits"]),
                  "vs_mlx_vlm_rule": I14.diff_stats(mlxrule, g["logits"])}
    assert mask_check["vs_fully_causal"]["max_abs"] > 0.1, mask_check
    print("moe26-like mask check:", json.dumps(mask_check))
    print("moe26-like checks:", json.dumps(checks, indent=1))
    meta = {"case": "moe26-like", "mask_rule": I14.MASK_RULE_GEMMA4, "mask_check": json.dumps(mask_check),
            "image_file": "image.png (= image_u8.0, lossless; the same image as dense31-like)",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy",
            "router": ROUTER_DOC, "router_stats": json.dumps(checks, sort_keys=True),
            "experts_implementation": EXPERTS_IMPL}
    G.save_golden(out / "golden.safetensors", g, meta)
    # text-only golden on the same model, 20 tokens (> window); every expert chosen, no router near-tie
    for attempt in range(64):  # text seeds in order until the routing has no near-tie (as for the image prompt)
        tids = [2] + G.choose_text(m, [], [19], MOE_SEED + 3 + 100 * attempt, None)[0]
        tg = G.text_goldens(m, tids)
        trg, trinfo = router_goldens(m, tids, None, tg["logits"])
        if router_ok(trinfo):
            break
    else:
        raise RuntimeError("no text prompt without router near-ties")
    tg.update(trg)
    with torch.no_grad():
        tg["greedy_logits"] = I14.greedy_logits(m, tids, None, tg["greedy"])
    G.save_golden(out / "text_golden.safetensors", tg,
                  {"case": "moe26-like text", "router": ROUTER_DOC, "router_stats": json.dumps(trinfo, sort_keys=True),
                   "experts_implementation": EXPERTS_IMPL})
    G.fixture_json(out, model=".", golden="golden.safetensors", text_golden="text_golden.safetensors",
                   layout="hf", kind="multimodal", weights_dtype="bfloat16", image="image.png",
                   mask_rule=I14.MASK_RULE_GEMMA4, mask_check=mask_check, router=rinfo,
                   moe={"num_experts": tc["num_experts"], "top_k_experts": tc["top_k_experts"],
                        "moe_intermediate_size": tc["moe_intermediate_size"]})
    print("moe26-like:", I14.dir_size(out), "bytes")
    return {"model": m, "tensors": tensors, "golden": g, "image": image}


ROUTER_DOC = (
    "router.L{i}.ids [T, k] i32 = torch.topk(softmax(proj(rms_norm(r) * scale * H^-0.5)), k).indices (topk order: "
    "descending probability); router.L{i}.weights [T, k] f32 = those probabilities / their sum * "
    "per_expert_scale[ids] (the weights the experts' outputs are multiplied by); router.L{i}.probs [T, E] f32 = the "
    "full softmax; r = the residual after attention of layer i; captured with forward hooks on "
    "Gemma4TextRouter during the fp32 prompt forward")


# ----------------------------------------------------------------------------------------------- MLX

def unpack_stacked(w: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """G.unpack_affine over a leading expert dimension: [E, out, in*bits/32] -> [E, out, in] f32."""
    if w.dim() == 2:
        return G.unpack_affine(w, scales, biases, bits, group)
    e, o = w.shape[:2]
    d = G.unpack_affine(w.reshape(e * o, -1), scales.reshape(e * o, -1), biases.reshape(e * o, -1), bits, group)
    return d.reshape(e, o, -1)


def mlx_dequantized_moe(out: Path, expect_keys: set[str]) -> tuple[dict, dict]:
    """Dequantizes the MLX checkpoint in f32 (our own unpacking) and maps it back to HF names: experts
    switch_glu.{gate,up}_proj [E, I, H] -> experts.gate_up_proj [E, 2I, H] (gate rows first), switch_glu.down_proj ->
    experts.down_proj."""
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    mlx_t = safetensors.torch.load_file(str(out / "model.safetensors"))
    deq: dict[str, torch.Tensor] = {}
    n_quant: dict[str, int] = {}
    for k in sorted(mlx_t):
        if (k.endswith(".scales") or k.endswith(".biases")) and (k[:-7] + ".weight") in mlx_t \
                and (k[:-7] + ".scales") in mlx_t:
            continue
        if k.endswith(".weight") and (k[:-7] + ".scales") in mlx_t:
            path = k[:-7]
            over = qcfg.get(path)
            bits = over["bits"] if isinstance(over, dict) else qcfg["bits"]
            group = over["group_size"] if isinstance(over, dict) else qcfg["group_size"]
            deq[k] = unpack_stacked(mlx_t[k], mlx_t[path + ".scales"], mlx_t[path + ".biases"], bits, group)
            tag = f"{bits}-bit g{group}"
            n_quant[tag] = n_quant.get(tag, 0) + 1
        else:
            deq[k] = mlx_t[k].float()
    hf: dict[str, torch.Tensor] = {}
    for k, v in deq.items():
        if ".experts.switch_glu.up_proj." in k:
            continue
        if ".experts.switch_glu.gate_proj.weight" in k:
            pre = k.split(".experts.")[0]
            up = deq[k.replace(".gate_proj.", ".up_proj.")]
            hf[G.mlx_to_hf_key(pre) + ".experts.gate_up_proj"] = torch.cat([v, up], dim=1)
        elif ".experts.switch_glu.down_proj.weight" in k:
            hf[G.mlx_to_hf_key(k.split(".experts.")[0]) + ".experts.down_proj"] = v
        else:
            hf[G.mlx_to_hf_key(k)] = v
    assert set(hf) == expect_keys, set(hf) ^ expect_keys
    return hf, dict(sorted(n_quant.items()))


def case_moe26_mlx(root: Path, moe: dict, tmp: Path) -> None:
    out = root / "moe26-like-mlx"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    src = tmp / "moe_model"  # mlx-vlm globs *.safetensors: give it the model files only
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(root / "moe26-like" / f, src / f)
    import subprocess
    venv_py = G.HERE / "venv-mlx" / "bin" / "python"
    subprocess.run([str(venv_py), str(G.HERE / "mlx_side.py"), "quantize-moe", str(src), str(out)], check=True)
    qcfg = json.loads((out / "config.json").read_text())["quantization"]
    hf, n_quant = mlx_dequantized_moe(out, set(moe["tensors"]))
    # The dequantized expert tensors are close to the bf16 originals (4-bit error only).
    for k in sorted(hf):
        if k.endswith(("experts.gate_up_proj", "experts.down_proj", "router.proj.weight")):
            err = float((hf[k] - moe["tensors"][k].float()).abs().max())
            ref = float(moe["tensors"][k].float().abs().max())
            assert err < 0.25 * ref, (k, err, ref)
    deq = tmp / "moe_deq"
    deq.mkdir()
    G.write_checkpoint(deq, hf, torch.float32)
    shutil.copy(root / "moe26-like" / "config.json", deq / "config.json")
    m = load_hf(deq)
    proc = G.tiny_processor()
    image = moe["image"]
    pp = G.preprocess([image], proc)
    for attempt in range(64):  # text seeds in order until the prompt's routing has no near-tie
        parts = G.choose_text(m, [image], [4, 3], MOE_SEED + 5 + 100 * attempt, proc)
        info = prompt_router_info(m, G.build_prompt(parts, pp["num_soft_tokens"]), pp)
        print(f"moe26-like-mlx prompt attempt {attempt}: {json.dumps(info['min_score_gap'])}")
        if router_ok(info):
            break
    else:
        raise RuntimeError("no prompt without router near-ties")
    g, _ = G.multimodal_goldens(m, [image], parts, proc)
    ids = g["input_ids"].tolist()
    rg, rinfo = router_goldens(m, ids, pp, g["logits"])
    g.update(rg)
    assert rinfo == info, (rinfo, info)
    rinfo["prompt_attempt"] = attempt
    with torch.no_grad():
        g["greedy_logits"] = I14.greedy_logits(m, ids, pp, g["greedy"])
        with I14.gemma4_mask("mlx"):
            tf_mlxrule = G.forward_goldens(m, ids, pp)["logits"]
            tf_mlx_router, _ = router_goldens(m, ids, pp, tf_mlxrule)
    mres = I14.run_mlx_forward(out, g, pp, tmp, "moe")
    stats = I14.mlx_stats(mres, g["logits"], g)
    ml = torch.from_numpy(mres["logits_f32"][0])
    stats["logits_f32_vs_transformers_with_mlx_mask_rule"] = I14.diff_stats(ml, tf_mlxrule)
    stats["quantized_modules"] = n_quant
    # mlx-vlm's router (argpartition order) vs transformers' (topk order) under the same mask rule: same sets.
    same = 0
    total = 0
    for i in range(moe26_text()["num_hidden_layers"]):
        a = np.sort(mres[f"router_ids_L{i}"].reshape(len(ids), -1), axis=-1)
        b = np.sort(tf_mlx_router[f"router.L{i}.ids"].numpy(), axis=-1)
        same += int((a == b).all(-1).sum())
        total += len(ids)
    stats["router_expert_sets_equal_positions"] = f"{same}/{total}"
    print("moe26-like-mlx: MLX vs transformers:", json.dumps(stats, indent=1))
    assert stats["logits_f32_vs_transformers_with_mlx_mask_rule"]["max_abs"] < 1e-3, stats
    assert stats["image_features_f32_max_abs"] < 1e-3, stats
    assert same == total, stats["router_expert_sets_equal_positions"]
    meta = {"case": "moe26-like-mlx", "mlx_vs_transformers": json.dumps(stats, sort_keys=True),
            "mask_rule": I14.MASK_RULE_GEMMA4, "router": ROUTER_DOC,
            "router_stats": json.dumps({"router": rinfo}, sort_keys=True),
            "reference": "transformers fp32 on the f32-dequantized MLX weights (w = f32(scale)*q + f32(bias); "
                         "switch_glu.{gate,up}_proj concatenated back into experts.gate_up_proj, gate rows first)",
            "greedy_logits": "logits [16, V] of generate's cached decode steps (output_logits); argmax = greedy",
            "experts_implementation": EXPERTS_IMPL}
    G.save_golden(out / "golden.safetensors", g, meta)
    I14.save_png(out / "image.png", image)
    G.fixture_json(out, model=".", golden="golden.safetensors", layout="mlx", kind="multimodal",
                   weights_dtype="bfloat16", image="image.png", mask_rule=I14.MASK_RULE_GEMMA4,
                   quantization=QUANT_DOC, quantization_block=qcfg, router=rinfo, mlx_vs_transformers=stats)
    print("moe26-like-mlx:", I14.dir_size(out), "bytes")


QUANT_DOC = (
    "mlx-vlm quantize_model, affine, global 4-bit group 64; router.proj 8-bit group 64 (mlx-vlm's own gemma4 "
    "quant_predicate); every dense mlp.{gate,up,down}_proj 8-bit group 64 (QAT-style per-path entries); experts "
    "switch_glu.{gate,up}_proj 4-bit g64, switch_glu.down_proj 4-bit group 32 (in-features 32: mlx-vlm's "
    "fallback_group_size, recorded as per-path entries); vision tower and embed_vision.embedding_projection "
    "(in-features 72) float (bf16)")
