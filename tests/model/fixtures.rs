//! Consistency of the committed fixtures (tests/fixtures, written by tools/oracle/generate.py):
//! files present, every golden tensor's shape consistent with the model's config.json, checkpoint
//! tensor shapes consistent with the config, preprocessing goldens consistent with the resize rule,
//! tokenizer ids consistent with the config. No GPU needed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::golden::{F32Tensor, Fixture, Golden, compare, fixtures_dir};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const CASES: &[&str] = &[
    "e2b-like",
    "e2b-like-ptq",
    "e4b-like",
    "mlx-mixed",
    "long-text",
    "two-images",
    "dense31-like",
    "dense31-like-mlx",
    "moe26-like",
    "moe26-like-mlx",
];
const GREEDY: usize = 16;

fn u(v: &Value, what: &str) -> usize {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not an unsigned integer: {v}")) as usize
}

/// Text-config facts the goldens depend on.
struct Dims {
    vocab: usize,
    hidden: usize,
    layers: usize,
    vision_hidden: usize,
    patch: usize,
    pooling: usize,
    image_token: i64,
    boi: i64,
    eoi: i64,
}

fn dims(cfg: &Value) -> Dims {
    let t = &cfg["text_config"];
    let v = &cfg["vision_config"];
    Dims {
        vocab: u(&t["vocab_size"], "vocab_size"),
        hidden: u(&t["hidden_size"], "hidden_size"),
        layers: u(&t["num_hidden_layers"], "num_hidden_layers"),
        vision_hidden: u(&v["hidden_size"], "vision hidden_size"),
        patch: u(&v["patch_size"], "patch_size"),
        pooling: u(&v["pooling_kernel_size"], "pooling_kernel_size"),
        image_token: cfg["image_token_id"].as_i64().expect("image_token_id"),
        boi: cfg["boi_token_id"].as_i64().expect("boi_token_id"),
        eoi: cfg["eoi_token_id"].as_i64().expect("eoi_token_id"),
    }
}

/// Weight files of a model directory: model.safetensors, or the shards named by the index.
fn weight_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return vec![single];
    }
    let idx = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&idx).unwrap_or_else(|e| panic!("{}: {e}", idx.display()));
    let v: Value = serde_json::from_str(&text).expect("index json");
    let files: BTreeSet<&str> = v["weight_map"]
        .as_object()
        .expect("weight_map")
        .values()
        .map(|f| f.as_str().expect("shard name"))
        .collect();
    files.into_iter().map(|f| dir.join(f)).collect()
}

/// name -> (dtype, shape) over all weight files.
fn weight_shapes(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let mut out = BTreeMap::new();
    for f in weight_files(dir) {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let st =
            SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for (name, view) in st.tensors() {
            let prev = out.insert(name.clone(), (view.dtype(), view.shape().to_vec()));
            assert!(prev.is_none(), "{name} in two shards");
        }
    }
    out
}

#[test]
fn fixture_files_exist() {
    for case in CASES {
        let fx = Fixture::open(case);
        assert!(
            fx.golden_path.exists(),
            "{case}: {}",
            fx.golden_path.display()
        );
        assert!(
            fx.model_dir.join("config.json").exists(),
            "{case}: config.json"
        );
        for f in weight_files(&fx.model_dir) {
            assert!(f.exists(), "{case}: {}", f.display());
        }
    }
    let e2b = fixtures_dir().join("e2b-like");
    for f in [
        "config.json",
        "config.per_layer_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer_golden.json",
        "chat_template.jinja",
        "generation_config.json",
        "processor_config.json",
        "golden.safetensors",
    ] {
        assert!(e2b.join(f).exists(), "e2b-like/{f}");
    }
    let e4b = fixtures_dir().join("e4b-like");
    assert!(e4b.join("model.safetensors.index.json").exists());
    assert_eq!(weight_files(&e4b).len(), 2, "e4b-like is sharded in 2");
    let pre = fixtures_dir().join("preprocess");
    assert!(pre.join("golden.safetensors").exists() && pre.join("preprocess.json").exists());
    // The whole fixture tree stays small.
    fn size(p: &Path) -> u64 {
        if p.is_dir() {
            std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| size(&e.expect("entry").path()))
                .sum()
        } else {
            p.metadata().map(|m| m.len()).unwrap_or(0)
        }
    }
    let total = size(&fixtures_dir());
    assert!(
        total < 30 << 20,
        "tests/fixtures is {total} bytes (budget 30 MiB)"
    );
}

fn check_logits_and_hidden(case: &str, g: &Golden, d: &Dims, l: usize) {
    assert_eq!(g.shape("logits"), vec![l, d.vocab], "{case}: logits");
    for k in 0..=d.layers {
        assert_eq!(
            g.shape(&format!("hidden_states.{k}")),
            vec![l, d.hidden],
            "{case}: hidden_states.{k}"
        );
    }
    assert!(
        !g.has(&format!("hidden_states.{}", d.layers + 1)),
        "{case}: one hidden state per layer plus the embeddings"
    );
    assert_eq!(
        g.shape("final_norm"),
        vec![l, d.hidden],
        "{case}: final_norm"
    );
    let greedy = g.i64("greedy");
    assert_eq!(greedy.shape, vec![GREEDY], "{case}: greedy");
    assert!(
        greedy
            .data
            .iter()
            .all(|&t| (0..d.vocab as i64).contains(&t) && t != d.image_token),
        "{case}: greedy ids {:?}",
        greedy.data
    );
    for name in g.names() {
        if g.raw(name).dtype == Dtype::F32 {
            assert!(
                g.f32(name).data.iter().all(|v| v.is_finite()),
                "{case}: {name} has non-finite values"
            );
        }
    }
}

