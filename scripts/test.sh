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
QUOLL_MOTO=$(bash scripts/moto-server.sh)
export QUOLL_MOTO
# QUOLL_ONCE=0 skips what does not depend on the Python version: the
# static checks and the Rust tests of the crates without Python (CI runs
# them once, with the last Python; the binding's tests run every time).
if [ "${QUOLL_ONCE:-1}" != 0 ]; then
    bash scripts/lint.sh
    cargo test --release --workspace
else
    cargo test --release -p quoll-py
fi
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout 300 tests/python tests/kafka tests/e2e
