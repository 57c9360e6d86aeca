"""The push path under gunicorn, on PostgreSQL: the emulator's pushes, then pushes per second.

Run from the repository root (about three minutes; ``--quick`` about one and a half):

    .venv/bin/python -m benchmarks.push_server
    .venv/bin/python -m benchmarks.push_server --quick --json /tmp/push_server.json

It starts a throwaway PostgreSQL cluster, the official Pub/Sub emulator and gunicorn 23
serving benchmarks/push_wsgi.py, in two parts:

1. **Emulator pushes.** For each gunicorn configuration (``CONFIGS``) it creates a push
   subscription to ``/tasks/pubsub/`` for the ``add`` task, enqueues ``--pushes`` runs with
   enqueue_many() and waits until they are SUCCESSFUL (OIDC off: the emulator signs
   nothing). Reported: pushes per second, enqueue-to-SUCCESSFUL p50/p95, and the gap between
   consecutive starts on one worker process (the issue saw exactly 2.0 s with sync workers).
   Then, under the recommended configuration, ``--pushes / 2`` single ``enqueue()`` calls
   ``SPACING`` apart: the latency of a run that waits behind no other.
2. **Pushes per second.** Under the recommended configuration (gthread) with OIDC on (real
   RS256 tokens from tests/oidc.py's test key, certificates served on 127.0.0.1 and cached),
   ``--concurrency`` client threads on kept-alive connections post first deliveries of
   READY runs to ``/tasks/pubsub/`` and, in turn, to ``/bare/`` (a bare Django view with the
   same body parse and the same statements; see push_wsgi.py), ``--rounds`` times each,
   alternating. The statements per push are counted in-process first.

Only 127.0.0.1 is contacted.
"""

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    Gunicorn,
    configure_django,
    machine_lines,
    median,
    percentile,
    postgres_database,
    start_postgres,
    table,
)

# (label, gunicorn arguments). The recommended one is last and used for part 2.
CONFIGS = [
    ("sync, 2 workers (gunicorn's default worker)", ["-w", "2", "-k", "sync"]),
    ("sync, 2 workers, --keep-alive 5", ["-w", "2", "-k", "sync", "--keep-alive", "5"]),
    # One thread per worker: a kept-alive connection is the only thing that could hold it.
    ("gthread, 2 workers x 1 thread", ["-w", "2", "-k", "gthread", "--threads", "1"]),
    ("gthread, 2 workers x 4 threads", ["-w", "2", "-k", "gthread", "--threads", "4"]),
]
RECOMMENDED = CONFIGS[-1]
# Seconds between the spaced enqueues: far longer than one run takes, so none waits for another.
SPACING = 0.05


APP = "benchmarks.push_wsgi:application"


def envelope(result_id: str, n: int) -> bytes:
    data = json.dumps({"task_id": result_id, "task_name": "add", "args": [n, 1], "kwargs": {},
                       "enqueued_at": "2026-11-23T16:00:00+00:00"}).encode()
    return json.dumps({"message": {"data": base64.b64encode(data).decode(),
                                   "messageId": f"bench-{result_id}", "attributes": {},
                                   "publishTime": "2026-11-23T16:00:00Z"},
                       "subscription": "projects/bench-project/subscriptions/bench"}).encode()


def seed(count: int) -> list[str]:
    """``count`` READY runs of ``add``, as enqueue() leaves them (no publish)."""
    from gyrinx_tasks.backend import insert_runs
    from gyrinx_tasks.models import TaskExecution

    runs = [TaskExecution(task_name="add", task_path="tests.tasks.add", backend="default",
                          args=[n, 1]) for n in range(count)]
    for run in runs:
        run.task_id = run.result_id
        run._log("", run.status, "enqueued")
    insert_runs("default", runs)
    return [run.result_id for run in runs]


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gyrinx_tasks_taskexecution RESTART IDENTITY CASCADE")


# --- part 1: the emulator pushing to gunicorn ----------------------------------------------

