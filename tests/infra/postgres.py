"""A private PostgreSQL server for the session when GYRINX_TEST_DB=postgres.

The server lives in a temporary directory, listens on a free 127.0.0.1 port with trust
authentication, and is stopped and removed when the session ends. Django is pointed at it
through pytest-django's ``django_db_modify_db_settings`` fixture, which runs before the test
database is created.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import free_port, tail

START_TIMEOUT = 60  # seconds; initdb and startup take about a second here


class PostgresStartError(RuntimeError):
    """The test PostgreSQL server could not be created or started."""


def find_bin(name: str) -> str:
    """A PostgreSQL program from PATH, else from Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    # Debian's postgresql-15 package keeps initdb and friends off PATH.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise PostgresStartError(
        f"PostgreSQL's {name} is not on PATH. Install PostgreSQL 15 "
        "(apt-get install postgresql-15) or run scripts/test.sh, which checks for it."
    )


class PostgresServer:
    """One throwaway PostgreSQL cluster; ``start()`` returns it running."""

    def __init__(self, server_settings: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gyrinx-pg-"))
        # Extra `-c name=value` server settings, e.g. a small max_connections.
        self.server_settings = dict(server_settings or {})
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.host = "127.0.0.1"
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        # PostgreSQL refuses to run as root, so as root we hand the directory to `postgres`.
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=START_TIMEOUT
        )

    @classmethod
    def start(cls, server_settings: dict[str, str] | None = None) -> "PostgresServer":
        server = cls(server_settings)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _init_and_start(self) -> None:
        if os.geteuid() == 0:
            try:
                shutil.chown(self.root, user="postgres", group="postgres")
            except (LookupError, PermissionError) as exc:
                raise PostgresStartError(
                    f"Cannot hand {self.root} to the 'postgres' user ({exc}). Install "
                    "PostgreSQL 15 (apt-get install postgresql-15), which creates that user."
                ) from exc
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        done = self._run(
            initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )
        if done.returncode:
            raise PostgresStartError(
                f"initdb failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        # A free port can be taken between choosing and binding it; try a few.
        for _ in range(3):
            self.port = free_port()
            # Durability is not worth paying for in a database that is thrown away.
            options = (
                f"-h {self.host} -p {self.port} -k {self.root} -F "
                "-c synchronous_commit=off -c full_page_writes=off"
            ) + "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
            done = self._run(
                pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                "-w", "-t", str(START_TIMEOUT), "start",
            )
            if done.returncode == 0:
                return
            if "already in use" not in tail(self.log):
                break
        raise PostgresStartError(
            f"pg_ctl start failed with exit code {done.returncode}:\n"
            f"{done.stdout}{done.stderr}\nServer log:\n{tail(self.log)}"
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            pg_ctl = find_bin("pg_ctl")
            stopped = self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
            if stopped.returncode:
                self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> Iterator[None]:
    """Start PostgreSQL for the session and point DATABASES (every alias) at it."""
    if os.environ.get("GYRINX_TEST_DB") != "postgres":
        yield
        return
    from django.conf import settings
    from django.db import connections

    try:
        server = PostgresServer.start()
    except (PostgresStartError, OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:  # failed outside the except block, so the report shows one message
        pytest.fail(
            f"GYRINX_TEST_DB=postgres, but the test PostgreSQL server did not start: {problem}",
            pytrace=False,
        )
    previous_port = os.environ.get("GYRINX_TEST_PG_PORT")
    # Changed in place: Django's connection objects share this dict with settings.
    # Every alias: tests/settings.py's "runs" is the same database under another name.
    for database in settings.DATABASES.values():
        database.update(HOST=server.host, PORT=str(server.port))
    # Subprocesses that load tests.settings (manage.py in a test) find the same server.
    os.environ["GYRINX_TEST_PG_PORT"] = str(server.port)
    try:
        yield
    finally:
        if previous_port is None:
            os.environ.pop("GYRINX_TEST_PG_PORT", None)
        else:
            os.environ["GYRINX_TEST_PG_PORT"] = previous_port
        connections.close_all()
        server.stop()
