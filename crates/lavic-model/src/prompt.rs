//! LaViC's two prompts (stage-1 distillation, stage-2 recommendation), byte-identical to the
//! reference scripts, and the tokenizer wrapper that adds the five `<ItemImageEmb*>` tokens and
//! finds where each candidate's image embeddings go.

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::anyres::NUM_VIEWS;
use crate::error::{Error, Result};

/// The placeholder tokens LaViC adds; ids follow the base vocabulary (32002..32006 for llava-hf).
pub const ITEM_TOKENS: [&str; NUM_VIEWS] =
    ["<ItemImageEmb1>", "<ItemImageEmb2>", "<ItemImageEmb3>", "<ItemImageEmb4>", "<ItemImageEmb5>"];

/// Title used when an item has none.
pub const NO_TITLE: &str = "No Title";

const DISTILL_HEAD: &str = "You are a helpful assistant.\nGiven an Amazon product's title and its image, please provide a detailed, visually grounded description of the product that would help someone decide whether to purchase it. Focus on the product's appearance, features, and any other visually informative aspects. Do not mention the product's title in your answer. This product's title is: ";

const REC_HEAD: &str = "You are an AI assistant specialized in providing personalized product recommendations based on user conversations. You are given a conversation between a user seeking recommendation (denoted by <submission>) and other users providing comments (denoted by <comment>). You are also given a set of candidate products with their IDs, titles and images formatted as \"ID: title\" followed by an image. Among the candidates, recommend the most relevant product to the seeker. Only reply with its ID, and don't say anything else.\n\nConversation:\n";

/// Text the answer follows.
pub const ANSWER_PREFIX: &str = "\nAssistant:";

/// The five placeholders of one image, concatenated.
pub fn image_placeholders() -> String {
    ITEM_TOKENS.concat()
}

/// Stage-1 prompt: title + 5 image tokens; the description follows `Assistant:` directly.
pub fn distillation_prompt(title: &str) -> String {
    format!("{DISTILL_HEAD}{title}\n{}\n{ANSWER_PREFIX}", image_placeholders())
}

/// One candidate as the recommendation prompt shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCandidate<'a> {
    /// Item id, e.g. an ASIN.
    pub id: &'a str,
    /// Title; empty means the reference's `No Title`.
    pub title: &'a str,
}

/// The fixed text before the conversation (identical for every request).
pub fn recommendation_head() -> &'static str {
    REC_HEAD
}

/// The candidate block and answer cue that follow the conversation.
pub fn recommendation_tail(candidates: &[PromptCandidate<'_>]) -> String {
    let mut s = String::from("\n\nCandidates:\n");
    let ph = image_placeholders();
    for c in candidates {
        let title = if c.title.is_empty() { NO_TITLE } else { c.title };
        s.push_str(c.id);
        s.push_str(": ");
        s.push_str(title);
        s.push('\n');
        s.push_str(&ph);
        s.push('\n');
    }
    s.push_str(ANSWER_PREFIX);
    s
}

/// Stage-2 prompt. `context` is the raw dialogue field (it already ends in `\n`).
pub fn recommendation_prompt(context: &str, candidates: &[PromptCandidate<'_>]) -> String {
    format!("{REC_HEAD}{context}{}", recommendation_tail(candidates))
}

/// A tokenised prompt with the positions of each image's five placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Token ids, BOS first.
    pub ids: Vec<u32>,
    /// For each image in prompt order, the positions of its 5 placeholders.
    pub image_slots: Vec<[usize; NUM_VIEWS]>,
}

/// The reference tokenizer plus LaViC's five special tokens.
#[derive(Clone)]
pub struct LavicTokenizer {
    inner: Tokenizer,
    item_ids: [u32; NUM_VIEWS],
    bos: u32,
    eos: u32,
}

impl LavicTokenizer {
    /// Loads a `tokenizer.json` and adds the `<ItemImageEmb*>` tokens unless already present
    /// (`tokenizer.add_special_tokens({"additional_special_tokens": [...]})`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let missing: Vec<AddedToken> = ITEM_TOKENS
            .iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&missing);
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::Tokenizer(format!("{}: no token {t}", path.display())))
        };
        let mut item_ids = [0u32; NUM_VIEWS];
        for (slot, t) in item_ids.iter_mut().zip(ITEM_TOKENS) {
            *slot = id(t)?;
        }
        Ok(Self { item_ids, bos: id("<s>")?, eos: id("</s>")?, inner })
    }

    /// `len(tokenizer)`: base vocabulary plus added tokens.
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Always false for a loaded tokenizer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of `<ItemImageEmb1..5>`.
    pub fn item_token_ids(&self) -> [u32; NUM_VIEWS] {
        self.item_ids
    }

    /// `</s>`, also the pad token in LaViC.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// `<s>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Ids of `text` with the post-processor's BOS, like `tokenizer(text).input_ids`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids without BOS.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Byte offset where each token of `text` starts (no BOS), for cutting text at token boundaries.
    pub fn token_offsets(&self, text: &str) -> Result<Vec<usize>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_offsets().iter().map(|o| o.0).collect())
    }

    /// Text of `ids`, like `tokenizer.decode(ids, skip_special_tokens=...)`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Tokenises a prompt and locates its image placeholders (each image: Emb1..Emb5 in order).
    pub fn tokenize_prompt(&self, text: &str) -> Result<TokenizedPrompt> {
        let ids = self.encode(text)?;
        let image_slots = self.image_slots(&ids)?;
        Ok(TokenizedPrompt { ids, image_slots })
    }

    /// Positions of every complete placeholder group in `ids`.
    pub fn image_slots(&self, ids: &[u32]) -> Result<Vec<[usize; NUM_VIEWS]>> {
        let mut slots = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for (pos, id) in ids.iter().enumerate() {
            if let Some(k) = self.item_ids.iter().position(|x| x == id) {
                if k != current.len() {
                    return Err(Error::Input(format!(
                        "image placeholder {} at token {pos} is out of order",
                        ITEM_TOKENS[k]
                    )));
                }
                current.push(pos);
                if current.len() == NUM_VIEWS {
                    let mut s = [0; NUM_VIEWS];
                    s.copy_from_slice(&current);
                    slots.push(s);
                    current.clear();
                }
            }
        }
        if !current.is_empty() {
            return Err(Error::Input("an image has fewer than 5 placeholders".into()));
        }
        Ok(slots)
    }
}

