#!/usr/bin/env bash
# A one-node Kubernetes cluster for the in-cluster tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd and a kubelet, all inside
# private network + mount + pid namespaces, so host ports and host iptables stay
# untouched and one SIGKILL of the namespace's first process ends everything.
#
#   hack/node.sh DIR [IMAGE_ARCHIVE...]
#
# Runs in the foreground until SIGTERM/SIGINT (or until its parent dies), then
# tears down. DIR/node.env is written once the node is Ready; it names the
# kubeconfig (reaching the API server from the host over a veth pair), the
# address pods reach the host on (HOST_IP) and the pod network (POD_CIDR).
# Each IMAGE_ARCHIVE (docker-archive or OCI tar) is imported into containerd
# before the node registers: nothing is ever pulled.
#
# Needs root. kubelet rewrites machine-wide kernel settings at start; they are
# saved before and restored after, also when this script is killed (a watchdog
# outlives it).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/lib.sh"

HOST_IP=172.31.250.1
NODE_IP=172.31.250.2
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
NODE_NAME=dbqo-node
ADMIN_TOKEN=dbqo-node-admin-token
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes)

log() { echo "node: $*" >&2; }

# --- inside the namespaces (pid 1 of the new pid namespace) ---------------
inside() {
  local dir=$1 assets=$2
  shift 2
  # Private copies of the directories the node writes at fixed paths.
  mount -t tmpfs tmpfs /run
  mount -t tmpfs tmpfs /var/log
  mkdir -p /var/lib/kubelet /var/lib/cni
  mount -t tmpfs tmpfs /var/lib/kubelet
  mount -t tmpfs tmpfs /var/lib/cni

  # The veth's node end is moved in by the parent.
  for _ in $(seq 100); do ip link show dbqo-node >/dev/null 2>&1 && break; sleep 0.1; done
  ip link set lo up
  ip addr add "$NODE_IP/30" dev dbqo-node
  ip link set dbqo-node up
  sysctl -qw net.ipv4.ip_forward=1
  # The `kubernetes` Service without kube-proxy: one DNAT rule to the API server.
  for chain in PREROUTING OUTPUT; do
    iptables -t nat -A "$chain" -d "$SERVICE_IP/32" -p tcp --dport 443 \
      -j DNAT --to-destination "$NODE_IP:6443"
  done

  local logs="$dir/logs" kube="$dir/kube"
  mkdir -p "$logs"
  "$assets/etcd" --data-dir="$dir/etcd" --listen-client-urls=http://127.0.0.1:2379 \
    --advertise-client-urls=http://127.0.0.1:2379 --listen-peer-urls=http://127.0.0.1:2380 \
    --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=default=http://127.0.0.1:2380 >"$logs/etcd.log" 2>&1 &
  "$assets/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 \
    --advertise-address="$NODE_IP" --secure-port=6443 --insecure-port=0 \
    --cert-dir="$kube/certs" --service-cluster-ip-range="$SERVICE_CIDR" \
    --token-auth-file="$kube/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$kube/sa.pub" --service-account-signing-key-file="$kube/sa.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --audit-policy-file="$kube/audit-policy.yaml" --audit-log-path="$logs/audit.log" \
    >"$logs/kube-apiserver.log" 2>&1 &
  local ready=0
  for _ in $(seq 600); do
    if curl -sf -o /dev/null --max-time 2 --cacert "$kube/certs/apiserver.crt" \
      -H "Authorization: Bearer $ADMIN_TOKEN" "https://$NODE_IP:6443/readyz" 2>/dev/null; then
      ready=1
      break
    fi
    sleep 0.2
  done
  ((ready)) || { log "kube-apiserver did not become ready"; tail -n 20 "$logs/kube-apiserver.log" >&2; exit 1; }
  write_kubeconfig "$kube/kubeconfig" "$kube/certs/apiserver.crt"

  "$assets/kube-controller-manager" --kubeconfig="$kube/kubeconfig" --controllers='*' \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --port=0 \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$kube/sa.key" \
    --root-ca-file="$kube/certs/apiserver.crt" >"$logs/kube-controller-manager.log" 2>&1 &
  "$assets/kube-scheduler" --kubeconfig="$kube/kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --port=0 >"$logs/kube-scheduler.log" 2>&1 &

  local sock="$dir/containerd/containerd.sock"
  # A containerd that crashed leaves its socket behind.
  rm -f "$sock" "$sock.ttrpc"
  containerd --config "$dir/containerd/config.toml" >"$logs/containerd.log" 2>&1 &
  for _ in $(seq 300); do
    ctr --address "$sock" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  ctr --address "$sock" version >/dev/null
  for archive in "$@"; do
    ctr --address "$sock" -n k8s.io images import "$archive" >&2
  done

  "$assets/kubelet" --config="$dir/kubelet/config.yaml" --kubeconfig="$kube/kubeconfig" \
    --root-dir="$dir/kubelet/root" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --v=1 >"$logs/kubelet.log" 2>&1 &

  # Any component dying ends the node (and with pid 1 gone, the namespace).
  wait -n
  log "a node component exited; see $logs"
  exit 1
}