def emulator_pushes(label: str, args: list[str], env: dict[str, str], count: int,
                    workdir: Path, spacing: float = 0.0) -> dict[str, Any]:
    """Enqueue ``count`` runs and wait for them: all at once with enqueue_many() (a burst),
    or with ``spacing`` seconds one enqueue() after another (each pushed on an idle server)."""
    from django.tasks import task_backends

    from gyrinx_tasks import clients
    from gyrinx_tasks.backend import enqueue_many
    from gyrinx_tasks.models import State, TaskExecution
    from gyrinx_tasks.registry import get_route
    from tests import tasks

    truncate()
    server = Gunicorn(APP, args, env, workdir / f"gunicorn-{len(label)}.log")
    topic = task_backends["default"].topic_path(get_route("add").topic_name)
    subscription = f"projects/bench-project/subscriptions/bench-push-{server.port}"
    subscriber = clients.subscriber_client()
    subscriber.create_subscription(request={
        "name": subscription, "topic": topic, "ack_deadline_seconds": 60,
        "push_config": {"push_endpoint": f"http://127.0.0.1:{server.port}/tasks/pubsub/"}})
    try:
        began = time.time()
        if spacing:
            for n in range(count):
                tasks.add.enqueue(n, 1)
                time.sleep(spacing)
        else:
            enqueue_many(tasks.add, [((n, 1), {}) for n in range(count)])
        deadline = time.monotonic() + 180
        done = 0
        while time.monotonic() < deadline:
            done = TaskExecution.objects.filter(status=State.SUCCESSFUL).count()
            if done >= count:
                break
            time.sleep(0.1)
        runs = list(TaskExecution.objects.filter(status=State.SUCCESSFUL).values_list(
            "enqueued_at", "started_at", "finished_at", "worker_ids"))
    finally:
        subscriber.delete_subscription(request={"subscription": subscription})
        server.stop()
    last = max((finished.timestamp() for _, _, finished, _ in runs), default=began)
    latencies = [finished.timestamp() - enqueued.timestamp()
                 for enqueued, _, finished, _ in runs]
    starts: dict[str, list[float]] = {}
    for _, started, _, workers in runs:
        starts.setdefault(workers[-1], []).append(started.timestamp())
    gaps = []
    for times in starts.values():
        times.sort()
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"label": label, "done": done, "count": count, "rate": done / max(last - began, 1e-9),
            "p50": percentile(latencies, 50) if latencies else 0,
            "p95": percentile(latencies, 95) if latencies else 0,
            "gap_median": statistics.median(gaps) if gaps else 0,
            "gap_max": max(gaps) if gaps else 0, "processes": len(starts)}


# --- part 2: pushes per second under the recommended server ---------------------------------

def post_all(port: int, path: str, bodies: list[bytes], header: str,
             concurrency: int) -> tuple[float, list[float], dict[str, int]]:
    lock = threading.Lock()
    pending = iter(bodies)
    latencies: list[float] = []
    answers: dict[str, int] = {}
    ready = threading.Barrier(concurrency + 1)

    def worker() -> None:
        # One kept-alive connection per client thread, as Pub/Sub's push client keeps them.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        ready.wait()
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                break
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body, {
                    "Content-Type": "application/json", "Authorization": header})
                response = connection.getresponse()
                response.read()
                answer = str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                answer = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - sent
            with lock:
                latencies.append(elapsed)
                answers[answer] = answers.get(answer, 0) + 1
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, answers


