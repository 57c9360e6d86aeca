"""End to end through the real Pub/Sub emulator and a live server.

enqueue() -> PubSubBackend publishes to the emulator -> the emulator's push subscription
POSTs to /tasks/pubsub/ on the live server -> the task runs -> the run is recorded.
"""

import secrets
import time

import pytest
from django.tasks import TaskResultStatus, task_backends

from gyrinx_tasks.models import State, TaskExecution
from tests import tasks
from tests.helpers import wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.django_db(transaction=True)]


def test_enqueued_task_ends_successful_and_readable_with_get_result(route_through_emulator):
    route_through_emulator("add")
    assert task_backends["default"].publisher  # built now, with PUBSUB_EMULATOR_HOST set

    result = tasks.add.enqueue(20, 22)
    execution = wait_for(result.id, lambda e: e.status == State.SUCCESSFUL)

    fetched = tasks.add.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 42
    assert fetched.attempts == 1
    assert execution.message_id  # the emulator's message id, recorded at publish
    result.refresh()
    assert result.return_value == 42


def test_task_that_fails_first_is_redelivered_and_succeeds(route_through_emulator):
    route_through_emulator("flaky", min_backoff=1, max_backoff=2)

    result = tasks.flaky.enqueue("e2e")
    execution = wait_for(result.id, lambda e: e.status == State.SUCCESSFUL, timeout=90)

    assert execution.attempts == 2
    assert len(execution.errors) == 1
    assert execution.errors[0]["exception_class_path"] == "builtins.ValueError"
    assert "first attempt of e2e fails" in execution.errors[0]["traceback"]
    fetched = tasks.flaky.get_result(result.id)
    assert fetched.return_value == {"key": "e2e", "attempt": 2}
    assert [error.exception_class_path for error in fetched.errors] == ["builtins.ValueError"]
    assert [step["to"] for step in execution.timeline] == [
        "READY", "RUNNING", "FAILED", "RUNNING", "SUCCESSFUL"]


def test_malformed_message_is_acknowledged_once_and_kept(route_through_emulator):
    subscription = route_through_emulator("add")

    message_id = subscription.publish(b"this is not json")

    deadline = time.monotonic() + 60
    while not TaskExecution.objects.filter(message_id=message_id).exists():
        assert time.monotonic() < deadline, "the emulator never delivered the message"
        time.sleep(0.2)
    time.sleep(3)  # an unacknowledged push would be redelivered within this time
    execution = TaskExecution.objects.get(message_id=message_id)
    assert execution.status == State.REJECTED
    assert "this is not json" not in execution.raw_message  # data is base64 in the envelope
    assert "not base64-encoded JSON" in execution.status_detail
    assert TaskExecution.objects.count() == 1


# --- A malformed message is acknowledged: the emulator does not deliver it again ---


# Change caught: a malformed message answered with a non-acknowledging status: a plain 400,
# or a 202, which Pub/Sub documents as an ack but the official emulator redelivers. The
# subscription retries after 1 s, so waiting well past that shows whether the emulator
# delivered the message again.
@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_oidc")  # the emulator sends no token
def test_malformed_message_is_delivered_exactly_once(settings, pubsub_emulator, live_server,
                                                     emulator_push):
    from django.core.signals import request_started

    settings.TASKS_ENVIRONMENT = "reg" + secrets.token_hex(4)
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    subscription = emulator_push("add", f"{live_server.url}/tasks/pubsub/", min_backoff=1,
                                 max_backoff=1)
    pushes = []

    def count(sender, environ=None, **kwargs):
        if environ and environ.get("PATH_INFO") == "/tasks/pubsub/":
            pushes.append(time.monotonic())

    request_started.connect(count)
    try:
        message_id = subscription.publish(b"this is not json")
        deadline = time.monotonic() + 60
        while not pushes:
            assert time.monotonic() < deadline, "the emulator never delivered the message"
            time.sleep(0.1)
        time.sleep(6)  # several retry intervals of the 1 s backoff
    finally:
        request_started.disconnect(count)

    assert len(pushes) == 1
    assert TaskExecution.objects.get(message_id=message_id).status == State.REJECTED
