"""The push endpoint under hostile input: every body gets its defined answer, never a 500."""

import base64
import json

import pytest

from gyrinx_tasks.models import State, TaskExecution
from tests.helpers import envelope

pytestmark = pytest.mark.django_db
URL = "/tasks/pubsub/"


@pytest.fixture(autouse=True)
def no_oidc(settings):
    settings.TASKS_VERIFY_OIDC = False


def post(client, body: bytes):
    return client.post(URL, body, content_type="application/json")


def wrap(data: bytes, message_id="m-1", **message) -> bytes:
    return json.dumps({"message": {"data": base64.b64encode(data).decode(),
                                   "messageId": message_id, **message}}).encode()


CASES = {
    "invalid utf-8 body": b'{"message": {"data": "\xff\xfe", "messageId": "m-\xc3"}}',
    "nul byte in body": b'{"message": {"data": "", "messageId": "m-\x00"}}',
    "nul in task id": envelope({"task_id": "t\x00", "task_name": "add", "args": [1, 2]}),
    "nul in task name": envelope({"task_id": "t-1", "task_name": "a\x00dd", "args": [1, 2]}),
    "nul in args": envelope({"task_id": "t-1", "task_name": "echo", "args": ["a\x00"]}),
    "nul in message id": envelope({"task_id": "t-1", "task_name": "add"}, message_id="m\x00"),
    "nul in attributes": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                  attributes={"k\x00": "v\x00"}),
    "lone surrogate in args": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": ["\\ud800"]}'),
    "invalid utf-8 in data": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": ["\xff"]}'),
    "deep json envelope": b"[" * 100_000 + b"]" * 100_000,
    "deep json payload": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": '
                              + b"[" * 5000 + b"]" * 5000 + b"}"),
    "NaN in args": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": [NaN]}'),
    "huge delivery attempt": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                      delivery_attempt=10**30),
    "long message id": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                message_id="m" * 500),
    "long task name": envelope({"task_id": "t-1", "task_name": "a" * 500}),
    "impossible enqueued_at": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2],
                                        "enqueued_at": "2026-13-45T10:00:00+00:00"}),
    "year one enqueued_at": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2],
                                      "enqueued_at": "0001-01-01T00:00:00+05:00"}),
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_hostile_body_is_acknowledged_and_recorded(client, body):
    response = post(client, body)

    assert response.status_code == 202, response.content[:500]
    assert response["Content-Type"] == "application/json"
    assert response.json()["outcome"] == "rejected"
    execution = TaskExecution.objects.get()
    assert execution.status == State.REJECTED
    assert "\x00" not in execution.raw_message
