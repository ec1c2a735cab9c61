#!/usr/bin/env python3
"""A 12B-unified-like probe fixture (tests/fixtures/unified12-probe), made while the oracle's
unified12-like case is pending: a tiny random Gemma4UnifiedForConditionalGeneration (embedder
mm_embed_dim 48 != text hidden 64, patch 4 x pooling 3 = 12-px model patches, k_eq_v with one
global kv head, sliding window 8 < the 63-token image block), bf16-rounded weights, fp32
reference, transformers 5.24. Run with the oracle venv:

    tools/oracle/venv/bin/python tools/unified12_probe.py tests/fixtures/unified12-probe

Two reference logits are stored, because transformers 5.24's unified model builds its mask two
ways: `logits` from a plain `model(...)` forward (Gemma4UnifiedModel.forward passes the image
block ids to the generic `create_masks_for_generate`: block overlay OR-ed on *both* layer types,
after the sliding window), and `logits_gemma4_rule` with the masks of the class's own
`create_masks_for_generate` / `create_masks_for_vision_model` (full layers causal; sliding
layers AND(window, OR(causal, block))), the rule of the Gemma 4 family. generate() follows the
plain forward's rule (`greedy`); `greedy_gemma4_rule` is the continuation under the Gemma 4 rule
(cache-free forwards over prompt + continuation).
"""
import json, math, sys, shutil
from pathlib import Path
import numpy as np, torch, safetensors.torch
from PIL import Image
from transformers.models.gemma4_unified.configuration_gemma4_unified import Gemma4UnifiedConfig
from transformers.models.gemma4_unified.modeling_gemma4_unified import Gemma4UnifiedForConditionalGeneration
from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
IMAGE, BOI, EOI = 500, 501, 502
text = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, num_global_key_value_heads=1, head_dim=16, global_head_dim=32,
            attention_k_eq_v=True, sliding_window=8, use_bidirectional_attention="vision",
            final_logit_softcapping=30.0, max_position_embeddings=4096,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"])
vision = dict(patch_size=4, pooling_kernel_size=3, mm_embed_dim=48, output_proj_dims=48, mm_posemb_size=64)
cfg = Gemma4UnifiedConfig(text_config=text, vision_config=vision, audio_config=None, image_token_id=IMAGE,
                          boi_token_id=BOI, eoi_token_id=EOI, audio_token_id=503, boa_token_id=504,
                          eoa_token_index=505, video_token_id=506)
torch.manual_seed(0)
model = Gemma4UnifiedForConditionalGeneration(cfg).eval()
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, t in model.named_parameters():
        shape, leaf = t.shape, name.rsplit(".", 1)[-1]
        if ("norm" in name or "_ln" in name) and leaf == "weight":
            v = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif leaf == "pos_embedding":
            v = 0.5 * torch.randn(shape, generator=g)
        elif t.dim() >= 2:
            v = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        else:
            v = 0.5 * torch.randn(shape, generator=g)
        t.copy_(v.to(torch.bfloat16).to(t.dtype))
d = out / "_sp"
model.save_pretrained(d, safe_serialization=True)
ten = {}
for f in sorted(d.glob("*.safetensors")):
    ten.update(safetensors.torch.load_file(str(f)))
print("saved keys:", sorted(k for k in ten if "language_model" not in k))
shutil.copy(d / "config.json", out / "config.json")
shutil.rmtree(d)
safetensors.torch.save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ten.items()},
                            str(out / "model.safetensors"), metadata={"format": "pt"})
proc = Gemma4UnifiedImageProcessor(patch_size=4, pooling_kernel_size=3, max_soft_tokens=70)
(out / "processor_config.json").write_text(json.dumps({"image_processor": {"image_processor_type": "Gemma4UnifiedImageProcessor", "patch_size": 4, "pooling_kernel_size": 3, "max_soft_tokens": 70}, "processor_class": "Gemma4UnifiedProcessor"}, indent=1))
rng = np.random.default_rng(5)
y, x = np.mgrid[0:50, 0:71]
arr = np.clip(np.stack([127 + 120*np.sin(x/3.0), 127 + 120*np.cos(y/4.0), rng.integers(0, 256, (50, 71))], -1), 0, 255).astype(np.uint8)
Image.fromarray(arr).save(out / "image.png")
r = proc(images=[Image.open(out / "image.png")], return_tensors="pt")
n = int(r["num_soft_tokens_per_image"][0])
pv, pos = r["pixel_values"].float(), r["image_position_ids"]
ids = [2] + [int(t) for t in rng.integers(10, 400, 5)] + [BOI] + [IMAGE] * n + [EOI] + [int(t) for t in rng.integers(10, 400, 6)]
input_ids = torch.tensor([ids])
mm = (input_ids == IMAGE).long()
with torch.no_grad():
    emb = model.model.get_input_embeddings()(torch.where(input_ids == IMAGE, 0, input_ids))
    masks = Gemma4UnifiedForConditionalGeneration.create_masks_for_generate(
        model.config, emb, None, None, torch.arange(len(ids))[None], mm_token_type_ids=mm)
    lg4 = model(input_ids=input_ids, pixel_values=pv, image_position_ids=pos, attention_mask=masks,
                use_cache=False).logits[0]
    # Greedy under the Gemma 4 rule: cache-free forwards over prompt + continuation.
    seq = list(ids)
    for _ in range(16):
        t = torch.tensor([seq])
        e = model.model.get_input_embeddings()(torch.where(t == IMAGE, 0, t))
        mk = Gemma4UnifiedForConditionalGeneration.create_masks_for_generate(
            model.config, e, None, None, torch.arange(len(seq))[None], mm_token_type_ids=(t == IMAGE).long())
        lo = model(input_ids=t, pixel_values=pv, image_position_ids=pos, attention_mask=mk, use_cache=False).logits[0]
        seq.append(int(lo[-1].argmax()))
    greedy4 = torch.tensor(seq[len(ids):])
    ve = model.model.embed_vision(pv, pos, return_dict=True)
    feats = model.model.get_image_features(pv, pos, return_dict=True).pooler_output[0]
    o = model(input_ids=input_ids, pixel_values=pv, image_position_ids=pos, mm_token_type_ids=mm, use_cache=False)
    gen = model.generate(input_ids=input_ids, pixel_values=pv, image_position_ids=pos, mm_token_type_ids=mm,
                         do_sample=False, max_new_tokens=16, min_new_tokens=16, eos_token_id=None, pad_token_id=0,
                         top_k=None, top_p=None, temperature=None)
valid = (pos[0] != -1).all(-1)
gold = {"pixel_values": pv[0][valid].contiguous(), "image_position_ids": pos[0][valid].contiguous(),
        "num_soft_tokens": torch.tensor([n]), "image_features": feats.contiguous(),
        "vision_last_hidden_state": ve.last_hidden_state[0][valid].contiguous(),
        "input_ids": input_ids[0], "logits": o.logits[0].contiguous(), "greedy": gen[0, len(ids):].contiguous(),
        "logits_gemma4_rule": lg4.contiguous(), "greedy_gemma4_rule": greedy4, "num_patches": torch.tensor([n])}
safetensors.torch.save_file(gold, str(out / "golden.safetensors"))
(out / "fixture.json").write_text(json.dumps({"golden": "golden.safetensors", "image": "image.png", "kind": "multimodal", "layout": "hf", "model": ".", "weights_dtype": "bfloat16"}, indent=1))
print("forward-rule vs gemma4-rule logits", (o.logits[0] - lg4).abs().max().item())
print("n", n, "prompt", len(ids), "greedy", gen[0, len(ids):].tolist())
