//! `lavic eval`: runs a model over a Reddit-Amazon conversation file, as it is, and reports the
//! paper's metrics (see `eval_metrics`), mean prompt tokens, shortened conversations, fallbacks
//! and latency, with one JSON line per conversation in `--out`.
//!
//! Two backends give the same answers for the same model: in-process (the model is loaded here;
//! the candidates' image tokens come from a catalog built for the conversations' items in a
//! temporary folder, or from `--catalog`; unknown ids get the reference's fallback: title
//! "No Title" and the white image) and gRPC against a running server (`--addr`; the request asks
//! for the fallback policy, so the server's catalog and fallback apply).
//!
//! With `--baseline random|title-similarity` no model is loaded: the baseline picks
//! (`baseline`), and the picks are scored and summarised the same way.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use lavic_catalog::{BuildOptions, Catalog, InputFormat, ProgressMode};
use lavic_model::{parse_device, parse_dtype, Candidate, LavicModel, LoadOptions, RecommendInput, RecommendOptions, Tensor};
use lavic_server::client::TlsArgs;
use lavic_server::proto::{self, recommend_request::Dialogue, recommender_client::RecommenderClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::baseline::{Baseline, BaselineArgs};
use crate::dataset::{read_conversations, CandidateList, Conversation};
use crate::eval_metrics::{score, summarize, Answer, Record, RunInfo, Summary};
use crate::progress::{Progress, ProgressArg};

/// Decoding mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum EvalMode {
    /// One forward pass scoring every candidate (the server's default).
    #[default]
    Default,
    /// The reference's greedy generation of 10 tokens, then matching.
    Free,
}

/// Flags of `lavic eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Conversation file (JSONL: context, gt_items, candidates_st, candidates_gpt_large), as
    /// distributed.
    #[arg(long)]
    pub data: PathBuf,
    /// Items file for titles and images (our items JSONL, item2meta_train.json or
    /// item2meta_valid.jsonl). Ids it lacks get the fallback ("No Title", white image).
    #[arg(long, conflicts_with_all = ["catalog", "addr"])]
    pub items: Option<PathBuf>,
    /// Folder the items' image paths are relative to (with a model; a baseline reads titles only).
    #[arg(long, requires = "items")]
    pub images: Option<PathBuf>,
    /// A catalog built with `lavic catalog build` for this model, used as is (instead of --items).
    #[arg(long, conflicts_with = "addr")]
    pub catalog: Option<PathBuf>,
    /// llava-hf LLaVA-NeXT checkpoint folder (in-process).
    #[arg(long, required_unless_present_any = ["addr", "baseline"], conflicts_with = "addr")]
    pub model: Option<PathBuf>,
    /// tokenizer.json [default: MODEL/tokenizer.json].
    #[arg(long, requires = "model")]
    pub tokenizer: Option<PathBuf>,
    /// Stage-1 (vision) LoRA adapter folder.
    #[arg(long, requires = "model")]
    pub vision_adapter: Option<PathBuf>,
    /// Stage-2 (language model) LoRA adapter folder.
    #[arg(long, requires = "model")]
    pub lm_adapter: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", requires = "model")]
    pub device: String,
    /// f32, f16 or bf16 (a --catalog must have been built with the same).
    #[arg(long, default_value = "f32", requires = "model")]
    pub dtype: String,
    /// Which candidate list to use.
    #[arg(long, value_enum, default_value_t = CandidateList::St)]
    pub candidates: CandidateList,
    /// default: one-pass scoring (always names a candidate); free: the reference's generation.
    #[arg(long, value_enum, default_value_t = EvalMode::Default)]
    pub mode: EvalMode,
    /// Only the first N conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Conversations per model call (in-process; default-mode ones share one forward pass).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,
    /// Prompt token budget; longer dialogues are shortened from the front (in-process; a server
    /// applies its own).
    #[arg(long, default_value_t = 4096)]
    pub max_prompt_tokens: usize,
    /// Evaluate against a running server instead (e.g. 127.0.0.1:50051).
    #[arg(long)]
    pub addr: Option<String>,
    /// Requests in flight against --addr.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256), requires = "addr")]
    pub concurrency: u32,
    /// Deadline of each request against --addr, in seconds.
    #[arg(long, default_value_t = 600, requires = "addr")]
    pub timeout_secs: u64,
    /// TLS (with --addr).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Results: one JSON line per conversation.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
}

