import pytest
from django_fsm import TransitionNotAllowed

from gyrinx_tasks.models import State, TaskExecution

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
