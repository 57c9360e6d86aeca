"""The task-run changelist at a million rows: our TaskExecutionAdmin against a stock ModelAdmin.

Run from the repository root. At the default million rows it takes about two minutes
(40 s of it loading) and 1.4 GB of disk; ``--quick`` (100,000 rows) about 20 s; five million
rows about seven minutes and 7 GB:

    .venv/bin/python -m benchmarks.admin_changelist            # 1,000,000 rows
    .venv/bin/python -m benchmarks.admin_changelist --quick    # 100,000 rows, 5 repetitions
    .venv/bin/python -m benchmarks.admin_changelist --rows 5000000 --repeat 5

It starts a throwaway PostgreSQL cluster (the test suite's, see tests/infra/postgres.py),
migrates, loads ``--rows`` TaskExecution rows in bulk with ``INSERT ... SELECT`` over
``generate_series`` (a year of runs, mostly successful, JSON args, errors with tracebacks and
timelines), runs ``VACUUM ANALYZE`` as autovacuum would have, and then requests the
changelist through Django's test client, logged in as a superuser, for each case below.

Each case is requested from two admins over the same table in the same process, alternating:
``ours`` is gyrinx_tasks' TaskExecutionAdmin at /admin/, ``stock`` a plain ModelAdmin at
/stock/ with the same columns, ``list_filter = ["status", "task_name", "trigger"]``,
``date_hierarchy = "created_at"``, the default paginator and the stock way to search the
same things: ``search_fields`` with the exact ids and ``icontains`` on the task name and path
and on the errors (where the exception class is). Both show 50 rows a page, so the
comparison is about counting, filtering and searching rather than page size. The output
is a Markdown table of median and p90 times, the ratio stock/ours of the medians, and the
number of SQL queries per page with the slowest one. Only 127.0.0.1 is contacted; every
query is capped at 120 s.
"""

import argparse
import sys
import time
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

# Filled in by build_sites() once Django is set up; Django reads it on the first request.
urlpatterns: list = []

# Shares of the generated runs. Tasks are the test registry's (tests/registry.py).
TASK_MIX = [("add", 0.45), ("echo", 0.25), ("report_attempt", 0.15), ("flaky", 0.10),
            ("explode", 0.049), ("nightly_cleanup", 0.001)]
STATUS_MIX = [("SUCCESSFUL", 0.88), ("FAILED", 0.06), ("SKIPPED", 0.03), ("REJECTED", 0.01),
              ("READY", 0.015), ("RUNNING", 0.005)]
BATCH = 200_000
TABLE = "gyrinx_tasks_taskexecution"

TRACEBACK = (
    "Traceback (most recent call last):\n"
    + '  File "/app/gyrinx_tasks/runner.py", line 160, in handle_delivery\n'
      "    value = route.task.call(*delivery.args, **delivery.kwargs)\n" * 6
    + '  File "/app/tests/tasks.py", line 22, in explode\n'
      "    raise RuntimeError(message)\n"
    + "RuntimeError: boom #"
)
RAW_REJECTED = (
    '{"message": {"data": "%%%not-base64", "messageId": "1234567890", "attributes": {}, '
    '"publishTime": "2026-11-23T10:00:00Z"}, "subscription": "projects/p/subscriptions/s"}'
)


