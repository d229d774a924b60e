"""Checks against a real kube-apiserver with etcd (infra/kube.sh): the CRDs of Strimzi,
CloudNativePG, the Prometheus Operator (ServiceMonitor) and Gateway API (HTTPRoute) installed
first; then everything infra/k8s and the chart render, with each value set, through
`kubectl apply --dry-run=server --validate=strict` (the server's own OpenAPI and CRD schemas,
its admission, unknown fields refused); a real apply whose objects are read back unchanged;
a chart install, upgrade and rollback with helm; and mistakes the server must refuse.

Environment: KUBECTL, HELM, KUBECONFIG, CHART (charts/sharedcare), K8S (infra/k8s), CRDS (the
directory `infra/kube.sh crds` printed). Prints "cluster: all checks passed" at the end, and a
line "objects: <value set>=<count> ..." with the rendered object count per value set.
"""

import json
import os
import subprocess
import uuid
from pathlib import Path

import yaml
from checks import check

KUBECTL = os.environ["KUBECTL"]
HELM = os.environ["HELM"]
CHART = Path(os.environ["CHART"])
K8S = Path(os.environ["K8S"])
CRDS = Path(os.environ["CRDS"])
RUN = uuid.uuid4().hex[:6]  # namespaces of this run: the API server may outlive it


def run(*args, stdin=None):
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)


def kubectl(*args, stdin=None):
    return run(KUBECTL, *args, stdin=stdin)


def ok(r, what):
    check(r.returncode == 0, f"{what}: {r.stderr.strip()[:600]}")
    return r.stdout


