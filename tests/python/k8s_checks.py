"""Checks of what a cluster needs first (infra/k8s): every event stream Sharedcare uses has its
KafkaTopic (state topics kept whole), each service's KafkaUser may write only its own topics and
read only what it consumes, each service has its own Postgres database and role with backups
configured, the collector receives OTLP, and the kind cluster has nodes in several zones.
Environment: K8S (the infra/k8s directory). Prints "k8s: all checks passed" at the end.
"""

import os
from pathlib import Path

import yaml
from checks import check

K8S = Path(os.environ["K8S"])
SERVICES = ["identity", "records", "consent", "audit", "passport", "portal", "connectors"]
# What each service publishes and consumes (its `topics()` and its consumers in the code).
PUBLISHES = {
    "identity": ["sharedcare.identity.v1"],
    "records": ["sharedcare.records.v1", "sharedcare.records.state.v1"],
    "consent": ["sharedcare.consent.v1", "sharedcare.consent.state.v1"],
    "audit": ["sharedcare.audit.v1"],
    "passport": ["sharedcare.passport.v1"],
    "portal": [],
    "connectors": [],
}
CONSUMES = {
    "identity": [],
    "records": [],
    "consent": ["sharedcare.records.v1"],
    "audit": ["sharedcare.records.v1", "sharedcare.consent.v1", "sharedcare.passport.v1"],
    "passport": ["sharedcare.records.state.v1", "sharedcare.consent.state.v1"],
    "portal": [],
    "connectors": [],
}


def docs(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


kafka = docs("kafka.yaml")
topics = {d["metadata"]["name"]: d["spec"] for d in kafka if d["kind"] == "KafkaTopic"}
every = sorted(t for ts in PUBLISHES.values() for t in ts)
check(sorted(topics) == every, "a KafkaTopic for every stream Sharedcare publishes")
for t, spec in topics.items():
    state = t.endswith(".state.v1")
    check((spec["config"]["retention.ms"] == -1) == state, f"{t}: {'kept whole' if state else 'a retention period'}")
    check(spec["replicas"] >= 3 and spec["config"]["min.insync.replicas"] >= 2, f"{t}: replicated")
cluster = next(d for d in kafka if d["kind"] == "Kafka")
pools = [d for d in kafka if d["kind"] == "KafkaNodePool"]
check(any("controller" in p["spec"]["roles"] for p in pools), "Kafka in KRaft mode: a node pool runs the controllers")
check(cluster["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False, "no topics made by accident")
users = {d["metadata"]["name"]: d["spec"] for d in kafka if d["kind"] == "KafkaUser"}
check(sorted(users) == sorted(SERVICES), "a KafkaUser per service")
for s, spec in users.items():
    acls = spec["authorization"]["acls"]
    writes = sorted(a["resource"]["name"] for a in acls if "Write" in a["operations"])
    reads = sorted(a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic" and "Read" in a["operations"])
    groups = [a["resource"]["name"] for a in acls if a["resource"]["type"] == "group"]
    check(writes == sorted(PUBLISHES[s]), f"{s} writes only its own topics")
    check(reads == sorted(CONSUMES[s]), f"{s} reads only what it consumes")
    check(groups == ([s] if CONSUMES[s] else []), f"{s} consumes under its own group")
    check(spec["authentication"]["type"] == "scram-sha-512", f"{s} authenticates with SCRAM")

pg = docs("postgres.yaml")
pg_cluster = next(d for d in pg if d["kind"] == "Cluster")
roles = sorted(r["name"] for r in pg_cluster["spec"]["managed"]["roles"])
check(roles == sorted(SERVICES), "a Postgres role per service")
databases = {d["spec"]["name"]: d["spec"]["owner"] for d in pg if d["kind"] == "Database"}
check(databases == {s: s for s in SERVICES}, "a database per service, owned by its role")
check("barmanObjectStore" in pg_cluster["spec"]["backup"] and any(d["kind"] == "ScheduledBackup" for d in pg), "backups configured")
check(pg_cluster["spec"]["instances"] >= 3, "three instances")

otel = docs("otel-collector.yaml")
config = yaml.safe_load(next(d for d in otel if d["kind"] == "ConfigMap")["data"]["config.yaml"])
check(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317"), "the collector receives OTLP/gRPC on 4317")
check("otlp" in config["service"]["pipelines"]["traces"]["receivers"], "traces flow from OTLP")

kind = docs("kind.yaml")[0]
zones = {n.get("labels", {}).get("topology.kubernetes.io/zone") for n in kind["nodes"] if n["role"] == "worker"}
check(len(zones - {None}) >= 3, "kind: workers in three zones")
print("k8s: all checks passed")
