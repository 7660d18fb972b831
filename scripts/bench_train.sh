#!/usr/bin/env bash
# Stage-2 training throughput of `lavic train recommend` (one epoch over the 30 fixture
# conversations, batch 1, LoRA r 8 on every LM Linear, dropout 0.1, catalog image tokens) next to
# the reference's way (scripts/bench_train_reference.py: transformers + peft, vision tower re-run
# on all 10 candidates per sample), same prompts, same CPU, one run each. Numbers for
# docs/PERFORMANCE.md. Usage: scripts/bench_train.sh [MODEL_DIR] [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-tests/fixtures/tiny-mistral}
PY=${2:-/work/pyenv/bin/python}
F=tests/fixtures
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
target/debug/lavic train recommend --model "$MODEL" --tokenizer $F/tokenizer/tokenizer.json \
  --data $F/train_cli/conversations.jsonl --items $F/train_cli/items.jsonl --images $F/images \
  --allow-unknown-ids --max-length 448 --epochs 1 --out "$OUT/run" --progress off >/dev/null 2>&1
python3 - "$OUT/run/log.jsonl" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l and '"event":"step"' in l]
# the first step is a warm-up; time the rest
dt = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
print(json.dumps({"ours": "lavic train recommend", "samples": len(steps) - 1, "seconds": dt,
                  "samples_per_s": (len(steps) - 1) / dt}))
PY
"$PY" scripts/bench_train_reference.py --threads "$(nproc)" --max-length 448 --model "$MODEL"
