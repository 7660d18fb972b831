//! What `lavic eval` computes from each conversation's answer: the per-conversation record (one
//! JSON line of `--out`) and the summary over all of them. The metrics follow
//! `LAVIC_REFERENCE.md` section 1:
//!
//! - HR@1 as the reference computes it: hits / (conversation, ground-truth item) pairs, every
//!   entry of `gt_items` counting once (duplicates included, as the reference's one sample per
//!   entry does), a hit when the pick equals that entry;
//! - HR@1 per conversation: the pick is any ground truth;
//! - VR: conversations whose answer was valid (the model's own answer was one of the candidates);
//!   in FREE mode also the reference's VR (the first `\bB[A-Z0-9]{9}\b` of the answer is a
//!   candidate) and its HR@1 (that id equals the ground truth);
//! - candidate recall: conversations with a ground truth among the candidates (the ceiling).
//!
//! Candidates are used as given: the reference inserts a missing ground truth into the candidate
//! list for training only, never at evaluation. A conversation that failed counts as an invalid
//! miss.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use crate::dataset::Conversation;

/// The answer to one conversation, however it was obtained (in-process or over gRPC).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The selected candidate (None: FREE mode named no candidate).
    pub pick: Option<String>,
    /// Whether the model's own answer was a candidate.
    pub valid: bool,
    /// The model's own text.
    pub raw_answer: String,
    /// The reference's parse of `raw_answer` (first ASIN-like id), candidate or not.
    pub reference_parsed_id: Option<String>,
    /// Tokens of the prompt the model saw.
    pub prompt_tokens: usize,
    /// Dialogue tokens dropped to fit the budget.
    pub shortened_tokens: usize,
    /// Candidates that got the fallback (title "No Title", white image).
    pub fallback_ids: Vec<String>,
    /// Wall time of the request (in-process: of the batch it was part of).
    pub latency: Duration,
}

/// One line of the results file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Position of the conversation in the data file (0-based).
    pub index: usize,
    /// The pick (null: none, or the conversation failed).
    pub pick: Option<String>,
    /// Whether the model's own answer was a candidate.
    pub valid: bool,
    /// What the model answered.
    pub raw_answer: String,
    /// The reference's regex parse of the answer.
    pub reference_parsed_id: Option<String>,
    /// FREE mode: the reference's validity (its parsed id is a candidate); null otherwise.
    pub reference_valid: Option<bool>,
    /// Ground-truth ids as listed in the data.
    pub gt_items: Vec<String>,
    /// The pick is one of the ground truths.
    pub hit: bool,
    /// Ground-truth entries equal to the pick (the reference's hits for this conversation).
    pub hit_pairs: usize,
    /// Ground-truth entries (the reference's pairs for this conversation).
    pub pairs: usize,
    /// FREE mode: ground-truth entries equal to the reference's parsed id; null otherwise.
    pub reference_hit_pairs: Option<usize>,
    /// A ground truth is among the candidates.
    pub gt_in_candidates: bool,
    /// Ground-truth entries among the candidates.
    pub recalled_pairs: usize,
    /// The candidate ids, in prompt order.
    pub candidates: Vec<String>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Dialogue tokens dropped to fit the budget.
    pub shortened_tokens: usize,
    /// Candidates that used the fallback.
    pub fallback_ids: Vec<String>,
    /// Latency in milliseconds.
    pub latency_ms: f64,
    /// Why the conversation failed (null when it did not).
    pub error: Option<String>,
}

