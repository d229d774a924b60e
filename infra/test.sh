#!/usr/bin/env bash
# The test command: starts what the tests need (PostgreSQL from Debian's packages, Apache
# Kafka in KRaft mode from Maven Central jars) when it is not running, then runs every test.
# Extra arguments go to `cargo test` (e.g. `infra/test.sh -p sharedcare-kit`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need java || ! need javac || ! need mvn; then
  echo "test.sh: installing a JDK and Maven from Debian's packages (for Kafka and HAPI FHIR)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq default-jdk-headless maven >&2
fi

# Identity's browser and relying-party tests: Debian's Chromium, Node.js and the npm packages
# pinned in tests/node/package-lock.json (openid-client, jose, playwright-core).
# Install only what is missing: a Node.js from another source already brings its own npm,
# and Debian's npm package would conflict with it.
missing=()
need chromium || missing+=(chromium)
need node || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} from Debian's packages (browser and relying-party tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >&2
fi
if [ ! -d tests/node/node_modules/openid-client ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# The FHIR facade's third-party client test: fhirpy and fhir.resources from PyPI, pinned in
# tests/python/requirements.txt, in a virtual environment beside them.
venv=tests/python/.venv
if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" >/dev/null 2>&1; then
  echo "test.sh: installing python3-venv from Debian's packages (FHIR client test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq python3-venv >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
if [ ! -f "$venv/.installed" ] || [ tests/python/requirements.txt -nt "$venv/.installed" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  touch "$venv/.installed"
fi

# HAPI FHIR's FhirInstanceValidator and generic client (tests/java/pom.xml), from Maven
# Central: built when the sources change; the e2e tests run them with the classpath written.
classpath="$root/tests/java/target/classpath.txt"
if [ ! -f "$classpath" ] || [ -n "$(find tests/java/pom.xml tests/java/src -newer "$classpath" -print -quit)" ]; then
  mvn -q -B -f tests/java/pom.xml package dependency:build-classpath -Dmdep.outputFile="$classpath" >&2
fi

# Kubernetes: helm, BuildKit's Dockerfile checks, etcd, kube-apiserver, kubectl and an
# OpenTelemetry Collector, built from the Go module proxy and cached outside the checkout; then
# the image, built with podman (no Docker daemon here) and run by the e2e tests; then a real API
# server, and a real node that runs pods.
tools="$(infra/tools.sh)" || exit 1
for name in helm dockerfile-lint kubectl otelcol tlog-client promql-check; do
  var="SHAREDCARE_$(tr 'a-z-' 'A-Z_' <<<"$name")"
  export "$var=$(sed -n "s/^$name=//p" <<<"$tools")"
done
image="$(infra/image.sh build)"
export TEST_IMAGE="$image"
# (Assigned first: `export VAR="$(…)"` would hide a failure of the command.)
kubeconfig="$(infra/kube.sh start)"
crds="$(infra/kube.sh crds)"
export TEST_KUBECONFIG="$kubeconfig" TEST_KUBE_CRDS="$crds"
# A single-node cluster (kubelet, containerd, CNI, kube-proxy, CoreDNS) that runs the image.
cluster="$(infra/cluster.sh start)"
infra/cluster.sh load "$image"
export TEST_CLUSTER_KUBECONFIG="$cluster"

infra/postgres.sh start
infra/kafka.sh start

export TEST_POSTGRES_URL="$(infra/postgres.sh url)"
export TEST_KAFKA_BROKERS="127.0.0.1:${KAFKA_PORT:-19092}"
export TEST_KAFKA_SCRIPT="$root/infra/kafka.sh"

# The end-to-end tests drive the built binary, so build it first.
cargo build --locked -p sharedcare
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set -o pipefail
cargo test --locked --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"

# Fuzzing (fuzz/, infra/fuzz.sh): every parser of outside input, each target for a bounded
# time from its checked-in corpus; a crash fails the run. Only when the whole suite runs.
if [ "$#" -eq 0 ]; then
  infra/fuzz.sh "${FUZZ_SECONDS:-20}"
fi
