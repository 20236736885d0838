#!/usr/bin/env bash
# End to end on a kind cluster: create it (kind-config.yaml), build and load both images, helm install
# the chart, start a pinging pod, apply examples/latencyprobe.yaml, wait for samples in
# `kubectl get latencyprobes`, check the agent's /metrics, tear everything down.
#
# Usage: tests/e2e_kind/run.sh
# Exit codes: 0 passed; 1 failed; 77 skipped (no Docker engine, kind, kubectl or helm; the reason is
# printed on stderr).
# Environment: MACE_KIND_KEEP=1 keeps the cluster for inspection; MACE_KIND_NAME (default mace-e2e);
#   HELM / KUBECTL (default: helm / kubectl on PATH); MACE_KIND_TIMEOUT seconds to wait for samples
#   (default 180).
set -euo pipefail
cd "$(dirname "$0")/../.."

NAME=${MACE_KIND_NAME:-mace-e2e}
HELM=${HELM:-helm}
KUBECTL=${KUBECTL:-kubectl}
TIMEOUT=${MACE_KIND_TIMEOUT:-180}
TAG=e2e
SYSTEM_NS=mace-system
PROBE=pinger-icmp
PINGER_IMAGE=busybox:1.36

log() { printf '[e2e-kind %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
skip() { log "SKIP: $*"; exit 77; }
die() { log "FAIL: $*"; exit 1; }

command -v docker >/dev/null || skip "docker is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers ('docker info' failed): kind needs one"
command -v kind >/dev/null || skip "kind is not installed (https://kind.sigs.k8s.io)"
command -v "$KUBECTL" >/dev/null || skip "kubectl not found (set KUBECTL)"
command -v "$HELM" >/dev/null || skip "helm not found (set HELM)"

KUBECONFIG=$(mktemp /tmp/mace-kind-kubeconfig.XXXXXX)
export KUBECONFIG

teardown() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -s "$KUBECONFIG" ]; then
    log "state at failure:"
    "$KUBECTL" get pods -A -o wide >&2 || true
    "$KUBECTL" get latencyprobes -A -o yaml >&2 || true
    "$KUBECTL" -n "$SYSTEM_NS" logs -l app.kubernetes.io/component=agent --tail=50 >&2 || true
    "$KUBECTL" -n "$SYSTEM_NS" logs -l app.kubernetes.io/component=operator --tail=50 >&2 || true
  fi
  if [ -n "${MACE_KIND_KEEP:-}" ]; then
    log "keeping cluster $NAME (kubeconfig $KUBECONFIG); remove it with: kind delete cluster --name $NAME"
  else
    kind delete cluster --name "$NAME" >/dev/null 2>&1 || true
    rm -f "$KUBECONFIG"
  fi
  exit "$rc"
}
trap teardown EXIT

# wait_for WHAT SECONDS CMD...: run CMD until it succeeds, at most SECONDS.
wait_for() {
  local what=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 2
  done
}

log "creating kind cluster $NAME"
kind create cluster --name "$NAME" --config kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 180s

log "building the images"
docker build -q -f Dockerfile.agent -t "mace-agent:$TAG" . >/dev/null
docker build -q -f Dockerfile.operator -t "mace-operator:$TAG" . >/dev/null
docker pull -q "$PINGER_IMAGE" >/dev/null
kind load docker-image --name "$NAME" "mace-agent:$TAG" "mace-operator:$TAG" "$PINGER_IMAGE"

log "helm install"
"$HELM" install mace ./helm/mace --namespace "$SYSTEM_NS" --create-namespace --wait --timeout 5m \
  --set image.registry=docker.io/library --set image.tag="$TAG" --set image.pullPolicy=Never

log "starting a pinging pod on a worker"
target=$("$KUBECTL" get node "$NAME-control-plane" \
  -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
[ -n "$target" ] || die "no InternalIP for node $NAME-control-plane"
"$KUBECTL" run pinger --image="$PINGER_IMAGE" --image-pull-policy=Never --restart=Never -- ping "$target"
"$KUBECTL" wait --for=condition=Ready pod/pinger --timeout=120s

log "applying examples/latencyprobe.yaml"
"$KUBECTL" apply -f examples/latencyprobe.yaml

has_samples() {
  local matched
  matched=$("$KUBECTL" get latencyprobe "$PROBE" -o jsonpath='{.status.results.matched}')
  [ "$("$KUBECTL" get latencyprobe "$PROBE" -o jsonpath='{.status.phase}')" = Measuring ] \
    && [ -n "$matched" ] && [ "$matched" -gt 0 ]
}
wait_for "samples in LatencyProbe $PROBE" "$TIMEOUT" has_samples
"$KUBECTL" get latencyprobes

log "checking /metrics of the agent on the pinger's node"
node=$("$KUBECTL" get pod pinger -o jsonpath='{.spec.nodeName}')
agent=$("$KUBECTL" -n "$SYSTEM_NS" get pods -l app.kubernetes.io/component=agent \
  --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
metrics=$("$KUBECTL" -n "$SYSTEM_NS" exec "$agent" -- python3 -c \
  'import os, urllib.request; print(urllib.request.urlopen("http://%s:9464/metrics" % os.environ["POD_IP"]).read().decode())')
count=$(printf '%s\n' "$metrics" |
  sed -n "s/^mace_probe_latency_seconds_count{.*probe=\"$PROBE\".*direction=\"egress\".*} \([0-9.e+]*\)$/\1/p" | head -1)
[ -n "$count" ] || die "/metrics has no egress histogram for probe $PROBE"
awk -v c="$count" 'BEGIN { exit !(c > 0) }' || die "/metrics egress count for $PROBE is $count"
log "metrics: $PROBE egress count $count"

"$KUBECTL" delete -f examples/latencyprobe.yaml --wait --timeout=60s
log "PASS"
