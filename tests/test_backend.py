import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from google.api_core.exceptions import PermissionDenied

from gyrinx_tasks.backend import PubSubBackend
from gyrinx_tasks.exceptions import TaskPublishError
from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests import tasks
from tests.helpers import use_publisher

pytestmark = pytest.mark.django_db


def test_what_the_backend_cannot_do_is_refused_at_enqueue(fake_publisher):
    # The capability flags say no to defer, priority and async tasks; Django's validate_task
    # must then refuse them before anything is recorded or published.
    from datetime import timedelta

    from django.tasks import task
    from django.tasks.exceptions import InvalidTask
    from django.utils import timezone

    async def coroutine_task():
        return None

    attempts = [
        lambda: tasks.add.using(run_after=timezone.now() + timedelta(minutes=5)).enqueue(1, 2),
        lambda: tasks.add.using(priority=10).enqueue(1, 2),
        lambda: task(coroutine_task).enqueue(),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidTask):
            attempt()
    assert TaskExecution.objects.count() == 0
    assert fake_publisher.published == []
    assert isinstance(task_backends["default"], PubSubBackend)


def test_enqueue_records_then_publishes_the_seed_message(fake_publisher):
    result = tasks.add.enqueue(2, y=3)

    execution = TaskExecution.objects.get(result_id=result.id)
    assert execution.status == State.READY
    assert execution.trigger == Trigger.ENQUEUE
    assert (execution.args, execution.kwargs) == ([2], {"y": 3})
    assert execution.message_id is None  # not written at enqueue: the delivery records it
    [(topic, message, _attrs)] = fake_publisher.published
    assert topic == "projects/test-project/topics/test--gyrinx.tasks--tests.tasks.add"
    assert set(message) == {"task_id", "task_name", "args", "kwargs", "enqueued_at"}
    assert message["task_id"] == result.id
    assert message["task_name"] == "add"
    assert (message["args"], message["kwargs"]) == ([2], {"y": 3})
    assert result.status == TaskResultStatus.READY


def test_enqueue_sends_task_enqueued_after_publishing(fake_publisher):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result.id, len(fake_publisher.published)))

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 1)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(PubSubBackend, result.id, 1)]


def test_failed_publish_raises_and_leaves_the_run_failed(fake_publisher):
    fake_publisher.error = PermissionDenied("not allowed to publish")

    with pytest.raises(TaskPublishError, match="Could not publish task 'tests.tasks.add'"):
        tasks.add.enqueue(1, 2)

    execution = TaskExecution.objects.get()
    assert execution.status == State.FAILED
    assert execution.errors[0]["exception_class_path"].endswith("PermissionDenied")
    assert "not allowed to publish" in execution.errors[0]["traceback"]
    assert "never delivered" in execution.status_detail
    result = tasks.add.get_result(execution.result_id)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class_path.endswith("PermissionDenied")


def test_unrouted_task_is_invalid(fake_publisher):
    from tests.unrouted_tasks import not_in_registry

    with pytest.raises(InvalidTask, match="not listed in TASKS_REGISTRY"):
        not_in_registry.enqueue()
    assert fake_publisher.published == []
    assert not TaskExecution.objects.exists()


@pytest.mark.parametrize("bad", ["priority", "run_after"])
def test_validate_task_rejects_what_the_backend_cannot_do(bad):
    from datetime import UTC, datetime

    with pytest.raises(InvalidTask):
        if bad == "priority":
            tasks.add.using(priority=5)
        else:
            tasks.add.using(run_after=datetime(2030, 1, 1, tzinfo=UTC))


def test_get_result_reads_the_database(fake_publisher):
    result = tasks.add.enqueue(4, 5)
    TaskExecution.objects.filter(result_id=result.id).update(
        status=State.SUCCESSFUL, return_value=9, attempts=1, worker_ids=["w1"])

    fetched = tasks.add.get_result(result.id)

    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 9
    assert fetched.worker_ids == ["w1"]
    assert fetched.attempts == 1
    result.refresh()
    assert result.return_value == 9


def test_get_result_unknown_id_raises():
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("no-such-id")


def test_publish_on_commit_waits_for_the_transaction(fake_publisher, settings,
                                                     django_capture_on_commit_callbacks):
    settings.TASKS = {
        **settings.TASKS,
        "default": {**settings.TASKS["default"],
                    "OPTIONS": {"project_id": "test-project", "publish_on_commit": True}},
    }
    use_publisher(fake_publisher)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            result = tasks.add.enqueue(1, 2)
            assert fake_publisher.published == []
            assert TaskExecution.objects.get(result_id=result.id).status == State.READY
    assert len(callbacks) == 1
    assert len(fake_publisher.published) == 1


def test_unknown_option_is_a_check_error(settings):
    settings.TASKS = {
        **settings.TASKS,
        "default": {**settings.TASKS["default"], "OPTIONS": {"projectid": "typo"}},
    }
    messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["gyrinx_tasks.E012"]
    assert "projectid" in messages[0].msg


def test_immediate_backend_runs_are_recorded():
    result = tasks.immediate_add.enqueue(2, 2)
    execution = TaskExecution.objects.get(result_id=result.id)
    assert execution.status == State.SUCCESSFUL
    assert execution.return_value == 4
    assert execution.attempts == 1
    assert [e["to"] for e in execution.timeline] == ["READY", "RUNNING", "SUCCESSFUL"]

    failed = tasks.immediate_explode.enqueue()
    execution = TaskExecution.objects.get(result_id=failed.id)
    assert execution.status == State.FAILED
    assert execution.errors[0]["exception_class_path"] == "builtins.KeyError"