fn check_multimodal(case: &str, g: &Golden, d: &Dims) {
    let ids = g.i64("input_ids");
    assert_eq!(ids.shape.len(), 1, "{case}: input_ids is [L]");
    let l = ids.shape[0];
    check_logits_and_hidden(case, g, d, l);
    // mm_token_type_ids: 1 exactly at image-token positions.
    let mm = g.i64("mm_token_type_ids");
    assert_eq!(mm.shape, vec![l]);
    for (i, (&id, &t)) in ids.data.iter().zip(&mm.data).enumerate() {
        assert_eq!(
            t,
            i64::from(id == d.image_token),
            "{case}: mm_token_type_ids[{i}]"
        );
    }
    // Image blocks: boi, image x n_i, eoi, with n_i = num_soft_tokens[i].
    let soft = g.i64("num_soft_tokens").data;
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < l {
        if ids.data[i] == d.boi {
            let start = i + 1;
            let mut j = start;
            while j < l && ids.data[j] == d.image_token {
                j += 1;
            }
            assert_eq!(
                ids.data[j], d.eoi,
                "{case}: image block at {start} not closed by eoi"
            );
            blocks.push((j - start) as i64);
            i = j;
        }
        i += 1;
    }
    assert_eq!(blocks, soft, "{case}: image blocks vs num_soft_tokens");
    let n_img_ids = ids.data.iter().filter(|&&t| t == d.image_token).count();
    let total_soft: i64 = soft.iter().sum();
    assert_eq!(
        n_img_ids as i64, total_soft,
        "{case}: soft tokens = image ids in input_ids"
    );
    let s = total_soft as usize;
    // Preprocessor outputs (unpadded, concatenated over images).
    let patches = g.i64("num_patches").data;
    assert_eq!(patches.len(), soft.len());
    let pool2 = (d.pooling * d.pooling) as i64;
    for (p, n) in patches.iter().zip(&soft) {
        assert_eq!(*p, n * pool2, "{case}: patches = soft tokens x pooling^2");
    }
    let p: usize = patches.iter().sum::<i64>() as usize;
    assert_eq!(
        g.shape("pixel_values"),
        vec![p, 3 * d.patch * d.patch],
        "{case}: pixel_values"
    );
    let pv = g.f32("pixel_values");
    assert!(
        pv.data.iter().all(|v| (0.0..=1.0).contains(v)),
        "{case}: pixel values in [0, 1]"
    );
    let pos = g.i64("image_position_ids");
    assert_eq!(pos.shape, vec![p, 2]);
    assert!(
        pos.data.iter().all(|&v| v >= 0),
        "{case}: padding rows must be stripped"
    );
    let max_pos = u(
        &Fixture::open(case).config()["vision_config"]["position_embedding_size"],
        "pes",
    );
    assert!(
        pos.data.iter().all(|&v| (v as usize) < max_pos),
        "{case}: positions < table size"
    );
    // Per image: (x, y) grid row-major, x fastest; the source image exists.
    let mut off = 0usize;
    for (i, &np) in patches.iter().enumerate() {
        let np = np as usize;
        let rows = &pos.data[2 * off..2 * (off + np)];
        let gw = rows.chunks(2).map(|r| r[0]).max().expect("x") as usize + 1;
        let gh = rows.chunks(2).map(|r| r[1]).max().expect("y") as usize + 1;
        assert_eq!(gw * gh, np, "{case}: image {i} grid");
        for (k, r) in rows.chunks(2).enumerate() {
            assert_eq!(
                (r[0] as usize, r[1] as usize),
                (k % gw, k / gw),
                "{case}: image {i} patch {k}"
            );
        }
        let (_, shape) = g.u8(&format!("image_u8.{i}"));
        assert_eq!(shape.len(), 3);
        assert_eq!(shape[2], 3);
        off += np;
    }
    assert!(!g.has(&format!("image_u8.{}", patches.len())));
    assert_eq!(
        g.shape("vision_last_hidden_state"),
        vec![s, d.vision_hidden],
        "{case}"
    );
    assert_eq!(g.shape("image_features"), vec![s, d.hidden], "{case}");
    // Text-only path.
    let tids = g.i64("text_input_ids");
    let lt = tids.shape[0];
    assert_eq!(tids.shape, vec![lt]);
    assert_eq!(tids.data[0], 2, "{case}: text ids start with bos");
    let expect: Vec<i64> = ids
        .data
        .iter()
        .copied()
        .filter(|&t| t != d.image_token && t != d.boi && t != d.eoi)
        .collect();
    assert_eq!(
        tids.data, expect,
        "{case}: text ids = prompt without image blocks"
    );
    assert_eq!(
        g.shape("text_logits"),
        vec![lt, d.vocab],
        "{case}: text_logits"
    );
    // hidden_states.0 at image positions is the image features (scatter, unscaled).
    let h0 = g.f32("hidden_states.0");
    let feats = g.f32("image_features");
    let first = ids
        .data
        .iter()
        .position(|&t| t == d.image_token)
        .expect("image token");
    let got = &h0.data[first * d.hidden..(first + 1) * d.hidden];
    let want = &feats.data[..d.hidden];
    assert!(
        got.iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)),
        "{case}: image features are scattered into hidden_states.0"
    );
}

