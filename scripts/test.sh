#!/usr/bin/env bash
# Runs every test of quoll: the static checks, Rust unit, property and
# model tests (the Kafka crate's against a real broker), the Python API
# tests, and the end-to-end tests that start real workers on loopback (the
# object-storage ones against a real SeaweedFS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
QUOLL_KAFKA_BROKER=$(bash scripts/kafka-broker.sh)
export QUOLL_KAFKA_BROKER
QUOLL_WEED=$(bash scripts/seaweedfs.sh)
export QUOLL_WEED
# QUOLL_LINT=0 skips the static checks (CI runs them once, not per Python).
if [ "${QUOLL_LINT:-1}" != 0 ]; then
    bash scripts/lint.sh
fi
cargo test --release --workspace
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 300 tests/python tests/kafka tests/e2e
