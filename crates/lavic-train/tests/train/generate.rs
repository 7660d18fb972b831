//! Batched greedy generation ([`FullModel::generate_batch`]: patch features once per item, the
//! prompts once through the decoder, then one token per row and step over a KV cache) gives the
//! texts of the one-at-a-time [`FullModel::generate`] (which reruns everything per token), on
//! prompts of different lengths, with rows that stop at `</s>` while others go on.

use candle_core::Device;
use lavic_train::full::{stage0_prompt, FullModel};
use lavic_train::generate::Question;
use lavic_train::optim::{AdamWConfig, Schedule};
use lavic_train::stage0::{examples, item_views, read_lines, Stage0Filter};
use lavic_train::trainer::{TrainConfig, Trainer};

use crate::stage0::sliver;

#[test]
fn batched_generation_gives_the_one_at_a_time_texts() {
    let s = sliver();
    let model = FullModel::load(&s.base, None, &Device::Cpu).unwrap();
    // A few steps on every question about 2 items: long descriptions, short other answers.
    let one_image = ["describe", "kind", "main", "trim", "pattern", "detail", "yes_no"].map(String::from).to_vec();
    let f = Stage0Filter { splits: vec!["train".into()], tasks: one_image, limit: Some(14) };
    let lines = read_lines(&s.world, &f).unwrap();
    let data: Vec<_> = examples(&s.world, &lines, &model.anyres).unwrap().iter().map(|e| model.encode(e).unwrap()).collect();
    let cfg = TrainConfig {
        optim: AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..AdamWConfig::default() },
        schedule: Schedule::Constant { warmup: 0 },
        batch_size: 7,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    for _ in 0..60 {
        trainer.step(&data).unwrap();
    }
    // Those questions (prompts of different lengths) and a few about other items.
    // (one-image questions: pick, distill and copy lines carry their own image markers)
    let all: Vec<_> = read_lines(&s.world, &Stage0Filter::default()).unwrap().into_iter().filter(|l| l.images.is_empty() && !l.text_only).collect();
    let picked: Vec<_> = lines.iter().chain(all.iter().skip(40).step_by(3).take(4)).collect();
    let lens: std::collections::BTreeSet<usize> =
        picked.iter().map(|l| model.tokenizer.encode(&stage0_prompt(&l.question)).unwrap().len()).collect();
    assert!(lens.len() >= 3, "prompt lengths {lens:?}");
    let questions: Vec<Question> = picked
        .iter()
        .map(|l| Question { prompt: stage0_prompt(&l.question), images: vec![item_views(&s.world, &l.id, &model.anyres).unwrap()] })
        .collect();
    // A budget that most answers fit (rows leave the batch at different steps) and one that cuts
    // the longer answers off.
    for max_new in [12, 3] {
        let batch = model.generate_batch(&questions, max_new).unwrap();
        let mut finished = 0;
        let mut lengths = std::collections::BTreeSet::new();
        for (q, a) in questions.iter().zip(&batch) {
            let one = model.generate(&q.prompt, &q.images, max_new).unwrap();
            eprintln!(
                "{:?} -> {one:?} (batched {:?}, {} tokens, finished {})",
                q.prompt.lines().nth(1),
                a.text,
                a.tokens.len(),
                a.finished
            );
            assert_eq!(a.text, one, "{}", q.prompt);
            assert_eq!(a.text, model.tokenizer.decode(&a.tokens, true).unwrap());
            assert!(a.tokens.len() <= max_new && (a.finished || a.tokens.len() == max_new), "{a:?}");
            finished += a.finished as usize;
            lengths.insert((a.tokens.len(), a.finished));
        }
        eprintln!("max_new {max_new}: {finished} of {} finished, (tokens, finished) {lengths:?}", batch.len());
        assert!(lengths.len() >= 2, "every answer has the same length: {lengths:?}");
        if max_new == 3 {
            assert!(finished > 0 && finished < batch.len(), "{finished} of {} answers ended with </s>", batch.len());
        }
    }
    let batch = model.generate_batch(&questions, 12).unwrap();
    // One question alone in a batch gives its text too.
    assert_eq!(model.generate_batch(&questions[2..3], 12).unwrap()[0], batch[2]);
    assert!(model.generate_batch(&[], 12).unwrap().is_empty());
}
