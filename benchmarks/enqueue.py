"""Enqueue throughput against the real Pub/Sub emulator on PostgreSQL, side by side in one run.

Run from the repository root (about three minutes; ``--quick`` about one):

    .venv/bin/python -m benchmarks.enqueue
    .venv/bin/python -m benchmarks.enqueue --quick --json /tmp/enqueue.json

It starts a throwaway PostgreSQL cluster (tests/infra/postgres.py) and the official emulator
(tests/infra/pubsub.py), migrates, creates the ``add`` task's topic (no subscription, so the
emulator only stores and acknowledges), and runs every case once per round, round after
round (``--rounds``, median reported), emptying the run table before each case:

- ``raw fire-and-forget``: ``PublisherClient.publish()`` (library defaults) ``--bulk`` times,
  timed until the calls return; ``raw, all confirmed`` is the same until every future has
  resolved;
- ``raw, wait each``: ``publish(...).result()`` one at a time (library defaults: each waits
  out the 10 ms batch timer);
- ``raw, one request each``: the GAPIC ``publish`` call, one message per request, as
  gyrinx_tasks' single enqueue makes it (the floor for that path);
- ``ours, enqueue()``: ``tests.tasks.add.enqueue()`` from one thread: one INSERT, one request,
  confirmed; ``ours, enqueue(), 8 threads`` the same from 8 threads;
- ``ours, enqueue_many()``: ``--bulk`` calls, rows bulk-created, published in batches,
  every publish confirmed; ``ours, publish_on_commit``: ``--bulk`` ``enqueue()`` calls in one
  transaction on a backend with ``publish_on_commit``, all published at commit, confirmed;
- ``floor, INSERTs + one batched publish``: what ``publish_on_commit`` cannot beat: ``--bulk``
  hand-written parameterised INSERTs in one transaction into a table with the runs table's
  columns and indexes (``CREATE TABLE ... (LIKE ... INCLUDING ALL)``), then, after the commit,
  the same messages published together (``clients.publish_many``), confirmed. The report
  prints ``publish_on_commit`` as a fraction of it;
- ``django-tasks-pubsub 0.5.0``: its ``.enqueue()`` ``--bulk`` times in its own virtualenv
  (Python 3.13 from pyenv, created under .cache/bench-peer from PyPI on first use). It
  records nothing and never waits for the publish.

Rates are per second of wall time. Only 127.0.0.1 is contacted (and PyPI once for the peer).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    REPO_ROOT,
    configure_django,
    machine_lines,
    median,
    postgres_database,
    start_postgres,
    table,
)

urlpatterns: list = []  # no pages are requested
PEER = "django-tasks-pubsub==0.5.0"
PEER_PYTHON = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions/3.13.0/bin/python"
PEER_VENV = REPO_ROOT / ".cache" / "bench-peer"


def peer_python() -> tuple[Path | None, str]:
    """The peer's virtualenv python, made on first use, or None and why it could not be."""
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python, ""
    base = Path(os.environ.get("BENCH_PEER_BASE_PYTHON", PEER_PYTHON))
    if not base.exists():
        base = Path(shutil.which("python3.13") or base)
    if not base.exists():
        return None, f"no Python 3.13 at {base} (install it with `pyenv install 3.13`)"
    try:
        subprocess.run([str(base), "-m", "venv", str(PEER_VENV)], check=True, timeout=120,
                       capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER], check=True,
                       timeout=600, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        return None, f"`pip install {PEER}` failed: {(exc.stderr or '').strip()[-300:]}"
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        return None, f"could not build its virtualenv: {exc}"
    return python, ""


