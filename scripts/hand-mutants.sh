#!/usr/bin/env bash
# Hand-made engine mutants: each tests/mutants/NN-name.patch breaks one
# thing the engine promises; this applies it to the work tree, builds what
# its catching tests need, runs them and expects every one of them to fail,
# then reverts it. Not run by CI (a wheel build per mutant): a habit for
# developers, see docs/testing.md.
#
#   scripts/hand-mutants.sh [--baseline] [NAME...]
#
# NAME      a patch's file name, its stem or its number (03); default: all.
# --baseline  apply nothing: run each mutant's tests on the clean engine and
#           expect them to pass (a test that fails there proves nothing).
#
# A patch starts with `# ` lines, before its diff (git apply skips them):
#   # mutant: what it breaks            (one line, for the table)
#   # pytest: NODE_ID                   (a test that must fail; repeatable)
#   # cargo-test: ARGS                  (`cargo test --release -p quoll-core
#                                         ARGS` must report a failed test;
#                                         ARGS with its own `-p PKG`: that
#                                         package instead)
# Any pytest line means the wheel is rebuilt and installed into .venv with
# the mutant (and the clean one again at the end, whatever happens).
#
# Logs go to target/hand-mutants/ (never into the work tree; --baseline's
# to target/hand-mutants/baseline/). Prints a
# table: mutant, tests, result, seconds. Exit status 1 if any mutant
# survived (or, with --baseline, any test failed), 2 on a setup problem.
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=0
if [ "${1:-}" = --baseline ]; then
    baseline=1
    shift
fi
py=.venv/bin/python
if [ ! -x $py ]; then
    echo "hand-mutants: no .venv: run scripts/setup.sh first" >&2
    exit 2
fi

patches=()
if [ $# -eq 0 ]; then
    patches=(tests/mutants/*.patch)
else
    for name in "$@"; do
        name=${name%.patch}
        name=${name##*/}
        found=(tests/mutants/"$name"*.patch)
        if [ ! -f "${found[0]}" ] || [ ${#found[@]} -ne 1 ]; then
            echo "hand-mutants: no single patch matches '$name' in tests/mutants/" >&2
            exit 2
        fi
        patches+=("${found[0]}")
    done
fi

logs=target/hand-mutants
if [ $baseline = 1 ]; then logs=$logs/baseline; fi
mkdir -p "$logs"

applied=""          # the patch now applied to the work tree, if any
mutant_wheel=0      # .venv holds an engine built with a mutant

install_wheel() {
    $py -m pip install --quiet --force-reinstall --no-deps . >"$1" 2>&1
}

cleanup() {
    local status=$?
    if [ -n "$applied" ]; then
        if git apply -R "$applied"; then
            echo "hand-mutants: reverted $applied" >&2
        else
            echo "hand-mutants: COULD NOT REVERT $applied: check 'git diff'" >&2
            status=2
        fi
        applied=""
    fi
    if [ $mutant_wheel = 1 ]; then
        echo "hand-mutants: reinstalling the clean engine into .venv" >&2
        if install_wheel "$logs/clean-wheel.log"; then
            mutant_wheel=0
        else
            echo "hand-mutants: the clean wheel did not build (see $logs/clean-wheel.log); .venv still holds a mutant" >&2
            status=2
        fi
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The values of one header key of a patch, one per line.
header() {
    sed -n '/^diff --git /q; s/^# '"$1"': *//p' "$2"
}

# Runs one test; prints "failed" (a test ran and failed), "passed", or
# "error" (nothing was tested: a build, collection or usage problem).
# The test's output is appended to $3, its failure line to $3.why.
run_test() {
    local kind=$1 spec=$2 log=$3 rc=0
    echo "=== $kind: $spec" >>"$log"
    if [ "$kind" = pytest ]; then
        COLUMNS=200 $py -m pytest -q -p no:cacheprovider --timeout 300 -rf "$spec" >>"$log.one" 2>&1 || rc=$?
        cat "$log.one" >>"$log"
        case $rc in
            0) echo passed ;;
            1) { echo "$spec:"; grep -m1 '^E ' "$log.one" | sed 's/^E  *//' || true; } | cut -c1-300 >>"$log.why"
               echo failed ;;
            *) echo error ;;
        esac
    else
        local pkg="-p quoll-core"
        case " $spec " in *" -p "*) pkg="" ;; esac
        # shellcheck disable=SC2086  # ARGS are words for cargo
        cargo test --release $pkg $spec >>"$log.one" 2>&1 || rc=$?
        cat "$log.one" >>"$log"
        if [ $rc = 0 ]; then
            echo passed
        elif grep -q '^test result: FAILED' "$log.one"; then
            # The first failing test's panic message (the line after "panicked at").
            { echo "$spec:"; grep -m1 -A1 "panicked at" "$log.one" | tail -n1 || true; } | cut -c1-300 >>"$log.why"
            echo failed
        else
            echo error
        fi
    fi
    rm -f "$log.one"
}

