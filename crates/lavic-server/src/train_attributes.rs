//! `lavic train base --attributes`: the vision tower and projector of the base learn the demo
//! world's visual attributes from direct labels (lavic-train's `attributes`), before the
//! stage-0 questions. Reads `items.jsonl` (`id`, `look`) and `images/ID.png` of `--world`
//! (usually a large pre-training world of another seed, so no demo test item is seen), holds
//! out the last `--eval` items, and reports their per-attribute accuracy before and after.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use lavic_train::attributes::{AttributeExample, AttributeObjective};
use lavic_train::full::FullModel;
use lavic_train::save::save_full;
use lavic_train::stage0::item_views;
use serde::Deserialize;
use serde_json::json;

use crate::train_base::{event, train_steps, BaseArgs};

#[derive(Deserialize)]
struct ItemLook {
    id: String,
    look: BTreeMap<String, String>,
}

/// Items of `world/items.jsonl` with their looks; every item must have the first item's
/// attributes.
fn read_looks(world: &Path) -> anyhow::Result<Vec<ItemLook>> {
    let path = world.join("items.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut out: Vec<ItemLook> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let it: ItemLook = serde_json::from_str(line).with_context(|| format!("{} line {}: no id and look", path.display(), i + 1))?;
        if let Some(first) = out.first() {
            if !first.look.keys().eq(it.look.keys()) {
                bail!("{} line {}: look has attributes {:?}, the first item has {:?}", path.display(), i + 1, it.look.keys(), first.look.keys());
            }
        } else if it.look.is_empty() {
            bail!("{} line {}: empty look", path.display(), i + 1);
        }
        out.push(it);
    }
    Ok(out)
}

/// Runs the attribute phase of `lavic train base`.
pub fn run(a: &BaseArgs) -> anyhow::Result<()> {
    if a.state.is_some() || a.describe.is_some() || a.readout > 0.0 || a.recite || a.match_flag || a.eval_every > 0 {
        bail!("--attributes trains the tower alone: --state, --describe, --readout, --recite, --match-flag and --eval-every do not apply");
    }
    let device = lavic_model::model::parse_device(&a.device).context("--device")?;
    let model = FullModel::load(&a.base, None, &device)
        .with_context(|| format!("--base {}", a.base.display()))?
        .with_pool(a.pool as usize)
        .context("--pool")?;
    let looks = read_looks(&a.world)?;
    let names: Vec<String> = looks.first().map(|l| l.look.keys().cloned().collect()).unwrap_or_default();
    let values: Vec<Vec<&str>> = names
        .iter()
        .map(|n| looks.iter().map(|l| l.look[n].as_str()).collect::<BTreeSet<_>>().into_iter().collect())
        .collect();
    let need = a.eval + usize::from(a.steps > 0);
    if looks.len() < need.max(1) {
        bail!("{}: {} items, need at least {} (--eval {} held out)", a.world.display(), looks.len(), need.max(1), a.eval);
    }
    let t0 = Instant::now();
    let mut data = Vec::with_capacity(looks.len());
    for l in &looks {
        let labels = names.iter().zip(&values).map(|(n, v)| v.binary_search(&l.look[n].as_str()).unwrap_or(0) as u32).collect();
        data.push(AttributeExample { views: item_views(&a.world, &l.id, &model.anyres)?, labels });
    }
    let sizes: Vec<usize> = values.iter().map(Vec::len).collect();
    let objective = AttributeObjective::new(&model, &sizes)?;
    let (train, held) = data.split_at(data.len() - a.eval);
    let accuracy = |when: &str| -> anyhow::Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        let acc = objective.accuracy(held)?;
        let per: BTreeMap<&str, f64> = names.iter().map(String::as_str).zip(acc).collect();
        event(json!({"event": "held_out_accuracy", "when": when, "items": held.len(), "per_attribute": per}));
        Ok(())
    };
    event(json!({"event": "data", "stage": "base-attributes", "train": train.len(), "held_out": held.len(),
        "attributes": names.iter().zip(&sizes).map(|(n, s)| (n.clone(), *s)).collect::<BTreeMap<_, _>>(),
        "load_s": t0.elapsed().as_secs_f64()}));
    accuracy("before")?;
    train_steps(a, &objective, train, &mut |_| Ok(()))?;
    accuracy("after")?;
    let saved = save_full(&model, &a.out, a.dtype.dtype())?;
    event(json!({"event": "saved", "out": a.out.display().to_string(), "tensors": saved.tensors, "bytes": saved.bytes}));
    Ok(())
}
