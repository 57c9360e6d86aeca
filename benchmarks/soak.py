"""Soak: thousands of tasks through the real Pub/Sub emulator and gunicorn on PostgreSQL,
with planned failures, duplicate publishes and a worker killed mid-run. Nothing may be lost
and nothing may run twice.

Run from the repository root (about three minutes on two cores):

    .venv/bin/python -m benchmarks.soak                       # 5,000 tasks
    .venv/bin/python -m benchmarks.soak --tasks 500 --time-limit 300

What it does, all on 127.0.0.1, and stops by itself (``--time-limit``, default 900 s):

1. Starts a throwaway PostgreSQL (tests/infra/postgres.py), the official Pub/Sub emulator
   (tests/infra/pubsub.py), migrates, and creates the task's topic and a push subscription
   to gunicorn with the route's retry policy (1-5 s backoff, 10 s ack deadline).
2. Starts gunicorn (``--workers``, gthread with ``--threads`` each, keep-alive on: under
   *sync* workers the emulator's pushes to one worker were seen arriving 2 s apart).
   The site is benchmarks/soak_site (its own settings, registry and task).
3. Enqueues ``--tasks`` runs of ``soak_step(n, fail_first)`` with ``enqueue_many`` in chunks;
   ``--fail-share`` of them (20%) raise on their first attempt; after each chunk it publishes
   ``--duplicate-share`` of that chunk's messages a second time (same task id, a new Pub/Sub
   message), so duplicates race their originals.
4. When ``--kill-at`` of the tasks are done, it waits for a worker to be inside a task and
   SIGKILLs that worker (gunicorn's arbiter starts a new one).
5. Waits until every run is SUCCESSFUL and every published message has been acknowledged,
   then checks: every task SUCCESSFUL exactly once (one run, one 'done' side effect), the
   attempts add up, lost = 0, double-run = 0. Exit status 1 if any check fails.

The task writes its side effects to a table of its own (soak_effect: a 'start' row per
attempt that reached it, then 'raise' or 'done'), so a double run is counted from what the
task did, not only from the run rows.
"""

import argparse
import os
import random
import signal
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Gunicorn, machine_lines, start_postgres, table  # noqa: E402
from tests.infra.pubsub import EmulatorStartError, PubSubEmulator  # noqa: E402

SETTINGS = "benchmarks.soak_site.settings"
CHUNK = 500  # tasks per enqueue_many call
POLL_SECONDS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--fail-share", type=float, default=0.20,
                        help="share of tasks that raise on their first attempt")
    parser.add_argument("--duplicate-share", type=float, default=0.05,
                        help="share of messages published a second time")
    parser.add_argument("--kill-at", type=float, default=0.4,
                        help="SIGKILL a worker when this share of tasks is done")
    parser.add_argument("--kill-after-side-effect", action="store_true",
                        help="kill the worker after a task's side effect, before the task "
                             "returns (shows what at-least-once delivery does then)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=900,
                        help="seconds; the soak gives up (and fails) after this")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep gunicorn's logs (their path is printed)")
    return parser.parse_args(argv)


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