fn check_text(case: &str, g: &Golden, d: &Dims, window: usize) {
    let ids = g.i64("input_ids");
    let l = ids.shape[0];
    assert!(l > 3 * window, "{case}: {l} tokens, window {window}");
    assert!(!ids.data.contains(&d.image_token));
    check_logits_and_hidden(case, g, d, l);
}

#[test]
fn golden_shapes_match_config() {
    for case in CASES {
        let fx = Fixture::open(case);
        let cfg = fx.config();
        let d = dims(&cfg);
        let g = fx.golden();
        assert_eq!(
            g.meta("transformers"),
            Some("5.24.0"),
            "{case}: transformers version"
        );
        assert!(
            g.meta("torch").is_some_and(|v| v.starts_with("2.15.0")),
            "{case}: torch"
        );
        assert!(g.meta("seed").is_some(), "{case}: seed");
        match fx.json["kind"].as_str() {
            Some("multimodal") => check_multimodal(case, &g, &d),
            Some("text") => check_text(
                case,
                &g,
                &d,
                u(&cfg["text_config"]["sliding_window"], "sliding_window"),
            ),
            k => panic!("{case}: unknown kind {k:?}"),
        }
    }
    // The two-image case really has two images of different aspect ratios.
    let g = Fixture::open("two-images").golden();
    let (_, a) = g.u8("image_u8.0");
    let (_, b) = g.u8("image_u8.1");
    assert!(a[0] * b[1] != a[1] * b[0], "aspect ratios {a:?} {b:?}");
    // The MLX golden records the cross-check against mlx-vlm.
    let g = Fixture::open("mlx-mixed").golden();
    let x: Value =
        serde_json::from_str(g.meta("mlx_vs_transformers").expect("mlx stats")).expect("json");
    assert!(
        x["logits_f32"]["max_abs"].as_f64().expect("max_abs") < 1e-3,
        "{x}"
    );
    assert_eq!(x["logits_f32"]["argmax_agree"].as_f64(), Some(1.0));
}

/// Per-layer head dim from either config form. transformers writes `per_layer_config` keys as
/// zero-padded layer indices when the model has 10+ layers ("05", "11"): parse them as integers.
fn head_dims(tc: &Value) -> Vec<usize> {
    let types = tc["layer_types"].as_array().expect("layer_types");
    let hd = u(&tc["head_dim"], "head_dim");
    let mut per_layer = BTreeMap::new();
    if let Some(m) = tc.get("per_layer_config").and_then(Value::as_object) {
        for (k, v) in m {
            let i: usize = k
                .parse()
                .unwrap_or_else(|e| panic!("per_layer_config key {k:?}: {e}"));
            per_layer.insert(i, u(&v["head_dim"], "per_layer_config head_dim"));
        }
    }
    types
        .iter()
        .enumerate()
        .map(
            |(i, t)| match (per_layer.get(&i), tc.get("global_head_dim")) {
                (Some(&h), _) => h,
                (None, Some(g)) if t == "full_attention" => u(g, "global_head_dim"),
                _ => hd,
            },
        )
        .collect()
}

/// Per-layer KV heads from either config form: `per_layer_config`'s `num_key_value_heads`, else
/// (hub form) `num_global_key_value_heads` on full layers of `attention_k_eq_v` models, else
/// `num_key_value_heads` (transformers' `Gemma4TextConfig.__post_init__`).
fn kv_heads(tc: &Value) -> Vec<usize> {
    let types = tc["layer_types"].as_array().expect("layer_types");
    let nkv = u(&tc["num_key_value_heads"], "num_key_value_heads");
    let keqv = tc["attention_k_eq_v"].as_bool().unwrap_or(false);
    let per_layer: Option<BTreeMap<usize, usize>> = tc
        .get("per_layer_config")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let i: usize = k.parse().expect("per_layer_config key");
                    v.get("num_key_value_heads")
                        .map(|n| (i, u(n, "per_layer_config num_key_value_heads")))
                })
                .collect()
        });
    types
        .iter()
        .enumerate()
        .map(|(i, t)| match &per_layer {
            Some(m) => m.get(&i).copied().unwrap_or(nkv),
            None => match tc.get("num_global_key_value_heads") {
                Some(g) if keqv && t == "full_attention" && !g.is_null() => {
                    u(g, "num_global_key_value_heads")
                }
                _ => nkv,
            },
        })
        .collect()
}

#[test]
fn config_forms_agree() {
    for case in ["e2b-like", "e4b-like", "dense31-like"] {
        let dir = fixtures_dir().join(case);
        let read = |f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).expect("read"))
                .expect("json")
        };
        let hub = read("config.json");
        let tf = read("config.per_layer_config.json");
        assert!(hub["text_config"].get("per_layer_config").is_none());
        assert!(tf["text_config"].get("global_head_dim").is_none());
        assert_eq!(
            head_dims(&hub["text_config"]),
            head_dims(&tf["text_config"]),
            "{case}"
        );
        assert_eq!(
            kv_heads(&hub["text_config"]),
            kv_heads(&tf["text_config"]),
            "{case}"
        );
    }
}

