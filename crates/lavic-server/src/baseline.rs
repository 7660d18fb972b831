//! `lavic eval --baseline`: the two reference rows of the demo's results table (issue 15,
//! docs/DEMO.md), run over a conversation file with no model loaded and scored and summarised
//! exactly as a model's answers are (`eval_metrics`: HR@1 per pair and per conversation, VR,
//! candidate recall):
//!
//! - `random`: a uniformly random candidate;
//! - `title-similarity`: the candidate whose title is most similar to the dialogue, by the cosine
//!   of their word-count vectors. Words are maximal runs of alphanumeric characters (Unicode),
//!   lower-cased; the dialogue is the conversation's `context` without its `<submission>` /
//!   `<comment>` tags (the recommending comment `gt` is never read). A candidate that `--items`
//!   lacks has an empty title (similarity 0) and is reported as a fallback slot, as for a model.
//!   Candidates whose similarity is within 1e-12 of the best are tied, and one of them is chosen
//!   uniformly at random.
//!
//! Random choices come from one stream per conversation, seeded by `--seed` and the
//! conversation's position in the file, so a pick does not depend on `--limit`. A baseline always
//! answers with one of the candidates, so its answers are valid (VR 1) by construction.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use clap::{Args, ValueEnum};
use lavic_demo::rng::Rng;
use serde::Serialize;

use crate::dataset::{read_titles, Conversation};
use crate::eval::EvalArgs;
use crate::eval_metrics::{score, Answer, Record, RunInfo};

/// A baseline to evaluate instead of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// A uniformly random candidate.
    Random,
    /// The candidate whose title is most similar to the dialogue (cosine of word counts).
    TitleSimilarity,
}

impl Baseline {
    /// The name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Random => "random",
            Baseline::TitleSimilarity => "title-similarity",
        }
    }

    /// How the baseline picks, in one line (echoed in the summary).
    pub fn rule(self) -> &'static str {
        match self {
            Baseline::Random => "a uniformly random candidate",
            Baseline::TitleSimilarity => {
                "the candidate whose title has the highest cosine similarity to the dialogue (lower-cased alphanumeric word counts, \
                 context without <submission>/<comment> tags); ties within 1e-12 broken by a seeded uniform choice"
            }
        }
    }
}

