"""A tiny Gemma-4-shaped tokenizer (BPE with byte fallback) for the fixture models.

The vocab has 512 entries and carries Gemma 4's special tokens at the ids the tiny
configs name. Layout (id: token):

    0 <pad>   1 <eos>   2 <bos>   3 <unk>   4 <|turn>   5 <turn|>   6 "\\n"
    7 <|think|>   8 <|channel>   9 <channel|>
    10..265   byte-fallback tokens <0x00>..<0xFF>
    266..     base characters ("▁", letters, digits, punctuation), then learned merges up to 489
    490 <|tool>  491 <tool|>  492 <|tool_call>  493 <tool_call|>  494 <|tool_response>
    495 <tool_response|>  496 <|"|>  497..499 <unused0..2>
    500 <|image|> (image soft token)  501 <|image> (boi)  502 <image|> (eoi)
    503 <|audio|>  504 <|audio>  505 <audio|>  506 <|video|>  507..511 <unused3..7>

Like Gemma's tokenizer: spaces are normalised to "▁", no pre-tokenizer, byte fallback,
decoder = Replace("▁", " ") + ByteFallback + Fuse; add_bos_token is false (the chat
template writes <bos>).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

SPECIAL_LOW = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "\n", "<|think|>", "<|channel>", "<channel|>"]
SPECIAL_HIGH = {
    490: "<|tool>", 491: "<tool|>", 492: "<|tool_call>", 493: "<tool_call|>", 494: "<|tool_response>",
    495: "<tool_response|>", 496: '<|"|>', 497: "<unused0>", 498: "<unused1>", 499: "<unused2>",
    500: "<|image|>", 501: "<|image>", 502: "<image|>", 503: "<|audio|>", 504: "<|audio>", 505: "<audio|>",
    506: "<|video|>", 507: "<unused3>", 508: "<unused4>", 509: "<unused5>", 510: "<unused6>", 511: "<unused7>",
}
VOCAB_SIZE = 512
MERGE_END = 490  # learned merges fill ids up to 489

CORPUS = (
    "Describe this image. What is in the picture? The quick brown fox jumps over the lazy dog. "
    "A cat sits on the mat and looks at the camera. There are two images: the first shows a red house, "
    "the second a blue car in the street. Answer the question in one sentence. Hello, how are you today? "
    "I am fine, thank you. The model reads text and images and writes an answer. "
    "Please write a short story about a small robot that learns to paint. It was a sunny day in the city. "
    "Numbers like 1, 2, 3 and 42 appear in the text too. What colour is the sky? The sky is blue."
)

CHAT_TEMPLATE = """{{- bos_token -}}
{%- if enable_thinking is defined and enable_thinking -%}
{{- '<|turn>system\\n<|think|>\\n<turn|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<|turn>' + role + '\\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] | trim -}}
{%- else -%}
{%- for item in message['content'] -%}
{%- if item['type'] == 'image' -%}
{{- '<|image|>' -}}
{%- elif item['type'] == 'audio' -%}
{{- '<|audio|>' -}}
{%- elif item['type'] == 'text' -%}
{{- item['text'] | trim -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\\n' -}}
{%- endif -%}
"""


def _base_chars() -> list[str]:
    chars = ["▁"]
    chars += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    chars += [chr(c) for c in range(ord("0"), ord("9") + 1)]
    chars += list(".,!?'\"-:;()")
    return chars


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(SPECIAL_LOW):
        vocab[t] = i
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 10 + b
    nid = 266
    for c in _base_chars():
        vocab[c] = nid
        nid += 1
    # Deterministic BPE merge learning on the fixed corpus: words are "▁"-prefixed chunks.
    text = CORPUS.replace(" ", "▁")
    words = Counter()
    for w in text.split("▁"):
        if w:
            words[tuple("▁" + w)] += 1
    merges: list[tuple[str, str]] = []
    while nid < MERGE_END:
        pairs: Counter = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], tuple(-ord(ch) for ch in kv[0][0] + "\x00" + kv[0][1])))[0]
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = nid
            nid += 1
        new_words: Counter = Counter()
        for w, n in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    while nid < MERGE_END:  # corpus exhausted: pad with unused tokens
        vocab[f"<unused_fill{nid}>"] = nid
        nid += 1
    for i, t in SPECIAL_HIGH.items():
        vocab[t] = i
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE)), "vocab ids must be exactly 0..511"
    return vocab, merges


def special_tokens() -> list[tuple[int, str]]:
    out = [(i, t) for i, t in enumerate(SPECIAL_LOW) if t != "\n"]
    out += sorted(SPECIAL_HIGH.items())
    return out


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab, merges = build_vocab()
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in special_tokens()])
    for i, t in special_tokens():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    return tok


def tokenizer_config() -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "sot_token": "<|turn>",
        "eot_token": "<turn|>",
        "soc_token": "<|channel>",
        "eoc_token": "<channel|>",
        "think_token": "<|think|>",
        "stc_token": "<|tool_call>",
        "etc_token": "<tool_call|>",
        "std_token": "<|tool>",
        "etd_token": "<tool|>",
        "str_token": "<|tool_response>",
        "etr_token": "<tool_response|>",
        "escape_token": '<|"|>',
        "boi_token": "<|image>",
        "eoi_token": "<image|>",
        "image_token": "<|image|>",
        "boa_token": "<|audio>",
        "eoa_token": "<audio|>",
        "audio_token": "<|audio|>",
        "video_token": "<|video|>",
        "padding_side": "left",
        "model_max_length": 4096,
        "tokenizer_class": "GemmaTokenizer",
        "processor_class": "Gemma4Processor",
        "special_token_ids": {t: i for i, t in special_tokens()},
    }


def render_chat(messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool = False) -> str:
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token="<bos>", add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
    )


def write_tokenizer_files(out: Path) -> None:
    """Writes tokenizer.json, tokenizer_config.json, chat_template.jinja and tokenizer_golden.json."""
    tok = build_tokenizer()
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    cases = []
    for text in ["Hello, how are you today?", "The sky is blue.", "zebra Ωmega 42\nnew line", "<|turn>user\nHi<turn|>"]:
        enc = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
    chats = []
    for messages, thinking in [
        ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}], False),
        ([{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how are you?"},
          {"role": "user", "content": " What is in the picture? "}], False),
        ([{"role": "user", "content": "Write a short story."}], True),
    ]:
        rendered = render_chat(messages, add_generation_prompt=True, enable_thinking=thinking)
        ids = tok.encode(rendered, add_special_tokens=False).ids
        chats.append({"messages": messages, "enable_thinking": thinking, "add_generation_prompt": True,
                      "rendered": rendered, "ids": ids})
    golden = {"encode": cases, "chat": chats,
              "note": "ids from tokenizers' Tokenizer.encode(text, add_special_tokens=False); chat rendered with jinja2 "
                      "(trim_blocks, lstrip_blocks) from chat_template.jinja, bos_token '<bos>'"}
    (out / "tokenizer_golden.json").write_text(json.dumps(golden, indent=2, ensure_ascii=False) + "\n")
