#!/usr/bin/env bash
# Builds the Kubernetes test cluster's binaries from Go modules, once per Go version and module
# set, into a cache outside the clone:
#
#   ~/.cache/corral/k8s-<go version>-<key>/bin/   controlplane (apiserver | controller-manager |
#                                                 scheduler | kubectl), kubectl (a link to it),
#                                                 vc-scheduler, vc-controller-manager, kueue, jobset
#   ~/.cache/corral/k8s-<go version>-<key>/crds/  volcano/ jobflow/ kueue/ jobset/: the CRDs the
#                                                 add-ons need, from their downloaded module sources
#   ~/.cache/corral/k8s-<go version>-<key>/webhooks/ kueue.yaml jobset.yaml: their webhook manifests
#
# <key> is the first 12 hex digits of a sha256 over this script and every go.mod, go.sum and .go
# file under tests/infra/k8s. Usage:
#
#   build.sh             build what is missing, print the cache dir on the last line
#   build.sh --print-dir print the cache dir only (built or not)
#
# Needs the Go module proxy the first time (go mod download); nothing is fetched at run time.
# CORRAL_K8S_CACHE overrides ~/.cache/corral as the parent directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
KUBE_VERSION=v1.36.3

goversion=$("$GO" env GOVERSION)
key=$(cd "$HERE" && { cat build.sh; find . -name go.mod -o -name go.sum -o -name '*.go' \
    | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-12)
cache_root=${CORRAL_K8S_CACHE:-$HOME/.cache/corral}
out=$cache_root/k8s-$goversion-$key

if [[ ${1:-} == --print-dir ]]; then
    echo "$out"
    exit 0
fi
if [[ -f $out/.complete ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$out.lock"
flock 9
if [[ -f $out/.complete ]]; then  # another build finished while this one waited
    echo "$out"
    exit 0
fi

tmp=$out.tmp.$$
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/crds"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
# Two cores: one compile at a time per package keeps peak memory near 2.5 GB.
build_flags=(-p 2 -trimpath)
total_start=$SECONDS

step() {  # step NAME COMMAND...: run and time one part
    local name=$1 start=$SECONDS
    shift
    echo "k8s build: $name ..." >&2
    "$@"
    echo "k8s build: $name done in $((SECONDS - start)) s" >&2
}

module_dir() {  # module_dir BUILD_MODULE_DIR MODULE: where the Go module's source lies
    (cd "$1" && "$GO" mod download "$2" && "$GO" list -m -f '{{.Dir}}' "$2")
}

controlplane() {
    local ld="-s -w" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1"
        ld+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") -X $pkg.gitTreeState=clean"
    done
    (cd "$HERE/controlplane" && "$GO" build "${build_flags[@]}" -ldflags "$ld" \
        -o "$tmp/bin/controlplane" .)
    ln -s controlplane "$tmp/bin/kubectl"
}

volcano() {
    local dir version
    dir=$(module_dir "$HERE/volcano" volcano.sh/volcano)
    version=$(cd "$HERE/volcano" && "$GO" list -m -f '{{.Version}}' volcano.sh/volcano)
    local ld="-s -w -X volcano.sh/volcano/pkg/version.Version=$version"
    (cd "$HERE/volcano" \
        && "$GO" build "${build_flags[@]}" -ldflags "$ld" -o "$tmp/bin/vc-scheduler" \
            volcano.sh/volcano/cmd/scheduler \
        && "$GO" build "${build_flags[@]}" -ldflags "$ld" -o "$tmp/bin/vc-controller-manager" \
            volcano.sh/volcano/cmd/controller-manager)
    mkdir -p "$tmp/crds/volcano" "$tmp/crds/jobflow"
    cp "$dir"/config/crd/volcano/bases/*.yaml "$tmp/crds/volcano/"
    cp "$dir"/config/crd/jobflow/bases/*.yaml "$tmp/crds/jobflow/"
}

kueue() {
    local dir version
    dir=$(module_dir "$HERE/kueue" sigs.k8s.io/kueue)
    version=$(cd "$HERE/kueue" && "$GO" list -m -f '{{.Version}}' sigs.k8s.io/kueue)
    (cd "$HERE/kueue" && "$GO" build "${build_flags[@]}" \
        -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" \
        -o "$tmp/bin/kueue" sigs.k8s.io/kueue/cmd/kueue)
    mkdir -p "$tmp/crds/kueue" "$tmp/webhooks"
    cp "$dir"/config/components/crd/bases/*.yaml "$tmp/crds/kueue/"
    cp "$dir"/config/components/webhook/manifests.yaml "$tmp/webhooks/kueue.yaml"
}

jobset() {
    local dir version
    dir=$(module_dir "$HERE/jobset" sigs.k8s.io/jobset)
    version=$(cd "$HERE/jobset" && "$GO" list -m -f '{{.Version}}' sigs.k8s.io/jobset)
    (cd "$HERE/jobset" && "$GO" build "${build_flags[@]}" \
        -ldflags "-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=$version" \
        -o "$tmp/bin/jobset" sigs.k8s.io/jobset)
    mkdir -p "$tmp/crds/jobset" "$tmp/webhooks"
    cp "$dir"/config/components/crd/bases/*.yaml "$tmp/crds/jobset/"
    cp "$dir"/config/components/webhook/manifests.yaml "$tmp/webhooks/jobset.yaml"
}

step "controlplane (Kubernetes $KUBE_VERSION)" controlplane
step volcano volcano
step kueue kueue
step jobset jobset
chmod -R a+rX,u+w "$tmp"
"$GO" version >"$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "k8s build: all done in $((SECONDS - total_start)) s" >&2
echo "$out"