/// The 31B-like case exercises what it is for: k_eq_v full layers with fewer KV heads than the
/// sliding ones, a bidirectional image block longer than the sliding window (so the window and
/// the block overlay interact), a standardized tower with a head dim that is not a power of two,
/// and the block the crate derives from the ids is transformers' (mm_token_type_ids runs).
#[test]
fn dense31_like_covers_the_variant() {
    for case in [
        "dense31-like",
        "dense31-like-mlx",
        "moe26-like",
        "moe26-like-mlx",
    ] {
        let fx = Fixture::open(case);
        let cfg = fx.config();
        let tc = &cfg["text_config"];
        assert_eq!(tc["use_bidirectional_attention"], "vision", "{case}");
        assert_eq!(tc["attention_k_eq_v"], true, "{case}");
        let kv = kv_heads(tc);
        let types = tc["layer_types"].as_array().unwrap();
        let full: Vec<usize> = (0..types.len())
            .filter(|&i| types[i] == "full_attention")
            .collect();
        let sliding: Vec<usize> = (0..types.len())
            .filter(|&i| types[i] != "full_attention")
            .collect();
        assert!(!full.is_empty() && !sliding.is_empty(), "{case}");
        assert!(
            kv[full[0]] < kv[sliding[0]],
            "{case}: full layers have fewer kv heads"
        );
        let vc = &cfg["vision_config"];
        assert_eq!(vc["standardize"], true, "{case}");
        let hd = u(&vc["head_dim"], "vision head_dim");
        assert!(!hd.is_power_of_two(), "{case}: vision head dim {hd}");
        let g = fx.golden();
        let ids: Vec<u32> = g.i64("input_ids").data.iter().map(|&x| x as u32).collect();
        let image_token = u(&cfg["image_token_id"], "image_token_id") as u32;
        let mm = g.i64("mm_token_type_ids").data;
        let blocks = gemma_wgpu::model::media::image_blocks(&ids, image_token);
        let is_vision: Vec<bool> = mm.iter().map(|&t| t == 1 || t == 2).collect();
        let ref_ids = gemma_wgpu::gpu::reference::block_sequence_ids_ref(&is_vision);
        for (b, &(s, e)) in blocks.iter().enumerate() {
            assert!(
                ref_ids[s..e].iter().all(|&x| x == b as i64),
                "{case}: block {b}"
            );
        }
        assert_eq!(
            blocks.iter().map(|(s, e)| e - s).sum::<usize>(),
            is_vision.iter().filter(|&&v| v).count(),
            "{case}: every vision token is in a block"
        );
        let window = u(&tc["sliding_window"], "sliding_window");
        assert!(
            blocks.iter().any(|(s, e)| e - s > window),
            "{case}: an image block longer than the window {window}"
        );
    }
}

/// The MoE fixtures exercise what the MoE kernels must get right: an expert count that is not a
/// multiple of 4, top-k above 1 and below E, an expert width not a multiple of 64, every expert
/// chosen somewhere in every layer (a wrong expert's rows would show), the router golden for
/// every layer and prompt position, and (MLX) the experts quantized with the router at 8 bits.
#[test]
fn moe26_like_covers_the_variant() {
    for case in ["moe26-like", "moe26-like-mlx"] {
        let fx = Fixture::open(case);
        let cfg = fx.config();
        let tc = &cfg["text_config"];
        assert_eq!(tc["enable_moe_block"], true, "{case}");
        let e = u(&tc["num_experts"], "num_experts");
        let k = u(&tc["top_k_experts"], "top_k_experts");
        let i = u(&tc["moe_intermediate_size"], "moe_intermediate_size");
        assert!(
            !e.is_multiple_of(4) && k > 1 && k < e,
            "{case}: {e} experts, top-{k}"
        );
        assert!(!i.is_multiple_of(64), "{case}: expert width {i}");
        let layers = u(&tc["num_hidden_layers"], "num_hidden_layers");
        let g = fx.golden();
        let t = g.i64("input_ids").data.len();
        for l in 0..layers {
            let ids = g.i64(&format!("router.L{l}.ids"));
            assert_eq!(ids.shape, vec![t, k], "{case} layer {l}");
            let mut seen = vec![false; e];
            ids.data.iter().for_each(|&x| seen[x as usize] = true);
            assert!(
                seen.iter().all(|&s| s),
                "{case} layer {l}: some expert never chosen"
            );
            assert_eq!(g.f32(&format!("router.L{l}.weights")).shape, vec![t, k]);
        }
        if case.ends_with("mlx") {
            let q = &cfg["quantization"];
            let router = &q["language_model.model.layers.0.router.proj"];
            assert_eq!(router["bits"], 8, "{case}: router at 8 bits");
            assert_eq!(q["bits"], 4, "{case}: experts at 4 bits");
        }
    }
}

