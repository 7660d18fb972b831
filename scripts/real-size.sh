#!/usr/bin/env bash
# Real-size proof on CPU, by hand (not in CI; tens of minutes on a 2-core VM). Writes a random
# llava-v1.6-mistral-7b-hf-shaped checkpoint (15.1 GB bf16, 4 shards) with LaViC's two adapters,
# then measures, printing one JSON object per step (also saved under $OUT/results.jsonl):
#   1. load in bf16 with both adapters merged: load time, peak RSS vs the checkpoint's size
#   2. the real-size tower's CLS features vs transformers' on the same weights (needs
#      tests/fixtures' Python environment, PYTHON=...; skipped without it)
#   3. the vision tower at 336 px (images/s) and one default-mode request with $CANDIDATES
#      candidates through all 32 layers (FULL=1; slow on CPU: minutes per pass)
#   4. catalogs of 1,000 and 1,000,000 items at width 1024 (bytes/item, open time, lookup)
#   5. `lavic serve` on the checkpoint and the 1,000-item catalog answers one Recommend
# Usage: scripts/real-size.sh [WORKDIR]   (default: a new temporary folder, removed at the end
# unless KEEP=1). REUSE=DIR uses a checkpoint written before (DIR/model, DIR/*-adapter).
# LAVIC=path/to/lavic (default: target/release/lavic, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/lavic-realsize.XXXXXX")}
mkdir -p "$WORK"
OUT=$WORK
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
LAVIC=${LAVIC:-$ROOT/target/release/lavic}
PYTHON=${PYTHON:-}
CANDIDATES=${CANDIDATES:-10}
SERVE_CANDIDATES=${SERVE_CANDIDATES:-3}
PORT=${PORT:-50181}
METRICS_PORT=${METRICS_PORT:-50182}
SERVER_PID=
cleanup() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [[ ${KEEP:-0} != 1 && -z ${1:-} ]]; then rm -rf "$WORK/ckpt" "$WORK/catalog-1k" "$WORK/catalog-1m"; fi
}
trap cleanup EXIT
log() { echo "[real-size $(date -u +%H:%M:%S)] $*" >&2; }
record() { tee -a "$RESULTS"; }

if [[ ! -x $LAVIC ]]; then
  log "building $LAVIC"
  cargo build --release -p lavic-server --bin lavic
fi
log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# 0. the checkpoint
if [[ -n ${REUSE:-} ]]; then
  CK=$REUSE
else
  CK=$WORK/ckpt
  log "writing the checkpoint to $CK"
  "$LAVIC" dev write-realsize --out "$CK" --variant "${VARIANT:-mistral}" --seed 0 | record
fi
M=(--model-dir "$CK/model" --vision-adapter "$CK/vision-adapter" --lm-adapter "$CK/lm-adapter" --dtype bf16)

# 1. load: weights + merge only (no shared-prefix pass), peak RSS from /proc (VmHWM)
log "loading (bf16, both adapters merged)"
/usr/bin/time -v "$LAVIC" dev probe "${M[@]}" --no-shared-prefix --load-only 2> "$OUT/load.time" | record
grep -E "Maximum resident|Elapsed" "$OUT/load.time" >&2 || true
FP=$(tail -n 1 "$RESULTS" | sed -n 's/.*"encoder_fingerprint":"\([0-9a-f]*\)".*/\1/p')

# 2. CLS features against transformers (f32 on both sides)
if [[ -n $PYTHON ]]; then
  log "CLS check against transformers"
  "$LAVIC" dev encode-cls --model-dir "$CK/model" --vision-adapter "$CK/vision-adapter" --dtype f32 \
    --image tests/fixtures/images/square.jpg --out "$OUT/cls-ours.safetensors" | record
  "$PYTHON" tests/fixtures/realsize_cls_check.py "$CK" "$OUT/cls-ours.safetensors" | record
fi

# 3. tower + one default-mode request through all 32 layers
if [[ ${FULL:-0} == 1 ]]; then
  log "vision tower + one default-mode request with $CANDIDATES candidates (minutes on CPU)"
  "$LAVIC" dev probe "${M[@]}" --images tests/fixtures/images/square.jpg --candidates "$CANDIDATES" \
    ${FREE:+--free} | record
fi

# 4. catalogs at width 1024 (the ViT-L width; CLS form, f16: 10 KiB of features per item)
log "catalogs"
"$LAVIC" dev synthetic-catalog --out "$WORK/catalog-1k" --items 1000 --width 1024 --fingerprint "$FP" | record
"$LAVIC" dev synthetic-catalog --out "$WORK/catalog-1m" --items 1000000 --width 1024 --fingerprint "$FP" | record
rm -rf "$WORK/catalog-1m"

# 5. lavic serve on it, one Recommend
log "lavic serve on the real-size checkpoint and the 1,000-item catalog"
LAVIC_MODEL_DIR=$CK/model LAVIC_VISION_ADAPTER=$CK/vision-adapter LAVIC_LM_ADAPTER=$CK/lm-adapter \
LAVIC_CATALOG_DIR=$WORK/catalog-1k LAVIC_DTYPE=bf16 LAVIC_GRPC_ADDR=127.0.0.1:$PORT \
LAVIC_METRICS_ADDR=127.0.0.1:$METRICS_PORT LAVIC_REQUEST_TIMEOUT_SECS=3600 \
  "$LAVIC" serve --no-warmup > "$OUT/serve.log" 2>&1 &
SERVER_PID=$!
START=$(date +%s)
until "$LAVIC" healthcheck --addr "127.0.0.1:$PORT" --service lavic.v1.Recommender >/dev/null 2>&1; do
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$OUT/serve.log" >&2; exit 1; }
  sleep 5
done
READY=$(( $(date +%s) - START ))
HWM=$(awk '/VmHWM/ {printf "%d", $2 * 1024}' "/proc/$SERVER_PID/status")
echo "{\"phase\":\"serve-ready\",\"seconds\":$READY,\"peak_rss_bytes\":$HWM}" | record
IDS=$(seq 0 $((SERVE_CANDIDATES - 1)) | awk '{printf "%sB%09d", (NR>1?",":""), $1 * 37}')
T0=$(date +%s.%N)
"$LAVIC" recommend --addr "127.0.0.1:$PORT" --timeout-secs 3600 --candidates "$IDS" \
  --context "<submission>Looking for a sturdy everyday backpack with a red strap.</submission>
" > "$OUT/recommend.txt"
T1=$(date +%s.%N)
cat "$OUT/recommend.txt" >&2
HWM=$(awk '/VmHWM/ {printf "%d", $2 * 1024}' "/proc/$SERVER_PID/status")
echo "{\"phase\":\"serve-recommend\",\"candidates\":$SERVE_CANDIDATES,\"seconds\":$(echo "$T1 - $T0" | bc),\"peak_rss_bytes\":$HWM}" | record
log "done; results in $RESULTS"
