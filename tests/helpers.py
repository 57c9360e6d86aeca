"""Small helpers shared by the tests."""

import base64
import json
from concurrent.futures import Future
from typing import Any

from django.tasks import task_backends


def envelope(payload: Any, message_id: str = "m-1", delivery_attempt: int | None = None,
             attributes: dict | None = None, raw_data: str | None = None) -> bytes:
    """A Pub/Sub push request body carrying ``payload`` as the message data."""
    data = raw_data if raw_data is not None else base64.b64encode(
        json.dumps(payload).encode()).decode()
    body: dict[str, Any] = {
        "message": {"data": data, "messageId": message_id, "attributes": attributes or {},
                    "publishTime": "2026-11-23T10:00:00Z"},
        "subscription": "projects/test-project/subscriptions/x",
    }
    if delivery_attempt is not None:
        body["deliveryAttempt"] = delivery_attempt
    return json.dumps(body).encode()


class FakePublisher:
    """Stands in for pubsub_v1.PublisherClient where no emulator is needed."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.published: list[tuple[str, dict, dict]] = []

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future:
        future: Future = Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            self.published.append((topic, json.loads(data), attrs))
            future.set_result(f"msg-{len(self.published)}")
        return future


def use_publisher(publisher: Any, alias: str = "default") -> None:
    task_backends[alias].__dict__["publisher"] = publisher


def push(client: Any, body: bytes, **headers: str) -> Any:
    """POST a push body to the endpoint, as Pub/Sub does."""
    return client.post("/tasks/pubsub/", body, content_type="application/json",
                       headers=headers)


def make_run(task_name: str = "add", status: str = "READY", trigger: str = "enqueue",
             **fields: Any) -> Any:
    """A TaskExecution of a tests.tasks task in ``status``, set directly (the transitions have
    their own tests)."""
    from gyrinx_tasks.models import State, TaskExecution

    run = TaskExecution(task_name=task_name, task_path=f"tests.tasks.{task_name}",
                        trigger=trigger, **fields)
    run.task_id = run.task_id or run.result_id
    run._log("", State.READY, "enqueued")
    run.save()
    if status != State.READY:
        TaskExecution.objects.filter(pk=run.pk).update(status=status)
        run.refresh_from_db()
    return run


def staff_user(username: str, *codenames: str) -> Any:
    """A staff user with exactly the given permissions (codenames of any app)."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def task_message(task_id: str = "t-1", task_name: str = "echo", args: Any = ("hi",),
                 **fields: Any) -> dict:
    """A task message (the data of a push) for a tests.tasks task; ``fields`` add to it or
    replace its kwargs."""
    return {"task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": {},
            **fields}


def stuck_echo_run(attempts: int = 1, **fields: Any) -> Any:
    """An echo run left RUNNING by a worker that stopped, its ack deadline long past."""
    from datetime import timedelta

    from django.utils import timezone

    from gyrinx_tasks.models import State, TaskExecution

    return TaskExecution.objects.create(
        task_name="echo", task_path="tests.tasks.echo", args=["hi"], status=State.RUNNING,
        attempts=attempts, last_attempted_at=timezone.now() - timedelta(hours=1), **fields)


def package_log_lines(caplog: Any) -> list[str]:
    """The log lines of the package's own logger (Django's django.tasks logger also logs each
    task_finished)."""
    return [line.getMessage() for line in caplog.records if line.name == "gyrinx_tasks"]


def note_elsewhere(row: Any) -> None:
    """Another attempt notes something in the run's timeline."""
    row.note("written by another attempt")
    row.save(update_fields=["timeline", "timeline_omitted"])


def change_after_first_read(monkeypatch: Any, change: Any) -> list:
    """Let ``change(row)`` write to the run just after a delivery first reads it, as another
    writer would between that read and the delivery's write. Returns the reads made."""
    from gyrinx_tasks import claim
    from gyrinx_tasks.models import TaskExecution

    real_select, reads = claim.select_run, []

    def select_then_change(using, column, value, lock, switch_for=None, task_name=None):
        found = real_select(using, column, value, lock, switch_for, task_name)
        if found is not None and not reads:
            change(TaskExecution.objects.get(pk=found.pk))
        reads.append(found)
        return found

    monkeypatch.setattr(claim, "select_run", select_then_change)
    return reads


def on_outcome_write(monkeypatch: Any, action: Any) -> list:
    """Call ``action(run)`` instead of the first write of an attempt's outcome (the only write
    that expects the run RUNNING); ``action`` may write, raise, or return whether it wrote."""
    from gyrinx_tasks.models import State, TaskExecutionQuerySet

    real_write, done = TaskExecutionQuerySet.write_transition, []

    def write(self, run):
        if run.progress_as_read()["status"] == State.RUNNING and not done:
            done.append(run.pk)
            result = action(run)
            if result is not None:
                return bool(result)
        return real_write(self, run)

    monkeypatch.setattr(TaskExecutionQuerySet, "write_transition", write)
    return done


