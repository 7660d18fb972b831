//! The demo's tiny base model before training (issue 15, item 2's starting point): a llava-hf
//! LLaVA-NeXT folder that lavic-model loads: `config.json` (CLIP-architecture tower at the world's
//! tile, GELU projector, Mistral-architecture decoder), `preprocessor_config.json` (AnyRes with the
//! pinpoints `t x 2t, 2t x t, 2t x 2t, 3t x t, t x 3t`), `tokenizer.json` (a BPE vocabulary
//! learned from the world's text, [`crate::bpe`]) and `model.safetensors` (f32, random init as
//! transformers initialises these models: N(0, 0.02) matrices and embeddings, unit norm weights,
//! zero biases), with the pre-4.52 key layout of the llava-hf repositories.

use std::fs;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::bpe::{learn, tokenizer_json};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::World;

/// Sizes of the tiny base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BaseConfig {
    /// Seed of the random weights.
    pub seed: u64,
    /// Vision hidden size.
    pub vision_hidden: usize,
    /// Vision layers.
    pub vision_layers: usize,
    /// Vision attention heads.
    pub vision_heads: usize,
    /// Vision patch size (the tile is the world's).
    pub patch: usize,
    /// Text hidden size.
    pub text_hidden: usize,
    /// Text layers.
    pub text_layers: usize,
    /// Text attention heads.
    pub text_heads: usize,
    /// Text key/value heads.
    pub text_kv_heads: usize,
    /// Text MLP size.
    pub text_intermediate: usize,
    /// Most tokenizer pieces (specials and bytes included; `<image>`, `<pad>` come on top); a
    /// small world may give fewer.
    pub vocab: usize,
}

impl BaseConfig {
    /// The planned demo base (docs/DEMO.md): about 5 M parameters.
    pub fn demo(seed: u64) -> Self {
        BaseConfig {
            seed,
            vision_hidden: 128,
            vision_layers: 4,
            vision_heads: 4,
            patch: 8,
            text_hidden: 256,
            text_layers: 4,
            text_heads: 4,
            text_kv_heads: 2,
            text_intermediate: 768,
            vocab: 2000,
        }
    }
}

/// What [`write_base`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseSummary {
    /// Tokenizer pieces (without `<image>`, `<pad>`).
    pub pieces: usize,
    /// Rows of the embedding matrix and lm_head (tokenizer + added + 5 LaViC tokens, rounded up
    /// to a multiple of 64 as llava-hf's 32064).
    pub vocab_rows: usize,
    /// Parameters.
    pub parameters: usize,
    /// Bytes of model.safetensors.
    pub bytes: u64,
}

fn config_json(c: &BaseConfig, tile: usize, pieces: usize, rows: usize) -> Value {
    let t = tile;
    json!({
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]],
        "image_token_index": pieces,
        "model_type": "llava_next",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": true,
        "text_config": {
            "model_type": "mistral",
            "hidden_size": c.text_hidden,
            "intermediate_size": c.text_intermediate,
            "num_hidden_layers": c.text_layers,
            "num_attention_heads": c.text_heads,
            "num_key_value_heads": c.text_kv_heads,
            "head_dim": c.text_hidden / c.text_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "vocab_size": rows
        },
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_act": "quick_gelu",
            "hidden_size": c.vision_hidden,
            "image_size": t,
            "intermediate_size": 4 * c.vision_hidden,
            "layer_norm_eps": 1e-5,
            "num_attention_heads": c.vision_heads,
            "num_channels": 3,
            "num_hidden_layers": c.vision_layers,
            "patch_size": c.patch,
            "projection_dim": c.vision_hidden
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": rows
    })
}

fn preprocessor_json(tile: usize) -> Value {
    let t = tile;
    json!({
        "crop_size": {"height": t, "width": t},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_pad": true,
        "do_rescale": true,
        "do_resize": true,
        "image_grid_pinpoints": [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]],
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "LlavaNextImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": t}
    })
}

/// How a tensor starts.
#[derive(Clone, Copy)]
enum Init {
    /// N(0, std).
    Normal(f64),
    Ones,
    Zeros,
}

/// transformers' `initializer_range` (the language model, projector and CLIP's embeddings).
const RANGE: f64 = 0.02;

/// A tensor to write: name, shape, init.
type Spec = (String, Vec<usize>, Init);

fn linear(v: &mut Vec<Spec>, p: String, i: usize, o: usize, bias: bool, std: f64) {
    v.push((format!("{p}.weight"), vec![o, i], Init::Normal(std)));
    if bias {
        v.push((format!("{p}.bias"), vec![o], Init::Zeros));
    }
}

