//! Stage-0 training data for the base model (issue 15, item 2): per item, image-grounded
//! questions whose answers come from the generator's truth: the teacher description, what the
//! item is, its main and trim colours, its pattern, its shape detail, and a balanced yes/no
//! colour question. The base model learns to see from these (with full patch tokens, as LLaVA's
//! own pre-training does) before LaViC's stage 1 distils it into 5 tokens.
//!
//! Each item also gets a `distill` line: LaViC's stage-1 prompt (the title, then the image) with
//! the teacher description as the answer, so the base has described images in the very prompt
//! that stage 1 distils (with its image as patch tokens; stage 1 replaces them by 5 CLS tokens).
//!
//! And, for train-split items only, `pick` questions over several images (multi-image
//! instruction data, as LLaVA-NeXT's interleaved data): "Which of these products is a red
//! striped bag?" followed by 10 candidates as `{id}: {title}` and an image each, the answer the
//! one id that fits. The listed ids are fresh random ones per question (`line_ids`), so that
//! the answer must be copied from the list and cannot be recalled from the item. A general skill of a vision-language model (refer to one of several images
//! by its label), learned here on item-side data: the questions are single generated phrases,
//! not the world's conversations, and valid/test items never appear in them.

use serde::Serialize;

use crate::dialogue::{candidates, choose_ask, noun_phrase};
use crate::items::{Catalog, Split};
use crate::rng::Rng;
use crate::vocab::{article, Attribute, Colour, Look};

/// The image marker of a multi-image question (the base tokenizer's `<image>` added token).
pub const IMAGE_MARKER: &str = "<image>";

/// LaViC's stage-1 prompt up to the title (lavic-model's `prompt::distillation_prompt`; tested
/// equal in `tests/world.rs`).
pub const DISTILL_HEAD: &str = "You are a helpful assistant.\nGiven an Amazon product's title and its image, please provide a detailed, visually grounded description of the product that would help someone decide whether to purchase it. Focus on the product's appearance, features, and any other visually informative aspects. Do not mention the product's title in your answer. This product's title is: ";

/// `pick` questions per train-split item.
pub const PICKS_PER_ITEM: usize = 2;

/// `copy` questions per train-split item.
pub const COPIES_PER_ITEM: usize = 4;

/// `quiz` lines per train-split item.
pub const QUIZZES_PER_ITEM: usize = 2;

/// Questions of a `quiz` line (fewer where fewer candidates have a look of their own).
pub const QUIZ_QUESTIONS: usize = 5;

/// A follow-up question of a `quiz` line, and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// The question (the prompt adds `\nAssistant:`).
    pub question: String,
    /// The listed id of the one candidate that fits.
    pub answer: String,
}

/// One question about one item's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Item id (of a `pick` or `copy` question: the item whose listed id is the answer).
    pub id: String,
    /// The item's split (filter on it to keep valid/test items unseen).
    pub split: Split,
    /// Task name: describe, kind, main, trim, pattern, detail, yes_no, distill, pick, copy.
    pub task: &'static str,
    /// The question. A one-image question is asked about `id`'s image; a `pick` question holds
    /// one [`IMAGE_MARKER`] per entry of `images`, in order.
    pub question: String,
    /// The expected answer (of a `pick` or `copy` question: the id listed for `id`, one of
    /// the question's fresh line ids, not the catalog's).
    pub answer: String,
    /// The images of a multi-image question, in order (empty: the one image of `id`, unless
    /// `text_only`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// A question without any image (`copy`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_only: bool,
    /// Of a `pick` question: the id each image is listed under, in the order of `images` (what
    /// `lavic train base --recite` teaches each image's tokens to recite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listed: Vec<String>,
    /// Of a `quiz` line: the follow-up questions about the same list, each answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<Turn>,
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
    let mut picks = Rng::stream(seed, "stage0-pick");
    let mut copies = Rng::stream(seed, "stage0-copy");
    let mut quizzes = Rng::stream(seed, "stage0-quiz");
    let train: Vec<usize> = (0..catalog.items.len()).filter(|i| catalog.items[*i].split == Split::Train).collect();
    let mut out = Vec::with_capacity(catalog.items.len() * (7 + PICKS_PER_ITEM));
    for (index, it) in catalog.items.iter().enumerate() {
        let l = it.look;
        let kind = l.kind.noun();
        let trim = l.detail.trim();
        let mut push = |task: &'static str, question: String, answer: String| {
            out.push(Sample { id: it.id.clone(), split: it.split, task, question, answer, images: Vec::new(), text_only: false, listed: Vec::new(), turns: Vec::new() });
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
        out.push(Sample {
            id: it.id.clone(),
            split: it.split,
            task: "distill",
            question: format!("{DISTILL_HEAD}{}\n{IMAGE_MARKER}\n", it.title),
            answer: it.description.clone(),
            images: vec![it.id.clone()],
            text_only: false,
            listed: Vec::new(),
            turns: Vec::new(),
        });
        if it.split == Split::Train {
            for _ in 0..PICKS_PER_ITEM {
                out.push(pick(catalog, &train, index, &mut picks));
            }
            for _ in 0..COPIES_PER_ITEM {
                out.push(copy(catalog, &train, index, &mut copies));
            }
            for _ in 0..QUIZZES_PER_ITEM {
                out.push(quiz(catalog, &train, index, &mut quizzes).0);
            }
        }
    }
    out
}

