#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, without Docker: etcd and kube-apiserver, with
# kubectl, all built from the Go modules Kubernetes publishes (tools/kube pins k8s.io/kubernetes
# and its staging modules; etcd is the version its go.mod names). No kubelet or controller
# manager runs here: objects are validated, admitted, stored and read back, but no pod starts
# (infra/cluster.sh uses this script for its own API server, beside a node that runs pods).
#
#   infra/kube.sh build   build once per machine (cached outside the checkout, keyed by the
#                         pinned versions) and print name=path for etcd, kube-apiserver, kubectl
#   infra/kube.sh build-node   also kubelet, kube-controller-manager, kube-scheduler and
#                         kube-proxy (infra/cluster.sh runs them)
#   infra/kube.sh crds    write the CRDs of what infra/k8s and the chart's options use (Strimzi,
#                         CloudNativePG, ServiceMonitor, PrometheusRule, Gateway API HTTPRoute) into the cache
#                         and print their directory
#   infra/kube.sh start   start etcd and kube-apiserver on loopback; idempotent; prints the
#                         kubeconfig path (a cluster-admin token, the API server's own CA)
#   infra/kube.sh stop    stop both
#   infra/kube.sh kubeconfig   print the kubeconfig path
#
# Environment: KUBE_PORT (API server, default 16443; etcd uses the next two ports), KUBE_ADVERTISE
# (the address pods reach it at, for infra/cluster.sh; default loopback only), KUBE_HOME
# (state: certificates, token, kubeconfig, etcd's data; default ~/.local/state/sharedcare/
# kube-$KUBE_PORT, outside the checkout, so that every checkout on the machine shares the one
# API server its port allows), SHAREDCARE_TOOLS_CACHE (the build cache).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache="${SHAREDCARE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharedcare}"
port="${KUBE_PORT:-16443}"
etcd_port=$((port + 1))
peer_port=$((port + 2))
home="${KUBE_HOME:-${XDG_STATE_HOME:-$HOME/.local/state}/sharedcare/kube-$port}"
# Where pods reach the API server (infra/cluster.sh sets its node's address); loopback alone
# when no pod runs.
advertise="${KUBE_ADVERTISE:-127.0.0.1}"
bind=127.0.0.1
[ "$advertise" = 127.0.0.1 ] || bind=0.0.0.0

K8S_VERSION=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' "$root/tools/kube/go.mod" | head -1 | cut -d' ' -f2)
STRIMZI_VERSION=1.2.0
CNPG_VERSION=v1.28.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
GATEWAY_API_VERSION=v1.4.1

# The version stamps Kubernetes' own build sets (hack/lib/version.sh): kubectl and helm read
# the server's version.
minor="${K8S_VERSION#v1.}"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
key=$( (cat "$root/tools/kube/go.sum" "$root/tools/kube/etcd/main.go"; echo "$ldflags") | sha256sum | cut -c1-12)
bin="$cache/kube-$K8S_VERSION-$key"

