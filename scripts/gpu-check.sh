#!/usr/bin/env bash
# What a lent GPU runs, in ONE command of at most 10 minutes (see scripts/GPU_CHECK.md for how to
# build and carry the binaries). From the repository root on the GPU machine:
#
#   bash scripts/gpu-check.sh            # report -> $OUT/GPU_REPORT.md (+ raw JSON lines)
#
# Steps (each time-boxed; a failing or timed-out step is reported and the next one still runs):
#   1. CUDA vs CPU on the tiny fixtures: f32 CLS features and candidate logits within 1e-3,
#      bf16 picks identical (lavic dev device-check, both fixture models)
#   2. the real-size checkpoint (llava-v1.6-mistral-7b-hf shapes, bf16, both adapters) written
#      on this machine's disk, then loaded on the GPU: load time, GPU memory
#   3. default and FREE latency p50/p99 at 10 and 20 candidates (in-process, lavic dev probe)
#   4. saturated throughput at max_batch 1, 4 and 8: lavic serve + lavic-bench (16 workers)
# Environment: BIN (folder with lavic, lavic-bench; default .gpu), OUT (default $BIN/out or
# $OUT from the device tool), WORK (scratch for the 15 GB checkpoint; default /tmp/lavic-gpu),
# REPEATS (latency samples per case, default 10), BENCH_SECONDS (per max_batch, default 40).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-.gpu}
OUT=${OUT:-$BIN/out}
WORK=${WORK:-/tmp/lavic-gpu}
REPEATS=${REPEATS:-10}
BENCH_SECONDS=${BENCH_SECONDS:-40}
mkdir -p "$OUT" "$WORK"
RAW=$OUT/gpu-check.jsonl
REPORT=$OUT/GPU_REPORT.md
: > "$RAW"
T_START=$(date +%s)
RUN=$BIN/run-on-h100.sh
[[ -f $RUN ]] || RUN=../shared/tools/cuda/run-on-h100.sh
lavic() { bash "$RUN" "$BIN/lavic" "$@"; }
bench() { bash "$RUN" "$BIN/lavic-bench" "$@"; }
log() { echo "[gpu-check +$(( $(date +%s) - T_START ))s] $*" >&2; }
step() { # step NAME SECONDS CMD... : runs CMD with a time limit, appends its JSON lines to RAW
  local name=$1 limit=$2; shift 2
  log "$name (limit ${limit}s)"
  if timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; then
    grep '^{' "$OUT/$name.out" >> "$RAW" || true
  else
    local rc=$?
    grep '^{' "$OUT/$name.out" >> "$RAW" || true
    echo "{\"phase\":\"$name\",\"failed\":true,\"rc\":$rc}" >> "$RAW"
    log "$name failed (rc $rc): $(tail -3 "$OUT/$name.err" | tr '\n' ' ')"
  fi
}
gpu_mem() { nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader,nounits 2>/dev/null | head -1; }

{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || cat "$BIN/COMMIT" 2>/dev/null || echo '?')"
  lavic --version
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >&2

# 1. CUDA vs CPU on the fixtures
F=tests/fixtures
IMGS=$F/images/square.jpg,$F/images/wide2.png,$F/images/tall.png
step device-check-mistral 120 lavic dev device-check --model-dir $F/tiny-mistral --tokenizer $F/tokenizer/tokenizer.json \
  --vision-adapter $F/adapters/mistral-vision --lm-adapter $F/adapters/mistral-lm --images "$IMGS"
step device-check-llama 120 lavic dev device-check --model-dir $F/tiny-llama --tokenizer $F/tokenizer/tokenizer.json \
  --vision-adapter $F/adapters/llama-vision --lm-adapter $F/adapters/llama-lm --images "$IMGS"

# 2. the real-size checkpoint on this disk, loaded on the GPU
CK=$WORK/ckpt
if [[ ! -f $CK/model/model-00004-of-00004.safetensors ]]; then
  rm -rf "$CK"
  step write 150 lavic dev write-realsize --out "$CK" --variant mistral --seed 0
fi
M=(--model-dir "$CK/model" --vision-adapter "$CK/vision-adapter" --lm-adapter "$CK/lm-adapter" --dtype bf16 --device cuda)
echo "{\"phase\":\"gpu-memory-before\",\"used_total_mib\":\"$(gpu_mem)\"}" >> "$RAW"
# 3. latency: default and FREE at 10 and 20 candidates; one model load per candidate count
for n in 10 20; do
  ( lavic dev probe "${M[@]}" --images "$F/images/square.jpg,$F/images/wide2.png,$F/images/tall.png" \
      --candidates "$n" --free --repeats "$REPEATS" &
    P=$!; peak=0
    while kill -0 $P 2>/dev/null; do
      u=$(gpu_mem | cut -d, -f1 | tr -d ' '); [[ ${u:-0} -gt $peak ]] && peak=$u; sleep 1
    done
    wait $P; rc=$?
    echo "{\"phase\":\"gpu-memory-peak\",\"candidates\":$n,\"peak_used_mib\":$peak}"
    exit $rc ) > "$OUT/probe-$n.out" 2> "$OUT/probe-$n.err" &
  PROBE=$!
  ( sleep 170; kill -TERM $PROBE 2>/dev/null ) & KILLER=$!
  log "probe at $n candidates"
  wait $PROBE || echo "{\"phase\":\"probe-$n\",\"failed\":true}" >> "$RAW"
  kill $KILLER 2>/dev/null
  grep '^{' "$OUT/probe-$n.out" >> "$RAW" || true