class SoakServer(Gunicorn):
    """gunicorn serving the soak site (benchmarks/_common.py's Gunicorn); its arbiter
    restarts a killed worker. Its access log gives the answers to Pub/Sub's pushes."""

    def __init__(self, workers: int, threads: int, logdir: Path) -> None:
        self.logdir = logdir
        self.access_log = logdir / "access.log"
        args = [
            "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
            "--keep-alive", "5", "--graceful-timeout", "5",
            "--access-logfile", str(self.access_log),
            # status, method and path: the delivery count is read from here
            "--access-logformat", "%(s)s %(m)s %(U)s",
        ]
        if _has_setting("control_socket_disable"):
            # gunicorn 25+: its default control socket is one path for every gunicorn here.
            args.append("--no-control-socket")
        # gunicorn's own log and the site's (warnings and errors) in one file.
        super().__init__("benchmarks.soak_site.wsgi:application", args, dict(os.environ),
                         logdir / "app.log")

    def worker_pids(self) -> list[int]:
        """The arbiter's live children, read from /proc."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid and fields[0] not in ("Z", "X"):
                pids.append(int(stat.parent.name))
        return pids

    def statuses(self) -> Counter:
        """Answers to POST /tasks/pubsub/ so far, by status code (from the access log)."""
        counts: Counter = Counter()
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return counts
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "POST":
                counts[int(parts[0])] += 1
        return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tasks < 1 or not 0 <= args.fail_share <= 1 or not 0 <= args.duplicate_share <= 1:
        sys.exit("--tasks must be at least 1; the shares must be between 0 and 1.")
    try:
        import gunicorn
    except ImportError:
        sys.exit("gunicorn is not installed: run `.cache/tools/bin/uv sync` (dev group).")

    postgres = start_postgres()
    machine = machine_lines({"pubsub": "official emulator (gcloud beta emulators)",
                             "gunicorn": gunicorn.__version__,
                             "command": "python -m benchmarks.soak " + " ".join(
                                 sys.argv[1:] if argv is None else argv)})
    emulator = None
    server = None
    logdir = Path(postgres.root).parent / f"gyrinx-soak-{os.getpid()}"
    logdir.mkdir(exist_ok=True)
    try:
        try:
            emulator = PubSubEmulator.start(project="soak-project")
        except (EmulatorStartError, OSError) as exc:
            sys.exit(f"The Pub/Sub emulator did not start: {exc}")
        os.environ.update(DJANGO_SETTINGS_MODULE=SETTINGS, SOAK_PG_PORT=str(postgres.port),
                          PUBSUB_EMULATOR_HOST=emulator.host,
                          SOAK_WORK_AFTER_EFFECT="1" if args.kill_after_side_effect else "0")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE soak_effect (id bigserial PRIMARY KEY, n integer, "
                           "attempt integer, kind text, pid integer, "
                           "at timestamptz DEFAULT clock_timestamp())")
        server = SoakServer(args.workers, args.threads, logdir)
        subscription = subscribe(emulator, f"http://127.0.0.1:{server.port}/tasks/pubsub/")
        report = soak(args, server, subscription, machine)
    finally:
        if server is not None:
            server.stop()
        if emulator is not None:
            emulator.stop()
        from django.db import connections

        connections.close_all()
        postgres.stop()
        if not args.keep_logs:
            for path in logdir.glob("*"):
                path.unlink()
            logdir.rmdir()
        else:
            print(f"gunicorn logs kept in {logdir}")
    print(report)
    return 0 if "FAILED" not in report.splitlines()[-1] else 1


def subscribe(emulator: PubSubEmulator, endpoint: str) -> str:
    from gyrinx_tasks import clients
    from gyrinx_tasks.registry import get_route

    route = get_route("soak_step")
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    topic = emulator.topic_path(route.topic_name)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={
        "name": emulator.subscription_path(route.subscription_name),
        "topic": topic,
        "push_config": {"push_endpoint": endpoint},
        "ack_deadline_seconds": route.ack_deadline,
        "retry_policy": {"minimum_backoff": timedelta(seconds=route.min_retry_delay),
                         "maximum_backoff": timedelta(seconds=route.max_retry_delay)},
    })
    subscriber.close()
    return topic


def effect_counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, count(*) FROM soak_effect GROUP BY kind")
        return dict(cursor.fetchall())


def kill_a_busy_worker(server: SoakServer, deadline: float,
                       after_effect: bool = False) -> tuple[int, int]:
    """SIGKILL a worker while it is inside a long task; (pid, tasks it had in hand).

    ``after_effect``: while the long task works after its side effect, before it returns.
    """
    from django.db import connection

    from benchmarks.soak_site.tasks import LONG_EVERY, LONG_SECONDS

    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # A long task that started less than a second ago has at least half a second of
            # work left, so the kill lands inside it, before its side effect.
            cursor.execute(
                "SELECT s.pid FROM soak_effect s WHERE s.kind = %s AND s.n %% %s = 0 "
                "AND s.at > clock_timestamp() - %s * interval '1 second' AND NOT EXISTS ("
                "SELECT 1 FROM soak_effect o WHERE o.n = s.n AND o.attempt = s.attempt "
                "AND o.id > s.id) LIMIT 1",
                ["done" if after_effect else "start", LONG_EVERY, LONG_SECONDS - 0.5])
            row = cursor.fetchone()
            if row and row[0] in server.worker_pids():
                os.kill(row[0], signal.SIGKILL)
                # Every attempt in that worker without an outcome: what the kill cut off
                # (the other threads may have been anywhere in a request).
                cursor.execute(
                    "SELECT count(*) FROM soak_effect s WHERE s.kind = 'start' AND s.pid = %s "
                    "AND NOT EXISTS (SELECT 1 FROM soak_effect o WHERE o.n = s.n AND "
                    "o.attempt = s.attempt AND o.kind <> 'start')", [row[0]])
                return row[0], cursor.fetchone()[0]
        time.sleep(0.02)
    return 0, 0


def soak(args: argparse.Namespace, server: SoakServer, topic: str, machine: list[str]) -> str:
    from django.db import connection

    from benchmarks.soak_site.tasks import soak_step
    from gyrinx_tasks import clients
    from gyrinx_tasks.backend import enqueue_many
    from gyrinx_tasks.messages import build_message, encode_message
    from gyrinx_tasks.models import TaskExecution

    rng = random.Random(args.seed)
    publisher = clients.publisher_client()
    fail_first = set(rng.sample(range(args.tasks), round(args.tasks * args.fail_share)))
    start = time.monotonic()
    deadline = start + args.time_limit
    published = duplicates = 0
    killed_pid = in_hand = 0
    kill_after = round(args.tasks * args.kill_at)

    def maybe_kill() -> None:
        nonlocal killed_pid, in_hand
        if not killed_pid and effect_counts().get("done", 0) >= kill_after:
            killed_pid, in_hand = kill_a_busy_worker(server, deadline,
                                                     args.kill_after_side_effect)
            if killed_pid:
                print(f"  SIGKILLed worker {killed_pid} with {in_hand} task(s) in hand "
                      f"at {time.monotonic() - start:.1f} s", flush=True)

    for first in range(0, args.tasks, CHUNK):
        numbers = range(first, min(first + CHUNK, args.tasks))
        results = enqueue_many(soak_step, [((n, n in fail_first), {}) for n in numbers])
        published += len(results)
        # The same message again, as Pub/Sub may deliver it: same task id, new message id.
        again = rng.sample(results, round(len(results) * args.duplicate_share))
        futures = [publisher.publish(topic, encode_message(build_message(
            r.id, "soak_step", r.args, r.kwargs, r.enqueued_at))) for r in again]
        for future in futures:
            future.result(timeout=60)
        published += len(futures)
        duplicates += len(futures)
        maybe_kill()
    enqueued_in = time.monotonic() - start
    print(f"  enqueued {args.tasks} tasks and {duplicates} duplicate messages "
          f"in {enqueued_in:.1f} s", flush=True)

    # Done when every run succeeded and every published message was acknowledged (a 200 in
    # the access log: ran or duplicate); the deadline bounds it either way.
    last_print = 0.0
    while time.monotonic() < deadline:
        maybe_kill()
        successful = TaskExecution.objects.filter(status="SUCCESSFUL").count()
        acked = sum(n for status, n in server.statuses().items() if 200 <= status < 300)
        if successful >= args.tasks and acked >= published and killed_pid:
            break
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"  {time.monotonic() - start:5.0f} s: {successful} successful, "
                  f"{acked}/{published} messages acknowledged", flush=True)
        time.sleep(POLL_SECONDS)
    duration = time.monotonic() - start
    unfinished = TaskExecution.objects.exclude(status="SUCCESSFUL")
    for run in unfinished[:10]:
        print(f"  not successful: task {run.args[0]} {run.status}, attempts {run.attempts}, "
              f"last: {run.timeline[-1] if run.timeline else '-'}", flush=True)
    # Late duplicates would show up as 'done' rows after this; give them a moment.
    time.sleep(3)
    statuses = server.statuses()
    publisher.stop()
    return figures(args, statuses, published, duplicates, killed_pid, in_hand, duration,
                   connection, machine)


def double_run_details(connection, killed_pid: int) -> list[str]:
    """For each task that did its work twice: its side effects and its run's timeline."""
    from gyrinx_tasks.models import TaskExecution

    with connection.cursor() as cursor:
        cursor.execute("SELECT n FROM soak_effect WHERE kind = 'done' GROUP BY n "
                       "HAVING count(*) > 1 ORDER BY n LIMIT 5")
        numbers = [row[0] for row in cursor.fetchall()]
        lines = []
        for n in numbers:
            cursor.execute("SELECT attempt, kind, pid, at FROM soak_effect WHERE n = %s "
                           "ORDER BY id", [n])
            lines.append(f"Task {n} did its work more than once. Its side effects:")
            for attempt, kind, pid, at in cursor.fetchall():
                killed = " (the SIGKILLed worker)" if pid == killed_pid else ""
                lines.append(f"  - attempt {attempt}: {kind} in pid {pid}{killed} at "
                             f"{at.isoformat(timespec='milliseconds')}")
            run = TaskExecution.objects.filter(args__0=n).first()
            if run is not None:
                lines.append("  Its run's timeline:")
                lines += [f"  - {entry.get('at')}: {entry.get('from') or '-'} -> "
                          f"{entry.get('to')} {entry.get('note', '')}" for entry in run.timeline]
            lines.append("")
    return lines


