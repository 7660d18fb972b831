//! Real-size random checkpoints: the exact `config.json`, tensor names, shapes and dtype (bf16)
//! of `llava-hf/llava-v1.6-mistral-7b-hf` and `llava-hf/llava-v1.6-vicuna-7b-hf` (or, at
//! [`Size::Mid`], the same architecture at ~137M parameters for benchmarks), sharded like
//! transformers' `save_pretrained` (state-dict order, a new shard when the next tensor would pass
//! the limit, `model.safetensors.index.json`), plus LaViC-shaped PEFT adapters for both stages
//! (r 8, alpha 32 on every Linear of the vision tower and projector / of the language model and
//! `lm_head`, keys in the transformers < 4.52 layout the reference saved with).
//!
//! Everything is streamed: each file's safetensors header is written first, then the tensor data
//! in chunks from a seeded generator, so writing 15 GB needs a few MiB of memory. Values are
//! uniform with transformers' initializer scale (std 0.02 for matrices and embeddings, norms
//! 1 +- 0.05, biases +- 0.02), so activations stay finite through 32 layers in bf16. Names and
//! shapes are checked against `tests/fixtures/realsize/shapes.json` (recorded by transformers on
//! the meta device, `tests/fixtures/realsize_shapes.py`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};

#[path = "realsize_dims.rs"]
mod dims;
pub use dims::{Dims, Size, TextDims, Variant, VisionDims};

/// Rows of the base checkpoint's embeddings / lm_head.
const BASE_VOCAB: usize = 32064;
/// `len(tokenizer)` after LaViC adds its five item tokens (the resized vocabulary).
pub const LAVIC_VOCAB: usize = 32007;
/// LaViC's LoRA rank and alpha (both stages).
pub const LORA_R: usize = 8;
/// LaViC's LoRA alpha.
pub const LORA_ALPHA: usize = 32;
/// transformers' default `max_shard_size` ("5GB" = 5 * 10^9 bytes).
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// Stored dtype of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    /// bfloat16 (the checkpoint).
    Bf16,
    /// float32 (PEFT adapters trained with AMP keep f32 LoRA weights).
    F32,
}

impl StDtype {
    /// Name in a safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "BF16",
            Self::F32 => "F32",
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bf16 => 2,
            Self::F32 => 4,
        }
    }
}

/// How a tensor's random values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Uniform with this standard deviation around 0.
    Std(f32),
    /// `1 + uniform(-0.05, 0.05)` (norm weights).
    NearOne,
}

/// One tensor of a file to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Key in the file.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Stored dtype.
    pub dtype: StDtype,
    init: Init,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize], dtype: StDtype, init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            dtype,
            init,
        }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of data.
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
}

const STD: f32 = 0.02;

/// The published `config.json` of the variant (transformers 4.39 wrote it; sizes it leaves out
/// are the text model's defaults), with `torch_dtype` saying what we store: bfloat16. At
/// [`Size::Mid`] every size of [`Dims::of`] is written out and the pinpoints follow the view size.
pub fn config_json(v: Variant, size: Size) -> Value {
    let d = Dims::of(v, size);
    let text = match v {
        Variant::Mistral => json!({
            "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
            "architectures": ["MistralForCausalLM"],
            "intermediate_size": 14336,
            "max_position_embeddings": 32768,
            "model_type": "mistral",
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "vocab_size": BASE_VOCAB
        }),
        Variant::Vicuna => json!({
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "pad_token_id": 0,
            "rms_norm_eps": 1e-05,
            "vocab_size": BASE_VOCAB
        }),
    };
    let mut cfg = json!({
        "architectures": ["LlavaNextForConditionalGeneration"],
        "ignore_index": -100,
        "image_grid_pinpoints": d.pinpoints(),
        "image_token_index": 32000,
        "model_type": "llava_next",
        "projector_hidden_act": "gelu",
        "text_config": text,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.0.dev0",
        "use_image_newline_parameter": true,
        "vision_config": {
            "hidden_size": d.vision.hidden,
            "image_size": d.vision.image,
            "intermediate_size": d.vision.intermediate,
            "model_type": "clip_vision_model",
            "num_attention_heads": d.vision.heads,
            "num_hidden_layers": d.vision.layers,
            "patch_size": d.vision.patch,
            "projection_dim": 768,
            "vocab_size": 32000
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": BASE_VOCAB
    });
    if size == Size::Mid {
        let t = &d.text;
        let text = &mut cfg["text_config"];
        text["hidden_size"] = json!(t.hidden);
        text["intermediate_size"] = json!(t.intermediate);
        text["num_hidden_layers"] = json!(t.layers);
        text["num_attention_heads"] = json!(t.heads);
        text["num_key_value_heads"] = json!(t.kv_heads);
    }
    cfg
}

/// The published `preprocessor_config.json` (LLaVA-NeXT AnyRes at 336 px, CLIP normalisation),
/// with the view size and pinpoints of `size`.
pub fn preprocessor_json(size: Size) -> Value {
    let d = Dims::of(Variant::Mistral, size);
    let t = d.vision.image;
    json!({
        "aspect_ratio_setting": "anyres",
        "crop_size": {"height": t, "width": t},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_pad": true,
        "do_rescale": true,
        "do_resize": true,
        "image_grid_pinpoints": d.pinpoints(),
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "LlavaNextImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaNextProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": t}
    })
}

