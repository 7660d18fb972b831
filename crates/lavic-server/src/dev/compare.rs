//! `lavic dev compare`: our side of `benches/compare-torch.py`, the side-by-side with transformers
//! on one checkpoint (the mid-size `lavic dev write-realsize --size mid` model on CPU). Times, after
//! one warm-up each: the vision tower over one image's 5 views and over 10 candidates' 50 views,
//! the prefill of the recommendation prompt, `--steps` greedy decode steps, our default-mode and
//! FREE requests (candidate tokens precomputed, as a catalog serves them) and our whole path
//! without a catalog (tower over every candidate's views + projector + default-mode request).
//! Prints one JSON object per measurement; `--dump` writes the prompt's token ids, image slots,
//! pixels and our prefill logits and greedy tokens, so the Python side runs the very same input
//! and checks that both compute the same function.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::Args;
use lavic_model::decoder::causal_mask;
use lavic_model::{
    argmax, Candidate, KvCache, LavicModel, LoadOptions, Mode, PromptCandidate, RecommendInput,
    RecommendOptions,
};
use serde::Deserialize;
use serde_json::json;

/// Flags of `lavic dev compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// llava-hf checkpoint folder.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// JSON file `{"context": str, "candidates": [{"id": str, "title": str}, ...]}`.
    #[arg(long)]
    pub request: PathBuf,
    /// Candidate images, used in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub images: Vec<PathBuf>,
    /// Greedy decode steps to time after the prefill.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Timed runs of each measurement (after one warm-up run).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Folder to write `prompt.json` and `tensors.safetensors` into (for compare-torch.py).
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Run only these measurements (e.g. `decode_steps`, for a profiler); default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RequestFile {
    context: String,
    candidates: Vec<ItemFile>,
}

#[derive(Debug, Deserialize)]
struct ItemFile {
    id: String,
    title: String,
}

/// One warm-up call of `f`, then `runs` timed ones; returns the seconds of each and the last
/// result.
fn timed<T>(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<f64>, T)> {
    let mut last = f()?;
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        last = f()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok((secs, last))
}

fn report(name: &str, secs: &[f64], extra: serde_json::Value) {
    let mut sorted = secs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied();
    println!(
        "{}",
        json!({"phase": "compare", "measure": name, "seconds": secs, "median": median, "extra": extra})
    );
}

/// The prompt's prefill as `generate_greedy` runs it: every position through the decoder, logits
/// at the last one. Returns the cache and those logits `[1, vocab]`.
fn prefill(model: &LavicModel, embeds: &Tensor) -> anyhow::Result<(KvCache, Tensor)> {
    let t = embeds.dim(1)?;
    let dec = model.decoder();
    let mut cache = dec.new_cache();
    let mask = causal_mask(&[0], 0, t, dec.sliding_window(), embeds.device())?;
    let hidden = model.forward(embeds, &[(0..t as u32).collect()], &mask, &mut cache)?;
    Ok((cache, dec.logits_at(&hidden, &[t as u32 - 1])?))
}

/// `steps` greedy decode steps after a prefill of `t` tokens (each: arg-max, embed, one position
/// through the decoder, logits). Returns the tokens fed, the first being the prefill's arg-max.
fn decode(
    model: &LavicModel,
    mut cache: KvCache,
    logits: &Tensor,
    t: usize,
    steps: usize,
) -> anyhow::Result<Vec<u32>> {
    let dec = model.decoder();
    let device = logits.device().clone();
    let mut logits = logits.clone();
    let mut fed = Vec::with_capacity(steps);
    for step in 0..steps {
        let next = argmax(&logits.squeeze(0)?.to_vec1::<f32>()?);
        fed.push(next);
        let e = dec.embed(&Tensor::new(&[[next]], &device)?)?;
        let mask = causal_mask(&[0], cache.len(), 1, dec.sliding_window(), &device)?;
        let h = model.forward(&e, &[vec![(t + step) as u32]], &mask, &mut cache)?;
        logits = dec.logits_at(&h, &[0])?;
    }
    Ok(fed)
}

/// The loaded model and input every measurement shares.
struct Bench<'a> {
    args: &'a CompareArgs,
    model: LavicModel,
    req: RequestFile,
    /// Every candidate's 5 views, `[N * 5, 3, S, S]`.
    pixels: Tensor,
}

impl Bench<'_> {
    /// Times `f` as measurement `name` when it was asked for (`--only`), else runs it once
    /// untimed when its result is `needed` downstream, else skips it.
    fn step<T>(
        &self,
        name: &str,
        needed: bool,
        f: impl FnMut() -> anyhow::Result<T>,
        extra: impl FnOnce(&T) -> serde_json::Value,
    ) -> anyhow::Result<Option<T>> {
        let mut f = f;
        if self.args.only.is_empty() || self.args.only.iter().any(|m| m == name) {
            let (secs, r) = timed(self.args.runs, f)?;
            report(name, &secs, extra(&r));
            Ok(Some(r))
        } else if needed {
            Ok(Some(f()?))
        } else {
            Ok(None)
        }
    }

    fn candidates(&self, tokens: &Tensor) -> anyhow::Result<Vec<Candidate>> {
        self.req
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(Candidate {
                    id: c.id.clone(),
                    title: c.title.clone(),
                    tokens: tokens.get(i)?,
                })
            })
            .collect()
    }

    fn request(
        &self,
        candidates: Vec<Candidate>,
        mode: Mode,
    ) -> anyhow::Result<lavic_model::Recommendation> {
        let options = RecommendOptions {
            mode,
            ..RecommendOptions::default()
        };
        Ok(self.model.recommend(&RecommendInput {
            context: self.req.context.clone(),
            candidates,
            options,
        })?)
    }
}

