#!/usr/bin/env bash
# Static checks. Python: mypy over python/ (the `wallaroo` and `quoll`
# packages) with the settings in pyproject.toml's [tool.mypy]; mypy is
# installed into .venv (made by scripts/setup.sh) if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    echo "lint: no .venv: run scripts/setup.sh first" >&2
    exit 1
fi
if ! .venv/bin/python -m mypy --version >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet mypy
fi
echo "lint: mypy python/"
.venv/bin/python -m mypy python/