def figures(args, statuses: Counter, published: int, duplicates: int, killed_pid: int,
            in_hand: int, duration: float, connection, machine: list[str]) -> str:
    from django.db.models import Count, Max, Sum

    from gyrinx_tasks.models import TaskExecution

    runs = TaskExecution.objects.all()
    by_status = dict(runs.values_list("status").annotate(c=Count("id")))
    totals = runs.aggregate(total=Sum("attempts"), most=Max("attempts"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM (SELECT n FROM soak_effect WHERE kind = 'done' "
                       "GROUP BY n HAVING count(*) > 1) t")
        double_run = cursor.fetchone()[0]
        cursor.execute("SELECT count(DISTINCT n) FROM soak_effect WHERE kind = 'done'")
        done_tasks = cursor.fetchone()[0]
        # Attempts that reached the task but neither raised nor finished: cut off by the kill.
        cursor.execute(
            "SELECT count(*) FROM soak_effect s WHERE kind = 'start' AND NOT EXISTS ("
            "SELECT 1 FROM soak_effect o WHERE o.n = s.n AND o.attempt = s.attempt "
            "AND o.kind <> 'start')")
        cut_off = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM soak_effect WHERE kind = 'start'")
        starts = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM soak_effect WHERE kind = 'raise'")
        raises = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM soak_effect WHERE kind = 'done'")
        dones = cursor.fetchone()[0]
    # Per task: attempts that reached it, and its planned failures.
    with connection.cursor() as cursor:
        cursor.execute("SELECT n, count(*) FILTER (WHERE kind = 'start'), "
                       "count(*) FILTER (WHERE kind = 'raise') FROM soak_effect GROUP BY n")
        effects = {n: (start_rows, raise_rows) for n, start_rows, raise_rows in cursor}
    errors = mismatched = 0
    for run_args, run_attempts, run_errors in runs.values_list("args", "attempts", "errors"):
        start_rows, raise_rows = effects.get(run_args[0], (0, 0))
        errors += len(run_errors)
        # Each recorded error is a raise the task did; each attempt reached the task unless
        # the kill cut it off between being marked RUNNING and the task's first line.
        if len(run_errors) != raise_rows or run_attempts != start_rows:
            mismatched += 1
    successful_ids = runs.filter(status="SUCCESSFUL").values("task_id").annotate(
        c=Count("id"))
    successful_once = sum(1 for row in successful_ids if row["c"] == 1)
    lost = args.tasks - min(done_tasks, successful_once)
    deliveries = sum(statuses.values())
    attempts = totals["total"] or 0
    before_task = attempts - starts
    planned = round(args.tasks * args.fail_share)

    checks = {
        "every task SUCCESSFUL exactly once (one run each)": successful_once == args.tasks
        and by_status.get("SUCCESSFUL", 0) == args.tasks and runs.count() == args.tasks,
        "one 'done' side effect per task": done_tasks == args.tasks and dones == args.tasks,
        # A planned failure is skipped only if the kill cut that first attempt off.
        "recorded errors = the task's raises (the planned failures)": raises == errors
        and planned - (cut_off + before_task) <= raises <= planned,
        "attempts add up: sum = tasks + raises + attempts cut off by the kill":
            attempts == args.tasks + raises + cut_off + before_task
            and 0 <= before_task <= args.threads and cut_off <= in_hand
            and mismatched <= before_task,
        "a worker was killed mid-task": bool(killed_pid) and (
            cut_off + before_task >= 1 or args.kill_after_side_effect),
        "lost = 0": lost == 0,
        "double-run = 0": double_run == 0,
    }
    rows = [
        ["tasks", args.tasks],
        ["failing on first attempt", round(args.tasks * args.fail_share)],
        ["messages published (incl. duplicates)", f"{published} ({duplicates} duplicates)"],
        ["gunicorn", f"{args.workers} gthread workers x {args.threads} threads"],
        ["duration (first enqueue to last ack)", f"{duration:.1f} s"],
        ["push requests answered", f"{deliveries} " + ", ".join(
            f"{status}: {n}" for status, n in sorted(statuses.items()))],
        # Requests cut off by the kill got no answer, so they are not in the access log.
        ["redeliveries (answered - published)", deliveries - published],
        ["worker SIGKILLed mid-run", f"pid {killed_pid}, {in_hand} task(s) in hand"],
        ["attempts cut off by the kill", f"{cut_off} in the task, {before_task} before it"],
        ["max attempts seen", totals["most"]],
        ["attempts (sum over runs)", attempts],
        ["runs by status", ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))],
        ["lost", lost],
        ["double-run", double_run],
    ]
    lines = [table(["figure", "value"], rows), ""]
    lines += double_run_details(connection, killed_pid)
    lines += [f"- {'ok' if ok else 'FAILED'}: {name}" for name, ok in checks.items()]
    lines += ["", *machine]
    verdict = "all checks passed" if all(checks.values()) else "soak FAILED"
    lines += ["", verdict]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
