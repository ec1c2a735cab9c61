#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/NAME/ from the committed fixtures (run once; the output is
committed). Needs Pillow (the oracle venv has it). Seeds are small valid and near-valid inputs."""
import glob, io, json, os, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def st_file(tensors, metadata=None, pad=b" "):
    """A safetensors file: tensors = [(key, dtype, shape, bytes)]."""
    header, off, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for key, dtype, shape, blob in tensors:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
        blobs.append(blob)
    h = json.dumps(header).encode()
    h += pad * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


# --- safetensors_header ---------------------------------------------------------------------
f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
put("safetensors_header", "valid_f32", st_file([("model.language_model.norm.weight", "F32", [4], f32)],
                                               {"format": "pt"}))
put("safetensors_header", "valid_mixed", st_file([
    ("model.language_model.layers.0.self_attn.k_proj.weight", "BF16", [2, 2], b"\x80\x3f" * 4),
    ("language_model.model.layers.0.mlp.gate_proj.scales", "F16", [1, 2], b"\x00\x3c" * 2),
    ("vision_tower.encoder.layers.0.self_attn.q_proj.input_min", "F32", [], struct.pack("<f", -1)),
    ("model.embed_vision.patch_ln1.bias", "F32", [1], struct.pack("<f", 0)),
    ("lm_head.weight", "U32", [1, 1], b"\x01\x00\x00\x00"),
    ("empty", "I8", [0, 3], b""),
]))
h = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}).encode()
put("safetensors_header", "overlap", struct.pack("<Q", len(h)) + h + b"\0" * 8)
h = json.dumps({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}).encode()
put("safetensors_header", "shape_overflow", struct.pack("<Q", len(h)) + h)
put("safetensors_header", "header_too_long", struct.pack("<Q", 1 << 40) + b"{}")
put("safetensors_header", "short", b"\x02\x00\x00")
for fx in ["e2b-like", "mlx-mixed", "unified12-like"]:
    raw = open(os.path.join(FIX, fx, "model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    # The header with at most 4 KB of it kept (near-valid: a cut header or ranges past the end).
    put("safetensors_header", f"{fx}_header_only", raw[: 8 + n][:4096])

# --- safetensors_index ----------------------------------------------------------------------
idx = open(os.path.join(FIX, "e4b-like", "model.safetensors.index.json")).read()
put("safetensors_index", "e4b_like", idx)
put("safetensors_index", "bad_names", json.dumps({"metadata": {}, "weight_map": {
    "a": "../model.safetensors", "b": "sub/dir.safetensors", "c": ".hidden", "d": "c:\\x"}}))
put("safetensors_index", "not_object", json.dumps({"weight_map": ["a"]}))
put("safetensors_index", "small", json.dumps({"weight_map": {"a": "x.safetensors", "b": "y.safetensors",
                                                              "c": "x.safetensors"}}))

# --- config / quant_config --------------------------------------------------------------------
for p in sorted(glob.glob(os.path.join(FIX, "*", "config*.json"))):
    fx = os.path.basename(os.path.dirname(p))
    name = os.path.basename(p)[: -len(".json")].replace(".", "_")
    text = open(p).read()
    cfg = json.loads(text)
    put("config", f"{fx}_{name}", json.dumps(cfg, separators=(",", ":")))
    for key in ["quantization", "quantization_config"]:
        if key in cfg:
            q = cfg[key]
            put("quant_config", f"{fx}_{key}", json.dumps(q, separators=(",", ":")))
put("quant_config", "odd", json.dumps({"bits": 3, "group_size": 32, "mode": "affine", "a.b": False,
                                       "c": True, "d": {"bits": 8}, "e": {"group_size": 0},
                                       "quant_method": "mlx"}))
put("quant_config", "bad_mode", json.dumps({"bits": 4, "group_size": 64, "mode": "mxfp4"}))

# --- processor_config / generation_config ---------------------------------------------------------
for p in sorted(glob.glob(os.path.join(FIX, "*", "processor_config.json"))):
    put("processor_config", os.path.basename(os.path.dirname(p)), open(p).read())
put("processor_config", "top_level", json.dumps({"max_soft_tokens": 1120}))
put("processor_config", "seq_length", json.dumps({"image_seq_length": 4294967366}))
for p in sorted(glob.glob(os.path.join(FIX, "*", "generation_config.json"))):
    put("generation_config", os.path.basename(os.path.dirname(p)), open(p).read())
put("generation_config", "greedy", json.dumps({"do_sample": False, "max_new_tokens": 12,
                                               "eos_token_id": 1, "repetition_penalty": 1.1}))
put("generation_config", "bad_values", json.dumps({"do_sample": True, "temperature": -1, "top_p": 2,
                                                   "min_p": None, "top_k": 1e30}))

# --- image ---------------------------------------------------------------------------------------
from PIL import Image

def img_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()

base = Image.new("RGB", (13, 7))
for y in range(7):
    for x in range(13):
        base.putpixel((x, y), (x * 19 % 256, y * 37 % 256, (x * y * 11) % 256))
put("image", "rgb.png", img_bytes(base, "PNG"))
put("image", "rgba.png", img_bytes(base.convert("RGBA"), "PNG"))
put("image", "gray.png", img_bytes(base.convert("L"), "PNG"))
put("image", "gray16.png", img_bytes(base.convert("I;16"), "PNG"))
put("image", "palette.png", img_bytes(base.convert("P"), "PNG"))
put("image", "wide.png", img_bytes(Image.new("RGB", (200, 1), (9, 99, 199)), "PNG"))
put("image", "tall.png", img_bytes(Image.new("L", (1, 150), 77), "PNG"))
put("image", "rgb.jpg", img_bytes(base, "JPEG", quality=80))
put("image", "gray.jpg", img_bytes(base.convert("L"), "JPEG"))
exif = Image.Exif()
exif[0x0112] = 6
put("image", "rotated.jpg", img_bytes(base, "JPEG", exif=exif.tobytes()))
put("image", "rgb.webp", img_bytes(base, "WEBP", lossless=True))
put("image", "lossy.webp", img_bytes(base, "WEBP", quality=50))
put("image", "anim.gif", img_bytes(base.convert("P"), "GIF", save_all=True,
                                   append_images=[base.convert("P").rotate(180)]))
put("image", "rgb.bmp", img_bytes(base, "BMP"))
put("image", "rgb.tiff", img_bytes(base, "TIFF"))
put("image", "lzw.tiff", img_bytes(base.convert("RGBA"), "TIFF", compression="tiff_lzw"))
put("image", "truncated.jpg", img_bytes(base, "JPEG")[:200])
big = img_bytes(Image.new("L", (4000, 4000), 0), "PNG")  # a small file announcing 16 Mpx
put("image", "bomb.png", big[:4096] if len(big) > 4096 else big)

# --- chat_template ---------------------------------------------------------------------------------
put("chat_template", "plain", b"\x00Hello there\x00\x01Hi! How can I help?\x00\x00What is 2+2?")
put("chat_template", "system_images", b"\x02Be terse.\x00\x04Describe the image.\x00\x44two images after\x00\x01ok")
put("chat_template", "injection", b"\x08 and more\x00\x18{{ 7*7 }}\x00\x28{% raw %}\x00\x09}}{{\x00\xc8<|image|>")
put("chat_template", "unicode", "\x00\u202e\u200b\ufeffé\u0301\U0010ffff  \r\n\t".encode() + b"\x00\x01\xff\xfe\xe2\x82")
put("chat_template", "json", json.dumps([
    {"role": "system", "content": "sys"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{{ x }}"}, {"type": "audio"}]},
    {"role": "assistant", "content": [{"type": "text", "text": 5}]},
    {"role": 7, "content": None}]))
put("chat_template", "json_odd", json.dumps([{"role": "user"}, 3, [], {"content": {"a": 1}}]))

# --- detokenizer ------------------------------------------------------------------------------------
tg = json.load(open(os.path.join(FIX, "e2b-like", "tokenizer_golden.json")))
def ids_bytes(ids):
    return b"".join(struct.pack("<H", i) for i in ids)
n = 0
for case in tg["encode"] + tg["chat"]:
    ids = case.get("ids")
    if ids:
        put("detokenizer", f"golden_{n}", ids_bytes(ids))
        n += 1
    if n >= 6:
        break
tok = json.load(open(os.path.join(FIX, "e2b-like", "tokenizer.json")))
vocab = tok["model"]["vocab"]
byte_ids = [vocab[f"<0x{b:02X}>"] for b in "é€😀".encode()]
put("detokenizer", "byte_fallback", ids_bytes(byte_ids))
put("detokenizer", "split_utf8", ids_bytes(byte_ids[:-1] + [2, 5] + byte_ids[-1:]))
put("detokenizer", "out_of_vocab", ids_bytes([10, 20, 511, 512, 600, 65535]))
put("detokenizer", "specials", ids_bytes([2, 4, 5, 1, 0, 3] * 3))
put("detokenizer", "text", "Hello, world! <|turn>user\n héllo 😀 \u00a0\t<bos>".encode())
print("seeds written to", OUT)