/// Scores one conversation's answer (or failure).
pub fn score(conv: &Conversation, answer: Result<Answer, String>, free_mode: bool) -> Record {
    let in_cands = |id: &str| conv.candidates.iter().any(|c| c == id);
    let count = |id: Option<&str>| id.map_or(0, |id| conv.gt_items.iter().filter(|g| *g == id).count());
    let recalled_pairs = conv.gt_items.iter().filter(|g| in_cands(g)).count();
    let base = Record {
        index: conv.index,
        pick: None,
        valid: false,
        raw_answer: String::new(),
        reference_parsed_id: None,
        reference_valid: free_mode.then_some(false),
        gt_items: conv.gt_items.clone(),
        hit: false,
        hit_pairs: 0,
        pairs: conv.gt_items.len(),
        reference_hit_pairs: free_mode.then_some(0),
        gt_in_candidates: recalled_pairs > 0,
        recalled_pairs,
        candidates: conv.candidates.clone(),
        prompt_tokens: 0,
        shortened_tokens: 0,
        fallback_ids: Vec::new(),
        latency_ms: 0.0,
        error: None,
    };
    match answer {
        Err(e) => Record { error: Some(e), ..base },
        Ok(a) => {
            let hit_pairs = count(a.pick.as_deref());
            let parsed = a.reference_parsed_id.as_deref();
            Record {
                hit: hit_pairs > 0,
                hit_pairs,
                valid: a.valid,
                reference_valid: free_mode.then(|| parsed.is_some_and(in_cands)),
                reference_hit_pairs: free_mode.then(|| count(parsed)),
                pick: a.pick,
                raw_answer: a.raw_answer,
                reference_parsed_id: a.reference_parsed_id,
                prompt_tokens: a.prompt_tokens,
                shortened_tokens: a.shortened_tokens,
                fallback_ids: a.fallback_ids,
                latency_ms: (a.latency.as_secs_f64() * 1e6).round() / 1e3,
                ..base
            }
        }
    }
}

/// A count and its share of a total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// Numerator.
    pub count: usize,
    /// Denominator.
    pub of: usize,
    /// `count / of` (0 when `of` is 0).
    pub value: f64,
}

impl Ratio {
    fn new(count: usize, of: usize) -> Self {
        Self { count, of, value: if of == 0 { 0.0 } else { count as f64 / of as f64 } }
    }
}

/// Latency percentiles in milliseconds (nearest rank), over conversations that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// The `p`-th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How the run was set up (echoed in the summary).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// The conversation file.
    pub data: String,
    /// `candidates_st` or `candidates_gpt_large`.
    pub candidates: String,
    /// `default` or `free`.
    pub mode: String,
    /// `in-process` or the server address.
    pub backend: String,
    /// The model folder (in-process) or the server's (from ModelInfo).
    pub model: String,
    /// Conversations per model call (in-process).
    pub batch: usize,
    /// Requests in flight (gRPC).
    pub concurrency: usize,
    /// Wall time of the whole run in seconds (model loading excluded).
    pub wall_seconds: f64,
    /// In-process: catalog items stored without an image file (the white image stands in).
    pub missing_image_items: Option<usize>,
    /// The baseline evaluated instead of a model (`lavic eval --baseline`); null for a model.
    pub baseline: Option<crate::baseline::BaselineInfo>,
}

/// The metrics over every conversation of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// How the run was set up.
    pub run: RunInfo,
    /// Conversations evaluated.
    pub conversations: usize,
    /// Conversations that failed (counted as invalid misses).
    pub errors: usize,
    /// HR@1 as the reference computes it: hits over (conversation, ground truth) pairs.
    pub hr1_per_pair: Ratio,
    /// HR@1 per conversation: the pick is any ground truth.
    pub hr1_per_conversation: Ratio,
    /// VR: conversations whose answer was valid.
    pub vr: Ratio,
    /// FREE mode: the reference's VR (its regex-parsed id is a candidate).
    pub reference_vr: Option<Ratio>,
    /// FREE mode: the reference's HR@1 per pair with its regex-parsed id.
    pub reference_hr1_per_pair: Option<Ratio>,
    /// Candidate recall (the ceiling of HR@1 per conversation): a ground truth is a candidate.
    pub candidate_recall: Ratio,
    /// Ground-truth pairs whose item is a candidate.
    pub candidate_recall_per_pair: Ratio,
    /// Mean prompt tokens (conversations that did not fail).
    pub mean_prompt_tokens: f64,
    /// Largest prompt.
    pub max_prompt_tokens: usize,
    /// Conversations shortened by the token budget.
    pub shortened_conversations: usize,
    /// Dialogue tokens dropped in all.
    pub shortened_tokens: usize,
    /// Candidate slots that used the fallback ("No Title", white image).
    pub fallback_slots: Ratio,
    /// Distinct ids that used the fallback.
    pub fallback_ids: usize,
    /// Latency per conversation (in-process: of its batch).
    pub latency_ms: Latency,
    /// Conversations per second over the run.
    pub conversations_per_second: f64,
}

