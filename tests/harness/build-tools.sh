#!/usr/bin/env bash
# Build (once) and cache, outside the repository, the Kubernetes binaries the
# Mace test harness needs: kube-apiserver, kubectl, helm and etcd, from Go
# modules.  No Docker, no downloads other than the Go module proxy.
#
# Usage:   eval "$(tests/harness/build-tools.sh [--node])"
# Prints on stdout (one per line):  KUBE_APISERVER=... KUBECTL=... HELM=... ETCD=...
# --node also builds, at the same release, what a real node runs (tests/node):
#   KUBELET=... KUBE_CONTROLLER_MANAGER=... KUBE_SCHEDULER=... KUBE_PROXY=...
# Progress goes to stderr.  A warm cache does no Go work at all.
#
# Environment:
#   MACE_TOOLS_CACHE   cache root            (default /var/cache/mace-tools)
#   MACE_K8S_VERSION   k8s.io/kubernetes tag (default v1.34.4)
#   MACE_HELM_VERSION  helm.sh/helm/v3 tag   (default v3.19.5)
#   MACE_ETCD_VERSION  go.etcd.io/etcd/server/v3 tag (default v3.6.16)
# See tests/harness/TOOLS-NOTES.md for measured build times and working flags.
set -euo pipefail

K8S_VERSION="${MACE_K8S_VERSION:-v1.34.4}"
HELM_VERSION="${MACE_HELM_VERSION:-v3.19.5}"
ETCD_VERSION="${MACE_ETCD_VERSION:-v3.6.16}"
CACHE="${MACE_TOOLS_CACHE:-/var/cache/mace-tools}"

K8S_DIR="$CACHE/k8s-$K8S_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
KUBE_APISERVER="$K8S_DIR/bin/kube-apiserver"
KUBECTL="$K8S_DIR/bin/kubectl"
HELM="$HELM_DIR/bin/helm"
ETCD_DIR="$CACHE/etcd-$ETCD_VERSION"
ETCD="$ETCD_DIR/bin/etcd"
NODE_TOOLS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
WITH_NODE=false

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_node() {
    local tool
    for tool in "${NODE_TOOLS[@]}"; do [[ -x $K8S_DIR/bin/$tool ]] || return 1; done
}

have_all() { [[ -x $KUBE_APISERVER && -x $KUBECTL && -x $HELM && -x $ETCD ]] && { ! $WITH_NODE || have_node; }; }

# ---------------------------------------------------------------- Go setup
go_env() {
    command -v go >/dev/null 2>&1 || die "go toolchain not found on PATH"
    # Keep GOPATH/GOCACHE/GOMODCACHE at their defaults so module downloads and
    # compiled packages are shared between runs.  -mod=mod lets `go build`
    # complete go.mod/go.sum of the throwaway modules.
    export GOFLAGS="-mod=mod -buildvcs=false"
    export GO111MODULE=on
    export CGO_ENABLED=0          # static binaries, no C toolchain needed
    unset GOOS GOARCH GOWORK || true
    export GOWORK=off
}

# timed NAME CMD...  -- run CMD, log its duration
timed() {
    local name=$1 t0=$SECONDS
    shift
    "$@"
    log "$name took $((SECONDS - t0))s"
}

# go_build OUT PKG LDFLAGS  -- build to OUT.tmp.$$ then rename (atomic)
go_build() {
    local out=$1 pkg=$2 ldflags=$3
    mkdir -p "$(dirname "$out")"
    go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp.$$" "$pkg"
    mv -f "$out.tmp.$$" "$out"
    log "built $out ($(du -h "$out" | cut -f1))"
}

