//! Default mode's one-pass scoring of a request's candidates, as a tree. The prompt is followed
//! by a trie of the candidates' id tokens (each tokenised as it appears right after
//! `Assistant:`), with a tree attention mask (a node sees the prompt and its own ancestors), and
//! ONE decoder pass runs over the trees of a whole batch. From the logits at the prompt's last
//! position and at every trie node come each candidate's log-likelihood and a replay of the
//! unconstrained greedy decode through the trie: it is valid when greedy completes a candidate id,
//! and invalid as soon as its arg-max token leaves every candidate's path.
//!
//! Everything here is tree-local: candidates are numbers (prompt order), and the result is a
//! [`TreeAnswer`]; [`crate::recommend`] turns it into the API's `Recommendation`.

use candle_core::Tensor;

use crate::decoder::{causal_mask, mask_from_fn};
use crate::error::{Error, RequestError, Result};
use crate::model::{LavicModel, SharedPrefix};
use crate::prompt::{ends_word, recommendation_head, LavicTokenizer};

/// How far greedy decoding may run and whether every candidate is scored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeOptions {
    /// Greedy budget (the reference's `max_new_tokens`).
    pub max_new: usize,
    /// Score every candidate even when the greedy answer is valid.
    pub want_scores: bool,
}

/// The outcome of scoring one tree, with candidates by position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TreeAnswer {
    /// The candidate whose id the greedy replay completed (a valid answer), if any.
    pub completed: Option<usize>,
    /// The tokens greedy produced (up to where it left the ids).
    pub produced: Vec<u32>,
    /// Every candidate's score, best first; empty when the answer is valid and scores were not
    /// asked for.
    pub scores: Vec<TreeScore>,
}

/// One candidate's total log-likelihood.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TreeScore {
    /// Position of the candidate.
    pub candidate: usize,
    /// `log P(id | prompt)`, summed over the id's tokens.
    pub logprob: f32,
    /// Tokens of the id.
    pub tokens: usize,
}

impl LavicModel {
    /// The tree of one request: its prompt (`prompt_ids`, embedded as `embeds` `[1, T, H]`)
    /// followed by the trie of the candidates' id tokens `conts`.
    pub(crate) fn build_tree(&self, prompt_ids: Vec<u32>, embeds: Tensor, conts: Vec<Vec<u32>>, options: TreeOptions) -> Result<Tree> {
        let trie = Trie::build(&conts)?;
        let node_ids: Vec<u32> = trie.nodes.iter().map(|n| n.token).collect();
        let embeds = if node_ids.is_empty() {
            embeds
        } else {
            let nodes = self.decoder().embed(&Tensor::new(node_ids.as_slice(), embeds.device())?.unsqueeze(0)?)?;
            Tensor::cat(&[&embeds, &nodes.to_dtype(embeds.dtype())?], 1)?
        };
        Ok(Tree { conts, trie, prompt_len: prompt_ids.len(), prompt_ids, embeds, options })
    }

    /// One forward over every tree (rows padded at the end), then per-tree scoring. The output
    /// head (a `hidden x vocab` product per row, which dominates on small models) runs lazily:
    /// one row per step of the greedy replay, and over every scoring row only when scores are
    /// needed. Each row's logits are the same whichever rows are computed with it.
    ///
    /// The outer error is the shared pass's (every tree failed with it); each tree's own scoring
    /// has its own result.
    pub(crate) fn score_trees(&self, trees: &[&Tree]) -> Result<Vec<Result<TreeAnswer>>> {
        let (hidden, skip) = self.forward_trees_hidden(trees)?;
        let len = hidden.dim(1)?;
        let answers = trees.iter().enumerate().map(|(r, t)| {
            let flat = |row: usize| (r * len + t.prompt_len - skip - 1 + row) as u32;
            let argmax_at = |row: usize| -> Result<u32> {
                let logits = self.decoder().logits_at(&hidden, &[flat(row)])?;
                Ok(logits.argmax(1)?.to_vec1::<u32>()?[0])
            };
            let node_logprobs = || -> Result<Vec<f32>> {
                // Rows that predict some node (the last prompt position and inner nodes),
                // in one head product; only each node's log-probability leaves the device.
                let mut rows: Vec<usize> = (0..t.trie.nodes.len()).map(|j| t.row_before(j)).collect();
                rows.sort_unstable();
                rows.dedup();
                let flat_rows: Vec<u32> = rows.iter().map(|&row| flat(row)).collect();
                let logits = self.decoder().logits_at(&hidden, &flat_rows)?;
                let picks: Vec<(usize, u32)> = (0..t.trie.nodes.len())
                    .map(|j| (rows.binary_search(&t.row_before(j)).unwrap_or_default(), t.trie.nodes[j].token))
                    .collect();
                pick_logprobs(&logits, &picks)
            };
            t.score(&self.tokenizer, argmax_at, node_logprobs)
        });
        Ok(answers.collect())
    }

