#!/usr/bin/env python3
"""Builds tests/fixtures/chat: end-to-end chat goldens for the e2b-like model (transformers fp32, eager).

Run from the repository root with the torch venv, AFTER generate.py has written tests/fixtures/e2b-like
(this script only reads that directory):

    tools/oracle/venv/bin/python tools/oracle/chat_golden.py [--fixtures tests/fixtures]

Everything goes through the checkpoint's own files: the chat template (transformers' apply_chat_template on
e2b-like/chat_template.jinja), the tokenizer (tokenizer.json, no special tokens added: the template writes
<bos>), the image processor (Gemma4ImageProcessorPil built from processor_config.json: patch 4, budget 70,
pooling 3, bicubic) and Gemma4Processor's placeholder rule (each <|image|> of the rendered text becomes
<|image>  + <|image|> x num_soft_tokens + <image|>).

Cases (all greedy, KV cache on, cross-checked against a cache-free forward):
  caption:    [user: image + "Describe this image."]            -> caption_ids, caption_greedy (16)
  ask:        [user: image + "What is in the picture?"]         -> ask_ids, ask_greedy (16)
  chat turn1: [user: "Hello there."]                            -> chat_turn1_ids, chat_turn1_greedy (8)
  chat turn2: turn1 + [assistant: decode(turn1 reply, skip special), user: "And then?"]
                                                                -> chat_turn2_ids, chat_turn2_logits (last
                                                                   position), chat_turn2_greedy (16)
The image is image_u8.0 of e2b-like/golden.safetensors, also written as chat/image.png (lossless).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import safetensors.torch
import torch
from transformers import AutoTokenizer
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import generate as gen  # noqa: E402

CAPTION_TOKENS = 16
TURN1_TOKENS = 8


def processor_from_config(model_dir: Path) -> tuple[Gemma4ImageProcessorPil, dict]:
    cfg = json.loads((model_dir / "processor_config.json").read_text())["image_processor"]
    kw = {k: cfg[k] for k in ("patch_size", "max_soft_tokens", "pooling_kernel_size")}
    return Gemma4ImageProcessorPil(**kw), kw


def expand(text: str, tok, soft_counts: list[int]) -> str:
    """Gemma4Processor.replace_image_token, occurrence by occurrence."""
    parts = text.split(tok.image_token)
    assert len(parts) == len(soft_counts) + 1, (text, soft_counts)
    out = parts[0]
    for n, rest in zip(soft_counts, parts[1:]):
        out += tok.boi_token + tok.image_token * n + tok.eoi_token + rest
    return out


def generate(model, ids: list[int], pp: dict | None, n: int) -> torch.Tensor:
    input_ids = torch.tensor([ids], dtype=torch.int64)
    kw = {}
    if pp is not None:
        kw = dict(pixel_values=pp["pixel_values"], image_position_ids=pp["image_position_ids"],
                  mm_token_type_ids=(input_ids == gen.IMAGE_TOKEN).long())
    out = model.generate(input_ids=input_ids, do_sample=False, max_new_tokens=n, min_new_tokens=0,
                         eos_token_id=None, pad_token_id=0, use_cache=True, top_k=None, top_p=None,
                         temperature=None, **kw)
    new = out[0, len(ids):]
    assert new.numel() == n, new
    full = torch.cat([input_ids, new[None, :-1]], dim=1)
    kw2 = dict(kw)
    if pp is not None:
        kw2["mm_token_type_ids"] = (full == gen.IMAGE_TOKEN).long()
    logits = model(input_ids=full, use_cache=False, **kw2).logits[0]
    assert torch.equal(logits[len(ids) - 1:].argmax(-1), new), "cached vs cache-free greedy differ"
    return new.to(torch.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default=str(HERE.parent.parent / "tests" / "fixtures"))
    args = ap.parse_args()
    root = Path(args.fixtures)
    model_dir = root / "e2b-like"
    out = root / "chat"
    out.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = gen.load_hf(model_dir)
    proc, proc_kw = processor_from_config(model_dir)
    e2b = safetensors.torch.load_file(str(model_dir / "golden.safetensors"))
    image = e2b["image_u8.0"].numpy()
    PIL.Image.fromarray(image).save(out / "image.png", optimize=False, compress_level=9)
    # The PNG must round-trip exactly (the Rust side decodes it).
    assert np.array_equal(np.asarray(PIL.Image.open(out / "image.png").convert("RGB")), image)

    def render(messages: list[dict]) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       enable_thinking=False)

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    g: dict[str, torch.Tensor] = {"image_u8": torch.from_numpy(np.ascontiguousarray(image))}
    meta: dict[str, str] = {}
    with torch.no_grad():
        pp = gen.preprocess([image], proc)
        g["num_soft_tokens"] = torch.tensor(pp["num_soft_tokens"], dtype=torch.int64)
        for name, question in (("caption", "Describe this image."), ("ask", "What is in the picture?")):
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            rendered = render(msgs)
            ids = encode(expand(rendered, tok, pp["num_soft_tokens"]))
            g[f"{name}_ids"] = torch.tensor(ids, dtype=torch.int64)
            g[f"{name}_greedy"] = generate(model, ids, pp, CAPTION_TOKENS)
            meta[f"{name}_rendered"] = rendered

        msgs = [{"role": "user", "content": [{"type": "text", "text": "Hello there."}]}]
        rendered1 = render(msgs)
        ids1 = encode(rendered1)
        reply = generate(model, ids1, None, TURN1_TOKENS)
        reply_text = tok.decode(reply.tolist(), skip_special_tokens=True)
        g["chat_turn1_ids"] = torch.tensor(ids1, dtype=torch.int64)
        g["chat_turn1_greedy"] = reply
        msgs += [{"role": "assistant", "content": [{"type": "text", "text": reply_text}]},
                 {"role": "user", "content": [{"type": "text", "text": "And then?"}]}]
        rendered2 = render(msgs)
        ids2 = encode(rendered2)
        g["chat_turn2_ids"] = torch.tensor(ids2, dtype=torch.int64)
        logits = model(input_ids=torch.tensor([ids2]), use_cache=False).logits[0, -1]
        g["chat_turn2_logits"] = logits.float()
        g["chat_turn2_greedy"] = generate(model, ids2, None, CAPTION_TOKENS)
        meta.update(chat_turn1_rendered=rendered1, chat_turn1_reply_text=reply_text,
                    chat_turn2_rendered=rendered2)

    meta.update({
        "case": "chat",
        "model": "../e2b-like",
        "image": "image_u8.0 of e2b-like/golden.safetensors (uint8 HWC), also chat/image.png",
        "image_preprocessing": "transformers Gemma4ImageProcessorPil(" +
                               ", ".join(f"{k}={v}" for k, v in proc_kw.items()) +
                               ") from e2b-like/processor_config.json (bicubic resize, rescale 1/255)",
        "prompt": "tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False) "
                  "with e2b-like/chat_template.jinja; each <|image|> -> <|image> + <|image|> x num_soft_tokens + "
                  "<image|> (Gemma4Processor rule); tokenizer.encode(add_special_tokens=False)",
        "generation": "greedy (do_sample=False), no eos stop, KV cache, cross-checked cache-free",
        "chat_turn2_logits": "logits at the last prompt position of chat_turn2_ids (cache-free forward)",
    })
    meta = {**gen.versions(), **meta}
    t = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in g.items()}
    gen.write_safetensors(out / "golden.safetensors", t, meta)
    (out / "fixture.json").write_text(json.dumps({"model": "../e2b-like", "golden": "golden.safetensors",
                                                  "image": "image.png", "kind": "chat"},
                                                 indent=2, sort_keys=True) + "\n")
    print("done:", out, {k: tuple(v.shape) for k, v in g.items()})


if __name__ == "__main__":
    main()
