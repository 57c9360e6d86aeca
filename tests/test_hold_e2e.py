"""A kill switch in hold mode, end to end through the real Pub/Sub emulator and a live server.

enqueue() publishes to the emulator; its push subscription POSTs to the live server, which
answers 429 while the switch holds, so the emulator keeps each message and redelivers it with
the subscription's backoff (1-2 s here). Switched on from the admin, every message runs once.

Two tasks with two messages each, on their own subscriptions: the emulator stops redelivering
a subscription's messages after a burst of refusals (five messages refused three times each
were not redelivered in 12 minutes; see docs/admin.md, "Kill switches"), which real Pub/Sub
does not do. The test switches on as soon as every message has been redelivered once.
"""

import logging
import time
from collections import Counter

import pytest
from django.urls import reverse

from gyrinx_tasks.models import KillSwitch, State, SwitchMode, TaskExecution
from tests import tasks
from tests.helpers import wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.django_db(transaction=True)]


def held_deliveries(caplog) -> Counter:
    """How many times the push endpoint held each run (result id -> count)."""
    return Counter(record.args[1] for record in caplog.records
                   if record.name == "gyrinx_tasks" and record.msg.startswith("Held %s"))


def switch(client, name, state, **data):
    response = client.post(
        reverse(f"admin:gyrinx_tasks_killswitch_turn_{state}", args=[name]), data)
    assert response.status_code == 302


def test_held_messages_are_kept_by_pubsub_and_all_run_once_switched_on(
        route_through_emulator, admin_client, caplog):
    caplog.set_level(logging.INFO, logger="gyrinx_tasks")
    route_through_emulator("echo", min_backoff=1, max_backoff=2)
    route_through_emulator("add", min_backoff=1, max_backoff=2)
    tasks.CALLS.clear()
    for name in ("echo", "add"):
        switch(admin_client, name, "off", reason="e2e: hold", mode=SwitchMode.HOLD)
    assert set(KillSwitch.objects.values_list("mode", flat=True)) == {SwitchMode.HOLD}

    echoes = [tasks.echo.enqueue(key) for key in ("first", "second")]
    sums = [tasks.add.enqueue(20, 22), tasks.add.enqueue(1, 2)]
    results = echoes + sums

    # Each message is delivered, held, and delivered again: Pub/Sub kept it after the 429.
    deadline = time.monotonic() + 60
    while not all(held_deliveries(caplog)[result.id] >= 2 for result in results):
        assert time.monotonic() < deadline, f"not redelivered: {held_deliveries(caplog)}"
        time.sleep(0.1)
    assert tasks.CALLS == []  # nothing ran
    runs = TaskExecution.objects.filter(result_id__in=[result.id for result in results])
    assert sorted(runs.values_list("status", flat=True)) == [State.READY] * len(results)
    assert not TaskExecution.objects.filter(status=State.SKIPPED).exists()
    for run in runs:  # held redeliveries leave no trace on the run
        assert [step["to"] for step in run.timeline] == ["READY"]
        assert run.attempts == 0

    for name in ("echo", "add"):
        switch(admin_client, name, "on")

    # Generous: after a run of 429s the emulator may pause pushes to one subscription for far
    # longer than its retry policy's backoff (seen once in CI under load: echo's messages ran
    # at once, add's came later than 60 s). Passing takes seconds; only a failure waits.
    done = {result.id: wait_for(result.id, lambda e: e.status == State.SUCCESSFUL, timeout=180)
            for result in results}
    time.sleep(4)  # a second run of any message would arrive within this (backoff 1-2 s)
    assert sorted(args for args, _kwargs in tasks.CALLS) == [("first",), ("second",)]
    assert [done[result.id].return_value for result in sums] == [42, 3]
    for run in TaskExecution.objects.all():
        assert (run.status, run.attempts) == (State.SUCCESSFUL, 1)
        assert [step["to"] for step in run.timeline] == ["READY", "RUNNING", "SUCCESSFUL"]
    assert TaskExecution.objects.count() == len(results)
