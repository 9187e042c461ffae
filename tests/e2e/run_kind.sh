#!/usr/bin/env bash
# End-to-end test of the selfmoa operator on a local kind cluster:
#   create a cluster -> build and load both images -> MinIO + bucket -> helm install the chart
#   -> apply the tiny CPU run (artifacts in MinIO) -> wait for Succeeded -> check the metrics in
#   status and the artifacts in MinIO -> delete the cluster.
#
# Needs: docker (with a running engine), kind, kubectl, helm. Run from anywhere:
#   tests/e2e/run_kind.sh
# Environment:
#   KEEP=1            keep the cluster afterwards (default: delete it, even on failure)
#   CLUSTER=name      kind cluster name (default selfmoa-e2e)
#   KIND_NODE_IMAGE   node image for `kind create cluster --image` (default: kind's own)
#   TIMEOUT=seconds   how long the run may take (default 2400)
#   LOG_DIR=dir       where logs and descriptions go on failure (default ./e2e-logs)
#   SKIP_BUILD=1      reuse already built selfmoa-operator:e2e / selfmoa-worker:e2e images
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/e2e"
CLUSTER="${CLUSTER:-selfmoa-e2e}"
TIMEOUT="${TIMEOUT:-2400}"
LOG_DIR="${LOG_DIR:-$PWD/e2e-logs}"
OPERATOR_IMAGE="selfmoa-operator:e2e"
WORKER_IMAGE="selfmoa-worker:e2e"
SYSTEM_NS="selfmoa-system"
RUN_NS="selfmoa-e2e"
RUN="tiny-cpu"
BUCKET="selfmoa"
PREFIX="runs/$RUN_NS/$RUN"
KUBECTL=(kubectl --context "kind-$CLUSTER")

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "the docker engine is not reachable (docker info failed)"

collect_logs() {
  mkdir -p "$LOG_DIR"
  log "collecting logs into $LOG_DIR"
  "${KUBECTL[@]}" get all,alignmentruns,jobs,configmaps,events -A -o wide >"$LOG_DIR/get-all.txt" 2>&1 || true
  "${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o yaml >"$LOG_DIR/run.yaml" 2>&1 || true
  "${KUBECTL[@]}" -n "$RUN_NS" describe alignmentrun "$RUN" >"$LOG_DIR/run-describe.txt" 2>&1 || true
  "${KUBECTL[@]}" -n "$SYSTEM_NS" describe pods >"$LOG_DIR/operator-describe.txt" 2>&1 || true
  "${KUBECTL[@]}" -n "$SYSTEM_NS" logs deployment/selfmoa --all-containers --tail=-1 \
    >"$LOG_DIR/operator.log" 2>&1 || true
  "${KUBECTL[@]}" -n minio logs deployment/minio --tail=-1 >"$LOG_DIR/minio.log" 2>&1 || true
  "${KUBECTL[@]}" -n "$RUN_NS" describe jobs,pods >"$LOG_DIR/stage-describe.txt" 2>&1 || true
  local pod
  for pod in $("${KUBECTL[@]}" -n "$RUN_NS" get pods -o name 2>/dev/null); do
    "${KUBECTL[@]}" -n "$RUN_NS" logs "$pod" --all-containers --tail=-1 \
      >"$LOG_DIR/${pod#pod/}.log" 2>&1 || true
  done
}

finish() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    collect_logs
    printf '\nE2E FAILED (exit %s); logs in %s\n' "$rc" "$LOG_DIR" >&2
  fi
  if [[ "${KEEP:-0}" == "1" ]]; then
    log "KEEP=1: cluster kept (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap finish EXIT

# Run python in the cluster with the worker image (boto3 is in it) against MinIO.
s3_python() {
  local name="s3-$RANDOM"
  "${KUBECTL[@]}" -n "$RUN_NS" run "$name" --rm -i --quiet --restart=Never \
    --image="$WORKER_IMAGE" --image-pull-policy=Never \
    --env=AWS_ACCESS_KEY_ID=minioadmin --env=AWS_SECRET_ACCESS_KEY=minioadmin \
    --env=AWS_DEFAULT_REGION=us-east-1 --env=S3_ENDPOINT=http://minio.minio.svc.cluster.local:9000 \
    --env=BUCKET="$BUCKET" --env=PREFIX="$PREFIX" \
    --pod-running-timeout=5m --command -- python -c "$1"
}

