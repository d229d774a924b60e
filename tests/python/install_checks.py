"""`helm install` of the chart, with its hooks, on a real single-node Kubernetes (infra/cluster.sh)
running the image built by the test command: the migration Job runs and completes before the
services start, every Deployment's pod becomes Ready through its real probes, and a FHIR client
on the host gets a token from identity and writes and reads a record through the Services, on
the machine's Postgres and Kafka (reached from the pods on the node's address, 172.30.0.1).

Environment: KUBECTL, HELM, KUBECONFIG (the cluster's), CHART, IMAGE (loaded into the node),
PG_URL (the test Postgres, to make and drop this run's database), CLUSTER_SH (infra/cluster.sh,
to load a second tag of the image). Prints "install: all checks
passed" at the end, and a line "install: ready in <s> s" with the time from `helm install` to
every pod Ready.
"""

import atexit
import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import yaml
from checks import check, poll

KUBECTL = os.environ["KUBECTL"]
HELM = os.environ["HELM"]
CHART = Path(os.environ["CHART"])
IMAGE = os.environ["IMAGE"]
PG_URL = os.environ["PG_URL"]
RUN = uuid.uuid4().hex[:6]
NS = f"install-{RUN}"
DB = f"install_{RUN}"
NODE = "172.30.0.1"
SERVICES = ["identity", "records", "consent", "audit", "passport", "portal", "connectors"]
# The demo's integration client and the portal's (identity.seed_demo registers them).
INTEGRATION = ("ics-integration", "demo-integration-secret-95be0d27aa")
PORTAL = ("sharedcare-portal", "demo-portal-secret-7c1f9e2b4a")


def run(*args, stdin=None):
    return subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)