def _case(column: str, mix: list[tuple[str, float]]) -> str:
    """A CASE expression picking a value from a uniform random column by cumulative share."""
    parts, total = [], 0.0
    for value, share in mix[:-1]:
        total += share
        parts.append(f"WHEN {column} < {total:.6f} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{mix[-1][0]}' END"


LOAD_SQL = f"""
INSERT INTO {TABLE} (
    result_id, task_id, task_name, task_path, backend, status, trigger, retry_of_id, args,
    kwargs,
    return_value, errors, attempts, worker_ids, status_detail, raw_message, message_id,
    delivery_attempt, created_at, enqueued_at, started_at, last_attempted_at, finished_at,
    timeline)
SELECT
    rid,
    CASE WHEN task = 'nightly_cleanup' THEN 'scheduled-nightly_cleanup' ELSE rid END,
    task, 'tests.tasks.' || task, 'default', status,
    CASE WHEN task = 'nightly_cleanup' THEN 'schedule' WHEN r_trigger < 0.03 THEN 'retry'
         WHEN r_trigger < 0.035 THEN 'run_now' ELSE 'enqueue' END,
    -- A retry retries an earlier run (ids follow i in a fresh table).
    CASE WHEN task <> 'nightly_cleanup' AND r_trigger < 0.03 AND i > 100
         THEN i - 1 - mod(i, 97) END,
    jsonb_build_array(mod(i, 100), mod(i, 7)),
    CASE WHEN task = 'echo' THEN jsonb_build_object('key', 'k' || i) ELSE '{{}}'::jsonb END,
    CASE WHEN status = 'SUCCESSFUL' THEN to_jsonb(mod(i, 100) + mod(i, 7)) END,
    CASE WHEN status = 'FAILED' THEN jsonb_build_array(jsonb_build_object(
        'exception_class_path',
        -- One failed run in a thousand has a rarer class: an incident's search term.
        CASE WHEN mod(i, 1000) = 7 THEN 'payments.errors.PaymentDeclined'
             ELSE 'builtins.RuntimeError' END,
        'traceback', %(traceback)s || i, 'attempt', 1, 'at', created)) ELSE '[]'::jsonb END,
    CASE status WHEN 'READY' THEN 0 WHEN 'FAILED' THEN 1 + mod(i, 3) ELSE 1 END,
    CASE WHEN status = 'READY' THEN '[]'::jsonb
         ELSE jsonb_build_array('tasks-00042-abc/instance-' || mod(i, 8)) END,
    CASE status WHEN 'SKIPPED' THEN 'Kill switch for ' || task || ' is off in the database.'
                WHEN 'REJECTED' THEN 'The message data is not base64-encoded JSON.'
                ELSE '' END,
    CASE WHEN status = 'REJECTED' THEN %(raw)s ELSE '' END,
    CASE WHEN status = 'READY' THEN NULL ELSE (1000000000000 + i)::text END,
    CASE WHEN status = 'READY' THEN NULL ELSE 1 END,
    created, created,
    CASE WHEN status <> 'READY' THEN created + interval '40 ms' END,
    CASE WHEN status <> 'READY' THEN created + interval '40 ms' END,
    CASE WHEN status NOT IN ('READY', 'RUNNING') THEN created + interval '240 ms' END,
    CASE WHEN status = 'READY' THEN jsonb_build_array(
             jsonb_build_object('at', created, 'from', '', 'to', 'READY'))
         ELSE jsonb_build_array(
             jsonb_build_object('at', created, 'from', '', 'to', 'READY',
                                'note', 'delivered as message ' || (1000000000000 + i)),
             jsonb_build_object('at', created + interval '40 ms', 'from', 'READY',
                                'to', 'RUNNING', 'note', 'attempt 1 on instance-' || mod(i, 8)),
             jsonb_build_object('at', created + interval '240 ms', 'from', 'RUNNING',
                                'to', status)) END
FROM (
    SELECT i, gen_random_uuid()::text AS rid, r_trigger,
           {_case("r_task", TASK_MIX)} AS task,
           {_case("r_status", STATUS_MIX)} AS status,
           -- Ids grow with time, as they do when rows are inserted as runs happen.
           %(start)s::timestamptz + (i * %(step)s + random() * %(step)s) * interval '1 second'
               AS created
    FROM (SELECT i, random() AS r_task, random() AS r_status, random() AS r_trigger
          FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i) AS draws
) AS runs
"""


def load_rows(rows: int) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    span = 365 * 24 * 3600
    start = timezone.now() - timedelta(seconds=span)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        for low in range(1, rows + 1, BATCH):
            high = min(low + BATCH - 1, rows)
            cursor.execute(LOAD_SQL, {"traceback": TRACEBACK, "raw": RAW_REJECTED,
                                      "start": start, "step": span / rows,
                                      "low": low, "high": high})
            print(f"  loaded {high:,} rows ({time.perf_counter() - began:.0f} s)",
                  file=sys.stderr)
        # What autovacuum would have done by the time a table is this big: statistics for
        # the planner and the visibility map that index-only scans (and counts) rely on.
        cursor.execute(f"VACUUM ANALYZE {TABLE}")
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s)), reltuples "
                       "FROM pg_class WHERE oid = to_regclass(%s)", [TABLE, TABLE])
        size, estimate = cursor.fetchone()
    print(f"  VACUUM ANALYZE done; {TABLE} with indexes takes {size}; the planner "
          f"estimates {estimate:,.0f} rows ({time.perf_counter() - began:.0f} s in all)",
          file=sys.stderr)