class Bench:
    def __init__(self, emulator_host: str, project: str, bulk: int, single: int) -> None:
        from django.tasks import task_backends

        from gyrinx_tasks.registry import get_route
        from tests import tasks

        self.tasks, self.bulk, self.single = tasks, bulk, single
        self.host, self.project = emulator_host, project
        backend = task_backends["default"]
        self.topic_name = get_route("add").topic_name
        self.topic = backend.topic_path(self.topic_name)
        from gyrinx_tasks import clients

        admin = clients.publisher_client()
        admin.create_topic(name=self.topic)
        admin.stop()
        self.raw = clients.publisher_client()  # the library's default batch settings
        self.raw.publish(self.topic, b"{}").result(timeout=30)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
                           "(LIKE gyrinx_tasks_taskexecution INCLUDING ALL)")

    def backend_pid(self) -> int:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def data(self, n: int) -> bytes:
        return json.dumps({"task_id": f"raw-{n}", "task_name": "add", "args": [n, 1],
                           "kwargs": {}, "enqueued_at": "2026-11-23T16:00:00+00:00"},
                          separators=(",", ":")).encode()

    def truncate(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE gyrinx_tasks_taskexecution RESTART IDENTITY CASCADE")
            cursor.execute(f"TRUNCATE {FLOOR_TABLE} RESTART IDENTITY")

    # Each case returns (count, seconds).

    def raw_fire_and_forget(self) -> dict[str, tuple[int, float]]:
        start = time.perf_counter()
        futures = [self.raw.publish(self.topic, self.data(n)) for n in range(self.bulk)]
        returned = time.perf_counter() - start
        for future in futures:
            future.result(timeout=60)
        confirmed = time.perf_counter() - start
        return {"raw fire-and-forget": (self.bulk, returned),
                "raw, all confirmed": (self.bulk, confirmed)}

    def raw_wait_each(self) -> dict[str, tuple[int, float]]:
        count = max(100, self.single // 4)
        start = time.perf_counter()
        for n in range(count):
            self.raw.publish(self.topic, self.data(n)).result(timeout=60)
        return {"raw, wait each": (count, time.perf_counter() - start)}

    def raw_request_each(self) -> dict[str, tuple[int, float]]:
        from gyrinx_tasks import clients

        start = time.perf_counter()
        for n in range(self.single):
            clients.publish_now(self.raw, self.topic, self.data(n), {}, 30)
        return {"raw, one request each": (self.single, time.perf_counter() - start)}

    def ours_single(self) -> dict[str, tuple[int, float]]:
        add = self.tasks.add
        add.enqueue(0, 0)
        start = time.perf_counter()
        for n in range(self.single):
            add.enqueue(n, 1)
        return {"ours, enqueue()": (self.single, time.perf_counter() - start)}

    def ours_threads(self, threads: int = 8) -> dict[str, tuple[int, float]]:
        from django.db import connection

        add, each = self.tasks.add, max(1, self.single // threads)
        ready = threading.Barrier(threads + 1)

        def work() -> None:
            add.enqueue(0, 0)  # the thread's connection and backend, not timed
            ready.wait()
            for n in range(each):
                add.enqueue(n, 1)
            connection.close()

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        ready.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        return {f"ours, enqueue(), {threads} threads": (each * threads,
                                                        time.perf_counter() - start)}

    def ours_many(self) -> dict[str, tuple[int, float]]:
        from gyrinx_tasks.backend import enqueue_many

        calls = [((n, 1), {}) for n in range(self.bulk)]
        start = time.perf_counter()
        results = enqueue_many(self.tasks.add, calls)
        seconds = time.perf_counter() - start
        assert len(results) == self.bulk
        return {"ours, enqueue_many()": (self.bulk, seconds)}

    def ours_commit(self) -> dict[str, tuple[int, float]]:
        from django.db import transaction

        add = self.tasks.add.using(backend="oncommit")
        start = time.perf_counter()
        with transaction.atomic():
            for n in range(self.bulk):
                add.enqueue(n, 1)
        return {"ours, publish_on_commit": (self.bulk, time.perf_counter() - start)}

    def floor_commit(self) -> dict[str, tuple[int, float]]:
        """Hand-written INSERTs of the rows enqueue() writes, then one batched publish."""
        import uuid
        from datetime import UTC, datetime

        from django.db import connection, transaction

        from gyrinx_tasks import clients

        sql = (f"INSERT INTO {FLOOR_TABLE} (result_id, task_id, task_name, task_path, backend, "
               "status, trigger, args, kwargs, errors, attempts, worker_ids, status_detail, "
               "raw_message, created_at, enqueued_at, timeline, timeline_omitted, "
               "errors_omitted, gave_up) VALUES (%s, %s, 'add', 'tests.tasks.add', 'default', "
               "'READY', 'enqueue', %s, '{}', '[]', 0, '[]', '', '', %s, %s, %s, 0, 0, false)")
        start = time.perf_counter()
        messages = []
        with transaction.atomic(), connection.cursor() as cursor:
            for n in range(self.bulk):
                result_id, now = str(uuid.uuid4()), datetime.now(UTC)
                timeline = json.dumps([{"at": now.isoformat(), "from": "", "to": "READY",
                                        "note": "enqueued"}])
                cursor.execute(sql, [result_id, result_id, f"[{n}, 1]", now, now, timeline])
                messages.append((json.dumps(
                    {"task_id": result_id, "task_name": "add", "args": [n, 1], "kwargs": {},
                     "enqueued_at": now.isoformat()}, separators=(",", ":")).encode(),
                    {"gyrinx_recorded": "1"}))
        ids = clients.publish_many(self.raw, self.topic, messages, 60)
        seconds = time.perf_counter() - start
        assert all(isinstance(i, str) for i in ids)
        return {"floor, INSERTs + one batched publish": (self.bulk, seconds)}

    def peer(self, python: Path | None) -> dict[str, tuple[int, float]]:
        if python is None:
            return {}
        out = subprocess.run(
            [str(python), str(REPO_ROOT / "benchmarks" / "_peer_enqueue.py"), self.host,
             self.project, self.topic_name, str(self.bulk)],
            capture_output=True, text=True, timeout=600, check=True)
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        return {"django-tasks-pubsub 0.5.0": (figures["count"], figures["returned"])}


def cpu_seconds(backend_pid: int) -> tuple[float, float]:
    """CPU seconds so far of this thread and of its PostgreSQL backend (0 if unreadable).

    Steadier than wall time on a loaded machine: waiting for a core is not counted. The
    backend's figure is in clock ticks (/proc), fine for cases of thousands of calls."""
    try:
        fields = Path(f"/proc/{backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        server = 0.0
    return time.thread_time(), server


# The cases' short names (--cases), in the order each round runs them.
CASES = ["raw", "raw-wait", "raw-request", "peer", "single", "threads", "many", "commit",
         "floor"]
ORDER = [
    "raw fire-and-forget", "raw, all confirmed", "raw, wait each", "raw, one request each",
    "django-tasks-pubsub 0.5.0", "ours, enqueue()", "ours, enqueue(), 8 threads",
    "ours, enqueue_many()", "ours, publish_on_commit", "floor, INSERTs + one batched publish",
]
FLOOR_TABLE = "bench_floor_runs"
NOTES = {
    "raw fire-and-forget": "publish() returned, nothing confirmed",
    "raw, all confirmed": "every future resolved",
    "raw, wait each": "library defaults: 10 ms batch timer per message",
    "raw, one request each": "the floor of a single confirmed publish",
    "django-tasks-pubsub 0.5.0": "records nothing, never confirms",
    "ours, enqueue()": "row + confirmed publish, one thread",
    "ours, enqueue(), 8 threads": "row + confirmed publish each",
    "ours, enqueue_many()": "rows + confirmed publishes",
    "ours, publish_on_commit": "rows + confirmed publishes at commit",
    "floor, INSERTs + one batched publish": "hand-written rows, then one batched publish",
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.infra.pubsub import PubSubEmulator

    python, peer_problem = peer_python() if "peer" in args.cases else (None, "")
    server = start_postgres()
    emulator = PubSubEmulator.start(project="bench-project")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    try:
        configure_django(postgres_database(server.port), "benchmarks.enqueue", TASKS={
            "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                        "OPTIONS": {"project_id": "bench-project"}},
            "oncommit": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                         "OPTIONS": {"project_id": "bench-project", "publish_on_commit": True}},
            "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
        })
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        bench = Bench(emulator.host, "bench-project", args.bulk, args.single)
        samples: dict[str, list[tuple[int, float]]] = {}
        cpu: dict[str, list[list[float]]] = {}  # per call: [this thread, its PostgreSQL]
        every = {"raw": bench.raw_fire_and_forget, "raw-wait": bench.raw_wait_each,
                 "raw-request": bench.raw_request_each, "peer": lambda: bench.peer(python),
                 "single": bench.ours_single, "threads": bench.ours_threads,
                 "many": bench.ours_many, "commit": bench.ours_commit,
                 "floor": bench.floor_commit}
        cases = [every[name] for name in CASES if name in args.cases]
        backend_pid = bench.backend_pid()
        for round_ in range(args.rounds):
            for case in cases:
                bench.truncate()
                began = cpu_seconds(backend_pid)
                figures = case()
                spent = [b - a for a, b in zip(began, cpu_seconds(backend_pid), strict=True)]
                for name, figure in figures.items():
                    samples.setdefault(name, []).append(figure)
                    if len(figures) == 1 and name in MEASURED:  # one timed thing, one thread
                        cpu.setdefault(name, []).append([s / figure[0] for s in spent])
            print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
        bench.raw.stop()
    finally:
        emulator.stop()
        server.stop()
    rates = {name: median([count / seconds for count, seconds in values])
             for name, values in samples.items()}
    counts = {name: values[0][0] for name, values in samples.items()}
    each_round = [{name: values[n][0] / values[n][1] for name, values in samples.items()}
                  for n in range(args.rounds)]
    cpu_per_call = {name: [median([v[i] for v in values]) for i in range(2)]
                    for name, values in cpu.items()}
    return {"rates": rates, "counts": counts, "rounds": args.rounds, "each_round": each_round,
            "cpu": cpu_per_call, "peer_problem": peer_problem}


RATIOS = {  # name: (case, its reference), both measured in each round
    "publish_on_commit / floor": ("ours, publish_on_commit",
                                  "floor, INSERTs + one batched publish"),
    "enqueue() / one request": ("ours, enqueue()", "raw, one request each"),
}


MEASURED = {name for pair in RATIOS.values() for name in pair}


def ratios(each_round: list[dict[str, float]]) -> dict[str, float]:
    """The median over rounds of each ratio in RATIOS, each from figures of the same round."""
    found = {}
    for name, (case, reference) in RATIOS.items():
        values = [rates[case] / rates[reference] for rates in each_round
                  if rates.get(case) and rates.get(reference)]
        if values:
            found[name] = median(values)
    return found


def cpu_ratios(cpu: dict[str, list[float]]) -> dict[str, float]:
    """RATIOS by CPU per call (this thread and its PostgreSQL backend together): the
    reference's CPU over the case's, so that higher is better as for rates."""
    found = {}
    for name, (case, reference) in RATIOS.items():
        if case in cpu and reference in cpu and sum(cpu[case]):
            found[name] = sum(cpu[reference]) / sum(cpu[case])
    return found


def ratio_lines(result: dict[str, Any]) -> list[str]:
    found = result["ratios"]
    lines = []
    cpu = result.get("cpu", {})
    commit, floor = (cpu.get("ours, publish_on_commit"),
                     cpu.get("floor, INSERTs + one batched publish"))
    if commit and floor:
        lines.append(
            f"CPU per call (this process's thread + its PostgreSQL backend, median): "
            f"publish_on_commit {commit[0] * 1e6:,.0f} + {commit[1] * 1e6:,.0f} us, floor "
            f"{floor[0] * 1e6:,.0f} + {floor[1] * 1e6:,.0f} us; the floor's CPU is "
            f"{result['cpu_ratios']['publish_on_commit / floor']:.2f} of publish_on_commit's "
            "(what the ratio of rates would be on an idle machine if CPU were all that "
            "counted).")
    if "publish_on_commit / floor" in found:
        lines.append(f"publish_on_commit runs at {found['publish_on_commit / floor']:.2f} of "
                     "the floor (hand-written INSERTs in one transaction, then one batched "
                     "publish), the median of each round's ratio.")
    if "enqueue() / one request" in found:
        lines.append(f"A single enqueue() runs at {found['enqueue() / one request']:.2f} of "
                     "one confirmed Publish request alone (its row and its publish overlap).")
    return lines


def report(result: dict[str, Any]) -> str:
    rates, counts = result["rates"], result["counts"]
    raw = rates.get("raw fire-and-forget")
    peer = rates.get("django-tasks-pubsub 0.5.0")
    rows = []
    for name in ORDER:
        if name not in rates:
            continue
        rows.append([name, f"{counts[name]:,}", f"{rates[name]:,.0f}/s",
                     f"{rates[name] / raw:.2f}" if raw else "-",
                     f"{rates[name] / peer:.2f}" if peer else "-", NOTES[name]])
    text = table(["case", "messages", "rate (median)", "x raw fire-and-forget", "x peer",
                  "what is timed"], rows)
    for line in ratio_lines(result):
        text += f"\n\n{line}"
    if result["peer_problem"]:
        text += f"\n\ndjango-tasks-pubsub was not measured: {result['peer_problem']}."
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, 2 rounds")
    parser.add_argument("--bulk", type=int, help="messages in the bulk cases (10,000)")
    parser.add_argument("--single", type=int, help="calls in the one-at-a-time cases (2,000)")
    parser.add_argument("--rounds", type=int, help="rounds of every case (3)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"the cases to run, comma-separated (all: {','.join(CASES)})")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    args.cases = set(args.cases.split(","))
    if args.cases - set(CASES):
        parser.error(f"unknown --cases {', '.join(sorted(args.cases - set(CASES)))}")
    args.bulk = args.bulk or (2000 if args.quick else 10_000)
    args.single = args.single or (500 if args.quick else 2000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    result = run(args)
    result["ratios"] = ratios(result["each_round"])
    result["cpu_ratios"] = cpu_ratios(result["cpu"])
    machine = machine_lines({"pubsub": "official emulator (gcloud beta emulators)"})
    print("\n".join(f"- {line}" for line in machine))
    print()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
