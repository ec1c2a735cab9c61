//! The checkpoint loader on tiny checkpoints written by the test itself (HF and MLX layouts,
//! float and quantized, single file and sharded), plus every broken-input error.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gemma_wgpu::checkpoint::{
    Checkpoint, FloatFormat, LoadError, LoadOptions, PerLayerTable, Role, load,
};
use gemma_wgpu::config::{ConfigError, Gemma4Config};
use gemma_wgpu::gpu::ScaleDType;
use gemma_wgpu::quant::{dequantize_row, quantize_affine_with, words_of};
use safetensors::Dtype;

use common::Rng;

// Tiny model: H 64, 4 text layers [s, f, s, f], 2 KV-shared (first_shared 2), PLE 32,
// vision 4 layers (deeper than the first shared text layer), Hv 64.
const H: usize = 64;
const N: usize = 4;
const P: usize = 32;
const V: usize = 96;
const HV: usize = 64;
const VL: usize = 4;
const POS: usize = 8;

fn config_json(extra: &str) -> String {
    format!(
        r#"{{
  "model_type": "gemma4",
  "text_config": {{
    "hidden_size": {H}, "num_hidden_layers": {N}, "intermediate_size": 128,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "global_head_dim": 64,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "num_kv_shared_layers": 2, "use_double_wide_mlp": true, "hidden_size_per_layer_input": {P},
    "vocab_size": {V}, "vocab_size_per_layer_input": {V}, "sliding_window": 16
  }},
  "vision_config": {{
    "hidden_size": {HV}, "intermediate_size": 128, "num_hidden_layers": {VL},
    "num_attention_heads": 2, "head_dim": 32, "patch_size": 2, "position_embedding_size": {POS},
    "use_clipped_linears": true, "rope_parameters": {{"rope_type": "axial", "rope_theta": 100}}
  }},
  "audio_config": {{"hidden_size": 32}},
  "eos_token_id": [1, 106]{extra}
}}"#
    )
}

/// (canonical-ish HF key, shape, values, quantizable)
struct T {
    key: String,
    shape: Vec<usize>,
    vals: Vec<f32>,
    linear: bool,
}

fn tiny_tensors(with_shared_kv: bool, seed: u64) -> Vec<T> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    let mut add = |key: String, shape: Vec<usize>, linear: bool, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let vals = (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        v.push(T {
            key,
            shape,
            vals,
            linear,
        });
    };
    let t = "model.language_model";
    add(
        format!("{t}.embed_tokens.weight"),
        vec![V, H],
        true,
        &mut rng,
    );
    add(
        format!("{t}.embed_tokens_per_layer.weight"),
        vec![V, N * P],
        true,
        &mut rng,
    );
    add(
        format!("{t}.per_layer_model_projection.weight"),
        vec![N * P, H],
        true,
        &mut rng,
    );
    add(
        format!("{t}.per_layer_projection_norm.weight"),
        vec![P],
        false,
        &mut rng,
    );
    add(format!("{t}.norm.weight"), vec![H], false, &mut rng);
    for i in 0..N {
        let full = i % 2 == 1;
        let hd = if full { 64 } else { 32 };
        let shared = i >= 2;
        let inter = if shared { 256 } else { 128 };
        let l = format!("{t}.layers.{i}");
        for n in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "post_per_layer_input_norm",
        ] {
            add(format!("{l}.{n}.weight"), vec![H], false, &mut rng);
        }
        add(
            format!("{l}.self_attn.q_proj.weight"),
            vec![2 * hd, H],
            true,
            &mut rng,
        );
        if !shared || with_shared_kv {
            add(
                format!("{l}.self_attn.k_proj.weight"),
                vec![hd, H],
                true,
                &mut rng,
            );
            add(
                format!("{l}.self_attn.v_proj.weight"),
                vec![hd, H],
                true,
                &mut rng,
            );
            add(
                format!("{l}.self_attn.k_norm.weight"),
                vec![hd],
                false,
                &mut rng,
            );
        }
        add(
            format!("{l}.self_attn.o_proj.weight"),
            vec![H, 2 * hd],
            true,
            &mut rng,
        );
        add(
            format!("{l}.self_attn.q_norm.weight"),
            vec![hd],
            false,
            &mut rng,
        );
        add(
            format!("{l}.mlp.gate_proj.weight"),
            vec![inter, H],
            true,
            &mut rng,
        );
        add(
            format!("{l}.mlp.up_proj.weight"),
            vec![inter, H],
            true,
            &mut rng,
        );
        add(
            format!("{l}.mlp.down_proj.weight"),
            vec![H, inter],
            true,
            &mut rng,
        );
        add(
            format!("{l}.per_layer_input_gate.weight"),
            vec![P, H],
            true,
            &mut rng,
        );
        add(
            format!("{l}.per_layer_projection.weight"),
            vec![H, P],
            true,
            &mut rng,
        );
        add(format!("{l}.layer_scalar"), vec![1], false, &mut rng);
    }
    let vt = "model.vision_tower";
    add(
        format!("{vt}.patch_embedder.input_proj.weight"),
        vec![HV, 12],
        false,
        &mut rng,
    );
    add(
        format!("{vt}.patch_embedder.position_embedding_table"),
        vec![2, POS, HV],
        false,
        &mut rng,
    );
    for j in 0..VL {
        let l = format!("{vt}.encoder.layers.{j}");
        for n in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            add(format!("{l}.{n}.weight"), vec![HV], false, &mut rng);
        }
        add(
            format!("{l}.self_attn.q_norm.weight"),
            vec![32],
            false,
            &mut rng,
        );
        add(
            format!("{l}.self_attn.k_norm.weight"),
            vec![32],
            false,
            &mut rng,
        );
        for (n, r, c) in [
            ("self_attn.q_proj", 64, HV),
            ("self_attn.k_proj", 64, HV),
            ("self_attn.v_proj", 64, HV),
            ("self_attn.o_proj", HV, 64),
            ("mlp.gate_proj", 128, HV),
            ("mlp.up_proj", 128, HV),
            ("mlp.down_proj", HV, 128),
        ] {
            add(
                format!("{l}.{n}.linear.weight"),
                vec![r, c],
                false,
                &mut rng,
            );
            for b in ["input_min", "input_max", "output_min", "output_max"] {
                add(format!("{l}.{n}.{b}"), vec![], false, &mut rng);
            }
        }
    }
    add(
        "model.embed_vision.embedding_projection.weight".into(),
        vec![H, HV],
        true,
        &mut rng,
    );
    // Tensors every loader ignores or skips.
    add(
        "model.audio_tower.layers.0.ffw.weight".into(),
        vec![4, 4],
        false,
        &mut rng,
    );
    add(
        format!("{t}.layers.0.self_attn.rotary_emb.inv_freq"),
        vec![4],
        false,
        &mut rng,
    );
    v
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}
fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tensor to write: (key, dtype, shape, bytes).
type W = (String, Dtype, Vec<usize>, Vec<u8>);

