#!/usr/bin/env bash
# Brings up spotrain on a local kind cluster: creates the cluster (dev/kind/kind-config.yaml), builds the
# operator and trainer images and the quickstart image (the trainer image plus examples/train_tiny.py), loads
# them into the nodes, installs the CRD and the Helm chart, starts an S3-compatible server in the cluster
# (dev/kind/s3.yaml) and runs the quickstart job (dev/kind/quickstart-kind.yaml) to completion.
#
#   dev/kind/kind-up.sh            create (or reuse) the cluster, build, load, install or upgrade, run the job
#   dev/kind/kind-up.sh down       delete the cluster
#
# Needs docker (a running engine), kind, kubectl and helm on PATH. Environment:
#   KIND_CLUSTER      cluster name (default: spotrain)
#   NAMESPACE         release namespace (default: spotrain-system)
#   TORCH_INDEX_URL   where the trainer image gets torch (default: PyTorch's CPU wheels, ~200 MB instead of
#                     several GB of CUDA libraries); set it empty for PyPI's default (CUDA) wheel
#   SKIP_TRAINER=1    build and load only the operator image (and run no job)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cluster="${KIND_CLUSTER:-spotrain}"
namespace="${NAMESPACE:-spotrain-system}"
torch_index_url="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
operator_image="spotrain-operator:dev"
trainer_image="spotrain-trainer:dev"
quickstart_image="spotrain-quickstart:dev"

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
  # A training image is the trainer image plus the user's code (docs/install.md); here the tiny example.
  log "building $quickstart_image (the trainer image with examples/train_tiny.py)"
  printf 'FROM %s\nCOPY train_tiny.py /workspace/\n' "$trainer_image" \
    | docker build -t "$quickstart_image" -f - "$repo/examples"
  kind load docker-image --name "$cluster" "$trainer_image" "$quickstart_image"
fi

# The CRD as its own release, so that later runs upgrade it (docs/operations.md, "Upgrading").
log "installing the CRD (chart spotrain-crds)"
helm upgrade --install spotrain-crds "$repo/charts/spotrain-crds" --kube-context "$context" --wait
log "installing the chart into $namespace"
helm upgrade --install spotrain "$repo/charts/spotrain" \
  --kube-context "$context" \
  --namespace "$namespace" --create-namespace \
  --values "$here/values-kind.yaml" \
  --skip-crds \
  --wait --timeout 5m

kubectl --context "$context" -n "$namespace" get deploy,daemonset,pods -o wide

if [[ "${SKIP_TRAINER:-0}" == "1" ]]; then
  log "done (SKIP_TRAINER=1: no job run). kubectl --context $context get stj -A"
  exit 0
fi
log "starting the in-cluster S3 server and its bucket (dev/kind/s3.yaml)"
kubectl --context "$context" apply -f "$here/s3.yaml"
kubectl --context "$context" -n spotrain-demo rollout status deploy/s3 --timeout 5m
kubectl --context "$context" -n spotrain-demo wait --for=condition=complete job/s3-bucket --timeout 5m
log "running the quickstart job (dev/kind/quickstart-kind.yaml)"
kubectl --context "$context" -n spotrain-demo delete stj quickstart --ignore-not-found --wait
kubectl --context "$context" apply -f "$here/quickstart-kind.yaml"
kubectl --context "$context" -n spotrain-demo wait stj/quickstart --for=jsonpath='{.status.phase}'=Succeeded \
  --timeout 20m
kubectl --context "$context" -n spotrain-demo get stj quickstart -o wide
log "done: the quickstart trained to completion; its checkpoints are in s3://spotrain-kind/quickstart"
