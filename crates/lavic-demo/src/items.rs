//! The demo catalog: product lines (one title each, brand-like words and the kind, never a
//! visual attribute), each with 4-5 visual variants that share the title ("visual twins": they
//! differ from the line's base look in one or two of main colour, secondary colour, pattern and
//! shape detail), their image framing (sizes and aspect ratios chosen so LLaVA-NeXT AnyRes gives
//! 3, 4 or 5 views), and a teacher description that names every visual attribute.

use serde::Serialize;

use crate::draw::Scene;
use crate::rng::Rng;
use crate::vocab::{article, Colour, Detail, Kind, Look, Pattern};

/// Which conversations may use an item: its product line belongs to exactly one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training conversations.
    Train,
    /// Validation conversations.
    Valid,
    /// Test conversations.
    Test,
}

impl Split {
    /// Every split, in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The split's name (and file stem).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// Image framing. The AnyRes view count follows from the size relative to the tile `t`
/// (pinpoints `t x 2t, 2t x t, 2t x 2t, 3t x t, t x 3t`, as LLaVA-NeXT's scaled down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shot {
    /// Smaller than a tile on both sides: 3 views.
    Small,
    /// Near-square, larger than a tile: 5 views.
    Square,
    /// About 2:1, at most a tile high: 3 views.
    Wide,
    /// About 3:1, at least a tile high: 4 views.
    Panorama,
    /// About 1:3, at least a tile wide: 4 views.
    Tall,
}

impl Shot {
    /// AnyRes views (base view + tiles) this framing is built to give.
    pub fn views(self) -> usize {
        match self {
            Shot::Small | Shot::Wide => 3,
            Shot::Panorama | Shot::Tall => 4,
            Shot::Square => 5,
        }
    }

    /// A shot drawn with the world's mix: square 40 %, the others 15 % each.
    fn draw(rng: &mut Rng) -> Shot {
        match rng.below(20) {
            0..=7 => Shot::Square,
            8..=10 => Shot::Small,
            11..=13 => Shot::Wide,
            14..=16 => Shot::Panorama,
            _ => Shot::Tall,
        }
    }

    /// Width and height in pixels for tile `t`.
    fn size(self, t: f64, rng: &mut Rng) -> (u32, u32) {
        let (w, h) = match self {
            Shot::Small => (rng.range_f(0.55, 0.95) * t, rng.range_f(0.55, 0.95) * t),
            Shot::Square => {
                // Both sides over 1.08 t, neither over 2.13 t.
                let h = rng.range_f(1.2, 1.9) * t;
                (h * rng.range_f(0.9, 1.12), h)
            }
            Shot::Wide => {
                let h = rng.range_f(0.6, 0.98) * t;
                (h * rng.range_f(1.6, 2.0), h)
            }
            Shot::Panorama => {
                let h = rng.range_f(1.02, 1.4) * t;
                (h * rng.range_f(2.75, 3.2), h)
            }
            Shot::Tall => {
                let w = rng.range_f(1.02, 1.4) * t;
                (w, w * rng.range_f(2.75, 3.2))
            }
        };
        (w.floor() as u32, h.floor() as u32)
    }
}

/// One catalog item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// ASIN-shaped id (`BDEMO` + 5 digits), so even the reference's id regex parses it.
    pub id: String,
    /// The product line's title (shared by the line's visual twins).
    pub title: String,
    /// Index of the product line in [`Catalog::lines`].
    pub line: usize,
    /// The split whose conversations use this item.
    pub split: Split,
    /// What the image shows.
    pub look: Look,
    /// Framing (and so the AnyRes view count).
    pub shot: Shot,
    /// Everything needed to draw the image.
    pub scene: Scene,
    /// The teacher description (names every visual attribute).
    pub description: String,
}

/// A product line: one title, several visual variants.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Kind of every variant.
    pub kind: Kind,
    /// The title.
    pub title: String,
    /// Split of the line (and of its items).
    pub split: Split,
    /// Indices of its items in [`Catalog::items`].
    pub items: Vec<usize>,
}

/// All items, grouped in product lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// Items in id order.
    pub items: Vec<Item>,
    /// Product lines.
    pub lines: Vec<Line>,
}