rows=()
bad=0
total_start=$(date +%s)
for patch in "${patches[@]}"; do
    stem=$(basename "$patch" .patch)
    log=$logs/$stem.log
    : >"$log"
    rm -f "$log.why"
    start=$(date +%s)
    mapfile -t pytests < <(header pytest "$patch")
    mapfile -t cargos < <(header cargo-test "$patch")
    if [ ${#pytests[@]} -eq 0 ] && [ ${#cargos[@]} -eq 0 ]; then
        echo "hand-mutants: $patch names no test" >&2
        exit 2
    fi
    echo "hand-mutants: $stem ($(header mutant "$patch"))" >&2

    if [ $baseline = 0 ]; then
        mapfile -t files < <(git apply --numstat "$patch" | cut -f3)
        if [ ${#files[@]} -eq 0 ]; then
            echo "hand-mutants: $patch changes no file" >&2
            exit 2
        fi
        if ! git diff --quiet HEAD -- "${files[@]}"; then
            echo "hand-mutants: ${files[*]} differ from HEAD: commit or stash first" >&2
            exit 2
        fi
        if ! git apply --check "$patch" 2>>"$log"; then
            echo "hand-mutants: $patch no longer applies (see $log): remake it against the current engine" >&2
            rows+=("$stem|-|DOES NOT APPLY|0")
            bad=1
            continue
        fi
        git apply "$patch"
        applied=$patch
    fi
    result=""
    # (--baseline tests the engine .venv holds: scripts/setup.sh's.)
    if [ ${#pytests[@]} -gt 0 ] && [ $baseline = 0 ]; then
        echo "hand-mutants:   building the wheel" >&2
        mutant_wheel=1
        if ! install_wheel "$log.wheel"; then
            cat "$log.wheel" >>"$log"
            result="DOES NOT BUILD"
        fi
        rm -f "$log.wheel"
    fi
    caught=0 passed=0 errors=0
    if [ -z "$result" ]; then
        # Each test as "KIND SPEC" (a pytest node id, or cargo test ARGS).
        for test in "${pytests[@]/#/pytest }" "${cargos[@]/#/cargo }"; do
            kind=${test%% *} spec=${test#* }
            echo "hand-mutants:   $kind $spec" >&2
            r=$(run_test "$kind" "$spec" "$log")
            echo "hand-mutants:     $r" >&2
            case $r in failed) caught=$((caught + 1)) ;; passed) passed=$((passed + 1)) ;; *) errors=$((errors + 1)) ;; esac
        done
        n=$((caught + passed + errors))
        if [ $errors -gt 0 ]; then
            result="ERROR ($errors of $n did not run)"
        elif [ $baseline = 1 ]; then
            if [ $caught = 0 ]; then result="clean: pass"; else result="CLEAN FAILS ($caught of $n)"; fi
        elif [ $passed = 0 ]; then
            result="caught ($caught of $n)"
        else
            result="SURVIVED ($passed of $n passed)"
        fi
    fi
    case $result in caught*|clean:*) ;; *) bad=1 ;; esac
    if [ -n "$applied" ]; then
        git apply -R "$applied"
        applied=""
    fi
    secs=$(($(date +%s) - start))
    tests=$(printf '%s ' "${pytests[@]}" "${cargos[@]}")
    rows+=("$stem|$tests|$result|$secs")
    echo "hand-mutants:   $result in $secs s (log: $log)" >&2
    if [ -s "$log.why" ]; then sed 's/^/hand-mutants:     /' "$log.why" >&2; fi
done

{
    echo
    echo "hand-made mutants, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)$([ $baseline = 1 ] && echo ', baseline (no mutant applied)'):"
    for row in "${rows[@]}"; do
        IFS='|' read -r stem tests result secs <<<"$row"
        printf '  %-44s %-22s %5s s  %s\n' "$stem" "$result" "$secs" "$tests"
    done
    echo "  total $(($(date +%s) - total_start)) s; logs and failure lines in $logs/"
} | tee "$logs/summary.txt"
exit $bad