    /// For each candidate of `tree`, the f32 logits `[id tokens, vocab]` that predict its id
    /// tokens, from the single tree pass.
    pub(crate) fn tree_candidate_logits(&self, tree: &Tree) -> Result<Vec<Tensor>> {
        let (hidden, skip) = self.forward_trees_hidden(&[tree])?;
        (0..tree.conts.len())
            .map(|c| {
                let rows: Vec<u32> = tree.path(c).iter().map(|&j| (tree.prompt_len - skip - 1 + tree.row_before(j)) as u32).collect();
                self.decoder().logits_at(&hidden, &rows)
            })
            .collect()
    }

    /// ONE decoder pass over all trees: the final hidden states `[trees, len - skip, hidden]` of
    /// every row after the first `skip`, which are the shared instruction prefix when every tree
    /// starts with it (its keys/values come from the cache computed at load; 0 otherwise).
    fn forward_trees_hidden(&self, trees: &[&Tree]) -> Result<(Tensor, usize)> {
        let len = trees.iter().map(|t| t.len()).max().unwrap_or(0);
        let device = trees[0].embeds.device().clone();
        let hidden = self.decoder().hidden_size();
        let dtype = trees[0].embeds.dtype();
        let prefix = self.prefix.as_ref().filter(|p| {
            trees.iter().all(|t| t.prompt_len > p.ids.len() && t.prompt_ids.starts_with(&p.ids))
        });
        let skip = prefix.map_or(0, |p| p.ids.len());
        let mut rows = Vec::with_capacity(trees.len());
        let mut positions = Vec::with_capacity(trees.len());
        for t in trees {
            let pad = len - t.len();
            let e = t.embeds.squeeze(0)?.narrow(0, skip, t.len() - skip)?;
            rows.push(if pad > 0 { Tensor::cat(&[&e, &Tensor::zeros((pad, hidden), dtype, &device)?], 0)? } else { e });
            let mut pos: Vec<u32> = (skip as u32..t.prompt_len as u32).collect();
            pos.extend(t.trie.nodes.iter().map(|n| (t.prompt_len + n.depth - 1) as u32));
            pos.extend(std::iter::repeat_n(0u32, pad));
            positions.push(pos);
        }
        let embeds = Tensor::stack(&rows, 0)?;
        let window = self.decoder().sliding_window();
        let mut mask = tree_mask(trees, len, window, &device)?;
        let mut cache = match prefix {
            Some(p) => {
                mask = mask.narrow(2, skip, len - skip)?;
                p.cache.expand(trees.len())?
            }
            None => self.decoder().new_cache(),
        };
        Ok((self.forward(&embeds, &positions, &mask, &mut cache)?, skip))
    }

    /// Keys/values of the recommendation prompt's fixed head (BOS + instruction, without its
    /// last token, which could merge with the conversation's first characters), from one causal
    /// pass. A default-mode pass whose prompt starts with these tokens resumes from them: the
    /// keys and values of a causal prefix do not depend on what follows it.
    pub(crate) fn instruction_prefix(&self) -> Result<Option<SharedPrefix>> {
        let mut ids = self.tokenizer.encode(recommendation_head())?;
        ids.pop();
        if ids.is_empty() {
            return Ok(None);
        }
        let device = self.encoder.device();
        let embeds = self.decoder().embed(&Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?)?;
        let mask = causal_mask(&[0], 0, ids.len(), self.decoder().sliding_window(), device)?;
        let mut cache = self.decoder().new_cache();
        self.forward(&embeds, &[(0..ids.len() as u32).collect()], &mask, &mut cache)?;
        Ok(Some(SharedPrefix { ids, cache }))
    }

