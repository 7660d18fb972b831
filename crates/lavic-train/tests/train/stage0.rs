//! Stage 0 on a sliver of a freshly generated demo world (tiny base: 2 vision layers, 1 decoder
//! layer, 32 px tiles): full-parameter gradients equal finite differences, the patch-slot forward
//! equals a reference built from lavic-model's independent inference code and plain loops, a
//! short run lowers the loss, and the saved llava-hf folder loads in lavic-model with the same
//! logits (f32: 1e-5; f16: see the test).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lavic_demo::base::{write_base, BaseConfig};
use lavic_demo::{generate, write, CatalogConfig, WorldConfig};
use lavic_model::{LavicModel, LoadOptions};
use lavic_train::save::save_full;
use lavic_train::full::{Aids, FullModel, PatchEncoded, PatchExample};
use lavic_train::linear::Ctx;
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::stage0::{examples, item_views, read_lines, Stage0Filter, Stage0Line};
use lavic_train::trainer::{TrainConfig, Trainer};

/// A small world and its untrained tiny base, in a temporary folder.
pub(crate) struct Sliver {
    _dir: tempfile::TempDir,
    pub(crate) world: PathBuf,
    pub(crate) base: PathBuf,
    root: PathBuf,
}

pub(crate) fn sliver() -> Sliver {
    let mut c = WorldConfig::new(3);
    c.catalog = CatalogConfig { lines_per_kind: 5, valid_lines: 1, test_lines: 1, tile: 32 };
    c.conversations = [20, 10, 10];
    let world = generate(&c).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (w, b) = (dir.path().join("world"), dir.path().join("base"));
    write(&world, &w).unwrap();
    let mut cfg = BaseConfig::demo(1);
    (cfg.vision_hidden, cfg.vision_layers, cfg.text_hidden, cfg.text_layers, cfg.text_intermediate, cfg.vocab) =
        (32, 2, 32, 1, 64, 500);
    let extra = vec![lavic_model::prompt::distillation_prompt(""), lavic_model::prompt::recommendation_head().to_string()];
    write_base(&world, &cfg, &extra, &b).unwrap();
    Sliver { root: dir.path().to_path_buf(), _dir: dir, world: w, base: b }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn encoded(model: &FullModel, world: &Path, limit: usize) -> Vec<PatchEncoded> {
    let f = Stage0Filter { splits: vec!["train".into()], tasks: Vec::new(), limit: Some(limit) };
    let lines = read_lines(world, &f).unwrap();
    assert_eq!(lines.len(), limit);
    let ex = examples(world, &lines, &model.anyres).unwrap();
    ex.iter().map(|e| model.encode(e).unwrap()).collect()
}

/// The first `limit` lines of one task (train split), as read from `stage0.jsonl`.
fn task_lines(world: &Path, task: &str, limit: usize) -> Vec<Stage0Line> {
    let f = Stage0Filter { splits: vec!["train".into()], tasks: vec![task.into()], limit: Some(limit) };
    let lines = read_lines(world, &f).unwrap();
    assert_eq!(lines.len(), limit, "{task} lines");
    lines
}

fn inference(dir: &Path) -> LavicModel {
    let mut o = LoadOptions::new(dir);
    o.dtype = Some(DType::F32);
    o.share_prefix = false;
    LavicModel::load(&o).unwrap()
}

#[test]
fn full_parameter_gradients_equal_finite_differences() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap();
    let vars = &model.params().vars;
    // Every tensor stage 0 runs is trainable; the last vision layer (after vision_feature_layer
    // -2) and post_layernorm are not, and a fresh checkpoint has nothing else.
    assert!(vars.contains_key("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"));
    assert!(!vars.keys().any(|k| k.starts_with("vision_tower.vision_model.encoder.layers.1.")));
    assert!(!vars.keys().any(|k| k.contains("post_layernorm")));
    assert_eq!(vars["language_model.model.embed_tokens.weight"].dims(), [model.tokenizer.len(), 32]);
    let batch = encoded(&model, &s.world, 3);
    let mut ctx = Ctx::eval();
    let loss = model.loss(&batch, &mut ctx).unwrap();
    let grads = loss.backward().unwrap();
    let names = [
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.pre_layrnorm.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.v_proj.weight",
        "vision_tower.vision_model.encoder.layers.0.mlp.fc2.weight",
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_2.bias",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.mlp.up_proj.weight",
        "language_model.model.layers.0.input_layernorm.weight",
        "language_model.model.norm.weight",
        "language_model.lm_head.weight",
    ];
    // At random init attention is near-uniform, so q/k gradients are ~1e-6 (not checkable
    // with f32 finite differences); v, out and MLP weights carry the attention path instead.
    // The CLS embedding reaches the patch features only through layer 0's attention: a gradient,
    // but too small to check against f32 finite differences.
    let cls = grads
        .get(vars["vision_tower.vision_model.embeddings.class_embedding"].as_tensor())
        .expect("class_embedding: no gradient");
    assert!(cls.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let eps = 1e-2f64;
    for name in names {
        let var = &vars[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // The scalar with the largest gradient, so the check is not lost in f32 rounding.
        let (i, &gi) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let orig = var.as_tensor().clone();
        let flat = orig.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = |delta: f64| {
            let mut v = flat.clone();
            v[i] += delta as f32;
            var.set(&Tensor::from_vec(v, orig.dims(), &Device::Cpu).unwrap()).unwrap();
            model.loss(&batch, &mut Ctx::eval()).unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        var.set(&Tensor::from_vec(flat.clone(), orig.dims(), &Device::Cpu).unwrap()).unwrap();
        let err = (fd - gi as f64).abs();
        eprintln!("{name}[{i}]: autograd {gi:.6e}, finite difference {fd:.6e}");
        assert!(gi.abs() > 1e-4, "{name}: gradient {gi} too small to check");
        assert!(err <= 0.03 * (gi.abs() as f64) + 2e-4, "{name}[{i}]: autograd {gi}, finite difference {fd}");
    }
}

#[test]
fn patch_slot_forward_equals_a_reference_from_inference_code_and_plain_loops() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap();
    let inf = inference(&s.base);
    let e = &encoded(&model, &s.world, 1)[0];
    let views = &e.images[0];
    // The tower's all-token path, run through every layer, gives lavic-model's CLS.
    let n_layers = model.config().vision.num_hidden_layers;
    let all = model.vision_hidden_states(views, n_layers).unwrap();
    let cls = inf.encoder.cls_from_pixels(views).unwrap().squeeze(0).unwrap();
    assert!(max_abs(&all.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), &cls) < 1e-5);
    // Patch features: hidden_states[-2] without CLS, views in order, through lavic-model's projector.
    let layer = model.feature_layer_index();
    assert_eq!(layer, n_layers - 1);
    let g2 = model.config().vision.grid().pow(2);
    let hs = model.vision_hidden_states(views, layer).unwrap();
    let want = inf.encoder.project(&hs.narrow(1, 1, g2).unwrap().reshape((5 * g2, ())).unwrap()).unwrap();
    let got = model.patch_features(views, &mut Ctx::eval()).unwrap().squeeze(0).unwrap();
    assert_eq!(got.dims(), [model.patch_tokens(), 32]);
    assert!(max_abs(&got, &want) < 1e-5);
    // The prompt: BOS, then the block of patch_tokens() positions where `<image>` was.
    let n = model.patch_tokens();
    assert_eq!(e.blocks, vec![1]);
    assert!(e.ids[1..1 + n].iter().all(|&t| t == model.config().image_token_index));
    assert_eq!(*e.ids.last().unwrap(), model.tokenizer.eos_id());
    // Input embeddings written row by row, then the decoder: equals the model's logits.
    let feats = want.to_vec2::<f32>().unwrap();
    let text = model.embed_ids(&e.ids).unwrap().to_vec2::<f32>().unwrap();
    let rows: Vec<f32> =
        (0..e.ids.len()).flat_map(|p| if (1..1 + n).contains(&p) { feats[p - 1].clone() } else { text[p].clone() }).collect();
    let embeds = Tensor::from_vec(rows, (e.ids.len(), 32), &Device::Cpu).unwrap();
    let reference = model.logits_of_embeds(&embeds).unwrap();
    let logits = model.logits(e, &mut Ctx::eval()).unwrap();
    let d = max_abs(&logits, &reference);
    assert!(d < 1e-5, "patch-slot logits differ from the reference by {d}");
    // Bad inputs are refused with a reason.
    let mut bad = examples(
        &s.world,
        &read_lines(&s.world, &Stage0Filter { limit: Some(1), ..Stage0Filter::default() }).unwrap(),
        &model.anyres,
    )
    .unwrap()
    .remove(0);
    bad.images.push(views.clone());
    assert!(model.encode(&bad).unwrap_err().to_string().contains("1 <image> tokens but 2 images"));
    bad.images = vec![views.narrow(0, 0, 4).unwrap()];
    assert!(model.encode(&bad).unwrap_err().to_string().contains("expected [5, 3, 32, 32]"));
    bad.images = vec![views.clone()];
    bad.target = "<image>".into();
    assert!(model.encode(&bad).unwrap_err().to_string().contains("holds the image token"));
    // And the image matters: another item's views change the answer's logits.
    let second = examples(&s.world, &task_lines(&s.world, "describe", 2), &model.anyres).unwrap().remove(1);
    let other = model.encode(&second).unwrap();
    assert!(max_abs(&other.images[0], views) > 0.1, "the second item shows the same image");
    let swapped = PatchEncoded { images: other.images.clone(), ..e.clone() };
    assert!(max_abs(&model.logits(&swapped, &mut Ctx::eval()).unwrap(), &logits) > 1e-4);
}

#[test]
fn pooled_patch_features_are_window_means_of_the_full_ones_projected() {
    let s = sliver();
    let full = FullModel::load(&s.base, None, &Device::Cpu).unwrap();
    let g = full.config().vision.grid();
    let refused = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(3).err().expect("pool 3 of a 4x4 grid");
    assert!(refused.to_string().contains("does not divide"), "{refused}");
    let pooled = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(2).unwrap();
    assert_eq!(pooled.patch_tokens() * 4, full.patch_tokens());
    let inf = inference(&s.base);
    let e = &encoded(&pooled, &s.world, 1)[0];
    let views = &e.images[0];
    assert_eq!(e.ids.iter().filter(|&&t| t == pooled.config().image_token_index).count(), pooled.patch_tokens());
    // Plain loops: each view's g x g patches (row-major, CLS dropped) averaged over 2 x 2 windows.
    let hs = pooled.vision_hidden_states(views, pooled.feature_layer_index()).unwrap().to_vec3::<f32>().unwrap();
    let d = hs[0][0].len();
    let mut rows = Vec::new();
    for view in &hs {
        for r in (0..g).step_by(2) {
            for c in (0..g).step_by(2) {
                let cells = [&view[1 + r * g + c], &view[1 + r * g + c + 1], &view[1 + (r + 1) * g + c], &view[1 + (r + 1) * g + c + 1]];
                rows.extend((0..d).map(|k| cells.iter().map(|cell| cell[k]).sum::<f32>() / 4.0));
            }
        }
    }
    let n = pooled.patch_tokens();
    let want = inf.encoder.project(&Tensor::from_vec(rows, (n, d), &Device::Cpu).unwrap()).unwrap();
    let got = pooled.patch_features(views, &mut Ctx::eval()).unwrap().squeeze(0).unwrap();
    assert!(max_abs(&got, &want) < 1e-5);
    // Training through the pooled slot reaches the vision tower.
    let batch = encoded(&pooled, &s.world, 2);
    let loss = pooled.loss(&batch, &mut Ctx::eval()).unwrap();
    let grads = loss.backward().unwrap();
    let patch = &pooled.params().vars["vision_tower.vision_model.embeddings.patch_embedding.weight"];
    let gnorm = grads.get(patch.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(gnorm > 0.0, "no gradient reaches the patch embedding through the pooled slot");
}

#[test]
fn a_short_stage0_run_lowers_the_loss_and_saves_a_checkpoint_lavic_model_loads() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap();
    let data = encoded(&model, &s.world, 14);
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: Schedule::Constant { warmup: 0 },
        batch_size: 7,
        ..TrainConfig::default()
    };
    let before = model.loss(&data, &mut Ctx::eval()).unwrap().to_scalar::<f32>().unwrap();
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    for _ in 0..30 {
        trainer.step(&data).unwrap();
    }
    let after = model.loss(&data, &mut Ctx::eval()).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("stage-0 smoke: loss {before:.4} -> {after:.4} after 30 steps");
    assert!(after < 0.6 * before, "loss {before} -> {after}");

    // f32 save: lavic-model's loader gives the training model's logits on a LaViC prompt.
    let out = s.root.join("trained");
    let saved = save_full(&model, &out, DType::F32).unwrap();
    assert_eq!(saved.trained, model.params().vars.len());
    let views = item_views(&s.world, &read_lines(&s.world, &Stage0Filter::default()).unwrap()[0].id, &model.anyres).unwrap();
    let prompt = lavic_model::prompt::distillation_prompt("Canvas tote");
    let check = |dir: &Path| -> f32 {
        let inf = inference(dir);
        let tp = inf.tokenizer.tokenize_prompt(&prompt).unwrap();
        let toks = inf.encoder.project(&inf.encoder.cls_from_pixels(&views).unwrap()).unwrap().squeeze(0).unwrap();
        let embeds = inf.prompt_embeds(&tp, &[toks]).unwrap();
        let want = inf.prompt_logits(&embeds, &(0..tp.ids.len()).collect::<Vec<_>>()).unwrap();
        max_abs(&model.lavic_logits(&prompt, std::slice::from_ref(&views)).unwrap(), &want)
    };
    let e32 = check(&out);
    eprintln!("f32 checkpoint: max abs(training - inference logits) = {e32:e}");
    assert!(e32 <= 1e-5, "{e32}");
    // Training changed the weights (the comparison above is not with the untrained base).
    assert!(check(&s.base) > 1e-3);
    // Reloaded for training, the saved folder gives the same stage-0 logits.
    let again = FullModel::load(&out, None, &Device::Cpu).unwrap();
    let d = max_abs(&again.logits(&data[0], &mut Ctx::eval()).unwrap(), &model.logits(&data[0], &mut Ctx::eval()).unwrap());
    assert!(d <= 1e-5, "{d}");
    assert!(save_full(&model, &out, DType::F32).unwrap_err().to_string().contains("not empty"));

    // f16 save: every weight rounded to 11 significant bits (relative error <= 2^-11 ~ 4.9e-4);
    // summed over 32-wide dot products through 2 vision layers, the projector and 1 decoder
    // layer, the logits move by ~1e-3 (measured 9.7e-4). Tolerance 5e-3.
    let out16 = s.root.join("trained16");
    let s16 = save_full(&model, &out16, DType::F16).unwrap();
    assert!(s16.bytes * 10 < saved.bytes * 6, "{} vs {} bytes", s16.bytes, saved.bytes);
    let e16 = check(&out16);
    eprintln!("f16 checkpoint: max abs(training - inference logits) = {e16:e}");
    assert!(e16 <= 5e-3, "{e16}");
}

