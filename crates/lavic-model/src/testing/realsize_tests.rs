//! Unit tests of the real-size writer: names and shapes against transformers' recorded state
//! dicts (`tests/fixtures/realsize/shapes.json`), shard planning, streamed files candle reads back.

use super::*;
use crate::config::{LlavaConfig, TextModelType};

/// What `shapes.json` records: the published checkpoints and the mid-size benchmark model.
const SIZES: [(Variant, Size, &str); 3] = [
    (Variant::Mistral, Size::Full, "mistral"),
    (Variant::Vicuna, Size::Full, "vicuna"),
    (Variant::Mistral, Size::Mid, "mid_mistral"),
];

/// `tests/fixtures/realsize/shapes.json`, recorded by `tests/fixtures/realsize_shapes.py`.
fn recorded() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/realsize/shapes.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

fn as_rows(v: &Value) -> Vec<(String, Vec<usize>, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let shape = r[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                r[0].as_str().unwrap().to_string(),
                shape,
                r[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rows(t: &[TensorSpec]) -> Vec<(String, Vec<usize>, String)> {
    t.iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.dtype.name().to_string()))
        .collect()
}

#[test]
fn base_tensors_equal_transformers_state_dict_in_order() {
    let rec = recorded();
    for (v, size, key) in SIZES {
        let ours = base_tensors(v, size);
        let theirs = as_rows(&rec[key]["tensors"]);
        assert_eq!(ours.len(), theirs.len(), "{key}: tensor count");
        for (a, b) in rows(&ours).iter().zip(&theirs) {
            assert_eq!(a, b, "{key}");
        }
        let params: u64 = ours.iter().map(|t| t.numel() as u64).sum();
        assert_eq!(
            params,
            rec[key]["params"].as_u64().unwrap(),
            "{key}: parameters"
        );
    }
}

#[test]
fn adapter_tensors_equal_peft_state_dict() {
    let rec = recorded();
    for (v, size, key) in SIZES {
        for (stage, field) in [(Stage::Vision, "vision_adapter"), (Stage::Lm, "lm_adapter")] {
            let mut ours = rows(&adapter_tensors(v, size, stage));
            ours.sort();
            assert_eq!(ours, as_rows(&rec[key][field]), "{key} {field}");
        }
    }
}

#[test]
fn published_configs_parse_to_the_published_sizes() {
    let d = tempfile::tempdir().unwrap();
    for v in [Variant::Mistral, Variant::Vicuna] {
        let p = d.path().join("config.json");
        write_json(&p, &config_json(v, Size::Full)).unwrap();
        let c = LlavaConfig::from_file(&p).unwrap();
        assert_eq!(
            (
                c.vision.hidden_size,
                c.vision.num_hidden_layers,
                c.vision.image_size,
                c.vision.patch_size
            ),
            (1024, 24, 336, 14)
        );
        assert_eq!(
            (c.vision.intermediate_size, c.vision.num_attention_heads),
            (4096, 16)
        );
        let t = &c.text;
        assert_eq!(
            (
                t.hidden_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.vocab_size
            ),
            (4096, 32, 32, 32064)
        );
        assert_eq!(t.rms_norm_eps, 1e-5);
        assert_eq!(t.sliding_window, None);
        match v {
            Variant::Mistral => {
                assert_eq!(t.model_type, TextModelType::Mistral);
                assert_eq!(
                    (t.num_key_value_heads, t.intermediate_size, t.rope_theta),
                    (8, 14336, 1e6)
                );
            }
            Variant::Vicuna => {
                assert_eq!(t.model_type, TextModelType::Llama);
                assert_eq!(
                    (t.num_key_value_heads, t.intermediate_size, t.rope_theta),
                    (32, 11008, 1e4)
                );
            }
        }
        let pre = d.path().join("preprocessor_config.json");
        write_json(&pre, &preprocessor_json(Size::Full)).unwrap();
        crate::config::PreprocessorConfig::from_dir_or_default(d.path()).unwrap();
    }
}

/// Parses a header produced by [`safetensors_header`]: (json, data start).
fn parse_header(h: &[u8]) -> (serde_json::Map<String, Value>, usize) {
    let n = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize;
    assert_eq!(h.len(), 8 + n);
    assert_eq!(h.len() % 8, 0, "data must start 8-aligned");
    let v: Value = serde_json::from_slice(&h[8..]).unwrap();
    (v.as_object().unwrap().clone(), h.len())
}

#[test]
fn full_size_shards_and_index_are_consistent() {
    for v in [Variant::Mistral, Variant::Vicuna] {
        let tensors = base_tensors(v, Size::Full);
        let plan = plan_shards(&tensors, DEFAULT_SHARD_BYTES);
        let total: u64 = tensors.iter().map(TensorSpec::bytes).sum();
        // 15.1 GB (mistral) / 14.1 GB (vicuna) in bf16: 4 and 3 shards of at most 5 GB.
        assert_eq!(
            total,
            2 * base_tensors(v, Size::Full)
                .iter()
                .map(|t| t.numel() as u64)
                .sum::<u64>()
        );
        assert_eq!(
            plan.len(),
            if v == Variant::Mistral { 4 } else { 3 },
            "{v:?}: {plan:?}"
        );
        assert_eq!(plan.first().unwrap().start, 0);
        assert_eq!(plan.last().unwrap().end, tensors.len());
        for w in plan.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &plan {
            let bytes: u64 = tensors[r.clone()].iter().map(TensorSpec::bytes).sum();
            assert!(bytes <= DEFAULT_SHARD_BYTES, "{bytes}");
            // the header the writer would put in front of this shard describes it exactly
            let (h, _) = parse_header(&safetensors_header(&tensors[r.clone()]));
            assert_eq!(h.len(), r.len() + 1);
            let mut at = 0u64;
            for t in &tensors[r.clone()] {
                let e = &h[&t.name];
                assert_eq!(e["dtype"], "BF16");
                assert_eq!(e["shape"], json!(t.shape));
                assert_eq!(e["data_offsets"], json!([at, at + t.bytes()]));
                at += t.bytes();
            }
        }
        let index = index_json(&tensors, &plan);
        assert_eq!(index["metadata"]["total_size"], json!(total));
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), tensors.len());
        let names = shard_names(plan.len());
        for (r, file) in plan.iter().zip(&names) {
            for t in &tensors[r.clone()] {
                assert_eq!(map[&t.name], json!(file));
            }
        }
    }
    assert_eq!(shard_names(4)[0], "model-00001-of-00004.safetensors");
}