/// Catalog size settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogConfig {
    /// Product lines per kind (at least `valid_lines + test_lines + 1`).
    pub lines_per_kind: usize,
    /// Lines per kind whose items only valid conversations use.
    pub valid_lines: usize,
    /// Lines per kind whose items only test conversations use.
    pub test_lines: usize,
    /// The vision tower's tile (image size) the framing is planned for.
    pub tile: u32,
}

pub(crate) const BRANDS: &[&str] = &[
    "Norvik", "Aldmere", "Kestrel", "Halden", "Marlow", "Quillon", "Tavira", "Brennick", "Solvang", "Oakhurst", "Vantor", "Linnea",
    "Corvell", "Ashby", "Dunmore", "Elstree", "Fenwick", "Gorrie", "Hollis", "Ivarra", "Jarrow", "Kelda", "Lorimer", "Maddox", "Nesbit",
    "Orrin", "Pellham", "Rothley", "Selkirk", "Tamsin",
];
const LINE_WORDS: &[&str] = &[
    "Harbor", "Summit", "Atlas", "Nova", "Meridian", "Voyager", "Heritage", "Metro", "Cascade", "Horizon", "Pioneer", "Anchor", "Studio",
    "Nomad", "Haven", "Keystone", "Legacy", "Mosaic", "Orbit", "Prairie", "Quest", "Ridge", "Sonata", "Tempo", "Union", "Vista", "Willow",
    "Zenith", "Aurora", "Beacon",
];

fn size_suffix(kind: Kind, rng: &mut Rng) -> &'static str {
    let options: &[&str] = match kind {
        Kind::Bag => &["", ", 18 L", ", 24 L", ", Unisex"],
        Kind::Mug => &["", ", 12 oz", ", 16 oz", ", Set of 1"],
        Kind::Shirt => &["", ", Regular Fit", ", Unisex", ", Relaxed Fit"],
        Kind::Lamp => &["", ", E27", ", 40 cm", ", Dimmable"],
        Kind::Hat => &["", ", One Size", ", Adjustable", ", Unisex"],
        Kind::Vase => &["", ", 25 cm", ", 10 inch", ", Handmade"],
    };
    rng.pick(options)
}

fn make_title(kind: Kind, rng: &mut Rng) -> String {
    let (brand, word, noun) = (rng.pick(BRANDS), rng.pick(LINE_WORDS), rng.pick(kind.title_nouns()));
    let suffix = size_suffix(kind, rng);
    match rng.below(3) {
        0 => format!("{brand} {word} {noun}{suffix}"),
        1 => format!("{brand} {noun} - {word} Series{suffix}"),
        _ => format!("{word} {noun} by {brand}{suffix}"),
    }
}

fn random_look(kind: Kind, rng: &mut Rng) -> Look {
    let main = rng.pick(&Colour::ALL);
    let secondary = loop {
        let c = rng.pick(&Colour::ALL);
        if c != main {
            break c;
        }
    };
    Look { kind, main, secondary, pattern: rng.pick(&Pattern::ALL), detail: rng.pick(kind.details()) }
}

/// The base look with one or two attributes changed (main != secondary kept).
fn mutate(base: &Look, rng: &mut Rng) -> Look {
    let mut l = *base;
    let changes = 1 + rng.below(2);
    let mut which = [0usize, 1, 2, 3];
    rng.shuffle(&mut which);
    for w in &which[..changes] {
        match w {
            0 => l.main = rng.pick(&Colour::ALL),
            1 => l.secondary = rng.pick(&Colour::ALL),
            2 => l.pattern = rng.pick(&Pattern::ALL),
            _ => l.detail = rng.pick(l.kind.details()),
        }
    }
    l
}

/// The secondary-coloured part as a phrase: "a red strap", "red handles", "a red collar".
pub fn coloured_trim(detail: Detail, colour: Colour) -> String {
    let trim = detail.trim();
    if trim.ends_with('s') {
        format!("{} {trim}", colour.word())
    } else {
        format!("{} {} {trim}", article(colour.word()), colour.word())
    }
}

