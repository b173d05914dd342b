#!/usr/bin/env bash
# Static checks, all of which CI runs: rustfmt, clippy (warnings are
# errors), rustdoc (warnings are errors), and mypy over python/ (the
# `wallaroo` and `quoll` packages, settings in pyproject.toml's
# [tool.mypy]; mypy is installed into .venv if it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    echo "lint: no .venv: run scripts/setup.sh first" >&2
    exit 1
fi
echo "lint: cargo fmt --check"
cargo fmt --all --check
echo "lint: cargo clippy --all-targets -D warnings"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "lint: rustdoc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --quiet
if ! .venv/bin/python -m mypy --version >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet mypy
fi
echo "lint: mypy python/"
.venv/bin/python -m mypy python/
