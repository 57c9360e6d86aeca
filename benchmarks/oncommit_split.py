"""Where the time of publish_on_commit's enqueue() goes, next to the floor's INSERT.

    .venv/bin/python -m benchmarks.oncommit_split            # about 40 s
    .venv/bin/python -m benchmarks.oncommit_split --calls 2000 --rounds 8

benchmarks/enqueue.py compares ``publish_on_commit`` with its floor (hand-written INSERTs in
one transaction, then one batched publish). This splits the gap. On a durable throwaway
PostgreSQL (benchmarks/_common.py), with no Pub/Sub (every transaction here rolls back, so
nothing is published), it runs ``--calls`` of each variant in one transaction, round after
round, variants interleaved, and prints per call the wall time, this thread's CPU and its
PostgreSQL backend's CPU (medians over rounds), each as a ratio to the floor's wall time:

- ``floor INSERT``: benchmarks/enqueue.py's floor statement, into its copy of the runs table;
- ``floor INSERT, runs table``: the same statement into the runs table itself;
- ``our INSERT alone``: ``statements.insert_shared`` with the values enqueue() passes it (a
  new id, the time, the arguments and timeline encoded), nothing else: one INSERT per run;
- ``our rows held, by COPY`` (``by executemany``, ``by multi-row INSERT``): the same values
  held with ``statements.buffer_shared`` and written together when the round ends, in each
  way ``statements._batch_plan`` offers (COPY is what enqueue() uses on PostgreSQL);
- ``enqueue()``: ``add.enqueue(n, 1)`` on a backend with ``publish_on_commit`` (its rows
  held and written together);
- ``enqueue(), a row per call``: the same with ``buffer_shared`` replaced by
  ``insert_shared``, as enqueue() was before the rows were held (one INSERT per call);
- ``enqueue() without its row``: the same with ``buffer_shared`` replaced by a function
  that holds nothing: the Python work around the row (no database round trip).

Each round ends with ``SELECT 1`` inside its transaction (held rows are written before it)
before it rolls back.

Only 127.0.0.1 is contacted.
"""

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    configure_django,
    machine_lines,
    median,
    postgres_database,
    start_postgres,
    table,
)
from benchmarks.enqueue import FLOOR_TABLE, cpu_seconds  # noqa: E402

urlpatterns: list = []  # no pages are requested
FLOOR_SQL = ("INSERT INTO {table} (result_id, task_id, task_name, task_path, backend, "
             "status, trigger, args, kwargs, errors, attempts, worker_ids, status_detail, "
             "raw_message, created_at, enqueued_at, timeline, timeline_omitted, "
             "errors_omitted, gave_up) VALUES (%s, %s, 'add', 'tests.tasks.add', 'default', "
             "'READY', 'enqueue', %s, '{{}}', '[]', 0, '[]', '', '', %s, %s, %s, 0, 0, false)")


