"""The overview page at 1,000 and 1,000,000 runs on PostgreSQL, for each time window.

Run from the repository root (about three minutes at the defaults, 1.4 GB of disk):

    .venv/bin/python -m benchmarks.overview                  # 1k, then 1M runs over 30 days
    .venv/bin/python -m benchmarks.overview --sizes 1000,100000 --repeat 5   # quicker
    .venv/bin/python -m benchmarks.overview --span-days 365 --explain        # a year, plans

It starts a throwaway PostgreSQL cluster (tests/infra/postgres.py), migrates, and for each
size in turn empties the table, loads that many runs with the changelist benchmark's
``INSERT ... SELECT`` (benchmarks/admin_changelist.py: six tasks, 88 % successful, 6 % failed,
2 % ready or running), spread evenly over the last ``--span-days`` days, and runs
``VACUUM ANALYZE``. Then it requests /admin/gyrinx_tasks/overview/?window=W through Django's
test client as a logged-in superuser: one untimed warm-up, then ``--repeat`` timed requests
per window, the windows taking turns so that drift hits them alike. It prints the median and
p90 page time, the runs inside each window, the SQL queries per page and the slowest one,
and the ratio of each window's median at the largest size to the smallest.

``--explain`` prints ``EXPLAIN (ANALYZE, BUFFERS)`` of every query the page makes at the
largest size, so you can see which index each one uses. Only 127.0.0.1 is contacted; every
query is capped at 120 s.
"""

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    configure_django,
    machine_lines,
    median,
    percentile,
    postgres_database,
    start_postgres,
    table,
)

BATCH = 200_000
WINDOWS = ("1h", "24h", "7d")


def load_rows(rows: int, span_days: float) -> None:
    from django.db import connection
    from django.utils import timezone

    from benchmarks.admin_changelist import LOAD_SQL, RAW_REJECTED, TABLE, TRACEBACK

    span = span_days * 24 * 3600
    start = timezone.now() - timedelta(seconds=span)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")
        for low in range(1, rows + 1, BATCH):
            high = min(low + BATCH - 1, rows)
            cursor.execute(LOAD_SQL, {"traceback": TRACEBACK, "raw": RAW_REJECTED,
                                      "start": start, "step": span / rows,
                                      "low": low, "high": high})
        # What autovacuum would have done by now: planner statistics and the visibility map.
        cursor.execute(f"VACUUM ANALYZE {TABLE}")
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", [TABLE])
        size = cursor.fetchone()[0]
    print(f"  loaded {rows:,} runs over {span_days:g} days ({size} with indexes) in "
          f"{time.perf_counter() - began:.0f} s", file=sys.stderr)


def window_rows(window: str) -> int:
    from django.utils import timezone

    from gyrinx_tasks import stats
    from gyrinx_tasks.models import TaskExecution

    since, until = stats.get_window(window).bounds(timezone.now())
    return TaskExecution.objects.filter(created_at__gte=since, created_at__lt=until).count()


def fetch(client, url: str) -> float:
    began = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - began
    if response.status_code != 200 or b'id="gyrinx-overview"' not in response.content:
        raise SystemExit(f"GET {url} answered {response.status_code} without the overview; "
                         "the benchmark would be timing an error page.")
    return elapsed


def capture(client, url: str) -> list[tuple[float, str, object]]:
    """(ms, SQL, params) for each query one request makes."""
    from django.db import connection

    queries: list[tuple[float, str, object]] = []

    def timed(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(((time.perf_counter() - began) * 1000, sql, params))

    with connection.execute_wrapper(timed):
        client.get(url)
    return queries


def explain(queries: list[tuple[float, str, object]]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for _, sql, params in queries:
            if "gyrinx_tasks_taskexecution" not in sql:
                continue  # the session and user lookups
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            print(f"\n{sql}\n" + "\n".join(f"    {row[0]}" for row in cursor.fetchall()))


def measure(client, repeat: int, budget: float) -> dict[str, dict]:
    urls = {w: f"/admin/gyrinx_tasks/overview/?window={w}" for w in WINDOWS}
    for url in urls.values():
        fetch(client, url)  # warm-up: compiled templates, cold caches
    times: dict[str, list[float]] = {w: [] for w in WINDOWS}
    began = time.perf_counter()
    for rep in range(repeat):
        order = WINDOWS if rep % 2 == 0 else tuple(reversed(WINDOWS))
        for w in order:
            times[w].append(fetch(client, urls[w]))
        if rep >= 2 and time.perf_counter() - began > budget:
            break  # bounded: at least three samples each
    results = {}
    for w in WINDOWS:
        queries = capture(client, urls[w])
        results[w] = {"median": median(times[w]) * 1000, "p90": percentile(times[w], 90) * 1000,
                      "n": len(times[w]), "queries": queries, "rows": window_rows(w)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,1000000",
                        help="comma-separated run counts, measured in turn (default 1k, 1M)")
    parser.add_argument("--span-days", type=float, default=30.0,
                        help="the runs are spread over this many days up to now")
    parser.add_argument("--repeat", type=int, default=9, help="timed requests per window")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per size after which repetitions stop (at least 3 run)")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN (ANALYZE, BUFFERS) of each query at the last size")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), root_urlconf="tests.urls")
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        client = Client()
        client.force_login(User.objects.create_superuser("bench", "bench@example.com", "x"))
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]

        measured = {}
        for size in sizes:
            print(f"Loading {size:,} runs ...", file=sys.stderr)
            load_rows(size, args.span_days)
            measured[size] = measure(client, args.repeat, args.budget)
        if args.explain:
            explain(measured[sizes[-1]][WINDOWS[-1]]["queries"])

        headers = ["runs", "window", "runs in window", "median ms", "p90 ms",
                   f"median / {sizes[0]:,} runs", "queries", "slowest query ms", "n"]
        rows = []
        for size in sizes:
            for w in WINDOWS:
                r, base = measured[size][w], measured[sizes[0]][w]
                rows.append([f"{size:,}", w, f"{r['rows']:,}", f"{r['median']:.1f}",
                             f"{r['p90']:.1f}", f"{r['median'] / base['median']:.1f}x",
                             len(r["queries"]), f"{max(q[0] for q in r['queries']):.1f}",
                             r["n"]])
        print(f"\nOverview page, PostgreSQL {pg_version}, runs spread over {args.span_days:g} "
              "days\n")
        print(table(headers, rows))
        print()
        for line in machine_lines({"postgresql": pg_version}):
            print(f"- {line}")
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


if __name__ == "__main__":
    main()