#[test]
fn shard_planning_starts_a_new_shard_before_the_limit_is_passed() {
    let t = |n: &str, elems: usize| TensorSpec::new(n, &[elems], StDtype::Bf16, Init::Std(STD));
    let ts = vec![t("a", 3), t("b", 3), t("c", 10), t("d", 1)];
    // 6, 6, 20, 2 bytes; limit 12: [a b] [c] (alone, over the limit) [d]
    assert_eq!(plan_shards(&ts, 12), vec![0..2, 2..3, 3..4]);
    assert_eq!(plan_shards(&ts, 100), vec![0..4]);
}

fn stats(t: &candle_core::Tensor) -> (f32, f32) {
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
    assert!(v.iter().all(|x| x.is_finite()));
    (mean, var.sqrt())
}

#[test]
fn one_shard_streams_to_a_file_candle_reads_back() {
    // one real-size vision layer (12.6M parameters, 25 MB): the same code path as every shard
    let all = base_tensors(Variant::Mistral, Size::Full);
    let layer: Vec<TensorSpec> = all
        .iter()
        .filter(|t| t.name.contains(".encoder.layers.3."))
        .cloned()
        .collect();
    assert_eq!(layer.len(), 16);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("shard.safetensors");
    let n = write_safetensors(&p, &layer, 7).unwrap();
    assert_eq!(n, std::fs::metadata(&p).unwrap().len());
    assert_eq!(
        n,
        safetensors_header(&layer).len() as u64 + layer.iter().map(TensorSpec::bytes).sum::<u64>()
    );
    let loaded = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.len(), layer.len());
    for t in &layer {
        let x = &loaded[&t.name];
        assert_eq!(x.dims(), t.shape.as_slice(), "{}", t.name);
        assert_eq!(x.dtype(), candle_core::DType::BF16);
        let (mean, std) = stats(x);
        if t.name.ends_with("layer_norm1.weight") || t.name.ends_with("layer_norm2.weight") {
            assert!(
                (mean - 1.0).abs() < 0.01 && std > 0.02 && std < 0.04,
                "{}: {mean} {std}",
                t.name
            );
        } else {
            assert!(
                mean.abs() < 0.003 && (std - STD).abs() < 0.002,
                "{}: {mean} {std}",
                t.name
            );
        }
    }
    // each tensor's values depend only on (seed, name): the same tensor written alone is
    // byte-identical; another seed changes it
    let q = layer
        .iter()
        .find(|t| t.name.ends_with("q_proj.weight"))
        .unwrap()
        .clone();
    let p2 = d.path().join("q.safetensors");
    write_safetensors(&p2, std::slice::from_ref(&q), 7).unwrap();
    let again = candle_core::safetensors::load(&p2, &candle_core::Device::Cpu).unwrap();
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        a.to_dtype(candle_core::DType::F32)
            .unwrap()
            .sub(&b.to_dtype(candle_core::DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&loaded[&q.name], &again[&q.name]), 0.0);
    write_safetensors(&p2, std::slice::from_ref(&q), 8).unwrap();
    let other = candle_core::safetensors::load(&p2, &candle_core::Device::Cpu).unwrap();
    assert!(diff(&loaded[&q.name], &other[&q.name]) > 0.01);
}

