#!/usr/bin/env bash
# Prepares a fresh machine for quoll: a virtualenv in .venv with quoll built
# and installed (`pip install .`, which compiles the Rust engine with maturin)
# and the test tools. Idempotent; later runs only rebuild what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust) is needed to build quoll's engine: install it from rustup.rs" >&2
    exit 1
fi
# The Python to build for: $PYTHON if set (CPython 3.11, 3.12 and 3.13 are
# supported; the wheel is built for that version, not abi3: see
# docs/performance.md), else python3.
want=${PYTHON:-python3}
if ! version=$("$want" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); then
    echo "setup: cannot run the Python '$want' (set PYTHON to a CPython 3.11-3.13 interpreter)" >&2
    exit 1
fi
if [ -x .venv/bin/python ]; then
    have=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' || echo none)
    # An explicit PYTHON of another version replaces the venv; without one,
    # the existing venv is kept whatever its version.
    if [ -n "${PYTHON:-}" ] && [ "$have" != "$version" ]; then
        echo "setup: .venv has Python $have, PYTHON is $version: making a new .venv" >&2
        rm -rf .venv
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$want" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet maturin pytest pytest-timeout hypothesis cryptography playwright
# Servers the metrics tests run for real: Prometheus (and promtool) and a
# headless Chromium for the dashboard (Playwright drives Debian's chromium;
# it never downloads a browser of its own).
missing=""
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="$missing prometheus"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
if [ -n "$missing" ]; then
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        echo "setup: the metrics tests need Debian's$missing: install as root with apt-get" >&2
        exit 1
    fi
    echo "setup: installing$missing (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# A wheel built by maturin into target/, so repeated runs are incremental.
.venv/bin/python -m pip install --quiet --force-reinstall --no-deps .
echo "setup: quoll installed in .venv ($(.venv/bin/quoll --help >/dev/null && echo ok))"