fn pattern_description(look: &Look) -> String {
    let s = look.secondary.word();
    match look.pattern {
        Pattern::Solid => "a plain solid finish".to_string(),
        Pattern::Stripes => format!("{s} stripes"),
        Pattern::Dots => format!("{s} polka dots"),
        Pattern::Checks => format!("{} {s} check pattern", article(s)),
    }
}

fn capitalised(s: String) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

/// The teacher description: names the kind, both colours, the pattern and the detail.
pub fn describe(look: &Look, rng: &mut Rng) -> String {
    capitalised(describe_lower(look, rng))
}

fn describe_lower(look: &Look, rng: &mut Rng) -> String {
    let (m, kind) = (look.main.word(), look.kind.noun());
    let pattern = pattern_description(look);
    let detail = look.detail.phrases()[0];
    let trim = coloured_trim(look.detail, look.secondary);
    let a_m = article(m);
    if look.detail.trim_is_detail() {
        match rng.below(3) {
            0 => format!("{a_m} {m} {kind} with {pattern}. It has {trim}."),
            1 => format!("The {kind} is {m} with {pattern}, and it comes with {trim}."),
            _ => format!("Shown on a light background: {a_m} {m} {kind} with {pattern} and {trim}."),
        }
    } else {
        match rng.below(3) {
            0 => format!("{a_m} {m} {kind} with {pattern}. It has {detail} and {trim}."),
            1 => format!("The {kind} is {m} with {pattern}; it has {detail}, and the {} is {}.", look.detail.trim(), look.secondary.word()),
            _ => format!("Shown on a light background: {a_m} {m} {kind} with {pattern}, {detail} and {trim}."),
        }
    }
}

fn jitter(c: [u8; 3], rng: &mut Rng) -> [u8; 3] {
    c.map(|x| (x as i32 + rng.below(21) as i32 - 10).clamp(0, 255) as u8)
}

fn scene(look: Look, shot: Shot, tile: u32, rng: &mut Rng) -> Scene {
    let size = shot.size(tile as f64, rng);
    let short = size.0.min(size.1) as f64;
    let side = short * rng.range_f(0.78, 0.92);
    let (sx, sy) = (size.0 as f64 - side, size.1 as f64 - side);
    // Centred, moved by up to 30 % of the slack either way.
    let ox = sx / 2.0 + rng.range_f(-0.3, 0.3) * sx / 2.0;
    let oy = sy / 2.0 + rng.range_f(-0.3, 0.3) * sy / 2.0;
    Scene {
        look,
        size,
        background: 226 + rng.below(22) as u8,
        colours: [jitter(look.main.rgb(), rng), jitter(look.secondary.rgb(), rng)],
        object: (ox, oy, side),
        stripe_dir: rng.below(3) as u8,
    }
}

/// The looks of one line: a random base and distinct variants of it.
fn line_looks(kind: Kind, n: usize, rng: &mut Rng) -> Vec<Look> {
    let base = random_look(kind, rng);
    let mut looks = vec![base];
    while looks.len() < n {
        let l = mutate(&base, rng);
        if l.main != l.secondary && !looks.contains(&l) {
            looks.push(l);
        }
    }
    looks
}