/// Flags of `lavic eval` for a baseline (beside [`EvalArgs`]).
#[derive(Debug, Clone, Args)]
pub struct BaselineArgs {
    /// Evaluate a baseline instead of a model (nothing is loaded): `random`, or `title-similarity`
    /// (needs --items for the titles). Same metrics and files as for a model.
    #[arg(long, value_enum, conflicts_with_all = ["model", "addr", "catalog", "mode"])]
    pub baseline: Option<Baseline>,
    /// Seed of the baseline's random choices (random picks, ties).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Word counts of `text`: maximal runs of alphanumeric characters, lower-cased.
pub fn word_counts(text: &str) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// Cosine similarity of two word-count vectors (0 when either is empty).
pub fn cosine(a: &HashMap<String, u32>, b: &HashMap<String, u32>) -> f64 {
    let norm = |v: &HashMap<String, u32>| v.values().map(|&c| f64::from(c) * f64::from(c)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let dot: f64 = a.iter().filter_map(|(w, &c)| b.get(w).map(|&d| f64::from(c) * f64::from(d))).sum();
    dot / (na * nb)
}

/// The dialogue's text without the Reddit-Amazon turn tags.
pub fn dialogue_text(context: &str) -> String {
    ["<submission>", "</submission>", "<comment>", "</comment>"].iter().fold(context.to_string(), |s, tag| s.replace(tag, " "))
}

/// The index of the candidate `baseline` picks among `titles` (one per candidate, in order) for
/// `context`. `titles` must not be empty.
pub fn pick(baseline: Baseline, context: &str, titles: &[&str], rng: &mut Rng) -> usize {
    match baseline {
        Baseline::Random => rng.below(titles.len()),
        Baseline::TitleSimilarity => {
            let dialogue = word_counts(&dialogue_text(context));
            let sims: Vec<f64> = titles.iter().map(|t| cosine(&dialogue, &word_counts(t))).collect();
            let best = sims.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tied: Vec<usize> = (0..sims.len()).filter(|&i| sims[i] >= best - 1e-12).collect();
            tied[rng.below(tied.len())]
        }
    }
}

/// The baseline as the summary names it.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineInfo {
    /// `random` or `title-similarity`.
    pub name: Baseline,
    /// The seed of its random choices.
    pub seed: u64,
    /// How it picks.
    pub rule: String,
}

/// Answers every conversation with `baseline`, writing one record per line to `out`.
pub fn run(args: &EvalArgs, baseline: Baseline, seed: u64, convs: &[Conversation], out: &mut impl Write) -> anyhow::Result<(Vec<Record>, RunInfo)> {
    if baseline == Baseline::TitleSimilarity && args.items.is_none() {
        anyhow::bail!("--baseline title-similarity needs --items (the candidates' titles)");
    }
    let titles = match &args.items {
        Some(p) => Some(read_titles(p)?),
        None => None,
    };
    let start = Instant::now();
    let mut records = Vec::with_capacity(convs.len());
    for conv in convs {
        let t = Instant::now();
        let answer = if conv.candidates.is_empty() {
            Err("no candidates".to_string())
        } else {
            let title = |id: &String| titles.as_ref().and_then(|m| m.get(id)).map_or("", String::as_str);
            let candidate_titles: Vec<&str> = conv.candidates.iter().map(title).collect();
            let mut rng = Rng::stream(seed, &format!("lavic-eval-baseline/{}", conv.index));
            let chosen = conv.candidates[pick(baseline, &conv.context, &candidate_titles, &mut rng)].clone();
            let fallback_ids = match &titles {
                Some(m) => conv.candidates.iter().filter(|id| !m.contains_key(*id)).cloned().collect(),
                None => Vec::new(),
            };
            Ok(Answer {
                pick: Some(chosen.clone()),
                valid: true,
                raw_answer: chosen,
                reference_parsed_id: None,
                prompt_tokens: 0,
                shortened_tokens: 0,
                fallback_ids,
                latency: t.elapsed(),
            })
        };
        let rec = score(conv, answer, false);
        serde_json::to_writer(&mut *out, &rec)?;
        out.write_all(b"\n")?;
        records.push(rec);
    }
    let run = RunInfo {
        data: String::new(),
        candidates: args.candidates.key().into(),
        mode: "baseline".into(),
        backend: "baseline (no model)".into(),
        model: format!("baseline {}", baseline.name()),
        batch: 1,
        concurrency: 1,
        wall_seconds: start.elapsed().as_secs_f64(),
        missing_image_items: None,
        baseline: Some(BaselineInfo { name: baseline, seed, rule: baseline.rule().into() }),
    };
    Ok((records, run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lower_cased_alphanumeric_runs() {
        let w = word_counts("Red-strap BAG, red; 12oz été");
        assert_eq!(w.len(), 5);
        assert_eq!((w["red"], w["strap"], w["bag"], w["12oz"], w["été"]), (2, 1, 1, 1, 1));
        assert!(word_counts(" ,.- ").is_empty());
    }

    #[test]
    fn cosine_of_word_counts() {
        let (a, b) = (word_counts("red bag"), word_counts("red red bag"));
        // (1*2 + 1*1) / (sqrt 2 * sqrt 5)
        assert!((cosine(&a, &b) - 3.0 / (2f64.sqrt() * 5f64.sqrt())).abs() < 1e-12);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-12);
        assert_eq!(cosine(&a, &word_counts("lamp")), 0.0);
        assert_eq!(cosine(&a, &word_counts("")), 0.0);
    }

    #[test]
    fn title_similarity_picks_the_closest_title_and_ignores_the_tags() {
        let ctx = "<submission>Looking for a Selkirk lamp for my desk.</submission>\n<comment>Selkirk lamps are nice.</comment>\n";
        let titles = ["Maddox Vase, 10 inch", "Selkirk Desk Lamp", "Selkirk Vase", "Comment Submission Mug"];
        for seed in 0..20 {
            assert_eq!(pick(Baseline::TitleSimilarity, ctx, &titles, &mut Rng::stream(seed, "t")), 1);
        }
    }

    #[test]
    fn ties_are_broken_at_random_among_the_tied_only() {
        // Candidates 0 and 2 share the best title; 1 and 3 have nothing in common with the dialogue.
        let titles = ["Aurora Vase", "Pellham Mug", "Aurora Vase", ""];
        let mut seen = [0usize; 4];
        for seed in 0..200 {
            seen[pick(Baseline::TitleSimilarity, "<submission>an aurora vase</submission>", &titles, &mut Rng::stream(seed, "t"))] += 1;
        }
        assert_eq!((seen[1], seen[3]), (0, 0));
        assert!(seen[0] > 60 && seen[2] > 60, "{seen:?}");
    }

    #[test]
    fn random_is_uniform_and_repeatable() {
        let titles = [""; 10];
        let mut counts = [0usize; 10];
        for i in 0..5000 {
            counts[pick(Baseline::Random, "", &titles, &mut Rng::stream(42, &format!("c{i}")))] += 1;
        }
        // Each slot expects 500; 5 standard deviations (~106) either side.
        assert!(counts.iter().all(|&c| (394..=606).contains(&c)), "{counts:?}");
        let again = |s| pick(Baseline::Random, "", &titles, &mut Rng::stream(s, "x"));
        assert_eq!(again(7), again(7));
    }
}
