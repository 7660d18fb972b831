//! `lavic catalog ...`: the clap subcommands (mounted by the `lavic` binary, and by the
//! stand-alone `lavic-catalog` binary of this crate) and their runner; `push` loads a folder into
//! a Redis catalog store.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use lavic_model::{parse_device, parse_dtype, ImageEncoder, LoadOptions};

use crate::{build, compact, info, merge, verify, BuildOptions, InputFormat, ProgressMode, Shard, StoreForm};

/// Catalog commands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Build a catalog, or update one in place: only new or changed images are encoded, items no
    /// longer in the input are removed.
    Build(BuildArgs),
    /// Print what a catalog holds (items, bytes per item, fingerprint, missing/failed images).
    Info(InfoArgs),
    /// Check every checksum of a catalog; exits non-zero if anything is wrong.
    Verify(VerifyArgs),
    /// Merge shard catalogs (from `build --shard I/N`) into one catalog.
    Merge(MergeArgs),
    /// Fold live upserts and deletes (the delta log) into a new base segment.
    Compact(CompactArgs),
    /// Load a catalog folder (a build, or a sharded build's merge) into a Redis catalog store,
    /// incrementally: items identical in Redis (image, title, metadata) are skipped.
    Push(PushArgs),
}

/// `catalog build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Items file: JSONL lines `{"id","title","image",...}`, or the reference's
    /// item2meta_train.json / item2meta_valid.jsonl.
    #[arg(long)]
    pub items: PathBuf,
    /// Folder the image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// llava-hf LLaVA-NeXT checkpoint folder.
    #[arg(long, env = "LAVIC_MODEL_DIR")]
    pub model: PathBuf,
    /// Stage-1 (vision tower + projector) LoRA adapter folder.
    #[arg(long, env = "LAVIC_VISION_ADAPTER")]
    pub vision_adapter: Option<PathBuf>,
    /// Catalog folder (created with its parents; an existing catalog is updated).
    #[arg(long)]
    pub out: PathBuf,
    /// Build only shard I of N (items at input positions p with p % N == I), e.g. `0/4`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// What to store: CLS features (projected per request) or projected tokens (4x larger for
    /// LLaVA-NeXT 7B, no projector work per request).
    #[arg(long, value_enum, default_value_t = FormArg::Cls)]
    pub form: FormArg,
    /// Layout of the items file.
    #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
    pub format: FormatArg,
    /// Images per vision-tower pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "LAVIC_DEVICE", default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, the checkpoint's on CUDA, as `lavic serve`). Must
    /// match the server's: it is part of the fingerprint.
    #[arg(long, env = "LAVIC_DTYPE")]
    pub dtype: Option<String>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Print the build report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--form`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormArg {
    /// CLS features before the projector (default).
    Cls,
    /// Projector outputs.
    Projected,
}

/// `--format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// From the file name and fields.
    Auto,
    /// Our JSONL.
    Items,
    /// item2meta_train.json.
    Train,
    /// item2meta_valid.jsonl.
    Valid,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProgressArg {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Log lines every 10 s.
    Log,
    /// None.
    Off,
}

/// `catalog info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Catalog folder.
    pub dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `catalog verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Catalog folder.
    pub dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `catalog merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Merged catalog folder (created with its parents; replaced if it is a catalog).
    #[arg(long)]
    pub out: PathBuf,
    /// Shard catalog folders.
    #[arg(required = true, num_args = 1..)]
    pub shards: Vec<PathBuf>,
}

/// `catalog compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Catalog folder.
    pub dir: PathBuf,
}

/// `catalog push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Catalog folder.
    pub dir: PathBuf,
    /// `redis://host[:port][/db]` or `rediss://...` (TLS). No password here: it comes from
    /// LAVIC_REDIS_PASSWORD or LAVIC_REDIS_PASSWORD_FILE (user: LAVIC_REDIS_USERNAME).
    pub url: String,
    /// Items per write batch (each batch lands whole or not at all).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Also delete the items of the Redis namespace that the catalog does not have.
    #[arg(long)]
    pub prune: bool,
    /// Key prefix (must match the servers' `redis_key_prefix`).
    #[arg(long, env = "LAVIC_REDIS_KEY_PREFIX", default_value = "lavic")]
    pub key_prefix: String,
    /// PEM file of a private CA for rediss://.
    #[arg(long, env = "LAVIC_REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Redis replicas that must acknowledge each batch (`WAIT`).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
    /// How long `WAIT` may take, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub wait_timeout_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn run_push(a: PushArgs) -> anyhow::Result<()> {
    let mut cfg = crate::RedisConfig::new(&a.url);
    cfg.credentials = crate::RedisCredentials::from_env()?;
    cfg.key_prefix = a.key_prefix;
    cfg.ca_file = a.ca_file;
    cfg.wait_replicas = a.wait_replicas;
    cfg.wait_timeout = std::time::Duration::from_millis(a.wait_timeout_ms);
    cfg.timeout = std::time::Duration::from_secs(10);
    let opts = crate::redis::PushOptions { batch_size: a.batch_size, prune: a.prune };
    let r = crate::redis::push(&a.dir, &cfg, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "pushed {} to {} ({}): {} items, {} added, {} updated, {} unchanged, {} removed, {} failed in {:.1} s; the namespace holds {}",
            a.dir.display(),
            r.store,
            r.namespace,
            r.items,
            r.added,
            r.updated,
            r.unchanged,
            r.removed,
            r.failed.len(),
            r.seconds,
            r.namespace_items
        );
        for (id, reason) in &r.failed {
            println!("  {id}: {reason}");
        }
    }
    if !r.failed.is_empty() {
        bail!("{} catalog entries failed their checks and were not pushed", r.failed.len());
    }
    Ok(())
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