#[test]
fn real_size_vision_adapter_loads_with_lavic_rank_and_scale() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("vision-adapter");
    std::fs::create_dir_all(&dir).unwrap();
    write_json(
        &dir.join("adapter_config.json"),
        &adapter_config_json(Variant::Mistral, Stage::Vision),
    )
    .unwrap();
    write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &adapter_tensors(Variant::Mistral, Size::Full, Stage::Vision),
        1,
    )
    .unwrap();
    let a = crate::lora::Adapter::load(&dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(a.num_modules(), 24 * 6 + 2);
    assert_eq!(
        a.config
            .rank_and_scale("multi_modal_projector.linear_1")
            .unwrap(),
        (8, 4.0)
    );
}

#[test]
fn variant_and_size_names_parse_and_unknown_ones_are_refused() {
    assert_eq!("mistral".parse::<Variant>().unwrap(), Variant::Mistral);
    assert_eq!("vicuna".parse::<Variant>().unwrap(), Variant::Vicuna);
    let e = "llama".parse::<Variant>().unwrap_err().to_string();
    assert!(
        e.contains("llama") && e.contains("mistral or vicuna"),
        "{e}"
    );
    assert_eq!("full".parse::<Size>().unwrap(), Size::Full);
    assert_eq!("mid".parse::<Size>().unwrap(), Size::Mid);
    let e = "huge".parse::<Size>().unwrap_err().to_string();
    assert!(e.contains("huge") && e.contains("full or mid"), "{e}");
}

#[test]
fn mid_size_preset_has_the_benchmark_shapes_and_the_published_names() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config.json");
    write_json(&p, &config_json(Variant::Mistral, Size::Mid)).unwrap();
    let c = LlavaConfig::from_file(&p).unwrap();
    let v = &c.vision;
    assert_eq!(
        (
            v.hidden_size,
            v.intermediate_size,
            v.num_hidden_layers,
            v.num_attention_heads
        ),
        (384, 1536, 6, 6)
    );
    assert_eq!((v.image_size, v.patch_size), (224, 14));
    let t = &c.text;
    assert_eq!(t.model_type, TextModelType::Mistral);
    assert_eq!(
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers),
        (768, 2048, 12)
    );
    assert_eq!(
        (
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
            t.vocab_size
        ),
        (12, 4, 64, 32064)
    );
    // the view size and pinpoints follow the tower; our AnyRes accepts the pair
    let pre = d.path().join("preprocessor_config.json");
    write_json(&pre, &preprocessor_json(Size::Mid)).unwrap();
    let pc = crate::config::PreprocessorConfig::from_dir_or_default(d.path()).unwrap();
    crate::anyres::AnyResConfig::new(&c, &pc).unwrap();
    assert_eq!(c.image_grid_pinpoints[4], (224, 672));

    let mid = base_tensors(Variant::Mistral, Size::Mid);
    let params: u64 = mid.iter().map(|t| t.numel() as u64).sum();
    assert_eq!(params, 136_627_200);
    let shape = |name: &str| {
        mid.iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .shape
            .clone()
    };
    let vm = "vision_tower.vision_model";
    assert_eq!(
        shape(&format!("{vm}.embeddings.patch_embedding.weight")),
        [384, 3, 14, 14]
    );
    assert_eq!(
        shape(&format!("{vm}.embeddings.position_embedding.weight")),
        [257, 384]
    );
    assert_eq!(
        shape(&format!("{vm}.encoder.layers.5.mlp.fc1.weight")),
        [1536, 384]
    );
    assert_eq!(shape("multi_modal_projector.linear_1.weight"), [768, 384]);
    let lm = "language_model.model.layers.11";
    assert_eq!(shape(&format!("{lm}.self_attn.q_proj.weight")), [768, 768]);
    assert_eq!(shape(&format!("{lm}.self_attn.k_proj.weight")), [256, 768]);
    assert_eq!(shape(&format!("{lm}.mlp.down_proj.weight")), [768, 2048]);
    assert_eq!(
        shape("language_model.model.embed_tokens.weight"),
        [32064, 768]
    );
    assert_eq!(shape("language_model.lm_head.weight"), [32064, 768]);
    assert_eq!(shape("image_newline"), [768]);

    // (every name, shape and the order against transformers: the tests above, "mid_mistral")
    assert!(mid.iter().all(|t| t.dtype == StDtype::Bf16));
    // one 273 MB shard at transformers' default limit
    assert_eq!(plan_shards(&mid, DEFAULT_SHARD_BYTES), vec![0..mid.len()]);

    // adapters: every Linear of the smaller layers, r 8
    let vision = adapter_tensors(Variant::Mistral, Size::Mid, Stage::Vision);
    assert_eq!(vision.len(), 2 * (6 * 6 + 2));
    let lm = adapter_tensors(Variant::Mistral, Size::Mid, Stage::Lm);
    assert_eq!(lm.len(), 2 * (12 * 7 + 1) + 1);
    let k_b = lm
        .iter()
        .find(|t| t.name.ends_with("layers.0.self_attn.k_proj.lora_B.weight"))
        .unwrap();
    assert_eq!(k_b.shape, [256, LORA_R]);
}