#[test]
fn the_readout_loss_adds_the_weighted_caption_loss_of_each_images_mean_patch_feature() {
    let s = sliver();
    let bad = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_readout(-1.0).err().expect("a negative weight");
    assert!(bad.to_string().contains("read-out weight -1"), "{bad}");
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(2).unwrap().with_readout(0.5).unwrap();
    let batch = encoded(&model, &s.world, 3);
    let (with, n) = model.loss_sum(&batch, &mut Ctx::eval()).unwrap();
    let (lm, n_lm) = model.lm_loss_sum(&batch, &mut Ctx::eval()).unwrap();
    assert_eq!(n, n_lm, "the read-out adds no target tokens to the count");
    let added = (with.to_scalar::<f32>().unwrap() - lm.to_scalar::<f32>().unwrap()) / 0.5;
    // By hand: each image's patch features averaged over its tokens, lavic-model's final norm and
    // lm_head, log-softmax in plain loops, minus the log-probability of every answer word.
    let inf = inference(&s.base);
    let eos = model.tokenizer.eos_id() as i64;
    let mut want = 0f64;
    for e in &batch {
        let f = model.patch_features(&e.images[0], &mut Ctx::eval()).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let mean: Vec<f32> = (0..f[0].len()).map(|k| f.iter().map(|r| r[k]).sum::<f32>() / f.len() as f32).collect();
        let h = Tensor::from_vec(mean.clone(), (1, 1, mean.len()), &Device::Cpu).unwrap();
        let logits = inf.decoder().logits_at(&h, &[0]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        let words: Vec<i64> = e.labels.iter().copied().filter(|&l| l >= 0 && l != eos).collect();
        assert!(!words.is_empty());
        want += words.iter().map(|&t| lse - logits[t as usize] as f64).sum::<f64>();
    }
    assert!((added as f64 - want).abs() < 1e-3 * want.max(1.0), "read-out {added} vs by hand {want}");
    // Its gradient (the read-out term alone) reaches the tower's first tensor and lm_head, and
    // not the decoder layers it skips.
    let grads = (&with - &lm).unwrap().backward().unwrap();
    let norm = |name: &str| {
        let g = grads.get(model.params().vars[name].as_tensor());
        g.map_or(0.0, |g| g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    };
    assert!(norm("vision_tower.vision_model.embeddings.patch_embedding.weight") > 0.0);
    assert!(norm("multi_modal_projector.linear_2.weight") > 0.0);
    assert!(norm("language_model.lm_head.weight") > 0.0);
    assert!(norm("language_model.model.layers.0.mlp.up_proj.weight") < 1e-12);
    // A multi-image (pick) example adds no read-out: its answer names one of ten images.
    let pick = examples(&s.world, &task_lines(&s.world, "pick", 1), &model.anyres).unwrap();
    let pick = vec![model.encode(&pick[0]).unwrap()];
    let (pick_all, _) = model.loss_sum(&pick, &mut Ctx::eval()).unwrap();
    let (pick_lm, _) = model.lm_loss_sum(&pick, &mut Ctx::eval()).unwrap();
    assert!((pick_all.to_scalar::<f32>().unwrap() - pick_lm.to_scalar::<f32>().unwrap()).abs() < 1e-4);
    // Off by default: the objective is the language model's alone.
    let plain = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(2).unwrap();
    let (p, _) = plain.loss_sum(&batch, &mut Ctx::eval()).unwrap();
    assert!((p.to_scalar::<f32>().unwrap() - lm.to_scalar::<f32>().unwrap()).abs() < 1e-4);
}

#[test]
fn a_pick_line_is_one_example_over_its_ten_images_in_marker_order() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(4).unwrap();
    let lines = task_lines(&s.world, "pick", 2);
    let ex = examples(&s.world, &lines, &model.anyres).unwrap();
    for (l, e) in lines.iter().zip(&ex) {
        assert_eq!(l.images.len(), 10);
        assert!(e.prompt.starts_with(&l.question) && e.prompt.ends_with("\nAssistant:"), "{}", e.prompt);
        assert_eq!(e.target, l.answer);
        // Image k is the views of the k-th listed id.
        for (id, v) in l.images.iter().zip(&e.images) {
            assert_eq!(max_abs(v, &item_views(&s.world, id, &model.anyres).unwrap()), 0.0, "{id}");
        }
        let enc = model.encode(e).unwrap();
        assert_eq!(enc.blocks.len(), 10);
        assert_eq!(enc.ids.iter().filter(|&&t| t == model.config().image_token_index).count(), 10 * model.patch_tokens());
    }
    let enc: Vec<PatchEncoded> = ex.iter().map(|e| model.encode(e).unwrap()).collect();
    let loss = model.loss(&enc, &mut Ctx::eval()).unwrap().to_scalar::<f32>().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
}

#[test]
fn text_only_copy_lines_train_alone_with_zero_gradients_for_the_vision_side() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(4).unwrap();
    let lines = task_lines(&s.world, "copy", 4);
    assert!(lines.iter().all(|l| l.text_only && l.images.is_empty()));
    let ex = examples(&s.world, &lines, &model.anyres).unwrap();
    assert!(ex.iter().all(|e| e.images.is_empty() && e.prompt.ends_with("\nAssistant:") && !e.prompt.contains("<image>")));
    let enc: Vec<PatchEncoded> = ex.iter().map(|e| model.encode(e).unwrap()).collect();
    let loss = model.loss(&enc, &mut Ctx::eval()).unwrap();
    let grads = loss.backward().unwrap();
    let norm = |name: &str| {
        let g = grads.get(model.params().vars[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert_eq!(norm("multi_modal_projector.linear_1.weight"), 0.0);
    assert_eq!(norm("vision_tower.vision_model.embeddings.patch_embedding.weight"), 0.0);
    assert!(norm("language_model.lm_head.weight") > 0.0);
    // And a trainer steps on such a batch (every tensor has a gradient).
    let cfg = TrainConfig { batch_size: 4, ..TrainConfig::default() };
    let mut t = Trainer::new(&model, cfg).unwrap();
    let r = t.step(&enc).unwrap();
    assert!(r.loss.is_finite() && r.tokens > 0);
}

/// A sliver world, its base pooled `pool x pool`, its tokenizer, the first `n` train lines of
/// `task` and their examples (the sliver's folder lives as long as the first value).
fn aid_setup(task: &str, n: usize, pool: usize) -> (Sliver, FullModel, lavic_model::LavicTokenizer, Vec<Stage0Line>, Vec<PatchExample>) {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap().with_pool(pool).unwrap();
    let tok = lavic_model::LavicTokenizer::from_file(&s.base.join("tokenizer.json")).unwrap();
    let lines = task_lines(&s.world, task, n);
    let ex = examples(&s.world, &lines, &model.anyres).unwrap();
    (s, model, tok, lines, ex)
}

#[test]
fn recitation_makes_each_image_token_predict_a_digit_of_its_listed_id() {
    let (_s, model, tok, lines, ex) = aid_setup("pick", 2, 2);
    let per_view = model.patch_tokens() / 5;
    assert_eq!(per_view, 4);
    for (l, e) in lines.iter().zip(&ex) {
        assert_eq!(e.listed, l.listed);
        assert_eq!(l.listed.len(), 10);
        let plain = model.encode(e).unwrap();
        let rec = model.encode_reciting(e).unwrap();
        assert_eq!(rec.ids, plain.ids);
        assert_eq!(rec.blocks, plain.blocks);
        let mut changed = vec![false; rec.labels.len()];
        for (&b, id) in rec.blocks.iter().zip(&l.listed) {
            // The id's own line precedes its image: "{id}: {title}\n<image>".
            assert!(e.prompt.contains(&format!("{id}: ")), "{id}");
            assert_eq!(rec.labels[b], -100, "the token before an image recites nothing");
            for v in 0..5 {
                for p in b + v * per_view..b + (v + 1) * per_view {
                    let t = rec.labels[p + 1];
                    assert!(t >= 0);
                    // View v recites the id's (v + 1)-th token: BDEMO, then one digit each.
                    assert_eq!(tok.decode(&[t as u32], false).unwrap(), id[5 + v..6 + v], "{id} view {v}");
                    changed[p + 1] = true;
                }
            }
        }
        // Every other label is the plain encoding's: the answer and </s> stay supervised.
        for (i, (a, b)) in rec.labels.iter().zip(&plain.labels).enumerate() {
            if !changed[i] {
                assert_eq!(a, b, "label {i}");
            }
        }
        assert_eq!(rec.target_tokens(), plain.target_tokens() + 10 * model.patch_tokens());
        // The loss covers the recited tokens too.
        let n = |e: &PatchEncoded| model.loss_sum(std::slice::from_ref(e), &mut Ctx::eval()).unwrap().1;
        assert_eq!(n(&rec), rec.target_tokens());
    }
    // A line without listed ids encodes as plain; a wrong count is an error naming both counts.
    let mut e = ex[0].clone();
    e.listed.clear();
    assert_eq!(model.encode_reciting(&e).unwrap().labels, model.encode(&e).unwrap().labels);
    e.listed = vec!["BDEMO12345".into(); 3];
    let err = model.encode_reciting(&e).unwrap_err().to_string();
    assert!(err.contains("3 listed ids for 10 images"), "{err}");
    // An image right before the answer would lose an answer label to recitation: refused.
    let e = lavic_train::full::PatchExample {
        prompt: "Which one?\n<image>".into(),
        target: "BDEMO12345".into(),
        images: vec![ex[0].images[0].clone()],
        listed: vec!["BDEMO12345".into()],
        turns: Vec::new(),
    };
    model.encode(&e).unwrap();
    let err = model.encode_reciting(&e).unwrap_err().to_string();
    assert!(err.contains("BDEMO12345 is directly followed by the answer"), "{err}");
}

#[test]
fn match_flags_make_the_token_after_each_image_say_whether_it_is_the_answer() {
    let (_s, model, tok, lines, ex) = aid_setup("pick", 2, 2);
    let n = model.patch_tokens();
    let flag = Aids { recite: false, flag: true };
    let both = Aids { recite: true, flag: true };
    for (l, e) in lines.iter().zip(&ex) {
        let plain = model.encode(e).unwrap();
        let flagged = model.encode_aided(e, flag).unwrap();
        assert_eq!(flagged.ids, plain.ids);
        let mut changed = vec![false; plain.labels.len()];
        let mut yes = 0;
        for (&b, id) in flagged.blocks.iter().zip(&l.listed) {
            // The token after the image (position b + n) predicts the flag: label b + n + 1.
            let t = flagged.labels[b + n + 1];
            assert!(t >= 0, "{id}");
            let word = tok.decode(&[t as u32], false).unwrap();
            // The first piece of "yes" / "no" as an answer (the sliver's tokenizer may split them).
            let want = if *id == l.answer { "yes" } else { "no" };
            assert!(!word.trim().is_empty() && want.starts_with(word.trim()), "{id}: {word:?} for {want}");
            yes += want.starts_with('y') as usize;
            changed[b + n + 1] = true;
        }
        assert_eq!(yes, 1, "exactly the answer's image is flagged yes");
        for (i, (a, b)) in flagged.labels.iter().zip(&plain.labels).enumerate() {
            if !changed[i] {
                assert_eq!(a, b, "label {i}");
            }
        }
        assert_eq!(flagged.target_tokens(), plain.target_tokens() + 10);
        // With recitation too, the two sets of labels do not overlap: both are there.
        let rec = model.encode_reciting(e).unwrap();
        let all = model.encode_aided(e, both).unwrap();
        assert_eq!(all.target_tokens(), rec.target_tokens() + 10);
        for (i, l) in all.labels.iter().enumerate() {
            assert_eq!(*l, if changed[i] { flagged.labels[i] } else { rec.labels[i] }, "label {i}");
        }
        // Off: the plain encoding.
        assert_eq!(model.encode_aided(e, Aids::default()).unwrap().labels, plain.labels);
    }
    // An answer that is none of the listed ids is an error naming it.
    let mut e = ex[0].clone();
    e.target = "BDEMO00000".into();
    let err = model.encode_aided(&e, flag).unwrap_err().to_string();
    assert!(err.contains("\"BDEMO00000\" is none of the listed ids"), "{err}");
}

#[test]
fn quiz_lines_supervise_every_answer_and_its_end_and_no_question() {
    let (_s, model, tok, lines, ex) = aid_setup("quiz", 3, 4);
    let eos = tok.eos_id() as i64;
    for (l, e) in lines.iter().zip(&ex) {
        assert!(!l.turns.is_empty());
        assert_eq!(e.turns.len(), l.turns.len());
        assert!(e.turns.iter().zip(&l.turns).all(|((p, t), turn)| *p == format!("{}\nAssistant:", turn.question) && *t == turn.answer));
        let enc = model.encode(e).unwrap();
        // The supervised spans, in order: each answer then `</s>`; nothing else.
        let mut spans: Vec<Vec<u32>> = vec![Vec::new()];
        for (i, &lab) in enc.labels.iter().enumerate() {
            if lab >= 0 {
                assert_eq!(lab, enc.ids[i] as i64, "a label is its own token");
                spans.last_mut().unwrap().push(lab as u32);
                if lab == eos {
                    spans.push(Vec::new());
                }
            }
        }
        assert!(spans.pop().unwrap().is_empty());
        let want: Vec<&str> = std::iter::once(l.answer.as_str()).chain(l.turns.iter().map(|t| t.answer.as_str())).collect();
        let got: Vec<String> = spans.iter().map(|s| tok.decode(s, true).unwrap().trim().to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(enc.blocks.len(), 10);
        // The list and the first question are encoded as without the follow-ups.
        let first = lavic_train::full::PatchExample { turns: Vec::new(), ..e.clone() };
        let alone = model.encode(&first).unwrap();
        let n = alone.ids.len() - 1;
        assert_eq!(enc.ids[..n], alone.ids[..n]);
        assert_eq!(enc.labels[..n], alone.labels[..n]);
        assert_eq!(enc.ids[n], tok.eos_id());
        // Every follow-up question is there, unsupervised.
        let text = tok.decode(&enc.ids, false).unwrap();
        for t in &l.turns {
            assert!(text.contains(&t.question), "{}", t.question);
        }
        // Recitation and match flags still apply to the images.
        let aided = model.encode_aided(e, Aids { recite: true, flag: true }).unwrap();
        assert_eq!(aided.target_tokens(), enc.target_tokens() + 10 * 5 + 10);
    }
    // A follow-up that holds an image token, or adds no token, is an error.
    let mut e = ex[0].clone();
    e.turns[0].0 = format!("Which?\n<image>\n{}", e.turns[0].0);
    let err = model.encode(&e).unwrap_err().to_string();
    assert!(err.contains("holds the image token"), "{err}");
    let mut e = ex[0].clone();
    e.turns[0].1 = String::new();
    let err = model.encode(&e).unwrap_err().to_string();
    assert!(err.contains("adds no token"), "{err}");
}
