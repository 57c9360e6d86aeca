"""A WSGI application for tests that run gyrinx_tasks under a real server (gunicorn).

Configured like the benchmarks (benchmarks/_common.py's configure_django, the test suite's
settings) on the SQLite file named by GYRINX_WSGI_SQLITE, OIDC off. ``migrate()`` prepares
that file; ``serve()`` runs this module under gunicorn (tests/infra/gunicorn.py), which
fails loudly if gunicorn cannot start.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.urls import include, path

from tests.infra.gunicorn import REPO_ROOT, Gunicorn, GunicornError

ENV_VAR = "GYRINX_WSGI_SQLITE"

if ENV_VAR in os.environ:
    from benchmarks._common import configure_django, sqlite_database

    configure_django(sqlite_database(os.environ[ENV_VAR]), "tests.sqlite_wsgi",
                     ALLOWED_HOSTS=["*"], DEBUG=False, TASKS_VERIFY_OIDC=False)

    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()

# After settings: include() imports gyrinx_tasks' views, and so its models, at once.
urlpatterns = [path("tasks/", include("gyrinx_tasks.urls"))]


class ServerError(GunicornError):
    """The database could not be prepared (or gunicorn did not start): the test must fail."""


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


def serve(database: Path, log: Path, args: list[str] | None = None) -> Gunicorn:
    """gunicorn serving this module on ``database`` (GunicornError if it cannot start)."""
    return Gunicorn("tests.sqlite_wsgi:application", server_env(database), log,
                    args or ["-w", "1"])
