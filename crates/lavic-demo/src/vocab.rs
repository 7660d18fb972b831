//! The demo world's visual vocabulary: product kinds, colours, patterns and per-kind shape details,
//! with every word a seeker, a commenter or a teacher description may use for them. Titles draw
//! their words from separate lists (brands, line names, kind nouns) that share no word with this
//! vocabulary (tested in `items.rs`).

use serde::{Deserialize, Serialize};

/// A product kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A bag (strap or handles).
    Bag,
    /// A mug (handle or lid).
    Mug,
    /// A shirt (short or long sleeves).
    Shirt,
    /// A table lamp (round or cone-shaped shade).
    Lamp,
    /// A hat (wide brim, visor or pom-pom).
    Hat,
    /// A vase (with or without handles).
    Vase,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [Kind::Bag, Kind::Mug, Kind::Shirt, Kind::Lamp, Kind::Hat, Kind::Vase];

    /// The plain noun ("bag").
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Bag => "bag",
            Kind::Mug => "mug",
            Kind::Shirt => "shirt",
            Kind::Lamp => "lamp",
            Kind::Hat => "hat",
            Kind::Vase => "vase",
        }
    }

    /// The shape details this kind comes with.
    pub fn details(self) -> &'static [Detail] {
        match self {
            Kind::Bag => &[Detail::Strap, Detail::Handles],
            Kind::Mug => &[Detail::Handle, Detail::Lid],
            Kind::Shirt => &[Detail::ShortSleeves, Detail::LongSleeves],
            Kind::Lamp => &[Detail::RoundShade, Detail::ConeShade],
            Kind::Hat => &[Detail::WideBrim, Detail::Visor, Detail::PomPom],
            Kind::Vase => &[Detail::SideHandles, Detail::NoHandles],
        }
    }

    /// Nouns a title may use for the kind (none implies a detail: no "tote", "tee", "travel mug").
    pub fn title_nouns(self) -> &'static [&'static str] {
        match self {
            Kind::Bag => &["Bag", "Carry Bag", "Everyday Bag", "Utility Bag"],
            Kind::Mug => &["Mug", "Coffee Mug", "Tea Mug", "Ceramic Mug"],
            Kind::Shirt => &["Shirt", "Cotton Shirt", "Casual Shirt", "Classic Shirt"],
            Kind::Lamp => &["Lamp", "Table Lamp", "Desk Lamp", "Bedside Lamp"],
            Kind::Hat => &["Hat", "Everyday Hat", "Outdoor Hat", "Summer Hat"],
            Kind::Vase => &["Vase", "Ceramic Vase", "Flower Vase", "Table Vase"],
        }
    }
}

/// A colour (main body or secondary: pattern and trim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Red.
    Red,
    /// Orange.
    Orange,
    /// Yellow.
    Yellow,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Purple.
    Purple,
    /// Pink.
    Pink,
    /// Brown.
    Brown,
    /// Black.
    Black,
    /// White.
    White,
}

impl Colour {
    /// Every colour, in a fixed order.
    pub const ALL: [Colour; 10] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
        Colour::Brown,
        Colour::Black,
        Colour::White,
    ];

    /// The colour's word.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::Brown => "brown",
            Colour::Black => "black",
            Colour::White => "white",
        }
    }

    /// Nominal sRGB value (items jitter around it).
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [205, 35, 40],
            Colour::Orange => [242, 133, 25],
            Colour::Yellow => [246, 212, 45],
            Colour::Green => [40, 150, 65],
            Colour::Blue => [35, 85, 205],
            Colour::Purple => [125, 50, 165],
            Colour::Pink => [242, 135, 185],
            Colour::Brown => [120, 74, 38],
            Colour::Black => [28, 28, 30],
            Colour::White => [252, 252, 250],
        }
    }
}

/// The body's surface pattern (drawn in the secondary colour over the main one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// One colour.
    Solid,
    /// Stripes (horizontal, vertical or diagonal).
    Stripes,
    /// Polka dots.
    Dots,
    /// A checkerboard.
    Checks,
}

impl Pattern {
    /// Every pattern, in a fixed order.
    pub const ALL: [Pattern; 4] = [Pattern::Solid, Pattern::Stripes, Pattern::Dots, Pattern::Checks];

    /// The pattern's name.
    pub fn word(self) -> &'static str {
        match self {
            Pattern::Solid => "solid",
            Pattern::Stripes => "stripes",
            Pattern::Dots => "dots",
            Pattern::Checks => "checks",
        }
    }

    /// Ways a seeker describes an item with this pattern, as a predicate after "it should be" or
    /// "with" (each names the pattern).
    pub fn predicates(self) -> &'static [&'static str] {
        match self {
            Pattern::Solid => &["plain", "a solid colour", "without any pattern"],
            Pattern::Stripes => &["striped", "with stripes", "stripy"],
            Pattern::Dots => &["polka-dotted", "with dots", "dotted"],
            Pattern::Checks => &["checked", "with a check pattern", "checkered"],
        }
    }

    /// Adjectives before the noun ("a striped bag").
    pub fn adjectives(self) -> &'static [&'static str] {
        match self {
            Pattern::Solid => &["plain", "solid-colour"],
            Pattern::Stripes => &["striped", "stripy"],
            Pattern::Dots => &["polka-dot", "dotted"],
            Pattern::Checks => &["checked", "checkered"],
        }
    }
}