def finished_statuses() -> tuple[list[str], Any]:
    """Collect the status task_finished reports for each run, until disconnected."""
    from django.tasks.signals import task_finished

    seen: list[str] = []

    def finished(sender, task_result, **kwargs):
        seen.append(task_result.status)

    task_finished.connect(finished, weak=False)
    return seen, lambda: task_finished.disconnect(finished)


class RunsReadFromAReplica:
    """A database router sending reads of runs to an alias that does not exist, so that a
    runner query not pinned to the write database fails. Named in DATABASE_ROUTERS as
    ``tests.helpers.RunsReadFromAReplica``."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "replica" if model._meta.model_name == "taskexecution" else None

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return "default"


# --- The admin's run list ------------------------------------------------------------------

CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"


def shown(response: Any) -> list[str]:
    """The short result ids the run list (changelist) shows, in page order."""
    import re

    return re.findall(r'class="field-short_result_id"><a [^>]*>([0-9a-f]{8})</a>',
                      response.content.decode())


# --- Exports --------------------------------------------------------------------------------


def parse_csv(text: str) -> list[dict]:
    """The rows of an exported CSV, as dicts keyed by the header row."""
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def export_form(resource: int = 0, columns: list[str] | None = None) -> dict:
    """The POST of import-export's export form: CSV, one resource, its column checkboxes."""
    from gyrinx_tasks.export import TaskExecutionPayloadResource, TaskExecutionResource, headers

    resource_class = [TaskExecutionResource, TaskExecutionPayloadResource][resource]
    prefix = resource_class.__name__.lower()
    names = columns or headers(include_payload=bool(resource))
    return {"format": "0", "resource": str(resource),
            **{f"{prefix}_{name}": "on" for name in names}}


# --- Threads and live servers ---------------------------------------------------------------

WAIT = 30  # seconds any one thread may take before the test fails instead of hanging


class Calls(list):
    """Stands in for tests.tasks.CALLS, which the echo task appends to: lets a test hold the
    task inside its run (``hold_first``), or act when it runs (``on_call``)."""

    def __init__(self, hold_first: bool = False, on_call: Any = None) -> None:
        import threading

        super().__init__()
        self.running = threading.Event()
        self.release = threading.Event()
        self.hold_first = hold_first
        self.on_call = on_call

    def append(self, item: Any) -> None:
        super().append(item)
        first = len(self) == 1
        self.running.set()
        if self.on_call is not None:
            self.on_call(item)
        if self.hold_first and first:
            assert self.release.wait(WAIT), "the test never released the task"


def wait_for(result_id: str, done: Any, timeout: float = 60.0) -> Any:
    """The run of ``result_id`` once ``done(run)`` holds; fails after ``timeout`` seconds."""
    import time

    from gyrinx_tasks.models import TaskExecution

    deadline = time.monotonic() + timeout
    execution = None
    while time.monotonic() < deadline:
        execution = TaskExecution.objects.filter(result_id=result_id).first()
        if execution is not None and done(execution):
            return execution
        time.sleep(0.2)
    raise AssertionError(f"run {result_id} did not finish in {timeout}s: {execution!r}")


# --- The sample site (sample_site/), run in subprocesses ------------------------------------


def manage(env: dict, *args: str, check: bool = True) -> Any:
    """Run the repository's manage.py with ``env`` (see the sample_site_env fixture)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def shell(env: dict, code: str) -> str:
    """What ``code`` prints, run by ``manage.py shell`` with ``env``."""
    import textwrap

    return manage(env, "shell", "--no-imports", "-c", textwrap.dedent(code)).stdout


def in_thread(target: Any, *args: Any) -> tuple[Any, list]:
    """Run ``target`` in a thread with its own database connection (closed at the end);
    returns (thread, results): the return value, or the exception it raised."""
    import threading

    from django.db import connection

    results: list = []

    def run() -> None:
        try:
            results.append(target(*args))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertions
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def postgresql_plan(sql: str, params: Any = None) -> list[str]:
    """PostgreSQL's plan for ``sql`` with sequential scans priced out, one line per item.

    The runs' table is analysed first, so the planner prices the indexes from this test's
    own rows. Without it, it prices them from whatever an earlier test's rows or a background
    autovacuum last left in the catalogue, and on a few dozen rows two indexes can cost the
    same: which one a plan names would then depend on the order the tests ran in.
    """
    from django.db import connection

    from gyrinx_tasks.models import TaskExecution

    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(TaskExecution._meta.db_table)}")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return [row[0] for row in cursor.fetchall()]
