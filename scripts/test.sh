#!/usr/bin/env bash
# Run every check on a fresh machine: lint, types, missing migrations, the documentation site,
# the package, then the test suite on SQLite, on PostgreSQL, and on Django 6.0. Installs what
# the suite needs (Python deps, Chromium, the Pub/Sub emulator) first. Extra arguments go to
# every pytest run:
#   scripts/test.sh                 everything
#   scripts/test.sh -k emulator -x  a subset
# The suite runs in GYRINX_TEST_WORKERS pytest-xdist workers (default 4: most of its time is
# spent waiting on the emulator, PostgreSQL, Chromium and subprocesses, not on the CPU). The
# PostgreSQL run leaves out the tests that the SQLite run already ran with the same result; the
# Django 6.0 run runs what can differ between Django 6.0 and 6.1; the tests that read the clock
# run once more with the clock a year ahead (the date-bomb check). tests/conftest.py lists both selections with the reason for
# each (docs/testing.md, "What CI runs").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Python keeps each module it compiles (__pycache__, ignored by git and the package build), so
# the many Python processes of a run (every pytest worker, the sample site's and the fresh
# project's commands, the servers the tests start) compile Django, the Google clients and the
# test modules once, not each again. An environment with PYTHONDONTWRITEBYTECODE set (this
# project's CI machines set it) would make every process compile everything it imports.
unset PYTHONDONTWRITEBYTECODE

say() { printf '\n== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- Python and the locked dependencies (exports PY) -------------------------------------
say "Python environment"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
set +e  # from here on every step runs, and failures are counted instead

APT_UPDATED=""
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: installing $* needs root." >&2; return 1; }
        sudo=(sudo)
    fi
    if [ -z "$APT_UPDATED" ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
        APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# --- The real parts the suite starts ---------------------------------------------------
say "System tools"
if [ ! -x /usr/bin/chromium ]; then
    echo "Chromium is missing; installing Debian's chromium package."
    apt_install chromium || die "could not install chromium. Install it with: apt-get install -y chromium"
fi
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"

java_major() {
    # "17.0.15" -> 17; the old "1.8.0_402" style -> 8.
    local version
    version="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    case "$version" in
        1.*) echo "${version#1.}" | cut -d. -f1 ;;
        *) echo "${version%%.*}" ;;
    esac
}
emulator_ok() {
    local root
    command -v gcloud >/dev/null 2>&1 || return 1
    gcloud beta emulators pubsub --help >/dev/null 2>&1 || return 1
    # --help works without the component, so look for the emulator's launcher too.
    root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)"
    [ -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]
}
java_ok() { command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 17 ] 2>/dev/null; }
if ! emulator_ok || ! java_ok; then
    echo "The Pub/Sub emulator or Java 17+ is missing; installing them."
    apt_install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless || true
fi
java_ok || die "Java 17 or newer is needed by the Pub/Sub emulator. Install it with: apt-get install -y openjdk-17-jre-headless"
emulator_ok || die "the Pub/Sub emulator is not installed. Install the Google Cloud CLI and its pubsub-emulator component (apt-get install -y google-cloud-cli-pubsub-emulator, or gcloud components install pubsub-emulator)."
echo "java: $(java -version 2>&1 | head -n1)"
echo "gcloud: $(gcloud --version 2>/dev/null | head -n1), Pub/Sub emulator installed"

if ! command -v initdb >/dev/null 2>&1; then
    # Debian's postgresql-15 keeps its programs in a versioned directory, off PATH.
    pg_bin="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] && export PATH="$pg_bin:$PATH"
fi
command -v initdb >/dev/null 2>&1 || die "PostgreSQL's initdb was not found. Install PostgreSQL 15 with: apt-get install -y postgresql-15"
echo "postgres: $(initdb --version)"

if ! command -v faketime >/dev/null 2>&1; then
    echo "faketime is missing; installing Debian's faketime package (the clock-moved run needs it)."
    apt_install faketime || die "could not install faketime. Install it with: apt-get install -y faketime"
fi

# --- The checks ----------------------------------------------------------------------
declare -a SUMMARY=()
FAILED=0
record() {  # record NAME EXIT_CODE [SECONDS [CPU_SECONDS]]
    local status="ok"
    if [ "$2" -eq 5 ]; then
        status="FAILED (pytest collected no tests)"
    elif [ "$2" -ne 0 ]; then
        status="FAILED (exit $2)"
    fi
    [ "$2" -eq 0 ] || FAILED=1
    SUMMARY+=("$(printf '%-26s %-34s %-7s %s' "$1:" "$status" "${3:+$3 s}" "${4:+CPU $4 s}")")
}

WORKERS="${GYRINX_TEST_WORKERS:-4}"
# loadgroup: tests sharing an xdist_group (one module's expensive fixture) stay on one worker.
PARALLEL=(-n "$WORKERS" --dist loadgroup)
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

