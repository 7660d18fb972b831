#!/usr/bin/env bash
# Rebuilds the demo model from its seed on a CPU machine (issue 15, docs/DEMO.md): the world,
# stage 0 (the base model, every parameter, full patch tokens), the base model's own item
# descriptions, stage 1 (`lavic train distill`: the 5 CLS tokens learn those descriptions),
# stage 2 (`lavic train recommend`), evaluation on the test split in both modes, the ablations
# (titles only, no self-distillation) and the baselines. Every stage's wall time goes to
# OUT/times.tsv and every summary to OUT/results/.
#
#   scripts/train-demo.sh [--smoke] [--install] [--skip-ablations] [OUT]
#
#   OUT               work folder (default target/demo-train); must not hold a finished run
#   --smoke           a sliver of a small world and a few steps of each stage (CI's smoke test)
#   --install         copy the result into demo/ (what `LAVIC_DEMO=world lavic serve` serves)
#   --skip-ablations  only the LaViC pipeline and the baselines
#
# Knobs (environment): DEVICE (cpu; cuda with a binary built with --features cuda), SEED (15),
# BASE_STEPS_V (1000, the tower alone), BASE_STEPS_A (700), BASE_STEPS_B (300), DISTILL_EPOCHS
# (3), RECOMMEND_EPOCHS (1, for LaViC and both ablations alike), LAVIC (a built lavic binary;
# default: cargo build of the dev profile, whose dependencies are optimised). Rerunning into the
# same OUT skips the stages already finished (OUT/NAME.done); an interrupted stage restarts.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0 INSTALL=0 ABLATIONS=1 OUT=target/demo-train
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    --install) INSTALL=1 ;;
    --skip-ablations) ABLATIONS=0 ;;
    -*) echo "unknown flag $a" >&2; exit 2 ;;
    *) OUT=$a ;;
  esac
done
SEED=${SEED:-15}
DEVICE=${DEVICE:-cpu}
if [ -z "${LAVIC:-}" ]; then
  cargo build -q -p lavic-server --bin lavic
  LAVIC=target/debug/lavic
fi
mkdir -p "$OUT/results"
TIMES=$OUT/times.tsv
[ -f "$TIMES" ] || printf 'stage\tseconds\n' > "$TIMES"

# stage NAME CMD...: runs CMD, appends its wall time; skipped when OUT/NAME.done exists.
stage() {
  local name=$1; shift
  if [ -f "$OUT/$name.done" ]; then echo "== $name: done before, skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >> "$TIMES"
  touch "$OUT/$name.done"
}

if [ $SMOKE = 1 ]; then
  WORLD_ARGS=(--lines-per-kind 3 --valid-lines 1 --test-lines 1 --train 24 --valid 6 --test 6)
  BASE_ARGS=(--eval 8 --answers 2 --limit 60)
  BASE_STEPS_A=6 BASE_STEPS_B=2 BATCH_A=4 BATCH_B=4
  PRE_WORLD_ARGS=(--lines-per-kind 3 --valid-lines 1 --test-lines 1 --train 6 --valid 2 --test 2)
  VISION_ARGS=(--steps 4 --batch 4 --eval 8)
  DISTILL_ARGS=(--max-steps 4 --batch-size 4 --valid-items "$OUT/teacher.jsonl")
  RECOMMEND_ARGS=(--max-steps 4 --batch-size 2 --eval-batch 6)
else
  WORLD_ARGS=()
  BASE_ARGS=(--eval 64 --answers 64)
  BASE_STEPS_A=${BASE_STEPS_A:-700} BASE_STEPS_B=${BASE_STEPS_B:-300} BATCH_A=32 BATCH_B=16
  PRE_WORLD_ARGS=(--lines-per-kind 250)
  VISION_ARGS=(--steps "${BASE_STEPS_V:-1000}" --batch 32 --eval 400)
  DISTILL_ARGS=(--epochs "${DISTILL_EPOCHS:-3}" --batch-size 8)
  RECOMMEND_ARGS=(--epochs "${RECOMMEND_EPOCHS:-1}" --batch-size 8)