/// Expected checkpoint shapes of the text decoder, from the config (HF names, fp layout).
fn check_text_weights(
    case: &str,
    cfg: &Value,
    w: &BTreeMap<String, (Dtype, Vec<usize>)>,
    mlx: bool,
) {
    let tc = &cfg["text_config"];
    let n = u(&tc["num_hidden_layers"], "layers");
    let h = u(&tc["hidden_size"], "hidden");
    let heads = u(&tc["num_attention_heads"], "heads");
    let kv = u(&tc["num_key_value_heads"], "kv heads");
    let inter = u(&tc["intermediate_size"], "intermediate");
    let ple = u(&tc["hidden_size_per_layer_input"], "ple");
    let vocab = u(&tc["vocab_size"], "vocab");
    let shared = u(&tc["num_kv_shared_layers"], "shared");
    let wide = tc["use_double_wide_mlp"].as_bool().unwrap_or(false);
    let hds = head_dims(tc);
    let q = &cfg["quantization"];
    let prefix = if mlx {
        "language_model.model."
    } else {
        "model.language_model."
    };
    // For MLX, a quantized [out, in] weight is u32 [out, in*bits/32].
    let check = |name: &str, out: usize, inp: usize| {
        let key = format!("{prefix}{name}.weight");
        let (dt, shape) = w
            .get(&key)
            .unwrap_or_else(|| panic!("{case}: missing {key}"));
        let scales = format!("{prefix}{name}.scales");
        if mlx && w.contains_key(&scales) {
            let path = format!("{prefix}{name}");
            let bits = q[&path]["bits"]
                .as_u64()
                .or(q["bits"].as_u64())
                .expect("bits") as usize;
            let group = q[&path]["group_size"]
                .as_u64()
                .or(q["group_size"].as_u64())
                .expect("gs") as usize;
            assert_eq!(*dt, Dtype::U32, "{case}: {key}");
            assert_eq!(
                shape,
                &vec![out, inp * bits / 32],
                "{case}: {key} ({bits}-bit)"
            );
            assert_eq!(w[&scales].1, vec![out, inp / group], "{case}: {scales}");
            assert_eq!(
                w[&format!("{prefix}{name}.biases")].1,
                vec![out, inp / group]
            );
            let mlp = name.contains(".mlp.");
            assert_eq!(bits, if mlp { 8 } else { 4 }, "{case}: {name} bits");
        } else {
            assert!(!mlx, "{case}: {key} should be quantized");
            assert_eq!(shape, &vec![out, inp], "{case}: {key}");
        }
    };
    check("embed_tokens", vocab, h);
    check("embed_tokens_per_layer", vocab, n * ple);
    check("per_layer_model_projection", n * ple, h);
    assert_eq!(hds.len(), n, "{case}: layer_types");
    for (i, &hd) in hds.iter().enumerate() {
        let is_shared = i >= n - shared;
        let mi = if wide && is_shared { 2 * inter } else { inter };
        let l = format!("layers.{i}.");
        check(&format!("{l}self_attn.q_proj"), heads * hd, h);
        check(&format!("{l}self_attn.o_proj"), h, heads * hd);
        let has_kv = w.contains_key(&format!("{prefix}{l}self_attn.k_proj.weight"));
        if is_shared {
            // PTQ fixtures carry redundant K/V; QAT ones do not.
            if has_kv {
                assert_eq!(case, "e2b-like-ptq", "{case}: shared layer {i} has K/V");
            }
        } else {
            assert!(has_kv, "{case}: producer layer {i} lacks k_proj");
        }
        if has_kv {
            check(&format!("{l}self_attn.k_proj"), kv * hd, h);
            check(&format!("{l}self_attn.v_proj"), kv * hd, h);
        }
        check(&format!("{l}mlp.gate_proj"), mi, h);
        check(&format!("{l}mlp.up_proj"), mi, h);
        check(&format!("{l}mlp.down_proj"), h, mi);
        check(&format!("{l}per_layer_input_gate"), ple, h);
        check(&format!("{l}per_layer_projection"), h, ple);
        assert_eq!(w[&format!("{prefix}{l}layer_scalar")].1, vec![1], "{case}");
    }
    // Vision tower: never quantized; every layer has its own K/V (even those >= first shared text layer).
    let vp = if mlx {
        "vision_tower."
    } else {
        "model.vision_tower."
    };
    let vl = u(&cfg["vision_config"]["num_hidden_layers"], "vision layers");
    for j in 0..vl {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let key = format!("{vp}encoder.layers.{j}.self_attn.{p}.linear.weight");
            assert!(w.contains_key(&key), "{case}: missing {key}");
            assert!(
                !w.contains_key(&key.replace(".weight", ".scales")),
                "{case}: {key} quantized"
            );
        }
    }
    let ep = if mlx {
        "embed_vision.embedding_projection"
    } else {
        "model.embed_vision.embedding_projection"
    };
    assert_eq!(
        w.contains_key(&format!("{ep}.scales")),
        mlx,
        "{case}: embed_vision quantized iff MLX"
    );
}