/// A shape detail; which ones exist depends on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// Bag: one long strap over the top.
    Strap,
    /// Bag: two short handles.
    Handles,
    /// Mug: a handle on the side (no lid).
    Handle,
    /// Mug: a lid (no handle).
    Lid,
    /// Shirt: short sleeves.
    ShortSleeves,
    /// Shirt: long sleeves.
    LongSleeves,
    /// Lamp: a dome-shaped shade.
    RoundShade,
    /// Lamp: a cone-shaped shade.
    ConeShade,
    /// Hat: a wide brim.
    WideBrim,
    /// Hat: a cap's visor.
    Visor,
    /// Hat: a beanie's pom-pom.
    PomPom,
    /// Vase: two side handles.
    SideHandles,
    /// Vase: no handles.
    NoHandles,
}

impl Detail {
    /// Phrases after "with" that name the detail ("with a long strap").
    pub fn phrases(self) -> &'static [&'static str] {
        match self {
            Detail::Strap => &["a strap", "a long strap", "a shoulder strap"],
            Detail::Handles => &["handles", "two short handles", "top handles"],
            Detail::Handle => &["a handle", "a side handle"],
            Detail::Lid => &["a lid", "a lid on top"],
            Detail::ShortSleeves => &["short sleeves", "short-sleeved cut"],
            Detail::LongSleeves => &["long sleeves", "full-length sleeves"],
            Detail::RoundShade => &["a round shade", "a dome-shaped shade"],
            Detail::ConeShade => &["a cone-shaped shade", "a tapered shade"],
            Detail::WideBrim => &["a wide brim", "a broad brim"],
            Detail::Visor => &["a visor", "a front visor"],
            Detail::PomPom => &["a pom-pom", "a pom-pom on top"],
            Detail::SideHandles => &["two side handles", "handles on both sides"],
            Detail::NoHandles => &["no handles", "a clean handle-free shape"],
        }
    }

    /// The part shown in the secondary colour for this detail ("strap", "collar").
    pub fn trim(self) -> &'static str {
        match self {
            Detail::Strap => "strap",
            Detail::Handles => "handles",
            Detail::Handle => "handle",
            Detail::Lid => "lid",
            Detail::ShortSleeves | Detail::LongSleeves => "collar",
            Detail::RoundShade | Detail::ConeShade => "base",
            Detail::WideBrim => "band",
            Detail::Visor => "visor",
            Detail::PomPom => "pom-pom",
            Detail::SideHandles | Detail::NoHandles => "rim",
        }
    }

    /// Whether the trim is the detail itself, so "with a red strap" names both.
    pub fn trim_is_detail(self) -> bool {
        matches!(self, Detail::Strap | Detail::Handles | Detail::Handle | Detail::Lid | Detail::Visor | Detail::PomPom)
    }
}

/// Everything an item's image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Look {
    /// Product kind.
    pub kind: Kind,
    /// Body colour.
    pub main: Colour,
    /// Pattern and trim colour (never the main colour).
    pub secondary: Colour,
    /// Body pattern.
    pub pattern: Pattern,
    /// Shape detail (one of `kind.details()`).
    pub detail: Detail,
}

/// One visual attribute a seeker can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribute {
    /// The body colour.
    Main,
    /// The trim (and pattern) colour.
    Secondary,
    /// The pattern.
    Pattern,
    /// The shape detail.
    Detail,
}

impl Attribute {
    /// Every attribute, in a fixed order.
    pub const ALL: [Attribute; 4] = [Attribute::Main, Attribute::Secondary, Attribute::Pattern, Attribute::Detail];
}

impl Look {
    /// Whether two looks agree on one attribute.
    pub fn same(&self, other: &Look, a: Attribute) -> bool {
        match a {
            Attribute::Main => self.main == other.main,
            Attribute::Secondary => self.secondary == other.secondary,
            Attribute::Pattern => self.pattern == other.pattern,
            Attribute::Detail => self.detail == other.detail,
        }
    }

    /// Whether `other` is the same kind and agrees on every attribute of `asked`.
    pub fn satisfies(&self, other: &Look, asked: &[Attribute]) -> bool {
        self.kind == other.kind && asked.iter().all(|a| self.same(other, *a))
    }
}

/// Which of an item's true attributes a text names (see [`Look::named_in`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Named {
    /// The kind's noun.
    pub kind: bool,
    /// The main colour, as the text's first colour word.
    pub main: bool,
    /// The secondary colour, after the first colour word.
    pub secondary: bool,
    /// The pattern.
    pub pattern: bool,
    /// The shape detail.
    pub detail: bool,
}