fi
W=$OUT/world

# The world and the untrained base (tile 32: 4x4 patches of 8 px per view).
stage world "$LAVIC" demo-world --seed "$SEED" --tile 32 --out "$W" --base "$OUT/base0" "${WORLD_ARGS[@]}"

# Stage 0 begins with the vision tower alone: a large pre-training world of another seed (its
# items only; ~6,800 at the defaults, none of them in the demo world) and `--attributes`, one
# classification head per visual attribute over each image's pooled patch features (the heads
# are not saved; the language model does not train). Through the language model alone the tower
# learned almost nothing on a CPU budget (docs/DEMO.md).
stage pretrain-world "$LAVIC" demo-world --seed "$((SEED + 1000))" --tile 32 --out "$OUT/pretrain-world" "${PRE_WORLD_ARGS[@]}"
stage base-vision "$LAVIC" train base --attributes --device "$DEVICE" --world "$OUT/pretrain-world" --base "$OUT/base0" \
  --out "$OUT/base-v" --pool 4 --lr 1e-3 --warmup 20 --log "$OUT/base-vision.log" --log-every 25 "${VISION_ARGS[@]}"

# Then the rest of stage 0, in two runs of `lavic train base` (every parameter trains; see docs/DEMO.md for why).
# Both see each image as 5 tokens (each view's 4x4 patch features averaged), train at lr 5e-4
# (2e-3 left the vision tower drifting on noise) and add the image read-out loss (each image's
# mean feature must name its answer words through lm_head):
#   a: the six short visual questions (what the tower learns to see from);
#   b: every task: the descriptions (also in LaViC's stage-1 prompt) and the multi-image pick
#      questions too, batch 16 (a pick is ~230 tokens); saved in f16 (what ships), then every
#      item's own greedy description in LaViC's stage-1 prompt, the stage-1 teacher where it
#      names every true attribute. --recite: each image token of a pick question also predicts
#      a digit of the id its image is listed under (the id must reach the image's own positions
#      before an answer can find it there by what the image shows; docs/DEMO.md "Recitation").
SHORT=main,trim,pattern,kind,detail,yes_no
base_phase() {
  local name=$1 from=$2 to=$3 steps=$4; shift 4
  stage "base-$name" "$LAVIC" train base --device "$DEVICE" --world "$W" --base "$from" --out "$to" --steps "$steps" \
    "${BASE_ARGS[@]}" --pool 4 --readout 1 --lr 5e-4 --log "$OUT/base-$name.log" --log-every 25 "$@"
}
base_phase a "$OUT/base-v" "$OUT/base-a" "$((BASE_STEPS_A))" --batch $BATCH_A --tasks $SHORT --warmup 20
base_phase b "$OUT/base-a" "$OUT/model" "$((BASE_STEPS_B))" --batch $BATCH_B --warmup 10 --dtype f16 --recite --describe "$OUT/teacher.jsonl"
cp "$OUT/teacher.jsonl.summary.json" "$OUT/results/teacher.summary.json"

# Stage 1 (LaViC self-distillation): vision tower + projector LoRA, the language model frozen.
LORA=(--lora-r 16 --lora-alpha 32 --lr 1e-3 --progress log --log-every 10 --device "$DEVICE")
stage distill "$LAVIC" train distill --model "$OUT/model" --items "$OUT/teacher.jsonl" --images "$W/images" \
  --out "$OUT/vision" "${DISTILL_ARGS[@]}" "${LORA[@]}"

