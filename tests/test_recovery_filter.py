"""The run list's "Not yet recovered" filter lists what staff must still deal with: runs that
failed for good, or were rejected, with no successful retry. A failed attempt that Pub/Sub
delivers again ("Failing, will retry") is not there yet: it may still succeed on its own, and
the status filter's "Failing, will retry" lists it. Once it gives up (or is settled by a
retry, or given up as lost by staff), it is.
"""

import pytest
from django.db import connection
from django.urls import reverse

from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import make_run, postgresql_plan

pytestmark = pytest.mark.django_db

RUNS = "admin:gyrinx_tasks_taskexecution_changelist"


def listed(client, **query):
    return {row.pk for row in client.get(reverse(RUNS), query).context["cl"].result_list}


def failing(task="flaky", **fields):
    """A FAILED attempt Pub/Sub redelivers: delivered, attempts left, not given up."""
    return make_run(task, State.FAILED, **{"attempts": 1, "message_id": "m-1", **fields})


def test_failing_runs_that_will_be_retried_are_not_yet_counted_as_unrecovered(admin_client):
    will_retry = failing()
    gave_up = failing(gave_up=True)
    never_delivered = make_run("add", State.FAILED)  # the publish failed: final
    rejected = make_run("add", State.REJECTED)
    recovered = make_run("add", State.FAILED)
    make_run("add", State.SUCCESSFUL, trigger=Trigger.RETRY, retry_of=recovered)

    pending = listed(admin_client, recovery="pending")
    assert pending == {gave_up.pk, never_delivered.pk, rejected.pk}
    assert will_retry.pk in listed(admin_client, status="WILL_RETRY")
    # The same runs the status filter calls failed (for good) and rejected, less the recovered.
    final = listed(admin_client, status="FAILED") | listed(admin_client, status="REJECTED")
    assert pending == final - {recovered.pk}

    # Once it gives up, it is staff's to deal with.
    TaskExecution.objects.filter(pk=will_retry.pk).update(gave_up=True)
    assert will_retry.pk in listed(admin_client, recovery="pending")


def test_the_filter_walks_its_partial_index_which_leaves_out_failing_runs():
    """The condition of gyrinx_exec_unrecovered is the filter's own (models.NEEDS_RECOVERY_Q),
    so on PostgreSQL the page is read in order from that index, which holds no run failing
    with a retry to come. (SQLite's planner walks the created_at index instead.)"""
    for i in range(300):
        failing(message_id=f"m-{i}")
    rejected = make_run("add", State.REJECTED)
    page = TaskExecution.objects.not_recovered().order_by("-created_at", "-id")[:50]
    assert [run.pk for run in page] == [rejected.pk]
    if connection.vendor != "postgresql":
        return
    sql, params = page.query.sql_with_params()
    lines = postgresql_plan(sql, params)
    plan = "\n".join(lines)
    [scan] = [i for i, line in enumerate(lines) if "using gyrinx_exec_unrecovered" in line]
    # Nothing left to check on each row: the index's condition is the query's.
    assert scan + 1 == len(lines) or "Filter:" not in lines[scan + 1], plan