def count_statements() -> dict[str, int]:
    """Statements per first delivery of a run, in-process, on a connection that has served a
    push before (OIDC off: it makes no query). Django counts BEGIN and COMMIT."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    found = {}
    for path in ("/tasks/pubsub/", "/bare/"):
        truncate()
        warm_up, result_id = seed(2)
        # The first push on a connection also compiles its statements (statements.py).
        client.post(path, envelope(warm_up, 0), content_type="application/json")
        with CaptureQueriesContext(connection) as queries:
            response = client.post(path, envelope(result_id, 1), content_type="application/json")
        assert response.status_code == 200, response.content
        found[path] = len(queries.captured_queries)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--pushes", type=int, help="emulator pushes per configuration (200)")
    parser.add_argument("--requests", type=int, help="posts per endpoint and round (2000)")
    parser.add_argument("--rounds", type=int, help="rounds of each endpoint (3)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (8)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--rate-only", action="store_true",
                        help="only part 2, pushes per second against the bare view")
    parser.add_argument("--threads", type=int,
                        help="gthread threads per worker for the pushes-per-second part "
                             "(default: the recommended configuration's 4)")
    args = parser.parse_args()
    args.pushes = args.pushes or (60 if args.quick else 200)
    args.requests = args.requests or (600 if args.quick else 2000)
    args.rounds = args.rounds or (2 if args.quick else 3)

    import tempfile

    from tests.infra.pubsub import PubSubEmulator
    from tests.oidc import CERTS_PATH, CertServer, KeyPair

    workdir = Path(tempfile.mkdtemp(prefix="gyrinx-push-server-"))
    server = start_postgres()
    emulator = PubSubEmulator.start(project="bench-project")
    certs = CertServer(KeyPair.generate("bench"), KeyPair.generate("bench-other"))
    certs.start()
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
    env = {**os.environ, "BENCH_PG_PORT": str(server.port)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result: dict[str, Any] = {}
    try:
        configure_django(postgres_database(server.port), "benchmarks.push_wsgi",
                         ALLOWED_HOSTS=["*"])
        from django.core.management import call_command
        from django.tasks import task_backends

        from gyrinx_tasks import clients
        from gyrinx_tasks.registry import get_route
        from tests.oidc import OIDC

        call_command("migrate", verbosity=0)
        result["statements"] = count_statements()
        publisher = clients.publisher_client()
        publisher.create_topic(name=task_backends["default"].topic_path(
            get_route("add").topic_name))
        publisher.stop()
        result["emulator"] = [] if args.rate_only else [
            emulator_pushes(label, gargs, env, args.pushes, workdir) for label, gargs in CONFIGS]
        if not args.rate_only:
            # The recommended server again, each run enqueued on its own: latency without a
            # queue.
            result["emulator"].append(emulator_pushes(
                f"{RECOMMENDED[0]}, spaced: enqueue() every {SPACING * 1000:.0f} ms",
                RECOMMENDED[1], env, args.pushes // 2, workdir, spacing=SPACING))
        header = OIDC(certs).header()  # one token throughout, as Pub/Sub reuses its token
        part2 = RECOMMENDED
        if args.threads:
            part2 = (f"gthread, 2 workers x {args.threads} threads",
                     ["-w", "2", "-k", "gthread", "--threads", str(args.threads)])
        gunicorn = Gunicorn(APP, part2[1], {**env, "BENCH_OIDC_CERTS_URL":
                                                  certs.url(CERTS_PATH)}, workdir / "part2.log")
        samples: dict[str, list[dict[str, Any]]] = {"/tasks/pubsub/": [], "/bare/": []}
        # Each round's /tasks/pubsub/ against the /bare/ round right after it.
        each_round: list[float] = []
        try:
            for _ in range(args.rounds):
                for path in samples:
                    truncate()
                    ids = seed(args.requests)
                    bodies = [envelope(result_id, n) for n, result_id in enumerate(ids)]
                    wall, latencies, answers = post_all(gunicorn.port, path, bodies, header,
                                                        args.concurrency)
                    samples[path].append({"rate": len(bodies) / wall, "answers": answers,
                                          "p50": percentile(latencies, 50),
                                          "p95": percentile(latencies, 95)})
                each_round.append(samples["/tasks/pubsub/"][-1]["rate"]
                                  / samples["/bare/"][-1]["rate"])
        finally:
            gunicorn.stop()
        result["push"] = {path: {"rate": median([s["rate"] for s in runs]),
                                 "p50": median([s["p50"] for s in runs]),
                                 "p95": median([s["p95"] for s in runs]),
                                 "answers": runs[-1]["answers"]}
                          for path, runs in samples.items()}
        result["push / bare"] = median(each_round)
        result["config"] = part2[0]
        result["requests"], result["rounds"] = args.requests, args.rounds
        result["concurrency"] = args.concurrency
    finally:
        certs.stop()
        emulator.stop()
        server.stop()
    import gunicorn

    machine = machine_lines({"server": f"gunicorn {gunicorn.__version__}"})
    print("\n".join(f"- {line}" for line in machine))
    print()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def report(result: dict[str, Any]) -> str:
    return "\n\n".join([*([emulator_report(result)] if result["emulator"] else []),
                        rate_report(result)])


def emulator_report(result: dict[str, Any]) -> str:
    rows = [[r["label"], f"{r['done']}/{r['count']}", f"{r['rate']:.1f}/s",
             f"{r['p50'] * 1000:,.0f} ms", f"{r['p95'] * 1000:,.0f} ms",
             f"{r['gap_median'] * 1000:,.0f} ms", f"{r['gap_max'] * 1000:,.0f} ms"]
            for r in result["emulator"]]
    text = ("Emulator pushes, enqueue to SUCCESSFUL: a burst of enqueue_many() per server, "
            "then spaced enqueue() calls (the last row; its pushes/s is bounded by the "
            "spacing):\n\n"
            + table(["gunicorn", "succeeded", "pushes/s", "p50", "p95",
                     "gap per worker, median", "gap max"], rows))
    return text


def rate_report(result: dict[str, Any]) -> str:
    push, statements = result["push"], result["statements"]
    ours, bare = push["/tasks/pubsub/"], push["/bare/"]
    rows = [[path, f"{figures['rate']:,.0f}/s", f"{figures['rate'] / bare['rate']:.2f}",
             f"{figures['p50'] * 1000:.1f} ms", f"{figures['p95'] * 1000:.1f} ms",
             str(statements[path]), ", ".join(f"{k}: {v}" for k, v in figures["answers"].items())]
            for path, figures in (("/tasks/pubsub/", ours), ("/bare/", bare))]
    text = (f"Pushes per second under {result['config']}, OIDC on for /tasks/pubsub/, "
             f"{result['concurrency']} clients, {result['requests']:,} posts x "
             f"{result['rounds']} rounds (median):\n\n"
             + table(["endpoint", "pushes/s", "x bare", "p50", "p95", "statements",
                      "answers (last round)"], rows))
    return text + (f"\n\nThe push path runs at {result['push / bare']:.2f} of the bare view "
                   "(the median of each round's ratio; \"x bare\" above divides the medians).")


if __name__ == "__main__":
    main()
