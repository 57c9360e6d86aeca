"""Retention on PostgreSQL (issue 19): prune a large runs table while pushes keep coming,
and the overview's 30- and 90-day windows read from rollups, before and after.

Run from the repository root (about ten minutes at the defaults on a quiet 2-core machine):

    .venv/bin/python -m benchmarks.prune                        # 1M runs over 60 days
    .venv/bin/python -m benchmarks.prune --rows 100000 --push-seconds 10   # quicker
    .venv/bin/python -m benchmarks.prune --rows 10000000 --span-days 120   # ~40 min, 13 GB

It starts a throwaway PostgreSQL cluster (tests/infra/postgres.py, durable), migrates, loads
``--rows`` runs spread over ``--span-days`` days with the changelist benchmark's ``INSERT ...
SELECT`` (benchmarks/admin_changelist.py: six tasks, 88 % successful), except that READY and
RUNNING runs are the last hour's, with one old stuck run in 100,000 (``load_runs``: the plain
indexes are built after the rows), and runs ``VACUUM ANALYZE``. Then, in order:

1. the first rollup refresh (``rollups.refresh``: every stored run, as a site's first
   ``tasks_rollup`` does), timed;
2. the overview page at ``?window=24h``, ``30d`` and ``90d`` through Django's test client as
   a superuser: one warm-up, then ``--repeat`` timed requests each, taking turns;
3. pushes answered before the prune: a scheduled delivery of ``nightly_cleanup`` (the push
   creates the run) posted over HTTP to ``runserver`` in its own process, one at a time,
   ``--push-rate`` a second, for ``--push-seconds``: p50 and p95;
4. ``retention.prune()`` with ``TASKS_RETENTION = --retention-days`` while the same pushes
   keep coming: the prune's time and runs deleted a second, the pushes' p50 and p95 during
   it, and this process's resident memory sampled every half second (peak and the spread
   between the first and last quarter of the prune); then ``--push-seconds`` more of pushes
   after the prune, a second baseline;
5. the overview again: the same windows, timed, and whether every task's counts by status
   and percentiles in the 30- and 90-day windows are what they were before the prune.

The machine's 1-minute load average is printed before the first refresh, over the prune
(every 5 s) and at the end.

Only 127.0.0.1 is contacted; every query but the load's index builds and the VACUUMs is
capped at 120 s.
"""

import argparse
import base64
import http.client
import json
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    configure_django,
    load_average,
    machine_lines,
    median,
    percentile,
    postgres_database,
    start_postgres,
    start_server,
    table,
)
from tests.infra import free_port  # noqa: E402

URL = "/tasks/pubsub/"
WINDOWS = ("30d", "90d")
TIMED_WINDOWS = ("24h", *WINDOWS)


# --- the runs ------------------------------------------------------------------------------

# The changelist benchmark's status mix, except that runs still READY or RUNNING are recent
# (the last hour's), as on a working site, and one in 2,000 of them (one in 100,000 runs)
# is an old stuck run.
SETTLED_STATUS = """CASE WHEN r_status < 0.88 THEN 'SUCCESSFUL' WHEN r_status < 0.94 THEN 'FAILED'
    WHEN r_status < 0.97 THEN 'SKIPPED' WHEN r_status < 0.98 THEN 'REJECTED'
    WHEN i <= %(settled)s AND r_trigger >= 0.0005 THEN 'SUCCESSFUL'
    WHEN r_status < 0.995 THEN 'READY' ELSE 'RUNNING' END"""


