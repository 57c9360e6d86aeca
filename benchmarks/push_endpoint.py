"""Throughput and latency of the push endpoint, POST /tasks/pubsub/, on SQLite and PostgreSQL.

Run from the repository root (about two minutes; five with ``--http``):

    .venv/bin/python -m benchmarks.push_endpoint                  # in-process only
    .venv/bin/python -m benchmarks.push_endpoint --http           # also through runserver
    .venv/bin/python -m benchmarks.push_endpoint --requests 500 --db postgres --show-queries

For each database the script runs a child process with its own settings, migrates, and
posts push envelopes. The databases: ``sqlite`` (a temporary file, Django's defaults),
``sqlite-immediate`` (the same with ``"transaction_mode": "IMMEDIATE"``) and ``postgres``
(a throwaway cluster, see tests/infra/postgres.py). The cases:

- ``ran, enqueued``: the common path: ``enqueue()`` already wrote a READY run, the push
  finds it by result id, runs ``tests.tasks.add`` and records SUCCESSFUL (answers 200);
- ``ran, scheduled``: a scheduled delivery (``task_id`` starting ``scheduled-``), for which
  the push creates the run (200);
- ``ran, OIDC on``: as ``ran, enqueued`` with the Authorization token verified against a
  local certificates server (in-process only);
- ``duplicate``: the same envelope again after it succeeded (200 ``duplicate``);
- ``rejected``: a message whose data is not base64, recorded as a REJECTED run (200).

In-process requests go through Django's test client (no network, one request at a time,
one database connection kept open). With ``--http`` the same cases, except OIDC, are sent
over HTTP to ``manage.py runserver`` (threaded, CONN_MAX_AGE=0) on 127.0.0.1 from
``--concurrency`` client threads. Every case is bounded by ``--requests`` and by
``--time-limit`` seconds. The figures are requests per second, p50 and p95 latency, and
the SQL queries per request (django.test.utils.CaptureQueriesContext, in-process only).
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    REPO_ROOT,
    configure_django,
    machine_lines,
    median,
    percentile,
    postgres_database,
    sqlite_database,
    start_postgres,
    start_server,
    stop,
    table,
)
from tests.infra import free_port  # noqa: E402

URL = "/tasks/pubsub/"
WARM_UP = 20  # untimed requests per case: imports, template-free but cold code paths
QUERY_SAMPLE = 20  # requests per case whose queries are counted (outside the timed ones)
PG_DATABASE = "gyrinx_bench"


def envelope(payload: Any, message_id: str, raw_data: str | None = None) -> bytes:
    data = raw_data if raw_data is not None else base64.b64encode(
        json.dumps(payload).encode()).decode()
    return json.dumps({
        "message": {"data": data, "messageId": message_id, "attributes": {},
                    "publishTime": "2026-11-23T10:00:00Z"},
        "subscription": "projects/bench-project/subscriptions/bench",
        "deliveryAttempt": 1,
    }).encode()


class Case:
    """One kind of delivery: the body for key ``k`` and the answer it must get."""

    status = 200
    outcome = "ran"
    oidc = False
    http = True

    def __init__(self, name: str, tag: str) -> None:
        self.name = name
        self.tag = tag  # keeps ids unique across cases, processes and modes

    def prepare(self, keys: list[str]) -> None:
        """Untimed set-up for the keys that will be posted."""

    def body(self, key: str) -> bytes:
        raise NotImplementedError


class RanEnqueued(Case):
    def prepare(self, keys: list[str]) -> None:
        from gyrinx_tasks.models import TaskExecution

        # What PubSubBackend.enqueue() leaves behind before the message is published.
        TaskExecution.objects.bulk_create(
            [TaskExecution(result_id=f"{self.tag}-{key}", task_id=f"{self.tag}-{key}",
                           task_name="add", task_path="tests.tasks.add", args=[1, 2])
             for key in keys], batch_size=1000)

    def body(self, key: str) -> bytes:
        payload = {"task_id": f"{self.tag}-{key}", "task_name": "add", "args": [1, 2],
                   "kwargs": {}, "enqueued_at": "2026-11-23T10:00:00+00:00"}
        return envelope(payload, f"{self.tag}-m-{key}")


class RanOIDC(RanEnqueued):
    oidc = True
    http = False


class RanScheduled(Case):
    def body(self, key: str) -> bytes:
        payload = {"task_id": "scheduled-nightly_cleanup", "task_name": "nightly_cleanup",
                   "args": [], "kwargs": {}}
        return envelope(payload, f"{self.tag}-m-{key}")


class Duplicate(Case):
    status, outcome = 200, "duplicate"

    def prepare(self, keys: list[str]) -> None:
        from django.test import Client

        response = Client().post(URL, self.body(""), content_type="application/json")
        if response.status_code != 200:
            raise SystemExit(f"Setting up the duplicate case answered {response.status_code}: "
                             f"{response.content[:300]!r}")

    def body(self, key: str) -> bytes:  # the same delivery every time
        payload = {"task_id": f"{self.tag}-once", "task_name": "add", "args": [1, 2],
                   "kwargs": {}, "enqueued_at": "2026-11-23T10:00:00+00:00"}
        return envelope(payload, f"{self.tag}-m-once")


class Rejected(Case):
    status, outcome = 200, "rejected"

    def body(self, key: str) -> bytes:
        return envelope(None, f"{self.tag}-m-{key}", raw_data="%%%not-base64")


def cases(mode: str) -> list[Case]:
    return [RanEnqueued("ran, enqueued", f"{mode}-enq"),
            RanScheduled("ran, scheduled", f"{mode}-sch"),
            RanOIDC("ran, OIDC on", f"{mode}-oidc"),
            Duplicate("duplicate", f"{mode}-dup"),
            Rejected("rejected", f"{mode}-rej")]


def summary(case: Case, mode: str, latencies: list[float], wall: float, answers: Counter,
            queries: float | None = None, sql: list[str] | None = None) -> dict[str, Any]:
    expected = f"{case.status} {case.outcome}"
    return {
        "case": case.name, "mode": mode, "requests": len(latencies),
        "rps": len(latencies) / wall if wall else 0.0,
        "p50_ms": median(latencies) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
        "unexpected": {answer: n for answer, n in answers.items() if answer != expected},
        "queries": queries, "sql": sql or [],
    }


# --- in-process ------------------------------------------------------------------------------

class OIDCSetup:
    """A local certificates server and a token it vouches for, as tests/oidc.py provides."""

    def __enter__(self) -> str:
        from django.conf import settings

        from gyrinx_tasks.auth import reset_verifier
        from gyrinx_tasks.conf import tasks_settings
        from tests.oidc import CERTS_PATH, OIDC, CertServer, KeyPair

        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"
        self.server = CertServer(KeyPair.generate("bench"), KeyPair.generate("bench-other"))
        self.server.start()
        settings.TASKS_OIDC_CERTS_URL = self.server.url(CERTS_PATH)
        settings.TASKS_VERIFY_OIDC = True
        reset_verifier()
        assert tasks_settings.TASKS_VERIFY_OIDC
        # One token for the whole case, as Pub/Sub reuses a token until it nears expiry.
        return OIDC(self.server).header()

    def __exit__(self, *exc: object) -> None:
        from django.conf import settings

        from gyrinx_tasks.auth import reset_verifier

        settings.TASKS_VERIFY_OIDC = False
        reset_verifier()
        self.server.stop()


def run_in_process(case: Case, requests: int, time_limit: float) -> dict[str, Any]:
    from contextlib import ExitStack

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    keys = [f"w{i}" for i in range(WARM_UP)] + [f"t{i}" for i in range(requests)] + [
        f"q{i}" for i in range(QUERY_SAMPLE)]
    case.prepare(keys)
    with ExitStack() as stack:
        headers = {}
        if case.oidc:
            headers["Authorization"] = stack.enter_context(OIDCSetup())

        def post(key: str):
            return client.post(URL, case.body(key), content_type="application/json",
                               headers=headers)

        for i in range(WARM_UP):
            post(f"w{i}")
        latencies, answers = [], Counter()
        began = time.perf_counter()
        for i in range(requests):
            sent = time.perf_counter()
            response = post(f"t{i}")
            latencies.append(time.perf_counter() - sent)
            answers[f"{response.status_code} {response.json().get('outcome')}"] += 1
            if sent - began > time_limit:
                break
        wall = time.perf_counter() - began
        counts = []
        for i in range(QUERY_SAMPLE):
            with CaptureQueriesContext(connection) as captured:
                post(f"q{i}")
            counts.append(len(captured.captured_queries))
    sql = [query["sql"] for query in captured.captured_queries]
    return summary(case, "in-process", latencies, wall, answers, sum(counts) / len(counts), sql)


# --- over HTTP ---------------------------------------------------------------------------------

def start_runserver(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    return start_server([sys.executable, "-m", "benchmarks.push_endpoint", "--serve", "--db",
                         args.db, "--pg-port", str(args.pg_port), "--sqlite-path",
                         args.sqlite_path, "--port", str(port)], port, log, timeout=30)


def run_http(case: Case, port: int, requests: int, concurrency: int,
             time_limit: float) -> dict[str, Any]:
    keys = [f"h{i}" for i in range(requests)]
    case.prepare(keys)
    lock = threading.Lock()
    pending = iter(keys)
    latencies: list[float] = []
    answers: Counter = Counter()
    began = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:
                key = next(pending, None)
            if key is None or time.perf_counter() - began > time_limit:
                return
            body = case.body(key)
            sent = time.perf_counter()
            # A new connection per request, as runserver closes idle ones between pushes.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                connection.request("POST", URL, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                try:
                    outcome = json.loads(data).get("outcome")
                except ValueError:
                    outcome = "non-JSON"
                answer = f"{response.status} {outcome}"
            except OSError as exc:
                answer = f"error {type(exc).__name__}"
            finally:
                connection.close()
            elapsed = time.perf_counter() - sent
            with lock:
                latencies.append(elapsed)
                answers[answer] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(case, f"HTTP x{concurrency}", latencies, time.perf_counter() - began,
                   answers)


# --- processes ---------------------------------------------------------------------------------

DATABASES = {"sqlite": "SQLite", "sqlite-immediate": "SQLite IMMEDIATE",
             "postgres": "PostgreSQL"}


def database(args: argparse.Namespace) -> dict[str, Any]:
    if args.db == "postgres":
        return postgres_database(args.pg_port, PG_DATABASE)
    settings = sqlite_database(args.sqlite_path)
    if args.db == "sqlite-immediate":
        # BEGIN IMMEDIATE takes the write lock up front and waits for it; the default
        # (DEFERRED) upgrades a read lock on the first write and fails at once if another
        # connection writes, which select_for_update() cannot prevent on SQLite.
        settings["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
    return settings


def serve(args: argparse.Namespace) -> None:
    from django.core.management import call_command

    configure_django(database(args), "tests.urls")
    call_command("runserver", f"127.0.0.1:{args.port}", use_reloader=False,
                 use_threading=True, skip_checks=True)


def child(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    configure_django(database(args), "tests.urls")
    call_command("migrate", verbosity=0)
    results = []
    for case in cases("p"):
        print(f"  {args.db}: {case.name}, in-process ...", file=sys.stderr)
        results.append(run_in_process(case, args.requests, args.time_limit))
    if args.http:
        port = free_port()
        server = start_runserver(args, port, Path(args.out).with_suffix(".runserver.log"))
        try:
            for case in cases("h"):
                if case.http:
                    print(f"  {args.db}: {case.name}, HTTP ...", file=sys.stderr)
                    results.append(run_http(case, port, args.http_requests, args.concurrency,
                                            args.time_limit))
        finally:
            stop(server)
    if connection.vendor == "sqlite":
        import sqlite3

        version = sqlite3.sqlite_version
    else:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
    Path(args.out).write_text(json.dumps({"version": version, "results": results}))


def orchestrate(args: argparse.Namespace) -> None:
    databases = args.db.split(",") if args.db else list(DATABASES)
    unknown = sorted(set(databases) - set(DATABASES))
    if unknown:
        sys.exit(f"Unknown --db {', '.join(unknown)}; choose from {', '.join(DATABASES)}.")
    workdir = Path(tempfile.mkdtemp(prefix="gyrinx-push-bench-"))
    server = start_postgres() if "postgres" in databases else None
    reports: dict[str, dict] = {}
    try:
        if server is not None:
            import psycopg

            with psycopg.connect(host=server.host, port=server.port, user="postgres",
                                 dbname="postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {PG_DATABASE}")
        for db in databases:
            out = workdir / f"{db}.json"
            command = [sys.executable, "-m", "benchmarks.push_endpoint", "--child", "--db", db,
                       "--pg-port", str(server.port if server else 0),
                       "--sqlite-path", str(workdir / f"{db}.sqlite3"), "--out", str(out),
                       "--requests", str(args.requests), "--http-requests",
                       str(args.http_requests), "--concurrency", str(args.concurrency),
                       "--time-limit", str(args.time_limit)] + (["--http"] if args.http else [])
            subprocess.run(command, cwd=REPO_ROOT, check=True,
                           timeout=args.time_limit * 12 + 300)
            reports[db] = json.loads(out.read_text())
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(databases, reports, args)


def print_report(databases: list[str], reports: dict[str, dict], args) -> None:
    baseline = databases[0]
    by_key = {db: {(r["case"], r["mode"]): r for r in reports[db]["results"]}
              for db in databases}
    headers = ["case", "mode", "database", "req/s", "expected answers", "p50 ms", "p95 ms",
               f"req/s vs {DATABASES[baseline]}", "queries/request"]
    rows, problems = [], []
    for key in by_key[baseline]:
        for db in databases:
            r = by_key[db][key]
            unexpected = sum(r["unexpected"].values())
            ok = 1 - unexpected / r["requests"] if r["requests"] else 0.0
            base = by_key[baseline][key]["rps"]
            rows.append([*key, DATABASES[db], f"{r['rps']:.0f}", f"{ok:.0%}",
                         f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                         f"{r['rps'] / base:.2f}" if base else "-",
                         "-" if r["queries"] is None else f"{r['queries']:g}"])
            if unexpected:
                problems.append(f"{DATABASES[db]}, {key[0]}, {key[1]}: {r['unexpected']} "
                                f"out of {r['requests']}")
    print(f"\nPOST {URL}: {args.requests} in-process requests per case"
          + (f", {args.http_requests} over HTTP with {args.concurrency} client threads"
             if args.http else "") + "\n")
    print(table(headers, rows))
    if problems:
        print("\nAnswers other than the expected one (counted in req/s and latency):")
        for line in problems:
            print(f"- {line}")
    if args.show_queries:
        for db in databases:
            for r in reports[db]["results"]:
                if r["sql"]:
                    print(f"\n{DATABASES[db]}, {r['case']}: {len(r['sql'])} queries")
                    for sql in r["sql"]:
                        print(f"    {sql[:160]}")
    print()
    versions = {DATABASES[db].split()[0].lower(): reports[db]["version"] for db in databases}
    for line in machine_lines(versions):
        print(f"- {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="",
                        help=f"comma-separated, from {', '.join(DATABASES)} (default: all)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed in-process requests per case")
    parser.add_argument("--http", action="store_true", help="also post through runserver")
    parser.add_argument("--http-requests", type=int, default=2000,
                        help="requests per case over HTTP")
    parser.add_argument("--concurrency", type=int, default=4, help="HTTP client threads")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds after which a case stops sending")
    parser.add_argument("--show-queries", action="store_true",
                        help="print the SQL of one request per case")
    # Internal: how the script runs itself in child processes.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pg-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
    elif args.child:
        child(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
