#!/usr/bin/env bash
# Builds (once) and caches the test control plane binaries by version, outside the repository:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes through a wrapper
#   module), etcd, kwok, helm, promtool, ec2-metadata-mock and Karpenter's KWOK provider (with the CRDs its
#   module ships).
# Prints the bin directory on stdout's last line; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${SPOTRAIN_TESTBIN_CACHE:-$HOME/.cache/spotrain/testbin}
bin="$cache/bin"
mkdir -p "$bin"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

say() { printf '[testbin %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A binary is cached as NAME-VERSION; NAME is a symlink to the version in use.
have() { [ -x "$bin/$1-$2" ]; }
link() { ln -sfn "$1-$2" "$bin/$1"; }

# Runs a build with a heartbeat, so a 20-minute compile on 2 cores visibly progresses.
with_progress() {
  local what=$1; shift
  local start=$SECONDS
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && say "$what: still building ($((SECONDS - start)) s)"
  done
  wait "$pid"
  say "$what: done in $((SECONDS - start)) s"
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=0 n
  for n in "${names[@]}"; do have "$n" "$K8S_VERSION" || missing=1; done
  if [ "$missing" = 1 ]; then
    local staging_version="v0${K8S_VERSION#v1}"
    local work="$cache/src/kubernetes-$K8S_VERSION"
    mkdir -p "$work"
    say "kubernetes $K8S_VERSION: preparing wrapper module (staging modules at $staging_version)"
    local modfile
    modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module spotrain.dev/testbin/kubernetes"
      echo
      grep -E '^go ' "$modfile"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -E '=> \./staging/src/' "$modfile" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } >"$work/go.mod"
    cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    (cd "$work" && go mod tidy >&2)
    local pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    say "kubernetes $K8S_VERSION: compiling ${names[*]} (cold: 20-40 min on 2 cores)"
    local out="$work/out"
    mkdir -p "$out"
    with_progress "kubernetes $K8S_VERSION" bash -c "cd '$work' && go build -trimpath -ldflags '$ldflags' -o '$out/' \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
    for n in "${names[@]}"; do mv "$out/$n" "$bin/$n-$K8S_VERSION"; done
  fi
  for n in "${names[@]}"; do link "$n" "$K8S_VERSION"; done
}

# go install MODULE/CMD@VERSION into the cache under NAME-TAG (TAG: VERSION unless a build setting that changes
# the binary needs its own cache entry).
install_tool() {
  local name=$1 pkg=$2 version=$3 ldflags=${4:-} tag=${5:-$3}
  if ! have "$name" "$tag"; then
    say "$name $tag: building"
    local gobin="$cache/src/$name-$tag"
    mkdir -p "$gobin"
    with_progress "$name $tag" env GOBIN="$gobin" go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version"
    mv "$gobin/$(basename "$pkg")" "$bin/$name-$tag"
  fi
  link "$name" "$tag"
}

# helm's Kubernetes version for `helm template` and `helm lint` without a cluster comes from ldflags, which helm's
# own Makefile sets from its client-go (v3.22: v0.37 -> 1.37); without them it is 1.20, which charts with a
# kubeVersion (spotrain's: >=1.29) refuse.
helm_ldflags() {
  local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags="$flags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  echo "$flags"
}

build_etcd() {
  # The etcd binary's main package lives in the root module, which go install refuses (replace directives);
  # go.etcd.io/etcd/server/v3/etcdmain is what that main calls, so a three-line wrapper builds the same server.
  if ! have etcd "$ETCD_VERSION"; then
    local work="$cache/src/etcd-$ETCD_VERSION"
    mkdir -p "$work"
    cat >"$work/go.mod" <<MOD
module spotrain.dev/testbin/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
    cat >"$work/main.go" <<'GO'
// The etcd server, as its own main package: etcdmain is what the etcd binary runs.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$work" && go mod tidy >&2)
    say "etcd $ETCD_VERSION: compiling"
    with_progress "etcd $ETCD_VERSION" bash -c "cd '$work' && go build -trimpath -ldflags '-s -w' -o '$bin/etcd-$ETCD_VERSION' ."
  fi
  link etcd "$ETCD_VERSION"
}

build_karpenter() {
  # Karpenter's kwok main package is a full Karpenter whose cloud provider creates KWOK nodes. Its CRDs (NodePool,
  # NodeClaim, NodeOverlay in kwok/charts/crds, KWOKNodeClass in kwok/apis/crds) are copied from the same module
  # version next to the binaries, where spotrain_dev.karpenter applies them.
  GOTOOLCHAIN=auto install_tool karpenter-kwok sigs.k8s.io/karpenter/kwok "$KARPENTER_VERSION"
  local crds="$cache/karpenter-crds-$KARPENTER_VERSION"
  if [ ! -f "$crds/karpenter.sh_nodepools.yaml" ]; then
    local module
    module=$(GOTOOLCHAIN=auto go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    mkdir -p "$crds"
    cp "$module"/kwok/charts/crds/*.yaml "$module"/kwok/apis/crds/*.yaml "$crds/"
    chmod u+w "$crds"/*.yaml  # the module cache is read-only
  fi
}

case "${1:-all}" in
  all)
    build_etcd
    install_tool kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
    install_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$(helm_ldflags)" "$HELM_VERSION-k8s1.$HELM_K8S_MINOR"
    # promtool tests the chart's alert rules (tests/unit/test_shipping_alerts.py). Prometheus' module has no
    # replace directives, so go install builds it; its version is the module's (v0.316.0 is Prometheus 3.16.0).
    install_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION" \
      "-X github.com/prometheus/common/version.Version=$PROMTOOL_RELEASE"
    install_tool ec2-metadata-mock github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock "$EC2_METADATA_MOCK_VERSION"
    build_karpenter
    build_kubernetes
    ;;
  *) echo "usage: $0 [all]" >&2; exit 2 ;;
esac
say "all binaries ready in $bin"
echo "$bin"
