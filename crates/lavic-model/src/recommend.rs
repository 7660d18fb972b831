//! Recommendation: the API types, batching and the reference's FREE mode (greedy generation,
//! then parse). Default mode's one-pass candidate scoring is in [`crate::tree`]; the prompt under
//! a token budget in [`crate::request_prompt`].
//!
//! Default mode evaluates every candidate id in ONE forward pass and replays the unconstrained
//! greedy decode through the candidates' id tokens: the answer is `valid` when greedy completes a
//! candidate id, and invalid as soon as its arg-max token leaves every candidate's path (the
//! text produced up to there is reported). The pick is the greedy result when valid, otherwise
//! the candidate with the highest total log-likelihood, so the answer is always a candidate.
//!
//! Ranking uses the total log-likelihood `log P(id | prompt)`: it is the probability that the
//! model answers exactly that id, directly comparable across ids; the length-normalised mean is
//! reported too, but it would favour long ids whose later tokens are nearly deterministic.
//!
//! A batch's default-mode requests share one pass; when that shared pass fails, each is run in a
//! pass of its own, so that one request whose data breaks the pass fails alone.

use candle_core::Tensor;

use crate::error::{Error, RequestError, Result};
use crate::model::LavicModel;
use crate::prompt::{match_candidate, parse_reference_id, PromptCandidate, ITEM_TOKENS};
pub use crate::request_prompt::BuiltPrompt;
use crate::tree::{Tree, TreeAnswer, TreeOptions};

/// How the answer is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One forward pass scoring every candidate (ours).
    #[default]
    Default,
    /// The reference: greedy generation of up to `max_new_tokens`, then parse.
    Free,
}

/// One candidate with its 5 projected image tokens (`[5, hidden]`).
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Item id as the prompt shows it and the model answers it.
    pub id: String,
    /// Title (empty: `No Title`).
    pub title: String,
    /// Projected image tokens, `[5, hidden]`.
    pub tokens: Tensor,
}

/// What to do with a prompt over [`RecommendOptions::max_prompt_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Drop whole tokens from the front of the dialogue until the prompt fits (never the
    /// instruction, the candidate block or the answer cue).
    #[default]
    Shorten,
    /// Refuse the request: [`RequestError::DialogueOverBudget`].
    Reject,
}

/// Options of one recommendation.
#[derive(Debug, Clone, Copy)]
pub struct RecommendOptions {
    /// Default (one pass) or FREE (reference greedy generation).
    pub mode: Mode,
    /// Longest prompt in tokens; over it, `overlong` decides.
    pub max_prompt_tokens: Option<usize>,
    /// Shorten the dialogue to fit the budget, or refuse the request.
    pub overlong: Overlong,
    /// Greedy budget (the reference's `max_new_tokens = 10`).
    pub max_new_tokens: usize,
    /// Default mode: score every candidate even when the greedy answer is valid. Scoring needs
    /// the output head over the whole vocabulary at every trie row; without it the head runs only
    /// at the rows the greedy replay visits (the pick and flag are the same either way). Invalid
    /// answers are always scored, since the pick is then the best-scoring candidate.
    pub scores: bool,
}

impl Default for RecommendOptions {
    fn default() -> Self {
        Self { mode: Mode::Default, max_prompt_tokens: None, overlong: Overlong::Shorten, max_new_tokens: 10, scores: false }
    }
}

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct RecommendInput {
    /// Raw dialogue text (`<submission>...</submission>\n<comment>...`).
    pub context: String,
    /// 1 or more candidates in prompt order.
    pub candidates: Vec<Candidate>,
    /// Options.
    pub options: RecommendOptions,
}

/// Score of one candidate (default mode).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateScore {
    /// Candidate id.
    pub id: String,
    /// `log P(id | prompt)`, summed over the id's tokens.
    pub logprob: f32,
    /// `logprob / tokens`.
    pub mean_logprob: f32,
    /// Tokens of the id after `Assistant:`.
    pub tokens: usize,
}