done

# 4. throughput at max_batch 1, 4, 8 (16 concurrent callers, 10 candidates, default mode)
FP=$(grep -m1 '"phase":"load"' "$RAW" | sed -n 's/.*"encoder_fingerprint":"\([0-9a-f]*\)".*/\1/p')
if [[ -n $FP ]]; then
  rm -rf "$WORK/catalog"
  step catalog 60 lavic dev synthetic-catalog --out "$WORK/catalog" --items 100000 --width 1024 --fingerprint "$FP"
  IDS=$(for i in $(seq 0 9); do printf '"B%09d",' $((i * 7919)); done); IDS=[${IDS%,}]
  # shellcheck disable=SC2028  # a literal \n: the JSON escape for the newline the context ends with
  echo "{\"request_id\":\"gpu-check\",\"context\":\"<submission>Looking for a sturdy backpack with a red strap.</submission>\\n\",\"candidate_ids\":$IDS}" > "$WORK/call.json"
  for mb in 1 4 8; do
    [[ $(( $(date +%s) - T_START )) -gt 480 ]] && { log "out of time before max_batch $mb"; break; }
    PORT=$((50300 + mb))
    LAVIC_MODEL_DIR=$CK/model LAVIC_VISION_ADAPTER=$CK/vision-adapter LAVIC_LM_ADAPTER=$CK/lm-adapter \
    LAVIC_CATALOG_DIR=$WORK/catalog LAVIC_DTYPE=bf16 LAVIC_DEVICE=cuda LAVIC_MAX_BATCH=$mb \
    LAVIC_QUEUE_CAPACITY=64 LAVIC_GRPC_ADDR=127.0.0.1:$PORT LAVIC_METRICS_ADDR=127.0.0.1:$((PORT + 100)) \
      timeout 200 bash "$RUN" "$BIN/lavic" serve > "$OUT/serve-$mb.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 120); do
      lavic healthcheck --addr 127.0.0.1:$PORT --service lavic.v1.Recommender > /dev/null 2>&1 && break
      kill -0 $SERVER 2>/dev/null || break; sleep 1
    done
    step "bench-mb$mb" $((BENCH_SECONDS + 30)) bench -D "$WORK/call.json" -c 16 -z "${BENCH_SECONDS}s" -t 60s \
      --name "max_batch=$mb" -O json -o "$OUT/bench-mb$mb.json" 127.0.0.1:$PORT
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'phase':'bench','max_batch':int(sys.argv[2]),'count':r.get('count'),'rps':r.get('rps'),'average_ms':r.get('average',0)/1e6,'latency':r.get('latencyDistribution'),'status':r.get('statusCodeDistribution')}))" \
      "$OUT/bench-mb$mb.json" "$mb" >> "$RAW" 2>/dev/null || true
    kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null
  done
fi

# report in docs/PERFORMANCE.md's format
python3 - "$RAW" "$OUT/machine.txt" > "$REPORT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
machine = open(sys.argv[2]).read().strip()
def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")
print("## GPU check (scripts/gpu-check.sh)\n")
print("```\n" + machine + "\n```\n")
print("| check | result |\n| --- | --- |")
for r in rows:
    if r.get("phase", "").startswith("device-check"):
        print(f"| {r['phase']} | {json.dumps({k: v for k, v in r.items() if k != 'phase'})} |")
    if r.get("failed"):
        print(f"| {r['phase']} | FAILED (rc {r.get('rc', '?')}) |")
for r in rows:
    if r.get("phase") == "load":
        print(f"\nReal-size load on {r['device']} ({r['dtype']}, both adapters merged, shared prefix {r.get('shared_prefix')}): "
              f"{r['seconds']:.1f} s; checkpoint {r['checkpoint_bytes']/1e9:.2f} GB; host peak RSS {r['peak_rss_bytes']/1e9:.2f} GB.")
    if r.get("phase") == "gpu-memory-peak":
        print(f"GPU memory at {r['candidates']} candidates: peak {r['peak_used_mib']} MiB used (nvidia-smi, whole device).")
print("\n| candidates | mode | runs | p50 s | p99 s | prompt tokens |\n| --- | --- | --- | --- | --- | --- |")
lat = {}
for r in rows:
    if r.get("phase") == "recommend" and r.get("run", 0) > 0:
        lat.setdefault((r["candidates"], r["mode"]), []).append(r)
for (n, mode), rs in sorted(lat.items()):
    s = [x["seconds"] for x in rs]
    print(f"| {n} | {mode} | {len(s)} | {pct(s, .5):.3f} | {pct(s, .99):.3f} | {rs[0]['prompt_tokens']} |")
print("\n| max_batch | requests | rps | mean ms | p50 ms | p99 ms | statuses |\n| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if r.get("phase") == "bench":
        d = {x["percentage"]: x["latency"] / 1e6 for x in (r.get("latency") or [])}
        print(f"| {r['max_batch']} | {r['count']} | {r['rps']:.2f} | {r['average_ms']:.1f} | {d.get(50, float('nan')):.1f} | {d.get(99, float('nan')):.1f} | {r['status']} |")
PY
cat "$REPORT"
log "done in $(( $(date +%s) - T_START )) s; report $REPORT"