def load_runs(rows: int, span_days: float) -> None:
    """``rows`` runs over ``span_days`` days with the changelist benchmark's INSERT ...
    SELECT (six tasks, 88 % successful, tracebacks on failures, a timeline each; ids grow
    with created_at), in batches; the table's plain indexes are dropped first and built
    again after, which is several times faster than keeping them up to date row by row."""
    from django.db import connection
    from django.utils import timezone

    from benchmarks.admin_changelist import (
        LOAD_SQL,
        RAW_REJECTED,
        STATUS_MIX,
        TABLE,
        TRACEBACK,
        _case,
    )

    sql = LOAD_SQL.replace(_case("r_status", STATUS_MIX), SETTLED_STATUS)
    assert sql != LOAD_SQL, "the changelist benchmark's status mix moved"
    span = span_days * 24 * 3600
    start = timezone.now() - timedelta(seconds=span)
    settled = rows - max(1, int(rows / (span_days * 24)))  # runs before the last hour
    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")  # building an index on 10M rows
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND "
                       "indexname NOT IN (SELECT conname FROM pg_constraint)", [TABLE])
        indexes = cursor.fetchall()
        cursor.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        for low in range(1, rows + 1, 200_000):
            high = min(low + 200_000 - 1, rows)
            cursor.execute(sql, {"traceback": TRACEBACK, "raw": RAW_REJECTED, "start": start,
                                 "step": span / rows, "low": low, "high": high,
                                 "settled": settled})
            print(f"  {high:,} runs", file=sys.stderr)
        loaded = time.perf_counter() - began
        for _name, definition in indexes:
            cursor.execute(definition)
        cursor.execute(f"VACUUM ANALYZE {TABLE}")
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", [TABLE])
        size = cursor.fetchone()[0]
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("RESET statement_timeout")
    LOADED.update(size=size, seconds=f"{time.perf_counter() - began:.0f}",
                  insert=f"{loaded:.0f}")
    print(f"  loaded {rows:,} runs over {span_days:g} days ({size} with indexes) in "
          f"{time.perf_counter() - began:.0f} s", file=sys.stderr)


LOADED: dict[str, str] = {}


# --- pushes over HTTP, from a thread, to runserver in another process ----------------------

def push_body(key: str) -> bytes:
    payload = {"task_id": "scheduled-nightly_cleanup", "task_name": "nightly_cleanup",
               "args": [], "kwargs": {}}
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps({
        "message": {"data": data, "messageId": f"prune-bench-{key}", "attributes": {},
                    "publishTime": "2026-11-23T10:00:00Z"},
        "subscription": "projects/bench-project/subscriptions/bench",
    }).encode()


class Pusher(threading.Thread):
    """Posts one push at a time at a steady rate; records (sent at, seconds, answer)."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, 1 / rate
        self.samples: list[tuple[float, float, str]] = []
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self.stopping.is_set():
            self.sent += 1
            body = push_body(f"{time.time_ns()}-{self.sent}")
            began = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                connection.request("POST", URL, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                answer = str(response.status)
            except OSError as exc:
                answer = f"error {type(exc).__name__}"
            finally:
                connection.close()
            self.samples.append((began, time.perf_counter() - began, answer))
            next_at += self.interval
            self.stopping.wait(max(0.0, next_at - time.perf_counter()))

    def between(self, start: float, end: float) -> list[tuple[float, float, str]]:
        return [sample for sample in self.samples if start <= sample[0] < end]


def start_runserver(pg_port: int, port: int, log: Path) -> subprocess.Popen:
    return start_server([sys.executable, "-m", "benchmarks.prune", "--serve", "--pg-port",
                         str(pg_port), "--port", str(port)], port, log)


def serve(args: argparse.Namespace) -> None:
    from django.core.management import call_command

    configure_django(postgres_database(args.pg_port), "tests.urls")
    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False,
                 use_threading=True, skip_checks=True)


# --- memory ----------------------------------------------------------------------------------

class MemorySampler(threading.Thread):
    """This process's resident set size (VmRSS), every half second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.loads: list[float] = []  # the machine's 1-minute load average, every 5 s
        self.stopping = threading.Event()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while not self.stopping.is_set():
            if len(self.samples) % 10 == 0:
                self.loads.append(load_average())
            self.samples.append((time.perf_counter(), self.rss()))
            self.stopping.wait(0.5)


# --- the overview ------------------------------------------------------------------------------