def dry_run(manifests, namespace, what):
    """Server-side dry run with strict field validation; returns the objects it accepted."""
    out = ok(kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-", stdin=manifests), what)
    return [line for line in out.splitlines() if line.endswith("(server dry run)")]


def namespace(name):
    ok(kubectl("create", "namespace", name), f"namespace {name}")
    return name


def contains(got, want):
    """Whether `got` holds everything in `want` (the server may add defaults, not drop fields)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and contains(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(contains(g, w) for g, w in zip(got, want))
    return got == want


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


server = json.loads(ok(kubectl("version", "-o", "json"), "kubectl version"))["serverVersion"]
kube_version = server["gitVersion"].lstrip("v")
check(server["major"] == "1" and int(server["minor"]) >= 31, f"a real kube-apiserver answers: {server['gitVersion']}")

# The third-party CRDs first, as a platform team installs the operators before Sharedcare.
ok(kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS)), "the Strimzi, CloudNativePG, ServiceMonitor, PrometheusRule and HTTPRoute CRDs")
ok(kubectl("wait", "--for", "condition=established", "--timeout=60s", "-f", str(CRDS)), "the CRDs are established")

# infra/k8s: dry run, then a real apply read back unchanged.
for name in ["kafka.yaml", "postgres.yaml"]:
    ns = namespace(f"{RUN}-{name.removesuffix('.yaml')}")
    text = (K8S / name).read_text()
    accepted = dry_run(text, ns, f"infra/k8s/{name} (dry run)")
    check(len(accepted) == len(docs(text)), f"infra/k8s/{name}: every object accepted by the server ({len(accepted)})")
    ok(kubectl("apply", "-n", ns, "-f", str(K8S / name)), f"infra/k8s/{name} applied")
    for d in docs(text):
        got = json.loads(ok(kubectl("get", "-n", ns, "-o", "json", f"{d['kind']}.{d['apiVersion'].split('/')[0]}/{d['metadata']['name']}"), f"read back {d['kind']}/{d['metadata']['name']}"))
        check(contains(got["spec"], d["spec"]), f"{d['kind']}/{d['metadata']['name']} reads back as written (nothing pruned)")
# The collector's manifest names its own namespace, which it creates.
otel = (K8S / "otel-collector.yaml").read_text()
ok(kubectl("apply", "--validate=strict", "-f", "-", stdin=otel), "infra/k8s/otel-collector.yaml applied")
deployment = json.loads(ok(kubectl("get", "-n", "observability", "deployment/otel-collector", "-o", "json"), "read back the collector"))
check(deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 4317, "the collector listens for OTLP/gRPC")

# Mistakes the server refuses, naming the field.
bad_user = """apiVersion: kafka.strimzi.io/v1
kind: KafkaUser
metadata: {name: bad, labels: {strimzi.io/cluster: sharedcare}}
spec:
  authentication: {type: scram-sha-512}
  authorization:
    type: simple
    acls: [{resource: {type: topic, name: t}, operations: [Writ]}]
"""
r = kubectl("apply", "--dry-run=server", "--validate=strict", "-n", f"{RUN}-kafka", "-f", "-", stdin=bad_user)
check(r.returncode != 0 and "operations" in r.stderr and "Writ" in r.stderr, f"Strimzi's schema refuses an unknown ACL operation: {r.stderr.strip()[:300]}")
bad_cluster = """apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: bad}
spec: {instances: 3, storage: {size: 1Gi}, backup: {retentionPolicy: 30d, barmanObjectStore: {destinationPath: s3://b/p, s3Credentials: {}}}, unknownField: 1}
"""
r = kubectl("apply", "--dry-run=server", "--validate=strict", "-n", f"{RUN}-postgres", "-f", "-", stdin=bad_cluster)
check(r.returncode != 0 and "unknownField" in r.stderr, f"an unknown field is refused by name: {r.stderr.strip()[:300]}")

# The chart with every value set: what helm renders passes the server's dry run.
counts = {}
ns = namespace(f"{RUN}-chart")
for values in sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")):
    # Without the `helm test` pod: no install applies it (`helm test` does, on the node in
    # install_checks.py), and this API server has no controller to give the namespace the
    # default ServiceAccount a pod needs.
    rendered = ok(run(HELM, "template", "sc", str(CHART), "-n", ns, "--kube-version", kube_version, "--skip-tests", "-f", str(CHART / "ci" / values)), f"helm template {values}")
    objects = docs(rendered)
    accepted = dry_run(rendered, ns, f"the chart with {values} (dry run)")
    check(len(accepted) == len(objects), f"{values}: all {len(objects)} rendered objects accepted by the server")
    counts[values.removesuffix("-values.yaml")] = len(objects)
bad = ok(run(HELM, "template", "sc", str(CHART), "-n", ns, "--kube-version", kube_version, "--skip-tests", "-f", str(CHART / "ci" / "minimal-values.yaml")), "helm template")
bad = bad.replace("periodSeconds: 10", "periodSeconds: ten", 1)
r = kubectl("apply", "--dry-run=server", "--validate=strict", "-n", ns, "-f", "-", stdin=bad)
check(r.returncode != 0 and "periodSeconds" in r.stderr, f"a wrongly typed field is refused by the server: {r.stderr.strip()[:300]}")

# Install, upgrade and rollback with helm. No kubelet runs here, so no pod starts: --no-hooks
# skips the pre-install migration Job, which helm would wait for (it passed the dry run above).
env = os.environ.copy()
prod = str(CHART / "ci" / "production-values.yaml")


def release_config():
    cm = json.loads(ok(kubectl("get", "-n", ns, "configmap/sc-sharedcare-config", "-o", "json"), "read back the ConfigMap"))
    return cm["data"]["sharedcare.toml"]


ok(run(HELM, "install", "sc", str(CHART), "-n", ns, "-f", prod, "--no-hooks"), "helm install")
deployments = json.loads(ok(kubectl("get", "-n", ns, "deployments", "-o", "json"), "read back the Deployments"))["items"]
check(sorted(d["metadata"]["name"] for d in deployments) == sorted(f"sc-sharedcare-{s}" for s in ["identity", "records", "consent", "audit", "passport", "portal", "connectors", "operator"]), "installed: a Deployment per service, and the operator")
crds = json.loads(ok(kubectl("get", "crd", "careapps.sharedcare.nhs.uk", "-o", "json"), "the chart installed the operator's CRDs"))
check(crds["spec"]["group"] == "sharedcare.nhs.uk", "the operator's CRDs are installed from the chart's crds/")
check('log = "info"' in release_config(), "installed with the values given")
ok(run(HELM, "upgrade", "sc", str(CHART), "-n", ns, "-f", prod, "--set", "telemetry.log=debug", "--no-hooks"), "helm upgrade")
check('log = "debug"' in release_config(), "the upgrade changed the ConfigMap")
records = json.loads(ok(kubectl("get", "-n", ns, "deployment/sc-sharedcare-records", "-o", "json"), "read back records"))
check(records["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", "the Deployment is Helm's")
ok(run(HELM, "rollback", "sc", "1", "-n", ns, "--no-hooks"), "helm rollback")
check('log = "info"' in release_config(), "the rollback restored the first release's ConfigMap")
history = json.loads(ok(run(HELM, "history", "sc", "-n", ns, "-o", "json"), "helm history"))
check([h["revision"] for h in history] == [1, 2, 3] and history[-1]["status"] == "deployed", f"three revisions, the rollback deployed: {history}")

print("objects: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
print("cluster: all checks passed")