def ok(r, what):
    check(r.returncode == 0, what if r.returncode == 0 else f"{what}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r.stdout


def kubectl(*args):
    return run(KUBECTL, "-n", NS, *args)


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


pg = urlparse(PG_URL)
# Postgres and Kafka listen on the node's address only if they started after the cluster did.
for what, port in (("Postgres", pg.port), ("Kafka", 19095)):
    try:
        socket.create_connection((NODE, port), timeout=3).close()
        reachable = True
    except OSError:
        reachable = False
    check(reachable, f"{what} listens on {NODE}:{port} for the pods (start infra/cluster.sh before infra/postgres.sh and infra/kafka.sh, as the test command does)")
ok(run("psql", PG_URL, "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {DB}"), f"database {DB}")


@atexit.register
def clean_up():
    # Also after a failed check: the namespace goes (its CareApps' finalizers dropped, since
    # the operator may be gone first), and the run's database.
    for kind in ("careapps", "careorganisations"):
        for name in run(KUBECTL, "-n", NS, "get", kind, "-o", "name").stdout.split():
            run(KUBECTL, "-n", NS, "patch", name, "--type", "merge", "-p", '{"metadata":{"finalizers":[]}}')
    run(KUBECTL, "delete", "namespace", NS, "--wait=false")
    run("psql", PG_URL, "-c", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

repository, tag = IMAGE.rsplit(":", 1)
registry, repository = repository.split("/", 1)
# Identity outside the cluster through its own NodePort Service (no ingress controller can be
# built here): the issuer is that address, which the browser, the relying party and the FHIR
# client on the host reach; the pods verify tokens through identity's ClusterIP Service.
NODE_PORT = 30000 + int(RUN, 16) % 2700
issuer = f"http://{NODE}:{NODE_PORT}"
small = {"replicas": 1, "autoscaling": {"enabled": False}, "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "512Mi"}}}
values = {
    "issuer": issuer,
    "image": {"registry": registry, "repository": repository, "tag": tag, "pullPolicy": "Never"},
    "database": {"url": f"postgres://{pg.username}:{pg.password}@{NODE}:{pg.port}/{DB}"},
    # Not the bare hex run id: one like "1e5432" is a number to helm's YAML (PyYAML leaves it
    # unquoted), and the schema refuses it.
    "kafka": {"brokers": f"{NODE}:19095", "namespace": f"install-{RUN}", "partitions": 1, "replicationFactor": 1},
    "clients": {
        "records": {"id": INTEGRATION[0], "secret": INTEGRATION[1]},
        "passport": {"id": INTEGRATION[0], "secret": INTEGRATION[1]},
        "portal": {"id": PORTAL[0], "secret": PORTAL[1]},
    },
    # The key-encryption key sealing identity's and audit's keys: made for this install.
    "keyEncryption": {"key": base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")},
    "feeds": [INTEGRATION[0]],
    "extraConfig": "identity.seed_demo = true\n",
    "topologySpread": {"enabled": False},
    "services": dict({s: small for s in SERVICES}, identity=dict(small, external={
        "enabled": True, "type": "NodePort", "ports": ["http"], "nodePorts": {"http": NODE_PORT},
        "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
    })),
    # The operator as two pods electing a leader; the demo's integration client has
    # identity.admin, which it needs.
    "operator": {"enabled": True, "replicas": 2, "leaseSeconds": 6, "resyncSeconds": 30},
}
values["clients"]["operator"] = {"id": INTEGRATION[0], "secret": INTEGRATION[1]}
values_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"install-{RUN}.yaml"
values_file.write_text(yaml.safe_dump(values))

started = time.monotonic()
r = run(HELM, "install", "sc", str(CHART), "-n", NS, "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "5m")
elapsed = time.monotonic() - started
if r.returncode != 0:
    print(kubectl("get", "pods,jobs", "-o", "wide").stdout)
    print(kubectl("describe", "pods").stdout[-4000:])
    for s in SERVICES + ["migrate"]:
        print(s, kubectl("logs", "-l", f"app.kubernetes.io/component={s}", "--tail", "15").stdout)
ok(r, "helm install with its hooks (the migration Job), waiting for every pod")
print(f"install: ready in {elapsed:.1f} s")

deployments = json.loads(ok(kubectl("get", "deployments", "-o", "json"), "deployments"))["items"]
ready = {d["metadata"]["name"].removeprefix("sc-sharedcare-"): d["status"].get("readyReplicas", 0) for d in deployments}
check(ready == dict({s: 1 for s in SERVICES}, operator=2), f"every service's pod and both operator replicas are Ready through their probes: {ready}")
pods = json.loads(ok(kubectl("get", "pods", "-o", "json"), "pods"))["items"]
check(all(c["restartCount"] == 0 for p in pods for c in p["status"].get("containerStatuses", [])), "no pod restarted: the migrations were there before any service started")
check(not json.loads(ok(kubectl("get", "jobs", "-o", "json"), "jobs"))["items"], "the migration Job completed and was removed (hook-succeeded)")
check(kubectl("get", "secret", "sc-sharedcare-migrate-database").returncode != 0, "its hook Secret too")
tables = ok(run("psql", f"{PG_URL.rsplit('/', 1)[0]}/{DB}", "-tAc", "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog','information_schema')"), "tables")
check(int(tables.strip()) > 10, f"the migrations made each service's tables ({tables.strip()})")


def cluster_ip(service):
    svc = json.loads(ok(kubectl("get", "service", f"sc-sharedcare-{service}", "-o", "json"), service))
    return svc["spec"]["clusterIP"]


# Through the Services (kube-proxy), as a FHIR client would behind an ingress.
identity = f"http://{cluster_ip('identity')}:8080"
status, body = http("GET", f"{identity}/.well-known/openid-configuration")
check(status == 200 and json.loads(body)["issuer"] == issuer, f"identity's discovery document names the issuer: {status} {body[:200]}")
status, body = http("GET", f"{issuer}/.well-known/openid-configuration")
check(status == 200 and json.loads(body)["issuer"] == issuer, f"and so does its external NodePort Service, at the issuer: {status} {body[:200]}")

# The start page (the ingress sends exactly "/" to the portal) from the portal's pod.
status, body = http("GET", f"http://{cluster_ip('portal')}:8080/")
check(status == 200 and "One record for everyone who cares for you" in body and "Sign in once" in body, f"the start page from the portal's pod: {status} {body[:200]}")

# The demo's clinical record written into the installed platform as its integration engine
# would, through records' and consent's Services; then a GP signs in, in Chromium, on the
# login pages from the identity pod, and reads a demo patient's record from the records pod.
def sharedcare(*args):
    # Without the test run's SHAREDCARE_* tool paths, which the binary would read as settings.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    return subprocess.run([os.environ["BINARY"], *args], capture_output=True, text=True, check=False, env=clean)


grpc = lambda service: f"http://{cluster_ip(service)}:50051"
ok(sharedcare("demo", "--issuer", issuer, "seed", "--grpc", grpc("records"), "--consent", grpc("consent")), "sharedcare demo seed into the pods")
demo = json.loads(ok(sharedcare("demo", "--issuer", issuer), "the demo's people and clients"))
gp = next(s for s in demo["staff"] if s["username"] == "gp")
portal_client = next(c for c in demo["clients"] if c["client_id"] == PORTAL[0])
r = subprocess.run(
    ["node", str(Path(os.environ["NODE_DIR"]) / "pods.mjs")], cwd=os.environ["NODE_DIR"], capture_output=True, text=True, check=False,
    env=dict(os.environ, ISSUER=issuer, CLIENT_ID=PORTAL[0], CLIENT_SECRET=PORTAL[1], REDIRECT_URI=portal_client["redirect_uris"][0],
             USERNAME="gp", PASSWORD=gp["password"], STAFF_TOTP=json.dumps({"gp": gp["totp_secret"]}),
             RECORDS=f"http://{cluster_ip('records')}:8080/fhir/R4", NHS=demo["patients"][0]["nhs_number"]),
)
ok(r, "a GP signs in (Chromium, openid-client) and reads a demo patient's record from the pods")
print(next((line for line in r.stdout.splitlines() if line.startswith("pods: ")), r.stdout[-300:]).replace("pods:", "install:"))

basic = base64.b64encode(f"{INTEGRATION[0]}:{INTEGRATION[1]}".encode()).decode()
status, body = http(
    "POST", f"{identity}/oauth2/token", b"grant_type=client_credentials&scope=records.read+records.write",
    {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
)
check(status == 200, f"a client_credentials token: {status} {body[:200]}")
token = json.loads(body)["access_token"]
records = f"http://{cluster_ip('records')}:8080/fhir/R4"
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json", "X-Source-Organisation": "RXX01"}
# Not a demo patient: the demo record is seeded into this install below.
nhs = "9000000009"
patient = {"resourceType": "Patient", "id": f"p-{RUN}", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
           "name": [{"family": "Smith", "given": ["Alex"]}], "birthDate": "1970-01-01"}
observation = {"resourceType": "Observation", "id": f"o-{RUN}", "status": "final",
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": "27113001"}]}, "subject": {"reference": f"Patient/p-{RUN}"}}
for resource in (patient, observation):
    status, body = http("PUT", f"{records}/{resource['resourceType']}/{resource['id']}", json.dumps(resource).encode(), headers)
    check(status in (200, 201), f"PUT {resource['resourceType']} through the records Service: {status} {body[:300]}")


def read_back():
    status, body = http("GET", f"{records}/Observation/o-{RUN}", None, {"Authorization": f"Bearer {token}"})
    return (status, body) if status == 200 else None


deadline = time.monotonic() + 60
got = None
while got is None and time.monotonic() < deadline:
    got = read_back()
    time.sleep(0.5)
check(got is not None and json.loads(got[1])["id"] == f"o-{RUN}", f"read back, decided by consent in its own pod: {got}")

# `helm test`: the chart's own test pod asks every service's /readyz, identity's discovery
# document and records' CapabilityStatement from inside the namespace.
r = run(HELM, "test", "sc", "-n", NS, "--timeout", "2m", "--logs")
ok(r, "helm test")
check(r.stdout.count("ok http://") == len(SERVICES) + 2, f"helm test asked every service: {r.stdout[-1500:]}")

# The operator, as two pods: one leads (the Lease), and a CareApp applied with kubectl becomes
# a client in the running identity whose Secret gets a token through identity's Service.
operators = sorted(p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator")
check(len(operators) == 2, f"two operator pods: {operators}")


def lease_holder():
    r = kubectl("get", "lease", "sharedcare-operator", "-o", "json")
    return json.loads(r.stdout)["spec"].get("holderIdentity") if r.returncode == 0 else None


def wait(what, probe, seconds=90):
    got = poll(probe, seconds)
    check(got, f"{what} within {seconds} s")
    return got


leader = wait("an operator replica leads", lambda: lease_holder() in operators and lease_holder())
care = """apiVersion: sharedcare.nhs.uk/v1
kind: CareOrganisation
metadata: {name: sunrise}
spec: {odsCode: VNX01, name: Sunrise Care Home, type: CareHome, parent: QN1}
---
apiVersion: sharedcare.nhs.uk/v1
kind: CareApp
metadata: {name: APP}
spec:
  organisationRef: {name: sunrise}
  redirectUris: [https://APP.example.nhs.uk/cb]
  grantTypes: [client_credentials]
  scopes: [openid]
"""


def app_ready(name):
    r = kubectl("get", "careapp", name, "-o", "json")
    if r.returncode != 0:
        return False
    app = json.loads(r.stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == app["metadata"]["generation"] for c in app.get("status", {}).get("conditions", []))


def app_token(name):
    secret = json.loads(ok(kubectl("get", "secret", f"{name}-oidc", "-o", "json"), f"{name}'s Secret"))["data"]
    client_secret = base64.b64decode(secret["client_secret"]).decode()
    auth = base64.b64encode(f"{NS}.{name}:{client_secret}".encode()).decode()
    return http("POST", f"{identity}/oauth2/token", b"grant_type=client_credentials&scope=openid",
                {"Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"})


ok(run(KUBECTL, "-n", NS, "apply", "-f", "-", stdin=care.replace("APP", "handover")), "a CareOrganisation and a CareApp applied")
wait("the CareApp is Ready (reconciled into identity)", lambda: app_ready("handover"))
status, body = app_token("handover")
check(status == 200 and "access_token" in body, f"the app's Secret gets a token from identity's Service: {status} {body[:200]}")
# The leader's pod deleted: the other replica takes the Lease and reconciles the next app.
ok(kubectl("delete", "pod", leader, "--wait=false"), "the leading operator pod deleted")
follower = wait("another replica takes the Lease (the other one, or the deleted one's replacement)", lambda: lease_holder() not in (None, leader) and lease_holder())
ok(run(KUBECTL, "-n", NS, "apply", "-f", "-", stdin=care.replace("APP", "rota").split("---\n", 1)[1]), "a second CareApp")
wait("the second CareApp is Ready under the new leader", lambda: app_ready("rota"))
status, body = app_token("rota")
check(status == 200, f"the second app's Secret gets a token: {status} {body[:200]}")
print(f"install: operator leader {leader} deleted, {follower} took over and reconciled the next app ({'the other replica' if follower in operators else 'its replacement'})")


def scrape():
    """Every Running pod's /metrics on its health port, as Prometheus would scrape it."""
    out = {}
    for p in json.loads(ok(kubectl("get", "pods", "-o", "json"), "pods"))["items"]:
        component = p["metadata"]["labels"].get("app.kubernetes.io/component")
        if component in SERVICES and p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]:
            status, body = http("GET", f"http://{p['status']['podIP']}:9090/metrics")
            check(status == 200, f"{p['metadata']['name']} serves /metrics on its health port: {status}")
            out[component] = body
    return out


def sample(text, name, **labels):
    """The value of the sample `name{labels}` in an exposition, or None."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    return None


# Every series the chart's alerts and dashboard use is one the pods export.
r = run(HELM, "template", "sc", str(CHART), "-n", NS, "--kube-version", "1.34.4", "-f", str(values_file), "--set", "prometheusRule.enabled=true",
        "--set", "grafanaDashboard.enabled=true", "--set", "serviceMonitor.enabled=true",
        "-s", "templates/prometheusrule.yaml", "-s", "templates/dashboard.yaml")
referenced = set(re.findall(r"\b(sharedcare_[a-z_]+)", ok(r, "the alerts and the dashboard rendered")))
exported = {line.split("{")[0].split(" ")[0] for text in scrape().values() for line in text.splitlines() if line.startswith("sharedcare_")}
check(len(referenced) >= 8 and referenced <= exported, f"every series the alerts and dashboard use is exported by the pods: missing {sorted(referenced - exported)}")

def under_load(prefix, read_back):
    """Two clients writing new Observations (and, with `read_back`, reading each back) until
    stopped: returns (begin, end) and the lists of acknowledged writes, answered reads and
    failures ((method, status, body) each)."""
    acked, answered, failed = [], [], []
    halt = threading.Event()

    def client(worker):
        n = 0
        while not halt.is_set():
            n += 1
            rid = f"{prefix}-{RUN}-{worker}-{n}"
            status, body = http("PUT", f"{records}/Observation/{rid}", json.dumps(dict(observation, id=rid)).encode(), headers)
            if status not in (200, 201):
                failed.append(("PUT", status, body[:200]))
                time.sleep(0.2)
                continue
            acked.append(rid)
            if read_back:
                status, body = http("GET", f"{records}/Observation/{rid}", None, {"Authorization": f"Bearer {token}"})
                (answered if status == 200 else failed).append(rid if status == 200 else ("GET", status, body[:200]))

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(2)]

    def begin():
        for t in threads:
            t.start()
        time.sleep(2)

    def end():
        time.sleep(2)
        halt.set()
        for t in threads:
            t.join()

    return begin, end, acked, answered, failed


def crash(component):
    """SIGKILL to `component`'s process through the node's containerd (a crash: no shutdown),
    then waits for the kubelet to restart it and for it to be Ready again."""
    pod = next(
        p for p in json.loads(ok(kubectl("get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"), f"the {component} pod"))["items"]
        if "deletionTimestamp" not in p["metadata"] and p["status"].get("containerStatuses", [{}])[0].get("ready")
    )
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    ok(run(os.environ["CLUSTER_SH"], "ctr", "tasks", "kill", "-s", "SIGKILL", container), f"kill -9 the {component} process")

    def restarted():
        status = json.loads(ok(kubectl("get", "pod", pod["metadata"]["name"], "-o", "json"), f"the {component} pod"))["status"]["containerStatuses"][0]
        return status["restartCount"] >= 1 and status["ready"]

    wait(f"the kubelet restarts the {component} process and it is Ready again", restarted, 120)


# An upgrade to a new image tag, and a rollback, while a FHIR client writes and reads without
# pause: readiness, preStop, graceful SIGTERM and the rolling update together must fail no
# request.
next_tag = f"{tag}-next"
ok(run("podman", "tag", IMAGE, f"{registry}/{repository}:{next_tag}"), "a new tag of the image")
ok(run(os.environ["CLUSTER_SH"], "load", f"{registry}/{repository}:{next_tag}"), "loaded into the node")
begin, end, acked, answered, failed = under_load("u", read_back=True)
begin()
t = time.monotonic()
up = run(HELM, "upgrade", "sc", str(CHART), "-n", NS, "--reuse-values", "--set", f"image.tag={next_tag}", "--wait", "--timeout", "5m")
upgrade_s = time.monotonic() - t
images = {c["image"] for p in json.loads(ok(kubectl("get", "pods", "-o", "json"), "pods"))["items"] if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"] for c in p["spec"]["containers"]}
t = time.monotonic()
back = run(HELM, "rollback", "sc", "1", "-n", NS, "--wait", "--timeout", "5m")
rollback_s = time.monotonic() - t
end()
served = len(acked) + len(answered)
ok(up, "helm upgrade to a new image tag under load")
check(images == {f"{registry}/{repository}:{next_tag}"}, f"every pod runs the new tag after the upgrade: {images}")
ok(back, "helm rollback under load")
print(f"install: upgrade {upgrade_s:.1f} s, rollback {rollback_s:.1f} s, {served} requests served, {len(failed)} failed")
check(served > 50 and not failed, f"no request failed during the upgrade and the rollback ({served} served): {failed[:5]}")

# The records process killed while writes go on: requests fail until the kubelet has restarted
# it, but no write that was acknowledged is lost.
ok(kubectl("rollout", "status", "deployment/sc-sharedcare-records", "--timeout=120s"), "records rolled back")
begin, end, acked, _, refused = under_load("k", read_back=False)
begin()
crash("records")
end()
lost = [rid for rid in acked if http("GET", f"{records}/Observation/{rid}", None, {"Authorization": f"Bearer {token}"})[0] != 200]
print(f"install: records killed: {len(acked)} writes acknowledged, {len(refused)} refused while it was down, {len(lost)} lost")
check(len(acked) > 20 and not lost, f"every acknowledged write is there after the kill: lost {lost[:5]}")

# The audit process killed while a clinician system writes and reads: reads do not wait for the
# audit log (each access is durably in records' outbox first), and once audit is back and has
# caught up, every read that was answered is in the audit log exactly once.
begin, end, _, reads, read_failed = under_load("a", read_back=True)
begin()
before = len(reads)
crash("audit")
during = len(reads) - before
end()
check(not read_failed and during > 0, f"reads and writes went on while the audit log was down ({during} reads answered then): failed {read_failed[:5]}")


def caught_up():
    metrics = scrape()
    lag = sample(metrics.get("audit", ""), "sharedcare_consumer_lag", group="audit", topic="sharedcare.records.v1")
    pending = sample(metrics.get("records", ""), "sharedcare_outbox_pending", component="records")
    return lag == 0 and pending == 0


# The gauges are measured every 10 s: wait one period past the last request, so a 0 read is
# one measured after it.
time.sleep(11)
wait("records' outbox is empty and the audit consumer's lag is 0 (sharedcare_consumer_lag)", caught_up, 120)
rows = ok(run("psql", f"{PG_URL.rsplit('/', 1)[0]}/{DB}", "-tAc", f"SELECT action, resources FROM audit.entries WHERE resources LIKE '%a-{RUN}-%'"), "the audit log's entries")
entries = {}
for line in rows.splitlines():
    action, _, resources = line.partition("|")
    for resource in json.loads(resources):
        # "Observation/<id>/_history/<version>"
        entries.setdefault((action, resource.split("/")[1]), []).append(resource)
actions = sorted({a for a, _ in entries})
read_action = next((a for a in actions if "read" in a), None)
missing = [rid for rid in reads if len(entries.get((read_action, rid), [])) == 0]
doubled = [rid for rid in reads if len(entries.get((read_action, rid), [])) > 1]
print(f"install: audit killed: {len(reads)} reads answered ({during} while it restarted), {len(missing)} not audited, {len(doubled)} audited twice")
check(len(reads) > 20 and not missing and not doubled, f"every answered read is in the audit log exactly once (actions {actions}): missing {missing[:5]}, doubled {doubled[:5]}")

# The apps deleted while the operator runs: its finalizer deregisters each client from
# identity, so their Secrets' credentials get no token. (Uninstall the operator after its
# resources: otherwise nothing removes the finalizers.)
handover_secret = json.loads(ok(kubectl("get", "secret", "handover-oidc", "-o", "json"), "handover's Secret"))["data"]
ok(kubectl("delete", "careapps", "--all", "--wait", "--timeout=90s"), "the CareApps deleted, finalized by the operator")
ok(kubectl("delete", "careorganisations", "--all", "--wait", "--timeout=90s"), "the CareOrganisation deleted")
auth = base64.b64encode(f"{NS}.handover:{base64.b64decode(handover_secret['client_secret']).decode()}".encode()).decode()
status, body = http("POST", f"{identity}/oauth2/token", b"grant_type=client_credentials&scope=openid",
                    {"Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"})
check(status == 401, f"a deleted app's client gets no token: {status} {body[:200]}")

ok(run(HELM, "uninstall", "sc", "-n", NS, "--wait", "--timeout", "2m"), "helm uninstall")
run("podman", "rmi", f"{registry}/{repository}:{next_tag}")
values_file.unlink()
print("install: all checks passed")