# module_gomod MODULE VERSION  -- download MODULE@VERSION; print the path of its go.mod
module_gomod() {
    local gomod
    gomod=$(cd "$CACHE" && go mod download -json "$1@$2" |
        sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')
    [[ -f $gomod ]] || die "could not locate go.mod of $1@$2 in the module cache"
    printf '%s\n' "$gomod"
}

# go_directive GOMOD  -- the Go version a go.mod names (1.24.0 if none)
go_directive() {
    local gover
    gover=$(sed -n 's/^go[[:space:]]\{1,\}\([0-9.]*\)[[:space:]]*$/\1/p' "$1" | head -n1)
    printf '%s\n' "${gover:-1.24.0}"
}

# tool_module DIR NAME MODULE VERSION  -- a fresh throwaway module in DIR requiring MODULE@VERSION
tool_module() {
    local gomod
    gomod=$(module_gomod "$3" "$4")
    rm -rf "$1"
    mkdir -p "$1"
    printf 'module mace.local/%s\n\ngo %s\n\nrequire %s %s\n' "$2" "$(go_directive "$gomod")" "$3" "$4" >"$1/go.mod"
}

# ------------------------------------------------------ kube-apiserver/kubectl
# k8s_module  -- write the throwaway module that builds k8s.io/kubernetes commands ($K8S_DIR/src) and
# set K8S_LDFLAGS; reuses a module written before
k8s_module() {

    [[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "MACE_K8S_VERSION must look like v1.N.M (got $K8S_VERSION)"
    local minor=${BASH_REMATCH[1]} patch=${BASH_REMATCH[2]}
    local staging_ver="v0.$minor.$patch"

    log "k8s $K8S_VERSION: downloading k8s.io/kubernetes module (staging modules at $staging_ver)"
    local gomod
    gomod=$(module_gomod k8s.io/kubernetes "$K8S_VERSION")

    # Staging modules = the `k8s.io/X => ./staging/src/k8s.io/X` replace lines.
    local -a staging
    mapfile -t staging < <(sed -n \
        's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\2#p' \
        "$gomod")
    ((${#staging[@]} > 0)) || die "no staging replace lines found in $gomod"
    log "k8s $K8S_VERSION: ${#staging[@]} staging modules"

    local godebug
    godebug=$(grep -E '^godebug[[:space:]]' "$gomod" || true)

    local src="$K8S_DIR/src"
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    {
        echo "module mace.local/k8s-tools"
        echo
        echo "go $(go_directive "$gomod")"
        [[ -n $godebug ]] && printf '%s\n' "$godebug"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        local m
        for m in "${staging[@]}"; do
            printf '\t%s => %s %s\n' "$m" "$m" "$staging_ver"
        done
        echo ")"
    } >"$src.tmp/go.mod"
    rm -rf "$src"
    mv "$src.tmp" "$src"

    # What hack/lib/version.sh would stamp in (so `kubectl version` and
    # /version report the real release instead of v0.0.0-master).
    K8S_LDFLAGS=""
    local p
    for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        K8S_LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        K8S_LDFLAGS+=" -X $p.gitTreeState=clean"
    done
}

# build_k8s CMD...  -- build each k8s.io/kubernetes/cmd/CMD not yet in $K8S_DIR/bin
build_k8s() {
    local -a missing=()
    local cmd
    for cmd in "$@"; do [[ -x $K8S_DIR/bin/$cmd ]] || missing+=("$cmd"); done
    ((${#missing[@]} > 0)) || { log "k8s $K8S_VERSION ($*): cached in $K8S_DIR"; return; }
    k8s_module
    cd "$K8S_DIR/src"
    for cmd in "${missing[@]}"; do
        timed "go build $cmd" go_build "$K8S_DIR/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd" "$K8S_LDFLAGS"
    done
    cd - >/dev/null
}

# ---------------------------------------------------------------------- helm
build_helm() {
    [[ -x $HELM ]] && { log "helm $HELM_VERSION: cached in $HELM_DIR"; return; }
    [[ $HELM_VERSION =~ ^v3\. ]] || die "MACE_HELM_VERSION must be a v3 tag (got $HELM_VERSION)"

    log "helm $HELM_VERSION: downloading helm.sh/helm/v3 module"
    local src="$HELM_DIR/src"
    tool_module "$src" helm-tools helm.sh/helm/v3 "$HELM_VERSION"

    cd "$src"
    timed "go build helm" go_build "$HELM" helm.sh/helm/v3/cmd/helm \
        "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    cd - >/dev/null
}

# ---------------------------------------------------------------------- etcd
# Debian's etcd-server (3.4.23) predates the watch-progress fixes that
# kube-apiserver >= 1.31 relies on to keep its watch caches fresh (it needs
# etcd >= 3.4.31 or >= 3.5.13); with it, a watch sometimes failed with
# "Too large resource version".  So etcd is built like the other tools, from
# its server module and a three-line main.
build_etcd() {
    [[ -x $ETCD ]] && { log "etcd $ETCD_VERSION: cached in $ETCD_DIR"; return; }
    [[ $ETCD_VERSION =~ ^v3\. ]] || die "MACE_ETCD_VERSION must be a v3 tag (got $ETCD_VERSION)"

    log "etcd $ETCD_VERSION: downloading go.etcd.io/etcd/server/v3 module"
    local src="$ETCD_DIR/src"
    tool_module "$src" etcd-tools go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' \
        >"$src/main.go"

    cd "$src"
    timed "go build etcd" go_build "$ETCD" . ""
    cd - >/dev/null
}

# ---------------------------------------------------------------------- main
main() {
    local t0=$SECONDS
    case "${1:-}" in
        "") ;;
        --node) WITH_NODE=true ;;
        *) die "unknown argument '$1' (expected nothing or --node)" ;;
    esac
    mkdir -p "$CACHE"

    if ! have_all; then
        # Serialise concurrent callers (e.g. parallel CI jobs on one machine).
        exec 9>"$CACHE/.lock"
        if command -v flock >/dev/null 2>&1; then
            log "taking $CACHE/.lock"
            flock 9
        fi
        go_env
        build_k8s kube-apiserver kubectl
        build_helm
        build_etcd
        ! $WITH_NODE || build_k8s "${NODE_TOOLS[@]}"
    else
        log "all Go-built tools cached under $CACHE"
    fi
    log "done in $((SECONDS - t0))s"

    printf 'KUBE_APISERVER=%q\n' "$KUBE_APISERVER"
    printf 'KUBECTL=%q\n' "$KUBECTL"
    printf 'HELM=%q\n' "$HELM"
    printf 'ETCD=%q\n' "$ETCD"
    if $WITH_NODE; then
        local tool var
        for tool in "${NODE_TOOLS[@]}"; do
            var=${tool^^}
            printf '%s=%q\n' "${var//-/_}" "$K8S_DIR/bin/$tool"
        done
    fi
}

main "$@"
