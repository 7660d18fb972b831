//! A small world written to a temporary folder and read back with the readers the rest of lavic
//! uses: lavic-catalog's items ingest, lavic-model's image decoder and AnyRes view extraction
//! (3, 4 and 5 views all occur, each item as planned), the Reddit-Amazon conversation fields;
//! the same seed gives byte-identical files, another seed different ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use lavic_demo::{generate, write, CatalogConfig, WorldConfig};
use lavic_model::anyres::{decode_rgb, views_u8, DecodeLimits};
use lavic_model::AnyResConfig;
use serde_json::Value;

fn small(seed: u64, tile: u32) -> WorldConfig {
    let mut c = WorldConfig::new(seed);
    c.catalog = CatalogConfig { lines_per_kind: 5, valid_lines: 1, test_lines: 1, tile };
    c.conversations = [60, 20, 40];
    c
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["", "images"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.insert(format!("{sub}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn anyres(tile: usize) -> AnyResConfig {
    let t = tile;
    AnyResConfig {
        tile: t,
        shortest_edge: t,
        pinpoints: vec![(t, 2 * t), (2 * t, t), (2 * t, 2 * t), (3 * t, t), (t, 3 * t)],
        // Only the view count matters here, not the normalisation.
        mean: [0.0; 3],
        std: [1.0; 3],
        rescale: 1.0 / 255.0,
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_world() {
    let d = tempfile::tempdir().unwrap();
    let w = generate(&small(11, 64)).unwrap();
    write(&w, &d.path().join("a")).unwrap();
    write(&generate(&small(11, 64)).unwrap(), &d.path().join("b")).unwrap();
    write(&generate(&small(12, 64)).unwrap(), &d.path().join("c")).unwrap();
    let (a, b, c) = (files(&d.path().join("a")), files(&d.path().join("b")), files(&d.path().join("c")));
    assert!(a.len() > 80, "{} files", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs between two runs with the same seed");
    }
    for k in ["/items.jsonl", "/train.jsonl", "/valid.jsonl", "/test.jsonl"] {
        assert_ne!(a[k], c[k], "{k} is the same for seeds 11 and 12");
    }
    // Nothing is left beside the output, and an existing non-empty folder is refused.
    let names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let e = write(&w, &d.path().join("a")).unwrap_err().to_string();
    assert!(e.contains("exists and is not empty"), "{e}");
}

#[test]
fn items_read_back_with_the_catalog_ingest_and_give_3_4_and_5_views() {
    for tile in [32u32, 64] {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("world");
        let summary = write(&generate(&small(3, tile)).unwrap(), &out).unwrap();
        let items = lavic_catalog::read_items(&out.join("items.jsonl"), lavic_catalog::InputFormat::Auto).unwrap();
        assert_eq!(items.len(), summary.items);
        let cfg = anyres(tile as usize);
        let mut seen = HashMap::new();
        for it in &items {
            // Metadata is the item line's other fields, kept as their exact JSON text.
            let meta: serde_json::Value = serde_json::from_str(&it.metadata).unwrap();
            let bytes = std::fs::read(out.join("images").join(it.image.as_deref().unwrap())).unwrap();
            let img = decode_rgb(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(
                (img.width as u64, img.height as u64),
                (meta["width"].as_u64().unwrap(), meta["height"].as_u64().unwrap())
            );
            let views = views_u8(&img, &cfg).len();
            assert_eq!(views as u64, meta["views"].as_u64().unwrap(), "{} ({}x{}, tile {tile})", it.id, img.width, img.height);
            *seen.entry(views).or_insert(0) += 1;
            assert!(!it.title.is_empty() && meta["description"].as_str().is_some_and(|s| s.len() > 20));
        }
        for v in [3, 4, 5] {
            assert!(seen.get(&v).copied().unwrap_or(0) >= 5, "tile {tile}: views {seen:?}");
        }
    }
}

#[test]
fn conversations_have_the_reddit_amazon_fields_and_disjoint_splits() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("world");
    write(&generate(&small(5, 64)).unwrap(), &out).unwrap();
    let items: HashMap<String, Value> =
        jsonl(&out.join("items.jsonl")).into_iter().map(|v| (v["id"].as_str().unwrap().to_string(), v)).collect();
    let mut contexts: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut gts: HashMap<&str, HashSet<String>> = HashMap::new();
    for split in ["train", "valid", "test"] {
        let lines = jsonl(&out.join(format!("{split}.jsonl")));
        assert_eq!(lines.len(), [60, 20, 40][["train", "valid", "test"].iter().position(|s| *s == split).unwrap()]);
        for l in &lines {
            let ctx = l["context"].as_str().unwrap();
            assert!(ctx.starts_with("<submission>") && ctx.contains("</submission>\n") && ctx.ends_with('\n'));
            let gt: Vec<&str> = l["gt_items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            for key in ["candidates_st", "candidates_gpt_large"] {
                let c: Vec<&str> = l[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                assert_eq!(c.len(), 10);
                assert!(gt.iter().all(|g| c.contains(g)), "{key}: ground truth not among the candidates");
                assert!(c.iter().all(|id| items[*id]["split"] == split));
            }
            assert!(l["context_items"].is_array() && l["gt"].is_string());
            contexts.entry(split).or_default().insert(ctx.to_string());
            gts.entry(split).or_default().extend(gt.iter().map(|s| s.to_string()));
        }
    }
    for (a, b) in [("train", "valid"), ("train", "test"), ("valid", "test")] {
        assert!(contexts[a].is_disjoint(&contexts[b]), "{a} and {b} share a conversation");
        assert!(gts[a].is_disjoint(&gts[b]), "{a} and {b} share a ground-truth item");
    }
    let truth = jsonl(&out.join("truth.jsonl"));
    assert_eq!(truth.len(), 120);
    assert!(truth.iter().any(|t| t["split"] == "test" && t["held_out_template"] == true));
    assert!(truth.iter().all(|t| t["split"] == "test" || t["held_out_template"] == false));
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(out.join("world.json")).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 5);
    assert_eq!(manifest["summary"]["items"].as_u64().unwrap() as usize, items.len());
    let stage0 = jsonl(&out.join("stage0.jsonl"));
    let train = items.values().filter(|i| i["split"] == "train").count();
    assert_eq!(
        stage0.len(),
        8 * items.len() + (lavic_demo::stage0::PICKS_PER_ITEM + lavic_demo::stage0::COPIES_PER_ITEM + lavic_demo::stage0::QUIZZES_PER_ITEM) * train
    );
    for s in &stage0 {
        let it = &items[s["id"].as_str().unwrap()];
        assert_eq!(s["split"], it["split"]);
        match s["task"].as_str().unwrap() {
            "main" => assert_eq!(s["answer"], it["look"]["main"]),
            "pattern" => assert_eq!(s["answer"], it["look"]["pattern"]),
            "describe" => assert_eq!(s["answer"], it["description"]),
            "distill" => {
                // LaViC's stage-1 prompt with the image marker where its 5 item tokens go.
                let prompt = format!("{}\nAssistant:", s["question"].as_str().unwrap());
                let title = it["title"].as_str().unwrap();
                let want = lavic_model::prompt::distillation_prompt(title).replace(&lavic_model::prompt::image_placeholders(), "<image>");
                assert_eq!(prompt, want);
                assert_eq!(s["answer"], it["description"]);
            }
            "copy" => {
                // The answer is the id listed before the asked item's title (fresh ids, not the
                // catalog's).
                let line = format!("{}: {}\n", s["answer"].as_str().unwrap(), it["title"].as_str().unwrap());
                assert!(s["question"].as_str().unwrap().contains(&line), "{s}");
                assert!(!items.contains_key(s["answer"].as_str().unwrap()));
                assert_eq!(s["text_only"], true);
                assert!(s.get("images").is_none());
            }
            "pick" => {
                let line = format!("{}: {}\n<image>\n", s["answer"].as_str().unwrap(), it["title"].as_str().unwrap());
                assert!(s["question"].as_str().unwrap().contains(&line), "{s}");
                assert!(!items.contains_key(s["answer"].as_str().unwrap()));
                let imgs = s["images"].as_array().unwrap();
                assert!(imgs.iter().all(|i| items[i.as_str().unwrap()]["split"] == "train") && imgs.contains(&s["id"]));
            }
            _ => assert!(!s["answer"].as_str().unwrap().is_empty()),
        }
    }
}

#[test]
fn the_random_base_model_loads_in_lavic_model_and_scores_a_demo_conversation() {
    use lavic_demo::base::{write_base, BaseConfig};
    use lavic_model::{Candidate, LavicModel, LoadOptions, RecommendInput, RecommendOptions};

    let world = generate(&small(8, 32)).unwrap();
    let d = tempfile::tempdir().unwrap();
    let (images, base) = (d.path().join("world"), d.path().join("base"));
    write(&world, &images).unwrap();
    let mut cfg = BaseConfig::demo(1);
    (cfg.vision_hidden, cfg.vision_layers, cfg.text_hidden, cfg.text_layers, cfg.text_intermediate, cfg.vocab) = (32, 1, 32, 1, 64, 500);
    let extra = vec![lavic_model::prompt::distillation_prompt(""), lavic_model::prompt::recommendation_head().to_string()];
    let s = write_base(&world, &cfg, &extra, &base).unwrap();
    assert_eq!((s.pieces, s.vocab_rows % 64), (500, 0));
    // Same inputs, same files.
    let again = d.path().join("again");
    write_base(&world, &cfg, &extra, &again).unwrap();
    for f in ["tokenizer.json", "config.json", "preprocessor_config.json", "model.safetensors"] {
        assert!(std::fs::read(base.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(), "{f} differs");
    }
    let e = write_base(&world, &cfg, &extra, &base).unwrap_err().to_string();
    assert!(e.contains("exists and is not empty"), "{e}");

    let mut o = LoadOptions::new(&base);
    o.dtype = Some(lavic_model::DType::F32);
    let model = LavicModel::load(&o).unwrap();
    let tok = &model.tokenizer;
    assert_eq!(tok.len(), 500 + 2 + 5);
    assert_eq!(tok.item_token_ids(), [502, 503, 504, 505, 506]);
    // The world's text round-trips; words it never saw fall back to bytes, not <unk>.
    let conv = &world.conversations[2][0];
    for text in [conv.context.as_str(), "The mug is red with blue stripes.", "Größe: ünïcödé ☂"] {
        let ids = tok.encode_plain(text).unwrap();
        assert!(!ids.contains(&0), "{text:?} has <unk>");
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
    }
    // An item id gets the same pieces in the candidate list (after "\n") as in the answer (after
    // "Assistant:"), one piece per digit, so a recommendation can be copied token by token.
    let id = world.catalog.items[conv.candidates_st[0]].id.as_str();
    let prompt = lavic_model::prompt::recommendation_prompt(&conv.context, &[lavic_model::prompt::PromptCandidate { id, title: "T" }]);
    let with_answer = tok.encode(&format!("{prompt}{id}")).unwrap();
    let in_list = tok.encode_plain(&format!("Candidates:\n{id}: T")).unwrap();
    let answer = &with_answer[tok.encode(&prompt).unwrap().len()..];
    assert!(in_list.windows(answer.len()).any(|w| w == answer), "{id} is cut differently in the list: {in_list:?} vs {answer:?}");
    let digits = id.chars().filter(char::is_ascii_digit).count();
    let tail: Vec<String> = answer[answer.len() - digits..].iter().map(|&t| tok.decode(&[t], true).unwrap()).collect();
    assert_eq!(tail.concat(), id[id.len() - digits..], "{id}: {answer:?}");
    assert!(tail.iter().all(|d| d.len() == 1), "{id}: one piece per digit, got {tail:?}");

    // Merges learned from the world compress its text (500 pieces: about 2.5 characters a token).
    let chars = conv.context.chars().count();
    let ids = tok.encode_plain(&conv.context).unwrap();
    assert!(ids.len() * 2 < chars, "{} tokens for {chars} characters", ids.len());

    // A recommendation over real candidates and their images runs end to end.
    let cands: Vec<Candidate> = conv
        .candidates_st
        .iter()
        .map(|i| {
            let it = &world.catalog.items[*i];
            let img = model.encoder.decode(&std::fs::read(images.join("images").join(format!("{}.png", it.id))).unwrap()).unwrap();
            let tokens = model.encoder.project(&model.encoder.encode_cls(&[img]).unwrap()).unwrap().squeeze(0).unwrap();
            Candidate { id: it.id.clone(), title: it.title.clone(), tokens }
        })
        .collect();
    let r = model
        .recommend(&RecommendInput { context: conv.context.clone(), candidates: cands, options: RecommendOptions::default() })
        .unwrap();
    let pick = r.pick.unwrap();
    assert!(conv.candidates_st.iter().any(|i| world.catalog.items[*i].id == pick));
}