fn load(a: &CompareArgs) -> anyhow::Result<Bench<'_>> {
    let mut opts = LoadOptions::new(&a.model_dir);
    opts.dtype = Some(lavic_model::parse_dtype(&a.dtype)?);
    let t = Instant::now();
    let model = LavicModel::load(&opts)?;
    let load_s = t.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&a.request)
        .with_context(|| format!("reading {}", a.request.display()))?;
    let req: RequestFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", a.request.display()))?;
    if req.candidates.is_empty() {
        anyhow::bail!("{}: no candidates", a.request.display());
    }
    let images = a
        .images
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(model.encoder.decode(&bytes)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per_candidate: Vec<_> = (0..req.candidates.len())
        .map(|i| images[i % images.len()].clone())
        .collect();
    let pixels = model.encoder.pixels(&per_candidate)?;
    println!(
        "{}",
        json!({"phase": "load", "seconds": load_s, "threads": candle_core::utils::get_num_threads()})
    );
    Ok(Bench {
        args: a,
        model,
        req,
        pixels,
    })
}

/// Runs `lavic dev compare`.
pub fn compare(a: &CompareArgs) -> anyhow::Result<()> {
    let b = load(a)?;
    let (model, pixels) = (&b.model, &b.pixels);
    let one = pixels.narrow(0, 0, lavic_model::NUM_VIEWS)?;
    b.step(
        "tower_5_views",
        false,
        || Ok(model.encoder.cls_from_pixels(&one)?),
        |_| json!({"views": 5}),
    )?;
    let cls = b.step(
        "tower_all_views",
        a.dump.is_some(),
        || Ok(model.encoder.cls_from_pixels(pixels)?),
        |_| json!({"views": pixels.dim(0).ok()}),
    )?;
    let cls = match cls {
        Some(cls) => cls,
        // Not measured (--only, e.g. for a profiler): the first image's features for every
        // candidate, which saves most of the tower's time and changes no shape.
        None => {
            let first = model.encoder.cls_from_pixels(&one)?;
            Tensor::cat(&vec![&first; b.req.candidates.len()], 0)?
        }
    };
    let tokens = model.encoder.project(&cls)?;

    let pc: Vec<PromptCandidate> = b
        .req
        .candidates
        .iter()
        .map(|c| PromptCandidate {
            id: &c.id,
            title: &c.title,
        })
        .collect();
    let prompt = model.build_prompt(&b.req.context, &pc, None)?;
    let slots: Vec<Tensor> = (0..pc.len())
        .map(|i| tokens.get(i))
        .collect::<candle_core::Result<_>>()?;
    let embeds = model.prompt_embeds(&prompt.tokens, &slots)?;
    let t_len = prompt.tokens.ids.len();
    let pre = b.step(
        "prefill",
        true,
        || prefill(model, &embeds),
        |_| json!({"prompt_tokens": t_len}),
    )?;
    let (cache, logits) = pre.context("the prefill")?;
    let fed = b.step(
        "decode_steps",
        a.dump.is_some(),
        || decode(model, cache.clone(), &logits, t_len, a.steps),
        |fed| json!({"steps": a.steps, "tokens": fed}),
    )?;

    for (mode, name) in [
        (Mode::Default, "request_default"),
        (Mode::Free, "request_free"),
    ] {
        let extra = |r: &lavic_model::Recommendation| json!({"pick": r.pick, "valid": r.valid, "raw_answer": r.raw_answer, "prompt_tokens": r.prompt_tokens});
        b.step(
            name,
            false,
            || b.request(b.candidates(&tokens)?, mode),
            extra,
        )?;
    }
    // Without a catalog: every candidate's views through the tower, then the request.
    for (mode, name) in [
        (Mode::Default, "path_default_with_tower"),
        (Mode::Free, "path_free_with_tower"),
    ] {
        let run = || {
            let tokens = model
                .encoder
                .project(&model.encoder.cls_from_pixels(pixels)?)?;
            b.request(b.candidates(&tokens)?, mode)
        };
        b.step(
            name,
            false,
            run,
            |r| json!({"pick": r.pick, "valid": r.valid}),
        )?;
    }
    if let (Some(dir), Some(fed)) = (&a.dump, fed) {
        dump(dir, &prompt.tokens, pixels, &cls, &logits, &fed)?;
    }
    Ok(())
}

/// Writes what the Python side needs to run the same input and check its results against ours.
fn dump(
    dir: &Path,
    prompt: &lavic_model::TokenizedPrompt,
    pixels: &Tensor,
    cls: &Tensor,
    logits: &Tensor,
    fed: &[u32],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = json!({"ids": prompt.ids, "image_slots": prompt.image_slots, "greedy": fed});
    let path = dir.join("prompt.json");
    std::fs::write(&path, meta.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    let f32 = DType::F32;
    let tensors = HashMap::from([
        ("pixels".to_string(), pixels.to_dtype(f32)?),
        ("cls".to_string(), cls.to_dtype(f32)?),
        ("prefill_logits".to_string(), logits.to_dtype(f32)?),
    ]);
    candle_core::safetensors::save(&tensors, dir.join("tensors.safetensors"))?;
    Ok(())
}