/// `lavic eval`'s flags: a model's (or a server's) evaluation, or a baseline's.
#[derive(Debug, Clone, Args)]
pub struct EvalCommand {
    /// What to evaluate on, and the model.
    #[command(flatten)]
    pub eval: EvalArgs,
    /// A baseline instead of the model.
    #[command(flatten)]
    pub baseline: BaselineArgs,
}

/// Runs the evaluation, prints the summary and returns it. Fails after writing everything when a
/// conversation failed.
pub fn run(cmd: &EvalCommand) -> anyhow::Result<Summary> {
    let args = &cmd.eval;
    let summary = evaluate_with(args, cmd.baseline.baseline.map(|b| (b, cmd.baseline.seed)))?;
    print!("{}", summary.render());
    println!("  results: {}", args.out.display());
    if summary.errors > 0 {
        bail!("{} of {} conversations failed (see the `error` field in {})", summary.errors, summary.conversations, args.out.display());
    }
    Ok(summary)
}

/// Runs the evaluation and writes `--out` and `--summary`, printing nothing (what `lavic train`
/// calls on each checkpoint).
pub fn evaluate(args: &EvalArgs) -> anyhow::Result<Summary> {
    evaluate_with(args, None)
}

/// [`evaluate`] of a model, or of `baseline` (with its seed) when given.
fn evaluate_with(args: &EvalArgs, baseline: Option<(Baseline, u64)>) -> anyhow::Result<Summary> {
    let convs = read_conversations(&args.data, args.candidates, args.limit)?;
    if convs.is_empty() {
        bail!("{}: no conversations", args.data.display());
    }
    let mut out = BufWriter::new(File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?);
    let (records, mut run) = match (baseline, &args.addr) {
        (Some((b, seed)), _) => crate::baseline::run(args, b, seed, &convs, &mut out)?,
        (None, Some(addr)) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(run_remote(args, addr, &convs, &mut out))?
        }
        (None, None) => run_local(args, &convs, &mut out)?,
    };
    out.flush()?;
    run.data = args.data.display().to_string();
    let summary = summarize(&records, run);
    if let Some(p) = &args.summary {
        std::fs::write(p, serde_json::to_string_pretty(&summary)? + "\n").with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(summary)
}

fn run_info(args: &EvalArgs, backend: String, model: String) -> RunInfo {
    RunInfo {
        data: String::new(),
        candidates: args.candidates.key().into(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        backend,
        model,
        batch: args.batch as usize,
        concurrency: args.concurrency as usize,
        wall_seconds: 0.0,
        missing_image_items: None,
        baseline: None,
    }
}

fn write_record(out: &mut impl Write, r: &Record) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    out.write_all(b"\n")?;
    Ok(())
}

// ---- in-process -----------------------------------------------------------------------------

/// The model, the catalog the candidates come from (if any) and the fallback's image tokens.
struct Local {
    model: LavicModel,
    catalog: Option<Catalog>,
    white: Tensor,
    missing_images: Option<usize>,
    /// Holds the temporary catalog built for this run (removed on drop).
    _temp: Option<tempfile::TempDir>,
}

fn load_local(args: &EvalArgs, convs: &[Conversation]) -> anyhow::Result<Local> {
    let model_dir = args.model.as_ref().context("--model is required without --addr")?;
    if args.items.is_some() && args.images.is_none() {
        bail!("--items needs --images (the folder the items' image paths are relative to) to evaluate a model");
    }
    let mut o = LoadOptions::new(model_dir);
    o.tokenizer = args.tokenizer.clone();
    o.vision_adapter = args.vision_adapter.clone();
    o.lm_adapter = args.lm_adapter.clone();
    o.dtype = Some(parse_dtype(&args.dtype)?);
    o.device = parse_device(&args.device)?;
    let t = Instant::now();
    let model = LavicModel::load(&o)?;
    eprintln!("model loaded from {} in {:.1} s", model_dir.display(), t.elapsed().as_secs_f64());
    let enc = &model.encoder;
    let white = enc.project(&enc.encode_cls(&[enc.white_image()])?)?.get(0)?;
    let (catalog, missing_images, temp) = match (&args.catalog, &args.items, &args.images) {
        (Some(dir), _, _) => {
            let c = Catalog::open_read_only(dir)?;
            c.check_encoder(enc).with_context(|| format!("catalog {} does not match this model", dir.display()))?;
            (Some(c), None, None)
        }
        (None, Some(items), Some(images)) => {
            let temp = tempfile::Builder::new().prefix("lavic-eval-").tempdir()?;
            let (c, missing) = build_catalog(items, images, temp.path(), convs, &model)?;
            (Some(c), Some(missing), Some(temp))
        }
        _ => (None, None, None),
    };
    Ok(Local { model, catalog, white, missing_images, _temp: temp })
}

