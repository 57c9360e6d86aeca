"""Runs of other backends, recorded from Django's task signals through conditional transitions.

gyrinx_tasks/signals.py records ImmediateBackend's (or any other backend's) runs. Each signal
is a transition in models.py on the attempt it reports, so a duplicate, late or out-of-order
signal never overwrites a later state, and no write is a blind save of the run.
"""

import logging

import pytest
from django.db import connection
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.backends.immediate import ImmediateBackend
from django.tasks.base import TaskError
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gyrinx_tasks.models import State, TaskExecution, TaskExecutionQuerySet
from tests import tasks as jobs

pytestmark = pytest.mark.django_db


def result(status=TaskResultStatus.READY, attempts=0, value=None, error=None, rid="r-1"):
    """A TaskResult as ImmediateBackend hands it to the signals at that point of a run."""
    now = timezone.now()
    made = TaskResult(
        task=jobs.immediate_add, id=rid, status=status, enqueued_at=now,
        started_at=now if attempts else None, last_attempted_at=now if attempts else None,
        finished_at=now if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        else None, args=[1, 2], kwargs={}, backend="immediate",
        errors=[TaskError(exception_class_path=error, traceback=f"{error}: boom")]
        if error else [],
        worker_ids=[f"worker-{n}" for n in range(1, attempts + 1)])
    object.__setattr__(made, "_return_value", value)
    return made


def send(signal, task_result):
    signal.send(ImmediateBackend, task_result=task_result)


def state(rid="r-1"):
    run = TaskExecution.objects.get(result_id=rid)
    return run.status, run.attempts, run.return_value, [e["to"] for e in run.timeline]


ENQUEUED = result()
STARTED = result(TaskResultStatus.RUNNING, attempts=1)
SUCCEEDED = result(TaskResultStatus.SUCCESSFUL, attempts=1, value=3)
FAILED = result(TaskResultStatus.FAILED, attempts=1, error="builtins.KeyError")
DONE = (State.SUCCESSFUL, 1, 3, ["READY", "RUNNING", "SUCCESSFUL"])


def test_in_order_the_run_is_recorded_as_before():
    for signal, task_result in ((task_enqueued, ENQUEUED), (task_started, STARTED),
                                (task_finished, SUCCEEDED)):
        send(signal, task_result)
    assert state() == DONE


def test_duplicate_signals_change_nothing(caplog):
    with caplog.at_level(logging.ERROR, logger="gyrinx_tasks"):
        for signal, task_result in ((task_enqueued, ENQUEUED), (task_enqueued, ENQUEUED),
                                    (task_started, STARTED), (task_started, STARTED),
                                    (task_finished, SUCCEEDED), (task_finished, SUCCEEDED)):
            send(signal, task_result)
    assert state() == DONE
    assert TaskExecution.objects.count() == 1
    assert "Could not record" not in caplog.text  # a duplicate insert is not an error


def test_late_signals_never_overwrite_a_later_state():
    for signal, task_result in ((task_enqueued, ENQUEUED), (task_started, STARTED),
                                (task_finished, SUCCEEDED)):
        send(signal, task_result)
    # The same run's earlier signals, delivered late (another thread, a queued receiver).
    send(task_started, STARTED)
    send(task_enqueued, ENQUEUED)
    # And a contradicting finish of the same attempt.
    send(task_finished, FAILED)
    assert state() == DONE


def test_out_of_order_signals_still_end_in_the_final_state():
    # task_finished first (its task_enqueued and task_started come later, or never).
    send(task_finished, SUCCEEDED)
    assert state() == DONE
    send(task_started, STARTED)
    send(task_enqueued, ENQUEUED)
    assert state() == DONE

    # A started with no enqueued before it records the run, then starts it.
    send(task_started, result(TaskResultStatus.RUNNING, attempts=1, rid="r-2"))
    assert state("r-2")[:2] == (State.RUNNING, 1)
    send(task_enqueued, result(rid="r-2"))
    assert state("r-2")[:2] == (State.RUNNING, 1)
    send(task_finished, result(TaskResultStatus.FAILED, attempts=1, error="builtins.KeyError",
                               rid="r-2"))
    run = TaskExecution.objects.get(result_id="r-2")
    assert (run.status, run.will_retry, run.errors[-1]["exception_class_path"]) == (
        State.FAILED, False, "builtins.KeyError")  # another backend's failure is final


def test_a_write_that_loses_a_race_decides_again_on_what_the_row_holds(monkeypatch):
    send(task_enqueued, ENQUEUED)
    real = TaskExecutionQuerySet.write_transition
    calls = []

    def another_writer_first(self, run):
        if not calls:
            # Between the started signal's read and its write, the finish is recorded.
            TaskExecution.objects.filter(result_id="r-1").update(
                status=State.SUCCESSFUL, attempts=1, return_value=3)
        calls.append(run.status)
        return real(self, run)

    monkeypatch.setattr(TaskExecutionQuerySet, "write_transition", another_writer_first)
    send(task_started, STARTED)

    run = TaskExecution.objects.get(result_id="r-1")
    assert (run.status, run.attempts, run.return_value) == (State.SUCCESSFUL, 1, 3)
    assert calls == [State.RUNNING]  # one write tried and lost; on re-reading, none needed


def test_recording_an_immediate_run_makes_only_conditional_updates():
    with CaptureQueriesContext(connection) as captured:
        ran = jobs.immediate_add.enqueue(2, 3)
        failed = jobs.immediate_explode.enqueue()
    updates = [q["sql"] for q in captured.captured_queries
               if q["sql"].lstrip().upper().startswith("UPDATE")
               and "gyrinx_tasks_taskexecution" in q["sql"]]
    assert len(updates) == 4  # started and finished, for each run
    for sql in updates:
        where = sql.upper().split(" WHERE ", 1)[1]
        assert '"STATUS"' in where and '"ATTEMPTS"' in where, sql
    assert state(ran.id)[:3] == (State.SUCCESSFUL, 1, 5)
    assert state(failed.id)[:2] == (State.FAILED, 1)
