"""Concurrency proven with real HTTP requests to a live server (issue 9, item 3).

The live server answers each request in its own thread with its own database connection, as
gunicorn's threads would. Meant for PostgreSQL (GYRINX_TEST_DB=postgres); SQLite passes too.
"""

import json
import threading
import urllib.error
import urllib.request

import pytest
from django.utils import timezone

from gyrinx_tasks.messages import RECORDED_ATTRIBUTE
from gyrinx_tasks.models import State, TaskExecution
from tests import tasks
from tests.helpers import WAIT, Calls, envelope

URL = "/tasks/pubsub/"
ROUNDS = 5

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_oidc")]


@pytest.fixture
def held(monkeypatch):
    """The echo task, held inside its first run until the test releases it."""
    calls = Calls(hold_first=True)
    monkeypatch.setattr(tasks, "CALLS", calls)
    return calls


def post(base_url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base_url}{URL}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def echo_body(task_id: str, message_id: str, recorded: bool) -> bytes:
    message = {"task_id": task_id, "task_name": "echo", "args": [task_id], "kwargs": {},
               "enqueued_at": timezone.now().isoformat()}
    return envelope(message, message_id=message_id,
                    attributes={RECORDED_ATTRIBUTE: "1"} if recorded else {})


def start_posting(base_url: str, body: bytes, answers: list, barrier=None,
                  answered=None) -> threading.Thread:
    def send():
        if barrier is not None:
            barrier.wait(WAIT)
        answers.append(post(base_url, body))
        if answered is not None:
            answered.set()

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize("enqueued", [True, False], ids=["enqueued-row", "no-row-yet"])
def test_two_deliveries_at_the_same_moment_run_the_task_once(live_server, monkeypatch,
                                                             enqueued):
    for round_ in range(ROUNDS):
        calls = Calls(hold_first=True)
        monkeypatch.setattr(tasks, "CALLS", calls)
        task_id = f"t-same-{round_}"
        if enqueued:  # as our backend leaves it: the row first, then the message
            TaskExecution.objects.create(result_id=task_id, task_id=task_id,
                                         task_name="echo", task_path="tests.tasks.echo",
                                         args=[task_id])
        body = echo_body(task_id, f"m-same-{round_}", recorded=enqueued)
        barrier, answers, answered = threading.Barrier(2), [], threading.Event()
        threads = [start_posting(live_server.url, body, answers, barrier, answered)
                   for _ in range(2)]

        # One delivery runs (and is held in the task); the other is answered meanwhile.
        assert calls.running.wait(WAIT)
        assert answered.wait(WAIT), "no delivery was answered while the task ran"
        busy_while_running = list(answers)
        calls.release.set()
        for thread in threads:
            thread.join(WAIT)

        assert [(status, body["outcome"]) for status, body in busy_while_running] == [
            (429, "busy")]
        assert sorted(status for status, _ in answers) == [200, 429]
        assert len(calls) == 1, f"round {round_}: the task ran {len(calls)} times"
        run = TaskExecution.objects.get(task_id=task_id)
        assert (run.status, run.attempts) == (State.SUCCESSFUL, 1)


def test_a_duplicate_while_the_first_still_runs_is_answered_busy(live_server, held):
    body = echo_body("t-dup", "m-dup", recorded=False)
    first: list = []
    thread = start_posting(live_server.url, body, first)
    assert held.running.wait(WAIT)

    duplicate = post(live_server.url, body)

    assert (duplicate[0], duplicate[1]["outcome"]) == (429, "busy")
    assert TaskExecution.objects.get(task_id="t-dup").status == State.RUNNING
    held.release.set()
    thread.join(WAIT)
    assert [(status, answer["outcome"]) for status, answer in first] == [(200, "ran")]
    late = post(live_server.url, body)
    assert (late[0], late[1]["outcome"]) == (200, "duplicate")
    assert len(held) == 1