    /// Tokens of the shared instruction prefix (0 when prefix sharing is off).
    pub fn shared_prefix_tokens(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.ids.len())
    }
}

/// `log softmax(logits[row])[token]` for each `(row, token)` of `picks`; `logits` is f32
/// `[rows, vocab]`. Only the picked entries and one log-sum-exp per row are formed (not the
/// whole log-softmax matrix); on CPU the rows run in parallel, since the exponentials over the
/// vocabulary are the cost there.
fn pick_logprobs(logits: &Tensor, picks: &[(usize, u32)]) -> Result<Vec<f32>> {
    let (rows, vocab) = logits.dims2()?;
    if let Some(&(r, t)) = picks.iter().find(|&&(r, t)| r >= rows || t as usize >= vocab) {
        return Err(Error::Input(format!("logit ({r}, {t}) is outside {rows} x {vocab}")));
    }
    let logits = logits.contiguous()?;
    let (lse, picked): (Vec<f32>, Vec<f32>) = match &*logits.storage_and_layout().0 {
        candle_core::Storage::Cpu(cpu) => {
            let (start, end) = logits.layout().contiguous_offsets().unwrap_or((0, rows * vocab));
            let data = &cpu.as_slice::<f32>()?[start..end];
            use rayon::prelude::*;
            let lse = data
                .par_chunks(vocab)
                .map(|row| {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
                })
                .collect();
            (lse, picks.iter().map(|&(r, t)| data[r * vocab + t as usize]).collect())
        }
        _ => return pick_logprobs_on_device(&logits, picks),
    };
    Ok(picks.iter().zip(picked).map(|(&(r, _), x)| x - lse[r]).collect())
}

/// [`pick_logprobs`] with tensor ops on the logits' device (GPU): only one log-sum-exp per row
/// and the picked logits leave it.
fn pick_logprobs_on_device(logits: &Tensor, picks: &[(usize, u32)]) -> Result<Vec<f32>> {
    let vocab = logits.dim(1)?;
    let max = logits.max_keepdim(1)?;
    let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?.flatten_all()?.to_vec1::<f32>()?;
    let idx: Vec<u32> = picks.iter().map(|&(r, t)| (r * vocab + t as usize) as u32).collect();
    let picked = logits.flatten_all()?.index_select(&Tensor::new(idx.as_slice(), logits.device())?, 0)?.to_vec1::<f32>()?;
    Ok(picks.iter().zip(picked).map(|(&(r, _), x)| x - lse[r]).collect())
}

/// The additive mask of a batch of trees, `[B, 1, len, len]`, written row by row (prompt rows
/// causal, node rows the prompt plus their ancestors, padding rows themselves). A sliding window,
/// if the model has one shorter than the rows, is applied through [`Tree::allowed`].
fn tree_mask(trees: &[&Tree], len: usize, window: Option<usize>, device: &candle_core::Device) -> Result<Tensor> {
    if window.is_some_and(|w| w < len) {
        return mask_from_fn(trees.len(), len, len, device, |r, q, k| trees[r].allowed(q, k, window));
    }
    let mut data = vec![crate::decoder::MASKED; trees.len() * len * len];
    for (r, t) in trees.iter().enumerate() {
        let base = r * len * len;
        let p = t.prompt_len;
        for q in 0..len {
            let row = &mut data[base + q * len..base + (q + 1) * len];
            if q < p {
                row[..=q].fill(0.0);
            } else if q < t.len() {
                row[..p].fill(0.0);
                let mut j = Some(q - p);
                while let Some(n) = j {
                    row[p + n] = 0.0;
                    j = t.trie.nodes[n].parent;
                }
            } else {
                row[q] = 0.0;
            }
        }
    }
    crate::decoder::finish_rows(&mut data, len);
    Ok(Tensor::from_vec(data, (trees.len(), 1, len, len), device)?)
}

/// A trie node: one token of one or more candidate ids.
#[derive(Debug, Clone)]
struct Node {
    token: u32,
    parent: Option<usize>,
    depth: usize,
    children: Vec<usize>,
    /// Candidate whose id ends here.
    completes: Option<usize>,
}

