#!/usr/bin/env bash
# Provisions everything the tests, the sandbox and the benchmark need on a fresh
# Debian bookworm machine, and caches the slow parts outside the repository.
#
#   etcd                              Debian's etcd-server
#   kube-apiserver, kube-controller-manager
#                                     built from Debian's `kubernetes` source package
#                                     (1.20.2); no registry here ships the binaries
#   PostgreSQL 15, openssl            Debian packages (the harness runs initdb itself)
#   MariaDB 10.11                      Debian's mariadb-server (the harness runs
#                                      mariadb-install-db itself; no service is started)
#
# Prints the directory holding etcd, kube-apiserver and kube-controller-manager
# (the envtest-style KUBEBUILDER_ASSETS) on its last line. When
# KUBEBUILDER_ASSETS is already set and holds the three binaries, nothing is built.
#
# `provision.sh node` also provisions a real node for the in-cluster tests
# (hack/node.sh): kubelet and kube-scheduler from the same source tree, the
# pause binary, and Debian's containerd, runc and CNI plugins.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
WANT_NODE=0
[[ "${1:-}" == node ]] && WANT_NODE=1

ASSETS="$CACHE/assets"
K8S_VERSION_DIR="kubernetes-1.20.5+really1.20.2"

log() { echo "provision: $*" >&2; }

have_assets() {
  local dir="$1"
  [[ -x "$dir/etcd" && -x "$dir/kube-apiserver" && -x "$dir/kube-controller-manager" ]]
}

have_node_assets() {
  [[ -x "$ASSETS/kubelet" && -x "$ASSETS/kube-scheduler" && -x "$ASSETS/pause" ]]
}

if ((!WANT_NODE)) && [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && have_assets "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

packages=(golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev dpkg-dev
          postgresql-15 postgresql-contrib openssl mariadb-server mariadb-client)
((WANT_NODE)) && packages+=(containerd runc containernetworking-plugins iptables gcc libc6-dev)
need_packages=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_packages+=("$pkg")
done

ensure_deb_src() {
  if ! grep -rqsE '^(Types: *deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding a deb-src entry for bookworm"
    as_root tee /etc/apt/sources.list.d/dbqo-deb-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    return 0
  fi
  return 1
}

updated=0
if ensure_deb_src || ((${#need_packages[@]})); then
  log "apt-get update"
  as_root apt-get update -qq >&2
  updated=1
fi
if ((${#need_packages[@]})); then
  log "installing ${need_packages[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >&2
fi

# Debian starts etcd and MariaDB services on install; the harness runs its own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet mariadb 2>/dev/null; then
  as_root systemctl stop mariadb || true
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  as_root systemctl stop etcd || true
fi

mkdir -p "$ASSETS"
ln -sf "$(command -v etcd)" "$ASSETS/etcd"

# Debian starts containerd on install; the node harness runs its own.
if ((WANT_NODE)) && command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
  as_root systemctl stop containerd || true
fi

build_targets=()
[[ -x "$ASSETS/kube-apiserver" && -x "$ASSETS/kube-controller-manager" ]] ||
  build_targets+=(cmd/kube-apiserver cmd/kube-controller-manager)
((WANT_NODE)) && ! have_node_assets && build_targets+=(cmd/kubelet cmd/kube-scheduler)

if ((${#build_targets[@]})); then
  SRC="$CACHE/src"
  mkdir -p "$SRC"
  if [[ ! -d "$SRC/$K8S_VERSION_DIR" ]]; then
    ((updated)) || as_root apt-get update -qq >&2
    log "fetching Debian's kubernetes source package"
    (cd "$SRC" && apt-get source -qq kubernetes >&2)
  fi
  TREE="$SRC/$K8S_VERSION_DIR"

  # The vendored reflect2 1.0.1 reads Go runtime internals that changed in Go
  # 1.18; kube-apiserver then crashes in map iteration on the first custom
  # resource. Debian's reflect2 1.0.2 is the upstream fix.
  REFLECT2_SRC=$(dpkg -L golang-github-modern-go-reflect2-dev | grep -m1 '/modern-go/reflect2$')
  VENDORED="$TREE/vendor/github.com/modern-go/reflect2"
  if ! cmp -s "$REFLECT2_SRC/unsafe_link.go" "$VENDORED/unsafe_link.go"; then
    log "replacing vendored reflect2 with Debian's 1.0.2"
    find "$VENDORED" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -delete
    find "$REFLECT2_SRC" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) -exec cp {} "$VENDORED/" \;
  fi

  log "building ${build_targets[*]} (takes a few minutes)"
  (
    cd "$TREE"
    export GOPATH="$TREE/.go" CGO_ENABLED=0 PATH="/usr/lib/go/bin:$PATH"
    export GOFLAGS=-mod=vendor GO111MODULE=on
    mkdir -p .go/src/k8s.io
    [[ -L .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
    make WHAT="${build_targets[*]}" >&2
  )
  for target in "${build_targets[@]}"; do
    cp "$TREE/_output/bin/${target#cmd/}" "$ASSETS/"
  done
  if ((WANT_NODE)); then
    # The pod sandbox's one process; no registry can serve the pause image.
    gcc -Os -static -o "$ASSETS/pause" "$TREE/build/pause/linux/pause.c"
  fi
fi

if ((WANT_NODE)); then
  have_node_assets
fi

have_assets "$ASSETS"
echo "$ASSETS"
