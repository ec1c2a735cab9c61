//! Fuzz entry points: one per parser that takes outside bytes (a checkpoint's files, an image,
//! chat content, token ids). Each `fn NAME(data: &[u8])` feeds `data` through the crate's real
//! parsing path and ignores the typed error; it must never panic, hang or allocate without
//! bound on any input. Where a parse succeeds, the entry point also checks the promises the rest
//! of the crate relies on (byte ranges inside the file, validated per-layer geometry, template
//! output that contains the message text verbatim, streamed text equal to the full decode) with
//! `assert!`: a failed assertion is a bug in the parser, like a panic inside it.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/NAME.rs` call these; the replay test
//! (`tests/model/fuzz_corpus.rs`) feeds every committed corpus file through them. Fixture files
//! (tokenizer, chat template, config) are read once from the crate's `tests/fixtures`
//! (`CARGO_MANIFEST_DIR`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::checkpoint::keys::{self, KeyKind};
use crate::checkpoint::quant::{QuantRules, check_shapes};
use crate::checkpoint::safetensors::{parse_file, parse_index, to_f32};
use crate::config::{Gemma4Config, QuantParams, QuantizationConfig};
use crate::generate::{Detokenizer, GenerationOptions};
use crate::prompt::preprocess::{self, ImageOptions, ImageProcessor};
use crate::prompt::tokenizer::Tokenizer;
use crate::prompt::{ChatTemplate, Content, Message, Role};

/// Inputs longer than this are cut (libFuzzer's default `-max_len` is 4096; the committed
/// corpus holds a few larger files).
const MAX_INPUT: usize = 1 << 20;

/// The fixture checkpoint whose text files the template and tokenizer targets use.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e2b-like")
}

fn read_fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fuzz fixture {} is unreadable: {e}", path.display()))
}

fn cut(data: &[u8]) -> &[u8] {
    &data[..data.len().min(MAX_INPUT)]
}

/// A whole `*.safetensors` file: the header validation `SafeFile::open` runs on the mapped
/// file ([`parse_file`]), then every accepted tensor's bytes are read (the ranges must lie in
/// the file and match dtype × shape) and its key classified as the loader does.
pub fn safetensors_header(data: &[u8]) {
    let path = Path::new("<fuzz>/model.safetensors");
    let Ok(entries) = parse_file(data, path) else {
        return;
    };
    let mut prev_end = 0usize;
    for e in &entries {
        let bytes = &data[e.start..e.start + e.len];
        let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(numel.map(|n| n * e.dtype.size()), Some(bytes.len()));
        if !bytes.is_empty() {
            assert!(e.start >= prev_end, "tensors overlap");
            prev_end = e.start + e.len;
        }
        if let Some(v) = to_f32(bytes, e.dtype) {
            assert_eq!(v.len(), numel.unwrap_or(0));
        }
        if let KeyKind::Model(c) = keys::classify(&e.key) {
            let _ = keys::text_kv_layer(&c);
            let _ = keys::is_vision_clip(&c);
        }
    }
}

/// `model.safetensors.index.json`: JSON, `weight_map`, shard-name validation ([`parse_index`],
/// as `TensorStore::open_dir` runs it). Every accepted shard name must be one plain path
/// component (it is joined to the checkpoint directory).
pub fn safetensors_index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return;
    };
    let dir = Path::new("<fuzz>");
    let Ok(index) = parse_index(text, &dir.join("model.safetensors.index.json"), dir) else {
        return;
    };
    for s in &index.shards {
        let mut parts = Path::new(s).components();
        assert!(
            matches!(
                (parts.next(), parts.next()),
                (Some(std::path::Component::Normal(_)), None)
            ),
            "shard name {s:?} is not one plain path component"
        );
    }
    for (_, name) in index.weight_map.values() {
        assert!(index.shards.binary_search(name).is_ok());
    }
}