/// The candidates' id tokens as a prefix tree (shared first tokens evaluated once).
#[derive(Debug, Clone)]
struct Trie {
    nodes: Vec<Node>,
    roots: Vec<usize>,
    /// Last node of each candidate.
    ends: Vec<usize>,
}

impl Trie {
    fn build(conts: &[Vec<u32>]) -> Result<Self> {
        let mut t = Trie { nodes: Vec::new(), roots: Vec::new(), ends: Vec::new() };
        for (c, toks) in conts.iter().enumerate() {
            if toks.is_empty() {
                return Err(RequestError::EmptyId { candidate: c }.into());
            }
            let mut parent: Option<usize> = None;
            for &tok in toks {
                let siblings = match parent { Some(p) => &t.nodes[p].children, None => &t.roots };
                let found = siblings.iter().copied().find(|&j| t.nodes[j].token == tok);
                let j = match found {
                    Some(j) => j,
                    None => {
                        let j = t.nodes.len();
                        let depth = parent.map_or(1, |p| t.nodes[p].depth + 1);
                        t.nodes.push(Node { token: tok, parent, depth, children: Vec::new(), completes: None });
                        match parent { Some(p) => t.nodes[p].children.push(j), None => t.roots.push(j) }
                        j
                    }
                };
                parent = Some(j);
            }
            let end = parent.unwrap_or_default();
            if let Some(other) = t.nodes[end].completes {
                return Err(RequestError::SameIdTokens { first: other, second: c }.into());
            }
            t.nodes[end].completes = Some(c);
            t.ends.push(end);
        }
        Ok(t)
    }

    fn is_ancestor_or_self(&self, a: usize, mut b: usize) -> bool {
        loop {
            if a == b {
                return true;
            }
            match self.nodes[b].parent {
                Some(p) => b = p,
                None => return false,
            }
        }
    }
}

/// One request prepared for tree scoring (built by [`LavicModel::build_tree`]).
pub(crate) struct Tree {
    /// Each candidate's id tokens after the prompt.
    conts: Vec<Vec<u32>>,
    trie: Trie,
    prompt_len: usize,
    /// The prompt's token ids (to check it starts with the shared prefix).
    prompt_ids: Vec<u32>,
    /// Prompt and node embeddings, `[1, prompt_len + nodes, hidden]`.
    embeds: Tensor,
    options: TreeOptions,
}

impl Tree {
    fn len(&self) -> usize {
        self.prompt_len + self.trie.nodes.len()
    }

    /// Logit row (0 = last prompt position, j + 1 = node j) whose distribution predicts node `j`.
    fn row_before(&self, j: usize) -> usize {
        self.trie.nodes[j].parent.map_or(0, |p| p + 1)
    }

    /// Nodes of candidate `c`, root first.
    fn path(&self, c: usize) -> Vec<usize> {
        let mut path = vec![self.trie.ends[c]];
        while let Some(p) = self.trie.nodes[*path.last().unwrap_or(&0)].parent {
            path.push(p);
        }
        path.reverse();
        path
    }

    /// Tree attention: prompt causal; a node sees the prompt and its ancestors; padding sees itself.
    fn allowed(&self, q: usize, k: usize, window: Option<usize>) -> bool {
        let p = self.prompt_len;
        let n = self.len();
        let pos = |i: usize| if i < p { i } else { p + self.trie.nodes[i - p].depth - 1 };
        let base = if q >= n {
            q == k
        } else if q < p {
            k <= q
        } else if k < p {
            true
        } else if k < n {
            self.trie.is_ancestor_or_self(k - p, q - p)
        } else {
            false
        };
        base && (q >= n || k >= n || window.is_none_or(|w| pos(q) - pos(k).min(pos(q)) < w))
    }

