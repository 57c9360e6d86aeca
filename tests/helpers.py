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