/// `config.json`: parse and validate ([`Gemma4Config::from_json_str`]), then the derived plan
/// the model is built from: every per-layer helper of the text config for every layer, the MoE
/// shape, the vision tower's or the unified embedder's sizes and image options, the
/// quantization rules of every layer's projections, and the generation defaults that read
/// `eos_token_id` from the config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return;
    };
    let path = Path::new("<fuzz>/config.json");
    let Ok(cfg) = Gemma4Config::from_json_str(text, path) else {
        return;
    };
    let t = &cfg.text_config;
    let _ = (t.first_shared(), t.has_ple(), t.bidirectional_vision(), t.moe());
    let _ = t.eos_token_id.to_vec();
    let _ = cfg.eos_token_id.to_vec();
    let rules = QuantRules::new(cfg.quantization.as_ref());
    for i in 0..t.num_hidden_layers {
        let _ = (t.layer_type(i), t.is_kv_shared(i), t.k_eq_v(i), t.rope(i));
        let src = t.kv_source(i);
        assert!(src.is_some_and(|s| s <= i), "validated layer {i} has no KV source");
        let (hd, kv) = (t.layer_head_dim(i), t.layer_kv_heads(i));
        assert!(hd > 0 && hd.is_multiple_of(2) && kv > 0 && t.num_attention_heads.is_multiple_of(kv));
        let inter = t.intermediate(i);
        assert!(inter >= t.intermediate_size);
        if let Some(q) = &cfg.quantization {
            let layer = format!("language_model.layers.{i}");
            for (name, rows, cols) in [
                ("self_attn.q_proj", t.num_attention_heads * hd, t.hidden_size),
                ("self_attn.k_proj", kv * hd, t.hidden_size),
                ("mlp.gate_proj", inter, t.hidden_size),
                ("mlp.down_proj", t.hidden_size, inter),
            ] {
                let module = format!("{layer}.{name}");
                let p = rules.params_for(&module).unwrap_or(q.global);
                quant_shapes(&module, rows, cols, p);
            }
        }
    }
    if let Some(m) = t.moe() {
        assert!(m.experts > 0 && m.top_k > 0 && m.top_k <= m.experts && m.intermediate > 0);
    }
    if let Some(v) = &cfg.vision_config {
        assert!(v.head_dim() > 0 && v.head_dim().is_multiple_of(4));
        assert!(v.kv_heads() > 0 && v.num_attention_heads.is_multiple_of(v.kv_heads()));
        let _ = v.patch_values();
        let _ = ImageOptions::from_vision_config(
            v.patch_size as u32,
            v.pooling_kernel_size as u32,
            v.default_output_length as u32,
        );
    }
    if let Some(e) = &cfg.vision_embedder {
        let _ = (e.model_patch_size(), e.patch_values());
        let _ = ImageOptions::unified(
            e.patch_size as u32,
            e.pooling_kernel_size as u32,
            preprocess::UNIFIED_DEFAULT_SOFT_TOKENS,
        );
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = GenerationOptions::from_sources(Some(&v), None, path);
    }
}

/// The quantized-module shape check of the loader on the shapes a well-formed checkpoint
/// would store for `[rows, cols]` at `p`.
fn quant_shapes(key: &str, rows: usize, cols: usize, p: QuantParams) {
    let packed = cols.checked_mul(p.bits as usize).map(|x| x / 32);
    let groups = cols.checked_div(p.group_size as usize);
    if let (Some(packed), Some(groups)) = (packed, groups) {
        let _ = check_shapes(
            key,
            rows,
            cols,
            p,
            &[rows, packed],
            &[rows, groups],
            &[rows, groups],
        );
    }
    let _ = check_shapes(key, rows, cols, p, &[rows], &[], &[rows, 0]);
}

/// The MLX `quantization` section of `config.json` ([`QuantizationConfig::parse`]), the rules
/// built from it (module paths canonicalised as the loader does) and the quantized-shape check
/// at every resulting bit width and group size, for ordinary and extreme matrix sizes.
pub fn quant_config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(cut(data)) else {
        return;
    };
    let path = Path::new("<fuzz>/config.json");
    let Ok(q) = QuantizationConfig::parse(&v, path, "quantization") else {
        return;
    };
    let rules = QuantRules::new(Some(&q));
    let mut params = vec![q.global];
    for k in q.overrides.keys() {
        let canon = keys::canonical_module(k).unwrap_or_else(|| k.clone());
        if let Ok(p) = rules.params_for(&canon) {
            params.push(p);
        }
    }
    let _ = rules.params_for("language_model.layers.0.self_attn.q_proj");
    for p in params {
        assert!((1..=8).contains(&p.bits) && p.group_size > 0);
        for (rows, cols) in [
            (1, 64),
            (3, 96),
            (128, 128),
            (7, 2816),
            (1, usize::MAX / 4 + 64),
            (usize::MAX, usize::MAX),
        ] {
            quant_shapes("fuzz.weight", rows, cols, p);
        }
    }
}