# Stage 2 on items: IMAGES is the folder, ITEMS the items file; VISION the stage-1 adapter or "".
recommend() {
  local out=$1 items=$2 images=$3 vision=$4
  local extra=(); [ -n "$vision" ] && extra=(--vision-adapter "$vision")
  "$LAVIC" train recommend --model "$OUT/model" "${extra[@]}" --data "$W/train.jsonl" --valid "$W/valid.jsonl" \
    --items "$items" --images "$images" --out "$out" "${RECOMMEND_ARGS[@]}" "${LORA[@]}" --lora-dropout 0.05 --eos
}
# eval NAME MODE ITEMS IMAGES VISION LM: the test split, summary in OUT/results/NAME.json.
evaluate() {
  local name=$1 mode=$2 items=$3 images=$4 vision=$5 lm=$6
  local extra=(); [ -n "$vision" ] && extra=(--vision-adapter "$vision")
  "$LAVIC" eval --progress off --device "$DEVICE" --model "$OUT/model" "${extra[@]}" --lm-adapter "$lm" --data "$W/test.jsonl" \
    --items "$items" --images "$images" --mode "$mode" --out "$OUT/results/$name.jsonl" --summary "$OUT/results/$name.json"
}

# Titles only: every item's image is one blank white picture, so the 5 image tokens carry
# nothing; prompt, stages and hyperparameters are otherwise the same.
blank_items() {
  mkdir -p "$OUT/blank"
  if [ ! -f "$OUT/blank/items.jsonl" ]; then
    # a 64x64 white PNG
    echo 'iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAATUlEQVR42u3PQQ0AAAgEILV/5zOFDzdoQCepz6aeExAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQELi3cqoDfaKuZM4AAAAASUVORK5CYII=' \
      | base64 -d > "$OUT/blank/white.png"
    sed -E 's/"image":"[^"]*"/"image":"white.png"/' "$W/items.jsonl" > "$OUT/blank/items.jsonl"
  fi
}

# Stage 2: LaViC, and with the ablations both of theirs side by side (three processes; each
# one's wall time is then longer than alone).
if [ $ABLATIONS = 1 ]; then
  blank_items
  stage recommend recommend "$OUT/lm" "$W/items.jsonl" "$W/images" "$OUT/vision/best" &
  # Without images: titles only, the same stage-1 adapter.
  stage titles-only recommend "$OUT/lm-titles" "$OUT/blank/items.jsonl" "$OUT/blank" "$OUT/vision/best" &
  # Without self-distillation: stage 2 over the untuned tower (no stage-1 adapter).
  stage no-distill recommend "$OUT/lm-nodistill" "$W/items.jsonl" "$W/images" "" &
  wait
  for f in recommend titles-only no-distill; do [ -f "$OUT/$f.done" ] || { echo "stage 2 run $f failed" >&2; exit 1; }; done
else
  stage recommend recommend "$OUT/lm" "$W/items.jsonl" "$W/images" "$OUT/vision/best"
fi
stage eval-free evaluate lavic-free free "$W/items.jsonl" "$W/images" "$OUT/vision/best" "$OUT/lm/best"
stage eval-default evaluate lavic-default default "$W/items.jsonl" "$W/images" "$OUT/vision/best" "$OUT/lm/best"
for b in random title-similarity; do
  stage "baseline-$b" "$LAVIC" eval --progress off --baseline "$b" --data "$W/test.jsonl" --items "$W/items.jsonl" \
    --out "$OUT/results/$b.jsonl" --summary "$OUT/results/$b.json"
done
if [ $ABLATIONS = 1 ]; then
  stage eval-titles-only evaluate titles-only-free free "$OUT/blank/items.jsonl" "$OUT/blank" "$OUT/vision/best" "$OUT/lm-titles/best"
  stage eval-no-distill evaluate no-distill-free free "$W/items.jsonl" "$W/images" "" "$OUT/lm-nodistill/best"
fi

if [ $INSTALL = 1 ]; then
  rm -rf demo.new && mkdir -p demo.new/adapters
  cp -r "$W" demo.new/world
  rm -f demo.new/world/*.done
  cp -r "$OUT/model" demo.new/model
  cp -r "$OUT/vision/best" demo.new/adapters/vision
  cp -r "$OUT/lm/best" demo.new/adapters/lm
  mkdir -p demo.new/results && cp "$OUT"/results/*.json "$TIMES" demo.new/results/
  rm -rf demo.old; [ -d demo ] && mv demo demo.old
  mv demo.new demo && rm -rf demo.old
  du -sh demo
fi
echo "== finished: $OUT (times in $TIMES)"
cat "$TIMES"
