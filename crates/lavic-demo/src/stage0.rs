//! Stage-0 training data for the base model (issue 15, item 2): per item, image-grounded
//! questions whose answers come from the generator's truth: the teacher description, what the
//! item is, its main and trim colours, its pattern, its shape detail, and a balanced yes/no
//! colour question. The base model learns to see from these (with full patch tokens, as LLaVA's
//! own pre-training does) before LaViC's stage 1 distils it into 5 tokens.

use serde::Serialize;

use crate::items::{Catalog, Split};
use crate::rng::Rng;
use crate::vocab::{article, Colour};

/// One question about one item's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Item id.
    pub id: String,
    /// The item's split (filter on it to keep valid/test items unseen).
    pub split: Split,
    /// Task name: describe, kind, main, trim, pattern, detail, yes_no.
    pub task: &'static str,
    /// The question.
    pub question: String,
    /// The expected answer.
    pub answer: String,
}

fn options(items: &[&str]) -> String {
    match items {
        [a, b] => format!("{a} or {b}"),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => String::new(),
    }
}

/// The samples of every item, in item order (stream `stage0` of the seed).
pub fn samples(seed: u64, catalog: &Catalog) -> Vec<Sample> {
    let mut rng = Rng::stream(seed, "stage0");
    let mut out = Vec::with_capacity(catalog.items.len() * 7);
    for it in &catalog.items {
        let l = it.look;
        let kind = l.kind.noun();
        let trim = l.detail.trim();
        let mut push = |task: &'static str, question: String, answer: String| {
            out.push(Sample { id: it.id.clone(), split: it.split, task, question, answer });
        };
        push("describe", "Describe the product in the image.".into(), it.description.clone());
        push("kind", "What kind of product is this?".into(), format!("{} {kind}", article(kind)));
        push("main", format!("What colour is the {kind}?"), l.main.word().into());
        let verb = if trim.ends_with('s') { "are" } else { "is" };
        push("trim", format!("What colour {verb} the {trim} of the {kind}?"), l.secondary.word().into());
        push("pattern", format!("Which pattern does the {kind} have: solid, stripes, dots or checks?"), l.pattern.word().into());
        let phrases: Vec<&str> = l.kind.details().iter().map(|d| d.phrases()[0]).collect();
        push("detail", format!("Which does the {kind} have: {}?", options(&phrases)), l.detail.phrases()[0].into());
        let (asked, yes) = if rng.chance(0.5) {
            (l.main, true)
        } else {
            let others: Vec<Colour> = Colour::ALL.into_iter().filter(|c| *c != l.main).collect();
            (rng.pick(&others), false)
        };
        push("yes_no", format!("Is the {kind} {}?", asked.word()), if yes { "yes" } else { "no" }.into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{generate, CatalogConfig};

    #[test]
    fn answers_follow_the_truth_and_yes_no_is_balanced() {
        let c = generate(2, &CatalogConfig { lines_per_kind: 6, valid_lines: 1, test_lines: 1, tile: 64 });
        let s = samples(2, &c);
        assert_eq!(s.len(), 7 * c.items.len());
        assert_eq!(s, samples(2, &c));
        let mut yes = 0;
        for (it, chunk) in c.items.iter().zip(s.chunks(7)) {
            let by = |t: &str| chunk.iter().find(|x| x.task == t).map(|x| x.answer.as_str()).unwrap_or_default();
            assert_eq!(by("main"), it.look.main.word());
            assert_eq!(by("trim"), it.look.secondary.word());
            assert_eq!(by("pattern"), it.look.pattern.word());
            assert_eq!(by("describe"), it.description);
            assert!(chunk.iter().find(|x| x.task == "detail").unwrap().question.contains(by("detail")));
            assert!(chunk.iter().all(|x| x.id == it.id && !x.question.contains(&it.title)));
            let q = &chunk.iter().find(|x| x.task == "yes_no").unwrap().question;
            assert_eq!(by("yes_no") == "yes", q.contains(&format!(" {}?", it.look.main.word())), "{q}");
            yes += (by("yes_no") == "yes") as usize;
        }
        let n = c.items.len();
        assert!(yes * 10 > n * 3 && yes * 10 < n * 7, "{yes} of {n}");
    }
}