/// `processor_config.json`: the soft-token budget ([`crate::checkpoint::files::processor_budget`])
/// and the image options built from it for both image processors, with the resize rule on a few
/// image sizes.
pub fn processor_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return;
    };
    let Some(budget) = crate::checkpoint::files::processor_budget(text) else {
        return;
    };
    for opts in [
        ImageOptions::from_vision_config(16, 3, 280).and_then(|o| o.with_max_soft_tokens(budget)),
        ImageOptions::unified(16, 3, budget),
    ] {
        let Ok(opts) = opts else { continue };
        assert!(preprocess::SUPPORTED_SOFT_TOKENS.contains(&opts.max_soft_tokens));
        for (h, w) in [(1, 1), (480, 640), (1, 100_000), (100_000, 3)] {
            if let Ok((th, tw)) = preprocess::target_size(h, w, &opts) {
                assert!(u64::from(th) * u64::from(tw) <= opts.max_patches() * 256);
            }
        }
    }
}

/// `generation_config.json` ([`GenerationOptions::from_sources`], without and with the
/// fixture's `config.json`), validated, and the sampler parameters derived from it.
pub fn generation_config(data: &[u8]) {
    static CONFIG: OnceLock<serde_json::Value> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(cut(data)) else {
        return;
    };
    let cfg = CONFIG.get_or_init(|| {
        serde_json::from_str(&read_fixture("config.json")).expect("fixture config.json is JSON")
    });
    let path = Path::new("<fuzz>/generation_config.json");
    for c in [None, Some(cfg)] {
        if let Ok(opts) = GenerationOptions::from_sources(c, Some(text), path) {
            if opts.validate().is_ok() {
                let _ = opts.sampling.is_greedy();
                let _ = opts.sampling.to_sample_params(0.5);
            }
        }
    }
}

/// Pixel limit of the image target: decompression bombs are refused by it, not by memory.
const FUZZ_MAX_PIXELS: u64 = 1 << 16;

/// An image file: decode with the pixel limit ([`preprocess::load_image_from_bytes`]), resize and
/// patchify ([`preprocess::preprocess`]). The last byte picks the processor and budget (small
/// patches, so a resize stays cheap). Checks the patch tensor's size and value range.
pub fn image(data: &[u8]) {
    let data = cut(data);
    let sel = data.last().copied().unwrap_or(0);
    let budget = [70, 140, 280][usize::from(sel >> 1) % 3];
    let Ok(mut opts) = ImageOptions::from_vision_config(4, 3, budget) else {
        return;
    };
    if sel & 1 == 1 {
        opts.processor = ImageProcessor::Unified;
    }
    opts.max_pixels_decoded = FUZZ_MAX_PIXELS;
    let Ok(img) = preprocess::load_image_from_bytes(data, &opts) else {
        return;
    };
    assert!(u64::from(img.width()) * u64::from(img.height()) <= FUZZ_MAX_PIXELS);
    let Ok(out) = preprocess::preprocess(&img, &opts) else {
        return;
    };
    let p = match opts.processor {
        ImageProcessor::Gemma4Pil => opts.patch_size,
        ImageProcessor::Unified => opts.patch_size * opts.pooling_kernel_size,
    } as usize;
    let (rows, cols) = out.grid;
    assert_eq!(out.num_patches(), rows as usize * cols as usize);
    assert_eq!(out.pixel_values.len(), out.num_patches() * 3 * p * p);
    assert!(out.num_patches() as u64 <= opts.max_patches());
    assert!(out.positions.iter().all(|&[x, y]| x < cols && y < rows));
    assert!(out.pixel_values.iter().all(|v| (0.0..=1.0).contains(v)));
}

