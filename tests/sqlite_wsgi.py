"""A WSGI application for tests that run gyrinx_tasks under a real server (gunicorn).

Configured like the benchmarks (benchmarks/_common.py's configure_django, the test suite's
settings) on the SQLite file named by GYRINX_WSGI_SQLITE, OIDC off. ``migrate()`` prepares
that file; ``Gunicorn`` serves this module and fails loudly if gunicorn cannot start.
"""

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.urls import include, path

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(REPO_ROOT / ".venv" / "bin" / "gunicorn")
ENV_VAR = "GYRINX_WSGI_SQLITE"

if ENV_VAR in os.environ:
    from benchmarks._common import configure_django, sqlite_database

    configure_django(sqlite_database(os.environ[ENV_VAR]), "tests.sqlite_wsgi",
                     ALLOWED_HOSTS=["*"], DEBUG=False, TASKS_VERIFY_OIDC=False)

    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

# After settings: include() imports gyrinx_tasks' views, and so its models, at once.
urlpatterns = [path("tasks/", include("gyrinx_tasks.urls"))]


class ServerError(RuntimeError):
    """The database could not be prepared or gunicorn did not start: the test must fail."""


def server_env(database: Path) -> dict[str, str]:
    # Without the parent's DJANGO_SETTINGS_MODULE: this module configures Django itself.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env[ENV_VAR] = str(database)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def migrate(database: Path) -> None:
    """Create the gyrinx_tasks tables in ``database`` (a new SQLite file), in a subprocess."""
    code = ("import tests.sqlite_wsgi; from django.core.management import call_command; "
            "call_command('migrate', verbosity=0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=server_env(database),
                          capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise ServerError(f"migrate failed ({done.returncode}):\n{done.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """gunicorn serving this module on 127.0.0.1 (as benchmarks/push_server.py's Gunicorn)."""

    def __init__(self, database: Path, log: Path, args: list[str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [GUNICORN, "tests.sqlite_wsgi:application", "-b", f"127.0.0.1:{self.port}",
                 "--timeout", "60", *(args or ["-w", "1"])],
                cwd=REPO_ROOT, env=server_env(database), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"gunicorn exited with {self.process.returncode}:\n"
                                  f"{log.read_text()[-3000:]}")
            try:
                # A worker has booted when the app answers (the master listens first).
                connection = self.connection()
                connection.request("GET", "/nothing-here/")
                connection.getresponse().read()
                connection.close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise ServerError(f"gunicorn did not answer within 60 s:\n{log.read_text()[-3000:]}")

    def connection(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.connect()
        return connection

    def __enter__(self) -> "Gunicorn":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