#[test]
fn weights_match_config() {
    for case in ["e2b-like", "e2b-like-ptq", "e4b-like", "mlx-mixed"] {
        let fx = Fixture::open(case);
        let cfg = fx.config();
        let w = weight_shapes(&fx.model_dir);
        let mlx = fx.json["layout"] == "mlx";
        check_text_weights(case, &cfg, &w, mlx);
        let want = if fx.json["weights_dtype"] == "float32" {
            Dtype::F32
        } else {
            Dtype::BF16
        };
        for (name, (dt, _)) in &w {
            if *dt != Dtype::U32 {
                assert_eq!(*dt, want, "{case}: {name}");
            }
        }
    }
    // The e2b-like vision tower has more layers than the first shared text layer index.
    let cfg = Fixture::open("e2b-like").config();
    let tc = &cfg["text_config"];
    let first_shared = u(&tc["num_hidden_layers"], "n") - u(&tc["num_kv_shared_layers"], "s");
    assert!(u(&cfg["vision_config"]["num_hidden_layers"], "vl") > first_shared);
    // The sharded index covers every tensor and names only its shards.
    let dir = fixtures_dir().join("e4b-like");
    let idx: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    let w = weight_shapes(&dir);
    let map = idx["weight_map"].as_object().expect("weight_map");
    assert_eq!(map.len(), w.len());
    assert!(w.keys().all(|k| map.contains_key(k)));
}

/// Gemma 4 resize rule (architecture spec §5), used to check the preprocessing goldens.
fn resize_target(h: usize, w: usize, budget: usize) -> (usize, usize) {
    let (patch, k) = (16usize, 3usize);
    let max_patches = budget * k * k;
    let f = ((max_patches * patch * patch) as f64 / (h * w) as f64).sqrt();
    let side = patch * k;
    let mut th = (f * h as f64 / side as f64).floor() as usize * side;
    let mut tw = (f * w as f64 / side as f64).floor() as usize * side;
    let max_side = (max_patches / (k * k)) * side;
    if th == 0 {
        th = side;
        tw = ((w / h) * side).min(max_side);
    } else if tw == 0 {
        tw = side;
        th = ((h / w) * side).min(max_side);
    }
    (th, tw)
}

#[test]
fn preprocess_golden_consistent() {
    let dir = fixtures_dir().join("preprocess");
    let g = Golden::load(dir.join("golden.safetensors"));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("preprocess.json")).expect("json"))
            .expect("json");
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 15);
    for c in cases {
        let (w, h, b) = (
            u(&c["width"], "w"),
            u(&c["height"], "h"),
            u(&c["budget"], "b"),
        );
        let info = g.i64(&format!("{w}x{h}.{b}.info")).data;
        let (th, tw) = resize_target(h, w, b);
        assert_eq!(
            info,
            vec![
                th as i64,
                tw as i64,
                (th / 16) as i64,
                (tw / 16) as i64,
                (th * tw / 256) as i64,
                (th * tw / 2304) as i64
            ],
            "{w}x{h} at {b}"
        );
        assert!(th * tw / 2304 <= b);
        if let Some(stored) = c.get("stored") {
            assert!(stored.as_array().is_some_and(|s| !s.is_empty()));
            let key = format!("{w}x{h}.{b}");
            let (img, shape) = g.u8(&format!("{key}.resized_u8"));
            assert_eq!(shape, vec![th, tw, 3]);
            // pixel_values = patchify(resized) / 255: patch p = (py, px) row-major, inside (y, x, c).
            let head = g.f32(&format!("{key}.pixel_values_head"));
            let gw = tw / 16;
            for (p, row) in head.data.chunks(768).enumerate() {
                let (py, px) = (p / gw, p % gw);
                for (e, &v) in row.iter().enumerate() {
                    let (y, x, ch) = (e / 48, (e / 3) % 16, e % 3);
                    let b = img[((py * 16 + y) * tw + px * 16 + x) * 3 + ch];
                    assert!(
                        (v - f32::from(b) / 255.0).abs() < 1e-6,
                        "{key} patch {p} elem {e}"
                    );
                }
            }
            let pos = g.i64(&format!("{key}.image_position_ids_head")).data;
            for (p, r) in pos.chunks(2).enumerate() {
                assert_eq!((r[0] as usize, r[1] as usize), (p % gw, p / gw));
            }
        }
    }
    // The synthetic source image follows the documented formula.
    let (src, shape) = g.u8("20x30.source_u8");
    assert_eq!(shape, vec![30, 20, 3]);
    for y in 0..30 {
        for x in 0..20 {
            for c in 0..3 {
                assert_eq!(
                    usize::from(src[(y * 20 + x) * 3 + c]),
                    (x * 7 + y * 13 + c * 29) % 256
                );
            }
        }
    }
}

