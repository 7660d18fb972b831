//! Conversations in the Reddit-Amazon shape: a seeker's `<submission>` asking for a kind with
//! some visual attributes (varied wording; the test split also uses sentence templates that
//! training never sees), `<comment>` turns from others that add noise (and, sometimes, the
//! seeker's own follow-up naming one more attribute), and 10 candidates: the ground truth, all its
//! visual twins (same title, different image), other items of the same kind that miss an asked
//! attribute, and items of other kinds. Exactly one candidate satisfies the request.

use crate::items::{coloured_trim, Catalog, Split, BRANDS};
use crate::rng::Rng;
use crate::vocab::{article, Attribute, Colour, Look, Pattern};

/// Candidates per conversation (as the Reddit-Amazon files).
pub const NUM_CANDIDATES: usize = 10;

/// A seeker's opening sentence. Slots: `{np}` (noun phrase with article: "a red striped bag with
/// a strap"), `{kind}`, `{req}` (predicate list: "red, striped and with a strap"), `{occasion}`,
/// `{relative}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// Stable id (`s..` shared, `h..` held out of training and validation).
    pub id: &'static str,
    /// The text with slots.
    pub text: &'static str,
}

impl Template {
    /// Whether only the test split uses it.
    pub fn held_out(&self) -> bool {
        self.id.starts_with('h')
    }

    /// Its longest fixed fragment (the text between slots), to find it in a context.
    pub fn marker(&self) -> &'static str {
        self.text.split(['{', '}']).step_by(2).max_by_key(|s| s.len()).unwrap_or("")
    }
}

/// Every submission template.
pub const TEMPLATES: &[Template] = &[
    Template { id: "s01", text: "Looking for {np} for {occasion}. Any recommendations?" },
    Template { id: "s02", text: "Can anyone recommend {np}? I need it for {occasion}." },
    Template { id: "s03", text: "I need a new {kind} for {occasion}. Ideally {req}." },
    Template { id: "s04", text: "Help me find {np}, please!" },
    Template { id: "s05", text: "What's a good place to buy {np}? Budget is flexible." },
    Template { id: "s06", text: "Searching for a {kind}: {req}. Suggestions welcome." },
    Template { id: "s07", text: "My old {kind} broke. This time I'd like {np}." },
    Template { id: "s08", text: "Gift idea wanted: {np} for my {relative}." },
    Template { id: "s09", text: "Is there a {kind} out there that is {req}? It's for {occasion}." },
    Template { id: "s10", text: "I'm after {np}, nothing fancy." },
    Template { id: "s11", text: "Recommend me a {kind}. It must be {req}." },
    Template { id: "s12", text: "Does anyone know where to get {np}?" },
    Template { id: "s13", text: "[Request] Hunting for {np} for {occasion}" },
    Template { id: "s14", text: "Which {kind} should I buy? I want one that is {req}." },
    Template { id: "h01", text: "Quick question: which {kind} would you pick if you wanted it {req}?" },
    Template { id: "h02", text: "For {occasion} I want something specific: {np}. Thoughts?" },
    Template { id: "h03", text: "Shopping for my {relative}, who asked for a {kind} that is {req}." },
    Template { id: "h04", text: "Is there {np} that doesn't cost a fortune?" },
    Template { id: "h05", text: "I keep seeing boring ones, but what I really want is {np}." },
    Template { id: "h06", text: "Hoping to track down {np}; it is for {occasion}." },
];

const OCCASIONS: &[&str] = &[
    "work",
    "commuting",
    "the office",
    "a weekend trip",
    "my new flat",
    "college",
    "the beach",
    "everyday use",
    "the holidays",
    "a birthday",
];
const RELATIVES: &[&str] = &["sister", "brother", "dad", "mum", "partner", "best friend", "grandmother", "roommate"];

