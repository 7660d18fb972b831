//! `lavic prompt`: prints, as JSON lines, the exact stage-2 recommendation prompt of each
//! conversation of a Reddit-Amazon file (the text the model reads, with the five
//! `<ItemImageEmb*>` placeholders of every candidate), built by the same code the model uses, so
//! that it can be diffed against the reference's prompt builder. Titles come from `--items`; ids it
//! lacks show the reference's `No Title`. This is the prompt before any shortening: a dialogue
//! over the server's token budget is cut from the front (`shortened_tokens` in `lavic eval`).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lavic_model::prompt::{recommendation_prompt, PromptCandidate};
use lavic_model::{LavicTokenizer, NUM_VIEWS};
use serde::Serialize;

use crate::dataset::{read_conversations, read_titles, CandidateList};

/// Flags of `lavic prompt`.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Conversation file (JSONL with context and the candidate lists).
    #[arg(long)]
    pub data: PathBuf,
    /// Items file for the titles (our items JSONL, item2meta_train.json or item2meta_valid.jsonl).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Which candidate list to use.
    #[arg(long, value_enum, default_value_t = CandidateList::St)]
    pub candidates: CandidateList,
    /// Only the first N conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    /// tokenizer.json: adds `prompt_tokens` (BOS included) and `image_tokens` to each line.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One output line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    index: usize,
    candidate_list: &'static str,
    candidate_ids: &'a [String],
    /// Candidates without an item (shown as `No Title`; the model sees the white image).
    fallback_ids: Vec<&'a str>,
    prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_tokens: Option<usize>,
}

/// Prints the prompts.
pub fn run(args: &PromptArgs) -> anyhow::Result<()> {
    let convs = read_conversations(&args.data, args.candidates, args.limit)?;
    let titles: HashMap<String, String> = match &args.items {
        Some(p) => read_titles(p)?,
        None => HashMap::new(),
    };
    let tokenizer = args.tokenizer.as_deref().map(LavicTokenizer::from_file).transpose()?;
    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for conv in &convs {
        let cands: Vec<PromptCandidate> = conv
            .candidates
            .iter()
            .map(|id| PromptCandidate { id, title: titles.get(id).map_or("", String::as_str) })
            .collect();
        let prompt = recommendation_prompt(&conv.context, &cands);
        let tokens = match &tokenizer {
            Some(t) => {
                let tp = t.tokenize_prompt(&prompt).with_context(|| format!("conversation {}", conv.index))?;
                Some((tp.ids.len(), tp.image_slots.len() * NUM_VIEWS))
            }
            None => None,
        };
        let line = Line {
            index: conv.index,
            candidate_list: args.candidates.key(),
            candidate_ids: &conv.candidates,
            fallback_ids: conv.candidates.iter().filter(|id| !titles.contains_key(*id)).map(String::as_str).collect(),
            prompt,
            prompt_tokens: tokens.map(|t| t.0),
            image_tokens: tokens.map(|t| t.1),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
