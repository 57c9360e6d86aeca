#!/usr/bin/env bash
# Run the sample site with tasks travelling through the official Pub/Sub emulator:
#   emulator -> migrate -> tasks_provision -> sample_setup -> tasks_scheduler & -> runserver
# Push subscriptions deliver to http://127.0.0.1:$PORT/tasks/pubsub/. Ctrl-C stops all of it.
#   scripts/sample-emulator.sh   (PORT=8000, EMULATOR_PORT=8085, GCP_PROJECT_ID=sample-project)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

PORT="${PORT:-8000}"
EMULATOR_PORT="${EMULATOR_PORT:-8085}"
export PORT
export DJANGO_SETTINGS_MODULE=sample_site.settings
export GCP_PROJECT_ID="${GCP_PROJECT_ID:-sample-project}"
export PUBSUB_EMULATOR_HOST="127.0.0.1:${EMULATOR_PORT}"
export CLOUD_RUN_SERVICE_URL="http://127.0.0.1:${PORT}"
RUN_DIR="$ROOT/.cache/sample-emulator"

command -v gcloud >/dev/null 2>&1 || {
    echo "error: gcloud is not on PATH. Install the Google Cloud CLI and its" \
         "pubsub-emulator component, then run this again." >&2
    exit 1
}
if curl -fs "http://${PUBSUB_EMULATOR_HOST}/" >/dev/null 2>&1; then
    echo "error: something already answers on ${PUBSUB_EMULATOR_HOST}. Stop it, or choose" \
         "another port with EMULATOR_PORT=8086." >&2
    exit 1
fi

# Each background process gets its own process group (setsid), so one kill stops it and
# its children (gcloud starts a Java server).
BACKGROUND=()
stop_background() {
    local pid
    for pid in "${BACKGROUND[@]}"; do
        kill -TERM -- "-${pid}" 2>/dev/null || true
    done
    for pid in "${BACKGROUND[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_background EXIT
trap 'exit 130' INT TERM

rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR/data"
echo "Starting the Pub/Sub emulator on ${PUBSUB_EMULATOR_HOST} (log: $RUN_DIR/emulator.log)"
setsid gcloud beta emulators pubsub start --host-port="${PUBSUB_EMULATOR_HOST}" \
    --project="${GCP_PROJECT_ID}" --data-dir="$RUN_DIR/data" >"$RUN_DIR/emulator.log" 2>&1 &
EMULATOR_PID=$!
BACKGROUND+=("$EMULATOR_PID")

for _ in $(seq 1 120); do
    if curl -fs "http://${PUBSUB_EMULATOR_HOST}/" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$EMULATOR_PID" 2>/dev/null; then
        echo "error: the Pub/Sub emulator exited while starting; its log follows." >&2
        cat "$RUN_DIR/emulator.log" >&2
        exit 1
    fi
    sleep 0.5
done
curl -fs "http://${PUBSUB_EMULATOR_HOST}/" >/dev/null 2>&1 || {
    echo "error: the Pub/Sub emulator did not answer within 60 seconds; see" \
         "$RUN_DIR/emulator.log." >&2
    exit 1
}

"$PY" manage.py migrate --verbosity 0
"$PY" manage.py tasks_provision
"$PY" manage.py sample_setup

echo "Starting the local scheduler (log: $RUN_DIR/scheduler.log)"
setsid "$PY" manage.py tasks_scheduler >"$RUN_DIR/scheduler.log" 2>&1 &
BACKGROUND+=("$!")

cat <<MSG

  Sample site: http://127.0.0.1:${PORT}/        (tasks go through ${PUBSUB_EMULATOR_HOST})
  Admin:       http://127.0.0.1:${PORT}/admin/  (login: admin / admin)

MSG
# runserver gets its own process group too (its autoreloader runs a child process), and the
# script waits for it: `wait` returns on Ctrl-C or a TERM, and the EXIT trap stops them all.
setsid "$PY" manage.py runserver "127.0.0.1:${PORT}" &
SERVER_PID=$!
BACKGROUND+=("$SERVER_PID")
wait "$SERVER_PID"