/// Comments from others that carry no visual attribute. Slots: `{kind}`, `{brand}`, `{relative}`.
pub const NOISE: &[&str] = &[
    "Following, I need one too.",
    "I got mine from {brand} years ago and it's still going strong.",
    "Watch for the sales this weekend, lots of {kind}s are discounted.",
    "Honestly, just get whatever fits your budget.",
    "What's your budget?",
    "My {relative} has one from {brand}, no complaints.",
    "Second this question, I've been looking as well.",
    "Avoid the cheap ones, they fall apart fast.",
    "Is {brand} any good? Never tried them.",
];

/// The seeker's follow-up naming one more attribute. Slot: `{pred}`.
const FOLLOW_UPS: &[&str] =
    &["Edit: forgot to say, it should be {pred}.", "OP here - it also needs to be {pred}.", "Thanks all! One more thing: {pred} please."];

/// Conversation settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DialogueConfig {
    /// Share of test conversations that use a held-out template.
    pub held_out_share: f64,
    /// Probability that one asked attribute comes in a later seeker comment.
    pub follow_up: f64,
    /// Probability of a comment suggesting a colour or pattern the seeker did not ask for.
    pub distracting_comment: f64,
}

/// One generated conversation and what it was built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Its split.
    pub split: Split,
    /// `<submission>..</submission>\n<comment>..</comment>\n...`
    pub context: String,
    /// The recommending comment (the reference's `gt` field; never shown to a model).
    pub gt: String,
    /// Ground-truth item (index into the catalog's items).
    pub gt_item: usize,
    /// `candidates_st` (item indices), the ground truth among them.
    pub candidates_st: Vec<usize>,
    /// `candidates_gpt_large`: the same items in another order.
    pub candidates_gpt_large: Vec<usize>,
    /// The submission template.
    pub template: Template,
    /// Attributes the seeker asked for (submission and follow-up together), canonical order.
    pub asked: Vec<Attribute>,
    /// The attribute that came in a follow-up comment, if any.
    pub follow_up: Option<Attribute>,
    /// Whether a comment suggested another colour or pattern.
    pub distracting: bool,
}

fn normalise(asked: &mut Vec<Attribute>, gt: &Look) {
    // "with a blue strap" names the detail too: ask for it.
    if asked.contains(&Attribute::Secondary) && gt.detail.trim_is_detail() && !asked.contains(&Attribute::Detail) {
        asked.push(Attribute::Detail);
    }
    asked.sort();
    asked.dedup();
}

/// Attributes to ask so that no twin satisfies the request.
pub(crate) fn choose_ask(gt: &Look, twins: &[Look], rng: &mut Rng) -> Vec<Attribute> {
    let mut order = Attribute::ALL;
    rng.shuffle(&mut order);
    let k = match rng.below(20) {
        0..=6 => 1,
        7..=15 => 2,
        _ => 3,
    };
    let mut asked = order[..k].to_vec();
    normalise(&mut asked, gt);
    while let Some(t) = twins.iter().find(|t| gt.satisfies(t, &asked)) {
        let differing: Vec<Attribute> = Attribute::ALL.into_iter().filter(|a| !gt.same(t, *a)).collect();
        asked.push(rng.pick(&differing));
        normalise(&mut asked, gt);
    }
    asked
}

