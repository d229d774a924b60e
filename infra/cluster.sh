#!/usr/bin/env bash
# A single-node Kubernetes on this machine, as processes, without Docker:
#   infra/cluster.sh start    start it (idempotent); prints the kubeconfig's path
#   infra/cluster.sh stop     stop it: the pods' containers, then every process
#   infra/cluster.sh status   what runs; exit 1 when the node is not Ready
#   infra/cluster.sh load REF load an image from podman's storage into the node's containerd
#                             (infra/image.sh build does this itself when the cluster runs)
#   infra/cluster.sh ctr …    containerd's own client on the node's containerd (namespace k8s.io),
#                             e.g. `tasks kill -s SIGKILL <container id>` to crash a pod's process
#
# What runs (each binary built from its Go module, cached outside the checkout by version):
#   - etcd and kube-apiserver (infra/kube.sh, on its own port and state), advertised on the
#     node's address so that pods reach it through the `kubernetes` Service;
#   - kube-controller-manager and kube-scheduler;
#   - containerd (Debian's 1.6) with runc (crun refuses this machine's hybrid cgroups) and its
#     CRI plugin, on the overlayfs snapshotter, with OOM scores kept no lower than its own (no
#     CAP_SYS_RESOURCE here); the pod sandbox image is Kubernetes' own pause.c
#     (in the k8s.io/kubernetes module), compiled here and imported: nothing is pulled;
#   - kubelet on that containerd. This machine has cgroup v1 controllers and no systemd, so:
#     the cgroupfs driver, no per-QoS cgroups and no node allocatable enforcement (pods still
#     get their own cgroups and limits from runc), failCgroupV1 off; eviction only below 1% of
#     disk (the disk here runs fuller than kubelet's 10% default would allow);
#   - pod networking through CNI (Debian's bridge, host-local and loopback plugins): pods get
#     10.244.0.0/24 on the bridge sc-cni0, and leave through the node with masquerade;
#   - Services through kube-proxy (iptables mode);
#   - cluster DNS: CoreDNS (its Go module) on the node's address, port 53, answering
#     cluster.local from the API server and forwarding the rest.
# The node's address is 172.30.0.1, on the loopback device (no dummy-interface module can be
# loaded here): the API server, CoreDNS and anything on the host meant for pods (Postgres,
# Kafka) listen there, and pods reach it through the bridge.
#
# Environment: CLUSTER_HOME (state; default ~/.local/state/sharedcare/cluster), CLUSTER_PORT
# (the API server, default 17443; the components use the ports above it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache="${SHAREDCARE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharedcare}"
home="${CLUSTER_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/sharedcare/cluster}"
port="${CLUSTER_PORT:-17443}"
node_ip=172.30.0.1
node=sc-node
pod_cidr=10.244.0.0/24
COREDNS_VERSION=v1.12.4
PAUSE_VERSION=3.10.1
pause_image="localhost/pause:$PAUSE_VERSION"
sock="$home/containerd/containerd.sock"
kube=(env KUBE_PORT="$port" KUBE_HOME="$home/kube" KUBE_ADVERTISE="$node_ip" "$here/kube.sh")

need_packages() {
  local need=() pair
  for pair in containerd:containerd runc:runc conntrack:conntrack iptables:iptables podman:podman; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
}

coredns() {
  local bin="$cache/coredns-$COREDNS_VERSION/coredns"
  if [ ! -x "$bin" ]; then
    echo "cluster.sh: building CoreDNS $COREDNS_VERSION from the Go module proxy (once per machine)" >&2
    GOBIN="$(dirname "$bin")" GOFLAGS=-mod=mod go install "github.com/coredns/coredns@$COREDNS_VERSION" >&2
  fi
  echo "$bin"
}

ctr_() { ctr --address "$sock" -n k8s.io "$@"; }

# Kubernetes' pause, compiled from the module's build/pause/linux/pause.c (the source of
# registry.k8s.io/pause) and imported into containerd once.
pause() {
  grep -qx "$pause_image" <<<"$(ctr_ images ls -q)" && return 0
  local src dir
  src="$(cd "$root/tools/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  dir="$(mktemp -d)"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$dir/pause" "$src"
  strip "$dir/pause"
  tar -C "$dir" -cf "$dir/rootfs.tar" pause
  podman import -q --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' "$dir/rootfs.tar" "$pause_image" >/dev/null
  load "$pause_image"
  rm -rf "$dir"
}

load() {
  local ref="$1" tar
  tar="$(mktemp)"
  podman save -q --format docker-archive -o "$tar" "$ref"
  ctr_ images import "$tar" >/dev/null
  rm -f "$tar"
  echo "cluster.sh: $ref loaded into the node's containerd" >&2
}

pidof_() { [ -f "$home/$1.pid" ] && kill -0 "$(cat "$home/$1.pid")" 2>/dev/null; }

# Runs `name` in the background with its log, unless it already runs.
daemon() {
  local name="$1"; shift
  pidof_ "$name" && return 0
  nohup "$@" > "$home/$name.log" 2>&1 &
  echo $! > "$home/$name.pid"
}