/// Builds a catalog of the items the conversations use (only those are encoded).
fn build_catalog(items: &Path, images: &Path, dir: &Path, convs: &[Conversation], model: &LavicModel) -> anyhow::Result<(Catalog, usize)> {
    let needed: HashSet<&str> = convs.iter().flat_map(|c| c.candidates.iter().map(String::as_str)).collect();
    let mut lines = String::new();
    for it in lavic_catalog::read_items(items, InputFormat::Auto)? {
        if needed.contains(it.id.as_str()) {
            lines += &serde_json::json!({ "id": it.id, "title": it.title, "image": it.image }).to_string();
            lines.push('\n');
        }
    }
    let subset = dir.join("items.jsonl");
    std::fs::write(&subset, lines)?;
    let mut opts = BuildOptions::new(&subset, images, dir.join("catalog"));
    opts.format = InputFormat::Items;
    opts.progress = ProgressMode::Off;
    let t = Instant::now();
    let report = lavic_catalog::build(&opts, &model.encoder)?;
    eprintln!(
        "catalog of {} items used by the conversations built in {:.1} s ({} without an image file, {} left out)",
        report.items,
        t.elapsed().as_secs_f64(),
        report.missing_images.len(),
        report.failed.len()
    );
    for (id, why) in report.failed.iter().take(5) {
        eprintln!("  left out (fallback instead): {id}: {why}");
    }
    Ok((Catalog::open_read_only(&dir.join("catalog"))?, report.missing_images.len()))
}

impl Local {
    /// The model input of one conversation and the ids that used the fallback.
    fn input(&self, conv: &Conversation, opts: RecommendOptions) -> anyhow::Result<(RecommendInput, Vec<String>)> {
        let ids: Vec<&str> = conv.candidates.iter().map(String::as_str).collect();
        let found = match &self.catalog {
            Some(c) => c.tokens(&ids, &self.model.encoder)?,
            None => ids.iter().map(|_| None).collect(),
        };
        let mut fallback = Vec::new();
        let candidates = ids
            .iter()
            .zip(found)
            .map(|(id, item)| match item {
                Some(item) => Candidate { id: id.to_string(), title: item.title, tokens: item.tokens },
                None => {
                    fallback.push(id.to_string());
                    Candidate { id: id.to_string(), title: String::new(), tokens: self.white.clone() }
                }
            })
            .collect();
        Ok((RecommendInput { context: conv.context.clone(), candidates, options: opts }, fallback))
    }
}

fn run_local(args: &EvalArgs, convs: &[Conversation], out: &mut impl Write) -> anyhow::Result<(Vec<Record>, RunInfo)> {
    let local = load_local(args, convs)?;
    let free = args.mode == EvalMode::Free;
    let opts = RecommendOptions {
        mode: if free { lavic_model::Mode::Free } else { lavic_model::Mode::Default },
        max_prompt_tokens: Some(args.max_prompt_tokens),
        ..Default::default()
    };
    let mut progress = Progress::new("conversations", convs.len(), args.progress);
    let mut records = Vec::with_capacity(convs.len());
    let start = Instant::now();
    for chunk in convs.chunks(args.batch as usize) {
        let t = Instant::now();
        let prepared: Vec<anyhow::Result<(RecommendInput, Vec<String>)>> = chunk.iter().map(|c| local.input(c, opts)).collect();
        let inputs: Vec<RecommendInput> = prepared.iter().filter_map(|p| p.as_ref().ok().map(|(i, _)| i.clone())).collect();
        let mut results = local.model.recommend_batch(&inputs).results.into_iter();
        let latency = t.elapsed();
        for (conv, p) in chunk.iter().zip(prepared) {
            let answer = match p {
                Err(e) => Err(format!("{e:#}")),
                Ok((_, fallback_ids)) => match results.next() {
                    Some(Ok(r)) => Ok(Answer {
                        pick: r.pick,
                        valid: r.valid,
                        raw_answer: r.raw_answer,
                        reference_parsed_id: r.parsed_id,
                        prompt_tokens: r.prompt_tokens,
                        shortened_tokens: r.shortened_tokens,
                        fallback_ids,
                        latency,
                    }),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("no result".into()),
                },
            };
            let rec = score(conv, answer, free);
            write_record(out, &rec)?;
            records.push(rec);
        }
        out.flush()?;
        progress.inc(chunk.len());
    }
    progress.finish();
    let model = args.model.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let mut run = run_info(args, "in-process".into(), model);
    run.wall_seconds = start.elapsed().as_secs_f64();
    run.missing_image_items = local.missing_images;
    Ok((records, run))
}