children_cpu() {  # children_cpu: CHILDREN_CPU = the CPU seconds (user + system) of this
    # shell's finished children so far. `times` must run in this shell, not in $(...): a
    # subshell has no finished children of its own.
    times >"$SCRATCH/times"
    CHILDREN_CPU=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/);
                                  printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' \
                       "$SCRATCH/times")
}
timed() {  # timed NAME COMMAND...: run it, record its result, how long it took, and its CPU
    # time (the processes it waited for: pytest, its workers and what they ran; a server a
    # test starts in the background, such as PostgreSQL, is not counted)
    local name="$1" start code cpu_before
    shift
    start=$SECONDS
    children_cpu
    cpu_before=$CHILDREN_CPU
    "$@"
    code=$?
    children_cpu
    record "$name" "$code" "$((SECONDS - start))" "$((CHILDREN_CPU - cpu_before))"
    return "$code"
}

say "ruff check"
timed "ruff check" "$PY" -m ruff check .

say "mypy (django-stubs)"
timed "mypy" "$PY" -m mypy

say "makemigrations --check"
timed "makemigrations" "$PY" manage.py makemigrations --check --dry-run --settings=tests.settings

say "docs: mkdocs build --strict (a broken link or a page missing from the nav fails)"
# Not -q: mkdocs then drops the warnings that strict mode counts.
timed "docs (mkdocs)" "$PY" -m mkdocs build --strict --site-dir "$SCRATCH/site"

say "package: python -m build, twine check"
package() {
    # --installer uv: the isolated build environments come from uv's cache, not a pip download.
    PATH="$ROOT/.cache/tools/bin:$PATH" "$PY" -m build --installer uv --outdir "$SCRATCH/dist" . \
        >"$SCRATCH/build.log" 2>&1 \
        || { cat "$SCRATCH/build.log"; return 1; }
    tail -n 1 "$SCRATCH/build.log"
    "$PY" -m twine check --strict "$SCRATCH"/dist/*
}
timed "package (build+twine)" package

say "pytest on SQLite ($WORKERS workers)"
# --durations: the slowest tests, where CI's time goes (docs/testing.md, "What CI runs").
timed "pytest (sqlite)" env -u GYRINX_TEST_DB "$PY" -m pytest "${PARALLEL[@]}" --durations=25 "$@"
SQLITE_CODE=$?

none_selected_ok() {  # none_selected_ok OK MESSAGE COMMAND...: pytest's exit 5 (no test
    # selected) counts as success when OK is 1, saying MESSAGE; any other exit code stands.
    local ok="$1" message="$2" code
    shift 2
    "$@"
    code=$?
    if [ "$code" -eq 5 ] && [ "$ok" -eq 1 ]; then
        echo "$message"
        return 0
    fi
    return "$code"
}
# Every selected test left out of a later run is fine when the SQLite run ran them.
LEFT_OUT_OK=$(( SQLITE_CODE == 0 ))
left_out_ok() {
    none_selected_ok "$LEFT_OUT_OK" \
        "Every selected test is left out of this run; the SQLite run ran them." "$@"
}

say "pytest on PostgreSQL ($WORKERS workers), without what is the same on every database"
timed "pytest (postgres)" left_out_ok env GYRINX_TEST_DB=postgres "$PY" -m pytest "${PARALLEL[@]}" \
    --leave-out same-on-every-database "$@"

say "pytest on SQLite with Django 6.0 (the lock has 6.1; both are supported): what differs"
timed "pytest (django 6.0)" left_out_ok env -u GYRINX_TEST_DB UV_PYTHON_DOWNLOADS=never \
    "$ROOT/.cache/tools/bin/uv" run --no-sync --with 'Django>=6.0,<6.1' \
    python -m pytest "${PARALLEL[@]}" --leave-out same-on-every-django "$@"

# Date bombs: the tests that read the clock (marker "clock") run again with the clock a year
# ahead, so a fixed calendar date the real clock will pass fails today (docs/testing.md, "Time").
# Each of them also starts next to a new year's midnight (20 s before, 1 or 20 s after, by test),
# which is a new hour, day, month and year at once (GYRINX_TEST_CLOCK_AT, tests/conftest.py):
# runs built "two minutes ago" that straddle an hour or a day fail here, not at 00:01 one day.
# A subset asked for on the command line may hold no clock tests; that is not a failure.
SUBSET=$(( $# > 0 ))
subset_ok() {
    none_selected_ok "$SUBSET" "The tests asked for hold none that read the clock." "$@"
}
say "pytest on SQLite with the clock moved +365d, each test next to a new year (marker clock, no emulator or browser)"
timed "pytest (clock +365d)" subset_ok env -u GYRINX_TEST_DB GYRINX_TEST_CLOCK_AT=newyear \
    GYRINX_TEST_CLOCK_OFFSET=-20,1,20 faketime -f +365d \
    "$PY" -m pytest "${PARALLEL[@]}" -m "clock and not emulator and not browser" "$@"

say "Summary"
printf '%s\n' "${SUMMARY[@]}"
printf 'total: %d s\n' "$SECONDS"
exit "$FAILED"