/// The outcome of one recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The selected candidate. Always set in default mode; in FREE mode only when valid.
    pub pick: Option<String>,
    /// Whether the model's own (greedy) answer starts with one of the candidate ids.
    pub valid: bool,
    /// What the model itself answered (greedy text; in default mode up to where it left the ids).
    pub raw_answer: String,
    /// The reference's parse of the answer: first `\bB[A-Z0-9]{9}\b`, candidate or not.
    pub parsed_id: Option<String>,
    /// Candidates best first by total log-likelihood (default mode only, when asked for with
    /// [`RecommendOptions::scores`] or when the answer was invalid; else empty).
    pub scores: Vec<CandidateScore>,
    /// Tokens in the prompt the model saw.
    pub prompt_tokens: usize,
    /// Conversation tokens dropped from the front to fit the budget (0: none).
    pub shortened_tokens: usize,
}

/// The results of [`LavicModel::recommend_batch`].
#[derive(Debug)]
pub struct BatchResults {
    /// One result per input, in input order.
    pub results: Vec<Result<Recommendation>>,
    /// Why the shared default-mode pass failed, when it did: each default-mode request was then
    /// run in a pass of its own, so every result above is that request's own.
    pub shared_pass_error: Option<Error>,
}

/// A default-mode request ready for the shared pass.
struct Prepared {
    tree: Tree,
    /// Candidate ids in prompt order.
    ids: Vec<String>,
    prompt_tokens: usize,
    shortened_tokens: usize,
}

/// What [`LavicModel::recommend_batch`] holds for each input while the shared pass is formed.
enum Slot {
    /// Answered already (FREE mode, or refused while preparing).
    Done(Result<Recommendation>),
    /// Waits for the shared default-mode pass.
    Tree(Prepared),
}

impl LavicModel {
    /// One recommendation (see [`LavicModel::recommend_batch`]).
    pub fn recommend(&self, input: &RecommendInput) -> Result<Recommendation> {
        let mut batch = self.recommend_batch(std::slice::from_ref(input));
        batch.results.pop().unwrap_or_else(|| Err(Error::Input("a batch of one gave no result".into())))
    }

    /// Recommendations for several requests. Default-mode requests share ONE forward pass (or,
    /// when that pass fails, one pass each); FREE-mode requests run the reference's greedy loop
    /// one by one. Each request gets its own result, so one bad request does not fail the others.
    pub fn recommend_batch(&self, inputs: &[RecommendInput]) -> BatchResults {
        let slots: Vec<Slot> = inputs
            .iter()
            .map(|input| match input.options.mode {
                Mode::Free => Slot::Done(self.recommend_free(input)),
                Mode::Default => self.prepare_tree(input).map_or_else(|e| Slot::Done(Err(e)), Slot::Tree),
            })
            .collect();
        let prepared: Vec<&Prepared> = slots.iter().filter_map(|s| if let Slot::Tree(p) = s { Some(p) } else { None }).collect();
        let (scored, shared_pass_error) = shared_or_alone(&prepared, |group| self.score_prepared(group));
        let mut scored = scored.into_iter();
        let results = slots
            .into_iter()
            .map(|s| match s {
                Slot::Done(r) => r,
                Slot::Tree(_) => scored.next().unwrap_or_else(|| Err(Error::Input("a default-mode request was not scored".into()))),
            })
            .collect();
        BatchResults { results, shared_pass_error }
    }

    /// The prompt of `input` (under its budget and overlong policy) and its embeddings.
    fn prompt_for(&self, input: &RecommendInput) -> Result<(BuiltPrompt, Tensor)> {
        if input.candidates.is_empty() {
            return Err(RequestError::NoCandidates.into());
        }
        check_reserved(input)?;
        let pc: Vec<PromptCandidate> =
            input.candidates.iter().map(|c| PromptCandidate { id: &c.id, title: &c.title }).collect();
        let budget = input.options.max_prompt_tokens;
        let prompt = self.build_prompt(&input.context, &pc, budget)?;
        if let (Some(budget), Overlong::Reject, excess @ 1..) = (budget, input.options.overlong, prompt.shortened_tokens) {
            return Err(RequestError::DialogueOverBudget { budget, excess }.into());
        }
        let images: Vec<Tensor> = input.candidates.iter().map(|c| c.tokens.clone()).collect();
        let embeds = self.prompt_embeds(&prompt.tokens, &images)?;
        Ok((prompt, embeds))
    }

