#!/usr/bin/env bash
# Apache Kafka, one KRaft node (broker + controller), from its Maven Central jars. No Docker.
#
#   infra/kafka.sh start   fetch the jars if missing, format storage once, start; idempotent
#   infra/kafka.sh stop    stop the broker started here
#   infra/kafka.sh status  exit 0 when it is running
#
# Environment: KAFKA_PORT (default 19092), KAFKA_HOME (state, default infra/.state/kafka-$KAFKA_PORT),
# KAFKA_HEAP (default 384m). Several brokers on different ports may run side by side.
# KAFKA_POD_ADDRESS (default 172.30.0.1): when that address exists (infra/cluster.sh's node),
# a PLAINTEXT listener on it, port KAFKA_PORT+3, for the node's pods.
# KAFKA_SCRAM_USERS="name:password,…" adds a SASL_PLAINTEXT listener on KAFKA_PORT+2 that takes
# SCRAM-SHA-512 logins for those users (credentials written when the storage is formatted, as
# Strimzi's scram-sha-512 listener does), for the tests of the binary's SASL settings.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-19092}"
ctrl_port=$((port + 1))
sasl_port=$((port + 2))
# Pods of infra/cluster.sh's node reach the broker on the node's address (when it exists).
pod_address="${KAFKA_POD_ADDRESS:-172.30.0.1}"
pod_port=$((port + 3))
scram_users="${KAFKA_SCRAM_USERS:-}"
home="${KAFKA_HOME:-$here/.state/kafka-$port}"
lib="$here/kafka/lib"
pidfile="$home/kafka.pid"
log="$home/kafka.log"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
# The broker answers Kafka's ApiVersions request without an error (an open port is not enough:
# while KRaft starts, the broker accepts connections and closes them).
answering() {
  python3 - "$port" <<'PY' 2>/dev/null
import socket, struct, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(struct.pack(">ihhih", 10, 18, 0, 1, -1))
    head = s.recv(10)
ok = len(head) >= 10 and struct.unpack(">iih", head[:10])[1:] == (1, 0)
sys.exit(0 if ok else 1)
PY
}

fetch_jars() {
  if [ ! -f "$lib/.complete" ]; then
    command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka's jars" >&2; exit 1; }
    echo "kafka.sh: fetching Apache Kafka jars from Maven Central into $lib" >&2
    rm -rf "$lib"
    (cd "$here/kafka" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime >&2)
    touch "$lib/.complete"
  fi
}

start() {
  if running; then echo "kafka: already running, listening on 127.0.0.1:$port"; return 0; fi
  fetch_jars
  mkdir -p "$home/data"
  local listeners="PLAINTEXT://127.0.0.1:$port" scram=() user
  if [ -n "$scram_users" ]; then
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    for user in ${scram_users//,/ }; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
    done
  fi
  # A here-string, not a pipe: under pipefail, grep -q's early exit fails the pipeline.
  if grep -q "inet $pod_address/" <<<"$(ip -4 addr show 2>/dev/null)"; then
    listeners="$listeners,PODS://$pod_address:$pod_port"
  fi
  cat > "$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl_port
listeners=$listeners,CONTROLLER://127.0.0.1:$ctrl_port
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,PODS:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.segment.bytes=67108864
log.retention.hours=24
log.cleaner.dedupe.buffer.size=33554432
PROPS
  local cp="$lib/*"
  if [ ! -f "$home/data/meta.properties" ]; then
    java -cp "$cp" kafka.tools.StorageTool format --standalone -t "sharedcare-test-cluster-$port" \
      -c "$home/server.properties" "${scram[@]}" > "$home/format.log" 2>&1 \
      || java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
      -c "$home/server.properties" "${scram[@]}" >> "$home/format.log" 2>&1 \
      || { echo "kafka.sh: formatting storage failed, see $home/format.log" >&2; cat "$home/format.log" >&2; exit 1; }
  fi
  nohup java -Xms128m -Xmx"${KAFKA_HEAP:-384m}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$cp" kafka.Kafka "$home/server.properties" > "$log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if listening && answering; then echo "kafka: started, answering on 127.0.0.1:$port (log $log)"; return 0; fi
    running || { echo "kafka.sh: broker exited, see $log" >&2; tail -n 40 "$log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not answer on $port within 60 s, see $log" >&2; exit 1
}

stop() {
  if running; then
    local pid; pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "kafka: stopped (port $port)"
  else
    echo "kafka: not running (port $port)"
  fi
  rm -f "$pidfile"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) running && listening ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
