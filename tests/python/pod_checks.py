"""Pods from the image on a real single-node Kubernetes (infra/cluster.sh: kubelet on
containerd and runc, CNI, kube-proxy, CoreDNS): the image runs under the chart's own pod and
container security settings (non-root 10001, read-only root filesystem, no capabilities,
seccomp RuntimeDefault), is probed by the kubelet on its health port, is reached through its
Service by another pod that finds it by its DNS name, and stops cleanly when deleted.

Environment: KUBECTL, KUBECONFIG (the cluster's), HELM and CHART (the chart, whose rendered
security settings are used), IMAGE (a reference loaded into the node's containerd). Prints
"pods: all checks passed" at the end.
"""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import yaml
from checks import check, poll

KUBECTL = os.environ["KUBECTL"]
HELM = os.environ["HELM"]
CHART = Path(os.environ["CHART"])
IMAGE = os.environ["IMAGE"]
NS = f"pods-{uuid.uuid4().hex[:6]}"


def kubectl(*args, stdin=None):
    return subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True, check=False)


def ok(r, what):
    check(r.returncode == 0, what if r.returncode == 0 else f"{what}: {r.stderr.strip()[:600]}")
    return r.stdout


def wait(_what, condition, seconds):
    return poll(condition, seconds, every=1)


# The chart's own security settings, as it renders them for records.
rendered = subprocess.run(
    [HELM, "template", "sc", str(CHART), "--kube-version", "1.34.4", "-f", str(CHART / "ci" / "minimal-values.yaml")],
    capture_output=True, text=True, check=True,
).stdout
records = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "sc-sharedcare-records")
pod_security = records["spec"]["template"]["spec"]["securityContext"]
container_security = records["spec"]["template"]["spec"]["containers"][0]["securityContext"]
probes = {k: records["spec"]["template"]["spec"]["containers"][0][k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
check(all(p["httpGet"]["port"] == "health" for p in probes.values()), "the chart probes the health port")

ok(kubectl("create", "namespace", NS), f"namespace {NS}")
platform = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "platform", "namespace": NS},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "platform"}},
        "template": {
            "metadata": {"labels": {"app": "platform"}},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": pod_security,
                "terminationGracePeriodSeconds": 30,
                "containers": [{
                    "name": "sharedcare",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["up", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:50051", "--health", "0.0.0.0:9090", "--data", "/data"],
                    "env": [{"name": "SHAREDCARE_IDENTITY__ISSUER", "value": f"http://platform.{NS}.svc.cluster.local"}],
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 50051}, {"name": "health", "containerPort": 9090}],
                    **probes,
                    "securityContext": container_security,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
            },
        },
    },
}
service = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "platform", "namespace": NS},
    "spec": {"selector": {"app": "platform"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
}
ok(kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [platform, service]})), "the Deployment and Service")

started = time.monotonic()


def ready():
    out = kubectl("get", "pods", "-n", NS, "-l", "app=platform", "-o", "json")
    if out.returncode != 0:
        return None
    pods = json.loads(out.stdout)["items"]
    for p in pods:
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if conds.get("Ready") == "True":
            return p
    return None


pod = wait("the platform pod Ready", ready, 180)
if pod is None:
    print(kubectl("describe", "pods", "-n", NS).stdout[-3000:])
    print(kubectl("logs", "-n", NS, "-l", "app=platform", "--tail", "40").stdout)
check(pod is not None, "the pod from the image becomes Ready through the kubelet's probes on the health port")
print(f"pods: Ready {time.monotonic() - started:.1f} s after apply")
status = pod["status"]["containerStatuses"][0]
check(status["restartCount"] == 0 and status["ready"], "it started once: nothing it needs to write is outside /data")
check(pod["status"]["podIP"].startswith("10.244.0."), f"it has an address on the pod network: {pod['status']['podIP']}")

# Another pod finds it by its Service's DNS name and reaches it through the Service (CoreDNS,
# kube-proxy, the bridge): the image's own bash, no tools added.
probe = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "client", "namespace": NS},
    "spec": {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security,
        "containers": [{
            "name": "client",
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/bin/bash", "-c",
                        "exec 3<>/dev/tcp/platform/80 && printf 'GET /.well-known/openid-configuration HTTP/1.1\\r\\nHost: platform\\r\\nConnection: close\\r\\n\\r\\n' >&3 && cat <&3"],
            "securityContext": container_security,
        }],
    },
}
ok(kubectl("apply", "-f", "-", stdin=json.dumps(probe)), "the client pod")


def finished():
    out = kubectl("get", "pod", "client", "-n", NS, "-o", "jsonpath={.status.phase}")
    return out.stdout if out.stdout in ("Succeeded", "Failed") else None


phase = wait("the client pod done", finished, 120)
logs = kubectl("logs", "client", "-n", NS).stdout
check(phase == "Succeeded" and "HTTP/1.1 200" in logs, f"a pod reaches the platform by the name `platform` through its Service: {phase} {logs[:300]}")
check(f'"issuer":"http://platform.{NS}.svc.cluster.local"' in logs.replace(" ", ""), "and gets identity's discovery document")

# The health port is not in the Service: nothing but the kubelet (and a ServiceMonitor's own
# Service port, in the chart) reaches /readyz.
svc = json.loads(ok(kubectl("get", "service", "platform", "-n", NS, "-o", "json"), "the Service"))
check([p["port"] for p in svc["spec"]["ports"]] == [80], "the Service carries HTTP only")

# Deleting the pod sends SIGTERM; it drains and exits 0 well inside its grace period.
name = pod["metadata"]["name"]
t = time.monotonic()
ok(kubectl("delete", "pod", name, "-n", NS, "--wait=true", "--timeout=60s"), "delete the platform pod")
check(time.monotonic() - t < 30, f"the pod stopped on SIGTERM in {time.monotonic() - t:.1f} s, inside its grace period")
replacement = wait("a replacement Ready", lambda: (p := ready()) and p["metadata"]["name"] != name and p, 180)
check(replacement is not None, "the Deployment replaces it and the new pod becomes Ready")

ok(kubectl("delete", "namespace", NS, "--wait=false"), "clean up")
print("pods: all checks passed")
