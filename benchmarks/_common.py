"""What both benchmarks share: Django settings, a throwaway PostgreSQL, statistics, tables.

Not a benchmark itself. The PostgreSQL server is the test suite's own (tests/infra/postgres.py):
a cluster in a temporary directory on a free 127.0.0.1 port, run as the ``postgres`` user
when we are root, removed when stopped.
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

__all__ = ["PostgresServer", "PostgresStartError", "REPO_ROOT", "configure_django",
           "machine_lines", "median", "percentile", "postgres_database", "sqlite_database",
           "start_postgres", "table"]

# A runaway query (a plan gone wrong at millions of rows) ends the benchmark with an error
# instead of running for an hour.
STATEMENT_TIMEOUT_MS = 120_000


def start_postgres() -> PostgresServer:
    try:
        return PostgresServer.start()
    except (PostgresStartError, OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"The benchmark's PostgreSQL server did not start: {exc}")


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
    """The commit measured, and whether gyrinx_tasks had uncommitted changes."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
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
        **(extra or {}),
    }
    return [f"{name}: {value}" for name, value in info.items()]