build() {
  if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubectl" ] || [ ! -x "$bin/etcd" ]; then
    command -v go >/dev/null || { echo "kube.sh: Go is needed (infra/tools.sh installs it)" >&2; exit 1; }
    echo "kube.sh: building etcd, kube-apiserver and kubectl $K8S_VERSION from the Go module proxy (once per machine, several minutes)" >&2
    mkdir -p "$bin.tmp"
    (cd "$root/tools/kube" \
      && go build -o "$bin.tmp/" ./etcd \
      && go build -ldflags "$ldflags" -o "$bin.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl) >&2
    rm -rf "$bin" && mv "$bin.tmp" "$bin"
  fi
  echo "etcd=$bin/etcd"
  echo "kube-apiserver=$bin/kube-apiserver"
  echo "kubectl=$bin/kubectl"
}

# What a node runs besides: kubelet, kube-controller-manager, kube-scheduler and kube-proxy
# (infra/cluster.sh), from the same module, into the same cache; printed as name=path.
build_node() {
  build
  local c missing=""
  for c in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    [ -x "$bin/$c" ] || missing="$missing k8s.io/kubernetes/cmd/$c"
  done
  if [ -n "$missing" ]; then
    echo "kube.sh: building$missing $K8S_VERSION (once per machine)" >&2
    (cd "$root/tools/kube" && go build -ldflags "$ldflags" -o "$bin/" $missing) >&2
  fi
  for c in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    echo "$c=$bin/$c"
  done
}

# A Java of at least 21 (Strimzi's CRD generator is built for it): JAVA_HOME, the default
# java, or one beside it under /usr/lib/jvm.
java21() {
  local j v
  for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [ -x "$j" ] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    if [ "${v%%.*}" -ge 21 ] 2>/dev/null; then echo "$j"; return 0; fi
  done
  echo "kube.sh: Strimzi's CRD generator needs Java 21 or newer; none found" >&2
  exit 1
}

# The module's directory in the Go module cache, downloading it once.
module_dir() {
  (cd "$root/tools/kube" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
}

crds() {
  local dir="$cache/crds-strimzi-$STRIMZI_VERSION-cnpg-$CNPG_VERSION-pom-$PROMETHEUS_OPERATOR_VERSION-rules-gw-$GATEWAY_API_VERSION"
  if [ ! -f "$dir/.complete" ]; then
    echo "kube.sh: writing the Strimzi, CloudNativePG, ServiceMonitor, PrometheusRule and HTTPRoute CRDs (once per machine)" >&2
    rm -rf "$dir" && mkdir -p "$dir/strimzi"
    # Strimzi publishes its API classes and its CRD generator to Maven Central; its release
    # YAML is generated by the same generator from the same classes.
    sed "s/@STRIMZI_VERSION@/$STRIMZI_VERSION/g" "$here/k8s/crds/pom.xml" > "$dir/strimzi/pom.xml"
    mvn -q -B -f "$dir/strimzi/pom.xml" dependency:build-classpath -Dmdep.outputFile="$dir/strimzi/classpath.txt" >&2
    local kind java
    java="$(java21)"
    for kind in kafka.Kafka nodepool.KafkaNodePool topic.KafkaTopic user.KafkaUser; do
      "$java" -cp "$(cat "$dir/strimzi/classpath.txt")" io.strimzi.crdgenerator.CrdGenerator \
        --yaml --crd-api-version v1 --label app:strimzi --label strimzi.io/crd-install:true \
        "io.strimzi.api.kafka.model.$kind=$dir/strimzi-${kind#*.}.yaml" >&2
    done
    # CloudNativePG, the Prometheus Operator and Gateway API keep their CRDs in their Go modules.
    local cnpg pom gw
    cnpg="$(module_dir "github.com/cloudnative-pg/cloudnative-pg@$CNPG_VERSION")"
    pom="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
    gw="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
    for f in clusters databases scheduledbackups backups; do
      cp "$cnpg/config/crd/bases/postgresql.cnpg.io_$f.yaml" "$dir/"
    done
    cp "$pom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$dir/"
    cp "$pom/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" "$dir/"
    cp "$gw/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" "$dir/"
    rm -rf "$dir/strimzi"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

pidof_() { [ -f "$home/$1.pid" ] && kill -0 "$(cat "$home/$1.pid")" 2>/dev/null; }
token() { cat "$home/token"; }
ready() { curl -sf --cacert "$home/pki/ca.crt" -H "Authorization: Bearer $(token)" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; }

certificates() {
  local pki="$home/pki"
  [ -f "$pki/server.crt" ] && return 0
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=sharedcare-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  # 10.96.0.1: the `kubernetes` Service's address in the service range below.
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' "$advertise" > "$pki/san.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/san.ext" -out "$pki/server.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$home/token"
  printf '%s,admin,admin,system:masters\n' "$(token)" > "$home/tokens.csv"
}

# The API server's client certificate towards kubelets (logs, exec), signed by its CA, which the
# kubelet trusts (infra/cluster.sh).
kubelet_client() {
  local pki="$home/pki"
  [ -f "$pki/kubelet-client.crt" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -out "$pki/kubelet-client.crt" 2>/dev/null
}

kubeconfig() {
  cat > "$home/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: sharedcare-test
    cluster:
      server: https://127.0.0.1:$port
      certificate-authority-data: $(base64 -w0 "$home/pki/ca.crt")
users:
  - name: admin
    user:
      token: $(token)
contexts:
  - name: sharedcare-test
    context: {cluster: sharedcare-test, user: admin, namespace: default}
current-context: sharedcare-test
EOF
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  if pidof_ apiserver && ready; then echo "$home/kubeconfig"; return 0; fi
  local p
  for p in "$port" "$etcd_port" "$peer_port"; do
    if listening "$p"; then
      echo "kube.sh: port $p is taken by a process this state ($home) did not start; stop it or set KUBE_PORT" >&2
      exit 1
    fi
  done
  local tools etcd apiserver
  tools="$(build)"
  etcd="$(sed -n 's/^etcd=//p' <<<"$tools")"
  apiserver="$(sed -n 's/^kube-apiserver=//p' <<<"$tools")"
  mkdir -p "$home"
  certificates
  kubelet_client
  kubeconfig
  if ! pidof_ etcd; then
    nohup "$etcd" --name sharedcare-test --data-dir "$home/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "sharedcare-test=http://127.0.0.1:$peer_port" \
      --quota-backend-bytes 1073741824 --log-level warn > "$home/etcd.log" 2>&1 &
    echo $! > "$home/etcd.pid"
  fi
  nohup "$apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$bind" --advertise-address "$advertise" --secure-port "$port" \
    --tls-cert-file "$home/pki/server.crt" --tls-private-key-file "$home/pki/server.key" \
    --client-ca-file "$home/pki/ca.crt" --token-auth-file "$home/tokens.csv" \
    --kubelet-client-certificate "$home/pki/kubelet-client.crt" --kubelet-client-key "$home/pki/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$home/pki/sa.pub" --service-account-signing-key-file "$home/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --profiling=false \
    --v=1 > "$home/apiserver.log" 2>&1 &
  echo $! > "$home/apiserver.pid"
  for _ in $(seq 1 240); do
    if ready; then echo "kube.sh: kube-apiserver $K8S_VERSION ready on https://127.0.0.1:$port" >&2; echo "$home/kubeconfig"; return 0; fi
    pidof_ apiserver || { echo "kube.sh: kube-apiserver exited, see $home/apiserver.log" >&2; tail -n 30 "$home/apiserver.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kube.sh: kube-apiserver was not ready within 120 s, see $home/apiserver.log" >&2
  tail -n 30 "$home/apiserver.log" >&2
  exit 1
}

stop() {
  local p pid
  for p in apiserver etcd; do
    if pidof_ "$p"; then
      pid="$(cat "$home/$p.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$home/$p.pid"
  done
  echo "kube: stopped (port $port)"
}

case "${1:-start}" in
  build) build ;;
  build-node) build_node ;;
  crds) crds ;;
  start) start ;;
  stop) stop ;;
  kubeconfig) echo "$home/kubeconfig" ;;
  *) echo "usage: $0 build|build-node|crds|start|stop|kubeconfig" >&2; exit 2 ;;
esac