fn join(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "with a strap", "with a blue strap", "with long sleeves and a blue collar".
fn with_phrase(gt: &Look, asked: &[Attribute], rng: &mut Rng) -> Option<String> {
    let (d, s) = (asked.contains(&Attribute::Detail), asked.contains(&Attribute::Secondary));
    let trim = coloured_trim(gt.detail, gt.secondary);
    match (d, s) {
        (true, true) if gt.detail.trim_is_detail() => Some(format!("with {trim}")),
        (true, true) => Some(format!("with {} and {trim}", rng.pick(gt.detail.phrases()))),
        (true, false) => Some(format!("with {}", rng.pick(gt.detail.phrases()))),
        (false, true) => Some(format!("with {trim}")),
        (false, false) => None,
    }
}

/// The noun phrase with its article.
pub(crate) fn noun_phrase(gt: &Look, asked: &[Attribute], rng: &mut Rng) -> String {
    let mut words = Vec::new();
    if asked.contains(&Attribute::Main) {
        words.push(gt.main.word().to_string());
    }
    if asked.contains(&Attribute::Pattern) {
        words.push(rng.pick(gt.pattern.adjectives()).to_string());
    }
    words.push(gt.kind.noun().to_string());
    if let Some(w) = with_phrase(gt, asked, rng) {
        words.push(w);
    }
    format!("{} {}", article(&words[0]), words.join(" "))
}

/// One predicate per asked attribute (detail and trim merged as in the noun phrase).
fn predicates(gt: &Look, asked: &[Attribute], rng: &mut Rng) -> Vec<String> {
    let mut p = Vec::new();
    if asked.contains(&Attribute::Main) {
        let c = gt.main.word();
        p.push(match rng.below(3) {
            0 => c.to_string(),
            1 => format!("in {c}"),
            _ => format!("{c} in colour"),
        });
    }
    if asked.contains(&Attribute::Pattern) {
        p.push(rng.pick(gt.pattern.predicates()).to_string());
    }
    p.extend(with_phrase(gt, asked, rng));
    p
}

fn fill(text: &str, slots: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (k, v) in slots {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn distracting_comment(gt: &Look, rng: &mut Rng) -> String {
    if rng.chance(0.5) {
        let others: Vec<Colour> = Colour::ALL.into_iter().filter(|c| *c != gt.main).collect();
        format!("Have you considered {}? It goes with everything.", rng.pick(&others).word())
    } else {
        let others: Vec<Pattern> = Pattern::ALL.into_iter().filter(|p| *p != gt.pattern).collect();
        format!("I'd go for something {} instead, but that's just me.", rng.pick(&others).adjectives()[0])
    }
}

/// The seeker's submission and the candidate list for one ground truth.
struct Draft {
    template: Template,
    asked: Vec<Attribute>,
    follow_up: Option<Attribute>,
    submission: String,
    follow_up_text: Option<String>,
}

fn draft(gt: &Look, twins: &[Look], split: Split, cfg: &DialogueConfig, rng: &mut Rng) -> Draft {
    let asked = choose_ask(gt, twins, rng);
    let held_out = split == Split::Test && rng.chance(cfg.held_out_share);
    let pool: Vec<Template> = TEMPLATES.iter().copied().filter(|t| t.held_out() == held_out).collect();
    let template = rng.pick(&pool);
    // A follow-up carries one attribute the submission leaves out (never the detail when the
    // trim phrase names it, so each part stays a whole phrase).
    let movable: Vec<Attribute> = asked
        .iter()
        .copied()
        .filter(|a| {
            *a == Attribute::Main || *a == Attribute::Pattern || (*a == Attribute::Detail && !asked.contains(&Attribute::Secondary))
        })
        .collect();
    let follow_up = (asked.len() >= 2 && !movable.is_empty() && rng.chance(cfg.follow_up)).then(|| rng.pick(&movable));
    let in_submission: Vec<Attribute> = asked.iter().copied().filter(|a| Some(*a) != follow_up).collect();
    let np = noun_phrase(gt, &in_submission, rng);
    let req = join(&predicates(gt, &in_submission, rng));
    let submission = fill(
        template.text,
        &[("np", &np), ("kind", gt.kind.noun()), ("req", &req), ("occasion", rng.pick(OCCASIONS)), ("relative", rng.pick(RELATIVES))],
    );
    let follow_up_text = follow_up.map(|a| {
        let pred = predicates(gt, &[a], rng).join(" ");
        fill(rng.pick(FOLLOW_UPS), &[("pred", &pred)])
    });
    Draft { template, asked, follow_up, submission, follow_up_text }
}

/// Ten candidates: the ground truth, its twins, same-kind items missing an asked attribute, and
/// other kinds; all from `pool` (the split's items). None but the ground truth satisfies `asked`.
pub(crate) fn candidates(catalog: &Catalog, pool: &[usize], gt: usize, asked: &[Attribute], rng: &mut Rng) -> Vec<usize> {
    let g = &catalog.items[gt];
    let mut out: Vec<usize> = catalog.lines[g.line].items.clone();
    let mut same: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|i| catalog.items[*i].line != g.line && catalog.items[*i].look.kind == g.look.kind)
        .filter(|i| !g.look.satisfies(&catalog.items[*i].look, asked))
        .collect();
    rng.shuffle(&mut same);
    out.extend(same.into_iter().take(1 + rng.below(2)));
    let mut others: Vec<usize> = pool.iter().copied().filter(|i| catalog.items[*i].look.kind != g.look.kind).collect();
    rng.shuffle(&mut others);
    out.extend(others.into_iter().take(NUM_CANDIDATES.saturating_sub(out.len())));
    out.truncate(NUM_CANDIDATES);
    rng.shuffle(&mut out);
    out
}

/// Generates `count` conversations of `split` (its items only), from the stream `split`.
pub fn conversations(seed: u64, catalog: &Catalog, split: Split, count: usize, cfg: &DialogueConfig) -> Vec<Conversation> {
    let mut rng = Rng::stream(seed, split.name());
    let pool: Vec<usize> = (0..catalog.items.len()).filter(|i| catalog.items[*i].split == split).collect();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let gt = rng.pick(&pool);
        let item = &catalog.items[gt];
        let look = item.look;
        let twins: Vec<Look> = catalog.lines[item.line].items.iter().filter(|i| **i != gt).map(|i| catalog.items[*i].look).collect();
        let d = draft(&look, &twins, split, cfg, &mut rng);
        let st = candidates(catalog, &pool, gt, &d.asked, &mut rng);
        let mut gpt = st.clone();
        rng.shuffle(&mut gpt);
        let mut comments: Vec<String> = (0..rng.below(4))
            .map(|_| {
                let brand = rng.pick(BRANDS);
                fill(rng.pick(NOISE), &[("kind", look.kind.noun()), ("brand", brand), ("relative", rng.pick(RELATIVES))])
            })
            .collect();
        let distracting = rng.chance(cfg.distracting_comment);
        if distracting {
            let at = rng.below(comments.len() + 1);
            comments.insert(at, distracting_comment(&look, &mut rng));
        }
        if let Some(f) = d.follow_up_text {
            let at = rng.below(comments.len() + 1);
            comments.insert(at, f);
        }
        let mut context = format!("<submission>{}</submission>\n", d.submission);
        for c in &comments {
            context.push_str(&format!("<comment>{c}</comment>\n"));
        }
        let gt_text = format!("You want the {}, the {} one.", item.title, look.main.word());
        out.push(Conversation {
            split,
            context,
            gt: gt_text,
            gt_item: gt,
            candidates_st: st,
            candidates_gpt_large: gpt,
            template: d.template,
            asked: d.asked,
            follow_up: d.follow_up,
            distracting,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{generate, CatalogConfig};
    use crate::vocab::attribute_words;

    const CFG: DialogueConfig = DialogueConfig { held_out_share: 0.5, follow_up: 0.3, distracting_comment: 0.15 };

    fn catalog() -> Catalog {
        generate(5, &CatalogConfig { lines_per_kind: 6, valid_lines: 1, test_lines: 1, tile: 64 })
    }

    #[test]
    fn exactly_the_ground_truth_satisfies_the_request_and_twins_are_candidates() {
        let c = catalog();
        for split in Split::ALL {
            for conv in conversations(5, &c, split, 150, &CFG) {
                let g = &c.items[conv.gt_item];
                assert_eq!(conv.candidates_st.len(), NUM_CANDIDATES);
                let mut sorted = conv.candidates_st.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), NUM_CANDIDATES, "duplicate candidate");
                let mut gpt = conv.candidates_gpt_large.clone();
                gpt.sort();
                assert_eq!(gpt, sorted);
                let hits: Vec<usize> =
                    conv.candidates_st.iter().copied().filter(|i| g.look.satisfies(&c.items[*i].look, &conv.asked)).collect();
                assert_eq!(hits, [conv.gt_item], "{}", conv.context);
                let twins = conv.candidates_st.iter().filter(|i| c.items[**i].title == g.title).count();
                assert!(twins >= 4, "only {twins} items share the ground truth's title");
                assert!(conv.candidates_st.iter().all(|i| c.items[*i].split == split));
                assert!(!conv.asked.is_empty());
            }
        }
    }

    #[test]
    fn the_context_names_each_asked_attribute_and_has_the_reddit_shape() {
        let c = catalog();
        for conv in conversations(5, &c, Split::Train, 200, &CFG) {
            let g = c.items[conv.gt_item].look;
            let ctx = &conv.context;
            assert!(ctx.starts_with("<submission>") && ctx.ends_with("\n"), "{ctx}");
            let turns = ctx.matches("<comment>").count();
            assert_eq!(turns, ctx.matches("</comment>\n").count());
            assert!(ctx.contains(g.kind.noun()));
            // The seeker's own turns (submission + follow-up) name the asked values.
            let seeker: String = match conv.follow_up {
                Some(_) => ctx.clone(),
                None => ctx.split("</submission>").next().unwrap().to_string(),
            };
            for a in &conv.asked {
                let named = match a {
                    Attribute::Main => seeker.contains(g.main.word()),
                    Attribute::Secondary => seeker.contains(&coloured_trim(g.detail, g.secondary)),
                    Attribute::Pattern => g.pattern.predicates().iter().chain(g.pattern.adjectives()).any(|p| seeker.contains(p)),
                    Attribute::Detail => g.detail.phrases().iter().any(|p| seeker.contains(p)) || seeker.contains(g.detail.trim()),
                };
                assert!(named, "{a:?} not named in {ctx}");
            }
        }
    }

    #[test]
    fn noise_carries_no_attribute_and_templates_are_distinct() {
        let banned = attribute_words();
        for t in NOISE.iter().chain(TEMPLATES.iter().map(|t| &t.text)).chain(OCCASIONS).chain(RELATIVES) {
            for w in t.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                assert!(!banned.contains(&w.to_lowercase()), "{t:?} names {w:?}");
            }
        }
        for (i, a) in TEMPLATES.iter().enumerate() {
            assert!(a.marker().len() >= 12, "{}: marker {:?} too short", a.id, a.marker());
            for b in &TEMPLATES[i + 1..] {
                assert!(!b.text.contains(a.marker()) && !a.text.contains(b.marker()), "{} / {}", a.id, b.id);
            }
        }
        assert_eq!(TEMPLATES.iter().filter(|t| t.held_out()).count(), 6);
    }

    #[test]
    fn held_out_templates_appear_only_in_test() {
        let c = catalog();
        let train = conversations(5, &c, Split::Train, 300, &CFG);
        let valid = conversations(5, &c, Split::Valid, 100, &CFG);
        let test = conversations(5, &c, Split::Test, 100, &CFG);
        assert!(train.iter().chain(&valid).all(|c| !c.template.held_out()));
        let held = test.iter().filter(|c| c.template.held_out()).count();
        assert!((30..=70).contains(&held), "{held} of 100 test conversations use a held-out template");
        for t in TEMPLATES.iter().filter(|t| t.held_out()) {
            assert!(train.iter().chain(&valid).all(|c| !c.context.contains(t.marker())), "{}", t.id);
        }
        assert!(test.iter().any(|c| c.follow_up.is_some()) && train.iter().any(|c| c.distracting));
    }
}
