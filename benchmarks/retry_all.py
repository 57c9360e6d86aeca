"""Retry-all at a million failed runs on PostgreSQL: the chunked retry against a naive loop.

Run from the repository root. The default (1,000,000 runs retried in bulk, 10,000 by both
paths side by side) took about ten minutes on a shared two-core VM (the table doubles: every
retry is a new row); ``--quick`` (100,000 and 5,000) about three minutes:

    .venv/bin/python -m benchmarks.retry_all
    .venv/bin/python -m benchmarks.retry_all --quick
    .venv/bin/python -m benchmarks.retry_all --rows 1000000 --small 20000

It starts a throwaway PostgreSQL cluster (the test suite's, see tests/infra/postgres.py),
migrates, and loads FAILED runs with ``INSERT ... SELECT`` over ``generate_series``: ``--rows``
runs of ``add`` and ``--small`` runs of ``echo``, each with a traceback in ``errors`` and a
timeline, then ``VACUUM ANALYZE``. Publishing goes to an in-memory fake publisher whose futures
are already resolved, so the figures are the database and Python work of a retry, not
network time.

Each case runs in a fresh Python process, so its peak RSS (``ru_maxrss``) is its own:

- ``naive``: ``list()`` of the failed runs, then ``retry_run()`` on each, one by one;
- ``chunked``: ``retry_queryset()``, which streams ``values_list(...).iterator()``, inserts
  each chunk of 1,000 new runs with one ``bulk_create`` and publishes the chunk together.

Both retry the same ``--small`` echo runs (naive first, then chunked), then ``chunked``
retries all ``--rows`` add runs. Only 127.0.0.1 is contacted; every query is capped at 120 s.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    configure_django,
    machine_lines,
    postgres_database,
    start_postgres,
    table,
)

urlpatterns: list = []  # no pages are requested
TABLE = "gyrinx_tasks_taskexecution"
BATCH = 200_000

LOAD_SQL = f"""
INSERT INTO {TABLE} (
    result_id, task_id, task_name, task_path, backend, status, trigger, args, kwargs,
    errors, attempts, worker_ids, status_detail, raw_message, message_id, created_at,
    enqueued_at, started_at, last_attempted_at, finished_at, timeline)
SELECT rid, rid, %(task)s, 'tests.tasks.' || %(task)s, 'default', 'FAILED', 'enqueue',
    jsonb_build_array(mod(i, 100), mod(i, 7)), '{{}}'::jsonb,
    jsonb_build_array(jsonb_build_object(
        'exception_class_path', 'builtins.RuntimeError', 'attempt', 1, 'at', created,
        'traceback', 'Traceback (most recent call last):\n  File "/app/tests/tasks.py", '
                     || 'line 22, in explode\nRuntimeError: boom #' || i)),
    1, jsonb_build_array('instance-' || mod(i, 8)), '', '', %(prefix)s || i, created, created,
    created, created, created + interval '200 ms',
    jsonb_build_array(jsonb_build_object('at', created, 'from', '', 'to', 'READY'),
                      jsonb_build_object('at', created, 'from', 'READY', 'to', 'RUNNING'),
                      jsonb_build_object('at', created, 'from', 'RUNNING', 'to', 'FAILED'))
FROM (SELECT i, gen_random_uuid()::text AS rid,
             now() - interval '1 day' + i * interval '1 ms' AS created
      FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i) AS runs
"""


class CountingPublisher:
    """A PublisherClient stand-in: counts messages and answers with resolved futures."""

    def __init__(self) -> None:
        self.count = 0

    def publish(self, topic: str, data: bytes, **attributes: str):
        from concurrent.futures import Future

        self.count += 1
        future: Future = Future()
        future.set_result(str(self.count))
        return future


def load(task: str, rows: int, prefix: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for low in range(1, rows + 1, BATCH):
            high = min(low + BATCH - 1, rows)
            cursor.execute(LOAD_SQL, {"task": task, "prefix": prefix, "low": low, "high": high})
            print(f"  loaded {high:,} {task} runs", file=sys.stderr)


def worker(variant: str, port: str, task: str, rows: int) -> None:
    """One case, in its own process: print seconds, runs retried and peak RSS as JSON."""
    configure_django(postgres_database(port), root_urlconf=__name__)
    from django.db import connection
    from django.tasks import task_backends

    from gyrinx_tasks.models import State, TaskExecution
    from gyrinx_tasks.retry import retry_queryset, retry_run

    publisher = CountingPublisher()
    task_backends["default"].__dict__["publisher"] = publisher
    failed = TaskExecution.objects.filter(status=State.FAILED, task_name=task, trigger="enqueue")
    connection.ensure_connection()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    if variant == "naive":
        retried = 0
        for run in list(failed):
            retry_run(run)
            retried += 1
    else:
        retried = retry_queryset(failed, limit=rows).retried
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "retried": retried, "published": publisher.count,
                      "baseline_kib": baseline, "peak_kib": peak}))


def run_case(variant: str, port: int, task: str, rows: int) -> dict:
    print(f"  {variant}: retrying {rows:,} {task} runs ...", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.retry_all", "--worker", variant, "--port", str(port),
         "--task", task, "--rows", str(rows)],
        capture_output=True, text=True, timeout=3600, check=False,
    )
    if done.returncode:
        sys.exit(f"The {variant} case failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["retried"] != rows or figures["published"] != rows:
        sys.exit(f"The {variant} case retried {figures['retried']:,} and published "
                 f"{figures['published']:,} of {rows:,} runs.")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="runs the chunked path retries")
    parser.add_argument("--small", type=int, default=10_000, help="runs both paths retry")
    parser.add_argument("--quick", action="store_true", help="100,000 and 5,000 runs")
    parser.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.port, args.task, args.rows)
        return
    if args.quick:
        args.rows, args.small = 100_000, 5_000

    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), root_urlconf=__name__)
        from django.core.management import call_command
        from django.db import connection, connections

        call_command("migrate", verbosity=0)
        began = time.perf_counter()
        load("add", args.rows, "add-")
        load("echo", args.small, "echo-")
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {TABLE}")
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]
        print(f"  loaded and analysed in {time.perf_counter() - began:.0f} s", file=sys.stderr)
        connections.close_all()

        cases = [("naive", "echo", args.small), ("chunked", "echo", args.small),
                 ("chunked", "add", args.rows)]
        rows = []
        results = {}
        for variant, task, count in cases:
            figures = run_case(variant, server.port, task, count)
            results[(variant, count)] = figures
            rate = count / figures["seconds"]
            rows.append([variant, f"{count:,}", f"{figures['seconds']:.1f}", f"{rate:,.0f}",
                         f"{figures['peak_kib'] / 1024:.0f}",
                         f"{(figures['peak_kib'] - figures['baseline_kib']) / 1024:.0f}"])
        naive = results[("naive", args.small)]
        chunked = results[("chunked", args.small)]
        print(f"\nRetry all failed runs, PostgreSQL {pg_version}, fake publisher "
              "(resolved futures)\n")
        print(table(["path", "runs", "seconds", "runs/s", "peak RSS MiB",
                     "RSS growth MiB"], rows))
        print(f"\nchunked/naive throughput at {args.small:,} runs: "
              f"{naive['seconds'] / chunked['seconds']:.1f}x\n")
        for line in machine_lines({"postgresql": pg_version}):
            print(f"- {line}")
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


if __name__ == "__main__":
    main()