#[test]
fn tokenizer_fixture_consistent() {
    let dir = fixtures_dir().join("e2b-like");
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).expect("read")).expect("json")
    };
    let tok = read("tokenizer.json");
    let tcfg = read("tokenizer_config.json");
    let cfg = read("config.json");
    let added: BTreeMap<String, i64> = tok["added_tokens"]
        .as_array()
        .expect("added_tokens")
        .iter()
        .map(|t| {
            (
                t["content"].as_str().expect("content").to_string(),
                t["id"].as_i64().expect("id"),
            )
        })
        .collect();
    let id = |s: &str| -> i64 {
        *added
            .get(s)
            .unwrap_or_else(|| panic!("no special token {s}"))
    };
    let tok_id = |k: &str| id(tcfg[k].as_str().expect("token name"));
    assert_eq!(tok_id("pad_token"), 0);
    assert_eq!(tok_id("eos_token"), 1);
    assert_eq!(tok_id("bos_token"), 2);
    assert_eq!(tok_id("unk_token"), 3);
    assert_eq!(
        tok_id("image_token"),
        cfg["image_token_id"].as_i64().expect("image")
    );
    assert_eq!(
        tok_id("boi_token"),
        cfg["boi_token_id"].as_i64().expect("boi")
    );
    assert_eq!(
        tok_id("eoi_token"),
        cfg["eoi_token_id"].as_i64().expect("eoi")
    );
    assert_eq!(
        tok_id("audio_token"),
        cfg["audio_token_id"].as_i64().expect("audio")
    );
    assert_eq!(
        tok_id("boa_token"),
        cfg["boa_token_id"].as_i64().expect("boa")
    );
    assert_eq!(
        tok_id("eoa_token"),
        cfg["eoa_token_index"].as_i64().expect("eoa")
    );
    assert_eq!(
        tok_id("video_token"),
        cfg["video_token_id"].as_i64().expect("video")
    );
    for (name, want) in tcfg["special_token_ids"]
        .as_object()
        .expect("special_token_ids")
    {
        assert_eq!(Some(id(name)), want.as_i64(), "{name}");
    }
    let vocab = tok["model"]["vocab"].as_object().expect("vocab");
    assert_eq!(
        vocab.len() as u64,
        cfg["text_config"]["vocab_size"]
            .as_u64()
            .expect("vocab_size")
    );
    let gcfg = read("generation_config.json");
    let eos: Vec<i64> = gcfg["eos_token_id"]
        .as_array()
        .expect("eos")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(eos, vec![1, tok_id("eot_token"), tok_id("str_token")]);
    let golden = read("tokenizer_golden.json");
    let chat = &golden["chat"][0];
    assert_eq!(
        chat["rendered"].as_str(),
        Some("<bos><|turn>user\n<|image|>Describe this image.<turn|>\n<|turn>model\n")
    );
    let ids: Vec<i64> = chat["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(ids[..2], [2, tok_id("sot_token")]);
    assert!(ids.contains(&tok_id("image_token")));
    let proc = read("processor_config.json");
    assert_eq!(
        proc["image_processor"]["patch_size"],
        cfg["vision_config"]["patch_size"]
    );
    assert_eq!(
        proc["image_processor"]["pooling_kernel_size"],
        cfg["vision_config"]["pooling_kernel_size"]
    );
}

#[test]
fn compare_accepts_the_golden_itself() {
    let g = Fixture::open("e2b-like").golden();
    let want = g.f32("logits");
    let r = compare("logits", &want.data, &want, 1e-4);
    assert_eq!(r.max_abs, 0.0);
    assert_eq!(r.positions, want.shape[0]);
    let mut got = want.data.clone();
    got[5] += 1e-4;
    let r = compare("logits", &got, &want, 1e-3);
    assert!(r.top1_mismatches.is_empty());
}

#[test]
#[should_panic(expected = "golden mismatch")]
fn compare_rejects_a_perturbed_tensor() {
    let want = F32Tensor {
        shape: vec![2, 3],
        data: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    };
    let got = vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.1];
    compare("hidden", &got, &want, 1e-3);
}

#[test]
#[should_panic(expected = "top-1 agreement 1/2")]
fn compare_rejects_a_top1_flip() {
    let want = F32Tensor {
        shape: vec![2, 3],
        data: vec![0.0, 1.0, 0.5, 3.0, 0.0, 2.0],
    };
    // Small absolute error overall but the argmax of position 1 flips... with a loose tolerance
    // the flip is only caught by the top-1 check when the golden margin exceeds the tolerance.
    let got = vec![0.0, 1.0, 0.5, 2.0, 0.0, 2.5];
    compare("logits", &got, &want, 0.2);
}

