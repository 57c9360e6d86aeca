#!/usr/bin/env bash
# Run the sample site on a fresh machine: dependencies, database, admin login, server.
#   scripts/sample.sh            -> http://127.0.0.1:8000/  (PORT=8001 scripts/sample.sh)
# Tasks run synchronously on Django's ImmediateBackend; scripts/sample-emulator.sh runs them
# through the Pub/Sub emulator instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export DJANGO_SETTINGS_MODULE=sample_site.settings
PORT="${PORT:-8000}"
export PORT

"$PY" manage.py migrate --verbosity 0
"$PY" manage.py sample_setup

cat <<MSG

  Sample site: http://127.0.0.1:${PORT}/
  Admin:       http://127.0.0.1:${PORT}/admin/   (login: admin / admin)

MSG
exec "$PY" manage.py runserver "127.0.0.1:${PORT}"