impl Look {
    /// Which of this look's attributes `text` names, by whole lower-case words (a hyphen stays
    /// inside a word): the kind's noun; the main colour as the first colour word (the teacher
    /// descriptions name the body colour first); the secondary colour as a later colour word;
    /// the pattern as a word starting with its stem (solid, stripe, dot, check); the detail as its
    /// first phrase, or its trim word where the trim is the detail ("a red strap").
    pub fn named_in(&self, text: &str) -> Named {
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower.split(|c: char| !(c.is_alphanumeric() || c == '-')).filter(|w| !w.is_empty()).collect();
        let has = |phrase: &str| {
            let p: Vec<&str> = phrase.split(' ').collect();
            words.windows(p.len()).any(|w| w == p.as_slice())
        };
        let colours: Vec<&str> = words.iter().copied().filter(|w| Colour::ALL.iter().any(|c| c.word() == *w)).collect();
        let stem = match self.pattern {
            Pattern::Solid => "solid",
            Pattern::Stripes => "stripe",
            Pattern::Dots => "dot",
            Pattern::Checks => "check",
        };
        Named {
            kind: has(self.kind.noun()),
            main: colours.first() == Some(&self.main.word()),
            secondary: colours.iter().skip(1).any(|c| *c == self.secondary.word()),
            pattern: words.iter().any(|w| w.starts_with(stem)),
            detail: has(self.detail.phrases()[0]) || (self.detail.trim_is_detail() && has(self.detail.trim())),
        }
    }
}

/// Every lower-case word the vocabulary uses for a visual attribute (colours, pattern words,
/// detail and trim words); titles must use none of them.
pub fn attribute_words() -> Vec<String> {
    let mut phrases: Vec<&str> = Colour::ALL.iter().map(|c| c.word()).collect();
    for p in Pattern::ALL {
        phrases.push(p.word());
        phrases.extend(p.predicates());
        phrases.extend(p.adjectives());
    }
    for k in Kind::ALL {
        for d in k.details() {
            phrases.extend(d.phrases());
            phrases.push(d.trim());
        }
    }
    let stop = ["a", "an", "and", "on", "with", "without", "any", "two", "top", "of", "no", "both"];
    let mut words: Vec<String> = phrases
        .iter()
        .flat_map(|p| p.split(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty() && !stop.contains(w))
        .map(str::to_lowercase)
        .collect();
    words.extend(["shade", "sleeve", "sleeves", "colour", "color", "pattern", "dot", "stripe", "check"].map(String::from));
    words.sort();
    words.dedup();
    words
}

/// "a" or "an" for the word that follows.
pub fn article(next: &str) -> &'static str {
    match next.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phrase_names_its_value() {
        for p in Pattern::ALL {
            let key = match p {
                Pattern::Solid => ["plain", "solid", "without any pattern"],
                Pattern::Stripes => ["strip", "strip", "strip"],
                Pattern::Dots => ["dot", "dot", "dot"],
                Pattern::Checks => ["check", "check", "check"],
            };
            for ph in p.predicates().iter().chain(p.adjectives()) {
                assert!(key.iter().any(|k| ph.contains(k)), "{p:?}: {ph}");
            }
        }
        for k in Kind::ALL {
            assert!(k.details().len() >= 2);
        }
    }

    #[test]
    fn colours_are_far_apart() {
        for (i, a) in Colour::ALL.iter().enumerate() {
            for b in &Colour::ALL[i + 1..] {
                let d: i32 = a.rgb().iter().zip(b.rgb()).map(|(x, y)| (*x as i32 - y as i32).abs()).sum();
                assert!(d > 90, "{a:?} and {b:?} are only {d} apart");
            }
        }
    }

    #[test]
    fn named_in_needs_whole_words_and_the_main_colour_first() {
        let look = Look { kind: Kind::Lamp, main: Colour::Red, secondary: Colour::Blue, pattern: Pattern::Dots, detail: Detail::ConeShade };
        let n = look.named_in("A red lamp with blue polka dots, a cone-shaped shade and a blue base.");
        assert_eq!(n, Named { kind: true, main: true, secondary: true, pattern: true, detail: true });
        // Colours swapped, another pattern, "tapered" is not "red", "lamps" is not "lamp".
        let n = look.named_in("Shown: blue lamps, tapered, with red stripes and a round shade.");
        assert_eq!(n, Named { kind: false, main: false, secondary: false, pattern: false, detail: false });
        let bag = Look { kind: Kind::Bag, main: Colour::Black, secondary: Colour::Pink, pattern: Pattern::Checks, detail: Detail::Strap };
        let n = bag.named_in("The bag is black with a pink check pattern, and it comes with a pink strap.");
        assert_eq!(n, Named { kind: true, main: true, secondary: true, pattern: true, detail: true });
        assert_eq!(bag.named_in(""), Named::default());
    }

    #[test]
    fn attribute_words_cover_the_vocabulary() {
        let w = attribute_words();
        for must in
            ["red", "white", "striped", "dotted", "checkered", "plain", "strap", "handles", "lid", "visor", "brim", "sleeves", "collar"]
        {
            assert!(w.iter().any(|x| x == must), "{must} missing");
        }
        assert!(!w.iter().any(|x| x == "a" || x == "with"));
        assert_eq!(article("orange"), "an");
        assert_eq!(article("red"), "a");
    }
}