write_kubeconfig() {
  local path=$1 ca=$2
  cat >"$path" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: dbqo-node
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $ca
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: dbqo-node
  context:
    cluster: dbqo-node
    user: admin
    namespace: default
current-context: dbqo-node
KUBECONFIG
}

configure() {
  local dir=$1
  mkdir -p "$dir/kube/certs" "$dir/containerd" "$dir/cni" "$dir/kubelet/root" "$dir/logs"
  openssl genrsa -out "$dir/kube/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/kube/sa.key" -pubout -out "$dir/kube/sa.pub" 2>/dev/null
  echo "$ADMIN_TOKEN,admin,admin,\"system:masters\"" >"$dir/kube/tokens.csv"
  # Every write, with who made it from which address: tests read it to tell
  # the replicas' writes apart.
  cat >"$dir/kube/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
YAML

  cat >"$dir/containerd/config.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$dir/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:dbqo"
  # Setting oom_score_adj below the parent's needs CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
TOML

  cat >"$dir/cni/10-dbqo.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "dbqo",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/networks"}}
  ]
}
JSON

  echo "nameserver 127.0.0.1" >"$dir/kubelet/resolv.conf"
  cat >"$dir/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
resolvConf: $dir/kubelet/resolv.conf
serializeImagePulls: false
# A test node on a shared disk: never garbage-collect the images it was given
# (they cannot be pulled again) nor evict Pods for a full host disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
YAML
}

# The pod sandbox image, from the pause binary provision.sh compiled.
pause_archive() {
  local pause=$1 out=$2 image=localhost/pause:dbqo
  if ! "${BUILDAH[@]}" inspect --type image "$image" >/dev/null 2>&1; then
    local ctr
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" copy "$ctr" "$pause" /pause >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535 "$ctr"
    "${BUILDAH[@]}" commit -q "$ctr" "$image" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
  fi
  rm -f "$out"
  "${BUILDAH[@]}" push -q "$image" "docker-archive:$out:$image" >&2
}

save_sysctls() {
  local file=$1
  : >"$file"
  for s in "${SYSCTLS[@]}"; do
    echo "$s=$(sysctl -n "$s")" >>"$file"
  done
}

restore_sysctls() {
  local file=$1
  [[ -f "$file" ]] || return 0
  while IFS== read -r key value; do
    sysctl -qw "$key=$value" || true
  done <"$file"
}

# Empty cgroups the kubelet left behind (it uses the cgroupfs driver at the root).
remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