/// The reference's answer parse: the first `\bB[A-Z0-9]{9}\b` in the decoded text.
pub fn parse_reference_id(text: &str) -> Option<&str> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"\bB[A-Z0-9]{9}\b").expect("static regex"));
    re.find(text).map(|m| m.as_str())
}

/// Ours: the candidate id the answer starts with (after leading whitespace) as a whole word, i.e.
/// followed by the end of the answer or a character that is not alphanumeric or `_` (like the
/// reference's `\b`). The model is trained to answer with the bare id, so an answer that starts
/// otherwise is not a candidate; this is also exactly what one-pass scoring can verify.
pub fn match_candidate<'a>(text: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let t = text.trim_start();
    candidates
        .iter()
        .copied()
        .filter(|c| !c.is_empty() && t.starts_with(*c) && ends_word(&t[c.len()..]))
        .max_by_key(|c| c.len())
}

/// Whether `rest` (the text after an id) does not continue the id's word.
pub fn ends_word(rest: &str) -> bool {
    !rest.chars().next().is_some_and(|ch| ch.is_alphanumeric() || ch == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_reference_shape() {
        let p = distillation_prompt("Red Mug");
        assert!(p.starts_with("You are a helpful assistant.\nGiven an Amazon"));
        assert!(p.ends_with("This product's title is: Red Mug\n<ItemImageEmb1><ItemImageEmb2><ItemImageEmb3><ItemImageEmb4><ItemImageEmb5>\n\nAssistant:"));
        let c = [PromptCandidate { id: "B000000001", title: "" }, PromptCandidate { id: "X", title: "T" }];
        let r = recommendation_prompt("<submission>hi</submission>\n", &c);
        assert!(r.contains("Conversation:\n<submission>hi</submission>\n\n\nCandidates:\nB000000001: No Title\n<ItemImageEmb1>"));
        assert!(r.ends_with("X: T\n<ItemImageEmb1><ItemImageEmb2><ItemImageEmb3><ItemImageEmb4><ItemImageEmb5>\n\nAssistant:"));
    }

    #[test]
    fn answers_parse_like_the_reference_and_ours() {
        assert_eq!(parse_reference_id(" B0012GVT7O and more"), Some("B0012GVT7O"));
        assert_eq!(parse_reference_id("xB0012GVT7O"), None);
        assert_eq!(parse_reference_id("B0012GVT7"), None);
        let c = ["B0012GVT7O", "sku-1", "sku-12"];
        assert_eq!(match_candidate(" sku-12 is best", &c), Some("sku-12"));
        assert_eq!(match_candidate("B0012GVT7O.", &c), Some("B0012GVT7O"));
        assert_eq!(match_candidate("I pick B0012GVT7O.", &c), None);
        assert_eq!(match_candidate("nothing", &c), None);
        assert_eq!(match_candidate("sku-123", &c), None, "an id must end at a word boundary");
        assert_eq!(match_candidate("sku-1\nmore", &c), Some("sku-1"));
    }
}
