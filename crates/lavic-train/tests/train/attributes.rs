//! The attribute-head objective (stage-0 vision pre-training): its loss is the summed
//! cross-entropy of every head (checked against plain loops), a short run trains the tower and
//! projector and nothing of the language model, the training items' attributes become readable,
//! and bad labels are errors.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use lavic_train::attributes::{AttributeExample, AttributeObjective};
use lavic_train::full::FullModel;
use lavic_train::linear::Ctx;
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::stage0::item_views;
use lavic_train::trainer::{Objective, TrainConfig, Trainer};

use crate::stage0::sliver;

/// Every item of the world with one label per attribute (values sorted per attribute), and the
/// number of values of each attribute.
fn labelled(model: &FullModel, world: &std::path::Path) -> (Vec<AttributeExample>, Vec<usize>) {
    let text = std::fs::read_to_string(world.join("items.jsonl")).unwrap();
    let items: Vec<(String, BTreeMap<String, String>)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_string(), serde_json::from_value(v["look"].clone()).unwrap())
        })
        .collect();
    let names: Vec<String> = items[0].1.keys().cloned().collect();
    let values: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let mut v: Vec<String> = items.iter().map(|(_, l)| l[n].clone()).collect();
            v.sort();
            v.dedup();
            v
        })
        .collect();
    let data = items
        .iter()
        .map(|(id, look)| AttributeExample {
            views: item_views(world, id, &model.anyres).unwrap(),
            labels: names.iter().zip(&values).map(|(n, v)| v.iter().position(|x| *x == look[n]).unwrap() as u32).collect(),
        })
        .collect();
    (data, values.iter().map(Vec::len).collect())
}

#[test]
fn the_loss_is_the_summed_cross_entropy_of_every_head() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(4).unwrap();
    let (data, sizes) = labelled(&model, &s.world);
    assert_eq!(sizes.len(), 5, "kind, main, secondary, pattern, detail");
    let obj = AttributeObjective::new(&model, &sizes).unwrap();
    // Move the heads off their near-zero start so the check is not of a uniform softmax.
    for (name, var) in &obj.params().vars {
        if name.starts_with("attribute_head.") {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919 % 23) as f32 - 11.0) * 0.05).collect();
            var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let batch = &data[..6];
    let (loss, count) = obj.loss_sum(batch, &mut Ctx::eval()).unwrap();
    assert_eq!(count, 6 * sizes.len());
    let logits = obj.logits(batch, &mut Ctx::eval()).unwrap();
    let mut want = 0f64;
    for (h, l) in logits.iter().enumerate() {
        for (row, e) in l.to_vec2::<f32>().unwrap().iter().zip(batch) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            want += lse - row[e.labels[h] as usize] as f64;
        }
    }
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "loss {got} vs by hand {want}");
}

#[test]
fn a_short_run_trains_the_tower_and_projector_alone_and_the_attributes_become_readable() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(4).unwrap();
    let (mut data, sizes) = labelled(&model, &s.world);
    // A few items, memorised: a smoke check that the gradient reaches the tower.
    data.truncate(24);
    let obj = AttributeObjective::new(&model, &sizes).unwrap();
    assert_eq!(obj.heads(), 5);
    let names: Vec<&String> = obj.params().vars.keys().collect();
    assert!(names.iter().all(|n| n.starts_with("vision_tower.") || n.starts_with("multi_modal_projector.") || n.starts_with("attribute_head.")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("vision_tower.")) && names.iter().any(|n| n.starts_with("multi_modal_projector.")));
    let snapshot = |prefix: &str| -> Vec<(String, Tensor)> {
        model.params().vars.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect()
    };
    let (lm, tower) = (snapshot("language_model."), snapshot("vision_tower."));
    assert!(!lm.is_empty());
    let before = obj.accuracy(&data).unwrap();
    let loss = |o: &AttributeObjective| {
        let (l, n) = o.loss_sum(&data, &mut Ctx::eval()).unwrap();
        l.to_scalar::<f32>().unwrap() / n as f32
    };
    let l0 = loss(&obj);
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: 1e-2, weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: Schedule::Constant { warmup: 0 },
        batch_size: 12,
        shuffle: true,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&obj, cfg).unwrap();
    for _ in 0..60 {
        trainer.step(&data).unwrap();
    }
    let (l1, after) = (loss(&obj), obj.accuracy(&data).unwrap());
    eprintln!("attribute heads: loss {l0:.3} -> {l1:.3}; accuracy {before:?} -> {after:?} ({} items)", data.len());
    assert!(l1 < 0.6 * l0, "loss {l0} -> {l1}");
    let mean = |a: &[f64]| a.iter().sum::<f64>() / a.len() as f64;
    assert!(mean(&after) > mean(&before) + 0.2, "{before:?} -> {after:?}");
    // The language model is untouched, bit for bit; the tower moved.
    for (name, t) in &lm {
        let now = model.params().vars[name].as_tensor();
        assert_eq!(now.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name} changed");
    }
    assert!(tower.iter().any(|(name, t)| {
        let now = model.params().vars[name].as_tensor();
        now.flatten_all().unwrap().to_vec1::<f32>().unwrap() != t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }));
}

#[test]
fn bad_labels_and_heads_are_errors_that_say_what_is_wrong() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(4).unwrap();
    let (data, sizes) = labelled(&model, &s.world);
    assert!(AttributeObjective::new(&model, &[]).err().expect("no heads").to_string().contains("at least one value"));
    assert!(AttributeObjective::new(&model, &[3, 0]).err().expect("an empty head").to_string().contains("[3, 0]"));
    let obj = AttributeObjective::new(&model, &sizes).unwrap();
    let mut short = data[0].clone();
    short.labels.pop();
    let e = obj.loss_sum(&[short], &mut Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("4 labels for 5 attribute heads"), "{e}");
    let mut out = data[0].clone();
    out.labels[0] = 99;
    let e = obj.loss_sum(&[out], &mut Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("label 99 is outside"), "{e}");
    assert!(obj.logits(&[], &mut Ctx::eval()).unwrap_err().to_string().contains("empty batch"));
}
