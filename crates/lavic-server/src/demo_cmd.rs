//! `lavic demo-world`: writes the demo world of a seed (lavic-demo): items JSONL + PNG images,
//! train / valid / test conversations in the Reddit-Amazon format, truth and manifest; with
//! `--base DIR` also the untrained tiny base model (random init, a BPE vocabulary learned from the
//! world's text and LaViC's two prompts).

use std::path::PathBuf;

use clap::Args;
use lavic_demo::base::{write_base, BaseConfig};
use lavic_demo::{generate, write, WorldConfig};

/// Flags of `lavic demo-world` (defaults: the shipped demo's settings).
#[derive(Debug, Args)]
pub struct DemoWorldArgs {
    /// Seed; the same seed and settings give byte-identical files.
    #[arg(long)]
    pub seed: u64,
    /// Output folder (created; must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Product lines per kind (each 4-5 visual twins sharing a title).
    #[arg(long, default_value_t = 12)]
    pub lines_per_kind: usize,
    /// Lines per kind used only by validation conversations.
    #[arg(long, default_value_t = 2)]
    pub valid_lines: usize,
    /// Lines per kind used only by test conversations.
    #[arg(long, default_value_t = 2)]
    pub test_lines: usize,
    /// Vision tower tile (image size) the framing is planned for: AnyRes gives 3, 4 or 5 views.
    #[arg(long, default_value_t = 64)]
    pub tile: u32,
    /// Training conversations.
    #[arg(long, default_value_t = 2000)]
    pub train: usize,
    /// Validation conversations.
    #[arg(long, default_value_t = 200)]
    pub valid: usize,
    /// Test conversations.
    #[arg(long, default_value_t = 300)]
    pub test: usize,
    /// Also write the untrained base model (llava-hf layout, random init) into this folder.
    #[arg(long)]
    pub base: Option<PathBuf>,
}

/// Generates and writes the world; prints a one-line JSON summary.
pub fn run(args: &DemoWorldArgs) -> anyhow::Result<()> {
    let mut config = WorldConfig::new(args.seed);
    config.catalog.lines_per_kind = args.lines_per_kind;
    config.catalog.valid_lines = args.valid_lines;
    config.catalog.test_lines = args.test_lines;
    config.catalog.tile = args.tile;
    config.conversations = [args.train, args.valid, args.test];
    // Both folders are checked before anything is written.
    lavic_demo::write::check_output(&args.out)?;
    if let Some(dir) = &args.base {
        lavic_demo::write::check_output(dir)?;
    }
    let world = generate(&config)?;
    let summary = write(&world, &args.out)?;
    let base = match &args.base {
        Some(dir) => {
            let prompts = [lavic_model::prompt::distillation_prompt(""), lavic_model::prompt::recommendation_head().to_string()];
            Some(write_base(&world, &BaseConfig::demo(args.seed), &prompts, dir)?)
        }
        None => None,
    };
    println!("{}", serde_json::json!({ "out": args.out.display().to_string(), "seed": args.seed, "summary": summary, "base": base }));
    Ok(())
}
