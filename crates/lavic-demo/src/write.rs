//! Writes a world to a folder: `items.jsonl` (our items format, read by `lavic catalog build`,
//! `lavic eval --items` and `lavic train`), `images/ID.png`, `train.jsonl` / `valid.jsonl` /
//! `test.jsonl` (Reddit-Amazon conversation lines), `truth.jsonl` (what each conversation asked
//! for), `stage0.jsonl` (image questions for the base model) and `world.json` (settings,
//! vocabulary, templates, counts). Everything is written into a
//! sibling temporary folder that is renamed into place at the end, so the output folder is either
//! complete or absent. Same world, same bytes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use crate::dialogue::{Conversation, TEMPLATES};
use crate::draw::{png, render};
use crate::error::{Error, Result};
use crate::items::{Item, Split};
use crate::vocab::{Attribute, Colour, Kind, Look, Pattern};
use crate::World;

/// What was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Items (and images).
    pub items: usize,
    /// Product lines.
    pub lines: usize,
    /// Conversations per split: train, valid, test.
    pub conversations: [usize; 3],
    /// Items planned for 3, 4 and 5 AnyRes views.
    pub views: [usize; 3],
    /// Total bytes of the PNG files.
    pub image_bytes: u64,
    /// [`World::title_only_bound`] of train, valid and test.
    pub title_only_bound: [f64; 3],
    /// Lines of `stage0.jsonl`.
    pub stage0_samples: usize,
}

/// One line of `items.jsonl`.
#[derive(Serialize)]
struct ItemLine<'a> {
    id: &'a str,
    title: &'a str,
    image: String,
    description: &'a str,
    split: Split,
    look: Look,
    shot: crate::items::Shot,
    views: usize,
    width: u32,
    height: u32,
}

/// One line of a conversation file, in the Reddit-Amazon field order.
#[derive(Serialize)]
struct ConversationLine<'a> {
    context: &'a str,
    context_items: Vec<String>,
    gt: &'a str,
    gt_items: Vec<&'a str>,
    candidates_st: Vec<&'a str>,
    candidates_gpt_large: Vec<&'a str>,
}

/// Removes the temporary folder unless disarmed.
struct TempDirGuard(Option<PathBuf>);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

fn to_line<T: Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Json { what: what.to_string(), source })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn item_line(it: &Item) -> Result<String> {
    let line = ItemLine {
        id: &it.id,
        title: &it.title,
        image: format!("{}.png", it.id),
        description: &it.description,
        split: it.split,
        look: it.look,
        shot: it.shot,
        views: it.shot.views(),
        width: it.scene.size.0,
        height: it.scene.size.1,
    };
    to_line(&line, &format!("item {}", it.id))
}

fn conversation_line(world: &World, c: &Conversation) -> Result<String> {
    let id = |i: &usize| world.catalog.items[*i].id.as_str();
    let line = ConversationLine {
        context: &c.context,
        context_items: Vec::new(),
        gt: &c.gt,
        gt_items: vec![id(&c.gt_item)],
        candidates_st: c.candidates_st.iter().map(id).collect(),
        candidates_gpt_large: c.candidates_gpt_large.iter().map(id).collect(),
    };
    to_line(&line, "a conversation")
}

fn truth_line(world: &World, index: usize, c: &Conversation) -> Result<String> {
    let g = &world.catalog.items[c.gt_item];
    let value = |a: &Attribute| -> Value {
        match a {
            Attribute::Main => json!(g.look.main),
            Attribute::Secondary => json!(g.look.secondary),
            Attribute::Pattern => json!(g.look.pattern),
            Attribute::Detail => json!(g.look.detail),
        }
    };
    let asked: serde_json::Map<String, Value> =
        c.asked.iter().map(|a| (json!(a).as_str().unwrap_or_default().to_string(), value(a))).collect();
    let v = json!({
        "split": c.split,
        "index": index,
        "gt": g.id,
        "kind": g.look.kind,
        "asked": asked,
        "template": c.template.id,
        "held_out_template": c.template.held_out(),
        "follow_up": c.follow_up,
        "distracting_comment": c.distracting,
    });
    to_line(&v, "a truth line")
}

