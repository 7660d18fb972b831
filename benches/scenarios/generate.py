#!/usr/bin/env python3
"""Writes the lavic-bench / ghz request files of this folder from the Reddit-Amazon validation data.

    python3 benches/scenarios/generate.py [DATA_DIR]     (default: ../shared/data/reddit-amazon)

Standard library only; deterministic. Each file is a JSON array of RecommendRequest messages in
ghz's `-D` format (lavic-bench and ghz use the elements round-robin):

- dialogues: the 8 real conversations (all_beauty + amazon_fashion + amazon_home validation splits,
  1,923 dialogues) whose `context` length in characters is closest to the median (p50) or to the
  90th percentile (p90) of all of them;
- candidates: the 5 items of `lavic serve`'s demo catalog (DEMO000001..DEMO000005: catalog lookup
  and projector, as in production) followed by 5 (10-candidate files) or 15 (20-candidate files) of
  the conversation's own candidate ids as inline items with a real product title from
  item2meta_valid.jsonl (titles of the conversation items are not available offline) and no image
  (the server uses the white image's tokens, computed once), so the files work against a plain
  `lavic serve` with no catalog;
- mode: MODE_DEFAULT, and MODE_FREE in the `-free` files.
"""
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "reddit-amazon"
DEMO = [f"DEMO00000{i}" for i in range(1, 6)]
PER_FILE = 8


def main() -> None:
    convs = []
    for cat in ("all_beauty", "amazon_fashion", "amazon_home"):
        with open(DATA / cat / "valid.jsonl", encoding="utf-8") as f:
            convs += [json.loads(line) for line in f]
    with open(DATA / "item2meta_valid.jsonl", encoding="utf-8") as f:
        titles = [json.loads(line)["title"] for line in f]
    lengths = sorted(len(c["context"]) for c in convs)
    targets = {
        "p50": statistics.median_low(lengths),
        "p90": lengths[int(0.9 * (len(lengths) - 1))],
    }
    counter = 0
    index = {}
    for name, target in targets.items():
        order = sorted(range(len(convs)), key=lambda i: (abs(len(convs[i]["context"]) - target), i))
        for k in (10, 20):
            base = []
            for i in order[:PER_FILE]:
                c = convs[i]
                pool = list(dict.fromkeys(c["candidates_st"] + c["candidates_gpt_large"]))
                own = [x for x in pool if x not in DEMO][: k - len(DEMO)]
                inline = []
                for cid in own:
                    inline.append({"id": cid, "title": titles[counter % len(titles)]})
                    counter += 1
                base.append({"context": c["context"], "candidate_ids": DEMO + own, "inline_items": inline})
            for mode in ("MODE_DEFAULT", "MODE_FREE"):
                reqs = [dict(r, mode=mode) for r in base]
                suffix = "-free" if mode == "MODE_FREE" else ""
                path = HERE / f"recommend-{name}-{k}{suffix}.json"
                path.write_text(json.dumps(reqs, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
                chars = [len(r["context"]) for r in reqs]
                index[path.name] = {"dialogue_chars": [min(chars), max(chars)], "candidates": k, "mode": mode}
    (HERE / "index.json").write_text(json.dumps({"context_chars": targets, "conversations": len(convs), "files": index}, indent=1) + "\n")
    print(json.dumps(targets), len(convs), "conversations")


if __name__ == "__main__":
    main()
