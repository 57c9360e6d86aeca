"""The overview's queries at each window, before and after a prune: time per request, the
number of queries, their time together and the five slowest (a probe, not a benchmark).

    .venv/bin/python -m benchmarks.prune_overview_queries 1000000 120    # runs, days
    .venv/bin/python -m benchmarks.prune_overview_queries 1000000 60 --explain

Loads runs with benchmarks/prune.py's loader on the durable throwaway PostgreSQL, counts them
into the rollups, requests each window once to warm up and once measured (test client,
superuser), prunes with TASKS_RETENTION of 7 days, runs VACUUM ANALYZE and measures again.
``--explain`` adds EXPLAIN (ANALYZE, BUFFERS) of each request's slowest query;
``--stuck-everywhere`` loads with benchmarks/overview.py's loader instead, which leaves 2 % of
the runs READY or RUNNING over the whole span.
"""

import re
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import configure_django, postgres_database, start_postgres  # noqa: E402


def measure(client, connection, phase: str, explain: bool) -> None:
    for window in ("24h", "30d", "90d"):
        url = f"/admin/gyrinx_tasks/overview/?window={window}"
        client.get(url)  # warm-up
        queries: list[tuple[float, str, object]] = []

        def timed(execute, sql, params, many, context, queries=queries):
            began = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                queries.append((time.perf_counter() - began, sql, params))

        began = time.perf_counter()
        with connection.execute_wrapper(timed):
            response = client.get(url)
        total = time.perf_counter() - began
        sql_ms = sum(q[0] for q in queries) * 1000
        print(f"== {phase} {window}: {total * 1000:.0f} ms, {len(queries)} queries, "
              f"sql {sql_ms:.0f} ms, status {response.status_code}")
        for seconds, sql, _params in sorted(queries, key=lambda q: -q[0])[:5]:
            print(f"  {seconds * 1000:7.1f} ms  {re.sub(r'\s+', ' ', sql)[:300]}")
        if explain:
            _seconds, sql, params = max(queries, key=lambda q: q[0])
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                print("\n".join(row[0] for row in cursor.fetchall()))


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1_000_000
    days = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2][0].isdigit() else 60
    explain = "--explain" in sys.argv
    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), "tests.urls",
                         TASKS_RETENTION=timedelta(days=7))
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        from benchmarks.prune import load_runs
        from gyrinx_tasks import retention, rollups

        call_command("migrate", verbosity=0)
        if "--stuck-everywhere" in sys.argv:  # 2 % READY or RUNNING over the whole span
            from benchmarks.overview import load_rows

            load_rows(rows, days)
        else:
            load_runs(rows, days)
        began = time.perf_counter()
        rollups.refresh()
        print(f"first refresh {time.perf_counter() - began:.1f} s")
        User.objects.create_superuser("bench", "bench@example.com", "pw")
        client = Client()
        client.force_login(User.objects.get(username="bench"))
        measure(client, connection, "before", explain)
        began = time.perf_counter()
        report = retention.prune()
        print(f"prune {report.deleted:,} runs in {time.perf_counter() - began:.1f} s")
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
            cursor.execute("VACUUM ANALYZE gyrinx_tasks_taskexecution")
        measure(client, connection, "after", explain)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
