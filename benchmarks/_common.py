"""What every benchmark shares: Django settings, a throwaway PostgreSQL, gunicorn, the
statistics of timings (median, percentile), the machine's description with its load
average, tables.

Not a benchmark itself. The PostgreSQL server is the test suite's throwaway cluster
(tests/infra/postgres.py: a temporary directory, a free 127.0.0.1 port, run as the
``postgres`` user when we are root, removed when stopped), but with PostgreSQL's default
durability (``DURABLE``): every commit is flushed to disk, as on our users' servers. The
test suite switches that off to save time; figures measured that way flatter every write.
"""

import math
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `python benchmarks/x.py` finds gyrinx_tasks and tests
    sys.path.insert(0, str(REPO_ROOT))

from tests.infra.postgres import PostgresServer, PostgresStartError  # noqa: E402

__all__ = ["DURABLE", "Gunicorn", "PostgresServer", "PostgresStartError", "REPO_ROOT",
           "configure_django", "load_average", "machine_lines", "median", "percentile",
           "postgres_database", "sqlite_database", "start_postgres", "start_server", "stop",
           "table"]

# A runaway query (a plan gone wrong at millions of rows) ends the benchmark with an error
# instead of running for an hour.
STATEMENT_TIMEOUT_MS = 120_000


# PostgreSQL's own defaults, which the test cluster turns off (its -F, synchronous_commit=off
# and full_page_writes=off): given last on the server's command line, they win.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
# What machine_lines() says about the database, once a benchmark has started it.
_described: dict[str, str] = {}


def start_server(command: list[str], port: int, log: Path,
                 timeout: float = 60) -> subprocess.Popen:
    """Start ``command`` (a server for 127.0.0.1:``port``), its output to ``log``; return it
    once the port accepts connections. Exits with the log if it dies or does not listen."""
    import socket
    import time

    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"{command[2]} exited with {server.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.2)
    stop(server)
    raise SystemExit(f"{command[2]} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:"
                     f"\n{log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    """Stop a server started by start_server: terminate, then kill after 10 s."""
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def start_postgres() -> PostgresServer:
    """The throwaway cluster, durable (DURABLE), checked with SHOW: a benchmark does not run
    on a server that would not keep its commits."""
    try:
        server = PostgresServer.start(DURABLE)
    except (PostgresStartError, OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"The benchmark's PostgreSQL server did not start: {exc}")
    try:
        import psycopg

        with psycopg.connect(host=server.host, port=server.port, user="postgres",
                             dbname="postgres", connect_timeout=30) as connection:
            found = {name: connection.execute(f"SHOW {name}").fetchone()[0]
                     for name in ["server_version", *DURABLE]}
    except Exception as exc:  # noqa: BLE001 - any failure ends the benchmark with its reason
        server.stop()
        sys.exit(f"Could not read the benchmark's PostgreSQL settings: {exc}")
    wrong = {name: found[name] for name, value in DURABLE.items() if found[name] != value}
    if wrong:
        server.stop()
        sys.exit(f"The benchmark's PostgreSQL is not durable: {wrong} (wanted {DURABLE}).")
    _described["postgresql"] = (
        f"{found['server_version'].split()[0]}, durable as PostgreSQL's defaults: "
        + ", ".join(f"{name}={found[name]}" for name in DURABLE)
        + " (throwaway cluster, tests/infra/postgres.py)")
    return server


def postgres_database(port: int | str, name: str = "postgres") -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "OPTIONS": {"options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"},
    }


def sqlite_database(path: str | Path) -> dict[str, Any]:
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}


def configure_django(database: dict[str, Any], root_urlconf: str, **overrides: Any) -> None:
    """Configure Django like tests/settings.py, on the given database, and set it up."""
    import django
    from django.conf import settings

    import tests.settings as base

    # The test suite's settings, on the benchmark's own database and project names.
    values: dict[str, Any] = {name: getattr(base, name) for name in dir(base) if name.isupper()}
    values.update({
        "SECRET_KEY": "benchmarks-only-not-secret",
        "ROOT_URLCONF": root_urlconf,
        "DATABASES": {"default": database},
        "TASKS": {
            "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                        "OPTIONS": {"project_id": "bench-project"}},
            "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
        },
        "GCP_PROJECT_ID": "bench-project",
        "TASKS_ENVIRONMENT": "bench",
        "CLOUD_RUN_SERVICE_URL": "https://tasks-bench.example.run.app",
        "TASKS_SERVICE_ACCOUNT": "pubsub-invoker@bench-project.iam.gserviceaccount.com",
        "TASKS_VERIFY_OIDC": False,
        # Rejections log at ERROR; thousands of them would drown the figures.
        "LOGGING": {"version": 1, "disable_existing_loggers": False,
                    "loggers": {"gyrinx_tasks": {"level": "CRITICAL"},
                                "django.server": {"level": "CRITICAL"}}},
    })
    values.update(overrides)
    settings.configure(**values)
    django.setup()


class Gunicorn:
    """gunicorn serving ``app`` (tests/infra/gunicorn.py); one that does not start ends the
    benchmark with its log."""

    def __init__(self, app: str, args: list[str], env: dict[str, str], log: Path) -> None:
        from tests.infra.gunicorn import Gunicorn as Server
        from tests.infra.gunicorn import GunicornError

        try:
            self.server = Server(app, env, log, args)
        except GunicornError as exc:
            sys.exit(str(exc))
        self.port, self.process = self.server.port, self.server.process

    def stop(self) -> None:
        self.server.stop()


def load_average() -> float:
    """The machine's 1-minute load average (0 where /proc is missing)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def median(values: list[float]) -> float:
    return percentile(values, 50)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: with few samples, p90 is close to the slowest one."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *[line(row) for row in cells[1:]]])


def code_version() -> str:
    """The commit measured (of the tree gyrinx_tasks is imported from, which
    benchmarks/compare.py points at an older checkout), and whether gyrinx_tasks had
    uncommitted changes."""
    try:
        import gyrinx_tasks

        root = Path(gyrinx_tasks.__file__).resolve().parent.parent
    except ImportError:
        root = REPO_ROOT

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "--quiet", "HEAD", "--", "gyrinx_tasks").returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown (git did not run)"
    if head.returncode:
        return "unknown (not a git checkout)"
    suffix = " with uncommitted changes in gyrinx_tasks/" if changed else ""
    return f"commit {head.stdout.strip()}{suffix}"


def machine_lines(extra: dict[str, str] | None = None) -> list[str]:
    """The machine and software the figures come from, one 'name: value' line each."""
    import django

    memory = "?"
    try:
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                memory = f"{int(row.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "code": code_version(),
        "cpus": str(os.cpu_count()),
        "cpu model": cpu,
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "django": django.get_version(),
        "load average (1 min)": f"{load_average():.2f} when this was printed (other work "
                                "on the machine slows every figure; compare the ratios, "
                                "measured side by side in one run)",
        **(extra or {}),
        **_described,  # the database as started and checked, over a caller's version line
    }
    return [f"{name}: {value}" for name, value in info.items()]
