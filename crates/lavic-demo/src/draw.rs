//! Procedural product images: each kind is a few filled shapes (body, trim, fixed parts) in a unit
//! box placed on a light background; the body carries the pattern (secondary colour over the
//! main one), the trim is the secondary colour, and every shape gets a darker outline so white
//! items stand out. Pattern sizes scale with the object, so they survive AnyRes' downscaling to
//! the vision tower's tile. Pure integer/float arithmetic: the same inputs give the same pixels.

use image::{Rgb, RgbImage};

use crate::vocab::{Detail, Kind, Look, Pattern};

/// How a shape is painted.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Paint {
    /// Main colour with the pattern.
    Body,
    /// Secondary colour.
    Trim,
    /// A fixed dark grey (lamp stem).
    Metal,
}

/// A shape in the object's unit box (x right, y down, both 0..1).
#[derive(Debug, Clone)]
enum Shape {
    Rect {
        x0: f64,
        y0: f64,
        x1: f64,
        y1: f64,
    },
    Ellipse {
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
    },
    /// The upper half (`y <= cy`) of an ellipse.
    HalfEllipse {
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
    },
    /// A ring of the given thickness, restricted to one side: `side` > 0 keeps x >= cx, < 0
    /// keeps x <= cx, 0 keeps y <= cy.
    Ring {
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
        t: f64,
        side: i8,
    },
    Polygon(Vec<(f64, f64)>),
}

