#!/usr/bin/env bash
# Builds the Go tools the Kubernetes checks use, from the Go module proxy, into a cache outside
# the checkout keyed by version (a second run on the same machine reuses them; a new machine
# builds them), and prints `name=path` for each:
#   helm            helm.sh/helm/v3/cmd/helm
#   dockerfile-lint tools/dockerfile-lint (BuildKit's own Dockerfile checks, no daemon)
#   etcd, kube-apiserver, kubectl   infra/kube.sh build (k8s.io/kubernetes, pinned in tools/kube)
#   otelcol         tools/otelcol (an OpenTelemetry Collector: OTLP receiver, file exporter)
#   tlog-client     tools/tlog-client (golang.org/x/mod/sumdb/tlog and note: an independent
#                   client of the audit log's checkpoints and tiles)
#   promql-check    tools/promql-check (Prometheus' own PromQL parser, for the chart's alerts
#                   and dashboard)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SHAREDCARE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sharedcare}"
HELM_VERSION=v3.22.0
BUILDKIT_VERSION=$(grep -oE 'github.com/moby/buildkit v[0-9.]+' "$root/tools/dockerfile-lint/go.mod" | head -1 | cut -d' ' -f2)

if ! command -v go >/dev/null 2>&1; then
  echo "tools.sh: installing Go from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq golang-go >&2
fi

helm="$cache/helm-$HELM_VERSION/helm"
if [ ! -x "$helm" ]; then
  echo "tools.sh: building helm $HELM_VERSION from the Go module proxy (once per machine)" >&2
  GOBIN="$(dirname "$helm")" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi

# Keyed by BuildKit's version and the tool's own source.
key=$(cat "$root/tools/dockerfile-lint/main.go" "$root/tools/dockerfile-lint/go.sum" | sha256sum | cut -c1-12)
lint="$cache/dockerfile-lint-$BUILDKIT_VERSION-$key/dockerfile-lint"
if [ ! -x "$lint" ]; then
  echo "tools.sh: building dockerfile-lint with BuildKit $BUILDKIT_VERSION (once per machine)" >&2
  (cd "$root/tools/dockerfile-lint" && go build -o "$lint" .) >&2
fi

key=$(cat "$root/tools/otelcol/main.go" "$root/tools/otelcol/go.sum" | sha256sum | cut -c1-12)
otelcol="$cache/otelcol-$key/otelcol"
if [ ! -x "$otelcol" ]; then
  echo "tools.sh: building the OpenTelemetry Collector (once per machine)" >&2
  (cd "$root/tools/otelcol" && go build -o "$otelcol" .) >&2
fi

key=$(cat "$root/tools/tlog-client/main.go" "$root/tools/tlog-client/go.sum" | sha256sum | cut -c1-12)
tlog="$cache/tlog-client-$key/tlog-client"
if [ ! -x "$tlog" ]; then
  echo "tools.sh: building tlog-client (once per machine)" >&2
  (cd "$root/tools/tlog-client" && go build -o "$tlog" .) >&2
fi

key=$(cat "$root/tools/promql-check/main.go" "$root/tools/promql-check/go.sum" | sha256sum | cut -c1-12)
promql="$cache/promql-check-$key/promql-check"
if [ ! -x "$promql" ]; then
  echo "tools.sh: building promql-check (once per machine)" >&2
  (cd "$root/tools/promql-check" && go build -o "$promql" .) >&2
fi

echo "helm=$helm"
echo "dockerfile-lint=$lint"
echo "otelcol=$otelcol"
echo "tlog-client=$tlog"
echo "promql-check=$promql"
"$root/infra/kube.sh" build