    fn recommend_free(&self, input: &RecommendInput) -> Result<Recommendation> {
        let (prompt, embeds) = self.prompt_for(input)?;
        let ids = self.generate_greedy(&embeds, input.options.max_new_tokens)?;
        let raw_answer = self.tokenizer.decode(&ids, true)?;
        let cand_ids: Vec<&str> = input.candidates.iter().map(|c| c.id.as_str()).collect();
        let pick = match_candidate(&raw_answer, &cand_ids).map(str::to_string);
        Ok(Recommendation {
            valid: pick.is_some(),
            pick,
            parsed_id: parse_reference_id(&raw_answer).map(str::to_string),
            raw_answer,
            scores: Vec::new(),
            prompt_tokens: prompt.tokens.ids.len(),
            shortened_tokens: prompt.shortened_tokens,
        })
    }

    fn prepare_tree(&self, input: &RecommendInput) -> Result<Prepared> {
        let (prompt, embeds) = self.prompt_for(input)?;
        let ids: Vec<&str> = input.candidates.iter().map(|c| c.id.as_str()).collect();
        let conts = self.candidate_continuations(&prompt, &ids)?;
        let (prompt_tokens, shortened_tokens) = (prompt.tokens.ids.len(), prompt.shortened_tokens);
        let options = TreeOptions { max_new: input.options.max_new_tokens, want_scores: input.options.scores };
        let tree = self.build_tree(prompt.tokens.ids, embeds, conts, options)?;
        Ok(Prepared { tree, ids: ids.iter().map(|s| s.to_string()).collect(), prompt_tokens, shortened_tokens })
    }

    /// One shared pass over `group`; each request's answer as a [`Recommendation`].
    fn score_prepared(&self, group: &[&Prepared]) -> Result<Vec<Result<Recommendation>>> {
        let trees: Vec<&Tree> = group.iter().map(|p| &p.tree).collect();
        let answers = self.score_trees(&trees)?;
        Ok(group.iter().zip(answers).map(|(p, a)| a.and_then(|a| self.default_recommendation(p, a))).collect())
    }

    /// A tree's answer in the API's terms: ids, the answer's text, the pick.
    fn default_recommendation(&self, p: &Prepared, a: TreeAnswer) -> Result<Recommendation> {
        let raw_answer = self.tokenizer.decode(&a.produced, true)?;
        let scores: Vec<CandidateScore> = a
            .scores
            .iter()
            .map(|s| CandidateScore {
                id: p.ids[s.candidate].clone(),
                logprob: s.logprob,
                mean_logprob: s.logprob / s.tokens as f32,
                tokens: s.tokens,
            })
            .collect();
        let pick = match a.completed {
            Some(c) => p.ids[c].clone(),
            None => scores.first().map(|s| s.id.clone()).ok_or_else(|| Error::Input("an invalid answer without scores".into()))?,
        };
        Ok(Recommendation {
            pick: Some(pick),
            valid: a.completed.is_some(),
            parsed_id: parse_reference_id(&raw_answer).map(str::to_string),
            raw_answer,
            scores,
            prompt_tokens: p.prompt_tokens,
            shortened_tokens: p.shortened_tokens,
        })
    }

    /// For each candidate, the f32 logits `[id tokens, vocab]` that predict its id tokens, from
    /// the single tree pass that default mode runs.
    pub fn candidate_logits(&self, input: &RecommendInput) -> Result<Vec<Tensor>> {
        self.tree_candidate_logits(&self.prepare_tree(input)?.tree)
    }

    /// The same logits as [`LavicModel::candidate_logits`], computed the slow, obvious way: one
    /// causal pass over `prompt + id tokens` per candidate (the reference for the tree pass).
    pub fn candidate_logits_separately(&self, input: &RecommendInput) -> Result<Vec<Tensor>> {
        let (prompt, embeds) = self.prompt_for(input)?;
        let ids: Vec<&str> = input.candidates.iter().map(|c| c.id.as_str()).collect();
        let conts = self.candidate_continuations(&prompt, &ids)?;
        let t = prompt.tokens.ids.len();
        conts
            .iter()
            .map(|cont| {
                let tail = self.decoder().embed(&Tensor::new(cont.as_slice(), embeds.device())?.unsqueeze(0)?)?;
                let full = Tensor::cat(&[&embeds, &tail.to_dtype(embeds.dtype())?], 1)?;
                let positions: Vec<usize> = (t - 1..t - 1 + cont.len()).collect();
                self.prompt_logits(&full, &positions)
            })
            .collect()
    }
}