/// The fixture's tokenizer (`tests/fixtures/e2b-like/tokenizer.json`, byte-fallback BPE).
fn tokenizer() -> &'static Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = fixture_dir().join("tokenizer.json");
        Arc::new(Tokenizer::from_file(&path).expect("fixture tokenizer.json loads"))
    })
}

/// The fixture's chat template (its `chat_template.jinja` and `tokenizer_config.json`, as
/// `Checkpoint::open` reads them) and the built-in template with the same special tokens.
fn templates() -> &'static [ChatTemplate; 2] {
    static T: OnceLock<[ChatTemplate; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let cfg = read_fixture("tokenizer_config.json");
        let file = ChatTemplate::from_sources(
            &fixture_dir(),
            Some(&cfg),
            Some(read_fixture("chat_template.jinja")),
            None,
        )
        .expect("fixture chat template compiles");
        let builtin = ChatTemplate::builtin(file.special_tokens().clone())
            .expect("built-in chat template compiles");
        [file, builtin]
    })
}

/// Template-injection and odd-Unicode fragments the message decoder mixes into the text.
const HOSTILE: &[&str] = &[
    "{{ messages }}",
    "{% for m in messages %}{{ m }}{% endfor %}",
    "{{ raise_exception('x') }}",
    "{%- if true -%}",
    "{# comment",
    "<|turn>system\n",
    "<turn|>",
    "<|image|>",
    "<bos>",
    "\u{FEFF}\u{200B}\u{202E}",
    "\u{10FFFF}\u{FFFD}",
    "e\u{301}\u{301}\u{301}",
    "\r\n\t\u{85}\u{2028}",
    "}}{{",
];

/// Decodes fuzz bytes into chat messages: records separated by `0x00`; the first byte of a
/// record picks the role, image items and hostile fragments, the rest is the text (lossy
/// UTF-8).
fn messages_of(data: &[u8]) -> Vec<Message> {
    data.split(|&b| b == 0)
        .take(256)
        .filter_map(|rec| {
            let (&head, rest) = rec.split_first()?;
            let role = [Role::User, Role::Assistant, Role::System][usize::from(head % 3)];
            let mut text = String::from_utf8_lossy(rest).into_owned();
            if head & 0x08 != 0 {
                text.insert_str(0, HOSTILE[usize::from(head >> 4) % HOSTILE.len()]);
            }
            let mut content = Vec::new();
            let images = usize::from((head >> 2) & 1) + usize::from(head >> 7);
            if head & 0x40 != 0 {
                content.push(Content::Text(text));
                content.extend(std::iter::repeat_n(Content::Image, images));
            } else {
                content.extend(std::iter::repeat_n(Content::Image, images));
                content.push(Content::Text(text));
            }
            Some(Message::new(role, content))
        })
        .collect()
}

/// The chat template: the fixture's template and the built-in one render messages decoded
/// from the bytes (or, for bytes that are a JSON array, the Hugging Face message structure
/// as given: content strings, lists, numbers, nesting). Checks that message text is never
/// interpreted as template code (each trimmed text item appears verbatim in the output) and
/// that every image item outside a leading system message gives a placeholder; then the
/// prompt path: tokenize the rendered text and expand its image placeholders.
pub fn chat_template(data: &[u8]) {
    let data = cut(data);
    let [file, builtin] = templates();
    let extra = serde_json::Map::new();
    if data.first() == Some(&b'[') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            for t in [file, builtin] {
                let _ = t.render_json(&v, true, &extra);
            }
            return;
        }
    }
    let msgs = messages_of(data);
    // Images of a leading system message are not rendered by the built-in template (as by the
    // official Gemma 4 one: it writes only the text items of the system turn).
    let images: usize = msgs
        .iter()
        .enumerate()
        .filter(|(i, m)| !(*i == 0 && m.role == Role::System))
        .map(|(_, m)| m.n_images())
        .sum();
    let mut thinking = serde_json::Map::new();
    thinking.insert("enable_thinking".into(), serde_json::Value::Bool(true));
    let tok = tokenizer();
    for (t, extra) in [(file, &extra), (builtin, &thinking)] {
        let Ok(out) = t.render_with(&msgs, true, extra) else {
            continue;
        };
        for m in &msgs {
            for c in &m.content {
                if let Content::Text(s) = c {
                    assert!(
                        out.contains(s.trim()),
                        "message text {s:?} is not in the rendered prompt verbatim"
                    );
                }
            }
        }
        assert!(out.matches("<|image|>").count() >= images);
        let Ok(ids) = tok.encode(&out) else { continue };
        let (Some(img), Some(boi), Some(eoi)) = (
            tok.token_id("<|image|>"),
            tok.token_id("<|image>"),
            tok.token_id("<image|>"),
        ) else {
            continue;
        };
        let placeholders = ids.iter().filter(|&&i| i == img).count();
        let soft: Vec<usize> = (0..placeholders).map(|i| 1 + i % 3).collect();
        if let Ok(expanded) = crate::prompt::expand_image_tokens(&ids, img, boi, eoi, &soft) {
            let want = ids.len() + soft.iter().map(|n| n + 1).sum::<usize>();
            assert_eq!(expanded.len(), want);
        }
    }
}

