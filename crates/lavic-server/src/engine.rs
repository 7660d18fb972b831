//! The model side of the server: loading (model, adapters and catalog, or an embedded demo of
//! [`crate::demo`] with its catalog built at start-up) and the work a model worker does on one
//! batch: resolve every candidate to its 5 image tokens (catalog, inline image or the reference's
//! white-image fallback), then one `recommend_batch` call, which builds each prompt once under
//! the budget and overlong policy given in its options. Model errors come
//! back typed and are mapped by variant ([`Error::from_model`]). Runs only on worker threads,
//! never on the async runtime.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use lavic_model::{Candidate, LavicModel, LoadOptions, Overlong, RecommendInput, RecommendOptions, Recommendation, Rgb8, Tensor};

use crate::config::{Config, OverlongPolicy, UnknownIds};
use crate::demo::{DemoCatalog, DemoModel};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::proto;
use crate::store::Store;
use crate::validation::{Decoded, Source};

/// `f32`, `f16`, `bf16` (candle's name otherwise).
fn dtype_name(d: candle_core::DType) -> String {
    match d {
        candle_core::DType::F32 => "f32".into(),
        candle_core::DType::F16 => "f16".into(),
        candle_core::DType::BF16 => "bf16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What to load: the configured model and adapters, or (`demo`) the demo's files, each of which
/// the configuration may still override.
fn load_options(config: &Config, demo: Option<&DemoModel>) -> LoadOptions {
    match demo {
        Some(d) => {
            let mut o = LoadOptions::new(&d.model_dir);
            o.tokenizer = Some(config.tokenizer.clone().unwrap_or_else(|| d.tokenizer.clone()));
            o.vision_adapter = Some(config.vision_adapter.clone().unwrap_or_else(|| d.vision_adapter.clone()));
            o.lm_adapter = Some(config.lm_adapter.clone().unwrap_or_else(|| d.lm_adapter.clone()));
            o
        }
        None => {
            let mut o = LoadOptions::new(config.model_dir.clone().unwrap_or_default());
            o.tokenizer = config.tokenizer.clone();
            o.vision_adapter = config.vision_adapter.clone();
            o.lm_adapter = config.lm_adapter.clone();
            o
        }
    }
}

/// A catalog refused for its fingerprint: says which setting of this model would match it
/// (dtype, vision adapter), so the operator knows what to change.
fn explain_mismatch(e: Error, opts: &LoadOptions) -> Error {
    let Error::Catalog(lavic_catalog::Error::FingerprintMismatch { catalog, .. }) = &e else { return e };
    let ours = format!(
        "dtype {}{}",
        opts.dtype.map(dtype_name).unwrap_or_else(|| "of the checkpoint".into()),
        if opts.vision_adapter.is_some() { ", with the vision adapter" } else { ", no vision adapter" }
    );
    match lavic_model::explain_fingerprint(opts, catalog) {
        Some(theirs) => Error::Startup(format!(
            "{e}. The setting that differs: the catalog was built with {theirs}, this server runs {ours}; serve with the catalog's setting (LAVIC_DTYPE / LAVIC_VISION_ADAPTER) or rebuild the catalog with the server's"
        )),
        None => Error::Startup(format!(
            "{e}. No dtype or vision-adapter setting of this model gives the catalog's fingerprint (this server runs {ours}): the catalog comes from other vision weights or preprocessing"
        )),
    }
}

/// The model's answer to one request, with the candidates that used the fallback.
#[derive(Debug)]
pub struct Answer {
    /// The model's result.
    pub recommendation: Recommendation,
    /// Candidate ids that used the reference fallback ("No Title", white image).
    pub fallback_ids: Vec<String>,
}

/// Settings the worker applies to every request.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_prompt_tokens: usize,
    overlong: Overlong,
}

impl From<OverlongPolicy> for Overlong {
    fn from(p: OverlongPolicy) -> Self {
        match p {
            OverlongPolicy::Shorten => Overlong::Shorten,
            OverlongPolicy::Reject => Overlong::Reject,
        }
    }
}

/// One request of a batch turned into the model's input.
struct Prepared {
    input: RecommendInput,
    /// Candidate ids that used the fallback.
    fallback_ids: Vec<String>,
    /// Where the dialogue came (`context` or `turns`), to name it in a refusal.
    dialogue_field: &'static str,
}

/// Loaded model + catalog, shared by the workers and (read-only) by handlers.
pub struct Engine {
    /// The model.
    pub model: LavicModel,
    /// The catalog.
    pub store: Store,
    /// The static part of `ModelInfo`.
    pub info: proto::ModelInfoResponse,
    settings: Settings,
    /// Tokens of the reference's white image, computed once on first use.
    white: OnceLock<Tensor>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Loads everything `config` names (blocking; minutes for a 7B model).
    pub fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Self> {
        let device = lavic_model::parse_device(&config.device)?;
        let demo = match &config.model_dir {
            Some(_) => None,
            None => Some(DemoModel::locate(config.demo, config.demo_dir.as_deref())?),
        };
        let mut opts = load_options(config, demo.as_ref());
        // No dtype configured: the default `lavic catalog build` uses too (f32 on CPU, the
        // checkpoint's on CUDA), so catalogs built and served with the defaults match.
        opts.dtype = config.dtype.map(|d| d.dtype()).or_else(|| lavic_model::default_dtype(&device));
        opts.device = device;
        opts.decode_limits.max_bytes = config.max_image_bytes;
        opts.decode_limits.max_pixels = config.max_image_pixels;
        let t = Instant::now();
        let model = LavicModel::load(&opts)?;
        tracing::info!(model = %opts.model_dir.display(), secs = t.elapsed().as_secs_f32(), "model loaded");
        let items_gauge = metrics.catalog_items.clone();
        let store = match (&config.catalog_dir, config.redis_config()?) {
            (Some(dir), _) => Store::open(dir, &model.encoder, items_gauge, config.allow_memory_only_writes).map_err(|e| explain_mismatch(e, &opts))?,
            (None, Some(redis)) => Store::open_redis(&redis, &model.encoder, items_gauge, metrics.store.clone())?,
            // A demo's own catalog; a configured model without a catalog gets the five fixture items.
            (None, None) => {
                let items = demo.as_ref().map_or(&DemoCatalog::Fixture, |d| &d.catalog);
                Store::demo(items, &model.encoder, items_gauge)?
            }
        };
        tracing::info!(catalog = %store.describe(), items = store.len(), shared = store.backend().is_shared(), "catalog opened");
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let info = proto::ModelInfoResponse {
            model_dir: opts.model_dir.display().to_string(),
            tokenizer: opts.tokenizer.clone().unwrap_or_else(|| opts.model_dir.join("tokenizer.json")).display().to_string(),
            vision_adapter: path(&opts.vision_adapter),
            lm_adapter: path(&opts.lm_adapter),
            dtype: dtype_name(model.encoder.dtype()),
            device: config.device.clone(),
            encoder_fingerprint: model.encoder.fingerprint().to_string(),
            catalog_dir: store.describe(),
            catalog_fingerprint: store.fingerprint(),
            catalog_items: 0,
            max_candidates: config.max_candidates as u32,
            max_prompt_tokens: config.max_prompt_tokens as u32,
            overlong_policy: match config.overlong_policy {
                OverlongPolicy::Shorten => "shorten".into(),
                OverlongPolicy::Reject => "reject".into(),
            },
            demo: config.is_demo(),
            demo_kind: demo.as_ref().map(|d| d.kind.as_str().to_string()).unwrap_or_default(),
            server_version: env!("CARGO_PKG_VERSION").into(),
        };
        let settings = Settings { max_prompt_tokens: config.max_prompt_tokens, overlong: config.overlong_policy.into() };
        Ok(Self { model, store, info, settings, white: OnceLock::new(), metrics })
    }

    /// `ModelInfo` with the current catalog size.
    pub fn model_info(&self) -> proto::ModelInfoResponse {
        proto::ModelInfoResponse { catalog_items: self.store.len() as u64, ..self.info.clone() }
    }

    /// The metrics the engine updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn white_tokens(&self) -> Result<Tensor> {
        if let Some(t) = self.white.get() {
            return Ok(t.clone());
        }
        let t = self.encode_images(&[self.model.encoder.white_image()])?.remove(0);
        Ok(self.white.get_or_init(|| t).clone())
    }

    /// 5 projected tokens (`[5, hidden]`) per image, in one vision pass.
    fn encode_images(&self, images: &[Rgb8]) -> Result<Vec<Tensor>> {
        let enc = &self.model.encoder;
        let projected = enc.project(&enc.encode_cls(images)?)?;
        (0..images.len()).map(|i| projected.get(i).map_err(|e| Error::Model(e.into()))).collect()
    }

    /// Turns one decoded request into the model's input: every candidate with its image tokens.
    fn prepare(&self, req: &Decoded) -> Result<Prepared> {
        // Catalog lookups for every candidate not given inline.
        let catalog_ids: Vec<&str> =
            req.candidates.iter().filter(|c| matches!(c.source, Source::Catalog)).map(|c| c.id.as_str()).collect();
        let found = if catalog_ids.is_empty() { Vec::new() } else { self.store.tokens(&catalog_ids, &self.model.encoder)? };
        let unknown: Vec<String> =
            catalog_ids.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(id, _)| id.to_string()).collect();
        if !unknown.is_empty() && req.unknown_ids == UnknownIds::Reject {
            return Err(Error::NotFound { what: "candidate ids", ids: unknown });
        }
        // Inline images, encoded together.
        let images: Vec<Rgb8> = req
            .candidates
            .iter()
            .filter_map(|c| match &c.source {
                Source::Inline { image: Some(img), .. } => Some(img.clone()),
                _ => None,
            })
            .collect();
        let mut inline_tokens = if images.is_empty() { Vec::new() } else { self.encode_images(&images)? }.into_iter();
        let mut found = found.into_iter();
        let mut candidates = Vec::with_capacity(req.candidates.len());
        for c in &req.candidates {
            let (title, tokens) = match &c.source {
                Source::Catalog => match found.next().flatten() {
                    Some(item) => (item.title, item.tokens),
                    None => (String::new(), self.white_tokens()?),
                },
                Source::Inline { title, image: Some(_), .. } => {
                    let t = inline_tokens.next().ok_or_else(|| Error::Internal("inline image tokens missing".into()))?;
                    (title.clone(), t)
                }
                Source::Inline { title, image: None, .. } => (title.clone(), self.white_tokens()?),
            };
            candidates.push(Candidate { id: c.id.clone(), title, tokens });
        }
        let options = RecommendOptions {
            mode: req.mode,
            max_prompt_tokens: Some(self.settings.max_prompt_tokens),
            overlong: self.settings.overlong,
            scores: req.include_scores,
            ..Default::default()
        };
        let input = RecommendInput { context: req.context.clone(), candidates, options };
        Ok(Prepared { input, fallback_ids: unknown, dialogue_field: req.dialogue_field })
    }

    /// Runs one batch: every request gets its own result, in order. Default-mode requests share
    /// one forward pass (the model reruns each alone if that pass fails, so one bad request
    /// cannot fail its neighbours).
    pub fn recommend(&self, requests: &[&Decoded]) -> Vec<Result<Answer>> {
        let mut out: Vec<Option<Result<Answer>>> = requests.iter().map(|_| None).collect();
        let mut inputs = Vec::new();
        let mut slots = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match self.prepare(r) {
                Ok(p) => {
                    inputs.push(p.input);
                    slots.push((i, p.fallback_ids, p.dialogue_field));
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        if !inputs.is_empty() {
            self.metrics.batch_size.observe(inputs.len() as f64);
            let batch = self.model.recommend_batch(&inputs);
            if let Some(e) = &batch.shared_pass_error {
                tracing::warn!(batch = inputs.len(), error = %e, "the shared forward pass failed; each request was run alone");
            }
            for ((i, fallback_ids, field), r) in slots.into_iter().zip(batch.results) {
                out[i] = Some(r.map(|recommendation| Answer { recommendation, fallback_ids }).map_err(|e| Error::from_model(e, field)));
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Internal("request not processed".into())))).collect()
    }
}
