"""Checks of the Helm chart (charts/sharedcare) with helm itself: `helm lint` and `helm template`
for each value set in charts/sharedcare/ci/, then what a platform team relies on in what it
renders. Environment: HELM (the helm binary), CHART (the chart directory), PROMQL_CHECK
(tools/promql-check). Prints
"chart: all checks passed" at the end.
"""

import json
import os
import subprocess
import tomllib
from urllib.parse import urlparse
from pathlib import Path

import yaml
from checks import check

HELM = os.environ["HELM"]
CHART = Path(os.environ["CHART"])
KUBE = "1.31.0"
SERVICES = ["identity", "records", "consent", "audit", "passport", "portal", "connectors"]


def helm(*args):
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def render(values, *sets):
    args = ["template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / values)]
    for s in sets:
        args += ["--set", s]
    r = helm(*args)
    check(r.returncode == 0, f"helm template with {values} {' '.join(sets)}: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def of(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


value_sets = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
check(len(value_sets) >= 5, "value sets: minimal, production, existing Secrets, a database per service, ServiceMonitor")
for v in value_sets:
    r = helm("lint", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / v))
    check(r.returncode == 0, f"helm lint with {v}: {r.stdout.strip()} {r.stderr.strip()}")

# Minimal: one Deployment, Service, ServiceAccount, NetworkPolicy per service, hardened.
docs = render("minimal-values.yaml")
deployments = of(docs, "Deployment")
check(sorted(deployments) == sorted(f"sc-sharedcare-{s}" for s in SERVICES), "a Deployment per service")
for name, d in deployments.items():
    spec = d["spec"]["template"]["spec"]
    c = spec["containers"][0]
    service = name.removeprefix("sc-sharedcare-")
    check(c["args"][2:4] == ["serve", service], f"{name} runs `sharedcare serve {service}`")
    check(spec["automountServiceAccountToken"] is False, f"{name} mounts no service account token")
    check(spec["securityContext"]["runAsNonRoot"] is True, f"{name} runs as non-root")
    check(spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    sc = c["securityContext"]
    check(
        sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"],
        f"{name}: read-only root filesystem, no privilege escalation, every capability dropped",
    )
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name} probes /healthz and /readyz")
    check(c["args"][-2:] == ["--health", "0.0.0.0:9090"] and {"name": "health", "containerPort": 9090} in c["ports"], f"{name} serves health and metrics on a port of their own")
    check(all(c[p]["httpGet"]["port"] == "health" for p in ("startupProbe", "livenessProbe", "readinessProbe")), f"{name} is probed on the health port")
    check(c["readinessProbe"]["timeoutSeconds"] > 5, f"{name}: /readyz may wait 5 s on Kafka, and its probe waits longer")
    check(c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "5"] and spec["terminationGracePeriodSeconds"] == 30, f"{name} keeps serving 5 s after it is told to stop, within a 30 s grace period")
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    check({"checksum/config", "checksum/secret"} <= set(annotations), f"{name} rolls when its configuration or the chart's Secrets change")
    check(c["image"] == "ghcr.io/sharedcare/sharedcare:0.1.0", f"{name}: the image from registry, repository and the chart's appVersion: {c['image']}")
    check("requests" in c["resources"] and "limits" in c["resources"], f"{name} has resources")
    env = {e["name"]: e for e in c["env"]}
    check("secretKeyRef" in env["SHAREDCARE_DATABASE__URL"]["valueFrom"], f"{name} takes the database URL from a Secret")
    check(spec["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone", f"{name} spreads across zones")
    check(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", f"{name} knows its pod's name")
check(
    "SHAREDCARE_AUTH__CLIENT_SECRET" in {e["name"] for e in deployments["sc-sharedcare-records"]["spec"]["template"]["spec"]["containers"][0]["env"]},
    "records gets its client secret from a Secret",
)
accounts = of(docs, "ServiceAccount")
check(len(accounts) == 7 and all(a["automountServiceAccountToken"] is False for a in accounts.values()), "a ServiceAccount per service, no token")
check(len(of(docs, "HorizontalPodAutoscaler")) == 5 and len(of(docs, "PodDisruptionBudget")) == 6, "HPA and PDB where enabled")
services = of(docs, "Service")
check(all({p["name"] for p in s["spec"]["ports"]} == {"http", "grpc", "health"} for n, s in services.items() if n != "sc-sharedcare-connectors"), "a Service each for HTTP, gRPC and health")
mllp = {p["name"]: p for p in services["sc-sharedcare-connectors"]["spec"]["ports"]}
check(sorted(mllp) == ["grpc", "health", "http", "mllp"] and mllp["mllp"]["port"] == 2575, "the connectors' Service carries HL7 v2 over MLLP on 2575 too")
connectors_pod = deployments["sc-sharedcare-connectors"]["spec"]["template"]["spec"]
check({"name": "mllp", "containerPort": 2575} in connectors_pod["containers"][0]["ports"], "the connectors' pod listens for MLLP")
secrets = of(docs, "Secret")
check(sorted(secrets) == ["sc-sharedcare-database", "sc-sharedcare-key-encryption", "sc-sharedcare-migrate-database", "sc-sharedcare-passport-client", "sc-sharedcare-portal-client", "sc-sharedcare-records-client"], "Secrets for the database, the key-encryption key and the clients")


def key_encryption(deployment):
    """The KEK file a pod is told to read, and the Secret items mounted there."""
    spec = deployment["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volume = next((v for v in spec["volumes"] if v["name"] == "key-encryption"), None)
    items = [(src["secret"]["name"], i["key"], i["path"]) for src in (volume or {}).get("projected", {}).get("sources", []) for i in src["secret"]["items"]]
    return env.get("SHAREDCARE_KEY_ENCRYPTION__KEY_FILE"), env.get("SHAREDCARE_KEY_ENCRYPTION__PREVIOUS_KEY_FILES"), mounts.get("key-encryption"), items


for name, d in deployments.items():
    service = name.removeprefix("sc-sharedcare-")
    got = key_encryption(d)
    if service in ("identity", "audit"):
        check(got == ("/etc/sharedcare/key-encryption/current", None, "/etc/sharedcare/key-encryption", [("sc-sharedcare-key-encryption", "key-encryption-key", "current")]), f"{name} reads the key-encryption key from the chart's Secret: {got}")
    else:
        check(got == (None, None, None, []), f"{name} never sees the key-encryption key: {got}")
kek = secrets["sc-sharedcare-key-encryption"]["stringData"]["key-encryption-key"]
check(len(kek) == 43 and kek not in of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"], "the KEK is in its Secret, not the ConfigMap")
records_pod = deployments["sc-sharedcare-records"]["spec"]["template"]["spec"]
check(next(v for v in records_pod["volumes"] if v["name"] == "exports") == {"name": "exports", "emptyDir": {"sizeLimit": "20Gi"}}, "exports on an emptyDir by default")
shared = of(render("minimal-values.yaml", "services.records.exportVolume.existingClaim=sharedcare-exports"), "Deployment")["sc-sharedcare-records"]["spec"]["template"]["spec"]
check(next(v for v in shared["volumes"] if v["name"] == "exports") == {"name": "exports", "persistentVolumeClaim": {"claimName": "sharedcare-exports"}}, "exports on a claim every replica mounts when named")
rotating = of(render("minimal-values.yaml", "keyEncryption.previousSecret=old-kek"), "Deployment")["sc-sharedcare-identity"]
got = key_encryption(rotating)
check(got[1] == '["/etc/sharedcare/key-encryption/previous"]' and ("old-kek", "key-encryption-key", "previous") in got[3], f"while rotating, the previous KEK is mounted and opened too: {got}")
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "keyEncryption.key=")
check(r.returncode != 0 and "keyEncryption.key is required" in r.stderr, f"no KEK, no install: {r.stderr.strip()}")
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "keyEncryption.key=short")
check(r.returncode != 0 and "/keyEncryption/key" in r.stderr, f"a KEK that is not 32 bytes of base64url is refused: {r.stderr.strip()}")
# The migration Job is a pre-install hook: it runs before the release's Secrets exist, so it
# reads a hook-made copy created before it (a lower weight) and removed when the hooks succeed.
hook_secret = secrets["sc-sharedcare-migrate-database"]["metadata"]["annotations"]
check(hook_secret["helm.sh/hook"] == "pre-install,pre-upgrade" and int(hook_secret["helm.sh/hook-weight"]) < 0 and "hook-succeeded" in hook_secret["helm.sh/hook-delete-policy"], "the migration's database Secret is a hook made before the Job")
job_ref = of(docs, "Job")["sc-sharedcare-migrate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
check(job_ref == {"name": "sc-sharedcare-migrate-database", "key": "database-url"}, f"the Job reads it: {job_ref}")
config = of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"]
settings = tomllib.loads(config)  # the rendered configuration is valid TOML
# ... and the binary accepts it as it stands (unknown keys would stop every pod at start).
with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"chart-{os.getpid()}.toml"), "w") as f:
    f.write(config)
for service in SERVICES:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")}
    run = subprocess.run([os.environ["BINARY"], "--config", f.name, "--dump-config", "serve", service], capture_output=True, text=True, env=clean)
    check(run.returncode == 0, f"sharedcare serve {service} accepts the chart's configuration: {run.stderr.strip()[-300:]}")
os.unlink(f.name)
check('consent_url = "http://sc-sharedcare-consent:50051"' in config, "records and the passport reach consent by its Service")
check("postgres://" not in config and "secret" not in config.lower(), "no secret in the ConfigMap")
job = of(docs, "Job")["sc-sharedcare-migrate"]
check(job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade", "migrations run as a pre-install, pre-upgrade hook")
check(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "the hook runs `sharedcare migrate`")
check(not of(docs, "ServiceMonitor") and not of(docs, "Ingress"), "no ServiceMonitor or Ingress unless asked")

check(settings["shutdown_grace_ms"] == 12500, "each drain phase gets half of the grace period left after the preStop pause")

# NetworkPolicies: from the ingress, exactly the services a route leads to (identity, the FHIR
# facade and Consent, the passport's API, the audit log's tiles, the web), on the HTTP port
# only; each service reaches only what it needs.
ROUTED = {"identity", "records", "consent", "audit", "passport", "portal"}


def reachable_from(policies, namespace):
    """Services whose NetworkPolicy admits pods of `namespace`, and on which ports."""
    out = {}
    for name, pol in policies.items():
        for rule in pol["spec"]["ingress"]:
            if any(peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == namespace for peer in rule.get("from", [])):
                out[name.removeprefix("sc-sharedcare-")] = sorted(p["port"] for p in rule["ports"])
    return out


policies = of(docs, "NetworkPolicy")
check(reachable_from(policies, "ingress-nginx") == {s: [8080] for s in ROUTED}, f"the ingress reaches the HTTP port of exactly the routed services: {reachable_from(policies, 'ingress-nginx')}")
for s in SERVICES:
    check(policies[f"sc-sharedcare-{s}"]["spec"]["policyTypes"] == ["Ingress", "Egress"], f"{s} has ingress and egress rules")
egress = policies["sc-sharedcare-passport"]["spec"]["egress"]
callees = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for rule in egress for peer in rule.get("to", []) if "podSelector" in peer and "app.kubernetes.io/component" in peer["podSelector"]["matchLabels"]]
check(sorted(callees) == ["audit", "consent", "identity"], "the passport reaches identity, consent and audit, nothing else of ours")
consent_out = [peer for rule in policies["sc-sharedcare-consent"]["spec"]["egress"] for peer in rule.get("to", []) if "podSelector" in peer and "app.kubernetes.io/component" in peer["podSelector"]["matchLabels"]]
check({p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in consent_out} == {"identity"}, "consent calls only identity")
consent_ports = {port["port"] for rule in policies["sc-sharedcare-consent"]["spec"]["egress"] for peer in rule.get("to", []) if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "identity" for port in rule["ports"]}
check(consent_ports == {8080, 50051}, "consent reaches identity's keys (HTTP) and its organisation directory (gRPC)")
check('identity_url = "http://sc-sharedcare-identity:50051"' in config, "consent reads the organisation directory from identity's Service")
check("public_tiles = false" in config, "the audit log's tiles need a token unless auditPublicTiles is set")
portal_out = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for rule in policies["sc-sharedcare-portal"]["spec"]["egress"] for peer in rule.get("to", []) if "podSelector" in peer and "app.kubernetes.io/component" in peer["podSelector"]["matchLabels"]]
check(sorted(set(portal_out)) == ["audit", "consent", "identity", "passport", "records"], "the portal reaches identity and the services its pages read, nothing else")
portal_env = {e["name"]: e for e in deployments["sc-sharedcare-portal"]["spec"]["template"]["spec"]["containers"][0]["env"]}
check(portal_env["SHAREDCARE_PORTAL__CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "sc-sharedcare-portal-client", "the portal's OIDC client secret from a Secret")
check(settings["portal"]["passport_url"] == "http://sc-sharedcare-passport:50051", "the portal reaches the passport by its Service")
check(settings["connectors"]["mllp_listen"] == "0.0.0.0:2575", "the connectors listen for MLLP on every interface of the pod")
check(not any(2575 in [p["port"] for p in rule.get("ports", [])] for rule in policies["sc-sharedcare-connectors"]["spec"]["ingress"]), "nobody reaches MLLP until services.connectors.mllp.from names the senders' networks")
# Every peer URL comes from the one dependency map, and matches the NetworkPolicy egress.
for svc, callees in {"records": ["consent"], "consent": ["identity"], "audit": ["identity"], "passport": ["consent", "audit"], "portal": ["passport", "consent", "records", "audit", "identity"], "connectors": ["records"]}.items():
    urls = sorted(k.removesuffix("_url") for k in settings[svc] if k.endswith("_url") and k != "public_url")
    check(urls == sorted(callees), f"{svc} is configured with exactly the peers it calls ({urls})")
    reached = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for rule in policies[f"sc-sharedcare-{svc}"]["spec"]["egress"] for peer in rule.get("to", []) if "podSelector" in peer and "app.kubernetes.io/component" in peer["podSelector"]["matchLabels"] and any(p["port"] == 50051 for p in rule["ports"])}
    check(reached == set(callees), f"{svc}'s NetworkPolicy reaches the gRPC port of exactly the peers it calls")

# Production: Ingress with TLS routing Consent to consent; OTLP egress; identity out to NHS login.
docs = render("production-values.yaml")
ingress = of(docs, "Ingress")["sc-sharedcare"]
paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
check(paths["/fhir/R4/Consent"] == "sc-sharedcare-consent" and paths["/fhir"] == "sc-sharedcare-records", "the Ingress sends Consent to consent, the rest of FHIR to records")
check(paths["/passport/v1"] == "sc-sharedcare-passport" and paths["/passport"] == paths["/portal"] == paths["/assets"] == "sc-sharedcare-portal", "the passport's API to the passport, the pages to the portal")
exact = [p for p in ingress["spec"]["rules"][0]["http"]["paths"] if p["pathType"] == "Exact"]
check([(p["path"], p["backend"]["service"]["name"]) for p in exact] == [("/", "sc-sharedcare-portal")], "the start page (exactly /) to the portal, the rest of / to identity")
check(ingress["spec"]["tls"][0]["secretName"] == "sharedcare-tls", "TLS")
check(paths["/audit/v1"] == "sc-sharedcare-audit", "the audit log's checkpoint and tiles to audit, for monitors")
backends = {p["backend"]["service"]["name"].removeprefix("sc-sharedcare-") for p in ingress["spec"]["rules"][0]["http"]["paths"]}
check(backends == set(reachable_from(of(docs, "NetworkPolicy"), "ingress-nginx")), "what the Ingress routes to is what the NetworkPolicies let the ingress reach")
check(all(p["backend"]["service"]["port"] == {"name": "http"} for p in ingress["spec"]["rules"][0]["http"]["paths"]), "no route reaches the health port (/metrics, /readyz)")
check(urlparse(tomllib.loads(of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"])["portal"]["public_url"]).hostname == ingress["spec"]["rules"][0]["host"], "the issuer is on the Ingress's host")
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "production-values.yaml"), "--set", "issuer=https://id.ics.example.nhs.uk")
check(r.returncode != 0 and "issuer: https://id.ics.example.nhs.uk is not on ingress.host" in r.stderr, "an issuer on another host than the Ingress is refused: " + r.stderr.strip()[:200])
check(tomllib.loads(of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"])["kafka"]["namespace"] == "", "production uses the topic names infra/k8s/kafka.yaml creates (no prefix)")
check(of(docs, "HorizontalPodAutoscaler")["sc-sharedcare-records"]["spec"]["maxReplicas"] == 20, "autoscaling bounds from values")
identity_out = policies = of(docs, "NetworkPolicy")["sc-sharedcare-identity"]["spec"]["egress"]
check(any("ipBlock" in peer for rule in identity_out for peer in rule.get("to", [])), "identity may reach the upstream logins")
check(any(r.get("ports", [{}])[0].get("port") == 4317 for r in of(docs, "NetworkPolicy")["sc-sharedcare-records"]["spec"]["egress"]), "OTLP egress when a collector is set")
# Kafka over Strimzi's SCRAM TLS listener: each service logs in as its own user, its password
# from that user's Secret; the cluster CA mounted where the config points.
config = of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"]
check('security_protocol = "sasl_ssl"' in config and 'ssl_ca_location = "/etc/sharedcare/kafka-ca/ca.crt"' in config, "Kafka over SASL_SSL with the cluster CA")
senders = tomllib.loads(config)["connectors"]["senders"]
check(senders == [{"application": "PAS", "facility": "RX1", "ods_code": "RX1", "client_id": "pas-feed", "client_secret_file": "/etc/sharedcare/senders/pas-feed", "local_time": "uk"}], f"the PAS is a configured sender, its secret read from a file: {senders}")
connectors_pod = of(docs, "Deployment")["sc-sharedcare-connectors"]["spec"]["template"]["spec"]
projected = next(v for v in connectors_pod["volumes"] if v["name"] == "senders")["projected"]["sources"]
check(projected == [{"secret": {"name": "pas-feed-client", "items": [{"key": "client-secret", "path": "pas-feed"}]}}], f"the sender's secret comes from its own Secret: {projected}")
check({"name": "senders", "mountPath": "/etc/sharedcare/senders", "readOnly": True} in connectors_pod["containers"][0]["volumeMounts"], "mounted where the config points")
connectors_conf = tomllib.loads(config)["connectors"]
tls = next(v for v in connectors_pod["volumes"] if v["name"] == "mllp-tls")["secret"]
check(tls["secretName"] == "mllp-tls" and connectors_conf["mllp_tls_cert"] == "/etc/sharedcare/mllp-tls/tls.crt" and connectors_conf["mllp_tls_key"] == "/etc/sharedcare/mllp-tls/tls.key", "MLLP inside TLS from the named Secret")
mllp_in = [rule for rule in of(docs, "NetworkPolicy")["sc-sharedcare-connectors"]["spec"]["ingress"] if any(p["port"] == 2575 for p in rule.get("ports", []))]
check(len(mllp_in) == 1 and mllp_in[0]["from"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "MLLP reachable only from the senders' network")
check('feeds = ["pas-feed"]' in config and 'trusted_proxies = ["10.42.0.0/16"]' in config, "feeds for records and the ingress as identity's trusted proxy")
for service in SERVICES:
    pod = of(docs, "Deployment")[f"sc-sharedcare-{service}"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    user = env["SHAREDCARE_KAFKA__SASL_USERNAME"]["value"]
    ref = env["SHAREDCARE_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    want = ("kafka-passport" if service == "passport" else service, "password")
    check(user == service and (ref["name"], ref["key"]) == want, f"{service} logs in to Kafka as {service}, password from {want[0]}")
    ca = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")["secret"]
    check(ca["secretName"] == "sharedcare-cluster-ca-cert" and ca["items"][0] == {"key": "ca.crt", "path": "ca.crt"}, f"{service} mounts the Kafka cluster CA")
check("SHAREDCARE_KAFKA__SASL_USERNAME" not in str(of(render("minimal-values.yaml"), "Deployment")), "no Kafka login unless SASL is chosen")
# The operator: `sharedcare operator run`, two replicas, RBAC limited to its own resources,
# Secrets in the namespace, its Lease and Events; no cluster-wide role.
op = of(docs, "Deployment")["sc-sharedcare-operator"]
pod = op["spec"]["template"]["spec"]
check(pod["containers"][0]["args"][2:] == ["operator", "run"] and op["spec"]["replicas"] == 2, "the operator runs `sharedcare operator run`, two replicas")
check(of(docs, "ServiceAccount")["sc-sharedcare-operator"]["automountServiceAccountToken"] is True, "only the operator mounts a token")
check(not of(docs, "ClusterRole") and not of(docs, "ClusterRoleBinding"), "no cluster-wide RBAC")
rules = of(docs, "Role")["sc-sharedcare-operator"]["rules"]
granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
check(granted == {
    ("sharedcare.nhs.uk", "careorganisations"), ("sharedcare.nhs.uk", "careapps"),
    ("sharedcare.nhs.uk", "careorganisations/status"), ("sharedcare.nhs.uk", "careapps/status"),
    ("sharedcare.nhs.uk", "careorganisations/finalizers"), ("sharedcare.nhs.uk", "careapps/finalizers"),
    ("", "secrets"), ("coordination.k8s.io", "leases"), ("events.k8s.io", "events"),
}, f"the operator's Role: its resources, Secrets, Leases, Events: {sorted(granted)}")
check(all("*" not in rule["verbs"] for rule in rules), "no wildcard verbs")
env = {e["name"]: e for e in pod["containers"][0]["env"]}
check(env["SHAREDCARE_AUTH__CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "sc-sharedcare-operator-client", "the operator's client secret from a Secret")
check(of(docs, "NetworkPolicy")["sc-sharedcare-operator"]["spec"]["ingress"] == [], "nothing reaches the operator")
crds = [d for d in yaml.safe_load_all((CHART / "crds" / "sharedcare-operator.yaml").read_text()) if d]
check(sorted(d["spec"]["names"]["kind"] for d in crds) == ["CareApp", "CareOrganisation"], "the chart installs the operator's CRDs")
check("sc-sharedcare-operator" not in of(render("minimal-values.yaml"), "Deployment"), "no operator unless enabled")

# Existing Secrets: the chart makes none and names them; Gateway API route instead of Ingress.
docs = render("existing-secrets-values.yaml")
check(not of(docs, "Secret"), "existing Secrets: the chart makes none")
env = {e["name"]: e for e in of(docs, "Deployment")["sc-sharedcare-records"]["spec"]["template"]["spec"]["containers"][0]["env"]}
ref = env["SHAREDCARE_DATABASE__URL"]["valueFrom"]["secretKeyRef"]
check((ref["name"], ref["key"]) == ("sharedcare-db", "uri"), "the database URL comes from the named Secret and key")
check(env["SHAREDCARE_AUTH__CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "records-client", "the client secret too")
got = key_encryption(of(docs, "Deployment")["sc-sharedcare-audit"])
check(got[3] == [("sharedcare-kek", "kek", "current")], f"the key-encryption key from the named Secret and key: {got}")
route = of(docs, "HTTPRoute")["sc-sharedcare"]
check(route["spec"]["parentRefs"][0]["name"] == "ics-gateway", "an HTTPRoute on the named Gateway")
routed = {b["name"].removeprefix("sc-sharedcare-") for rule in route["spec"]["rules"] for b in rule["backendRefs"]}
check(routed == set(reachable_from(of(docs, "NetworkPolicy"), "gateway")) == ROUTED, "the Gateway's proxies reach exactly the services its routes lead to")
check(all(b["port"] == 8080 for rule in route["spec"]["rules"] for b in rule["backendRefs"]), "the HTTPRoute reaches only the HTTP port")

# A database per service: each service's URL from its own Secret, migrated one by one.
docs = render("database-per-service-values.yaml")
check("sc-sharedcare-database" not in of(docs, "Secret"), "no shared database Secret when every service has its own")
env = {e["name"]: e for e in of(docs, "Deployment")["sc-sharedcare-records"]["spec"]["template"]["spec"]["containers"][0]["env"]}
ref = env["SHAREDCARE_DATABASE__URL"]["valueFrom"]["secretKeyRef"]
check((ref["name"], ref["key"]) == ("sharedcare-db-records", "uri"), "records' URL from its own Secret")
containers = of(docs, "Job")["sc-sharedcare-migrate"]["spec"]["template"]["spec"]["containers"]
check(sorted(c["args"][1] for c in containers) == sorted(SERVICES), "a migration per service, each on its own database")

# ServiceMonitor on and off.
docs = render("servicemonitor-values.yaml")
monitor = of(docs, "ServiceMonitor")["sc-sharedcare"]
check(monitor["spec"]["endpoints"][0]["path"] == "/metrics" and monitor["metadata"]["labels"]["release"] == "prometheus", "a ServiceMonitor scraping /metrics")
check(monitor["spec"]["endpoints"][0]["port"] == "health", "scraped on the health port")
check(reachable_from(of(docs, "NetworkPolicy"), "monitoring") == {s: [9090] for s in SERVICES}, "Prometheus reaches the health port only")

# The alerts an on-call engineer needs, each scoped to this release's pods, and the dashboard.
rule = of(docs, "PrometheusRule")["sc-sharedcare"]
check(rule["metadata"]["labels"]["release"] == "prometheus", "the PrometheusRule carries the labels Prometheus selects rules by")
alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
for name in ["SharedcareDown", "SharedcareConsentUnavailable", "SharedcareOutboxBacklog", "SharedcareAuditLag", "SharedcareConsumerFailing", "SharedcareErrorRate"]:
    check(name in alerts, f"an alert {name}: {sorted(alerts)}")
for name, a in alerts.items():
    check('namespace="default"' in a["expr"] and 'job=~"sc-sharedcare-.*"' in a["expr"], f"{name} looks only at this release's pods: {a['expr']}")
    check(a["labels"]["severity"] in ("critical", "warning") and a["annotations"]["summary"] and a["annotations"]["description"], f"{name} has a severity, a summary and a description")
check('group="audit"' in alerts["SharedcareAuditLag"]["expr"] and "> 1000" in alerts["SharedcareAuditLag"]["expr"], "the audit lag alert: the audit consumer, past its threshold")
check(alerts["SharedcareConsentUnavailable"]["labels"]["severity"] == "critical", "consent unavailable pages (every read is refused)")
dashboard = json.loads(of(docs, "ConfigMap")["sc-sharedcare-dashboard"]["data"]["sharedcare.json"])
check(of(docs, "ConfigMap")["sc-sharedcare-dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1", "the dashboard ConfigMap has the label Grafana's sidecar loads")
exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
for metric in ["sharedcare_requests_total", "sharedcare_request_duration_seconds_bucket", "sharedcare_consent_failures_total", "sharedcare_outbox_oldest_age_seconds", "sharedcare_consumer_lag", "sharedcare_consumed_events_total"]:
    check(metric in exprs, f"the dashboard shows {metric}")
# Every expression parses with Prometheus' own PromQL parser (as Prometheus loads the rules),
# and the parser refuses a broken one (so the check can fail).
exprs = {f"alert {name}": a["expr"] for name, a in alerts.items()}
exprs.update({f"panel {p['title']} {t['refId']}": t["expr"].replace("$namespace", "default") for p in dashboard["panels"] for t in p["targets"]})
r = subprocess.run([os.environ["PROMQL_CHECK"]], input=json.dumps(exprs), capture_output=True, text=True, check=False)
check(r.returncode == 0 and r.stdout.count("ok ") == len(exprs), f"every alert and panel expression parses: {r.stdout.strip()} {r.stderr.strip()}")
r = subprocess.run([os.environ["PROMQL_CHECK"]], input=json.dumps({"broken": "sum(rate(sharedcare_requests_total[5m]) >"}), capture_output=True, text=True, check=False)
check(r.returncode == 1 and "FAILED broken" in r.stdout, f"and a broken one is refused: {r.stdout.strip()}")
check(not of(render("minimal-values.yaml"), "PrometheusRule"), "no PrometheusRule unless asked")

# `helm test`: a pod asking every service's /readyz, admitted to the health port by each policy.
docs = render("minimal-values.yaml")
tester = of(docs, "Pod")["sc-sharedcare-test"]
check(tester["metadata"]["annotations"]["helm.sh/hook"] == "test", "a helm test hook")
args = tester["spec"]["containers"][0]["args"]
check(args[0] == "check" and sorted(a for a in args if a.endswith("/readyz")) == sorted(f"http://sc-sharedcare-{s}:9090/readyz" for s in SERVICES), f"the test asks every service's /readyz: {args}")
check(tester["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True and tester["spec"]["automountServiceAccountToken"] is False, "the test pod is hardened like the rest")
for name, pol in of(docs, "NetworkPolicy").items():
    if name == "sc-sharedcare-operator":
        continue
    admitted = [r for r in pol["spec"]["ingress"] for peer in r.get("from", []) if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test"]
    check([p["port"] for r in admitted for p in r["ports"]] == [9090], f"{name} admits the test pod to its health port only")
check(not of(render("minimal-values.yaml", "tests.enabled=false"), "Pod"), "no test pod when tests.enabled is false")

# The settings platform teams expect of a chart, chart-wide (or from a parent chart's global)
# and per service; a digest pins the image.
docs = render(
    "minimal-values.yaml",
    "global.imageRegistry=registry.ics.example.nhs.uk",
    "global.anyParentSetting=1",
    "image.digest=sha256:" + "ab" * 32,
    "global.nodeSelector.pool=care",
    "services.records.nodeSelector.pool=records",
    "tolerations[0].key=dedicated",
    "tolerations[0].operator=Exists",
    "priorityClassName=ics-critical",
    "podAnnotations.team=ics-platform",
    "services.records.podLabels.tier=data",
    "serviceAccount.annotations.iam\\.gke\\.io/gcp-service-account=sc@ics.iam.gserviceaccount.com",
    "extraEnvVars[0].name=RUST_BACKTRACE",
    "extraEnvVars[0].value=full",
    "services.audit.extraVolumes[0].name=spare",
    "services.audit.extraVolumes[0].emptyDir.sizeLimit=1Gi",
    "services.audit.extraVolumeMounts[0].name=spare",
    "services.audit.extraVolumeMounts[0].mountPath=/spare",
    "updateStrategy.type=RollingUpdate",
    "updateStrategy.rollingUpdate.maxUnavailable=0",
    "services.records.probes.readiness.timeoutSeconds=9",
    "shutdown.preStopSeconds=10",
    "shutdown.terminationGracePeriodSeconds=60",
)
deployments = of(docs, "Deployment")
records = deployments["sc-sharedcare-records"]
pod = records["spec"]["template"]["spec"]
c = pod["containers"][0]
check(c["image"] == "registry.ics.example.nhs.uk/sharedcare/sharedcare@sha256:" + "ab" * 32, f"global.imageRegistry and a digest: {c['image']}")
check(pod["nodeSelector"] == {"pool": "records"} and deployments["sc-sharedcare-consent"]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "care"}, "a service's nodeSelector wins over global's")
check(pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}] and pod["priorityClassName"] == "ics-critical", "tolerations and priority class")
check(records["spec"]["template"]["metadata"]["annotations"]["team"] == "ics-platform" and records["spec"]["template"]["metadata"]["labels"]["tier"] == "data", "pod annotations and labels")
check(of(docs, "ServiceAccount")["sc-sharedcare-records"]["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "sc@ics.iam.gserviceaccount.com"}, "service account annotations (Workload Identity, IRSA)")
check({"name": "RUST_BACKTRACE", "value": "full"} in c["env"], "extra environment variables")
audit_pod = deployments["sc-sharedcare-audit"]["spec"]["template"]["spec"]
check({"name": "spare", "emptyDir": {"sizeLimit": "1Gi"}} in audit_pod["volumes"] and {"name": "spare", "mountPath": "/spare"} in audit_pod["containers"][0]["volumeMounts"], "extra volumes and mounts")
check(records["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}, "the update strategy")
check(c["readinessProbe"]["timeoutSeconds"] == 9 and c["readinessProbe"]["periodSeconds"] == 5, "a probe setting overridden, the others kept")
check(c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "10"] and pod["terminationGracePeriodSeconds"] == 60, "the preStop pause and grace period")
check('shutdown_grace_ms = 25000' in of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"], "the binary's drain follows the grace period")

# extraConfig: dotted keys at the root of the file (not inside the last table), which the
# binary takes.
docs = render("minimal-values.yaml", "extraConfig=identity.seed_demo = true")
config = of(docs, "ConfigMap")["sc-sharedcare-config"]["data"]["sharedcare.toml"]
check(tomllib.loads(config)["identity"]["seed_demo"] is True, "extraConfig's dotted keys reach the service they name")
with open(f.name, "w") as out:
    out.write(config)
run = subprocess.run([os.environ["BINARY"], "--config", f.name, "--dump-config", "serve", "identity"], capture_output=True, text=True, env={k: v for k, v in os.environ.items() if not k.startswith("SHAREDCARE_")})
check(run.returncode == 0 and "seed_demo = true" in run.stdout, f"and the binary accepts them: {run.stderr.strip()[-300:]}")
os.unlink(f.name)

# Wrong values fail at install, naming the value.
for sets, named in [
    (["services.records.replicas=many"], "/services/records/replicas"),
    (["issuer=id.example"], "/issuer"),
    (["kafka.brokers=kafka"], "/kafka/brokers"),
    (["telemetry.logFormat=xml"], "/telemetry/logFormat"),
    (["kafka.securityProtocol=SASL_SSL"], "/kafka/securityProtocol"),
    (["kafka.users.record.username=r"], "/kafka/users"),
    (["servcies.records.enabled=false"], "servcies"),
    (["image.digest=latest"], "/image/digest"),
    (["services.records.probes.readiness.timeout=9"], "timeout"),
    (["services.records.public=true"], "public"),
]:
    args = ["template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml")]
    for s in sets:
        args += ["--set", s]
    r = helm(*args)
    check(r.returncode != 0 and named in r.stderr, f"{' '.join(sets)} is refused naming {named}: {r.stderr.strip()[:160]}")
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "shutdown.preStopSeconds=30")
check(r.returncode != 0 and "shutdown.preStopSeconds (30) must be less than shutdown.terminationGracePeriodSeconds (30)" in r.stderr, "a preStop pause that leaves no time to drain is refused: " + r.stderr.strip()[:200])
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "database.url=")
check(r.returncode != 0 and "database.url is required" in r.stderr, "a database is required: " + r.stderr.strip()[:160])

# A service outside the cluster without an ingress: its own NodePort/LoadBalancer Service with
# only the ports asked for, admitted from the peers named; never the health port.
docs = render(
    "minimal-values.yaml",
    "services.connectors.external.enabled=true", "services.connectors.external.type=LoadBalancer",
    "services.connectors.external.ports={mllp}", "services.connectors.external.from[0].ipBlock.cidr=10.20.0.0/16",
)
external = of(docs, "Service")["sc-sharedcare-connectors-external"]["spec"]
check(external["type"] == "LoadBalancer" and [(x["name"], x["port"]) for x in external["ports"]] == [("mllp", 2575)], f"an external Service with MLLP only: {external}")
check(not any(name.endswith("-external") for name in of(docs, "Service") if name != "sc-sharedcare-connectors-external"), "no other service is exposed")
admitted = [r for r in of(docs, "NetworkPolicy")["sc-sharedcare-connectors"]["spec"]["ingress"] if {"ipBlock": {"cidr": "10.20.0.0/16"}} in r.get("from", [])]
check([p["port"] for r in admitted for p in r["ports"]] == [2575], f"its NetworkPolicy admits the named peers to MLLP only: {admitted}")
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "services.identity.external.enabled=true",
         "--set", "services.identity.external.type=NodePort", "--set", "services.identity.external.ports={health}", "--set", "services.identity.external.from[0].ipBlock.cidr=0.0.0.0/0")
check(r.returncode != 0 and "/services/identity/external/ports/0" in r.stderr, "the health port is never exposed: " + r.stderr.strip()[:200])
r = helm("template", "sc", str(CHART), "--kube-version", KUBE, "-f", str(CHART / "ci" / "minimal-values.yaml"), "--set", "services.identity.external.enabled=true")
check(r.returncode != 0 and "missing properties 'type', 'ports', 'from'" in r.stderr, "an external Service must say its type, ports and who may reach it: " + r.stderr.strip()[:200])

print("chart: all checks passed")