/// Generates the catalog of `seed`.
pub fn generate(seed: u64, cfg: &CatalogConfig) -> Catalog {
    let mut rng = Rng::stream(seed, "catalog");
    let mut lines = Vec::new();
    let mut drafts = Vec::new();
    let mut titles = std::collections::BTreeSet::new();
    for kind in Kind::ALL {
        let mut order: Vec<usize> = (0..cfg.lines_per_kind).collect();
        rng.shuffle(&mut order);
        for (rank, _) in order.iter().enumerate() {
            let split = match rank {
                r if r < cfg.test_lines => Split::Test,
                r if r < cfg.test_lines + cfg.valid_lines => Split::Valid,
                _ => Split::Train,
            };
            let title = loop {
                let t = make_title(kind, &mut rng);
                if titles.insert(t.clone()) {
                    break t;
                }
            };
            let n = 4 + rng.below(2);
            for look in line_looks(kind, n, &mut rng) {
                let shot = Shot::draw(&mut rng);
                let scene = scene(look, shot, cfg.tile, &mut rng);
                let description = describe(&look, &mut rng);
                drafts.push((lines.len(), look, shot, scene, description));
            }
            lines.push(Line { kind, title, split, items: Vec::new() });
        }
    }
    // Ids from a shuffled numbering, so neither order nor id tells twins or splits apart.
    let mut numbers: Vec<usize> = (1..=drafts.len()).collect();
    rng.shuffle(&mut numbers);
    let mut items: Vec<Item> = drafts
        .into_iter()
        .zip(numbers)
        .map(|((line, look, shot, scene, description), n)| Item {
            id: format!("BDEMO{n:05}"),
            title: lines[line].title.clone(),
            line,
            split: lines[line].split,
            look,
            shot,
            scene,
            description,
        })
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    for (i, it) in items.iter().enumerate() {
        lines[it.line].items.push(i);
    }
    Catalog { items, lines }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::attribute_words;

    fn small() -> Catalog {
        generate(3, &CatalogConfig { lines_per_kind: 6, valid_lines: 1, test_lines: 1, tile: 64 })
    }

    #[test]
    fn titles_never_name_a_visual_attribute() {
        let banned = attribute_words();
        let mut rng = Rng::stream(9, "titles");
        let mut checked = 0;
        for kind in Kind::ALL {
            for _ in 0..300 {
                let t = make_title(kind, &mut rng);
                for w in t.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                    assert!(!banned.contains(&w.to_lowercase()), "title {t:?} names {w:?}");
                }
                assert!(t.to_lowercase().contains(kind.noun()), "{t}");
                checked += 1;
            }
        }
        for w in BRANDS.iter().chain(LINE_WORDS) {
            assert!(!banned.contains(&w.to_lowercase()), "{w}");
        }
        assert_eq!(checked, 1800);
    }

    #[test]
    fn descriptions_name_every_attribute() {
        let c = small();
        for it in &c.items {
            let d = &it.description;
            let l = &it.look;
            assert!(d.contains(l.kind.noun()) && d.contains(l.main.word()) && d.contains(l.secondary.word()), "{d}");
            let stem = match l.pattern {
                Pattern::Solid => "solid",
                Pattern::Stripes => "stripes",
                Pattern::Dots => "dots",
                Pattern::Checks => "check",
            };
            assert!(d.contains(stem), "{d}");
            assert!(d.contains(l.detail.phrases()[0]) || (l.detail.trim_is_detail() && d.contains(l.detail.trim())), "{d}");
            assert!(!d.contains(&it.title), "{d}");
            let all = crate::vocab::Named { kind: true, main: true, secondary: true, pattern: true, detail: true };
            assert_eq!(l.named_in(d), all, "{d}");
        }
    }

    #[test]
    fn lines_hold_distinct_visual_twins_with_one_title() {
        let c = small();
        assert_eq!(c.lines.len(), 36);
        for line in &c.lines {
            assert!((4..=5).contains(&line.items.len()));
            let looks: Vec<Look> = line.items.iter().map(|i| c.items[*i].look).collect();
            for (i, a) in looks.iter().enumerate() {
                assert_ne!(a.main, a.secondary);
                assert_eq!(a.kind, line.kind);
                assert!(!looks[i + 1..].contains(a), "duplicate look in {}", line.title);
            }
            assert!(line.items.iter().all(|i| c.items[*i].title == line.title && c.items[*i].split == line.split));
        }
        let per_split = |s: Split| c.lines.iter().filter(|l| l.split == s).count();
        assert_eq!((per_split(Split::Train), per_split(Split::Valid), per_split(Split::Test)), (24, 6, 6));
        let mut ids: Vec<&str> = c.items.iter().map(|i| i.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), c.items.len());
        assert!(ids.iter().all(|id| id.len() == 10 && id.starts_with("BDEMO")));
    }

    #[test]
    fn same_seed_same_catalog_other_seed_other_catalog() {
        assert_eq!(small(), small());
        let other = generate(4, &CatalogConfig { lines_per_kind: 6, valid_lines: 1, test_lines: 1, tile: 64 });
        assert_ne!(small().items[0].title, other.items[0].title);
    }
}
