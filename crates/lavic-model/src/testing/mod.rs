//! Test support: a copy of a (tiny) checkpoint whose weights are arranged so that greedy
//! decoding after `Assistant:` spells a chosen answer. Embeddings are scaled so the residual
//! stream is dominated by the current token, and lm_head rows point each token of the answer at
//! the next one (the answer ends with `\n`, as a trained model's would). Lets tests exercise both
//! the valid and the invalid branch of the validity flag with real model code.
//!
//! [`realsize`]: a random-weight checkpoint with the exact config, tensor names, shapes and dtype
//! of llava-v1.6-mistral-7b-hf / llava-v1.6-vicuna-7b-hf, plus LaViC-shaped adapters, streamed
//! to disk.

pub mod realsize;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{LavicModel, LoadOptions};
use crate::prompt::PromptCandidate;

/// Writes to `dst` a single-file f32 copy of the checkpoint in `src` (with `tokenizer`) whose
/// greedy answer is `answer`. The answer's tokens (after the prompt) must be distinct.
pub fn write_arranged_checkpoint(src: &Path, tokenizer: &Path, dst: &Path, answer: &str) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let p = e.map_err(|e| Error::io(src, e))?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            for (k, v) in candle_core::safetensors::load(&p, &Device::Cpu)? {
                tensors.insert(k, v.to_dtype(DType::F32)?);
            }
        } else if p.extension().is_some_and(|x| x == "json") && !p.ends_with("model.safetensors.index.json") {
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, dst.join(name)).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    let mut o = LoadOptions::new(src);
    o.tokenizer = Some(tokenizer.to_path_buf());
    o.dtype = Some(DType::F32);
    let plain = LavicModel::load(&o)?;
    let probe = plain.build_prompt("<submission>x</submission>\n", &[PromptCandidate { id: "X", title: "Y" }], None)?;
    let cont = plain.candidate_continuations(&probe, &[answer])?.remove(0);
    let mut chain = vec![*probe.tokens.ids.last().unwrap_or(&0)];
    chain.extend(&cont);
    chain.push(13); // "\n"
    let mut seen = HashSet::new();
    if !chain.iter().all(|t| seen.insert(*t)) {
        return Err(Error::Input(format!("answer {answer:?} must tokenise to distinct tokens: {chain:?}")));
    }
    let get = |k: &str| tensors.get(k).cloned().ok_or_else(|| Error::Checkpoint(format!("tensor {k} missing")));
    let emb_key = "language_model.model.embed_tokens.weight";
    let head_key = "language_model.lm_head.weight";
    let emb = (get(emb_key)? * 1000.0)?;
    let norm = get("language_model.model.norm.weight")?.to_vec1::<f32>()?;
    let mut head = get(head_key)?.to_vec2::<f32>()?;
    let emb_rows = emb.to_vec2::<f32>()?;
    for pair in chain.windows(2) {
        let e = &emb_rows[pair[0] as usize];
        let rms = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
        let dir: Vec<f32> = e.iter().zip(&norm).map(|(x, w)| x / rms * w).collect();
        let len = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
        head[pair[1] as usize] = dir.iter().map(|x| 8.0 * x / len).collect();
    }
    let (v, h) = get(head_key)?.dims2()?;
    tensors.insert(emb_key.into(), emb);
    tensors.insert(head_key.into(), Tensor::from_vec(head.into_iter().flatten().collect::<Vec<f32>>(), (v, h), &Device::Cpu)?);
    candle_core::safetensors::save(&tensors, dst.join("model.safetensors"))?;
    Ok(())
}