    /// The answer from each logit row's arg-max (row 0 = last prompt position, j + 1 = node j;
    /// asked for lazily, along the greedy path) and, when scores are needed, each node's token
    /// log-probability.
    fn score(
        &self,
        tokenizer: &LavicTokenizer,
        mut argmax_at: impl FnMut(usize) -> Result<u32>,
        node_logprobs: impl FnOnce() -> Result<Vec<f32>>,
    ) -> Result<TreeAnswer> {
        // Replay the unconstrained greedy decode through the trie. It is valid when it completes an
        // id and then stops (budget, or a next token that does not continue the id's word, as
        // `match_candidate` judges FREE mode's text); invalid as soon as it leaves every path.
        let mut row = 0usize;
        let mut level = &self.trie.roots;
        let mut produced: Vec<u32> = Vec::new();
        let mut completed: Option<usize> = None;
        while produced.len() < self.options.max_new {
            let next = argmax_at(row)?;
            if let Some(j) = level.iter().copied().find(|&j| self.trie.nodes[j].token == next) {
                produced.push(next);
                completed = self.trie.nodes[j].completes;
                row = j + 1;
                level = &self.trie.nodes[j].children;
                continue;
            }
            // Greedy leaves every remaining path here.
            if completed.is_some() && !ends_word(&tokenizer.decode(&[next], true)?) {
                completed = None;
            }
            if completed.is_none() {
                produced.push(next);
            }
            break;
        }
        let scores = match completed {
            Some(_) if !self.options.want_scores => Vec::new(),
            _ => {
                let node_lp = node_logprobs()?;
                let mut scores: Vec<TreeScore> = (0..self.conts.len())
                    .map(|c| TreeScore {
                        candidate: c,
                        logprob: self.path(c).iter().map(|&j| node_lp[j]).sum(),
                        tokens: self.conts[c].len(),
                    })
                    .collect();
                scores.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                scores
            }
        };
        Ok(TreeAnswer { completed, produced, scores })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(prompt_len: usize, conts: Vec<Vec<u32>>) -> Tree {
        Tree {
            trie: Trie::build(&conts).unwrap(),
            conts,
            prompt_len,
            prompt_ids: Vec::new(),
            embeds: Tensor::zeros((1, 1, 1), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
            options: TreeOptions { max_new: 10, want_scores: true },
        }
    }

    #[test]
    fn picked_logprobs_equal_log_softmax_on_both_paths() {
        let dev = candle_core::Device::Cpu;
        let logits = (Tensor::randn(0f32, 4.0, (7, 1000), &dev).unwrap() * 3.0).unwrap();
        let picks: Vec<(usize, u32)> = vec![(0, 0), (0, 999), (3, 17), (6, 500), (6, 501), (2, 2)];
        let full = candle_nn::ops::log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
        for got in [pick_logprobs(&logits, &picks).unwrap(), pick_logprobs_on_device(&logits, &picks).unwrap()] {
            for (&(r, t), g) in picks.iter().zip(got) {
                assert!((g - full[r][t as usize]).abs() < 1e-4, "({r}, {t}): {g} vs {}", full[r][t as usize]);
            }
        }
        // A strided (non-contiguous) view and an out-of-range pick.
        let t = logits.t().unwrap().t().unwrap();
        assert_eq!(pick_logprobs(&t, &picks).unwrap().len(), picks.len());
        assert!(pick_logprobs(&logits, &[(7, 0)]).is_err());
        assert!(pick_logprobs(&logits, &[(0, 1000)]).is_err());
    }

    #[test]
    fn fast_tree_mask_equals_the_definition() {
        let a = tree(4, vec![vec![1, 2, 3], vec![1, 2, 4], vec![5], vec![1, 6, 7, 8]]);
        let b = tree(6, vec![vec![9, 9], vec![9, 8]]);
        assert_eq!(a.trie.nodes.len(), 8, "shared first tokens are one node");
        let trees = [&a, &b];
        let len = a.len().max(b.len());
        let dev = candle_core::Device::Cpu;
        let fast = tree_mask(&trees, len, None, &dev).unwrap();
        let slow = mask_from_fn(2, len, len, &dev, |r, q, k| trees[r].allowed(q, k, None)).unwrap();
        let d = (fast - slow).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn duplicate_and_empty_ids_are_refused() {
        assert!(Trie::build(&[vec![1, 2], vec![1, 2]]).is_err());
        assert!(Trie::build(&[vec![]]).is_err());
        let same = Trie::build(&[vec![3], vec![1, 2], vec![1, 2]]).unwrap_err();
        assert!(matches!(same, Error::Request(RequestError::SameIdTokens { first: 1, second: 2 })), "{same:?}");
        let empty = Trie::build(&[vec![1], vec![]]).unwrap_err();
        assert!(matches!(empty, Error::Request(RequestError::EmptyId { candidate: 1 })), "{empty:?}");
    }
}
