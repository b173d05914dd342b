#!/usr/bin/env bash
# Mutation testing of quoll-core with cargo-mutants, within a time budget.
# Not run by CI: it is a habit for developers (see docs/testing.md).
#
#   scripts/mutants.sh MINUTES [SHARD] [FILE_GLOB...]
#
# MINUTES  wall-clock budget for the whole run; when it runs out the run is
#          stopped and what was tested so far is reported.
# SHARD    k/n: test only every n-th mutant, starting at k (default 0/1, all).
#          On a small shared machine a full run takes hours: sample with it.
# FILE_GLOB restrict to these source files (default: every file of
#          quoll-core), e.g. 'crates/quoll-core/src/checkpoint_store.rs'.
#
# Installs cargo-mutants with `cargo install` when it is missing. Each
# mutant gets at most MUTANT_TIMEOUT seconds of tests (default 120). The
# output goes to target/mutants/mutants.out (never into the work tree).
# Prints the surviving ("missed") mutants and the counts, and exits 0 even
# when some survive: the figures are the result, to be read and recorded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/mutants.sh MINUTES [SHARD k/n] [FILE_GLOB...]" >&2
    exit 2
fi
minutes=$1
shift
shard=0/1
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+/[0-9]+$ ]]; then
    shard=$1
    shift
fi
files=()
for glob in "$@"; do
    files+=(--file "$glob")
done

if ! command -v cargo-mutants >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-mutants" ]; then
    echo "mutants: installing cargo-mutants (cargo install --locked cargo-mutants)" >&2
    cargo install --locked cargo-mutants
fi
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

out=target/mutants
mkdir -p "$out"
rm -rf "$out/mutants.out"
echo "mutants: quoll-core, shard $shard, ${files[*]:-all files}, budget $minutes min, started $(date -u +%FT%TZ)" >&2
set +e
timeout --signal=INT "$((minutes * 60))" \
    cargo mutants --package quoll-core --shard "$shard" --jobs 1 \
    --timeout "${MUTANT_TIMEOUT:-120}" --output "$out" --no-shuffle "${files[@]}"
status=$?
set -e
if [ $status -eq 124 ] || [ $status -eq 130 ]; then
    echo "mutants: the $minutes min budget ran out; the counts below are for the mutants tested so far" >&2
fi

dir=$out/mutants.out
count() { if [ -f "$dir/$1.txt" ]; then grep -c . "$dir/$1.txt" || true; else echo 0; fi; }
echo
echo "surviving mutants (missed: no test failed):"
if [ -s "$dir/missed.txt" ]; then sed 's/^/  /' "$dir/missed.txt"; else echo "  none"; fi
echo
echo "caught $(count caught), missed $(count missed), timeout $(count timeout), unviable $(count unviable)"
echo "(full log: $dir; finished $(date -u +%FT%TZ))"