impl Shape {
    fn contains(&self, x: f64, y: f64) -> bool {
        match self {
            Shape::Rect { x0, y0, x1, y1 } => x >= *x0 && x <= *x1 && y >= *y0 && y <= *y1,
            Shape::Ellipse { cx, cy, rx, ry } => ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0,
            Shape::HalfEllipse { cx, cy, rx, ry } => y <= *cy && ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0,
            Shape::Ring { cx, cy, rx, ry, t, side } => {
                let keep = match side {
                    0 => y <= *cy,
                    s if *s > 0 => x >= *cx,
                    _ => x <= *cx,
                };
                let outer = ((x - cx) / rx).powi(2) + ((y - cy) / ry).powi(2) <= 1.0;
                let inner = ((x - cx) / (rx - t)).powi(2) + ((y - cy) / (ry - t)).powi(2) <= 1.0;
                keep && outer && !inner
            }
            Shape::Polygon(pts) => {
                // Even-odd rule.
                let mut inside = false;
                let mut j = pts.len() - 1;
                for i in 0..pts.len() {
                    let ((xi, yi), (xj, yj)) = (pts[i], pts[j]);
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }
}

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Shape {
    Shape::Rect { x0, y0, x1, y1 }
}

fn mirror(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    pts.iter().map(|(x, y)| (1.0 - x, *y)).collect()
}

/// The shapes of a kind with a detail, bottom layer first.
fn layers(kind: Kind, detail: Detail) -> Vec<(Shape, Paint)> {
    use Paint::*;
    let mut l = Vec::new();
    match kind {
        Kind::Bag => {
            match detail {
                Detail::Strap => l.push((Shape::Ring { cx: 0.5, cy: 0.44, rx: 0.33, ry: 0.36, t: 0.075, side: 0 }, Trim)),
                _ => {
                    for cx in [0.34, 0.66] {
                        l.push((Shape::Ring { cx, cy: 0.44, rx: 0.1, ry: 0.15, t: 0.06, side: 0 }, Trim));
                    }
                }
            }
            l.push((rect(0.12, 0.42, 0.88, 0.9), Body));
        }
        Kind::Mug => {
            if detail == Detail::Handle {
                l.push((Shape::Ring { cx: 0.68, cy: 0.56, rx: 0.17, ry: 0.18, t: 0.075, side: 1 }, Trim));
            }
            l.push((rect(0.22, 0.3, 0.68, 0.9), Body));
            if detail == Detail::Lid {
                l.push((rect(0.19, 0.22, 0.71, 0.31), Trim));
                l.push((rect(0.4, 0.15, 0.5, 0.22), Trim));
            }
        }
        Kind::Shirt => {
            let sleeve: &[(f64, f64)] = if detail == Detail::LongSleeves {
                &[(0.32, 0.16), (0.14, 0.24), (0.05, 0.82), (0.17, 0.84), (0.3, 0.42)]
            } else {
                &[(0.32, 0.16), (0.1, 0.3), (0.19, 0.45), (0.3, 0.38)]
            };
            l.push((Shape::Polygon(sleeve.to_vec()), Body));
            l.push((Shape::Polygon(mirror(sleeve)), Body));
            l.push((Shape::Polygon(vec![(0.3, 0.16), (0.7, 0.16), (0.72, 0.92), (0.28, 0.92)]), Body));
            l.push((Shape::Polygon(vec![(0.36, 0.16), (0.64, 0.16), (0.5, 0.36)]), Trim));
        }
        Kind::Lamp => {
            l.push((rect(0.47, 0.4, 0.53, 0.86), Metal));
            l.push((rect(0.26, 0.82, 0.74, 0.94), Trim));
            match detail {
                Detail::RoundShade => l.push((Shape::HalfEllipse { cx: 0.5, cy: 0.46, rx: 0.36, ry: 0.36 }, Body)),
                _ => l.push((Shape::Polygon(vec![(0.36, 0.1), (0.64, 0.1), (0.84, 0.46), (0.16, 0.46)]), Body)),
            }
        }
        Kind::Hat => match detail {
            Detail::WideBrim => {
                l.push((Shape::Ellipse { cx: 0.5, cy: 0.66, rx: 0.46, ry: 0.1 }, Body));
                l.push((rect(0.3, 0.3, 0.7, 0.66), Body));
                l.push((rect(0.3, 0.5, 0.7, 0.62), Trim));
            }
            Detail::Visor => {
                l.push((Shape::Polygon(vec![(0.55, 0.58), (0.96, 0.6), (0.94, 0.72), (0.55, 0.72)]), Trim));
                l.push((Shape::HalfEllipse { cx: 0.42, cy: 0.7, rx: 0.32, ry: 0.36 }, Body));
            }
            _ => {
                l.push((Shape::Ellipse { cx: 0.5, cy: 0.26, rx: 0.11, ry: 0.11 }, Trim));
                l.push((Shape::HalfEllipse { cx: 0.5, cy: 0.72, rx: 0.3, ry: 0.4 }, Body));
                l.push((rect(0.19, 0.64, 0.81, 0.8), Body));
            }
        },
        Kind::Vase => {
            if detail == Detail::SideHandles {
                l.push((Shape::Ring { cx: 0.3, cy: 0.45, rx: 0.15, ry: 0.14, t: 0.06, side: -1 }, Trim));
                l.push((Shape::Ring { cx: 0.7, cy: 0.45, rx: 0.15, ry: 0.14, t: 0.06, side: 1 }, Trim));
            }
            l.push((rect(0.4, 0.18, 0.6, 0.42), Body));
            l.push((Shape::Ellipse { cx: 0.5, cy: 0.64, rx: 0.27, ry: 0.28 }, Body));
            l.push((rect(0.35, 0.11, 0.65, 0.21), Trim));
        }
    }
    l
}

/// Where and how to draw one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// What the image shows.
    pub look: Look,
    /// Image width and height in pixels.
    pub size: (u32, u32),
    /// Background grey level.
    pub background: u8,
    /// Main and secondary colours after the item's jitter.
    pub colours: [[u8; 3]; 2],
    /// Object box: left, top, side (pixels).
    pub object: (f64, f64, f64),
    /// Stripe direction: 0 horizontal, 1 vertical, 2 diagonal.
    pub stripe_dir: u8,
}

/// Pattern colour choice at a pixel (object-local unit coordinates): true = secondary.
fn pattern_secondary(pattern: Pattern, stripe_dir: u8, u: f64, v: f64) -> bool {
    match pattern {
        Pattern::Solid => false,
        Pattern::Stripes => {
            let s = match stripe_dir {
                0 => v,
                1 => u,
                _ => (u + v) * std::f64::consts::FRAC_1_SQRT_2,
            };
            ((s * 9.0).floor() as i64).rem_euclid(2) == 1
        }
        Pattern::Dots => {
            let (p, r) = (1.0 / 6.0, 0.042);
            let row = (v / p).floor();
            let off = if (row as i64).rem_euclid(2) == 1 { p / 2.0 } else { 0.0 };
            let cx = ((u - off) / p).floor() * p + p / 2.0 + off;
            let cy = row * p + p / 2.0;
            (u - cx).powi(2) + (v - cy).powi(2) <= r * r
        }
        Pattern::Checks => (((u * 7.0).floor() + (v * 7.0).floor()) as i64).rem_euclid(2) == 1,
    }
}

fn darker(c: [u8; 3]) -> [u8; 3] {
    let f = |x: u8| (x as f64 * 0.55) as u8;
    if c.iter().map(|x| *x as u32).sum::<u32>() > 600 {
        [150, 150, 150]
    } else {
        [f(c[0]), f(c[1]), f(c[2])]
    }
}

/// Renders a scene.
pub fn render(scene: &Scene) -> RgbImage {
    let (w, h) = scene.size;
    let bg = scene.background;
    let mut img = RgbImage::from_pixel(w, h, Rgb([bg, bg, bg.saturating_sub(6)]));
    let (ox, oy, side) = scene.object;
    let [main, secondary] = scene.colours;
    // Per pixel: the topmost layer covering it (None = background).
    let layers = layers(scene.look.kind, scene.look.detail);
    let mut owner: Vec<Option<usize>> = vec![None; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let (u, v) = ((x as f64 + 0.5 - ox) / side, (y as f64 + 0.5 - oy) / side);
            if !(-0.05..=1.05).contains(&u) || !(-0.05..=1.05).contains(&v) {
                continue;
            }
            owner[(y * w + x) as usize] = layers.iter().rposition(|(s, _)| s.contains(u, v));
        }
    }
    // Outline: a pixel whose 4-neighbourhood has another owner, drawn about side/60 thick.
    let reach = ((side / 60.0).round() as i64).max(1);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let Some(li) = owner[(y * w as i64 + x) as usize] else { continue };
            let paint = layers[li].1;
            let (u, v) = ((x as f64 + 0.5 - ox) / side, (y as f64 + 0.5 - oy) / side);
            let fill = match paint {
                Paint::Body if pattern_secondary(scene.look.pattern, scene.stripe_dir, u, v) => secondary,
                Paint::Body => main,
                Paint::Trim => secondary,
                Paint::Metal => [70, 70, 75],
            };
            let edge = [(reach, 0), (-reach, 0), (0, reach), (0, -reach)].iter().any(|(dx, dy)| {
                let (nx, ny) = (x + dx, y + dy);
                nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 || owner[(ny * w as i64 + nx) as usize] != Some(li)
            });
            let base = match paint {
                Paint::Body => main,
                _ => fill,
            };
            img.put_pixel(x as u32, y as u32, Rgb(if edge { darker(base) } else { fill }));
        }
    }
    img
}

