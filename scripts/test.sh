#!/usr/bin/env bash
# Run every check on a fresh machine: lint, missing migrations, then the test suite twice,
# on SQLite and on PostgreSQL. Installs what the suite needs (Python deps, Chromium, the
# Pub/Sub emulator) first. Extra arguments go to both pytest runs:
#   scripts/test.sh                 everything
#   scripts/test.sh -k emulator -x  a subset
# The SQLite run is repeated on Django 6.0, since the lock file pins 6.1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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
record() {  # record NAME EXIT_CODE
    local status="ok"
    if [ "$2" -eq 5 ]; then
        status="FAILED (pytest collected no tests)"
    elif [ "$2" -ne 0 ]; then
        status="FAILED (exit $2)"
    fi
    [ "$2" -eq 0 ] || FAILED=1
    SUMMARY+=("$(printf '%-22s %s' "$1:" "$status")")
}

say "ruff check"
"$PY" -m ruff check .
record "ruff check" $?

say "mypy (django-stubs)"
"$PY" -m mypy
record "mypy" $?

say "makemigrations --check"
"$PY" manage.py makemigrations --check --dry-run --settings=tests.settings
record "makemigrations" $?

say "pytest on SQLite"
env -u GYRINX_TEST_DB "$PY" -m pytest "$@"
record "pytest (sqlite)" $?

say "pytest on PostgreSQL"
GYRINX_TEST_DB=postgres "$PY" -m pytest "$@"
record "pytest (postgres)" $?

# Date bombs: the tests that read the clock (marker "clock") run again with the clock a year
# ahead and a year back, so a fixed calendar date the real clock will pass fails today.
for offset in +365d -365d; do
    say "pytest on SQLite with the clock moved $offset (marker clock, no emulator or browser)"
    env -u GYRINX_TEST_DB faketime -f "$offset" "$PY" -m pytest \
        -m "clock and not emulator and not browser" "$@"
    rc=$?
    # A subset asked for on the command line may hold no clock tests; that is not a failure.
    if [ "$rc" -eq 5 ] && [ "$#" -gt 0 ]; then rc=0; fi
    record "pytest (clock $offset)" "$rc"
done

say "pytest on SQLite with Django 6.0 (the lock has 6.1; both are supported)"
UV_PYTHON_DOWNLOADS=never "$ROOT/.cache/tools/bin/uv" run --no-sync --with 'Django>=6.0,<6.1' \
    python -m pytest "$@"
record "pytest (django 6.0)" $?

say "Summary"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