/// Runs one catalog command, printing its result to stdout.
pub fn run(cmd: CatalogCommand) -> anyhow::Result<()> {
    match cmd {
        CatalogCommand::Build(a) => run_build(a),
        CatalogCommand::Info(a) => {
            let i = info(&a.dir)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&i)?);
                return Ok(());
            }
            println!("catalog      {}", i.dir.display());
            println!("items        {}", i.items);
            println!("stored       {} x 5 views x {} values ({})", i.form, i.width, i.dtype);
            println!("bytes/item   {} (features); {:.0} on disk", i.bytes_per_item, i.disk_bytes as f64 / i.items.max(1) as f64);
            println!("disk bytes   {}", i.disk_bytes);
            println!("fingerprint  {}", i.fingerprint);
            println!("generation   {} ({} base items, {} delta bytes)", i.generation, i.base_items, i.delta_bytes);
            println!("missing      {} image(s){}", i.missing_images, examples(&i.missing_examples));
            println!("failed       {} item(s) left out by the last build (item rules, unusable images)", i.failed_images.len());
            for (id, reason) in &i.failed_images {
                println!("  {id}: {reason}");
            }
            Ok(())
        }
        CatalogCommand::Verify(a) => {
            let r = verify(&a.dir)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.is_ok() {
                println!("ok: {} items ({} base entries, {} delta records) in {}", r.items, r.base_entries, r.delta_records, r.dir.display());
            } else {
                for p in &r.problems {
                    println!("problem: {p}");
                }
            }
            if !r.is_ok() {
                bail!("catalog {} failed verification: {} problem(s)", a.dir.display(), r.problems.len());
            }
            Ok(())
        }
        CatalogCommand::Merge(a) => {
            let r = merge(&a.shards, &a.out)?;
            println!("merged {} catalogs into {}: {} items, generation {}", r.sources, a.out.display(), r.items, r.generation);
            Ok(())
        }
        CatalogCommand::Push(a) => run_push(a),
        CatalogCommand::Compact(a) => {
            let r = compact(&a.dir)?;
            println!("compacted {}: {} items, generation {}", a.dir.display(), r.items, r.generation);
            Ok(())
        }
    }
}

fn examples(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (e.g. {})", ids.iter().take(5).cloned().collect::<Vec<_>>().join(", "))
    }
}

fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    let mut lo = LoadOptions::new(&a.model);
    lo.vision_adapter = a.vision_adapter.clone();
    lo.device = parse_device(&a.device)?;
    // No --dtype: the same default as `lavic serve` (f32 on CPU, the checkpoint's on a GPU), so a
    // catalog built and served with the defaults has the server's fingerprint.
    lo.dtype = a.dtype.as_deref().map(parse_dtype).transpose()?.or_else(|| lavic_model::default_dtype(&lo.device));
    let encoder = ImageEncoder::load(&lo).with_context(|| format!("loading the image encoder from {}", a.model.display()))?;
    let mut opts = BuildOptions::new(&a.items, &a.images, &a.out);
    opts.shard = a.shard;
    opts.batch_size = a.batch_size;
    opts.form = match a.form {
        FormArg::Cls => StoreForm::Cls,
        FormArg::Projected => StoreForm::Projected,
    };
    opts.format = match a.format {
        FormatArg::Auto => InputFormat::Auto,
        FormatArg::Items => InputFormat::Items,
        FormatArg::Train => InputFormat::Train,
        FormatArg::Valid => InputFormat::Valid,
    };
    opts.progress = match a.progress {
        ProgressArg::Auto => ProgressMode::Auto,
        ProgressArg::Bar => ProgressMode::Bar,
        ProgressArg::Log => ProgressMode::Log,
        ProgressArg::Off => ProgressMode::Off,
    };
    let r = build(&opts, &encoder)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "built {}{}: {} items (encoded {}, reused {}, shared {}, removed {}) in {:.1} s, generation {}",
        a.out.display(),
        r.shard.as_deref().map(|s| format!(" (shard {s})")).unwrap_or_default(),
        r.items,
        r.encoded,
        r.reused,
        r.shared,
        r.removed,
        r.seconds,
        r.generation
    );
    println!("missing images: {}{}", r.missing_images.len(), examples(&r.missing_images));
    println!("failed items:   {} (item rules, unusable images)", r.failed.len());
    for (id, reason) in &r.failed {
        println!("  {id}: {reason}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: CatalogCommand,
    }

    #[test]
    fn flags_parse() {
        let t = T::try_parse_from(["x", "build", "--items", "i.jsonl", "--images", "img", "--model", "m", "--out", "o", "--shard", "2/4", "--device", "cpu"]).unwrap();
        let CatalogCommand::Build(b) = t.cmd else { panic!() };
        assert_eq!(b.shard, Some(Shard { index: 2, count: 4 }));
        assert!(T::try_parse_from(["x", "build", "--items", "i", "--images", "d", "--model", "m", "--out", "o", "--shard", "4/4"]).is_err());
        let t = T::try_parse_from(["x", "merge", "--out", "o", "a", "b"]).unwrap();
        let CatalogCommand::Merge(m) = t.cmd else { panic!() };
        assert_eq!(m.shards.len(), 2);
        assert!(T::try_parse_from(["x", "merge", "--out", "o"]).is_err());
        let t = T::try_parse_from(["x", "push", "cat", "redis://h:6379", "--prune", "--batch-size", "64"]).unwrap();
        let CatalogCommand::Push(p) = t.cmd else { panic!() };
        assert_eq!((p.url.as_str(), p.prune, p.batch_size, p.key_prefix.as_str()), ("redis://h:6379", true, 64, "lavic"));
    }
}