def overview_times(client: Any, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {w: [] for w in TIMED_WINDOWS}
    for w in TIMED_WINDOWS:
        client.get(f"/admin/gyrinx_tasks/overview/?window={w}")  # warm-up
    for rep in range(repeat):
        for w in TIMED_WINDOWS if rep % 2 == 0 else tuple(reversed(TIMED_WINDOWS)):
            began = time.perf_counter()
            response = client.get(f"/admin/gyrinx_tasks/overview/?window={w}")
            times[w].append(time.perf_counter() - began)
            if response.status_code != 200 or b'id="gyrinx-overview"' not in response.content:
                raise SystemExit(f"The overview answered {response.status_code}; the benchmark "
                                 "would be timing an error page.")
    return times


def overview_numbers() -> dict[str, dict[str, Any]]:
    """What the page shows per task, for comparing before and after the prune. Only runs
    that were already there count: the pushes made during the benchmark are left out."""
    from gyrinx_tasks import stats

    found = {}
    for w in WINDOWS:
        found[w] = {task.name: (dict(task.counts), task.p50, task.p95, task.queue_p50,
                                task.queue_p95)
                    for task in stats.overview(w).tasks if task.name != "nightly_cleanup"}
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def push_line(label: str, samples: list[tuple[float, float, str]]) -> list[str]:
    latencies = [sample[1] for sample in samples]
    answers: dict[str, int] = {}
    for sample in samples:
        answers[sample[2]] = answers.get(sample[2], 0) + 1
    if not latencies:
        return [label, "0", "–", "–", "–"]
    return [label, str(len(latencies)), ms(median(latencies)), ms(percentile(latencies, 95)),
            ", ".join(f"{n} x {a}" for a, n in sorted(answers.items()))]


def main_run(args: argparse.Namespace) -> None:
    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), "tests.urls",
                         TASKS_RETENTION=timedelta(days=args.retention_days))
        run(args, server.port)
    finally:
        server.stop()


