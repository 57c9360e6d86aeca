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