fn manifest(world: &World, summary: &Summary) -> Value {
    let t = world.config.catalog.tile;
    let kinds: serde_json::Map<String, Value> = Kind::ALL.iter().map(|k| (k.noun().to_string(), json!(k.details()))).collect();
    json!({
        "generator": concat!("lavic-demo ", env!("CARGO_PKG_VERSION")),
        "seed": world.config.seed,
        "config": world.config,
        "anyres_pinpoints": [[t, 2 * t], [2 * t, t], [2 * t, 2 * t], [3 * t, t], [t, 3 * t]],
        "summary": summary,
        "kinds": kinds,
        "colours": Colour::ALL,
        "patterns": Pattern::ALL,
        "templates": TEMPLATES.iter().map(|t| json!({"id": t.id, "text": t.text, "held_out": t.held_out()})).collect::<Vec<_>>(),
    })
}

fn jsonl(lines: Vec<String>) -> String {
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn write_contents(world: &World, dir: &Path) -> Result<Summary> {
    let images = dir.join("images");
    fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut image_bytes = 0u64;
    let mut views = [0usize; 3];
    let mut item_lines = Vec::with_capacity(world.catalog.items.len());
    for it in &world.catalog.items {
        let bytes = png(&render(&it.scene)).map_err(|source| Error::Image { id: it.id.clone(), source })?;
        image_bytes += bytes.len() as u64;
        write_file(&images.join(format!("{}.png", it.id)), &bytes)?;
        views[it.shot.views() - 3] += 1;
        item_lines.push(item_line(it)?);
    }
    write_file(&dir.join("items.jsonl"), jsonl(item_lines).as_bytes())?;
    let mut truth = Vec::new();
    let mut counts = [0usize; 3];
    for (s, split) in Split::ALL.iter().enumerate() {
        let convs = &world.conversations[s];
        let lines = convs.iter().map(|c| conversation_line(world, c)).collect::<Result<Vec<_>>>()?;
        write_file(&dir.join(format!("{}.jsonl", split.name())), jsonl(lines).as_bytes())?;
        for (i, c) in convs.iter().enumerate() {
            truth.push(truth_line(world, i, c)?);
        }
        counts[s] = convs.len();
    }
    write_file(&dir.join("truth.jsonl"), jsonl(truth).as_bytes())?;
    let stage0 = crate::stage0::samples(world.config.seed, &world.catalog);
    let lines = stage0.iter().map(|s| to_line(s, &format!("a stage-0 sample of {}", s.id))).collect::<Result<Vec<_>>>()?;
    write_file(&dir.join("stage0.jsonl"), jsonl(lines).as_bytes())?;
    let summary = Summary {
        items: world.catalog.items.len(),
        lines: world.catalog.lines.len(),
        conversations: counts,
        views,
        image_bytes,
        title_only_bound: Split::ALL.map(|s| world.title_only_bound(s)),
        stage0_samples: stage0.len(),
    };
    let text =
        serde_json::to_string_pretty(&manifest(world, &summary)).map_err(|source| Error::Json { what: "world.json".into(), source })?;
    write_file(&dir.join("world.json"), format!("{text}\n").as_bytes())?;
    Ok(summary)
}

/// Refuses an output folder that exists and holds files.
pub fn check_output(out: &Path) -> Result<()> {
    if out.exists() {
        let mut entries = fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::OutputExists(out.to_path_buf()));
        }
    }
    Ok(())
}

/// Runs `fill` on a temporary sibling of `out` and renames it to `out` when it succeeds, so
/// `out` (which must not exist or be empty) is either complete or absent.
pub(crate) fn into_new_folder<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    check_output(out)?;
    let name = out.file_name().ok_or_else(|| Error::InvalidConfig(format!("output folder {} has no name", out.display())))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut guard = TempDirGuard(Some(tmp.clone()));
    let value = fill(&tmp)?;
    if out.exists() {
        fs::remove_dir(out).map_err(|e| Error::io(out, e))?;
    }
    fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    guard.0 = None;
    Ok(value)
}

/// Writes `world` to `out` (created; it must not exist or be empty).
pub fn write(world: &World, out: &Path) -> Result<Summary> {
    into_new_folder(out, |dir| write_contents(world, dir))
}
