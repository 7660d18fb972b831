#!/usr/bin/env python3
"""Side by side with PyTorch (transformers) on this CPU, on one checkpoint written by our own code.

Optional, by hand (not in CI): needs the fixture environment of tests/fixtures/requirements.txt
(torch, transformers 4.51, safetensors) in its own venv, and a built `lavic` binary:

    CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo build -p lavic-server --bin lavic
    /work/pyenv/bin/python benches/compare-torch.py --lavic target/debug/lavic --rounds 5

Steps:
1. `lavic dev write-realsize --size mid` writes a random ~137M-parameter LLaVA-NeXT (CLIP 6 x 384
   at 224 px, Mistral 12 x 768 with 4 KV heads, vocabulary 32,064; bf16 on disk) unless --reuse.
2. The request: the first dialogue of benches/scenarios/recommend-p50-20.json (a real
   median-length Reddit conversation) with the first 10 of its real-titled candidates; the
   images of tests/fixtures/images in turn (5 views each).
3. `lavic dev compare --dump` writes the prompt's token ids, image slots, pixel views and our
   prefill logits and greedy tokens; transformers loads the same checkpoint (f32 on both sides,
   `resize_token_embeddings` to our tokenizer's 32,007 rows as LaViC does) and must give the same
   logits (max abs difference printed) and the same greedy tokens on the same input.
4. Rounds, interleaved (ours, then theirs): ours is one `lavic dev compare --runs 1` process
   (each measurement after one warm-up); theirs runs each measurement once in this process
   (warmed up in round 0). Both use the same thread count (RAYON_NUM_THREADS for candle,
   torch.set_num_threads). The load average is read before and after every round.

Measurements: tower over 5 views (one image) and over 50 (10 candidates); prefill of the prompt
(logits at the last position only on both sides); a 10-step greedy decode after it; the
reference's whole per-request path (tower over the 10 candidates' views, projector, prompt, greedy
`generate` of 10 tokens) against ours: default-mode and FREE requests with precomputed candidate
tokens (what a catalog gives) and the same with the tower run per request.
Prints JSON lines, then a Markdown table of medians (seconds) for docs/PERFORMANCE.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlavaNextForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ["square.jpg", "tall.png", "wide3.jpg", "wide2.png", "small.png"]


def loadavg():
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def request_file(path, candidates):
    scen = json.loads((ROOT / "benches/scenarios/recommend-p50-20.json").read_text())[0]
    items = scen["inline_items"][:candidates]
    if len(items) < candidates:
        sys.exit(f"the scenario has only {len(items)} inline items")
    path.write_text(json.dumps({"context": scen["context"], "candidates": items}))


def run_ours(args, ckpt, req, runs, dump=None):
    cmd = [args.lavic, "dev", "compare", "--model-dir", str(ckpt / "model"), "--request", str(req),
           "--images", ",".join(str(ROOT / "tests/fixtures/images" / i) for i in IMAGES),
           "--steps", str(args.steps), "--runs", str(runs)]
    if dump:
        cmd += ["--dump", str(dump)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), RUST_LOG="warn")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["measure"]: r for r in rows if r.get("phase") == "compare"}, rows


class Theirs:
    """The same checkpoint and input in transformers, f32, the reference's calls."""

    def __init__(self, ckpt, dump):
        self.model = LlavaNextForConditionalGeneration.from_pretrained(ckpt / "model", torch_dtype=torch.float32)
        self.model.eval()
        meta = json.loads((dump / "prompt.json").read_text())
        t = load_file(dump / "tensors.safetensors")
        self.ours_logits, self.ours_greedy, self.ours_cls = t["prefill_logits"][0], meta["greedy"], t["cls"]
        # LaViC resizes the vocabulary to len(tokenizer) (the five <ItemImageEmbN> tokens added)
        self.model.resize_token_embeddings(self.ours_logits.shape[-1])
        self.lm = self.model.language_model
        self.ids = torch.tensor([meta["ids"]])
        self.slots = torch.tensor(meta["image_slots"]).flatten()
        self.pixels = t["pixels"]
        self.attn = self.lm.config._attn_implementation

    def tower(self, pixels):
        # LaViC: CLS (token 0) of the last layer's output, before post_layernorm
        return self.model.vision_tower(pixels).last_hidden_state[:, 0]

    def embeds(self, image_tokens):
        e = self.lm.get_input_embeddings()(self.ids).clone()
        e[0, self.slots] = image_tokens.to(e.dtype)
        return e

    def prefill(self, embeds):
        out = self.lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        return out.past_key_values, out.logits[:, -1]

    def decode(self, cache, logits, steps):
        fed = []
        for _ in range(steps):
            nxt = int(logits[0].argmax())
            fed.append(nxt)
            out = self.lm(input_ids=torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1]
        return fed

    def reference_path(self, steps):
        tokens = self.model.multi_modal_projector(self.tower(self.pixels))
        e = self.embeds(tokens)
        return self.lm.generate(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
                                max_new_tokens=steps, do_sample=False, num_beams=1, pad_token_id=2)

    def check(self, steps):
        """Same input, same function: our logits and greedy tokens against theirs."""
        cls = self.tower(self.pixels)
        e = self.embeds(self.model.multi_modal_projector(cls))
        cache, logits = self.prefill(e)
        fed = self.decode(cache, logits, steps)
        return {"cls_max_abs_diff": float((cls - self.ours_cls.reshape(cls.shape)).abs().max()),
                "prefill_logits_max_abs_diff": float((logits[0] - self.ours_logits).abs().max()),
                "prefill_logits_max_abs": float(logits.abs().max()),
                "greedy_same": fed == self.ours_greedy, "greedy_theirs": fed, "greedy_ours": self.ours_greedy,
                "prompt_tokens": self.ids.shape[1], "attn_implementation": self.attn}

    def measure(self, steps):
        """One timed run of every measurement (seconds)."""
        out = {}

        def timed(name, f):
            t = time.perf_counter()
            r = f()
            out[name] = time.perf_counter() - t
            return r

        timed("tower_5_views", lambda: self.tower(self.pixels[:5]))
        cls = timed("tower_all_views", lambda: self.tower(self.pixels))
        e = self.embeds(self.model.multi_modal_projector(cls))
        timed("prefill", lambda: self.prefill(e))
        cache, logits = self.prefill(e)
        timed("decode_steps", lambda: self.decode(cache, logits, steps))
        timed("reference_path", lambda: self.reference_path(steps))
        return out