fn write_st(path: &Path, tensors: &[W]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-wgpu-loader-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hf_writes(ts: &[T], dtype: Dtype) -> Vec<W> {
    ts.iter()
        .map(|t| {
            let b = if dtype == Dtype::BF16 {
                bf16_bytes(&t.vals)
            } else {
                f32_bytes(&t.vals)
            };
            (t.key.clone(), dtype, t.shape.clone(), b)
        })
        .collect()
}

fn write_hf(name: &str, ts: &[T], dtype: Dtype) -> PathBuf {
    let d = tmpdir(name);
    std::fs::write(d.join("config.json"), config_json("")).unwrap();
    write_st(&d.join("model.safetensors"), &hf_writes(ts, dtype));
    d
}

fn mlx_key(hf: &str) -> String {
    if let Some(r) = hf.strip_prefix("model.language_model.") {
        format!("language_model.model.{r}")
    } else {
        hf.strip_prefix("model.").unwrap_or(hf).to_string()
    }
}

fn bits_for(key: &str) -> u32 {
    if key.contains(".mlp.") { 8 } else { 4 }
}

/// MLX copy: text linears + embed_vision quantized (4-bit, MLP 8-bit, group 32, bf16 scales).
/// Returns the directory and the dequantized values of every quantized tensor (HF key → values).
fn write_mlx(name: &str, ts: &[T], with_override: bool) -> (PathBuf, BTreeMap<String, Vec<f32>>) {
    let d = tmpdir(name);
    let mut w = Vec::new();
    let mut deq = BTreeMap::new();
    let mut overrides = String::new();
    for t in ts {
        let mk = mlx_key(&t.key);
        if !t.linear {
            w.push((mk, Dtype::BF16, t.shape.clone(), bf16_bytes(&t.vals)));
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let bits = bits_for(&t.key);
        let q = quantize_affine_with(&t.vals, rows, cols, bits, 32, ScaleDType::BF16);
        let module = mk.strip_suffix(".weight").unwrap().to_string();
        if bits == 8 {
            overrides.push_str(&format!(r#", "{module}": {{"group_size": 32, "bits": 8}}"#));
        }
        let s: Vec<f32> = q
            .scales
            .chunks(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        let b: Vec<f32> = q
            .biases
            .chunks(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        let wpr = cols * bits as usize / 32;
        let ng = cols / 32;
        let mut vals = vec![0f32; rows * cols];
        for r in 0..rows {
            let words = words_of(bytemuck::cast_slice(&q.words[r * wpr..(r + 1) * wpr]));
            dequantize_row(
                &words,
                &s[r * ng..(r + 1) * ng],
                &b[r * ng..(r + 1) * ng],
                bits,
                32,
                &mut vals[r * cols..(r + 1) * cols],
            );
        }
        deq.insert(t.key.clone(), vals);
        w.push((
            format!("{module}.weight"),
            Dtype::U32,
            vec![rows, wpr],
            bytemuck::cast_slice(&q.words).to_vec(),
        ));
        w.push((
            format!("{module}.scales"),
            Dtype::BF16,
            vec![rows, ng],
            q.scales,
        ));
        w.push((
            format!("{module}.biases"),
            Dtype::BF16,
            vec![rows, ng],
            q.biases,
        ));
    }
    if !with_override {
        overrides.clear();
    }
    let quant = format!(
        r#", "quantization": {{"group_size": 32, "bits": 4, "mode": "affine"{overrides}}}"#
    );
    std::fs::write(d.join("config.json"), config_json(&quant)).unwrap();
    write_st(&d.join("model.safetensors"), &w);
    (d, deq)
}

fn ctx() -> Option<gemma_wgpu::gpu::GpuContext> {
    common::gpu()
}

fn read_matrix(ctx: &gemma_wgpu::gpu::GpuContext, m: &gemma_wgpu::gpu::Matrix) -> Vec<u8> {
    let mut out = Vec::new();
    for w in &m.windows {
        out.extend(ctx.read_bytes(&w.data, 0, w.data.size()).unwrap());
        if let Some(sb) = &w.scale_bias {
            out.extend(ctx.read_bytes(sb, 0, sb.size()).unwrap());
        }
    }
    out
}

// (a) ------------------------------------------------------------------------------------------

#[test]
fn redundant_shared_kv_tensors_are_dropped() {
    let with = write_hf("a-with", &tiny_tensors(true, 1), Dtype::BF16);
    // The same model without the redundant tensors of the KV-shared layers 2 and 3.
    let ts_with = tiny_tensors(true, 1);
    let ts_without: Vec<T> = ts_with
        .into_iter()
        .filter(|t| {
            !(t.key.contains("layers.2.self_attn.k")
                || t.key.contains("layers.2.self_attn.v")
                || t.key.contains("layers.3.self_attn.k")
                || t.key.contains("layers.3.self_attn.v"))
                || t.key.contains("vision")
        })
        .collect();
    let without = write_hf("a-without", &ts_without, Dtype::BF16);

    let cw = Checkpoint::open(&with).unwrap();
    let pw = cw.plan().unwrap();
    let co = Checkpoint::open(&without).unwrap();
    let po = co.plan().unwrap();
    assert_eq!(
        pw.weights.report.dropped, 6,
        "2 shared layers x (k_proj, v_proj, k_norm)"
    );
    assert_eq!(po.weights.report.dropped, 0);
    for r in [&pw.weights.report, &po.weights.report] {
        assert!(r.unexpected.is_empty(), "{:?}", r.unexpected);
        assert_eq!(r.audio_skipped, 1);
        assert_eq!(r.ignored, 1);
    }
    assert_eq!(
        pw.roles["model.language_model.layers.3.self_attn.k_proj.weight"],
        Role::DroppedKvShared
    );
    for (i, l) in pw.weights.text.layers.iter().enumerate() {
        assert_eq!(l.self_attn.kv.k_proj().is_some(), i < 2);
        assert_eq!(l.self_attn.kv.v_proj().is_some(), i < 2);
        assert_eq!(l.self_attn.kv.k_norm().is_some(), i < 2);
    }
    // Same tree, same values.
    let mw = pw.weights.matrices();
    let mo = po.weights.matrices();
    assert_eq!(mw.len(), mo.len());
    for ((na, a), (nb, b)) in mw.iter().zip(&mo) {
        assert_eq!(na, nb);
        assert_eq!(a.to_f32(), b.to_f32(), "{na}");
    }
    let Some(ctx) = ctx() else { return };
    let opts = LoadOptions {
        float_format: FloatFormat::F32,
        ..Default::default()
    };
    let gw = load(&ctx, &with, &opts).unwrap();
    let go = load(&ctx, &without, &opts).unwrap();
    assert_eq!(gw.report.bytes_uploaded, go.report.bytes_uploaded);
    assert!(gw.report.bytes_host > 0);
    let (mw, mo) = (gw.matrices(), go.matrices());
    assert_eq!(mw.len(), mo.len());
    for ((na, a), (_, b)) in mw.iter().zip(&mo) {
        assert_eq!(read_matrix(&ctx, a), read_matrix(&ctx, b), "{na}");
    }
    let s = gw.report.to_string();
    assert!(s.contains("6 dropped"), "{s}");
}

// (b) ------------------------------------------------------------------------------------------

#[test]
fn vision_layers_keep_kv_and_clip_bounds() {
    let ts = tiny_tensors(true, 2);
    let d = write_hf("b", &ts, Dtype::F32);
    let plan = Checkpoint::open(&d).unwrap().plan().unwrap();
    let vis = plan.weights.vision.as_ref().unwrap();
    assert_eq!(vis.layers.len(), VL);
    let first_shared = 2;
    assert!(VL > first_shared);
    for (j, l) in vis.layers.iter().enumerate() {
        for (n, cl) in [
            ("q", &l.self_attn.q_proj),
            ("k", &l.self_attn.k_proj),
            ("v", &l.self_attn.v_proj),
            ("o", &l.self_attn.o_proj),
            ("gate", &l.mlp.gate_proj),
            ("up", &l.mlp.up_proj),
            ("down", &l.mlp.down_proj),
        ] {
            assert!(
                cl.input_min.is_some()
                    && cl.input_max.is_some()
                    && cl.output_min.is_some()
                    && cl.output_max.is_some(),
                "vision layer {j} {n}_proj lost clip bounds"
            );
        }
        let key = format!("model.vision_tower.encoder.layers.{j}.self_attn.k_proj.linear.weight");
        assert!(matches!(&plan.roles[&key], Role::Module(_)), "{key}");
        let b = format!("model.vision_tower.encoder.layers.{j}.self_attn.v_proj.output_max");
        assert!(matches!(&plan.roles[&b], Role::Module(_)), "{b}");
    }
    // The bound equals the stored value.
    let want = ts
        .iter()
        .find(|t| t.key == "model.vision_tower.encoder.layers.3.self_attn.k_proj.input_min")
        .unwrap()
        .vals[0];
    assert_eq!(vis.layers[3].self_attn.k_proj.input_min, Some(want));
    assert_eq!(plan.weights.report.dropped, 6);
}

// (c) ------------------------------------------------------------------------------------------

fn hf_from_dequantized(name: &str, ts: &[T], deq: &BTreeMap<String, Vec<f32>>) -> PathBuf {
    let ts2: Vec<T> = ts
        .iter()
        .map(|t| T {
            key: t.key.clone(),
            shape: t.shape.clone(),
            vals: deq.get(&t.key).cloned().unwrap_or_else(|| {
                // Float tensors of the MLX copy are bf16: round the same way.
                t.vals
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_f32())
                    .collect()
            }),
            linear: t.linear,
        })
        .collect();
    write_hf(name, &ts2, Dtype::F32)
}

#[test]
fn mlx_quantized_and_hf_layouts_agree() {
    let ts = tiny_tensors(true, 3);
    let (mlx, deq) = write_mlx("c-mlx", &ts, true);
    let hf = hf_from_dequantized("c-hf", &ts, &deq);
    let pm = Checkpoint::open(&mlx).unwrap().plan().unwrap();
    let ph = Checkpoint::open(&hf).unwrap().plan().unwrap();
    let rm = &pm.weights.report;
    assert!(rm.unexpected.is_empty(), "{:?}", rm.unexpected);
    assert_eq!(
        rm.dropped,
        2 * (3 + 3 + 1),
        "k/v weight+scales+biases and k_norm"
    );
    assert!(
        rm.tensors_by_format["affine8"] == 3 * N,
        "{:?}",
        rm.tensors_by_format
    );
    assert!(rm.tensors_by_format.contains_key("affine4"));
    let (mm, mh) = (pm.weights.matrices(), ph.weights.matrices());
    assert_eq!(mm.len(), mh.len());
    for ((na, a), (nb, b)) in mm.iter().zip(&mh) {
        assert_eq!(na, nb);
        assert_eq!(a.to_f32(), b.to_f32(), "{na}");
    }
    // Dequantized weights are within quantization error of the source.
    let src = &ts
        .iter()
        .find(|t| t.key == "model.language_model.layers.0.mlp.up_proj.weight")
        .unwrap()
        .vals;
    let got = pm.weights.text.layers[0].mlp.dense().up_proj.to_f32();
    let max = src
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max < 2.0 / 255.0, "8-bit error {max}");
    // Norms agree too.
    assert_eq!(
        pm.weights.text.head.norm.data,
        ph.weights.text.head.norm.data
    );

    let Some(ctx) = ctx() else { return };
    let g = load(&ctx, &mlx, &LoadOptions::default()).unwrap();
    assert_eq!(
        g.text.layers[0].mlp.dense().gate_proj.format.bits(),
        Some(8)
    );
    assert_eq!(g.text.layers[0].self_attn.q_proj.format.bits(), Some(4));
    let gh = load(
        &ctx,
        &hf,
        &LoadOptions {
            quantize_on_load: Some((4, 32)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        gh.text.layers[1].mlp.dense().down_proj.format.bits(),
        Some(4)
    );
    assert!(gh.report.uploaded_by_format.contains_key("affine4"));
}

trait Bits {
    fn bits(&self) -> Option<u32>;
}
impl Bits for gemma_wgpu::gpu::WeightFormat {
    fn bits(&self) -> Option<u32> {
        match self {
            gemma_wgpu::gpu::WeightFormat::Affine { bits, .. } => Some(*bits),
            _ => None,
        }
    }
}

// (d) ------------------------------------------------------------------------------------------

#[test]
fn config_head_dim_forms_and_required_fields() {
    let p = Path::new("config.json");
    let a = Gemma4Config::from_json_str(&config_json(""), p).unwrap();
    let per_layer = config_json("").replace(
        r#""global_head_dim": 64,"#,
        r#""per_layer_config": {"1": {"head_dim": 64}, "3": {"head_dim": 64}},"#,
    );
    assert!(per_layer.contains("per_layer_config"));
    let b = Gemma4Config::from_json_str(&per_layer, p).unwrap();
    for i in 0..N {
        assert_eq!(
            a.text_config.layer_head_dim(i),
            b.text_config.layer_head_dim(i)
        );
    }
    let t = &a.text_config;
    assert_eq!(
        (0..N).map(|i| t.layer_head_dim(i)).collect::<Vec<_>>(),
        [32, 64, 32, 64]
    );
    assert_eq!(t.first_shared(), 2);
    assert_eq!(
        (0..N).map(|i| t.is_kv_shared(i)).collect::<Vec<_>>(),
        [false, false, true, true]
    );
    assert_eq!(t.kv_source(2), Some(0));
    assert_eq!(t.kv_source(3), Some(1));
    assert_eq!(t.intermediate(1), 128);
    assert_eq!(t.intermediate(2), 256);
    assert_eq!(t.layer_kv_heads(1), 1);
    assert_eq!(t.rope(1).partial_rotary_factor, 0.25);
    assert_eq!(t.rms_norm_eps, 1e-6);
    assert!(t.tie_word_embeddings);
    assert_eq!(a.eos_token_id.to_vec(), [1, 106]);
    assert!(a.audio_config.is_some());
    let v = a.vision_config.as_ref().unwrap();
    assert_eq!(v.rope_parameters.rope_type, "axial");
    assert_eq!(v.kv_heads(), 2);
    assert!(v.use_clipped_linears);

    // quantization_config alias with a `false` override.
    let q = config_json(
        r#", "quantization_config": {"group_size": 64, "bits": 4, "language_model.model.layers.0.mlp.down_proj": false, "language_model.model.layers.1.mlp.up_proj": {"bits": 8}}"#,
    );
    let c = Gemma4Config::from_json_str(&q, p).unwrap();
    let qc = c.quantization.unwrap();
    assert_eq!(qc.global.bits, 4);
    assert_eq!(qc.overrides.len(), 2);

    // Missing required fields name the field.
    for (field, want) in [
        (r#""hidden_size": 64, "#, "text_config.hidden_size"),
        (
            r#""layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],"#,
            "text_config.layer_types",
        ),
    ] {
        let s = config_json("").replace(field, "");
        match Gemma4Config::from_json_str(&s, p) {
            Err(ConfigError::Malformed { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    let s = config_json("").replace(
        r#""intermediate_size": 128, "num_hidden_layers": 4,"#,
        r#""num_hidden_layers": 4,"#,
    );
    match Gemma4Config::from_json_str(&s, p) {
        Err(e @ ConfigError::Malformed { .. }) => {
            assert!(
                e.to_string().contains("vision_config.intermediate_size"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    // layer_types length must match.
    let s = config_json("").replace(
        r#""num_hidden_layers": 4, "intermediate_size": 128"#,
        r#""num_hidden_layers": 5, "intermediate_size": 128"#,
    );
    assert!(matches!(
        Gemma4Config::from_json_str(&s, p),
        Err(ConfigError::Malformed { .. })
    ));
    // A shared full layer with no earlier full layer to read K/V from.
    let s = config_json("").replace(
        r#"["sliding_attention", "full_attention", "sliding_attention", "full_attention"]"#,
        r#"["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]"#,
    );
    match Gemma4Config::from_json_str(&s, p) {
        Err(e @ ConfigError::Malformed { .. }) => {
            assert!(e.to_string().contains("KV-shared layer 3"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Text-only model type.
    let text_only = r#"{"model_type": "gemma4_text", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1,
        "layer_types": ["sliding_attention", "full_attention"]}"#;
    let c = Gemma4Config::from_json_str(text_only, p).unwrap();
    assert!(c.vision_config.is_none());
    assert_eq!(c.text_config.layer_head_dim(1), 512);
}

// (e) ------------------------------------------------------------------------------------------

fn expect_err(dir: &Path) -> LoadError {
    match Checkpoint::open(dir).and_then(|c| c.plan().map(|_| ())) {
        Ok(()) => panic!("{} loaded but should fail", dir.display()),
        Err(e) => {
            let m = e.to_string();
            assert!(m.len() > 30, "unhelpful message: {m}");
            e
        }
    }
}

fn write_raw(path: &Path, header: &str, data_len: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, b).unwrap();
}

#[test]
fn broken_files_give_typed_errors() {
    let ts = tiny_tensors(false, 4);
    let good = write_hf("e-good", &ts, Dtype::BF16);
    let st = good.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let variant = |name: &str, f: &dyn Fn(&Path)| {
        let d = tmpdir(name);
        std::fs::copy(good.join("config.json"), d.join("config.json")).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
        f(&d);
        d
    };
    // Truncated file: the last tensor ends beyond the data.
    let d = variant("e-trunc", &|d| {
        std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 10]).unwrap()
    });
    assert!(matches!(
        expect_err(&d),
        LoadError::TensorOutOfBounds { .. }
    ));
    let d = variant("e-trunc8", &|d| {
        std::fs::write(d.join("model.safetensors"), &bytes[..5]).unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::CorruptFile { .. }));
    // Header length beyond the file.
    let d = variant("e-hdr", &|d| {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(d.join("model.safetensors"), b).unwrap()
    });
    match expect_err(&d) {
        LoadError::HeaderTooLarge { .. } => {}
        e => panic!("{e:?}"),
    }
    // Header length corrupt inside the file: header JSON cut.
    let d = variant("e-hdr2", &|d| {
        let mut b = bytes.clone();
        let n = u64::from_le_bytes(b[..8].try_into().unwrap());
        b[..8].copy_from_slice(&(n / 2).to_le_bytes());
        std::fs::write(d.join("model.safetensors"), b).unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::CorruptFile { .. }));
    // Offsets outside the data.
    let d = variant("e-oob", &|d| {
        write_raw(
            &d.join("model.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#,
            16,
        )
    });
    assert!(matches!(
        expect_err(&d),
        LoadError::TensorOutOfBounds { .. }
    ));
    // Overlapping tensors.
    let d = variant("e-overlap", &|d| {
        write_raw(
            &d.join("model.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            16,
        )
    });
    assert!(matches!(
        expect_err(&d),
        LoadError::OverlappingTensors { .. }
    ));
    // Shape vs byte length of the dtype.
    let d = variant("e-dsize", &|d| {
        write_raw(
            &d.join("model.safetensors"),
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
            16,
        )
    });
    assert!(matches!(expect_err(&d), LoadError::CorruptFile { .. }));

    let rewrite = |name: &str, f: &dyn Fn(&mut Vec<W>)| {
        let mut w = hf_writes(&ts, Dtype::BF16);
        f(&mut w);
        let d = tmpdir(name);
        std::fs::write(d.join("config.json"), config_json("")).unwrap();
        write_st(&d.join("model.safetensors"), &w);
        d
    };
    // Deleted tensor of a producer layer.
    let d = rewrite("e-del", &|w| {
        w.retain(|t| t.0 != "model.language_model.layers.1.self_attn.k_proj.weight")
    });
    match expect_err(&d) {
        LoadError::MissingTensor {
            key,
            module,
            kv_shared,
        } => {
            assert_eq!(key, "language_model.layers.1.self_attn.k_proj.weight");
            assert_eq!(module, "language_model.layers.1.self_attn.k_proj");
            assert!(!kv_shared);
        }
        e => panic!("{e:?}"),
    }
    // Deleted tensor of a shared layer (q_proj): kv_shared = true in the error.
    let d = rewrite("e-del2", &|w| {
        w.retain(|t| t.0 != "model.language_model.layers.3.self_attn.q_proj.weight")
    });
    let e = expect_err(&d);
    assert!(
        matches!(
            e,
            LoadError::MissingTensor {
                kv_shared: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("KV-shared"));
    // Reshaped tensor.
    let d = rewrite("e-shape", &|w| {
        let t = w
            .iter_mut()
            .find(|t| t.0 == "model.language_model.layers.0.mlp.up_proj.weight")
            .unwrap();
        t.2 = vec![64, 128];
    });
    match expect_err(&d) {
        LoadError::ShapeMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, [128, 64]);
            assert_eq!(found, [64, 128]);
        }
        e => panic!("{e:?}"),
    }
    // Wrong dtype.
    let d = rewrite("e-dtype", &|w| {
        let t = w
            .iter_mut()
            .find(|t| t.0 == "model.language_model.norm.weight")
            .unwrap();
        t.1 = Dtype::I16;
    });
    assert!(matches!(expect_err(&d), LoadError::WrongDtype { .. }));
    // Broken JSON config.
    let d = variant("e-json", &|d| {
        std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::MalformedConfig { .. }));
    // Unsupported model type.
    let d = variant("e-type", &|d| {
        std::fs::write(
            d.join("config.json"),
            config_json("").replace("\"gemma4\"", "\"gemma3n\""),
        )
        .unwrap()
    });
    match expect_err(&d) {
        e @ LoadError::UnsupportedModelType { .. } => assert!(e.to_string().contains("gemma3n")),
        e => panic!("{e:?}"),
    }
    // Missing files.
    let d = variant("e-noconf", &|d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::MissingFile { .. }));
    let d = variant("e-noweights", &|d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::MissingFile { .. }));
    assert!(matches!(
        expect_err(&good.join("nonexistent")),
        LoadError::MissingFile { .. }
    ));
    // Quantization mismatch: 8-bit MLP payloads without the per-module override.
    let (d, _) = write_mlx("e-quant", &ts, false);
    match expect_err(&d) {
        e @ LoadError::QuantizationMismatch { .. } => {
            let m = e.to_string();
            assert!(m.contains("implies 8 bits"), "{m}");
        }
        e => panic!("{e:?}"),
    }
    // Scales present but no quantization block at all.
    let (d, _) = write_mlx("e-quant2", &ts, true);
    std::fs::write(d.join("config.json"), config_json("")).unwrap();
    assert!(matches!(
        expect_err(&d),
        LoadError::QuantizationMismatch { .. }
    ));
    // A shard listed in the index is missing.
    let d = variant("e-shard", &|d| {
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map": {"model.language_model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap()
    });
    assert!(matches!(expect_err(&d), LoadError::MissingFile { .. }));

    // Unexpected extra tensors are a warning, never fatal.
    let d = rewrite("e-extra", &|w| {
        w.push((
            "model.language_model.mystery.weight".into(),
            Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    let p = Checkpoint::open(&d).unwrap().plan().unwrap();
    assert_eq!(
        p.weights.report.unexpected,
        ["model.language_model.mystery.weight"]
    );
    assert_eq!(
        p.roles["model.language_model.mystery.weight"],
        Role::Unexpected
    );
}

// (f) ------------------------------------------------------------------------------------------

#[test]
fn sharded_index_loads_like_one_file() {
    let ts = tiny_tensors(true, 5);
    let single = write_hf("f-single", &ts, Dtype::BF16);
    let d = tmpdir("f-sharded");
    std::fs::write(d.join("config.json"), config_json("")).unwrap();
    let w = hf_writes(&ts, Dtype::BF16);
    let (a, b) = w.split_at(w.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_st(&d.join(names[0]), a);
    write_st(&d.join(names[1]), b);
    let mut map = serde_json::Map::new();
    for (part, name) in [(a, names[0]), (b, names[1])] {
        for t in part {
            map.insert(t.0.clone(), serde_json::Value::String(name.into()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let ps = Checkpoint::open(&single).unwrap().plan().unwrap();
    let pd = Checkpoint::open(&d).unwrap().plan().unwrap();
    assert_eq!(pd.weights.report.files, 2);
    let (ms, md) = (ps.weights.matrices(), pd.weights.matrices());
    assert_eq!(ms.len(), md.len());
    for ((na, x), (_, y)) in ms.iter().zip(&md) {
        assert_eq!(x.to_f32(), y.to_f32(), "{na}");
    }
    let Some(ctx) = ctx() else { return };
    let g = load(&ctx, &d, &LoadOptions::default()).unwrap();
    assert_eq!(g.text.layers.len(), N);
    assert!(g.vision.is_some());
    assert_eq!(g.report.files, 2);
}

// (g) ------------------------------------------------------------------------------------------

#[test]
fn ple_host_gather_matches_dequantized_rows() {
    let ts = tiny_tensors(true, 6);
    let (mlx, deq) = write_mlx("g-mlx", &ts, true);
    let hf = write_hf("g-hf", &ts, Dtype::BF16);
    let ids = [0u32, 5, 95, 5];
    let cols = N * P;
    // Quantized table.
    let pm = Checkpoint::open(&mlx).unwrap().plan().unwrap();
    let Some(PerLayerTable::Host(table)) = pm.weights.text.per_layer_table() else {
        panic!("table not on host")
    };
    assert_eq!((table.rows(), table.cols()), (V, cols));
    let mut out = vec![0f32; ids.len() * cols];
    table.gather(&ids, &mut out).unwrap();
    let want = &deq["model.language_model.embed_tokens_per_layer.weight"];
    for (t, &id) in ids.iter().enumerate() {
        assert_eq!(
            &out[t * cols..(t + 1) * cols],
            &want[id as usize * cols..(id as usize + 1) * cols]
        );
    }
    // Float (bf16) table.
    let ph = Checkpoint::open(&hf).unwrap().plan().unwrap();
    let Some(PerLayerTable::Host(table)) = ph.weights.text.per_layer_table() else {
        panic!("table not on host")
    };
    table.gather(&ids, &mut out).unwrap();
    let src = &ts
        .iter()
        .find(|t| t.key == "model.language_model.embed_tokens_per_layer.weight")
        .unwrap()
        .vals;
    for (t, &id) in ids.iter().enumerate() {
        for k in 0..cols {
            let w = half::bf16::from_f32(src[id as usize * cols + k]).to_f32();
            assert_eq!(out[t * cols + k], w);
        }
    }
    // Errors, not panics.
    assert!(table.gather(&[V as u32], &mut out[..cols]).is_err());
    assert!(table.gather(&ids, &mut out[..cols]).is_err());
    // On the GPU when asked.
    let Some(ctx) = ctx() else { return };
    let g = load(
        &ctx,
        &mlx,
        &LoadOptions {
            per_layer_table_on_gpu: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        g.text.per_layer_table(),
        Some(PerLayerTable::Gpu(_))
    ));
    assert_eq!(g.report.bytes_host, 0);
}

// Clip bounds are dropped when use_clipped_linears is off; a text-only config drops the vision
// tensors; both are counted, never fatal.
#[test]
fn clip_bounds_off_and_text_only_configs() {
    let ts = tiny_tensors(false, 7);
    let d = write_hf("h-noclip", &ts, Dtype::BF16);
    let cfg = config_json(r#", "tie_word_embeddings": true"#)
        .replace(
            r#""use_clipped_linears": true"#,
            r#""use_clipped_linears": false"#,
        )
        .replace(
            r#""sliding_window": 16"#,
            r#""sliding_window": 16, "pad_token_id": null"#,
        );
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let p = Checkpoint::open(&d).unwrap().plan().unwrap();
    let vis = p.weights.vision.as_ref().unwrap();
    assert!(
        vis.layers
            .iter()
            .all(|l| !l.self_attn.q_proj.is_clipped() && !l.mlp.down_proj.is_clipped())
    );
    assert_eq!(p.weights.report.dropped, VL * 7 * 4);
    assert!(p.weights.report.unexpected.is_empty());
    assert_eq!(vis.patch_embedder.position_table.shape, [2, POS, HV]);

    let text_only = r#"{"model_type": "gemma4", "text_config": {
        "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "global_head_dim": 64,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "num_kv_shared_layers": 2, "use_double_wide_mlp": true, "hidden_size_per_layer_input": 32,
        "vocab_size": 96, "vocab_size_per_layer_input": 96}}"#;
    std::fs::write(d.join("config.json"), text_only).unwrap();
    let p = Checkpoint::open(&d).unwrap().plan().unwrap();
    assert!(p.weights.vision.is_none());
    let vision_tensors = 2 + VL * (6 + 7 * 5) + 1;
    assert_eq!(p.weights.report.dropped, vision_tensors);
    assert!(p.weights.report.unexpected.is_empty());
}

// (f) ------------------------------------------------------------------------------------------
// Configs the engine cannot run yet, and nonsensical values, are refused at load with a typed
// error naming the field (instead of loading and answering wrongly).

/// The e2b-like fixture's `config.json` (written by transformers 5.24) with `edit` applied, as
/// the `config.json` of a temp dir that also holds the fixture's weights.
fn fixture_config_with(name: &str, edit: &dyn Fn(&mut serde_json::Value)) -> PathBuf {
    let fixture = common::golden::fixtures_dir().join("e2b-like");
    let text = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let d = tmpdir(name);
    std::fs::write(
        d.join("config.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    d
}

/// Sets `v[path...] = value` (creating objects on the way).
fn set(v: &mut serde_json::Value, path: &[&str], value: serde_json::Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert_with(|| serde_json::json!({}));
    }
    cur.as_object_mut()
        .unwrap()
        .insert(path[path.len() - 1].to_string(), value);
}

#[test]
fn unmodified_fixture_configs_are_accepted() {
    for name in ["e2b-like", "e2b-like-ptq", "e4b-like", "mlx-mixed"] {
        let dir = common::golden::fixtures_dir().join(name);
        for file in ["config.json", "config.per_layer_config.json"] {
            let p = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if let Err(e) = Gemma4Config::from_json_str(&text, &p) {
                panic!("{}: {e}", p.display());
            }
        }
    }
    // attention_k_eq_v runs (the decoder takes V from the raw K projection): not refused.
    let d = fixture_config_with("ok-keqv", &|v| {
        set(v, &["text_config", "attention_k_eq_v"], true.into())
    });
    let c = Gemma4Config::from_dir(&d).unwrap();
    assert!(c.text_config.k_eq_v(2));
    // A null use_bidirectional_attention (the E-series value) is fine.
    let d = fixture_config_with("ok-bidir-null", &|v| {
        set(
            v,
            &["text_config", "use_bidirectional_attention"],
            serde_json::Value::Null,
        )
    });
    Checkpoint::open(&d).unwrap().plan().unwrap();
    // "vision" (12B / 26B / 31B: image blocks bidirectional on sliding layers) is accepted.
    let d = fixture_config_with("ok-bidir-vision", &|v| {
        set(
            v,
            &["text_config", "use_bidirectional_attention"],
            "vision".into(),
        )
    });
    let c = Gemma4Config::from_dir(&d).unwrap();
    assert!(c.text_config.bidirectional_vision());
    Checkpoint::open(&d).unwrap().plan().unwrap();
}

/// A `gemma4_unified` config: its `vision_config` is the embedder's, and absent text fields
/// take the unified text config class's defaults (bidirectional image attention, no PLE, no
/// final softcap), not the E-series ones.
#[test]
fn unified_config_parses_with_its_defaults() {
    use serde_json::json;
    let d = fixture_config_with("unified-defaults", &|v| {
        set(v, &["model_type"], "gemma4_unified".into());
        let t = v["text_config"].as_object_mut().unwrap();
        for k in [
            "use_bidirectional_attention",
            "hidden_size_per_layer_input",
            "final_logit_softcapping",
            "sliding_window",
        ] {
            t.remove(k);
        }
        v["vision_config"] = json!({"patch_size": 4, "pooling_kernel_size": 3,
            "mm_embed_dim": 96, "output_proj_dims": 96, "mm_posemb_size": 64});
    });
    let c = Gemma4Config::from_dir(&d).unwrap();
    assert!(c.vision_config.is_none());
    let e = c.vision_embedder.as_ref().expect("embedder config");
    assert_eq!((e.model_patch_size(), e.patch_values()), (12, 432));
    assert_eq!((e.mm_embed_dim, e.mm_posemb_size), (96, 64));
    assert_eq!((e.rms_norm_eps, e.layer_norm_eps), (1e-6, 1e-5));
    let t = &c.text_config;
    assert!(t.bidirectional_vision());
    assert!(!t.has_ple());
    assert_eq!(t.final_logit_softcapping, None);
    assert_eq!(t.sliding_window, 1024);
    // The E-series keeps its own defaults for the same absent fields.
    let d = fixture_config_with("e-defaults", &|v| {
        let t = v["text_config"].as_object_mut().unwrap();
        t.remove("final_logit_softcapping");
        t.remove("use_bidirectional_attention");
    });
    let c = Gemma4Config::from_dir(&d).unwrap();
    assert_eq!(c.text_config.final_logit_softcapping, Some(30.0));
    assert!(!c.text_config.bidirectional_vision());
    // An embedder whose output width is not the projection's input is malformed.
    let d = fixture_config_with("unified-bad-proj", &|v| {
        set(v, &["model_type"], "gemma4_unified".into());
        v["vision_config"] = json!({"mm_embed_dim": 96, "output_proj_dims": 64});
    });
    match Gemma4Config::from_dir(&d) {
        Err(ConfigError::Malformed { field, .. }) => {
            assert_eq!(field, "vision_config.output_proj_dims")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_configs_are_refused_naming_the_field() {
    use serde_json::json;
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "bidir",
            Box::new(|v| {
                set(
                    v,
                    &["text_config", "use_bidirectional_attention"],
                    "all".into(),
                )
            }),
            "text_config.use_bidirectional_attention",
        ),
        (
            "per-layer-window",
            Box::new(|v| {
                set(
                    v,
                    &["text_config", "per_layer_config"],
                    json!({"03": {"head_dim": 64, "sliding_window": 16}}),
                )
            }),
            "text_config.per_layer_config.03.sliding_window",
        ),
        (
            "bidir-bool",
            Box::new(|v| {
                set(
                    v,
                    &["text_config", "use_bidirectional_attention"],
                    true.into(),
                )
            }),
            "text_config.use_bidirectional_attention",
        ),
        (
            "moe-too-many-experts",
            Box::new(|v| {
                set(v, &["text_config", "enable_moe_block"], true.into());
                set(v, &["text_config", "num_experts"], 1000.into());
                set(v, &["text_config", "top_k_experts"], 8.into());
                set(v, &["text_config", "moe_intermediate_size"], 64.into());
            }),
            "text_config.num_experts",
        ),
        (
            "audio-only",
            Box::new(|v| set(v, &["model_type"], "gemma4_audio".into())),
            "model_type",
        ),
        (
            "assistant",
            Box::new(|v| set(v, &["model_type"], "gemma4_assistant".into())),
            "model_type",
        ),
        (
            "untied",
            Box::new(|v| set(v, &["text_config", "tie_word_embeddings"], false.into())),
            "text_config.tie_word_embeddings",
        ),
        (
            "yarn",
            Box::new(|v| {
                set(
                    v,
                    &[
                        "text_config",
                        "rope_parameters",
                        "full_attention",
                        "rope_type",
                    ],
                    "yarn".into(),
                )
            }),
            "text_config.rope_parameters.full_attention.rope_type",
        ),
        (
            "partial-default",
            Box::new(|v| {
                set(
                    v,
                    &[
                        "text_config",
                        "rope_parameters",
                        "sliding_attention",
                        "partial_rotary_factor",
                    ],
                    json!(0.5),
                )
            }),
            "text_config.rope_parameters.sliding_attention.partial_rotary_factor",
        ),
        (
            "silu",
            Box::new(|v| set(v, &["text_config", "hidden_activation"], "silu".into())),
            "text_config.hidden_activation",
        ),
        (
            "vision-rope",
            Box::new(|v| {
                set(
                    v,
                    &["vision_config", "rope_parameters", "rope_type"],
                    "linear".into(),
                )
            }),
            "vision_config.rope_parameters.rope_type",
        ),
    ];
    for (name, edit, want) in cases {
        let d = fixture_config_with(&format!("refuse-{name}"), &*edit);
        match expect_err(&d) {
            e @ LoadError::UnsupportedConfig { .. } => {
                let LoadError::UnsupportedConfig { field, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(field, want, "{name}");
                let m = e.to_string();
                assert!(m.contains(want) && m.contains("config.json"), "{name}: {m}");
            }
            e => panic!("{name}: {e:?}"),
        }
        // The config alone gives the same refusal.
        match Gemma4Config::from_dir(&d) {
            Err(ConfigError::Unsupported { field, .. }) => assert_eq!(field, want, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn inconsistent_moe_configs_are_refused_naming_the_field() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "moe-without-top-k",
            Box::new(|v| {
                set(v, &["text_config", "enable_moe_block"], true.into());
                set(v, &["text_config", "num_experts"], 128.into());
                set(v, &["text_config", "moe_intermediate_size"], 64.into());
            }),
            "text_config.top_k_experts",
        ),
        (
            "moe-top-k-over-experts",
            Box::new(|v| {
                set(v, &["text_config", "enable_moe_block"], true.into());
                set(v, &["text_config", "num_experts"], 4.into());
                set(v, &["text_config", "top_k_experts"], 5.into());
                set(v, &["text_config", "moe_intermediate_size"], 64.into());
            }),
            "text_config.top_k_experts",
        ),
        (
            "moe-zero-width",
            Box::new(|v| {
                set(v, &["text_config", "enable_moe_block"], true.into());
                set(v, &["text_config", "num_experts"], 4.into());
                set(v, &["text_config", "top_k_experts"], 2.into());
                set(v, &["text_config", "moe_intermediate_size"], 0.into());
            }),
            "text_config.moe_intermediate_size",
        ),
    ];
    for (name, edit, want) in cases {
        let d = fixture_config_with(&format!("bad-{name}"), &*edit);
        match expect_err(&d) {
            LoadError::MalformedConfig { field, .. } => assert_eq!(field, want, "{name}"),
            e => panic!("{name}: {e:?}"),
        }
    }
}

#[test]
fn nonsensical_config_values_are_refused_naming_the_field() {
    use serde_json::json;
    let t = "text_config";
    let vc = "vision_config";
    let cases: Vec<(&str, Vec<&str>, serde_json::Value, &str)> = vec![
        (
            "window",
            vec![t, "sliding_window"],
            json!(0),
            "text_config.sliding_window",
        ),
        (
            "head-dim",
            vec![t, "head_dim"],
            json!(0),
            "text_config.head_dim",
        ),
        (
            "odd-head-dim",
            vec![t, "head_dim"],
            json!(15),
            "text_config.head_dim",
        ),
        (
            "global-head-dim",
            vec![t, "global_head_dim"],
            json!(0),
            "text_config.global_head_dim",
        ),
        (
            "heads",
            vec![t, "num_key_value_heads"],
            json!(3),
            "text_config.num_key_value_heads",
        ),
        (
            "max-pos",
            vec![t, "max_position_embeddings"],
            json!(0),
            "text_config.max_position_embeddings",
        ),
        (
            "layer-types",
            vec![t, "layer_types"],
            json!(["sliding_attention", "full_attention"]),
            "text_config.layer_types",
        ),
        (
            "theta",
            vec![t, "rope_parameters", "sliding_attention", "rope_theta"],
            json!(0.0),
            "text_config.rope_parameters.sliding_attention.rope_theta",
        ),
        (
            "partial",
            vec![
                t,
                "rope_parameters",
                "full_attention",
                "partial_rotary_factor",
            ],
            json!(1.5),
            "text_config.rope_parameters.full_attention.partial_rotary_factor",
        ),
        (
            "eps",
            vec![t, "rms_norm_eps"],
            json!(-1.0),
            "text_config.rms_norm_eps",
        ),
        (
            "softcap",
            vec![t, "final_logit_softcapping"],
            json!(0.0),
            "text_config.final_logit_softcapping",
        ),
        (
            "per-layer",
            vec![t, "per_layer_config"],
            json!({"9": {"head_dim": 64}}),
            "text_config.per_layer_config.9",
        ),
        (
            "ple-vocab",
            vec![t, "vocab_size_per_layer_input"],
            json!(0),
            "text_config.vocab_size_per_layer_input",
        ),
        (
            "patch",
            vec![vc, "patch_size"],
            json!(0),
            "vision_config.patch_size",
        ),
        (
            "pool",
            vec![vc, "pooling_kernel_size"],
            json!(0),
            "vision_config.pooling_kernel_size",
        ),
        (
            "budget",
            vec![vc, "default_output_length"],
            json!(0),
            "vision_config.default_output_length",
        ),
        (
            "v-head-dim",
            vec![vc, "head_dim"],
            json!(6),
            "vision_config.head_dim",
        ),
        (
            "v-kv",
            vec![vc, "num_key_value_heads"],
            json!(3),
            "vision_config.num_key_value_heads",
        ),
        (
            "v-theta",
            vec![vc, "rope_parameters", "rope_theta"],
            json!(-100.0),
            "vision_config.rope_parameters.rope_theta",
        ),
        (
            "q-bits",
            vec!["quantization"],
            json!({"bits": 0, "group_size": 64}),
            "quantization.bits",
        ),
        (
            "q-group",
            vec!["quantization"],
            json!({"bits": 4, "group_size": 0}),
            "quantization.group_size",
        ),
        (
            "q-override",
            vec!["quantization"],
            json!({"bits": 4, "group_size": 64, "language_model.model.layers.0.mlp.up_proj": {"bits": 9}}),
            "quantization.language_model.model.layers.0.mlp.up_proj.bits",
        ),
    ];
    for (name, path, value, want) in cases {
        let d = fixture_config_with(&format!("bad-{name}"), &|v| set(v, &path, value.clone()));
        match expect_err(&d) {
            LoadError::MalformedConfig { field, .. } => assert_eq!(field, want, "{name}"),
            e => panic!("{name}: {e:?}"),
        }
    }
    // A vision hidden size the heads do not divide, with no head_dim to say otherwise.
    let d = fixture_config_with("bad-v-hidden", &|v| {
        v["vision_config"]
            .as_object_mut()
            .unwrap()
            .remove("head_dim");
        set(v, &["vision_config", "hidden_size"], json!(65));
    });
    match expect_err(&d) {
        LoadError::MalformedConfig { field, .. } => assert_eq!(field, "vision_config.hidden_size"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn model_load_refuses_an_unsupported_config() {
    let Some(ctx) = ctx() else { return };
    let d = fixture_config_with("model-refuse", &|v| {
        set(
            v,
            &["text_config", "use_bidirectional_attention"],
            "all".into(),
        )
    });
    let opts = gemma_wgpu::ModelOptions::default();
    match gemma_wgpu::Model::load_with(&ctx, &d, &opts) {
        Err(gemma_wgpu::Error::Load(LoadError::UnsupportedConfig { field, .. })) => {
            assert_eq!(field, "text_config.use_bidirectional_attention")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// The full-attention geometry of k_eq_v models (31B: 16 kv heads of 256 on sliding layers, 4
/// of 512 on full ones) from both config forms: the hub's `global_head_dim` /
/// `num_global_key_value_heads`, and transformers 5.24's `per_layer_config` (keys zero-padded
/// layer indices, `global_*` ignored when it is present; configuration_gemma4.py).
#[test]
fn full_layer_geometry_from_both_config_forms() {
    use serde_json::json;
    let fixture = common::golden::fixtures_dir().join("e2b-like");
    let text = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = Path::new("config.json");
    let parse = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        set(&mut v, &["text_config", "attention_k_eq_v"], true.into());
        set(&mut v, &["text_config", "num_key_value_heads"], 2.into());
        set(
            &mut v,
            &["text_config", "num_global_key_value_heads"],
            1.into(),
        );
        set(&mut v, &["text_config", "global_head_dim"], 64.into());
        edit(&mut v);
        Gemma4Config::from_json_str(&v.to_string(), p).map(|c| c.text_config)
    };
    let geometry = |t: &gemma_wgpu::config::TextConfig| -> Vec<(usize, usize, bool)> {
        (0..t.num_hidden_layers)
            .map(|i| (t.layer_head_dim(i), t.layer_kv_heads(i), t.k_eq_v(i)))
            .collect()
    };
    let hub = parse(&|_| {}).unwrap();
    let want: Vec<(usize, usize, bool)> = hub
        .layer_types
        .iter()
        .map(|t| match t {
            gemma_wgpu::config::LayerType::FullAttention => (64, 1, true),
            gemma_wgpu::config::LayerType::SlidingAttention => (16, 2, false),
        })
        .collect();
    assert_eq!(geometry(&hub), want);
    // per_layer_config form, as transformers writes it for 10+ layers ("02", "05") and with
    // misleading global_* values that it ignores
    let per_layer = parse(&|v| {
        set(
            v,
            &["text_config", "per_layer_config"],
            json!({"02": {"head_dim": 64, "num_key_value_heads": 1},
                   "05": {"head_dim": 64, "num_key_value_heads": 1}}),
        );
        set(v, &["text_config", "global_head_dim"], 32.into());
        set(v, &["text_config", "num_global_key_value_heads"], 2.into());
    })
    .unwrap();
    assert_eq!(geometry(&per_layer), want);
    // the same without the global_* fields
    let per_layer = parse(&|v| {
        set(
            v,
            &["text_config", "per_layer_config"],
            json!({"2": {"head_dim": 64, "num_key_value_heads": 1},
                   "5": {"head_dim": 64, "num_key_value_heads": 1}}),
        );
        let t = v["text_config"].as_object_mut().unwrap();
        t.remove("global_head_dim");
        t.remove("num_global_key_value_heads");
    })
    .unwrap();
    assert_eq!(geometry(&per_layer), want);
    // hub form without k_eq_v: num_global_key_value_heads does not apply
    let no_keqv = parse(&|v| set(v, &["text_config", "attention_k_eq_v"], false.into())).unwrap();
    assert!(
        geometry(&no_keqv)
            .iter()
            .all(|&(_, kv, keqv)| kv == 2 && !keqv)
    );
    // a kv-head count that does not divide the query heads is malformed, per layer
    match parse(&|v| set(v, &["text_config", "num_global_key_value_heads"], 3.into())) {
        Err(ConfigError::Malformed { field, .. }) => {
            assert_eq!(field, "text_config.num_key_value_heads")
        }
        other => panic!("{other:?}"),
    }
    // non-null values other than "vision" are refused naming the field
    for bad in [json!("all"), json!(true), json!("image")] {
        match parse(&|v| {
            set(
                v,
                &["text_config", "use_bidirectional_attention"],
                bad.clone(),
            )
        }) {
            Err(ConfigError::Unsupported { field, .. }) => {
                assert_eq!(field, "text_config.use_bidirectional_attention")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let vision = parse(&|v| {
        set(
            v,
            &["text_config", "use_bidirectional_attention"],
            "vision".into(),
        )
    })
    .unwrap();
    assert!(vision.bidirectional_vision() && !hub.bidirectional_vision());
}

/// The unified model's checkpoint (unified12-probe): both key layouts of the embedder load to
/// the same tree, and a wrong shape or a missing tensor is a typed error naming the key.
#[test]
fn unified_embedder_keys_and_errors() {
    let src = common::golden::fixtures_dir().join("unified12-probe");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let stored: Vec<W> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let with = |name: &str, edit: &dyn Fn(&mut Vec<W>)| -> PathBuf {
        let d = tmpdir(name);
        std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
        let mut t = stored.clone();
        edit(&mut t);
        write_st(&d.join("model.safetensors"), &t);
        d
    };
    // The hub layout as stored.
    let plan = Checkpoint::open(&src).unwrap().plan().unwrap();
    let e = plan.weights.embedder.as_ref().expect("embedder weights");
    assert!(plan.weights.vision.is_none());
    assert_eq!((e.patch_dense.rows, e.patch_dense.cols), (48, 432));
    assert_eq!(e.pos_embedding.shape, vec![64, 2, 48]);
    assert_eq!(
        plan.keys_of("vision_embedder.patch_ln1"),
        vec![
            "model.vision_embedder.patch_ln1.bias",
            "model.vision_embedder.patch_ln1.weight"
        ]
    );
    assert!(plan.roles.values().all(|r| !matches!(r, Role::Unexpected)));
    // transformers' module names (everything under embed_vision) load to the same tree.
    let d = with("unified-tf-names", &|t| {
        for w in t.iter_mut() {
            w.0 =
                w.0.replace("model.vision_embedder.", "model.embed_vision.")
                    .replace(
                        "model.embed_vision.embedding_projection",
                        "model.embed_vision.multimodal_embedder.embedding_projection",
                    );
        }
    });
    let p2 = Checkpoint::open(&d).unwrap().plan().unwrap();
    let e2 = p2.weights.embedder.as_ref().unwrap();
    assert_eq!(e2.pos_embedding.data, e.pos_embedding.data);
    assert_eq!(e2.patch_ln2.bias.data, e.patch_ln2.bias.data);
    assert!(p2.roles.values().all(|r| !matches!(r, Role::Unexpected)));
    // A wrong table shape and a missing bias are typed errors naming the key.
    let d = with("unified-bad-pos", &|t| {
        let w = t
            .iter_mut()
            .find(|w| w.0 == "model.vision_embedder.pos_embedding")
            .unwrap();
        w.2 = vec![32, 4, 48];
    });
    match Checkpoint::open(&d).unwrap().plan() {
        Err(LoadError::ShapeMismatch { key, expected, .. }) => {
            assert_eq!(key, "model.vision_embedder.pos_embedding");
            assert_eq!(expected, vec![64, 2, 48]);
        }
        other => panic!("{other:?}"),
    }
    let d = with("unified-no-bias", &|t| {
        t.retain(|w| w.0 != "model.vision_embedder.patch_dense.bias")
    });
    match Checkpoint::open(&d).unwrap().plan() {
        Err(LoadError::MissingTensor { key, .. }) => {
            assert_eq!(key, "vision_embedder.patch_dense.bias")
        }
        other => panic!("{other:?}"),
    }
}

/// The MoE checkpoints (moe26-like HF, moe26-like-mlx): every tensor is claimed (router,
/// stacked experts of both layouts, the three extra norms), the stacked experts become one matrix
/// of E·rows rows each, and a wrong stacked shape, a wrong expert count in the scales, or a
/// missing expert tensor is a typed error naming the stored key.
#[test]
fn moe_expert_keys_and_errors() {
    use gemma_wgpu::model::text::ExpertWeights;
    for case in ["moe26-like", "moe26-like-mlx"] {
        let src = common::golden::fixtures_dir().join(case);
        let plan = Checkpoint::open(&src).unwrap().plan().unwrap();
        assert!(
            plan.roles.values().all(|r| !matches!(r, Role::Unexpected)),
            "{case}: unclaimed tensors"
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        let tc = &cfg["text_config"];
        let n = |k: &str| tc[k].as_u64().unwrap() as usize;
        let (e, i, h) = (
            n("num_experts"),
            n("moe_intermediate_size"),
            n("hidden_size"),
        );
        for layer in &plan.weights.text.layers {
            let moe = layer.mlp.moe().expect("every layer is an MoE layer");
            match (&moe.experts, case.ends_with("mlx")) {
                (ExpertWeights::GateUp { gate_up, down }, false) => {
                    assert_eq!((gate_up.rows, gate_up.cols), (e * 2 * i, h));
                    assert_eq!((down.rows, down.cols), (e * h, i));
                    assert_eq!(gate_up.rows_per_expert, Some(2 * i));
                }
                (ExpertWeights::Split { gate, up, down }, true) => {
                    assert_eq!((gate.rows, up.rows, down.rows), (e * i, e * i, e * h));
                    assert!(gate.quant.is_some() && down.quant.is_some());
                    assert_eq!(down.rows_per_expert, Some(h));
                }
                (_, mlx) => panic!("{case}: wrong expert layout (mlx {mlx})"),
            }
            assert_eq!((moe.router.proj.rows, moe.router.proj.cols), (e, h));
        }
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let stored: Vec<W> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        let with = |name: &str, edit: &dyn Fn(&mut Vec<W>)| -> PathBuf {
            let d = tmpdir(name);
            std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
            let mut t = stored.clone();
            edit(&mut t);
            write_st(&d.join("model.safetensors"), &t);
            d
        };
        let key = if case.ends_with("mlx") {
            "language_model.model.layers.2.experts.switch_glu.up_proj.scales"
        } else {
            "model.language_model.layers.2.experts.down_proj"
        };
        // one expert fewer in one stacked tensor: its bytes shrink with it
        let d = with(&format!("{case}-bad-experts"), &|t| {
            let w = t.iter_mut().find(|w| w.0 == key).unwrap();
            let per = w.3.len() / w.2[0];
            w.2[0] -= 1;
            w.3.truncate(per * w.2[0]);
        });
        match Checkpoint::open(&d).unwrap().plan() {
            Err(LoadError::ShapeMismatch {
                key: k,
                expected,
                found,
            }) => {
                assert_eq!(k, key, "{case}");
                assert_eq!(
                    expected[0], e,
                    "{case}: expected {expected:?} found {found:?}"
                );
            }
            other => panic!("{case}: {other:?}"),
        }
        let missing = if case.ends_with("mlx") {
            "language_model.model.layers.1.experts.switch_glu.gate_proj.weight"
        } else {
            "model.language_model.layers.1.experts.gate_up_proj"
        };
        let d = with(&format!("{case}-missing"), &|t| {
            t.retain(|w| w.0 != missing)
        });
        match Checkpoint::open(&d).unwrap().plan() {
            Err(LoadError::MissingTensor { key, .. }) => {
                assert!(key.contains("layers.1.experts"), "{case}: {key}")
            }
            other => panic!("{case}: {other:?}"),
        }
    }
}

/// Quantize-on-load of the bf16 MoE checkpoint quantizes the experts too (both stacked halves
/// and the down projections, expert-aligned windows kept), and the 8-bit model still predicts
/// the reference's top-1 tokens (a sanity check, not parity: the rounding of the router moves
/// near-tied routes to another expert, which moves those positions' logits by up to ~0.6 on
/// this random model; the quantized expert kernels themselves are checked at 4.6e-5 on the MLX
/// fixture's dequantized weights).
#[test]
fn quantize_on_load_quantizes_the_experts() {
    use gemma_wgpu::model::ModelOptions;
    use gemma_wgpu::model::text::ExpertWeights;
    let Some(ctx) = ctx() else { return };
    let fx = common::golden::Fixture::open("moe26-like");
    let mut opts = ModelOptions::default();
    opts.load.quantize_on_load = Some((8, 32));
    let model = gemma_wgpu::model::Model::load_with(&ctx, &fx.model_dir, &opts).unwrap();
    for layer in &model.text().weights().layers {
        let moe = layer.mlp.moe().unwrap();
        let ExpertWeights::GateUp { gate_up, down } = &moe.experts else {
            panic!("HF layout");
        };
        for m in [gate_up, down, &moe.router.proj, &moe.mlp.gate_proj] {
            assert_eq!(m.format.bits(), Some(8), "{:?}", m.format);
        }
    }
    let g = fx.golden();
    let prompt: Vec<u32> = g
        .i64("text_input_ids")
        .data
        .iter()
        .map(|&x| x as u32)
        .collect();
    let out = model.logits_and_greedy(&prompt, &[], 0).unwrap();
    let want = g.f32("text_logits");
    let vocab = out.vocab;
    let mut agree = 0;
    let mut max_abs = 0f32;
    for (row, w) in out.logits.chunks(vocab).zip(want.data.chunks(vocab)) {
        let am = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        agree += usize::from(am(row) == am(w));
        for (a, b) in row.iter().zip(w) {
            max_abs = max_abs.max((a - b).abs());
        }
    }
    let rows = prompt.len();
    // how many routing slots the rounding moved (the text golden has the router's choices)
    let tg = common::golden::Golden::load(fx.dir.join(fx.json["text_golden"].as_str().unwrap()));
    let tprompt: Vec<u32> = tg.i64("input_ids").data.iter().map(|&x| x as u32).collect();
    let moved: usize = model
        .router_trace(&tprompt, &[])
        .unwrap()
        .iter()
        .enumerate()
        .map(|(l, (ids, _))| {
            let want = tg.i64(&format!("router.L{l}.ids")).data;
            ids.iter()
                .zip(&want)
                .filter(|(a, b)| i64::from(**a) != **b)
                .count()
        })
        .sum();
    eprintln!("routing slots moved by the 8-bit rounding: {moved}");
    eprintln!(
        "moe26-like quantized on load to 8 bits: top-1 {agree}/{rows}, max |Δlogits| {max_abs}"
    );
    assert!(agree * 10 >= rows * 9, "top-1 {agree}/{rows}");
    assert!(out.logits.iter().all(|v| v.is_finite()));
}

// (h) checkpoint faults: files changed under the mapping, index/shard disagreements, the HF
// cache (interrupted downloads, revisions) -------------------------------------------------------

/// Sets the modification time of `p` an hour back (a download finished earlier), so that a
/// rewrite in the test changes it even on file systems with coarse timestamps.
fn age(p: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
}

fn truncate(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn expect_changed(r: Result<impl std::fmt::Debug, LoadError>, file: &Path, what: &str) {
    match r {
        Err(e @ LoadError::FileChanged { .. }) => {
            let m = e.to_string();
            let LoadError::FileChanged { path, reason } = e else {
                unreachable!()
            };
            assert_eq!(path, file);
            assert!(reason.contains(what), "{reason}");
            assert!(m.contains("do not modify"), "{m}");
        }
        other => panic!("expected FileChanged for {}: {other:?}", file.display()),
    }
}

#[test]
fn checkpoint_truncated_after_open_is_an_error_not_a_fault() {
    // Reading a page of a truncated mapping raises SIGBUS: this test would kill the whole test
    // binary if the loader touched the mapping before checking the file.
    let ts = tiny_tensors(false, 21);
    let d = write_hf("h-trunc", &ts, Dtype::BF16);
    let st = d.join("model.safetensors");
    age(&st);
    let ck = Checkpoint::open(&d).unwrap();
    let len = std::fs::metadata(&st).unwrap().len();
    truncate(&st, len / 2);
    expect_changed(ck.plan().map(|_| ()), &st, "bytes");
    if let Some(ctx) = ctx() {
        expect_changed(
            ck.upload(&ctx, &LoadOptions::default()).map(|_| ()),
            &st,
            "bytes",
        );
    }
    // Truncated to nothing: still an error.
    truncate(&st, 0);
    expect_changed(ck.plan().map(|_| ()), &st, "0 now");
}

/// A sharded copy: the text MLP matrices in `matrices.safetensors`, everything else in
/// `rest.safetensors` (the matrices are read only by the upload, never by the plan).
fn write_matrix_shard(name: &str, ts: &[T]) -> (PathBuf, PathBuf) {
    let d = tmpdir(name);
    std::fs::write(d.join("config.json"), config_json("")).unwrap();
    let w = hf_writes(ts, Dtype::BF16);
    let (m, r): (Vec<W>, Vec<W>) = w
        .into_iter()
        .partition(|t| t.0.starts_with("model.language_model.layers.") && t.0.contains(".mlp."));
    assert!(!m.is_empty() && !r.is_empty());
    write_st(&d.join("matrices.safetensors"), &m);
    write_st(&d.join("rest.safetensors"), &r);
    let mut map = serde_json::Map::new();
    for (part, f) in [(&m, "matrices.safetensors"), (&r, "rest.safetensors")] {
        for t in part {
            map.insert(t.0.clone(), f.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let p = d.join("matrices.safetensors");
    (d, p)
}

#[test]
fn shard_truncated_between_plan_and_upload_is_an_error_not_a_fault() {
    let ts = tiny_tensors(false, 22);
    let (d, shard) = write_matrix_shard("h-shard", &ts);
    age(&shard);
    let ck = Checkpoint::open(&d).unwrap();
    let len = std::fs::metadata(&shard).unwrap().len();
    truncate(&shard, len - 4096.min(len / 2));
    // The plan validates shapes only: no page of the matrices' shard is read.
    let plan = ck.plan().unwrap();
    // Each leaf checks its file before reading it.
    let m = plan
        .weights
        .matrices()
        .into_iter()
        .find(|(n, _)| n.contains(".mlp."))
        .unwrap();
    expect_changed(m.1.verify(), &shard, "bytes");
    // The upload's matrices come from the truncated shard: refused before they are read.
    if let Some(ctx) = ctx() {
        expect_changed(
            ck.upload(&ctx, &LoadOptions::default()).map(|_| ()),
            &shard,
            "bytes",
        );
    }
}

#[test]
fn checkpoint_replaced_or_rewritten_after_open_is_an_error() {
    let ts = tiny_tensors(false, 23);
    let other = write_hf("h-other", &tiny_tensors(false, 24), Dtype::BF16);
    // Replaced: another file renamed over it (how a re-download lands).
    let d = write_hf("h-replace", &ts, Dtype::BF16);
    let st = d.join("model.safetensors");
    let ck = Checkpoint::open(&d).unwrap();
    let tmp = d.join("model.safetensors.tmp");
    std::fs::copy(other.join("model.safetensors"), &tmp).unwrap();
    std::fs::rename(&tmp, &st).unwrap();
    expect_changed(ck.plan().map(|_| ()), &st, "replaced");
    // Rewritten in place with the same length.
    let d = write_hf("h-rewrite", &ts, Dtype::BF16);
    let st = d.join("model.safetensors");
    age(&st);
    let ck = Checkpoint::open(&d).unwrap();
    let mut b = std::fs::read(&st).unwrap();
    let n = b.len();
    b[n - 64..].iter_mut().for_each(|x| *x ^= 0x5a);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
        f.write_all(&b).unwrap();
    }
    assert_eq!(std::fs::metadata(&st).unwrap().len() as usize, n);
    expect_changed(ck.plan().map(|_| ()), &st, "written to");
    // Deleted.
    let d = write_hf("h-delete", &ts, Dtype::BF16);
    let st = d.join("model.safetensors");
    let ck = Checkpoint::open(&d).unwrap();
    std::fs::remove_file(&st).unwrap();
    expect_changed(ck.plan().map(|_| ()), &st, "deleted");
    // Unchanged: loads.
    let ck = Checkpoint::open(&other).unwrap();
    ck.plan().unwrap();
}

#[test]
fn ple_host_gather_after_truncation_is_an_error_not_a_fault() {
    let ts = tiny_tensors(true, 25);
    let d = write_hf("h-ple", &ts, Dtype::BF16);
    let st = d.join("model.safetensors");
    age(&st);
    let plan = Checkpoint::open(&d).unwrap().plan().unwrap();
    let Some(PerLayerTable::Host(table)) = plan.weights.text.per_layer_table() else {
        panic!("table not on host")
    };
    let mut out = vec![0f32; table.cols()];
    table.gather(&[V as u32 - 1], &mut out).unwrap();
    truncate(&st, 64);
    match table.gather(&[V as u32 - 1], &mut out) {
        Err(gemma_wgpu::Error::Load(LoadError::FileChanged { path, .. })) => assert_eq!(path, st),
        other => panic!("{other:?}"),
    }
}

/// The tiny checkpoint in two shards `a.safetensors` (first half of the tensors) and
/// `b.safetensors`; `index` builds the index JSON text from the (key, shard) pairs.
fn write_two_shards(
    name: &str,
    edit: &dyn Fn(&mut Vec<W>, &mut Vec<W>),
    index: &dyn Fn(&[W], &[W]) -> String,
) -> PathBuf {
    let d = tmpdir(name);
    std::fs::write(d.join("config.json"), config_json("")).unwrap();
    let w = hf_writes(&tiny_tensors(false, 26), Dtype::BF16);
    let (a, b) = w.split_at(w.len() / 2);
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    edit(&mut a, &mut b);
    write_st(&d.join("a.safetensors"), &a);
    write_st(&d.join("b.safetensors"), &b);
    std::fs::write(d.join("model.safetensors.index.json"), index(&a, &b)).unwrap();
    d
}

/// `{"weight_map": {...}}` from explicit entries, in order, duplicates kept.
fn index_json(entries: &[(String, String)]) -> String {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, f)| format!("{}: {}", serde_json::json!(k), serde_json::json!(f)))
        .collect();
    format!(
        "{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{}}}}}",
        body.join(", ")
    )
}

fn entries(a: &[W], fa: &str, b: &[W], fb: &str) -> Vec<(String, String)> {
    a.iter()
        .map(|t| (t.0.clone(), fa.to_string()))
        .chain(b.iter().map(|t| (t.0.clone(), fb.to_string())))
        .collect()
}

#[test]
fn index_and_shards_that_disagree_give_typed_errors() {
    let plain = |a: &[W], b: &[W]| index_json(&entries(a, "a.safetensors", b, "b.safetensors"));
    // Consistent: loads, and `./` spellings used throughout are the same files.
    let d = write_two_shards("h-idx-ok", &|_, _| {}, &plain);
    assert_eq!(expect_ok(&d), 2);
    let d = write_two_shards("h-idx-dot", &|_, _| {}, &|a, b| {
        index_json(&entries(a, "./a.safetensors", b, "./b.safetensors"))
    });
    assert_eq!(expect_ok(&d), 2);
    let index_of = |d: &Path| d.join("model.safetensors.index.json");

    // The same key stored in both shards.
    let d = write_two_shards("h-idx-dup", &|a, b| b.push(a[0].clone()), &|a, b| {
        index_json(&entries(
            a,
            "a.safetensors",
            &b[..b.len() - 1],
            "b.safetensors",
        ))
    });
    let key = hf_writes(&tiny_tensors(false, 26), Dtype::BF16)[0]
        .0
        .clone();
    match expect_err(&d) {
        LoadError::DuplicateTensor {
            key: k,
            first,
            second,
        } => {
            assert_eq!(k, key);
            assert_eq!(first, d.join("a.safetensors"));
            assert_eq!(second, d.join("b.safetensors"));
        }
        e => panic!("{e:?}"),
    }
    // The index lists one key twice (under two shards).
    let d = write_two_shards("h-idx-twice", &|_, _| {}, &|a, b| {
        let mut e = entries(a, "a.safetensors", b, "b.safetensors");
        e.push((a[0].0.clone(), "b.safetensors".into()));
        index_json(&e)
    });
    match expect_err(&d) {
        LoadError::IndexMismatch {
            index,
            key: k,
            shards,
            reason,
        } => {
            assert_eq!(index, index_of(&d));
            assert_eq!(k, key);
            assert_eq!(shards, [d.join("a.safetensors"), d.join("b.safetensors")]);
            assert!(reason.contains("twice"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // One shard under two spellings.
    let d = write_two_shards("h-idx-spell", &|_, _| {}, &|a, b| {
        let mut e = entries(a, "a.safetensors", b, "b.safetensors");
        e[1].1 = "./a.safetensors".into();
        index_json(&e)
    });
    match expect_err(&d) {
        LoadError::IndexMismatch {
            key: k,
            shards,
            reason,
            ..
        } => {
            assert_eq!(k, hf_writes(&tiny_tensors(false, 26), Dtype::BF16)[1].0);
            assert_eq!(shards, [d.join("a.safetensors")]);
            assert!(reason.contains("two spellings"), "{reason}");
            assert!(reason.contains("\"./a.safetensors\""), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // A key mapped to the shard that does not hold it (the other one does).
    let d = write_two_shards("h-idx-wrong", &|_, _| {}, &|a, b| {
        let mut e = entries(a, "a.safetensors", b, "b.safetensors");
        e[0].1 = "b.safetensors".into();
        index_json(&e)
    });
    match expect_err(&d) {
        LoadError::IndexMismatch {
            key: k,
            shards,
            reason,
            ..
        } => {
            assert_eq!(k, key);
            assert_eq!(shards, [d.join("b.safetensors"), d.join("a.safetensors")]);
            assert!(reason.contains("does not hold it"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // A key mapped to a shard, held by none.
    let d = write_two_shards("h-idx-none", &|_, _| {}, &|a, b| {
        let mut e = entries(a, "a.safetensors", b, "b.safetensors");
        e.push((
            "model.language_model.ghost.weight".into(),
            "a.safetensors".into(),
        ));
        index_json(&e)
    });
    match expect_err(&d) {
        LoadError::IndexMismatch {
            key: k,
            shards,
            reason,
            ..
        } => {
            assert_eq!(k, "model.language_model.ghost.weight");
            assert_eq!(shards, [d.join("a.safetensors")]);
            assert!(reason.contains("no shard"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // A shard tensor the index does not list.
    let d = write_two_shards("h-idx-unlisted", &|_, _| {}, &|a, b| {
        index_json(&entries(a, "a.safetensors", &b[1..], "b.safetensors"))
    });
    let unlisted = hf_writes(&tiny_tensors(false, 26), Dtype::BF16);
    let unlisted = &unlisted[unlisted.len() / 2].0;
    match expect_err(&d) {
        LoadError::IndexMismatch {
            key: k,
            shards,
            reason,
            ..
        } => {
            assert_eq!(&k, unlisted);
            assert_eq!(shards, [d.join("b.safetensors")]);
            assert!(reason.contains("does not list"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    // A shard missing from the directory.
    let d = write_two_shards("h-idx-missing", &|_, _| {}, &plain);
    std::fs::remove_file(d.join("b.safetensors")).unwrap();
    match expect_err(&d) {
        LoadError::MissingFile { path, hint } => {
            assert_eq!(path, d.join("b.safetensors"));
            assert!(hint.contains("re-download"), "{hint}");
        }
        e => panic!("{e:?}"),
    }
    // Two shard names that are one file.
    #[cfg(unix)]
    {
        let d = write_two_shards("h-idx-link", &|_, _| {}, &plain);
        std::fs::remove_file(d.join("b.safetensors")).unwrap();
        std::os::unix::fs::symlink(d.join("a.safetensors"), d.join("b.safetensors")).unwrap();
        match expect_err(&d) {
            LoadError::DuplicateShard { first, second } => {
                assert_eq!(first, d.join("a.safetensors"));
                assert_eq!(second, d.join("b.safetensors"));
            }
            e => panic!("{e:?}"),
        }
    }
}

fn expect_ok(d: &Path) -> usize {
    let p = Checkpoint::open(d).unwrap().plan().unwrap();
    p.weights.report.files
}

const CACHED: &str = "gemma-4-E2B-it-qat-4bit";
const CACHED_REPO: &str = "mlx-community/gemma-4-E2B-it-qat-4bit";
const SHA_A: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf00010203";
const SHA_B: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf00010203";

/// Puts the files of checkpoint folder `src` into the fake Hugging Face cache `root` as repo
/// `repo` at commit `sha` the way hf-hub does (blobs, snapshot links `../../blobs/{blob}`),
/// with `refs/{name}` naming the commit when given. Returns the snapshot folder.
#[cfg(unix)]
fn cache_put(root: &Path, repo: &str, src: &Path, sha: &str, refname: Option<&str>) -> PathBuf {
    let rd = root.join(format!("models--{}", repo.replace('/', "--")));
    let (blobs, snap) = (rd.join("blobs"), rd.join("snapshots").join(sha));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for (i, n) in names.iter().enumerate() {
        let blob = format!("{}{i:04x}", &sha[..12]);
        std::fs::copy(src.join(n), blobs.join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(n)).unwrap();
    }
    if let Some(r) = refname {
        std::fs::create_dir_all(rd.join("refs")).unwrap();
        std::fs::write(rd.join("refs").join(r), sha).unwrap();
    }
    snap
}

/// The blob a snapshot link points to.
fn blob_of(link: &Path) -> PathBuf {
    let t = std::fs::read_link(link).unwrap();
    let blob = t.file_name().unwrap();
    link.parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("blobs")
        .join(blob)
}

#[cfg(unix)]
#[test]
fn hf_cache_snapshots_are_found_by_revision_only() {
    use gemma_wgpu::checkpoint::cache::HubCache;
    use gemma_wgpu::registry::locate_in;
    let root = tmpdir("h-cache-rev");
    let cache = HubCache::new(&root);
    let a = write_hf("h-cache-rev-a", &tiny_tensors(false, 31), Dtype::BF16);
    let b = write_hf("h-cache-rev-b", &tiny_tensors(false, 32), Dtype::BF16);
    let none = locate_in(Some(&cache), CACHED, None, false).unwrap_err();
    assert!(none.to_string().contains("not downloaded"), "{none}");
    let snap_a = cache_put(&root, CACHED_REPO, &a, SHA_A, Some("main"));
    let snap_b = cache_put(&root, CACHED_REPO, &b, SHA_B, Some("v2"));
    // Unpinned: main.
    let d = locate_in(Some(&cache), CACHED, None, false).unwrap();
    assert_eq!(d, snap_a);
    assert_eq!(expect_ok(&d), 1);
    // A tag, and full commit hashes (no ref of their own).
    assert_eq!(
        locate_in(Some(&cache), CACHED, Some("v2"), false).unwrap(),
        snap_b
    );
    assert_eq!(
        locate_in(Some(&cache), CACHED, Some(SHA_B), false).unwrap(),
        snap_b
    );
    assert_eq!(
        locate_in(Some(&cache), CACHED, Some(SHA_A), false).unwrap(),
        snap_a
    );
    // A revision not in the cache is not downloaded, though main is cached.
    for rev in ["v3", "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf00010203", "../main"] {
        let e = locate_in(Some(&cache), CACHED, Some(rev), false).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("not downloaded") && m.contains(rev), "{m}");
    }
    // No cache directory at all.
    let e = locate_in(None, CACHED, None, false).unwrap_err();
    assert!(e.to_string().contains("not downloaded"), "{e}");
    // A revision with a local directory is refused (it would be silently ignored).
    let e = locate_in(Some(&cache), a.to_str().unwrap(), Some("v2"), false).unwrap_err();
    assert!(e.to_string().contains("local directory"), "{e}");
    let e = gemma_wgpu::ModelBuilder::new(a.to_str().unwrap())
        .with_revision("v2")
        .allow_download(false)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("local directory"), "{e}");
}

#[cfg(unix)]
#[test]
fn interrupted_or_damaged_hf_downloads_are_reported_with_their_path() {
    use gemma_wgpu::checkpoint::cache::{CacheProblem, HubCache, Lookup, lookup};
    use gemma_wgpu::registry::locate_in;
    let src = write_hf("h-cache-dmg-src", &tiny_tensors(false, 33), Dtype::BF16);
    let fresh = |name: &str| {
        let root = tmpdir(name);
        let snap = cache_put(&root, CACHED_REPO, &src, SHA_A, Some("main"));
        (HubCache::new(&root), snap)
    };
    let incomplete = |cache: &HubCache| match locate_in(Some(cache), CACHED, None, false) {
        Err(e @ LoadError::IncompleteDownload { .. }) => {
            let m = e.to_string();
            assert!(m.contains("downloading allowed"), "{m}");
            let LoadError::IncompleteDownload { path, problem } = e else {
                unreachable!()
            };
            (path, problem)
        }
        other => panic!("{other:?}"),
    };
    let st_len = std::fs::metadata(src.join("model.safetensors"))
        .unwrap()
        .len();

    // Interrupted download: the link's blob is missing, hf-hub's partial file is next to it.
    let (cache, snap) = fresh("h-cache-dangling");
    let link = snap.join("model.safetensors");
    let blob = blob_of(&link);
    let part = blob.with_extension("part");
    std::fs::rename(&blob, &part).unwrap();
    truncate(&part, st_len / 3);
    let (path, problem) = incomplete(&cache);
    assert_eq!(path, link);
    assert_eq!(
        problem,
        CacheProblem::DanglingLink {
            target: blob.clone(),
            partial: Some(part.clone())
        }
    );
    // ... and without a partial file.
    std::fs::remove_file(&part).unwrap();
    let (_, problem) = incomplete(&cache);
    assert_eq!(
        problem,
        CacheProblem::DanglingLink {
            target: blob,
            partial: None
        }
    );

    // A short blob (renamed into place though incomplete): its own header says the size.
    let (cache, snap) = fresh("h-cache-short");
    let link = snap.join("model.safetensors");
    truncate(&blob_of(&link), st_len - 10);
    let (path, problem) = incomplete(&cache);
    assert_eq!(path, link);
    assert_eq!(
        problem,
        CacheProblem::WrongSize {
            expected: st_len,
            found: st_len - 10,
            by: "its safetensors header"
        }
    );

    // config.json missing from the snapshot.
    let (cache, snap) = fresh("h-cache-noconf");
    std::fs::remove_file(snap.join("config.json")).unwrap();
    let (path, problem) = incomplete(&cache);
    assert_eq!(
        (path, problem),
        (snap.join("config.json"), CacheProblem::Missing)
    );

    // Sizes the hub reports: a file of another size is damaged; the right sizes are sound.
    let (cache, snap) = fresh("h-cache-hub");
    let conf_len = std::fs::metadata(snap.join("config.json")).unwrap().len();
    let check = |sizes: &[(&str, u64)]| {
        let sizes: BTreeMap<String, u64> = sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        lookup(
            &cache,
            CACHED_REPO,
            "main",
            "model.safetensors",
            &[],
            &sizes,
        )
    };
    assert_eq!(
        check(&[("config.json", conf_len), ("model.safetensors", st_len)]),
        Lookup::Complete(snap.clone())
    );
    match check(&[("config.json", conf_len + 1)]) {
        Lookup::Damaged { dir, damaged } => {
            assert_eq!(dir, snap);
            assert_eq!(damaged.len(), 1);
            assert_eq!(damaged[0].file, "config.json");
            assert_eq!(
                damaged[0].problem,
                CacheProblem::WrongSize {
                    expected: conf_len + 1,
                    found: conf_len,
                    by: "the hub"
                }
            );
        }
        other => panic!("{other:?}"),
    }

    // A sharded snapshot with one shard link missing (download stopped between shards).
    let root = tmpdir("h-cache-shards");
    let (d, _) = write_matrix_shard("h-cache-shards-src", &tiny_tensors(false, 34));
    let snap = cache_put(&root, "google/gemma-4-E4B-it", &d, SHA_B, Some("main"));
    let cache = HubCache::new(&root);
    let e4b = "gemma-4-E4B-it";
    assert_eq!(locate_in(Some(&cache), e4b, None, false).unwrap(), snap);
    std::fs::remove_file(snap.join("rest.safetensors")).unwrap();
    match locate_in(Some(&cache), e4b, None, false) {
        Err(LoadError::IncompleteDownload { path, problem }) => {
            assert_eq!(path, snap.join("rest.safetensors"));
            assert_eq!(problem, CacheProblem::Missing);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hub_file_list_gives_sizes_and_blob_names() {
    use gemma_wgpu::registry::{RemoteFile, RemoteRepo};
    // The shape of `GET /api/models/{repo}/revision/{rev}?blobs=true` (huggingface_hub's
    // `RepoSibling`: rfilename, size, blobId, lfs {size, sha256, pointerSize}).
    let json = r#"{
      "_id": "x", "id": "org/m", "sha": "0123456789abcdef0123456789abcdef01234567",
      "siblings": [
        {"rfilename": "config.json", "blobId": "9f8e7d", "size": 4821},
        {"rfilename": "model.safetensors", "blobId": "1a2b3c", "size": 4096000123,
         "lfs": {"sha256": "deadbeef", "size": 4096000123, "pointerSize": 135}},
        {"rfilename": "README.md"}
      ]
    }"#;
    let r = RemoteRepo::parse(json).unwrap();
    assert_eq!(r.sha, "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(
        r.files["config.json"],
        RemoteFile {
            size: Some(4821),
            blob: Some("9f8e7d".into())
        }
    );
    assert_eq!(
        r.files["model.safetensors"],
        RemoteFile {
            size: Some(4096000123),
            blob: Some("deadbeef".into())
        }
    );
    assert_eq!(r.files["README.md"], RemoteFile::default());
    assert_eq!(r.sizes().len(), 2);
    assert!(RemoteRepo::parse("{\"error\": \"Repository not found\"}").is_err());
}