log "kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}

if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
  log "building $OPERATOR_IMAGE"
  docker build -f "$ROOT/images/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$ROOT"
  log "building $WORKER_IMAGE (CPU-only torch: kind has no GPU)"
  docker build -f "$ROOT/images/worker/Dockerfile" -t "$WORKER_IMAGE" \
    --build-arg BASE_IMAGE=python:3.11.14-slim-bookworm \
    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu "$ROOT"
fi
log "loading images into kind"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE"

log "MinIO"
"${KUBECTL[@]}" apply -f "$HERE/minio.yaml"
"${KUBECTL[@]}" create namespace "$RUN_NS"
"${KUBECTL[@]}" -n minio rollout status deployment/minio --timeout=300s
s3_python '
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
s3.create_bucket(Bucket=os.environ["BUCKET"])
print("bucket", os.environ["BUCKET"], "created")
'

log "helm install"
helm --kube-context "kind-$CLUSTER" install selfmoa "$ROOT/charts/selfmoa" \
  --namespace "$SYSTEM_NS" --create-namespace \
  -f "$HERE/values-kind.yaml" \
  --set image.repository="${OPERATOR_IMAGE%%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set config.workerImage="$WORKER_IMAGE" \
  --wait --timeout 5m
"${KUBECTL[@]}" get crd alignmentruns.selfmoa.dev >/dev/null

log "AlignmentRun $RUN_NS/$RUN"
"${KUBECTL[@]}" -n "$RUN_NS" apply -f "$HERE/run-minio.yaml"

deadline=$((SECONDS + TIMEOUT))
last=""
while :; do
  phase="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  line="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" --no-headers 2>/dev/null || true)"
  [[ "$line" != "$last" ]] && printf '%s  %s\n' "$(date +%H:%M:%S)" "$line" && last="$line"
  case "$phase" in
    Succeeded) break ;;
    Failed)
      die "the run failed: $("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.message}')" ;;
  esac
  ((SECONDS < deadline)) || die "the run did not finish in ${TIMEOUT}s (phase: ${phase:-none})"
  sleep 10
done
# The condition users wait on, not just the phase.
"${KUBECTL[@]}" -n "$RUN_NS" wait --for=condition=Succeeded "alignmentrun/$RUN" --timeout=60s

log "metrics in status"
safety="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.safety}')"
helpfulness="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.helpfulness}')"
iter_safety="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.iterations[*].safety}')"
asr="$("${KUBECTL[@]}" -n "$RUN_NS" get alignmentrun "$RUN" -o jsonpath='{.status.iterations[*].attackSuccessRate}')"
echo "safety=$safety helpfulness=$helpfulness per-iteration safety=[$iter_safety] ASR=[$asr]"
[[ -n "$safety" && -n "$helpfulness" ]] || die "status has no safety/helpfulness"
read -r -a per_iter <<<"$iter_safety"
((${#per_iter[@]} >= 2)) || die "status.iterations has ${#per_iter[@]} entries with safety, expected the start + >=1"

log "artifacts in MinIO (s3://$BUCKET/$PREFIX/)"
s3_python '
import json, os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
bucket, prefix = os.environ["BUCKET"], os.environ["PREFIX"] + "/"
keys = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    keys |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
print(len(keys), "objects under", prefix)
need = ["run.json", "iter-000/evaluate/metrics.json", "iter-000/evaluate/_manifest.json"]
need += [f"iter-001/{s}/_manifest.json" for s in ("redteam", "respond", "judge", "pairs", "train", "evaluate")]
need += ["iter-001/evaluate/metrics.json"]
missing = [k for k in need if k not in keys]
adapter = [k for k in keys if k.startswith("iter-001/train/adapter/")]
if missing or not adapter:
    print("missing:", missing, "adapter files:", len(adapter), file=sys.stderr)
    print("\n".join(sorted(keys)), file=sys.stderr)
    sys.exit(1)
metrics = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "iter-001/evaluate/metrics.json")["Body"].read())
print("iter-001 metrics:", {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
'

log "E2E PASSED"
