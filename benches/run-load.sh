#!/usr/bin/env bash
# Load test of `lavic serve` on loopback with lavic-bench (ghz-compatible): builds both binaries
# (release), starts the server (the fixture demo, whose ids DEMO000001.. the scenarios use,
# unless LAVIC_MODEL_DIR or LAVIC_DEMO etc. are set; any LAVIC_* variable is passed on), runs each scenario of benches/scenarios/ at concurrency
# 1, 4, 16 and 64 with a bounded request count (and a 120 s cap per run), keeps every ghz JSON
# report and prints a table. Usage, from the repository root:
#
#   benches/run-load.sh                                   # all scenarios, c = 1 4 16 64
#   SCENARIOS="recommend-p50-10" LEVELS="1 4" benches/run-load.sh
#   OUT=/tmp/load benches/run-load.sh                     # where the reports go
#
# Requests per run: 24 at c=1, else 8 x c (at most 512). Each scenario gets a short warm-up run
# first (not reported). Needs python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"recommend-p50-10 recommend-p50-20 recommend-p90-10 recommend-p90-20 recommend-p50-10-free recommend-p50-20-free"}
LEVELS=${LEVELS:-"1 4 16 64"}
OUT=${OUT:-target/load/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release -q -p lavic-server -p lavic-bench
LAVIC=target/release/lavic
BENCH=target/release/lavic-bench

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
export LAVIC_DEMO=${LAVIC_DEMO:-fixture}
"$LAVIC" serve --grpc-addr "$ADDR" --metrics-addr 127.0.0.1:0 --log warn > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  if "$LAVIC" healthcheck --addr "$ADDR" > /dev/null 2>&1; then break; fi
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; echo "run-load: the server exited" >&2; exit 1; }
  sleep 0.2
done
"$LAVIC" healthcheck --addr "$ADDR" > /dev/null

{
  echo "machine: $(uname -m), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
  echo "server: $("$LAVIC" --version), $(env | grep '^LAVIC_' | tr '\n' ' ' || true)"
} | tee "$OUT/machine.txt"

for s in $SCENARIOS; do
  data=benches/scenarios/$s.json
  "$BENCH" -D "$data" -n 8 -c 1 -O json -o "$OUT/$s.warmup.json" "$ADDR"
  for c in $LEVELS; do
    if [ "$c" -eq 1 ]; then n=24; else n=$((c * 8)); [ $n -gt 512 ] && n=512; fi
    "$BENCH" -D "$data" -n "$n" -c "$c" -x 120s -t 60s --name "$s c=$c" -O json -o "$OUT/$s.c$c.json" "$ADDR"
  done
done

python3 - "$OUT" $SCENARIOS <<'EOF'
import json, sys
out, scenarios = sys.argv[1], sys.argv[2:]
print(f"{'scenario':<24} {'c':>3} {'count':>6} {'ok':>5} {'rps':>8} {'mean ms':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
import glob, os
for s in scenarios:
    files = sorted(glob.glob(f"{out}/{s}.c*.json"), key=lambda p: int(p.rsplit(".c", 1)[1][:-5]))
    for p in files:
        r = json.load(open(p))
        c = r["options"]["concurrency"]
        lat = {l["percentage"]: l["latency"] / 1e6 for l in r.get("latencyDistribution") or []}
        ok = r["statusCodeDistribution"].get("OK", 0)
        print(f"{s:<24} {c:>3} {r['count']:>6} {ok:>5} {r['rps']:>8.2f} {r['average'] / 1e6:>9.1f} {lat.get(50, 0):>8.1f} {lat.get(90, 0):>8.1f} {lat.get(99, 0):>8.1f}")
print(f"reports: {out}")
EOF
