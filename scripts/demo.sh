#!/usr/bin/env bash
# The main job: sets up quoll (see setup.sh), then runs word count on three
# workers with resilience, kills one with SIGKILL mid-stream, restarts it,
# and checks the final counts against the input.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