/// argmax of each row of a [n, v] tensor.
fn argmax_rows(t: &F32Tensor) -> Vec<i64> {
    let v = t.shape[1];
    t.data
        .chunks(v)
        .map(|r| {
            let mut best = 0;
            for (i, x) in r.iter().enumerate() {
                if *x > r[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

/// Issue #14 cases: the 31B-like goldens carry the cached decode logits and a text-only golden.
#[test]
fn dense31_goldens_consistent() {
    for case in ["dense31-like", "dense31-like-mlx"] {
        let fx = Fixture::open(case);
        let g = fx.golden();
        let gl = g.f32("greedy_logits");
        assert_eq!(gl.shape[0], GREEDY, "{case}");
        assert_eq!(
            argmax_rows(&gl),
            g.i64("greedy").data,
            "{case}: greedy = argmax"
        );
        assert!(g.meta("mask_rule").is_some(), "{case}: mask rule recorded");
        assert!(fx.dir.join("image.png").exists(), "{case}: image.png");
        let tc = &fx.config()["text_config"];
        assert_eq!(tc["attention_k_eq_v"], Value::Bool(true));
        assert_eq!(tc["use_bidirectional_attention"], "vision");
        let window = u(&tc["sliding_window"], "sliding_window") as i64;
        let soft = g.i64("num_soft_tokens").data;
        assert!(
            soft.iter().all(|&n| n > window),
            "{case}: image block longer than the window"
        );
    }
    let fx = Fixture::open("dense31-like");
    let cfg = fx.config();
    let d = dims(&cfg);
    let t = Golden::load(fx.dir.join("text_golden.safetensors"));
    let l = t.i64("input_ids").shape[0];
    assert!(l > u(&cfg["text_config"]["sliding_window"], "w"));
    check_logits_and_hidden("dense31-like text", &t, &d, l);
    assert_eq!(argmax_rows(&t.f32("greedy_logits")), t.i64("greedy").data);
}

/// Issue #14 cases: the 12B-like (gemma4_unified) goldens against their configs.
#[test]
fn unified_goldens_consistent() {
    for case in ["unified12-like", "unified12-like-mlx"] {
        let fx = Fixture::open(case);
        let cfg = fx.config();
        assert_eq!(cfg["model_type"], "gemma4_unified", "{case}");
        let t = &cfg["text_config"];
        let v = &cfg["vision_config"];
        let model_patch = u(&v["patch_size"], "patch") * u(&v["pooling_kernel_size"], "pool");
        let d = Dims {
            vocab: u(&t["vocab_size"], "vocab"),
            hidden: u(&t["hidden_size"], "hidden"),
            layers: u(&t["num_hidden_layers"], "layers"),
            vision_hidden: u(&v["mm_embed_dim"], "mm_embed_dim"),
            patch: model_patch,
            pooling: 1,
            image_token: cfg["image_token_id"].as_i64().expect("image_token_id"),
            boi: cfg["boi_token_id"].as_i64().expect("boi"),
            eoi: cfg["eoi_token_id"].as_i64().expect("eoi"),
        };
        let g = fx.golden();
        let ids = g.i64("input_ids");
        let l = ids.shape[0];
        check_logits_and_hidden(case, &g, &d, l);
        let mm = g.i64("mm_token_type_ids").data;
        for (i, (&id, &m)) in ids.data.iter().zip(&mm).enumerate() {
            assert_eq!(
                m,
                i64::from(id == d.image_token),
                "{case}: mm_token_type_ids[{i}]"
            );
        }
        let soft = g.i64("num_soft_tokens").data;
        let s: i64 = soft.iter().sum();
        let n_img = ids.data.iter().filter(|&&x| x == d.image_token).count() as i64;
        assert_eq!(n_img, s, "{case}: image ids = soft tokens");
        let (pv, shape) = g.u8("pixel_values_u8");
        assert_eq!(
            shape,
            vec![s as usize, 3 * model_patch * model_patch],
            "{case}"
        );
        assert_eq!(pv.len(), shape[0] * shape[1]);
        let pos = g.i64("image_position_ids");
        assert_eq!(pos.shape, vec![s as usize, 2]);
        let table = u(&v["mm_posemb_size"], "mm_posemb_size") as i64;
        assert!(
            pos.data.iter().all(|&p| (0..table).contains(&p)),
            "{case}: positions"
        );
        assert_eq!(
            g.shape("vision_last_hidden_state"),
            vec![s as usize, d.vision_hidden]
        );
        assert_eq!(g.shape("image_features"), vec![s as usize, d.hidden]);
        assert_eq!(
            argmax_rows(&g.f32("greedy_logits")),
            g.i64("greedy").data,
            "{case}"
        );
        let images = fx.json["images"].as_array().expect("images");
        assert_eq!(images.len(), soft.len(), "{case}: one PNG per image");
        for f in images {
            assert!(
                fx.dir.join(f.as_str().expect("name")).exists(),
                "{case}: {f}"
            );
        }
        assert!(g.meta("mask_rule").is_some());
    }
    let g = Fixture::open("unified12-like").golden();
    assert_eq!(g.shape("alt_mask_logits"), g.shape("logits"));
    // Preprocessing goldens: pixel values = f32(u8) * f32(1/255) of the patchified resized image.
    let dir = fixtures_dir().join("preprocess-unified");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases.json"))
            .expect("json");
    let g = Golden::load(dir.join("golden.safetensors"));
    let scale = 1.0f32 / 255.0;
    for c in doc["cases"].as_array().expect("cases") {
        let name = c["name"].as_str().expect("name");
        assert!(dir.join(format!("{name}.png")).exists(), "{name}.png");
        let (img, shape) = g.u8(&format!("{name}.resized_u8"));
        let (h, w) = (u(&c["resize_h"], "h"), u(&c["resize_w"], "w"));
        assert_eq!(shape, vec![h, w, 3], "{name}");
        let pv = g.f32(&format!("{name}.pixel_values"));
        let mp = 12;
        let (gh, gw) = (h / mp, w / mp);
        assert_eq!(pv.shape, vec![gh * gw, 3 * mp * mp], "{name}");
        for p in 0..gh * gw {
            let (py, px) = (p / gw, p % gw);
            for (k, got) in pv.data[p * 3 * mp * mp..(p + 1) * 3 * mp * mp]
                .iter()
                .enumerate()
            {
                let (y, x, ch) = (k / (3 * mp), (k / 3) % mp, k % 3);
                let want = f32::from(img[((py * mp + y) * w + px * mp + x) * 3 + ch]) * scale;
                assert_eq!(got.to_bits(), want.to_bits(), "{name}: patch {p} value {k}");
            }
        }
    }
}
