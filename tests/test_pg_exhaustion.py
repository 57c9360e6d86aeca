"""Database trouble for real: a PostgreSQL server whose connections are all taken.

The push endpoint runs in its own server process (Django's threaded WSGI server, as in
development), on its own small PostgreSQL server started with max_connections = 5. This
test holds every connection, posts a signed push, expects 429 with Retry-After and nothing
recorded, frees the connections, and expects the same message to run. It needs PostgreSQL
whatever GYRINX_TEST_DB says, and fails (never skips) when the server cannot start.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from tests.helpers import envelope
from tests.infra import free_port, tail
from tests.infra.postgres import PostgresServer, PostgresStartError

pytest_plugins = ["tests.oidc"]  # the oidc fixtures

ROOT = Path(__file__).resolve().parent.parent
MAX_CONNECTIONS = 5
DATABASE = "gyrinx_tasks"


@pytest.fixture
def small_postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start({
            "max_connections": str(MAX_CONNECTIONS),
            # The tests connect as the superuser: reserve nothing, so it can take every slot.
            "superuser_reserved_connections": "0",
        })
    except (PostgresStartError, OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(f"The small PostgreSQL server did not start: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def _connect(server: PostgresServer, dbname: str = DATABASE) -> psycopg.Connection:
    return psycopg.connect(host=server.host, port=server.port, user="postgres", dbname=dbname,
                           autocommit=True, connect_timeout=5)


@pytest.fixture
def endpoint(small_postgres, oidc) -> Iterator[str]:
    """The push URL of a server process using the small PostgreSQL, its schema migrated."""
    with _connect(small_postgres, "postgres") as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    env = {**os.environ, "GYRINX_TEST_DB": "postgres",
           "GYRINX_TEST_PG_PORT": str(small_postgres.port),
           "DJANGO_SETTINGS_MODULE": "tests.settings",
           # tests.settings leaves this unset, so the server process reads the variable.
           "TASKS_OIDC_CERTS_URL": oidc.certs_url}
    migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    log = small_postgres.root / "django.log"
    serve = ("import django; django.setup(); "
             "from django.core.servers.basehttp import run; "
             "from django.core.wsgi import get_wsgi_application; "
             f"run('127.0.0.1', {port}, get_wsgi_application(), threading=True)")
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", serve], cwd=ROOT, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/tasks/pubsub/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=2)
                break
            # A loaded machine (parallel workers) can accept before it answers in time.
            except (requests.ConnectionError, requests.Timeout):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"The push server did not start:\n{tail(log)}", pytrace=False)
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _hold_every_connection(server: PostgresServer) -> list[psycopg.Connection]:
    held: list[psycopg.Connection] = []
    while True:
        try:
            held.append(_connect(server))
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc)
            return held
        assert len(held) <= MAX_CONNECTIONS, "max_connections is not in force"


def test_exhausted_connections_answer_429_record_nothing_and_the_message_runs_later(
        small_postgres, endpoint, oidc):
    body = envelope({"task_id": "pg-full-1", "task_name": "add", "args": [20, 22]},
                    message_id="m-pg-full-1")
    malformed = envelope({"task_id": "pg-full-2", "task_name": "no_such_task"},
                         message_id="m-pg-full-2")
    headers = {"Authorization": oidc.header(), "Content-Type": "application/json"}

    held = _hold_every_connection(small_postgres)
    assert len(held) == MAX_CONNECTIONS
    try:
        refused = requests.post(endpoint, data=body, headers=headers, timeout=30)
        refused_rejection = requests.post(endpoint, data=malformed, headers=headers, timeout=30)
    finally:
        for conn in held:
            conn.close()

    for response in (refused, refused_rejection):
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"] == "10"
        assert response.json()["outcome"] == "database_unavailable"
    with _connect(small_postgres) as conn:
        assert conn.execute("SELECT count(*) FROM gyrinx_tasks_taskexecution").fetchone() == (0,)

    # Pub/Sub redelivers the same messages once connections are free.
    ran = requests.post(endpoint, data=body, headers=headers, timeout=30)
    rejected = requests.post(endpoint, data=malformed, headers=headers, timeout=30)

    assert ran.status_code == 200, ran.text
    assert ran.json()["outcome"] == "ran"
    assert rejected.status_code == 200 and rejected.json()["outcome"] == "rejected"
    with _connect(small_postgres) as conn:
        rows = conn.execute("SELECT task_id, message_id, status, return_value::text, attempts "
                            "FROM gyrinx_tasks_taskexecution ORDER BY task_id").fetchall()
    assert rows == [("pg-full-1", "m-pg-full-1", "SUCCESSFUL", "42", 1),
                    ("pg-full-2", "m-pg-full-2", "REJECTED", None, 0)]