def build_sites() -> None:
    """Mount our admin at /admin/ and a stock ModelAdmin for the same model at /stock/."""
    from django.contrib import admin
    from django.urls import path

    from gyrinx_tasks.admin import TaskExecutionAdmin
    from gyrinx_tasks.models import TaskExecution

    class StockExecutionAdmin(admin.ModelAdmin):
        list_display = ("result_id", "task_name", "status", "trigger", "attempts",
                        "created_at", "enqueued_at", "finished_at")
        list_filter = ["status", "task_name", "trigger"]
        date_hierarchy = "created_at"
        search_fields = ("=result_id", "=task_id", "=message_id", "task_name", "task_path",
                         "errors")
        # Equal pages (50 rows; the stock default is 100) compare the queries, not the HTML.
        list_per_page = TaskExecutionAdmin.list_per_page

    stock_site = admin.AdminSite(name="stock")
    stock_site.register(TaskExecution, StockExecutionAdmin)
    urlpatterns[:] = [path("admin/", admin.site.urls), path("stock/", stock_site.urls)]


def scenarios(search_id: str, rows: int) -> list[tuple[str, str, str, str]]:
    """(label, our query string, the stock admin's query string, text the page must show)."""
    from datetime import timedelta

    from django.core.paginator import Paginator

    from gyrinx_tasks.admin import TaskExecutionAdmin
    from gyrinx_tasks.models import TaskExecution

    share = dict(STATUS_MIX) | dict(TASK_MIX)

    def pct(*names: str) -> str:
        value = 1.0
        for name in names:
            value *= share[name]
        return f"{value:.1%}".replace(".0%", "%")

    # Each admin's paginator links to its own last page; ours counts pages from the
    # planner's estimate, which can be a little off the true count.
    per_page = TaskExecutionAdmin.list_per_page
    ours_last = TaskExecutionAdmin.paginator(TaskExecution.objects.all(), per_page).num_pages
    stock_last = Paginator(TaskExecution.objects.all(), per_page).num_pages
    from urllib.parse import urlencode

    from django.utils import timezone

    now = timezone.now()
    window = "?" + urlencode({"created_at__gte": (now - timedelta(days=1)).isoformat(),
                              "created_at__lt": now.isoformat()})
    return [
        ("unfiltered", "", "", ""),
        ("page 100", "?p=100", "?p=100", ""),
        # The paginator links to the last page; reaching it means skipping every other row.
        (f"last page (p={ours_last:,} / {stock_last:,})", f"?p={ours_last}",
         f"?p={stock_last}", ""),
        (f"status=FAILED ({pct('FAILED')})", "?status=FAILED", "?status__exact=FAILED", ""),
        (f"status=SUCCESSFUL ({pct('SUCCESSFUL')})", "?status=SUCCESSFUL",
         "?status__exact=SUCCESSFUL", ""),
        (f"task=echo ({pct('echo')})", "?task_name=echo", "?task_name__exact=echo", ""),
        (f"status+task FAILED/explode ({pct('FAILED', 'explode')})",
         "?status=FAILED&task_name=explode", "?status__exact=FAILED&task_name__exact=explode",
         ""),
        ("search exact result id", f"?q={search_id}", f"?q={search_id}", search_id[:8]),
        (f"search task name: flaky ({pct('flaky')})", "?q=flaky", "?q=flaky", "flaky"),
        (f"search class: RuntimeError ({pct('FAILED')})", "?q=RuntimeError", "?q=RuntimeError",
         "RuntimeError"),
        (f"search class: PaymentDeclined ({share['FAILED'] / 1000:.3%})", "?q=PaymentDeclined",
         "?q=PaymentDeclined", "PaymentDeclined"),
        ("not yet recovered (stock: status=FAILED)", "?recovery=pending",
         "?status__exact=FAILED", ""),
        ("recovered by a retry (stock: status=FAILED)", "?recovery=recovered",
         "?status__exact=FAILED", ""),
        ("overview's 24 h window (created_at range)", window, window, ""),
    ]