network() {
  # On the loopback device: there is no dummy-interface module to load here.
  # (A here-string, not a pipe: grep -q stops reading at its match, and under pipefail the
  # writer's SIGPIPE would read as "not there".)
  grep -q "inet $node_ip/" <<<"$(ip -4 addr show dev lo)" || ip addr add "$node_ip/32" dev lo
  sysctl -qw net.ipv4.ip_forward=1
  # Pods on one bridge reach a Service's other pods through iptables only if bridged traffic
  # passes it (br_netfilter); where the kernel offers the switch, turn it on.
  [ -w /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1 || true
  mkdir -p "$home/cni"
  cat > "$home/cni/10-sharedcare.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "sharedcare",
  "plugins": [
    {"type": "bridge", "bridge": "sc-cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr", "gateway": "10.244.0.1"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$home/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
}

containerd_() {
  mkdir -p "$home/containerd"
  cat > "$home/containerd/config.toml" <<EOF
version = 2
root = "$home/containerd/root"
state = "$home/containerd/state"
[grpc]
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # The kubelet asks for negative OOM scores (-998 for sandboxes); lowering a score needs
  # CAP_SYS_RESOURCE, which this machine's root lacks (runc's init then dies). Keep each score
  # no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$home/cni"
EOF
  daemon containerd containerd --config "$home/containerd/config.toml"
  for _ in $(seq 1 40); do [ -S "$sock" ] && ctr_ version >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "cluster.sh: containerd did not start, see $home/containerd.log" >&2; tail -n 20 "$home/containerd.log" >&2; exit 1
}

kubelet_() {
  local bin="$1" kubeconfig="$2"
  mkdir -p "$home/kubelet"
  cat > "$home/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The API server reaches it here for logs and exec, with its client certificate.
address: $node_ip
port: $((port + 10))
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $((port + 11))
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $home/kube/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
clusterDNS: [$node_ip]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  daemon kubelet "$bin" --config "$home/kubelet/config.yaml" --kubeconfig "$kubeconfig" \
    --root-dir "$home/kubelet/root" --cert-dir "$home/kubelet/pki" \
    --hostname-override "$node" --node-ip "$node_ip" --v=1
}

start() {
  need_packages
  mkdir -p "$home"
  local tools kubeconfig dns
  tools="$("${kube[@]}" build-node)"
  tool() { sed -n "s/^$1=//p" <<<"$tools"; }
  dns="$(coredns)"
  network
  kubeconfig="$("${kube[@]}" start)"
  containerd_
  pause
  local pki="$home/kube/pki"
  daemon controller-manager "$(tool kube-controller-manager)" --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --service-cluster-ip-range 10.96.0.0/16 --cluster-cidr "$pod_cidr" --allocate-node-cidrs=false \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port $((port + 12)) --v=1
  daemon scheduler "$(tool kube-scheduler)" --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port $((port + 13)) --v=1
  kubelet_ "$(tool kubelet)" "$kubeconfig"
  daemon proxy "$(tool kube-proxy)" --kubeconfig "$kubeconfig" --hostname-override "$node" \
    --proxy-mode iptables --cluster-cidr "$pod_cidr" --conntrack-max-per-core 0 \
    --bind-address "$node_ip" --healthz-bind-address 127.0.0.1:$((port + 14)) \
    --metrics-bind-address 127.0.0.1:$((port + 15)) --v=1
  cat > "$home/Corefile" <<EOF
.:53 {
    bind $node_ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
}
EOF
  daemon coredns "$dns" -conf "$home/Corefile"
  local kubectl
  kubectl="$(sed -n 's/^kubectl=//p' <<<"$tools")"
  for _ in $(seq 1 240); do
    if "$kubectl" --kubeconfig "$kubeconfig" get node "$node" \
         -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
      echo "cluster.sh: node $node Ready (API server https://$node_ip:$port)" >&2
      echo "$kubeconfig"
      return 0
    fi
    for p in containerd controller-manager scheduler kubelet proxy coredns; do
      pidof_ "$p" || { echo "cluster.sh: $p exited, see $home/$p.log" >&2; tail -n 30 "$home/$p.log" >&2; exit 1; }
    done
    sleep 0.5
  done
  echo "cluster.sh: the node was not Ready within 120 s, see $home/kubelet.log" >&2
  tail -n 30 "$home/kubelet.log" >&2
  exit 1
}

stop() {
  local p pid
  for p in kubelet proxy coredns scheduler controller-manager; do
    if pidof_ "$p"; then
      pid="$(cat "$home/$p.pid")"; kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$home/$p.pid"
  done
  # The pods' containers outlive kubelet: stop them (and their shims) before containerd.
  if pidof_ containerd; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 1
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    pid="$(cat "$home/containerd.pid")"; kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$home/containerd.pid"
  [ -d "$home/kube" ] && "${kube[@]}" stop
  echo "cluster.sh: stopped" >&2
}

status() {
  local p up=0
  for p in containerd controller-manager scheduler kubelet proxy coredns; do
    if pidof_ "$p"; then echo "$p: running (pid $(cat "$home/$p.pid"))"; else echo "$p: stopped"; up=1; fi
  done
  return $up
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  load) [ -n "${2:-}" ] || { echo "usage: $0 load IMAGE" >&2; exit 2; }; load "$2" ;;
  ctr) shift; ctr_ "$@" ;;
  *) echo "usage: $0 start|stop|status|load IMAGE|ctr ARGS…" >&2; exit 2 ;;
esac
