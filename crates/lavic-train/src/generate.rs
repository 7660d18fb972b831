//! Batched greedy answers of the stage-0 model ([`FullModel`]) to prompts about images, e.g.
//! the stage-1 teacher descriptions (the model's own description of every item).
//!
//! [`FullModel::generate`] reruns the vision tower and the whole prompt for every new token.
//! Here many prompts share each forward: their patch features are computed once, the
//! right-padded prompts run once through the decoder ([`Decoder::prefill`]), and each step
//! feeds one new token per unfinished row against the cached keys and values
//! ([`Decoder::decode_step`]; rows have their own lengths and positions). Rows that reach `</s>`
//! leave the batch. Same greedy choice as [`FullModel::generate`] (argmax, first index on ties),
//! so the same texts up to float rounding between the two computations.

use candle_core::Tensor;

use crate::decoder::Decoder;
use crate::error::Result;
use crate::full::FullModel;
use crate::linear::Ctx;

/// One prompt to answer: text with one `<image>` per image ([`crate::full::stage0_prompt`])
/// and each image's 5 views `[5, 3, S, S]` in prompt order.
#[derive(Debug, Clone)]
pub struct Question {
    /// The prompt.
    pub prompt: String,
    /// Pixel views per image.
    pub images: Vec<Tensor>,
}

/// A greedy answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The decoded text (special tokens skipped), as [`FullModel::generate`] returns it.
    pub text: String,
    /// Generated token ids (`</s>` not included).
    pub tokens: Vec<u32>,
    /// Whether the answer ended with `</s>` within the token budget.
    pub finished: bool,
}

/// Index of the largest value of each row of `[N, V]` logits.
fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.to_vec2::<f32>()?.iter().map(|row| lavic_model::model::argmax(row)).collect())
}

impl FullModel {
    /// Greedy answers (up to `max_new` tokens each, stopping at `</s>`) to `questions`, all in
    /// one batch: callers bound the batch size (memory grows with rows x prompt length).
    pub fn generate_batch(&self, questions: &[Question], max_new: usize) -> Result<Vec<Answer>> {
        let mut out = vec![Answer::default(); questions.len()];
        if questions.is_empty() || max_new == 0 {
            return Ok(out);
        }
        let encoded = questions.iter().map(|q| self.encode_prompt(&q.prompt, &q.images)).collect::<Result<Vec<_>>>()?;
        let mut ctx = Ctx::eval();
        let (embeds, lens) = self.embeds(&encoded, &mut ctx)?;
        let dec: &Decoder = &self.decoder;
        let (hidden, mut cache) = dec.prefill(&embeds, &lens, &mut ctx)?;
        let t = embeds.dim(1)?;
        let last: Vec<u32> = lens.iter().enumerate().map(|(r, l)| (r * t + l - 1) as u32).collect();
        let mut next = argmax_rows(&dec.logits_at(&hidden, &last, &mut ctx)?)?;
        // `active[i]`: the question of cache row i.
        let mut active: Vec<usize> = (0..questions.len()).collect();
        let eos = self.tokenizer.eos_id();
        for step in 0.. {
            let mut keep = Vec::with_capacity(active.len());
            for (row, (&q, &tok)) in active.iter().zip(&next).enumerate() {
                if tok == eos {
                    out[q].finished = true;
                } else {
                    out[q].tokens.push(tok);
                    keep.push(row);
                }
            }
            if keep.is_empty() || step + 1 == max_new {
                break;
            }
            if keep.len() < active.len() {
                cache.keep(&keep)?;
            }
            let toks: Vec<u32> = keep.iter().map(|&r| next[r]).collect();
            active = keep.iter().map(|&r| active[r]).collect();
            let x = dec.embed(&toks, self.device())?.unsqueeze(1)?;
            let h = dec.decode_step(&x, &mut cache, &mut ctx)?;
            let rows: Vec<u32> = (0..cache.rows() as u32).collect();
            next = argmax_rows(&dec.logits_at(&h, &rows, &mut ctx)?)?;
        }
        for a in &mut out {
            a.text = self.tokenizer.decode(&a.tokens, true)?;
        }
        Ok(out)
    }
}
