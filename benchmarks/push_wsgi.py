"""The WSGI application benchmarks/push_server.py runs under gunicorn.

Configured from the environment the benchmark sets: BENCH_PG_PORT (the throwaway cluster),
BENCH_OIDC_CERTS_URL (verify push tokens against that local certificates server; unset:
OIDC off, as for the emulator's unsigned pushes). Two endpoints:

- ``/tasks/pubsub/``: gyrinx_tasks' push endpoint;
- ``/bare/``: a bare Django view that reads the same envelope (JSON, base64, JSON) and makes
  the same statements the push endpoint makes for a first delivery of an enqueued run
  (``BARE_STATEMENTS``, counted with CaptureQueriesContext by push_server.py), with no
  token check, no validation and no state machine: the reference for the endpoint's cost.
"""

import base64
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django.urls import include, path  # noqa: E402

from benchmarks._common import configure_django, postgres_database  # noqa: E402

TABLE = "gyrinx_tasks_taskexecution"


def bare(request):  # type: ignore[no-untyped-def]
    # No CSRF check, like the push endpoint (csrf_exempt below).
    from django.db import connection, transaction
    from django.http import JsonResponse
    from django.utils import timezone

    envelope = json.loads(request.body)
    message = json.loads(base64.b64decode(envelope["message"]["data"]))
    now = timezone.now()
    # The push endpoint's statements for a first delivery: in one transaction find and lock
    # the run, read its kill switch, mark it running; then record the outcome.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {TABLE} WHERE result_id = %s FOR UPDATE",
                       [message["task_id"]])
        row = cursor.fetchone()
        cursor.execute("SELECT enabled FROM gyrinx_tasks_killswitch WHERE task_name = %s",
                       [message["task_name"]])
        cursor.fetchone()
        cursor.execute(f"UPDATE {TABLE} SET status = 'RUNNING', started_at = %s, "
                       "message_id = %s, attempts = attempts + 1 WHERE id = %s",
                       [now, envelope["message"]["messageId"], row[0]])
    value = sum(message["args"])
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET status = 'SUCCESSFUL', finished_at = %s, "
                       "return_value = %s WHERE id = %s", [now, json.dumps(value), row[0]])
    return JsonResponse({"outcome": "ran"})


if "BENCH_PG_PORT" in os.environ:
    certs = os.environ.get("BENCH_OIDC_CERTS_URL", "")
    database = postgres_database(os.environ["BENCH_PG_PORT"])
    # Each worker thread keeps its connection, as a production settings file would.
    database["CONN_MAX_AGE"] = int(os.environ.get("BENCH_CONN_MAX_AGE", "60"))
    configure_django(
        database, "benchmarks.push_wsgi",
        TASKS_VERIFY_OIDC=bool(certs), TASKS_OIDC_CERTS_URL=certs or "http://127.0.0.1:9/",
        ALLOWED_HOSTS=["*"], DEBUG=False,
    )

bare.csrf_exempt = True  # type: ignore[attr-defined]

# After settings: include() imports gyrinx_tasks' views, and so its models, at once.
urlpatterns = [
    path("tasks/", include("gyrinx_tasks.urls")),
    path("bare/", bare),
]

if "BENCH_PG_PORT" in os.environ:
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
