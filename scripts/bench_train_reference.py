#!/usr/bin/env python3
"""Stage-2 training cost per sample of the reference's way (transformers 4.51.3 + peft 0.15.2 + torch
2.7.1, f32 on CPU), for docs/PERFORMANCE.md, side by side with `lavic train recommend`.

The reference's stage-2 step (LAVIC_REFERENCE.md section 6) runs, for every sample, the vision tower on
the 5 views of each of the 10 candidate images, the projector, the LM forward with LoRA on every LM
Linear, the backward, clip_grad_norm_(1.0) and AdamW. This script does exactly that, batch 1, on the
same 30 conversations and the same prompts as `lavic train recommend --max-length N` (shortened from
the front; every candidate "No Title" and the white image, as the fixture run), and prints samples/s.

    /work/pyenv/bin/python scripts/bench_train_reference.py [--threads 2] [--max-length 448] [--model DIR]
    /work/pyenv/bin/python scripts/bench_train_reference.py --write-midsize DIR   # the mid-size random model

The mid-size model is tiny-mistral's layout scaled up (random weights, seed 0): text width 1024, 8 layers,
16 heads / 4 KV heads, MLP 3584; the tiny vision tower (width 32, 32 px images) is kept, so the cost is
the language model's, as in stage 2.

Not part of the product or of CI; run by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import torch
from safetensors.torch import load_file
import transformers
from transformers import LlavaNextForConditionalGeneration, PreTrainedTokenizerFast
from peft import LoraConfig, get_peft_model

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
ITEM_TOKENS = [f"<ItemImageEmb{i}>" for i in range(1, 6)]
BLOCK = "".join(ITEM_TOKENS)
HEAD = (
    "You are an AI assistant specialized in providing personalized product recommendations based on "
    "user conversations. You are given a conversation between a user seeking recommendation (denoted "
    "by <submission>) and other users providing comments (denoted by <comment>). You are also given a "
    "set of candidate products with their IDs, titles and images formatted as \"ID: title\" followed by "
    "an image. Among the candidates, recommend the most relevant product to the seeker. Only reply with "
    "its ID, and don't say anything else.\n\nConversation:\n"
)
LM_TARGETS = (r"language_model\.model\.layers\.\d+\."
              r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


def write_midsize(out: Path) -> None:
    import shutil
    from transformers import LlavaNextConfig
    cfg = LlavaNextConfig.from_pretrained(str(FIX / "tiny-mistral"))
    t = cfg.text_config
    t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads = 1024, 8, 16, 4
    t.intermediate_size, t.head_dim = 3584, 64
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(cfg).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    shutil.copy(FIX / "tiny-mistral" / "preprocessor_config.json", out / "preprocessor_config.json")
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=448)
    ap.add_argument("--model", default=str(FIX / "tiny-mistral"))
    ap.add_argument("--pixels", default=str(FIX / "reference" / "mistral.safetensors"))
    ap.add_argument("--write-midsize", default=None)
    a = ap.parse_args()
    if a.write_midsize:
        write_midsize(Path(a.write_midsize))
        return
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(FIX / "tokenizer" / "tokenizer.json"),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ITEM_TOKENS})
    model = LlavaNextForConditionalGeneration.from_pretrained(a.model, torch_dtype=torch.float32,
                                                              attn_implementation="eager")
    model.resize_token_embeddings(len(tok))
    model.language_model.config.vocab_size = len(tok)
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, bias="none", target_modules=LM_TARGETS))
    pm.train()
    m = pm.base_model.model
    white = load_file(a.pixels)["pixel.white"]  # [5, 3, S, S], views zero-padded to 5
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=5e-5, weight_decay=1e-5)

    samples = []
    for line in (FIX / "train_cli" / "conversations.jsonl").read_text().splitlines():
        c = json.loads(line)
        for g in c["gt_items"]:
            cands = list(c["candidates_st"])
            if g not in cands:
                cands[0] = g
            tail = "\n\nCandidates:\n" + "".join(f"{cid}: No Title\n{BLOCK}\n" for cid in cands) + "\nAssistant:"
            ctx_ids = tok(c["context"], add_special_tokens=False)["input_ids"]
            fixed = len(tok(HEAD + tail + g)["input_ids"])
            keep = max(0, a.max_length - fixed)
            ctx = tok.decode(ctx_ids[len(ctx_ids) - keep:]) if keep < len(ctx_ids) else c["context"]
            prompt = HEAD + ctx + tail
            ids = tok(prompt + g)["input_ids"]
            n = len(tok(prompt)["input_ids"])
            samples.append((ids, n))

    def step(ids: list[int], n: int) -> float:
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :n] = -100
        pv = white.repeat(10, 1, 1, 1)  # the reference re-encodes all 10 candidates' views per sample
        out = m.vision_tower(pv, output_hidden_states=True)
        toks = m.multi_modal_projector(out.hidden_states[-1][:, 0]).reshape(10, 5, -1)
        emb = m.get_input_embeddings()(x).clone()
        starts = [i for i, t in enumerate(ids) if t == 32002]
        for c, s in enumerate(starts):
            emb[0, s:s + 5] = toks[c]
        loss = m.language_model(inputs_embeds=emb, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in pm.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step(*samples[0])  # warm-up
    t = time.perf_counter()
    for ids, n in samples:
        step(ids, n)
    dt = time.perf_counter() - t
    tokens = sum(len(i) for i, _ in samples)
    print(json.dumps({"samples": len(samples), "seconds": dt, "samples_per_s": len(samples) / dt,
                      "tokens_per_s": tokens / dt, "mean_tokens": tokens / len(samples), "threads": a.threads,
                      "model": a.model, "torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