/// `n` distinct ASIN-shaped ids for the lines of one `pick` or `copy` question, drawn at random
/// (`BDEMO` + 5 digits from 10000 up, so never a catalog id of a world under 10,000 items). The
/// catalog's ids would be learnt: each train item is in dozens of questions, and a PyTorch side
/// check (docs/DEMO.md, "The copy problem") memorised "look or title -> id" and never copied an
/// unseen id. With fresh ids per question the only way to the answer is to copy it from the list.
fn line_ids(n: usize, rng: &mut Rng) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(n);
    while ids.len() < n {
        let id = format!("BDEMO{}", 10_000 + rng.below(90_000));
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// A `pick` question whose answer is item `gt`: attributes chosen as a seeker's are (until none of
/// its visual twins fits), the 10 candidates chosen as a conversation's (all from `pool`), listed
/// in LaViC's layout under fresh ids ([`line_ids`]); the answer is `gt`'s id in the list.
fn pick(catalog: &Catalog, pool: &[usize], gt: usize, rng: &mut Rng) -> Sample {
    let it = &catalog.items[gt];
    let twins: Vec<Look> = catalog.lines[it.line].items.iter().filter(|i| **i != gt).map(|i| catalog.items[*i].look).collect();
    let asked = choose_ask(&it.look, &twins, rng);
    let np = noun_phrase(&it.look, &asked, rng);
    let cands = candidates(catalog, pool, gt, &asked, rng);
    let ids = line_ids(cands.len(), rng);
    let mut question = format!("Which of these products is {np}?\n\nCandidates:\n");
    let mut answer = String::new();
    for (c, id) in cands.iter().zip(&ids) {
        question.push_str(&format!("{id}: {}\n{IMAGE_MARKER}\n", catalog.items[*c].title));
        if *c == gt {
            answer = id.clone();
        }
    }
    let images = cands.iter().map(|c| catalog.items[*c].id.clone()).collect();
    Sample { id: it.id.clone(), split: it.split, task: "pick", question, answer, images, text_only: false, listed: ids, turns: Vec::new() }
}

/// A `quiz` line: the 10 candidates of a `pick` question for `gt` listed first (`Candidates:`,
/// then `{id}: {title}` and an image each, under fresh ids), then up to [`QUIZ_QUESTIONS`]
/// questions about different candidates, each answered with its listed id: `gt` first (the
/// line's `question` ends with it), then others in `turns`. Each question's attributes are
/// chosen as a seeker's are, until no other listed item fits; a candidate that looks exactly
/// like another is never asked about. Several answered questions over one list give the copy
/// step several times the signal of a `pick` line for the same images (docs/DEMO.md, "The fourth
/// session": with five, the copy formed in a side check where one did not). Also returns each
/// question's asked attributes, in order.
fn quiz(catalog: &Catalog, pool: &[usize], gt: usize, rng: &mut Rng) -> (Sample, Vec<Vec<Attribute>>) {
    let it = &catalog.items[gt];
    let twins: Vec<Look> = catalog.lines[it.line].items.iter().filter(|i| **i != gt).map(|i| catalog.items[*i].look).collect();
    let asked = choose_ask(&it.look, &twins, rng);
    let cands = candidates(catalog, pool, gt, &asked, rng);
    let ids = line_ids(cands.len(), rng);
    let mut question = String::from("Candidates:\n");
    for (c, id) in cands.iter().zip(&ids) {
        question.push_str(&format!("{id}: {}\n{IMAGE_MARKER}\n", catalog.items[*c].title));
    }
    let looks: Vec<Look> = cands.iter().map(|c| catalog.items[*c].look).collect();
    let ask = |k: usize, asked: &[Attribute], rng: &mut Rng| {
        format!("Which of these products is {}?", noun_phrase(&looks[k], asked, rng))
    };
    let g = cands.iter().position(|c| *c == gt).unwrap_or_default();
    question.push_str(&ask(g, &asked, rng));
    let mut all_asked = vec![asked];
    let mut others: Vec<usize> = (0..cands.len()).filter(|&k| k != g && looks.iter().filter(|l| **l == looks[k]).count() == 1).collect();
    rng.shuffle(&mut others);
    let turns = others
        .into_iter()
        .take(QUIZ_QUESTIONS - 1)
        .map(|k| {
            let rest: Vec<Look> = (0..looks.len()).filter(|&j| j != k).map(|j| looks[j]).collect();
            let asked = choose_ask(&looks[k], &rest, rng);
            let turn = Turn { question: ask(k, &asked, rng), answer: ids[k].clone() };
            all_asked.push(asked);
            turn
        })
        .collect();
    let images = cands.iter().map(|c| catalog.items[*c].id.clone()).collect();
    (Sample { id: it.id.clone(), split: it.split, task: "quiz", question, answer: ids[g].clone(), images, text_only: false, listed: ids, turns }, all_asked)
}

/// A text-only `copy` question: 10 candidates as `{id}: {title}` lines under fresh ids
/// ([`line_ids`]; LaViC's layout without the images), the answer the id of the one whose title
/// is asked for (no other candidate has it). It teaches the decoder to find a line and copy its
/// id digit by digit, cheaply.
fn copy(catalog: &Catalog, pool: &[usize], gt: usize, rng: &mut Rng) -> Sample {
    let it = &catalog.items[gt];
    let mut others: Vec<usize> = pool.iter().copied().filter(|i| catalog.items[*i].title != it.title).collect();
    rng.shuffle(&mut others);
    let mut cands: Vec<usize> = others.into_iter().take(crate::dialogue::NUM_CANDIDATES - 1).collect();
    cands.push(gt);
    rng.shuffle(&mut cands);
    let ids = line_ids(cands.len(), rng);
    let mut question = format!("Which of these products is the {}?\n\nCandidates:\n", it.title);
    let mut answer = String::new();
    for (c, id) in cands.iter().zip(&ids) {
        question.push_str(&format!("{id}: {}\n", catalog.items[*c].title));
        if *c == gt {
            answer = id.clone();
        }
    }
    Sample { id: it.id.clone(), split: it.split, task: "copy", question, answer, images: Vec::new(), text_only: true, listed: Vec::new(), turns: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{generate, CatalogConfig};

    /// The distinct ids at the start of a question's candidate lines, in order.
    fn listed_ids(question: &str) -> Vec<String> {
        let ids: Vec<String> = question.lines().filter_map(|l| l.split_once(": ")).map(|(id, _)| id.to_string()).filter(|id| id.starts_with("BDEMO")).collect();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "{question}");
        ids
    }

    #[test]
    fn answers_follow_the_truth_and_yes_no_is_balanced() {
        let c = generate(2, &CatalogConfig { lines_per_kind: 6, valid_lines: 1, test_lines: 1, tile: 64 });
        let all = samples(2, &c);
        assert_eq!(all, samples(2, &c));
        let (quizzes, all): (Vec<Sample>, Vec<Sample>) = all.into_iter().partition(|x| x.task == "quiz");
        let (copies, all): (Vec<Sample>, Vec<Sample>) = all.into_iter().partition(|x| x.task == "copy");
        let (s, picks): (Vec<Sample>, Vec<Sample>) = all.into_iter().partition(|x| x.task != "pick");
        let (distill, s): (Vec<Sample>, Vec<Sample>) = s.into_iter().partition(|x| x.task == "distill");
        assert_eq!(distill.len(), c.items.len());
        for (d, it) in distill.iter().zip(&c.items) {
            assert_eq!((&d.id, &d.images, &d.answer), (&it.id, &vec![it.id.clone()], &it.description));
            assert!(d.question.starts_with(DISTILL_HEAD) && d.question.ends_with(&format!("{}\n{IMAGE_MARKER}\n", it.title)));
        }
        assert_eq!(s.len(), 7 * c.items.len());
        let train = c.items.iter().filter(|i| i.split == Split::Train).count();
        assert_eq!(picks.len(), PICKS_PER_ITEM * train);
        let by_id: std::collections::HashMap<&str, &crate::items::Item> = c.items.iter().map(|i| (i.id.as_str(), i)).collect();
        for p in &picks {
            // Ten train-split candidates, one marker each; the answer is a candidate, and no
            // other candidate of its kind and line fits the attributes the question names.
            assert_eq!(p.images.len(), 10, "{}", p.question);
            assert_eq!(p.question.matches(IMAGE_MARKER).count(), 10);
            assert!(p.images.contains(&p.id));
            // Listed under fresh ids, none a catalog id; the answer is the ground truth's.
            let listed = listed_ids(&p.question);
            assert_eq!(listed.len(), 10, "{}", p.question);
            // `listed` names each image's line id, in image order.
            assert_eq!(p.listed, listed);
            assert!(listed.iter().all(|i| !by_id.contains_key(i.as_str())), "{}", p.question);
            let k = p.images.iter().position(|i| *i == p.id).unwrap();
            assert_eq!(listed[k], p.answer);
            assert!(p.images.iter().all(|i| by_id[i.as_str()].split == Split::Train));
            let gt = by_id[p.id.as_str()];
            assert!(p.question.contains(gt.look.kind.noun()), "{}", p.question);
            for other in p.images.iter().filter(|i| **i != p.id).map(|i| by_id[i.as_str()]) {
                assert!(other.look != gt.look, "two candidates look the same: {}", p.question);
            }
        }
        assert_eq!(copies.len(), COPIES_PER_ITEM * train);
        for q in &copies {
            // Ten lines, no image; exactly one carries the asked title, and it is the answer's.
            let gt = by_id[q.id.as_str()];
            assert!(q.text_only && q.images.is_empty() && q.listed.is_empty() && !q.question.contains(IMAGE_MARKER));
            let lines: Vec<&str> = q.question.lines().filter(|l| l.starts_with("BDEMO")).collect();
            assert_eq!(lines.len(), 10, "{}", q.question);
            let listed = listed_ids(&q.question);
            assert!(listed.iter().all(|i| !by_id.contains_key(i.as_str())), "{}", q.question);
            let with_title: Vec<&&str> = lines.iter().filter(|l| l.ends_with(&format!(": {}", gt.title))).collect();
            assert_eq!(with_title, [&format!("{}: {}", q.answer, gt.title).as_str()], "{}", q.question);
            assert!(q.question.starts_with(&format!("Which of these products is the {}?", gt.title)));
        }
        assert_eq!(quizzes.len(), QUIZZES_PER_ITEM * train);
        let mut asked = 0;
        for q in &quizzes {
            // The list first (10 train-split candidates under fresh ids, `listed` in image order),
            // then the questions; the first is about the line's item.
            assert!(q.question.starts_with("Candidates:\n"), "{}", q.question);
            let listed = listed_ids(&q.question);
            assert_eq!((q.images.len(), &q.listed), (10, &listed));
            assert_eq!(q.question.matches(IMAGE_MARKER).count(), 10);
            assert!(listed.iter().all(|i| !by_id.contains_key(i.as_str())));
            assert!(q.images.iter().all(|i| by_id[i.as_str()].split == Split::Train));
            let tail = q.question.rsplit(IMAGE_MARKER).next().unwrap();
            assert!(tail.starts_with("\nWhich of these products is ") && tail.ends_with('?'), "{tail:?}");
            assert!(!q.turns.is_empty() && q.turns.len() < QUIZ_QUESTIONS, "{}", q.turns.len());
            let k = q.images.iter().position(|i| *i == q.id).unwrap();
            assert_eq!(listed[k], q.answer);
            let mut answers = vec![q.answer.clone()];
            asked += 1 + q.turns.len();
            answers.extend(q.turns.iter().map(|t| t.answer.clone()));
            let mut distinct = answers.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), answers.len(), "a candidate asked about twice");
        }
        assert!(asked >= quizzes.len() * 4, "{asked} questions in {} quizzes", quizzes.len());
        // Exactly the asked candidate fits each question's attributes (kind included), and each
        // question names its kind.
        let pool: Vec<usize> = (0..c.items.len()).filter(|i| c.items[*i].split == Split::Train).collect();
        let mut rng = Rng::stream(9, "test-quiz");
        for &gt in pool.iter().take(60) {
            let (q, asks) = quiz(&c, &pool, gt, &mut rng);
            assert_eq!(asks.len(), 1 + q.turns.len());
            let tail = q.question.rsplit(IMAGE_MARKER).next().unwrap().trim().to_string();
            let questions = std::iter::once(tail).chain(q.turns.iter().map(|t| t.question.clone()));
            let answers = std::iter::once(&q.answer).chain(q.turns.iter().map(|t| &t.answer));
            for ((question, answer), asked) in questions.zip(answers).zip(&asks) {
                let k = q.listed.iter().position(|id| id == answer).unwrap();
                let target = by_id[q.images[k].as_str()].look;
                assert!(question.contains(target.kind.noun()), "{question}");
                let fits: Vec<usize> = (0..10).filter(|&j| target.satisfies(&by_id[q.images[j].as_str()].look, asked)).collect();
                assert_eq!(fits, [k], "{question} ({asked:?}) in {}", q.question);
            }
        }
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