/// Refuses a request whose dialogue, ids or titles hold a reserved `<ItemImageEmb*>` token:
/// it would add or break image slots in the prompt.
fn check_reserved(input: &RecommendInput) -> Result<()> {
    let find = |text: &str| ITEM_TOKENS.iter().copied().find(|t| text.contains(t));
    if let Some(token) = find(&input.context) {
        return Err(RequestError::ReservedTokenInDialogue { token }.into());
    }
    for (candidate, c) in input.candidates.iter().enumerate() {
        for (part, text) in [("id", c.id.as_str()), ("title", c.title.as_str())] {
            if let Some(token) = find(text) {
                return Err(RequestError::ReservedToken { candidate, id: c.id.clone(), part, token }.into());
            }
        }
    }
    Ok(())
}

/// Runs `items` through `pass` together. When that shared pass fails and there was more than one
/// item, runs each item in a pass of its own (so one item whose data breaks the pass fails
/// alone) and also returns the shared pass's error. One result per item, in order.
fn shared_or_alone<T, R>(items: &[T], pass: impl Fn(&[T]) -> Result<Vec<Result<R>>>) -> (Vec<Result<R>>, Option<Error>) {
    if items.is_empty() {
        return (Vec::new(), None);
    }
    match pass(items) {
        Ok(results) => (results, None),
        Err(e) if items.len() == 1 => (vec![Err(e)], None),
        Err(shared) => {
            let alone = items
                .chunks(1)
                .map(|one| match pass(one) {
                    Ok(mut r) => r.pop().unwrap_or_else(|| Err(Error::Input("a pass of one gave no result".into()))),
                    Err(e) => Err(e),
                })
                .collect();
            (alone, Some(shared))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A pass over numbers that fails as a whole when it holds a 0 and refuses 7s one by one.
    fn pass(calls: &RefCell<Vec<Vec<u32>>>) -> impl Fn(&[u32]) -> Result<Vec<Result<u32>>> + '_ {
        move |items: &[u32]| {
            calls.borrow_mut().push(items.to_vec());
            if items.contains(&0) {
                return Err(Error::Input("the shared pass broke".into()));
            }
            Ok(items.iter().map(|&x| if x == 7 { Err(RequestError::NoCandidates.into()) } else { Ok(x * 10) }).collect())
        }
    }

    #[test]
    fn a_good_batch_takes_one_pass_and_keeps_per_item_errors() {
        let calls = RefCell::new(Vec::new());
        let (results, shared) = shared_or_alone(&[1, 7, 3], pass(&calls));
        assert!(shared.is_none());
        assert_eq!(calls.borrow().len(), 1, "one shared pass");
        assert!(matches!(results[..], [Ok(10), Err(Error::Request(RequestError::NoCandidates)), Ok(30)]), "{results:?}");
    }

    #[test]
    fn a_failed_shared_pass_reruns_each_item_alone() {
        let calls = RefCell::new(Vec::new());
        let (results, shared) = shared_or_alone(&[1, 0, 3], pass(&calls));
        assert!(matches!(shared, Some(Error::Input(ref m)) if m == "the shared pass broke"), "{shared:?}");
        assert_eq!(*calls.borrow(), vec![vec![1, 0, 3], vec![1], vec![0], vec![3]]);
        assert!(matches!(results[..], [Ok(10), Err(Error::Input(_)), Ok(30)]), "the bad item fails alone: {results:?}");
    }

    #[test]
    fn a_single_item_is_not_retried_and_nothing_runs_for_none() {
        let calls = RefCell::new(Vec::new());
        let (results, shared) = shared_or_alone(&[0], pass(&calls));
        assert!(shared.is_none(), "one item's pass is not a shared pass");
        assert!(matches!(results[..], [Err(Error::Input(_))]));
        assert_eq!(calls.borrow().len(), 1);
        let (results, shared) = shared_or_alone(&[], pass(&calls));
        assert!(results.is_empty() && shared.is_none());
        assert_eq!(calls.borrow().len(), 1);
    }
}