def fetch(client, url: str, must_show: str = "") -> float:
    began = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise SystemExit(f"GET {url} answered {response.status_code}, not 200; the benchmark "
                         "would be timing an error page.")
    if must_show and must_show not in response.content.decode():
        raise SystemExit(f"GET {url} does not show {must_show!r}; the search found nothing.")
    return elapsed


def capture_queries(client, url: str) -> list[tuple[float, str]]:
    """(ms, SQL) for each query one request makes, timed to the microsecond."""
    from django.db import connection

    queries: list[tuple[float, str]] = []

    def timed(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(((time.perf_counter() - began) * 1000, sql))

    with connection.execute_wrapper(timed):
        client.get(url)
    return queries


def run_case(client, label, ours_url, stock_url, must_show, repeat, budget,
             show_queries=False) -> list:
    # One warm-up each: the first request pays for cold caches and compiled templates.
    # Only our page is checked for what it must show: the stock admin may search otherwise.
    fetch(client, ours_url, must_show)
    fetch(client, stock_url)
    times: dict[str, list[float]] = {"ours": [], "stock": []}
    urls = {"ours": ours_url, "stock": stock_url}
    for rep in range(repeat):
        # Alternate who goes first so drift in the machine hits both alike.
        order = ("ours", "stock") if rep % 2 == 0 else ("stock", "ours")
        for name in order:
            times[name].append(fetch(client, urls[name], must_show if name == "ours" else ""))
        if rep >= 2 and sum(times["stock"]) + sum(times["ours"]) > budget:
            break  # bounded: at least three samples each, then stop at the budget
    ours_q, stock_q = capture_queries(client, ours_url), capture_queries(client, stock_url)
    if show_queries:
        for name, queries in (("ours", ours_q), ("stock", stock_q)):
            print(f"    {name}:", file=sys.stderr)
            for ms, sql in queries:
                print(f"      {ms:8.2f} ms  {sql[:150]}", file=sys.stderr)
    ours_slow, stock_slow = max(ms for ms, _ in ours_q), max(ms for ms, _ in stock_q)
    ours_med, stock_med = median(times["ours"]) * 1000, median(times["stock"]) * 1000
    return [
        label,
        f"{ours_med:.1f}", f"{percentile(times['ours'], 90) * 1000:.1f}",
        f"{stock_med:.1f}", f"{percentile(times['stock'], 90) * 1000:.1f}",
        f"{stock_med / ours_med:.1f}x",
        f"{len(ours_q)} / {len(stock_q)}", f"{ours_slow:.1f} / {stock_slow:.1f}",
        len(times["ours"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="runs to load")
    parser.add_argument("--repeat", type=int, default=9, help="timed requests per case and admin")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 5 repetitions")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds per case after which repetitions stop (at least 3 run)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="time only the cases whose label contains TEXT (repeatable)")
    parser.add_argument("--show-queries", action="store_true",
                        help="print each case's SQL with its time (to stderr)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 100_000, 5

    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), root_urlconf=__name__)
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        print(f"Loading {args.rows:,} runs into PostgreSQL on port {server.port} ...",
              file=sys.stderr)
        load_rows(args.rows)
        build_sites()
        client = Client()
        client.force_login(User.objects.create_superuser("bench", "bench@example.com", "x"))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT result_id FROM {TABLE} WHERE id = %s", [args.rows // 2])
            search_id = cursor.fetchone()[0]
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]

        headers = ["case", "ours median ms", "ours p90 ms", "stock median ms", "stock p90 ms",
                   "stock/ours", "queries ours / stock", "slowest query ms ours / stock", "n"]
        rows = []
        for label, ours_qs, stock_qs, must_show in scenarios(search_id, args.rows):
            if args.only and not any(text in label for text in args.only):
                continue
            print(f"  timing {label} ...", file=sys.stderr)
            rows.append(run_case(client, label, f"/admin/gyrinx_tasks/taskexecution/{ours_qs}",
                                 f"/stock/gyrinx_tasks/taskexecution/{stock_qs}", must_show,
                                 args.repeat, args.budget, args.show_queries))
        print(f"\nTaskExecution changelist, {args.rows:,} rows, PostgreSQL {pg_version}\n")
        print(table(headers, rows))
        print()
        for line in machine_lines({"postgresql": pg_version, "rows": f"{args.rows:,}"}):
            print(f"- {line}")
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


if __name__ == "__main__":
    main()