def variants() -> dict[str, Any]:
    from django.db import connection, connections
    from django.utils import timezone

    from gyrinx_tasks import backend, messages, statements
    from tests import tasks

    add = tasks.add.using(backend="oncommit")
    route = backend.get_route("add")
    key = (route.name, route.path, "oncommit", add.queue_name, "enqueue", None)

    def floor(table_name: str) -> Any:
        sql = FLOOR_SQL.format(table=table_name)

        def insert(n: int) -> None:  # as benchmarks/enqueue.py's floor_commit, per call
            with connection.cursor() as cursor:
                result_id, now = str(uuid.uuid4()), datetime.now(UTC)
                timeline = json.dumps([{"at": now.isoformat(), "from": "", "to": "READY",
                                        "note": "enqueued"}])
                cursor.execute(sql, [result_id, result_id, f"[{n}, 1]", now, now, timeline])
                json.dumps({"task_id": result_id, "task_name": "add", "args": [n, 1],
                            "kwargs": {}, "enqueued_at": now.isoformat()},
                           separators=(",", ":")).encode()
        return insert

    def ours(write: Any, way: str = "") -> Any:
        def insert(n: int) -> None:
            if way:  # this way's plan, in place of the one enqueue() uses
                cache = connections["default"].__dict__["_gyrinx_statements"]
                if cache.get("bench-way") != way:
                    cache[("batch", key)] = statements._batch_plan(
                        connections["default"], *cache[("insert-values", key)], way=way)
                    cache["bench-way"] = way
            result_id, now = str(uuid.uuid4()), timezone.now()
            timeline = backend.first_timeline(now, "enqueued")
            write(connections["default"], key, {
                "result_id": result_id, "task_id": result_id, "args": [n, 1], "kwargs": {},
                "created_at": now, "enqueued_at": now, "timeline": timeline},
                {"args": messages.encode_json([n, 1]), "kwargs": "{}",
                 "timeline": messages.encode_json(timeline)})
        return insert

    def enqueue_with(write: Any) -> Any:
        def call(n: int) -> None:
            real = backend.buffer_shared
            backend.buffer_shared = write
            try:
                add.enqueue(n, 1)
            finally:
                backend.buffer_shared = real
        return call

    def default_way(n: int) -> None:
        cache = connections["default"].__dict__["_gyrinx_statements"]
        if cache.get("bench-way"):  # back to enqueue()'s own plan
            cache.pop(("batch", key), None)
            cache["bench-way"] = ""
        add.enqueue(n, 1)

    cases = {"floor INSERT": floor(FLOOR_TABLE),
             "floor INSERT, runs table": floor("gyrinx_tasks_taskexecution"),
             "our INSERT alone": ours(statements.insert_shared),
             "our rows held, by COPY": ours(statements.buffer_shared, "copy"),
             "our rows held, by executemany": ours(statements.buffer_shared, "many"),
             "our rows held, by multi-row INSERT": ours(statements.buffer_shared, "values"),
             "enqueue()": default_way,
             "enqueue(), a row per call": enqueue_with(statements.insert_shared),
             "enqueue() without its row": enqueue_with(lambda *args, **kwargs: True)}
    if connection.vendor != "postgresql":
        del cases["our rows held, by COPY"]
    return cases


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), "benchmarks.oncommit_split", TASKS={
            "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                        "OPTIONS": {"project_id": "bench-project"}},
            "oncommit": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                         "OPTIONS": {"project_id": "bench-project",
                                     "publish_on_commit": True}},
            "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
        })
        from django.core.management import call_command
        from django.db import connection, transaction

        from tests import tasks

        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {FLOOR_TABLE} "
                           "(LIKE gyrinx_tasks_taskexecution INCLUDING ALL)")
            cursor.execute("SELECT pg_backend_pid()")
            pid = int(cursor.fetchone()[0])
        with transaction.atomic():  # the kind's first run leaves the statement on the connection
            tasks.add.using(backend="oncommit").enqueue(0, 0)
            transaction.set_rollback(True)
        cases = variants()
        samples: dict[str, list[list[float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, case in cases.items():
                began, cpu = time.perf_counter(), cpu_seconds(pid)
                with transaction.atomic():
                    for n in range(args.calls):
                        case(n)
                    with connection.cursor() as cursor:  # held rows are written first
                        cursor.execute("SELECT 1")
                    transaction.set_rollback(True)
                spent = [b - a for a, b in zip(cpu, cpu_seconds(pid), strict=True)]
                samples[name].append([(time.perf_counter() - began) / args.calls,
                                      *(s / args.calls for s in spent)])
    finally:
        server.stop()
    return {name: [median([v[i] for v in values]) for i in range(3)]
            for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per transaction (1,000)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of every variant (6)")
    args = parser.parse_args()
    figures = run(args)
    floor = figures["floor INSERT"][0]
    print("\n".join(f"- {line}" for line in machine_lines({
        "command": "python -m benchmarks.oncommit_split " + " ".join(sys.argv[1:])})))
    print()
    print(table(["variant", "wall per call", "CPU, this thread", "CPU, PostgreSQL",
                 "floor / this (wall)"],
                [[name, f"{wall * 1e6:,.0f} us", f"{py * 1e6:,.0f} us", f"{pg * 1e6:,.0f} us",
                  f"{floor / wall:.2f}"] for name, (wall, py, pg) in figures.items()]))


if __name__ == "__main__":
    main()