/// Summarises the records of a run.
pub fn summarize(records: &[Record], run: RunInfo) -> Summary {
    let n = records.len();
    let ok: Vec<&Record> = records.iter().filter(|r| r.error.is_none()).collect();
    let pairs: usize = records.iter().map(|r| r.pairs).sum();
    let sum = |f: &dyn Fn(&Record) -> usize| records.iter().map(f).sum::<usize>();
    let free = records.first().is_some_and(|r| r.reference_valid.is_some());
    let mut lat: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let fallback: BTreeSet<&str> = records.iter().flat_map(|r| r.fallback_ids.iter().map(String::as_str)).collect();
    let wall = run.wall_seconds;
    Summary {
        conversations: n,
        errors: n - ok.len(),
        hr1_per_pair: Ratio::new(sum(&|r| r.hit_pairs), pairs),
        hr1_per_conversation: Ratio::new(sum(&|r| r.hit as usize), n),
        vr: Ratio::new(sum(&|r| r.valid as usize), n),
        reference_vr: free.then(|| Ratio::new(sum(&|r| (r.reference_valid == Some(true)) as usize), n)),
        reference_hr1_per_pair: free.then(|| Ratio::new(sum(&|r| r.reference_hit_pairs.unwrap_or(0)), pairs)),
        candidate_recall: Ratio::new(sum(&|r| r.gt_in_candidates as usize), n),
        candidate_recall_per_pair: Ratio::new(sum(&|r| r.recalled_pairs), pairs),
        mean_prompt_tokens: if ok.is_empty() { 0.0 } else { ok.iter().map(|r| r.prompt_tokens).sum::<usize>() as f64 / ok.len() as f64 },
        max_prompt_tokens: ok.iter().map(|r| r.prompt_tokens).max().unwrap_or(0),
        shortened_conversations: ok.iter().filter(|r| r.shortened_tokens > 0).count(),
        shortened_tokens: ok.iter().map(|r| r.shortened_tokens).sum(),
        fallback_slots: Ratio::new(sum(&|r| r.fallback_ids.len()), sum(&|r| r.candidates.len())),
        fallback_ids: fallback.len(),
        latency_ms: Latency {
            mean: if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
            p50: percentile(&lat, 50.0),
            p90: percentile(&lat, 90.0),
            p95: percentile(&lat, 95.0),
            p99: percentile(&lat, 99.0),
            max: lat.last().copied().unwrap_or(0.0),
        },
        conversations_per_second: if wall > 0.0 { n as f64 / wall } else { 0.0 },
        run,
    }
}