/// The tokenizer's decode side and encode side. Bytes are read as little-endian `u16` token
/// ids (the range covers the vocabulary, out-of-vocabulary ids and byte-fallback tokens); the
/// streaming [`Detokenizer`] must emit, over its deltas plus `finish`, exactly the full
/// decode whenever every id is valid. The bytes as (lossy) UTF-8 are encoded and decoded back:
/// the byte-fallback tokenizer has no lossy normalisation (but for U+2581, its space mark), so
/// the text must round-trip.
pub fn detokenizer(data: &[u8]) {
    let data = &data[..data.len().min(1 << 14)];
    let tok = tokenizer();
    // At most 512 ids: a window that emits nothing (skipped special tokens) is decoded again
    // on every push.
    let id_bytes = &data[..data.len().min(1024)];
    let vocab = tok.vocab_size();
    let skip = data.first().is_some_and(|b| b & 1 == 1);
    let ids = detokenizer_ids(id_bytes, vocab);
    let mut d = Detokenizer::new(tok.clone()).with_skip_special(skip);
    let mut streamed = String::new();
    let mut failed = false;
    for &id in &ids {
        match d.push(id) {
            Ok(Some(delta)) => streamed.push_str(&delta),
            Ok(None) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        if let Ok(rest) = d.finish() {
            streamed.push_str(&rest);
            let full = tok.decode(&ids, skip).expect("every id decoded when streamed");
            assert_eq!(streamed, full, "streamed text differs from the full decode");
            assert_eq!(d.text(), full);
        }
    } else {
        assert!(ids.iter().any(|&i| i as usize >= vocab));
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(enc) = tok.encode(&text) {
        assert!(enc.iter().all(|&i| (i as usize) < vocab));
        let back = tok.decode(&enc, false).expect("encoded ids decode");
        // The normaliser writes spaces as U+2581 and the decoder turns every U+2581 back into a
        // space (as in transformers): only text without U+2581 round-trips.
        if !text.contains('\u{2581}') {
            assert_eq!(back, text, "encode/decode does not round-trip");
        }
    }
}

/// A fuzz entry point.
pub type Entry = fn(&[u8]);

/// The token ids the [`detokenizer`] target reads from `data` (little-endian `u16`s): mostly
/// ids below `vocab + 8` (in-vocabulary, and a few just past it), a quarter far out of it.
pub fn detokenizer_ids(data: &[u8], vocab: usize) -> Vec<u32> {
    data.chunks_exact(2)
        .map(|c| {
            let v = u32::from(u16::from_le_bytes([c[0], c[1]]));
            match v >> 14 {
                0..=2 => v % (vocab as u32 + 8),
                _ => v << 8,
            }
        })
        .collect()
}

/// Every entry point by target name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus
/// folders), for the replay test.
pub const TARGETS: &[(&str, Entry)] = &[
    ("safetensors_header", safetensors_header),
    ("safetensors_index", safetensors_index),
    ("config", config),
    ("quant_config", quant_config),
    ("processor_config", processor_config),
    ("generation_config", generation_config),
    ("image", image),
    ("chat_template", chat_template),
    ("detokenizer", detokenizer),
];