/// Every tensor (names as llava-hf's pre-4.52 layout), initialised as transformers does: the
/// CLIP tower by `CLIPPreTrainedModel._init_weights` (factor 1: class embedding N(0, d^-1/2);
/// patch and position embeddings N(0, 0.02); q/k/v and fc2 N(0, d^-1/2 (2L)^-1/2), out_proj
/// N(0, d^-1/2), fc1 N(0, (2d)^-1/2)), whose MLPs start as rich random features of the pixels;
/// the projector and the Mistral decoder N(0, 0.02); norms 1, biases 0.
fn tensors(c: &BaseConfig, tile: usize, rows: usize) -> Vec<Spec> {
    use Init::*;
    let mut v: Vec<Spec> = Vec::new();
    let (vh, th) = (c.vision_hidden, c.text_hidden);
    let d = (vh as f64).powf(-0.5);
    let (in_std, out_std, fc_std) = (d * (2.0 * c.vision_layers as f64).powf(-0.5), d, (2.0 * vh as f64).powf(-0.5));
    let vm = "vision_tower.vision_model";
    let patches = (tile / c.patch) * (tile / c.patch);
    v.push((format!("{vm}.embeddings.class_embedding"), vec![vh], Normal(d)));
    v.push((format!("{vm}.embeddings.patch_embedding.weight"), vec![vh, 3, c.patch, c.patch], Normal(RANGE)));
    v.push((format!("{vm}.embeddings.position_embedding.weight"), vec![patches + 1, vh], Normal(RANGE)));
    for n in ["pre_layrnorm", "post_layernorm"] {
        v.push((format!("{vm}.{n}.weight"), vec![vh], Ones));
        v.push((format!("{vm}.{n}.bias"), vec![vh], Zeros));
    }
    for l in 0..c.vision_layers {
        let p = format!("{vm}.encoder.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj"] {
            linear(&mut v, format!("{p}.self_attn.{proj}"), vh, vh, true, in_std);
        }
        linear(&mut v, format!("{p}.self_attn.out_proj"), vh, vh, true, out_std);
        linear(&mut v, format!("{p}.mlp.fc1"), vh, 4 * vh, true, fc_std);
        linear(&mut v, format!("{p}.mlp.fc2"), 4 * vh, vh, true, in_std);
        for n in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{p}.{n}.weight"), vec![vh], Ones));
            v.push((format!("{p}.{n}.bias"), vec![vh], Zeros));
        }
    }
    linear(&mut v, "multi_modal_projector.linear_1".into(), vh, th, true, RANGE);
    linear(&mut v, "multi_modal_projector.linear_2".into(), th, th, true, RANGE);
    v.push(("image_newline".into(), vec![th], Normal(RANGE)));
    let lm = "language_model.model";
    let kv = c.text_kv_heads * (th / c.text_heads);
    v.push((format!("{lm}.embed_tokens.weight"), vec![rows, th], Normal(RANGE)));
    for l in 0..c.text_layers {
        let p = format!("{lm}.layers.{l}");
        linear(&mut v, format!("{p}.self_attn.q_proj"), th, th, false, RANGE);
        linear(&mut v, format!("{p}.self_attn.k_proj"), th, kv, false, RANGE);
        linear(&mut v, format!("{p}.self_attn.v_proj"), th, kv, false, RANGE);
        linear(&mut v, format!("{p}.self_attn.o_proj"), th, th, false, RANGE);
        linear(&mut v, format!("{p}.mlp.gate_proj"), th, c.text_intermediate, false, RANGE);
        linear(&mut v, format!("{p}.mlp.up_proj"), th, c.text_intermediate, false, RANGE);
        linear(&mut v, format!("{p}.mlp.down_proj"), c.text_intermediate, th, false, RANGE);
        v.push((format!("{p}.input_layernorm.weight"), vec![th], Ones));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![th], Ones));
    }
    v.push((format!("{lm}.norm.weight"), vec![th], Ones));
    v.push(("language_model.lm_head.weight".into(), vec![rows, th], Normal(RANGE)));
    v
}