impl Summary {
    /// The human-readable report printed by `lavic eval`.
    pub fn render(&self) -> String {
        let r = &self.run;
        let line = |name: &str, x: &Ratio, unit: &str| format!("  {name:<44} {:.4}  ({} / {} {unit})\n", x.value, x.count, x.of);
        let mut s = match &r.baseline {
            Some(b) => format!(
                "lavic eval: {} conversations of {} ({}, baseline {}, seed {}; no model)\n  baseline: {}\n",
                self.conversations,
                r.data,
                r.candidates,
                b.name.name(),
                b.seed,
                b.rule
            ),
            None => format!(
                "lavic eval: {} conversations of {} ({}, {} mode, {}; model {})\n",
                self.conversations, r.data, r.candidates, r.mode, r.backend, r.model
            ),
        };
        s += &line("HR@1, reference (per ground-truth pair)", &self.hr1_per_pair, "pairs");
        s += &line("HR@1, per conversation (pick is any gt)", &self.hr1_per_conversation, "conversations");
        s += &line("VR (the model's answer is a candidate)", &self.vr, "conversations");
        if let Some(v) = &self.reference_vr {
            s += &line("VR, reference (regex id is a candidate)", v, "conversations");
        }
        if let Some(h) = &self.reference_hr1_per_pair {
            s += &line("HR@1, reference parse (per pair)", h, "pairs");
        }
        s += &line("candidate recall (ceiling, per conversation)", &self.candidate_recall, "conversations");
        s += &line("candidate recall (per pair)", &self.candidate_recall_per_pair, "pairs");
        s += &format!("  {:<44} {:.1} (max {})\n", "mean prompt tokens", self.mean_prompt_tokens, self.max_prompt_tokens);
        s += &format!(
            "  {:<44} {} conversations ({} dialogue tokens dropped)\n",
            "shortened by the token budget", self.shortened_conversations, self.shortened_tokens
        );
        s += &format!(
            "  {:<44} {} of {} candidate slots, {} distinct ids (\"No Title\", white image)\n",
            "fallback candidates", self.fallback_slots.count, self.fallback_slots.of, self.fallback_ids
        );
        if let Some(m) = r.missing_image_items {
            s += &format!("  {:<44} {m} (white image)\n", "catalog items without an image file");
        }
        let l = &self.latency_ms;
        let what = if r.baseline.is_some() {
            "latency (baseline)".to_string()
        } else if r.backend == "in-process" { format!("latency (batch of {})", r.batch) } else { format!("latency (gRPC, {} in flight)", r.concurrency) };
        s += &format!(
            "  {what:<44} p50 {:.1} ms  p90 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  mean {:.1} ms\n",
            l.p50, l.p90, l.p95, l.p99, l.max, l.mean
        );
        s += &format!("  {:<44} {:.2} conversations/s ({:.1} s)\n", "throughput", self.conversations_per_second, r.wall_seconds);
        s += &format!("  {:<44} {}\n", "failed conversations", self.errors);
        s += "  Candidates are used as given (the reference adds a missing ground truth to the candidates\n  for training only). Failed conversations count as invalid misses.\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(gt: &[&str], cands: &[&str]) -> Conversation {
        Conversation {
            index: 0,
            context: "c".into(),
            gt_items: gt.iter().map(|s| s.to_string()).collect(),
            candidates: cands.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn answer(pick: Option<&str>, valid: bool, parsed: Option<&str>) -> Answer {
        Answer {
            pick: pick.map(str::to_string),
            valid,
            raw_answer: String::new(),
            reference_parsed_id: parsed.map(str::to_string),
            prompt_tokens: 100,
            shortened_tokens: 0,
            fallback_ids: vec![],
            latency: Duration::from_millis(10),
        }
    }

    #[test]
    fn pairs_duplicates_and_the_reference_parse_count_like_the_reference() {
        let a = score(&conv(&["B1", "B1", "B9"], &["B1", "B2"]), Ok(answer(Some("B1"), true, Some("B1"))), true);
        assert_eq!((a.hit, a.hit_pairs, a.pairs, a.recalled_pairs), (true, 2, 3, 2));
        assert_eq!((a.reference_valid, a.reference_hit_pairs), (Some(true), Some(2)));
        // FREE mode, the model named a non-candidate ASIN: invalid for both parses.
        let b = score(&conv(&["B9"], &["B1", "B2"]), Ok(answer(None, false, Some("B9"))), true);
        assert_eq!((b.hit, b.reference_valid, b.reference_hit_pairs, b.gt_in_candidates), (false, Some(false), Some(1), false));
        let c = score(&conv(&["B2"], &["B1", "B2"]), Err("boom".into()), false);
        assert_eq!((c.valid, c.hit, c.reference_valid, c.error.as_deref()), (false, false, None, Some("boom")));

        let run = RunInfo {
            data: "d".into(),
            candidates: "candidates_st".into(),
            mode: "free".into(),
            backend: "in-process".into(),
            model: "m".into(),
            batch: 1,
            concurrency: 1,
            wall_seconds: 2.0,
            missing_image_items: None,
            baseline: None,
        };
        let s = summarize(&[a, b, c], run);
        assert_eq!((s.hr1_per_pair.count, s.hr1_per_pair.of), (2, 5));
        assert_eq!((s.hr1_per_conversation.count, s.vr.count, s.errors), (1, 1, 1));
        assert_eq!(s.reference_vr.unwrap().count, 1);
        assert_eq!(s.reference_hr1_per_pair.unwrap().count, 3, "the reference's parse counts a non-candidate id equal to the gt");
        assert_eq!((s.candidate_recall.count, s.candidate_recall_per_pair.count), (2, 3));
        assert_eq!(s.conversations_per_second, 1.5);
        assert!(s.render().contains("HR@1, reference (per ground-truth pair)"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(percentile(&xs[..1], 90.0), 1.0);
        assert_eq!(percentile(&[], 90.0), 0.0);
    }
}
