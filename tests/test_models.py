"""Runs and kill switches (gyrinx_tasks/models.py): transitions, timeline, errors, names."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from gyrinx_tasks.models import (
    HISTORY_HEAD,
    HISTORY_TAIL,
    PUBLISH_UNCONFIRMED,
    KillSwitch,
    State,
    SwitchMode,
    TaskExecution,
)

pytestmark = [pytest.mark.django_db, pytest.mark.clock]


def test_happy_path_builds_a_timeline():
    execution = TaskExecution.objects.create(task_name="add")
    execution.start("rev-1/i-1", delivery_attempt=None)
    execution.fail("builtins.ValueError", "Traceback ...")
    execution.start("rev-1/i-2", delivery_attempt=2)
    execution.succeed({"ok": True})
    execution.save()
    execution.refresh_from_db()

    assert execution.status == State.SUCCESSFUL
    assert execution.attempts == 2
    assert execution.worker_ids == ["rev-1/i-1", "rev-1/i-2"]
    assert execution.errors[0]["attempt"] == 1
    assert [(s["from"], s["to"]) for s in execution.timeline] == [
        ("READY", "RUNNING"), ("RUNNING", "FAILED"), ("FAILED", "RUNNING"),
        ("RUNNING", "SUCCESSFUL")]
    assert execution.django_status == "SUCCESSFUL"


@pytest.mark.parametrize("state", [State.SUCCESSFUL, State.SKIPPED, State.REJECTED])
def test_settled_runs_cannot_start_again(state):
    execution = TaskExecution(task_name="add", status=state)
    with pytest.raises(TransitionNotAllowed):
        execution.start("w")


def test_only_running_runs_can_succeed_or_fail():
    execution = TaskExecution(task_name="add")
    with pytest.raises(TransitionNotAllowed):
        execution.succeed(1)
    with pytest.raises(TransitionNotAllowed):
        execution.fail("x.Y", "tb")


def test_delivery_attempt_from_pubsub_wins_over_our_count():
    execution = TaskExecution(task_name="add")
    execution.start("w", delivery_attempt=5)
    assert execution.attempts == 5


def test_skipped_and_rejected_map_to_djangos_failed():
    assert TaskExecution(status=State.SKIPPED).django_status == "FAILED"
    assert TaskExecution(status=State.REJECTED).django_status == "FAILED"


def test_worker_id_uses_cloud_run_revision_and_instance(monkeypatch):
    from gyrinx_tasks.workers import current_worker_id

    monkeypatch.setenv("K_REVISION", "svc-00042-abc")
    monkeypatch.setenv("CLOUD_RUN_INSTANCE_ID", "0069c7a9")
    assert current_worker_id() == "svc-00042-abc/0069c7a9"
    monkeypatch.delenv("K_REVISION")
    monkeypatch.delenv("CLOUD_RUN_INSTANCE_ID")
    assert ":" in current_worker_id()  # host:pid off Cloud Run


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


# TaskExecution._error_entry mutants 7, 8: each error says when it happened (the run page
# shows it beside the attempt).
def test_each_error_says_when_it_happened():
    execution = TaskExecution.objects.create(task_name="add")
    execution.start("rev-1/i-1")
    before = timezone.now()
    execution.fail("builtins.ValueError", "Traceback: boom")
    execution.save()
    execution.refresh_from_db()

    [error] = execution.errors
    assert error["exception_class_path"] == "builtins.ValueError"
    assert error["attempt"] == 1
    assert before <= datetime.fromisoformat(error["at"]) <= before + timedelta(minutes=1)


# TaskExecution.publish_unconfirmed mutants 2, 6: a publish that timed out keeps its traceback
# and says so in the timeline, and the run stays READY for the delivery that may still come.
def test_an_unconfirmed_publish_keeps_its_traceback_and_says_why_in_the_timeline():
    execution = TaskExecution.objects.create(task_name="add")

    execution.publish_unconfirmed("concurrent.futures.TimeoutError", "Traceback: too slow")
    execution.save()
    execution.refresh_from_db()

    assert execution.status == State.READY
    assert execution.status_detail == PUBLISH_UNCONFIRMED
    [error] = execution.errors
    assert (error["exception_class_path"], error["traceback"]) == (
        "concurrent.futures.TimeoutError", "Traceback: too slow")
    [entry] = execution.timeline
    assert (entry["from"], entry["to"]) == (State.READY, State.READY)
    assert entry["note"] == ("publish not confirmed (concurrent.futures.TimeoutError); "
                             "waiting for a delivery")


# TaskExecution.__str__ mutants 1, 2 and KillSwitch.__str__ mutants 1, 3, 4: these strings
# are what the admin's history and delete confirmations name the objects by.
def test_runs_and_switches_are_named_readably():
    assert str(TaskExecution(task_name="add", result_id="r-1")) == "add [READY] r-1"
    assert str(TaskExecution(result_id="r-2")) == "? [READY] r-2"
    assert str(KillSwitch(task_name="add", enabled=True)) == "add: on"
    assert str(KillSwitch(task_name="add", enabled=False)) == "add: off"


# capped mutant 6 (through the timeline): one entry over the cap drops one entry and counts it.
def test_one_entry_over_the_cap_drops_and_counts_one():
    execution = TaskExecution.objects.create(task_name="add")
    for n in range(HISTORY_HEAD + HISTORY_TAIL + 1):
        execution.note(f"note {n}")

    assert len(execution.timeline) == HISTORY_HEAD + HISTORY_TAIL
    assert execution.timeline_omitted == 1
    notes = [entry["note"] for entry in execution.timeline]
    assert notes[HISTORY_HEAD - 1:HISTORY_HEAD + 1] == [
        f"note {HISTORY_HEAD - 1}", f"note {HISTORY_HEAD + 1}"]


# TaskExecution._log mutants 1, 3, 4: each timeline entry says when; only entries given a note
# carry one.
def test_timeline_entries_say_when_and_carry_only_the_notes_given():
    execution = TaskExecution.objects.create(task_name="add")
    before = timezone.now()
    execution.start("rev-1/i-1")
    execution.succeed(3)

    started, succeeded = execution.timeline
    assert started["note"] == "attempt 1 on rev-1/i-1"
    assert "note" not in succeeded
    for entry in (started, succeeded):
        assert before <= datetime.fromisoformat(entry["at"]) <= before + timedelta(minutes=1)


# KillSwitch.off_mode mutant 15: "" (not None) when the task is not switched off.
def test_off_mode_is_empty_text_unless_switched_off():
    KillSwitch.objects.create(task_name="on", enabled=True, mode=SwitchMode.HOLD)
    KillSwitch.objects.create(task_name="held", enabled=False, mode=SwitchMode.HOLD)

    assert KillSwitch.off_mode("never-switched") == ""
    assert KillSwitch.off_mode("on") == ""
    assert KillSwitch.off_mode("held") == SwitchMode.HOLD