fn linear(out: &mut Vec<TensorSpec>, path: &str, in_dim: usize, out_dim: usize, bias: bool) {
    out.push(TensorSpec::new(
        format!("{path}.weight"),
        &[out_dim, in_dim],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    if bias {
        out.push(TensorSpec::new(
            format!("{path}.bias"),
            &[out_dim],
            StDtype::Bf16,
            Init::Std(STD),
        ));
    }
}

fn norm(out: &mut Vec<TensorSpec>, path: &str, dim: usize, bias: bool) {
    out.push(TensorSpec::new(
        format!("{path}.weight"),
        &[dim],
        StDtype::Bf16,
        Init::NearOne,
    ));
    if bias {
        out.push(TensorSpec::new(
            format!("{path}.bias"),
            &[dim],
            StDtype::Bf16,
            Init::Std(STD),
        ));
    }
}

/// Every tensor of the base checkpoint, in transformers' state-dict order (the order
/// `save_pretrained` shards in), with the < 4.52 key layout the llava-hf repositories use.
pub fn base_tensors(v: Variant, size: Size) -> Vec<TensorSpec> {
    let Dims {
        vision: vd,
        text: t,
    } = Dims::of(v, size);
    let h = t.hidden;
    let head_dim = h / t.heads;
    let kv = t.kv_heads * head_dim;
    let (vh, vi) = (vd.hidden, vd.intermediate);
    let mut out = Vec::new();
    out.push(TensorSpec::new(
        "image_newline",
        &[h],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    let vm = "vision_tower.vision_model";
    out.push(TensorSpec::new(
        format!("{vm}.embeddings.class_embedding"),
        &[vh],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    out.push(TensorSpec::new(
        format!("{vm}.embeddings.patch_embedding.weight"),
        &[vh, 3, vd.patch, vd.patch],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    let positions = (vd.image / vd.patch).pow(2) + 1;
    out.push(TensorSpec::new(
        format!("{vm}.embeddings.position_embedding.weight"),
        &[positions, vh],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    norm(&mut out, &format!("{vm}.pre_layrnorm"), vh, true);
    for i in 0..vd.layers {
        let l = format!("{vm}.encoder.layers.{i}");
        for p in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            linear(&mut out, &format!("{l}.self_attn.{p}"), vh, vh, true);
        }
        norm(&mut out, &format!("{l}.layer_norm1"), vh, true);
        linear(&mut out, &format!("{l}.mlp.fc1"), vh, vi, true);
        linear(&mut out, &format!("{l}.mlp.fc2"), vi, vh, true);
        norm(&mut out, &format!("{l}.layer_norm2"), vh, true);
    }
    norm(&mut out, &format!("{vm}.post_layernorm"), vh, true);
    linear(&mut out, "multi_modal_projector.linear_1", vh, h, true);
    linear(&mut out, "multi_modal_projector.linear_2", h, h, true);
    out.push(TensorSpec::new(
        "language_model.model.embed_tokens.weight",
        &[BASE_VOCAB, h],
        StDtype::Bf16,
        Init::Std(STD),
    ));
    for i in 0..t.layers {
        let l = format!("language_model.model.layers.{i}");
        linear(&mut out, &format!("{l}.self_attn.q_proj"), h, h, false);
        linear(&mut out, &format!("{l}.self_attn.k_proj"), h, kv, false);
        linear(&mut out, &format!("{l}.self_attn.v_proj"), h, kv, false);
        linear(&mut out, &format!("{l}.self_attn.o_proj"), h, h, false);
        linear(
            &mut out,
            &format!("{l}.mlp.gate_proj"),
            h,
            t.intermediate,
            false,
        );
        linear(
            &mut out,
            &format!("{l}.mlp.up_proj"),
            h,
            t.intermediate,
            false,
        );
        linear(
            &mut out,
            &format!("{l}.mlp.down_proj"),
            t.intermediate,
            h,
            false,
        );
        norm(&mut out, &format!("{l}.input_layernorm"), h, false);
        norm(&mut out, &format!("{l}.post_attention_layernorm"), h, false);
    }
    norm(&mut out, "language_model.model.norm", h, false);
    linear(&mut out, "language_model.lm_head", h, BASE_VOCAB, false);
    out
}

/// Which LaViC adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1: vision tower (q/k/v/out_proj, fc1, fc2 of every layer) and both projector Linears.
    Vision,
    /// Stage 2: every Linear of the language model and `lm_head` (transformers < 4.52).
    Lm,
}

fn lora(out: &mut Vec<TensorSpec>, module: &str, in_dim: usize, out_dim: usize) {
    let p = format!("base_model.model.{module}");
    // A like PEFT's kaiming-uniform init; B non-zero (a trained adapter), so the merge matters.
    let a_std = 1.0 / (3.0 * in_dim as f32).sqrt();
    out.push(TensorSpec::new(
        format!("{p}.lora_A.weight"),
        &[LORA_R, in_dim],
        StDtype::F32,
        Init::Std(a_std),
    ));
    out.push(TensorSpec::new(
        format!("{p}.lora_B.weight"),
        &[out_dim, LORA_R],
        StDtype::F32,
        Init::Std(0.01),
    ));
}

/// Every tensor of a LaViC adapter for the variant, keys as the reference saved them
/// (`base_model.model.` + the < 4.52 module path). The stage-2 adapter also carries the whole
/// resized `lm_head` as `language_model.lm_head.base_layer.weight` (bf16), which peft 0.15 saves
/// for a targeted `lm_head` with its default `save_embedding_layers="auto"`.
pub fn adapter_tensors(v: Variant, size: Size, stage: Stage) -> Vec<TensorSpec> {
    let Dims {
        vision: vd,
        text: t,
    } = Dims::of(v, size);
    let h = t.hidden;
    let kv = t.kv_heads * (h / t.heads);
    let mut out = Vec::new();
    match stage {
        Stage::Vision => {
            let (vh, vi) = (vd.hidden, vd.intermediate);
            for i in 0..vd.layers {
                let l = format!("vision_tower.vision_model.encoder.layers.{i}");
                for p in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                    lora(&mut out, &format!("{l}.self_attn.{p}"), vh, vh);
                }
                lora(&mut out, &format!("{l}.mlp.fc1"), vh, vi);
                lora(&mut out, &format!("{l}.mlp.fc2"), vi, vh);
            }
            lora(&mut out, "multi_modal_projector.linear_1", vh, h);
            lora(&mut out, "multi_modal_projector.linear_2", h, h);
        }
        Stage::Lm => {
            for i in 0..t.layers {
                let l = format!("language_model.model.layers.{i}");
                lora(&mut out, &format!("{l}.self_attn.q_proj"), h, h);
                lora(&mut out, &format!("{l}.self_attn.k_proj"), h, kv);
                lora(&mut out, &format!("{l}.self_attn.v_proj"), h, kv);
                lora(&mut out, &format!("{l}.self_attn.o_proj"), h, h);
                lora(&mut out, &format!("{l}.mlp.gate_proj"), h, t.intermediate);
                lora(&mut out, &format!("{l}.mlp.up_proj"), h, t.intermediate);
                lora(&mut out, &format!("{l}.mlp.down_proj"), t.intermediate, h);
            }
            out.push(TensorSpec::new(
                "base_model.model.language_model.lm_head.base_layer.weight",
                &[LAVIC_VOCAB, h],
                StDtype::Bf16,
                Init::Std(STD),
            ));
            lora(&mut out, "language_model.lm_head", h, LAVIC_VOCAB);
        }
    }
    out
}

/// `adapter_config.json` of a LaViC adapter (peft 0.15 fields).
pub fn adapter_config_json(v: Variant, stage: Stage) -> Value {
    let target = match stage {
        Stage::Vision => {
            r"vision_tower\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))|multi_modal_projector\.linear_[12]"
        }
        Stage::Lm => {
            r"language_model\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))|language_model\.lm_head"
        }
    };
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": v.repo(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": LORA_ALPHA,
        "lora_bias": false,
        "lora_dropout": 0.1,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": LORA_R,
        "rank_pattern": {},
        "revision": null,
        "target_modules": target,
        "task_type": null,
        "use_dora": false,
        "use_rslora": false
    })
}

/// Groups tensors into shards like huggingface_hub's `split_torch_state_dict_into_shards`: in
/// order, a new shard when adding the next tensor would pass `max_bytes` (a tensor larger than
/// the limit gets a shard of its own). Returns index ranges.
pub fn plan_shards(tensors: &[TensorSpec], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let (mut start, mut size) = (0usize, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && size + t.bytes() > max_bytes {
            shards.push(start..i);
            start = i;
            size = 0;
        }
        size += t.bytes();
    }
    if start < tensors.len() {
        shards.push(start..tensors.len());
    }
    shards
}

/// Shard file names, as transformers names them.
pub fn shard_names(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect()
}

/// The bytes before the data of a safetensors file holding `tensors` in this order: the u64
/// little-endian header length and the JSON header (with `__metadata__.format = "pt"`), padded
/// with spaces to a multiple of 8 as the safetensors library does.
pub fn safetensors_header(tensors: &[TensorSpec]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut at = 0u64;
    for t in tensors {
        let end = at + t.bytes();
        map.insert(
            t.name.clone(),
            json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    while !(header.len() + 8).is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out
}

/// `model.safetensors.index.json` for `tensors` split as `shards`.
pub fn index_json(tensors: &[TensorSpec], shards: &[std::ops::Range<usize>]) -> Value {
    let names = shard_names(shards.len());
    let mut map = std::collections::BTreeMap::new();
    for (range, file) in shards.iter().zip(&names) {
        for t in &tensors[range.clone()] {
            map.insert(t.name.clone(), file.clone());
        }
    }
    let total: u64 = tensors.iter().map(TensorSpec::bytes).sum();
    json!({"metadata": {"total_size": total}, "weight_map": map})
}

/// splitmix64: a seeded stream per tensor, so every tensor is reproducible on its own.
struct Rng(u64);

impl Rng {
    fn for_tensor(seed: u64, name: &str) -> Self {
        // FNV-1a of the name mixed with the seed.
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        Self(h)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Elements generated per write.
const CHUNK: usize = 1 << 20;

fn write_tensor_data(
    w: &mut impl Write,
    t: &TensorSpec,
    seed: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut rng = Rng::for_tensor(seed, &t.name);
    // uniform(-1, 1) scaled to the wanted std (uniform std = half-width / sqrt(3))
    let (offset, half_width) = match t.init {
        Init::Std(s) => (0.0f32, s * 3f32.sqrt()),
        Init::NearOne => (1.0f32, 0.05),
    };
    let mut left = t.numel();
    while left > 0 {
        let n = left.min(CHUNK);
        buf.clear();
        let mut i = 0;
        while i < n {
            let r = rng.next();
            for k in 0..4.min(n - i) {
                let u = ((r >> (16 * k)) & 0xFFFF) as f32 / 32768.0 - 1.0;
                let x = offset + half_width * u;
                match t.dtype {
                    StDtype::Bf16 => buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                    StDtype::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                }
            }
            i += 4;
        }
        w.write_all(buf)?;
        left -= n;
    }
    Ok(())
}

/// Writes one safetensors file holding `tensors` in this order, streaming the data; returns its
/// size in bytes.
pub fn write_safetensors(path: &Path, tensors: &[TensorSpec], seed: u64) -> Result<u64> {
    let io = |e| Error::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let header = safetensors_header(tensors);
    w.write_all(&header).map_err(io)?;
    let mut buf = Vec::with_capacity(CHUNK * 4);
    for t in tensors {
        write_tensor_data(&mut w, t, seed, &mut buf).map_err(io)?;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(header.len() as u64 + tensors.iter().map(TensorSpec::bytes).sum::<u64>())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::json(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// What [`write_realsize`] writes.
#[derive(Debug, Clone)]
pub struct RealSizeOptions {
    /// Output folder (created): `model/`, `vision-adapter/`, `lm-adapter/` go in it.
    pub out: PathBuf,
    /// Which checkpoint to mimic.
    pub variant: Variant,
    /// Published sizes or the mid-size benchmark model.
    pub size: Size,
    /// Seed of every value.
    pub seed: u64,
    /// Shard size limit (transformers' default: [`DEFAULT_SHARD_BYTES`]).
    pub max_shard_bytes: u64,
    /// Folder with the llava-hf `tokenizer.json`, `tokenizer_config.json` and
    /// `special_tokens_map.json` to copy (the repository's `tests/fixtures/tokenizer`: the real
    /// Mistral SentencePiece vocabulary; the vicuna variant gets the same one, see the docs).
    pub tokenizer_dir: PathBuf,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The checkpoint folder.
    pub model_dir: PathBuf,
    /// Stage-1 adapter folder.
    pub vision_adapter: PathBuf,
    /// Stage-2 adapter folder.
    pub lm_adapter: PathBuf,
    /// Bytes of the checkpoint's shards.
    pub checkpoint_bytes: u64,
    /// Bytes of both adapters' safetensors files.
    pub adapter_bytes: u64,
    /// Parameters of the base checkpoint.
    pub params: u64,
    /// Shard files.
    pub shards: Vec<PathBuf>,
}

/// Writes the checkpoint (config, preprocessor, generation config, tokenizer, sharded bf16
/// weights with the index) and both adapters under `o.out`. Memory use is a few MiB whatever
/// the size; `progress` is called after each file with its path and size.
pub fn write_realsize(
    o: &RealSizeOptions,
    mut progress: impl FnMut(&Path, u64),
) -> Result<Written> {
    let model_dir = o.out.join("model");
    let vision_adapter = o.out.join("vision-adapter");
    let lm_adapter = o.out.join("lm-adapter");
    for d in [&model_dir, &vision_adapter, &lm_adapter] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let src = o.tokenizer_dir.join(f);
        std::fs::copy(&src, model_dir.join(f)).map_err(|e| Error::io(&src, e))?;
    }
    write_json(
        &model_dir.join("config.json"),
        &config_json(o.variant, o.size),
    )?;
    write_json(
        &model_dir.join("preprocessor_config.json"),
        &preprocessor_json(o.size),
    )?;
    write_json(
        &model_dir.join("generation_config.json"),
        &json!({"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
    )?;
    let tensors = base_tensors(o.variant, o.size);
    let plan = plan_shards(&tensors, o.max_shard_bytes);
    write_json(
        &model_dir.join("model.safetensors.index.json"),
        &index_json(&tensors, &plan),
    )?;
    let mut shards = Vec::new();
    let mut checkpoint_bytes = 0;
    for (range, name) in plan.iter().zip(shard_names(plan.len())) {
        let path = model_dir.join(name);
        let n = write_safetensors(&path, &tensors[range.clone()], o.seed)?;
        progress(&path, n);
        checkpoint_bytes += n;
        shards.push(path);
    }
    let mut adapter_bytes = 0;
    for (dir, stage) in [(&vision_adapter, Stage::Vision), (&lm_adapter, Stage::Lm)] {
        write_json(
            &dir.join("adapter_config.json"),
            &adapter_config_json(o.variant, stage),
        )?;
        let path = dir.join("adapter_model.safetensors");
        let n = write_safetensors(&path, &adapter_tensors(o.variant, o.size, stage), o.seed)?;
        progress(&path, n);
        adapter_bytes += n;
    }
    Ok(Written {
        model_dir,
        vision_adapter,
        lm_adapter,
        checkpoint_bytes,
        adapter_bytes,
        params: tensors.iter().map(|t| t.numel() as u64).sum(),
        shards,
    })
}

#[cfg(test)]
#[path = "realsize_tests.rs"]
mod tests;