ROWS = [  # (label, our measure, their measure)
    ("vision tower, 5 views (one image)", "tower_5_views", "tower_5_views"),
    ("vision tower, 50 views (10 candidates)", "tower_all_views", "tower_all_views"),
    ("prefill, {prompt_tokens}-token prompt, 10 candidates", "prefill", "prefill"),
    ("greedy decode, {steps} steps after the prefill", "decode_steps", "decode_steps"),
    ("reference path (tower 50 views + prompt + {steps}-token greedy) vs ours: default mode, catalog tokens",
     "request_default", "reference_path"),
    ("... vs ours: FREE mode, catalog tokens", "request_free", "reference_path"),
    ("... vs ours: default mode, tower per request", "path_default_with_tower", "reference_path"),
    ("... vs ours: FREE mode, tower per request", "path_free_with_tower", "reference_path"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lavic", default=str(ROOT / "target/debug/lavic"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--reuse", help="folder written by a previous run (model/ inside)")
    p.add_argument("--work", help="work folder (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)  # inference, as the reference's torch.no_grad()
    work = Path(args.work or tempfile.mkdtemp(prefix="lavic-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.reuse) if args.reuse else work / "ckpt"
    if not args.reuse:
        subprocess.run([args.lavic, "dev", "write-realsize", "--size", "mid", "--out", str(ckpt)], check=True)
    req, dump = work / "request.json", work / "dump"
    request_file(req, args.candidates)
    _, rows = run_ours(args, ckpt, req, 1, dump=dump)
    theirs = Theirs(ckpt, dump)
    check = theirs.check(args.steps)
    print(json.dumps({"phase": "check", **check}), flush=True)
    theirs.measure(args.steps)  # warm-up
    ours_runs, their_runs, loads = {}, {}, []
    for r in range(args.rounds):
        before = loadavg()
        ours, _ = run_ours(args, ckpt, req, 1)
        mid = loadavg()
        t = theirs.measure(args.steps)
        after = loadavg()
        loads += [before[0], mid[0], after[0]]
        for k, v in ours.items():
            ours_runs.setdefault(k, []).append(v["seconds"][0])
        for k, v in t.items():
            their_runs.setdefault(k, []).append(v)
        print(json.dumps({"phase": "round", "round": r, "ours": {k: v["seconds"][0] for k, v in ours.items()},
                          "theirs": t, "loadavg_1m": [before[0], mid[0], after[0]]}), flush=True)
    fmt = {"prompt_tokens": check["prompt_tokens"], "steps": args.steps}
    print(f"\nthreads {args.threads}, rounds {args.rounds}, load average (1 min) during the rounds: "
          f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}")
    # Medians, and the fastest round of each side (on a shared machine the best estimate of what
    # each can do when it gets the cores; OpenMP's spinning threads suffer most from contention).
    print("\n| measurement | ours, median (s) | PyTorch, median (s) | ours / PyTorch, medians "
          "| ours / PyTorch, fastest rounds |\n| --- | ---: | ---: | ---: | ---: |")
    for label, o, t in ROWS:
        mo, mt = statistics.median(ours_runs[o]), statistics.median(their_runs[t])
        fo, ft = min(ours_runs[o]), min(their_runs[t])
        print(f"| {label.format(**fmt)} | {mo:.3f} | {mt:.3f} | {mo / mt:.2f}x | {fo / ft:.2f}x |")


if __name__ == "__main__":
    main()