/// PNG bytes of an image (deterministic: fixed encoder settings).
pub fn png(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Best, FilterType::Adaptive).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Colour;

    fn scene(kind: Kind, detail: Detail, pattern: Pattern) -> Scene {
        let look = Look { kind, main: Colour::Blue, secondary: Colour::Red, pattern, detail };
        Scene {
            look,
            size: (96, 96),
            background: 238,
            colours: [Colour::Blue.rgb(), Colour::Red.rgb()],
            object: (8.0, 8.0, 80.0),
            stripe_dir: 0,
        }
    }

    fn count(img: &RgbImage, c: [u8; 3]) -> usize {
        img.pixels().filter(|p| p.0 == c).count()
    }

    #[test]
    fn pattern_shows_the_secondary_colour_on_the_body() {
        for kind in Kind::ALL {
            let d = kind.details()[0];
            let solid = render(&scene(kind, d, Pattern::Solid));
            for p in [Pattern::Stripes, Pattern::Dots, Pattern::Checks] {
                let img = render(&scene(kind, d, p));
                assert!(count(&img, Colour::Red.rgb()) > count(&solid, Colour::Red.rgb()) + 40, "{kind:?} {p:?}");
            }
            // Solid: red only on the trim, blue on the body.
            assert!(count(&solid, Colour::Blue.rgb()) > 600, "{kind:?}");
            assert!(count(&solid, Colour::Red.rgb()) > 15, "{kind:?}: trim not visible");
        }
    }

    #[test]
    fn details_change_the_silhouette() {
        for kind in Kind::ALL {
            let imgs: Vec<RgbImage> = kind.details().iter().map(|d| render(&scene(kind, *d, Pattern::Solid))).collect();
            for (i, a) in imgs.iter().enumerate() {
                for b in &imgs[i + 1..] {
                    let diff = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
                    assert!(diff > 150, "{kind:?}: details differ in only {diff} pixels");
                }
            }
        }
    }

    #[test]
    fn png_round_trips_and_is_stable() {
        let img = render(&scene(Kind::Bag, Detail::Strap, Pattern::Checks));
        let a = png(&img).unwrap();
        assert_eq!(a, png(&img).unwrap());
        let back = image::load_from_memory(&a).unwrap().into_rgb8();
        assert_eq!(back, img);
    }
}
