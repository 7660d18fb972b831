//! The recommendation prompt of one request, on top of [`crate::prompt`]'s text pieces: built
//! and tokenised under a token budget (ours: the conversation is shortened from the front and the
//! instruction, candidate block and answer cue are never cut, where the reference's right
//! truncation would cut the candidates and the answer first), and each candidate id's tokens as
//! they follow the prompt (what default mode scores).

use crate::anyres::NUM_VIEWS;
use crate::error::{RequestError, Result};
use crate::model::LavicModel;
use crate::prompt::{recommendation_head, recommendation_tail, LavicTokenizer, PromptCandidate, TokenizedPrompt, ITEM_TOKENS};

/// The prompt of one request, tokenised, with the conversation shortened if needed.
#[derive(Debug, Clone)]
pub struct BuiltPrompt {
    /// Full prompt text.
    pub text: String,
    /// Tokens and image slots.
    pub tokens: TokenizedPrompt,
    /// Conversation tokens dropped from the front.
    pub shortened_tokens: usize,
}

impl LavicTokenizer {
    /// Builds and tokenises the recommendation prompt; when it exceeds `budget` tokens, drops
    /// whole tokens from the front of the conversation (never the instruction, the candidate
    /// block or the answer cue).
    pub fn build_recommendation_prompt(&self, context: &str, candidates: &[PromptCandidate<'_>], budget: Option<usize>) -> Result<BuiltPrompt> {
        let head = recommendation_head();
        let tail = recommendation_tail(candidates);
        let make = |ctx: &str| format!("{head}{ctx}{tail}");
        let text = make(context);
        let tokens = self.tokenize_prompt(&text)?;
        let Some(budget) = budget else { return Ok(BuiltPrompt { text, tokens, shortened_tokens: 0 }) };
        if tokens.ids.len() <= budget {
            return Ok(BuiltPrompt { text, tokens, shortened_tokens: 0 });
        }
        let fixed = self.tokenize_prompt(&make(""))?.ids.len();
        if fixed > budget {
            return Err(RequestError::CandidatesOverBudget { tokens: fixed, budget }.into());
        }
        let offsets = self.token_offsets(context)?;
        let mut drop = tokens.ids.len() - budget;
        loop {
            let cut = offsets.get(drop).copied().unwrap_or(context.len());
            let mut cut = cut.min(context.len());
            while !context.is_char_boundary(cut) {
                cut += 1;
            }
            let text = make(&context[cut..]);
            let tokens = self.tokenize_prompt(&text)?;
            if tokens.ids.len() <= budget || cut >= context.len() {
                return Ok(BuiltPrompt { text, tokens, shortened_tokens: drop.min(offsets.len()) });
            }
            drop += tokens.ids.len() - budget;
        }
    }
}

impl LavicModel {
    /// Builds and tokenises the recommendation prompt under `budget` tokens (see
    /// [`LavicTokenizer::build_recommendation_prompt`]).
    pub fn build_prompt(&self, context: &str, candidates: &[PromptCandidate<'_>], budget: Option<usize>) -> Result<BuiltPrompt> {
        self.tokenizer.build_recommendation_prompt(context, candidates, budget)
    }

    /// Token ids of each candidate id as it appears right after the prompt (prompt and id
    /// tokenised together, since context changes token boundaries).
    ///
    /// Normalisation and BPE run per segment between special tokens, so only the text after the
    /// prompt's last `<ItemImageEmb5>` can change: that short tail is tokenised with each id
    /// instead of the whole prompt (checked against the prompt's own tokens, else the full text).
    pub fn candidate_continuations(&self, prompt: &BuiltPrompt, ids: &[&str]) -> Result<Vec<Vec<u32>>> {
        let p = &prompt.tokens.ids;
        let anchor = ITEM_TOKENS[NUM_VIEWS - 1];
        let tail_start = prompt.text.rfind(anchor);
        let tail = tail_start.map(|i| &prompt.text[i..]);
        let tail_ids = match tail {
            Some(t) => Some(self.tokenizer.encode_plain(t)?).filter(|ids| p.ends_with(ids)),
            None => None,
        };
        ids.iter()
            .map(|id| {
                let (base, joint) = match (tail, &tail_ids) {
                    (Some(t), Some(tids)) => (tids, self.tokenizer.encode_plain(&format!("{t}{id}"))?),
                    _ => (p, self.tokenizer.encode(&format!("{}{id}", prompt.text))?),
                };
                if joint.len() > base.len() && joint[..base.len()] == base[..] {
                    Ok(joint[base.len()..].to_vec())
                } else {
                    // The id merged into the prompt's last token; use its standalone pieces.
                    tracing::warn!(id, "candidate id changes the prompt's last token; scoring its standalone tokens");
                    self.tokenizer.encode_plain(id)
                }
            })
            .collect()
    }
}