teardown() {
  local dir=$1 init_pid=$2
  [[ -n "$init_pid" ]] && kill -KILL "$init_pid" 2>/dev/null || true
  for _ in $(seq 100); do
    [[ -n "$init_pid" ]] && kill -0 "$init_pid" 2>/dev/null || break
    sleep 0.1
  done
  restore_sysctls "$dir/sysctls.saved"
  remove_cgroups
  # Overlay mounts lived in the private mount namespace and went with it.
  rm -rf "$dir/containerd/root" "$dir/containerd/state" 2>/dev/null || true
}

# --- outside ---------------------------------------------------------------
main() {
  local dir=$1
  shift
  [[ $(id -u) -eq 0 ]] || { log "needs root (namespaces, cgroups, iptables)"; exit 77; }
  local assets
  assets="$(bash "$HERE/provision.sh" node | tail -n 1)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  rm -f "$dir/node.env" "$dir/node.env.tmp"
  configure "$dir"
  save_sysctls "$dir/sysctls.saved"

  pause_archive "$assets/pause" "$dir/pause.tar"
  local archives=("$dir/pause.tar")
  for a in "$@"; do archives+=("$(cd "$(dirname "$a")" && pwd)/$(basename "$a")"); done
  unshare --net --mount --pid --fork --mount-proc --propagation private \
    bash "$HERE/node.sh" --inside "$dir" "$assets" "${archives[@]}" >"$dir/logs/node.log" 2>&1 &
  local unshare_pid=$! init_pid=""
  for _ in $(seq 100); do
    init_pid=$(pgrep -P "$unshare_pid" || true)
    [[ -n "$init_pid" ]] && break
    sleep 0.05
  done
  [[ -n "$init_pid" ]] || { log "the namespaces did not start"; exit 1; }

  # The watchdog restores the machine if this script is killed outright.
  (
    trap '' TERM INT
    while kill -0 $$ 2>/dev/null; do sleep 1; done
    teardown "$dir" "$init_pid"
  ) </dev/null >/dev/null 2>&1 &
  trap 'teardown "$dir" "$init_pid"; exit 0' TERM INT

  ip link delete dbqo-host 2>/dev/null || true
  ip link add dbqo-host type veth peer name dbqo-node netns "$init_pid"
  ip addr add "$HOST_IP/30" dev dbqo-host
  ip link set dbqo-host up
  ip route replace "$POD_CIDR" via "$NODE_IP"

  # Ready: the API server answers through the veth and the node reports Ready.
  local kubeconfig="$dir/kube/kubeconfig"
  for _ in $(seq 1800); do
    kill -0 "$init_pid" 2>/dev/null || { log "the node died:"; tail -n 30 "$dir/logs/node.log" >&2; exit 1; }
    if [[ -f "$kubeconfig" ]] && kubectl --kubeconfig "$kubeconfig" get node "$NODE_NAME" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
      # Written whole, then renamed: the reader polls for the file and must
      # never read it half written.
      cat >"$dir/node.env.tmp" <<ENV
KUBECONFIG=$kubeconfig
HOST_IP=$HOST_IP
NODE_IP=$NODE_IP
POD_CIDR=$POD_CIDR
NODE_NAME=$NODE_NAME
CONTAINERD_SOCK=$dir/containerd/containerd.sock
LOGS=$dir/logs
AUDIT_LOG=$dir/logs/audit.log
ENV
      mv "$dir/node.env.tmp" "$dir/node.env"
      log "node $NODE_NAME is Ready; KUBECONFIG=$kubeconfig"
      break
    fi
    sleep 0.2
  done
  [[ -f "$dir/node.env" ]] || { log "the node did not become Ready; see $dir/logs"; exit 1; }
  # `wait` returns early on a trapped signal, so the trap runs promptly.
  wait "$unshare_pid" || true
  log "the node's namespace ended"
  teardown "$dir" "$init_pid"
  exit 1
}

if [[ "${1:-}" == --inside ]]; then
  shift
  inside "$@"
else
  [[ $# -ge 1 ]] || { echo "usage: $0 DIR [IMAGE_ARCHIVE...]" >&2; exit 2; }
  main "$@"
fi
