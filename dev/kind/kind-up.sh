#!/usr/bin/env bash
# Brings up spotrain on a local kind cluster: creates the cluster (dev/kind/kind-config.yaml), builds the
# operator and trainer images, loads them into the nodes and installs the Helm chart.
#
#   dev/kind/kind-up.sh            create (or reuse) the cluster, build, load, install or upgrade
#   dev/kind/kind-up.sh down       delete the cluster
#
# Needs docker (a running engine), kind, kubectl and helm on PATH. Environment:
#   KIND_CLUSTER      cluster name (default: spotrain)
#   NAMESPACE         release namespace (default: spotrain-system)
#   TORCH_INDEX_URL   where the trainer image gets torch (default: PyTorch's CPU wheels, ~200 MB instead of
#                     several GB of CUDA libraries); set it empty for PyPI's default (CUDA) wheel
#   SKIP_TRAINER=1    build and load only the operator image
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-spotrain}"
namespace="${NAMESPACE:-spotrain-system}"
torch_index_url="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
operator_image="spotrain-operator:dev"
trainer_image="spotrain-trainer:dev"

log() { printf '[kind-up %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing: $tool (see docs/install.md)"; exit 1; }
  done
}

if [[ "${1:-up}" == "down" ]]; then
  need kind
  log "deleting kind cluster $cluster"
  kind delete cluster --name "$cluster"
  exit 0
fi
if [[ "${1:-up}" != "up" ]]; then
  echo "usage: $0 [up|down]" >&2
  exit 2
fi

need docker kind kubectl helm
docker info >/dev/null 2>&1 || { log "docker is installed but no engine answers (docker info failed)"; exit 1; }

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
else
  log "creating kind cluster $cluster (1 control plane, 3 workers in 3 zones)"
  kind create cluster --name "$cluster" --config "$here/kind-config.yaml" --wait 120s
fi
context="kind-$cluster"

log "building $operator_image (Dockerfile target operator)"
docker build --target operator -t "$operator_image" "$repo"
kind load docker-image --name "$cluster" "$operator_image"

if [[ "${SKIP_TRAINER:-0}" != "1" ]]; then
  log "building $trainer_image (Dockerfile target trainer, TORCH_INDEX_URL=${torch_index_url:-<PyPI>})"
  docker build --target trainer --build-arg "TORCH_INDEX_URL=$torch_index_url" -t "$trainer_image" "$repo"
  kind load docker-image --name "$cluster" "$trainer_image"
fi

log "installing the chart into $namespace"
helm upgrade --install spotrain "$repo/charts/spotrain" \
  --kube-context "$context" \
  --namespace "$namespace" --create-namespace \
  --values "$here/values-kind.yaml" \
  --wait --timeout 5m

kubectl --context "$context" -n "$namespace" get deploy,daemonset,pods -o wide
log "done. Jobs run the trainer image $trainer_image: start from examples/quickstart.yaml with its image set to"
log "$trainer_image and spec.checkpoint pointing at storage the kind nodes reach, then: kubectl --context $context get stj -A"