/// N(0, std) by Box-Muller.
fn normal(rng: &mut Rng, std: f64) -> f32 {
    let (u1, u2) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
    (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A safetensors file of f32 tensors (header keys sorted, data in that order, 8-byte aligned).
fn safetensors(specs: &[Spec], seed: u64) -> Vec<u8> {
    let mut sorted: Vec<&Spec> = specs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data: Vec<u8> = Vec::new();
    for (name, shape, init) in sorted {
        // Each tensor from its own stream: adding a tensor never changes the others.
        let mut rng = Rng::stream(seed, name);
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            let x = match init {
                Init::Normal(std) => normal(&mut rng, *std),
                Init::Ones => 1.0,
                Init::Zeros => 0.0,
            };
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut h = serde_json::to_string(&Value::Object(header)).unwrap_or_default().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Every text the tokenizer learns from: the world's titles, descriptions, stage-0 questions and
/// answers, conversations and recommending comments, plus `extra` (the two LaViC prompt heads,
/// passed by the caller).
pub fn corpus(world: &World, extra: &[String]) -> Vec<String> {
    let mut texts: Vec<String> = extra.to_vec();
    // Texts also as they follow a prompt: a candidate line starts after "\n", and answers (a
    // stage-0 answer, a stage-1 description, a stage-2 id) directly after "Assistant:" with no
    // space, so these forms get merges of their own, not only the "▁"-prefixed ones.
    for it in &world.catalog.items {
        texts.push(format!("\n{}: {}", it.id, it.title));
        texts.push(it.description.clone());
        texts.push(format!("Assistant:{}", it.description));
        texts.push(format!("Assistant:{}", it.id));
    }
    // `distill` lines are LaViC's prompt head (in `extra`), titles and descriptions: nothing new.
    // `copy` lines are titles and ids listed: nothing new either. `quiz` lines ask `pick`'s
    // questions after the list (left out so that adding them kept every tokenizer as it was).
    let new = |t: &str| !matches!(t, "distill" | "copy" | "quiz");
    for s in crate::stage0::samples(world.config.seed, &world.catalog).into_iter().filter(|s| new(s.task)) {
        texts.push(format!("Assistant:{}", s.answer));
        // a pick question's candidate lines repeat titles and ids the corpus has already
        texts.push(s.question.lines().next().unwrap_or_default().to_string());
        texts.push(s.answer);
    }
    for convs in &world.conversations {
        for c in convs {
            texts.push(c.context.clone());
            texts.push(c.gt.clone());
        }
    }
    texts
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|source| Error::Json { what: path.display().to_string(), source })?;
    fs::write(path, format!("{text}\n")).map_err(|e| Error::io(path, e))
}

/// Writes the random-init base model for `world` into `out` (created; it must not exist or be
/// empty; written to a temporary sibling and renamed, so it is complete or absent).
pub fn write_base(world: &World, cfg: &BaseConfig, extra_text: &[String], out: &Path) -> Result<BaseSummary> {
    let tile = world.config.catalog.tile as usize;
    if cfg.patch == 0
        || !tile.is_multiple_of(cfg.patch)
        || cfg.text_heads == 0
        || !cfg.text_hidden.is_multiple_of(cfg.text_heads)
        || cfg.vocab < 300
    {
        return Err(Error::InvalidConfig(format!(
            "base model: patch {} must divide the tile {tile}, heads {} must divide hidden {}, vocab {} must be >= 300",
            cfg.patch, cfg.text_heads, cfg.text_hidden, cfg.vocab
        )));
    }
    crate::write::into_new_folder(out, |dir| write_files(world, cfg, extra_text, dir))
}

fn write_files(world: &World, cfg: &BaseConfig, extra_text: &[String], out: &Path) -> Result<BaseSummary> {
    let tile = world.config.catalog.tile as usize;
    let vocab = learn(&corpus(world, extra_text), cfg.vocab);
    let rows = (vocab.len_with_added() + 5).div_ceil(64) * 64;
    write_json(&out.join("tokenizer.json"), &tokenizer_json(&vocab))?;
    write_json(&out.join("config.json"), &config_json(cfg, tile, vocab.pieces.len(), rows))?;
    write_json(&out.join("preprocessor_config.json"), &preprocessor_json(tile))?;
    let specs = tensors(cfg, tile, rows);
    let parameters = specs.iter().map(|s| s.1.iter().product::<usize>()).sum();
    let bytes = safetensors(&specs, cfg.seed);
    let path = out.join("model.safetensors");
    fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    Ok(BaseSummary { pieces: vocab.pieces.len(), vocab_rows: rows, parameters, bytes: bytes.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard deviation of the f32 tensor `name` in a safetensors blob written by `safetensors`.
    fn std_of(blob: &[u8], name: &str) -> f64 {
        let n = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&blob[8..8 + n]).unwrap();
        let off = header[name]["data_offsets"].as_array().unwrap();
        let (a, b) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
        let xs: Vec<f64> = blob[8 + n + a..8 + n + b].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
    }

    #[test]
    fn the_tower_starts_as_clip_initialises_it_and_the_rest_as_llava() {
        let c = BaseConfig::demo(3);
        let blob = safetensors(&tensors(&c, 32, 128), 3);
        let d = (c.vision_hidden as f64).powf(-0.5);
        let layer = "vision_tower.vision_model.encoder.layers.1";
        let want = [
            (format!("{layer}.self_attn.q_proj.weight"), d / (2.0 * c.vision_layers as f64).sqrt()),
            (format!("{layer}.self_attn.out_proj.weight"), d),
            (format!("{layer}.mlp.fc1.weight"), (2.0 * c.vision_hidden as f64).powf(-0.5)),
            (format!("{layer}.mlp.fc2.weight"), d / (2.0 * c.vision_layers as f64).sqrt()),
            ("vision_tower.vision_model.embeddings.patch_embedding.weight".to_string(), 0.02),
            ("multi_modal_projector.linear_1.weight".to_string(), 0.02),
            ("language_model.model.layers.0.mlp.up_proj.weight".to_string(), 0.02),
            ("language_model.lm_head.weight".to_string(), 0.02),
        ];
        for (name, std) in want {
            let got = std_of(&blob, &name);
            assert!((got / std - 1.0).abs() < 0.05, "{name}: std {got}, want {std}");
        }
        assert_eq!(std_of(&blob, &format!("{layer}.mlp.fc1.bias")), 0.0);
    }
}