def run(args: argparse.Namespace, pg_port: int) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from gyrinx_tasks import retention, rollups
    from gyrinx_tasks.models import TaskExecution

    call_command("migrate", verbosity=0)
    machine = machine_lines()  # the code measured is the code at the start
    print(f"Loading {args.rows:,} runs over {args.span_days:g} days ...", file=sys.stderr)
    load_runs(args.rows, args.span_days)
    User.objects.create_superuser("bench", "bench@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="bench"))

    load_before = load_average()
    print("First rollup refresh ...", file=sys.stderr)
    began = time.perf_counter()
    refreshed = rollups.refresh()
    refresh_seconds = time.perf_counter() - began

    print("Overview before the prune ...", file=sys.stderr)
    before_times = overview_times(client, args.repeat)
    before = overview_numbers()

    port = free_port()
    log = Path(args.log)
    web = start_runserver(pg_port, port, log)
    pusher = Pusher(port, args.push_rate)
    memory = MemorySampler()
    try:
        pusher.start()
        print(f"Pushes without a prune, {args.push_seconds:g} s ...", file=sys.stderr)
        quiet_start = time.perf_counter()
        time.sleep(args.push_seconds)
        quiet_end = time.perf_counter()

        cutoff = rollups.floor_hour(timezone.now() - timedelta(days=args.retention_days))
        prunable = TaskExecution.objects.filter(created_at__lt=cutoff).count()
        print(f"Pruning (about {prunable:,} runs older than {args.retention_days} days) "
              "while pushes go on ...", file=sys.stderr)
        memory.start()
        prune_start = time.perf_counter()
        report = retention.prune(chunk=args.chunk, progress=lambda group: None)
        prune_end = time.perf_counter()
        memory.stopping.set()
        memory.join()
        print(f"Pushes after the prune, {args.push_seconds:g} s ...", file=sys.stderr)
        time.sleep(args.push_seconds)
        after_end = time.perf_counter()
        pusher.stopping.set()
        pusher.join()
    finally:
        web.terminate()
        try:
            web.wait(timeout=10)
        except subprocess.TimeoutExpired:
            web.kill()

    print("Overview after the prune ...", file=sys.stderr)
    with connection.cursor() as cursor:
        cursor.execute("SET statement_timeout = 0")  # millions of deleted rows to clear
        cursor.execute("VACUUM ANALYZE gyrinx_tasks_taskexecution")
        cursor.execute("RESET statement_timeout")
    after_times = overview_times(client, args.repeat)
    after = overview_numbers()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM gyrinx_tasks_taskrollup")
        rollup_rows = cursor.fetchone()[0]
        cursor.execute("SELECT version()")
        pg_version = cursor.fetchone()[0].split(",")[0]

    prune_seconds = prune_end - prune_start
    rss = [value for _at, value in memory.samples]
    quarter = max(1, len(rss) // 4)
    first, last = rss[:quarter], rss[-quarter:]
    mib = 1024 * 1024

    lines = [f"# Retention benchmark ({args.rows:,} runs over {args.span_days:g} days)", ""]
    loads = memory.loads or [0.0]
    lines += [f"- {line}" for line in [
        *machine, f"postgresql: {pg_version}",
        f"runs loaded: {LOADED.get('size', '?')} with indexes, in {LOADED.get('seconds', '?')}"
        f" s ({LOADED.get('insert', '?')} s inserting, the rest building indexes and "
        "VACUUM ANALYZE)",
        f"load average (1 min): {load_before:.2f} before the first refresh; during the prune "
        f"min {min(loads):.2f}, median {median(loads):.2f}, max {max(loads):.2f}; "
        f"{load_average():.2f} at the end"]]
    lines += ["", f"`python -m benchmarks.prune --rows {args.rows} --span-days {args.span_days:g}"
              f" --retention-days {args.retention_days} --chunk {args.chunk} --push-rate "
              f"{args.push_rate:g} --push-seconds {args.push_seconds:g} --repeat {args.repeat}`",
              ""]
    lines += ["## Rollups and prune", "", table(["step", "figure"], [
        ["first rollup refresh (every stored run)",
         f"{ms(refresh_seconds)}, {refreshed.hours} hours, {refreshed.rows} rows"],
        ["runs deleted", f"{report.deleted:,} of {report.found:,} prunable"],
        ["prune time", f"{prune_seconds:.1f} s ({report.deleted / prune_seconds:,.0f} runs/s, "
                       f"chunks of {args.chunk})"],
        ["rollup rows after", f"{rollup_rows:,}"],
        ["resident memory during the prune",
         f"peak {max(rss) / mib:.0f} MiB; first quarter median {median(first) / mib:.0f} MiB, "
         f"last quarter median {median(last) / mib:.0f} MiB ({len(rss)} samples)"],
    ]), ""]
    lines += ["## Pushes (HTTP, runserver, one at a time)", "", table(
        ["when", "pushes", "p50", "p95", "answers"],
        [push_line("before the prune", pusher.between(quiet_start, quiet_end)),
         push_line("during the prune", pusher.between(prune_start, prune_end)),
         push_line("after the prune", pusher.between(prune_end, after_end))]), "",
        "The pusher sends one push at a time at the rate asked for; when pushes take longer "
        "than the interval it sends the next at once, so fewer pushes in a phase mean slower "
        "answers. The machine is shared: compare the three phases, which other load hits "
        "alike only if it is steady.", ""]
    same = all(before[w] == after[w] for w in WINDOWS)
    lines += ["## Overview page (test client, superuser)", "", table(
        ["window", "before the prune: median", "p90", "after: median", "p90"],
        [[w, ms(median(before_times[w])), ms(percentile(before_times[w], 90)),
          ms(median(after_times[w])), ms(percentile(after_times[w], 90))]
         for w in TIMED_WINDOWS]),
        "", f"Counts by status and percentiles of every task the same before and after: "
            f"**{'yes' if same else 'NO'}**."]
    if not same:
        for w in WINDOWS:
            for name in before[w]:
                if before[w][name] != after[w].get(name):
                    lines.append(f"- {w} {name}: {before[w][name]} then {after[w].get(name)}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--span-days", type=float, default=60)
    parser.add_argument("--retention-days", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=2000, help="runs per prune transaction")
    parser.add_argument("--push-rate", type=float, default=20, help="pushes a second")
    parser.add_argument("--push-seconds", type=float, default=30,
                        help="seconds of pushes without a prune")
    parser.add_argument("--repeat", type=int, default=5, help="timed overview requests")
    parser.add_argument("--out", default="", help="also write the report to this file")
    parser.add_argument("--log", default="/tmp/gyrinx-prune-bench-runserver.log",
                        help="runserver's output")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pg-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    else:
        main_run(args)


if __name__ == "__main__":
    main()