// ---- gRPC -----------------------------------------------------------------------------------

async fn connect(addr: &str, tls: &TlsArgs) -> anyhow::Result<Channel> {
    let scheme = if tls.tls_ca.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let mut e = Endpoint::from_shared(uri)?.connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &tls.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(d) = &tls.tls_domain {
            cfg = cfg.domain_name(d.clone());
        }
        e = e.tls_config(cfg)?;
    }
    e.connect().await.with_context(|| format!("cannot connect to {addr}"))
}

async fn ask(mut client: RecommenderClient<Channel>, conv: Conversation, mode: proto::Mode, timeout: Duration) -> Result<Answer, String> {
    let mut req = tonic::Request::new(proto::RecommendRequest {
        request_id: format!("eval-{}", conv.index),
        dialogue: Some(Dialogue::Context(conv.context)),
        candidate_ids: conv.candidates,
        mode: mode as i32,
        unknown_id_policy: proto::UnknownIdPolicy::Fallback as i32,
        ..Default::default()
    });
    req.set_timeout(timeout);
    let t = Instant::now();
    let r = client.recommend(req).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner();
    Ok(Answer {
        pick: (!r.item_id.is_empty()).then_some(r.item_id),
        valid: r.valid,
        raw_answer: r.raw_answer,
        reference_parsed_id: (!r.reference_parsed_id.is_empty()).then_some(r.reference_parsed_id),
        prompt_tokens: r.prompt_tokens as usize,
        shortened_tokens: r.shortened_tokens as usize,
        fallback_ids: r.fallback_ids,
        latency: t.elapsed(),
    })
}

async fn run_remote(args: &EvalArgs, addr: &str, convs: &[Conversation], out: &mut impl Write) -> anyhow::Result<(Vec<Record>, RunInfo)> {
    let channel = connect(addr, &args.tls).await?;
    let mut client = RecommenderClient::new(channel);
    let info = client.model_info(proto::ModelInfoRequest {}).await.context("ModelInfo")?.into_inner();
    let free = args.mode == EvalMode::Free;
    let mode = if free { proto::Mode::Free } else { proto::Mode::Default };
    let timeout = Duration::from_secs(args.timeout_secs);
    // Bounds the requests in flight; each task holds a permit until its answer is back.
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let mut progress = Progress::new("conversations", convs.len(), args.progress);
    let start = Instant::now();
    let mut pending = BTreeMap::new();
    let mut next = 0usize;
    let mut records = Vec::with_capacity(convs.len());
    let mut issued = 0usize;
    while next < convs.len() {
        // Issue while there is a free slot; otherwise wait for an answer.
        if issued < convs.len() {
            if let Ok(permit) = slots.clone().try_acquire_owned() {
                let conv = convs[issued].clone();
                let c = client.clone();
                tasks.spawn(async move {
                    let i = conv.index;
                    let r = ask(c, conv, mode, timeout).await;
                    drop(permit);
                    (i, r)
                });
                issued += 1;
                continue;
            }
        }
        let (i, answer) = tasks.join_next().await.context("no task left")??;
        pending.insert(i, answer);
        progress.inc(1);
        // Write in file order as soon as the next conversation is answered.
        while let Some(answer) = pending.remove(&next) {
            let rec = score(&convs[next], answer, free);
            write_record(out, &rec)?;
            records.push(rec);
            next += 1;
        }
    }
    progress.finish();
    let mut run = run_info(args, format!("gRPC {addr}"), info.model_dir);
    run.wall_seconds = start.elapsed().as_secs_f64();
    Ok((records, run))
}
