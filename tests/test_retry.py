"""Retrying runs (gyrinx_tasks.retry): one run or a whole selection, on both backends."""

from concurrent.futures import Future

import pytest
from django.tasks import task_backends
from django.test import override_settings
from google.api_core.exceptions import PermissionDenied

from gyrinx_tasks import TaskRoute
from gyrinx_tasks.conf import tasks_settings
from gyrinx_tasks.models import PUBLISH_UNCONFIRMED, KillSwitch, State, TaskExecution, Trigger
from gyrinx_tasks.retry import (
    RetryLimitExceeded,
    RetryPublishFailed,
    RetryRefused,
    republish_refusal,
    republish_run,
    retry_queryset,
    retry_run,
)
from tests import tasks as sample
from tests.helpers import FakePublisher, finished_statuses, make_run, use_publisher

pytestmark = pytest.mark.django_db

# A registry of tasks on Django's ImmediateBackend (TASKS["immediate"]), for the tests that
# retry through it: TASKS_REGISTRY="tests.test_retry".
tasks = [TaskRoute(sample.immediate_add), TaskRoute(sample.immediate_explode)]
IMMEDIATE_REGISTRY = override_settings(TASKS_REGISTRY="tests.test_retry")


class PickyPublisher(FakePublisher):
    """Fails the publish of any message whose first argument is ``refuse`` ("bad"), with
    ``error``; the rest succeed."""

    def __init__(self, refuse: str = "bad", error: Exception | None = None) -> None:
        super().__init__()
        self.refuse = f'"args":["{refuse}"'.encode()
        self.failure = error or PermissionDenied("not allowed to publish this one")

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future:
        if self.refuse in data:
            future: Future = Future()
            future.set_exception(self.failure)
            return future
        return super().publish(topic, data, **attrs)


# --- One run --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [State.FAILED, State.REJECTED, State.SKIPPED])
def test_retry_run_publishes_a_new_linked_run(fake_publisher, admin_user, status):
    original = make_run("add", status, args=[2], kwargs={"y": 3})
    timeline_before = list(original.timeline)

    new = retry_run(original, admin_user)

    assert new.pk != original.pk
    assert (new.trigger, new.retry_of, new.status) == (Trigger.RETRY, original, State.READY)
    assert (new.args, new.kwargs, new.task_name) == ([2], {"y": 3}, "add")
    assert new.message_id is None  # not written at enqueue: the delivery records it
    assert f"retry of {original.result_id} by admin" in new.timeline[0]["note"]
    [(topic, message, attrs)] = fake_publisher.published
    assert topic.endswith("--tests.tasks.add")
    assert message["task_id"] == new.result_id and message["args"] == [2]
    assert attrs == {"trigger": "retry", "gyrinx_recorded": "1"}
    # The original keeps its history and state, and says it was retried (issue 16).
    original.refresh_from_db()
    assert original.status == status
    assert original.timeline[:-1] == timeline_before
    assert original.timeline[-1]["note"].startswith(f"Retried as run {new.result_id} by admin.")
    assert f"Retried as run {new.result_id} by admin." in original.status_detail
    assert list(original.retries.all()) == [new]


def test_retry_is_recorded_as_retry_when_the_runner_creates_the_row(fake_publisher):
    """The message attribute carries the trigger for the runner's own bookkeeping."""
    from gyrinx_tasks.claim import trigger_of as _trigger

    new = retry_run(make_run("add", State.FAILED, args=[1, 1]))
    [(_topic, _message, attrs)] = fake_publisher.published

    class Delivery:
        attributes = attrs
        is_scheduled = False

    assert _trigger(Delivery()) == Trigger.RETRY == new.trigger


@IMMEDIATE_REGISTRY
def test_retry_run_on_the_immediate_backend_runs_it_as_a_linked_run():
    original = make_run("immediate_add", State.FAILED, args=[4, 5])

    new = retry_run(original)

    assert new.backend == "immediate"
    assert (new.trigger, new.retry_of_id) == (Trigger.RETRY, original.pk)
    assert (new.status, new.return_value) == (State.SUCCESSFUL, 9)
    assert "retry of" in new.timeline[0]["note"]
    original.refresh_from_db()
    assert original.status == State.FAILED


@IMMEDIATE_REGISTRY
def test_retry_run_on_the_immediate_backend_records_a_failure_again():
    original = make_run("immediate_explode", State.FAILED)

    new = retry_run(original)

    assert (new.status, new.retry_of_id) == (State.FAILED, original.pk)
    assert new.errors[0]["exception_class_path"] == "builtins.KeyError"


@pytest.mark.parametrize("status", [State.READY, State.RUNNING, State.SUCCESSFUL])
def test_retry_run_refuses_runs_in_other_states(fake_publisher, status):
    original = make_run("add", status)

    with pytest.raises(RetryRefused, match="only failed, rejected or skipped runs"):
        retry_run(original)

    assert fake_publisher.published == []
    assert TaskExecution.objects.count() == 1


def test_retry_run_refuses_a_task_that_left_the_registry(fake_publisher):
    original = make_run("retired_task", State.FAILED)

    with pytest.raises(RetryRefused, match="'retired_task' is no longer in TASKS_REGISTRY"):
        retry_run(original)

    assert fake_publisher.published == []
    assert TaskExecution.objects.count() == 1


def test_retry_run_refuses_while_the_database_kill_switch_is_off(fake_publisher):
    KillSwitch.objects.create(task_name="add", enabled=False)
    original = make_run("add", State.SKIPPED)

    with pytest.raises(RetryRefused, match="Kill switch for add is off.*Turn it on"):
        retry_run(original)

    assert fake_publisher.published == []
    assert TaskExecution.objects.count() == 1


def test_retry_run_refuses_while_the_environment_kill_switch_is_off(fake_publisher,
                                                                    monkeypatch):
    monkeypatch.setenv("ENABLE_ECHO", "false")
    original = make_run("echo", State.FAILED)

    with pytest.raises(RetryRefused, match="ENABLE_ECHO is off"):
        retry_run(original)

    assert fake_publisher.published == []


def test_retrying_a_run_pubsub_still_redelivers_settles_it(fake_publisher):
    redelivered = make_run("add", State.FAILED, args=[1, 2])  # failed with attempts left
    rejected = make_run("add", State.REJECTED, args=[1, 2])
    assert redelivered.redelivered_by_pubsub and not rejected.redelivered_by_pubsub

    retry_run(redelivered)
    retry_run(rejected)

    redelivered.refresh_from_db()
    rejected.refresh_from_db()
    # Given up, so its next delivery is acknowledged without running the task again.
    assert redelivered.gave_up and redelivered.finished_at is not None
    assert "further deliveries of this run are acknowledged without running it" in (
        redelivered.status_detail)
    assert not rejected.gave_up and "further deliveries" not in rejected.status_detail


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
def test_a_retry_that_settles_its_original_sends_its_task_finished_once(fake_publisher, bulk):
    # Django's contract: task_finished once per run, when it ends. A run failing an attempt
    # that Pub/Sub redelivers has not ended (none was sent); settling it by a retry ends it.
    # A rejected or given-up run ended before, and sent it then.
    redelivered = make_run("add", State.FAILED, args=[1, 2], attempts=1, message_id="m-1")
    rejected = make_run("add", State.REJECTED, args=[1, 2])
    given_up = make_run("add", State.FAILED, args=[1, 2], gave_up=True)
    seen, disconnect = finished_statuses()
    try:
        if bulk:
            retry_queryset(TaskExecution.objects.filter(pk__in=[
                redelivered.pk, rejected.pk, given_up.pk]))
        else:
            for run in (redelivered, rejected, given_up):
                retry_run(run)
    finally:
        disconnect()

    assert seen == ["FAILED"]  # the settled original, once; the new runs have not run
    redelivered.refresh_from_db()
    assert redelivered.gave_up


def test_a_run_recorded_by_its_delivery_cannot_be_published_again(fake_publisher):
    # A READY run whose row a delivery made (a scheduled firing: its task id is not its result
    # id) has no message of the enqueue's to publish, however unconfirmed it looks.
    run = make_run("add", State.READY, task_id="scheduled-add-1")
    TaskExecution.objects.filter(pk=run.pk).update(status_detail=PUBLISH_UNCONFIRMED)
    run.refresh_from_db()

    assert "recorded by its delivery, not by an enqueue" in republish_refusal(run)
    with pytest.raises(RetryRefused, match="no message of it to publish again"):
        republish_run(run)
    assert fake_publisher.published == []


def test_retry_run_publish_failure_leaves_a_failed_new_run(fake_publisher):
    fake_publisher.error = PermissionDenied("not allowed to publish")
    original = make_run("add", State.FAILED, args=[1, 2])

    with pytest.raises(RetryPublishFailed, match="that run is FAILED") as caught:
        retry_run(original)

    new = caught.value.execution
    assert new is not None and new.retry_of_id == original.pk
    assert new.status == State.FAILED
    assert "never delivered" in new.status_detail


# --- A selection ----------------------------------------------------------------------------

def test_retry_queryset_retries_each_retryable_run_once(fake_publisher):
    failed = [make_run("add", State.FAILED, args=[i, i]) for i in range(5)]
    rejected = make_run("echo", State.REJECTED, args=["x"])
    ok = make_run("add", State.SUCCESSFUL)
    seen = []

    report = retry_queryset(TaskExecution.objects.all(), limit=10, on_retried=seen.extend)

    assert (report.retried, report.publish_failed, report.not_retryable) == (6, 0, 1)
    assert not report.refused
    retries = TaskExecution.objects.filter(trigger=Trigger.RETRY)
    assert sorted(retries.values_list("retry_of_id", flat=True)) == sorted(
        run.pk for run in [*failed, rejected])
    assert set(retries.values_list("status", flat=True)) == {State.READY}
    assert not ok.retries.exists()
    assert len(fake_publisher.published) == 6
    assert {attrs["trigger"] for _t, _m, attrs in fake_publisher.published} == {"retry"}
    # The rows exist before the publish, so a delivery waits for them instead of making one.
    assert {attrs.get("gyrinx_recorded") for _t, _m, attrs in fake_publisher.published} == {"1"}
    published_ids = {message["task_id"] for _t, message, _a in fake_publisher.published}
    assert published_ids == set(retries.values_list("result_id", flat=True))
    assert {r.original_id for r in seen} == {run.pk for run in [*failed, rejected]}
    assert all(r.published for r in seen)


def test_retry_queryset_works_across_chunks(fake_publisher, monkeypatch):
    monkeypatch.setattr("gyrinx_tasks.retry.CHUNK_SIZE", 3)
    runs = [make_run("add", State.FAILED, args=[i, 0]) for i in range(8)]
    calls = []

    report = retry_queryset(TaskExecution.objects.all(), limit=8,
                            on_retried=lambda done: calls.append(len(done)))

    assert report.retried == 8
    assert calls == [3, 3, 2]
    assert TaskExecution.objects.filter(retry_of__in=runs).count() == 8


def test_retry_queryset_counts_refusals_and_enqueues_the_rest(fake_publisher):
    KillSwitch.objects.create(task_name="echo", enabled=False)
    make_run("retired_task", State.FAILED)
    make_run("echo", State.FAILED)
    make_run("echo", State.SKIPPED)
    good = make_run("add", State.FAILED, args=[1, 1])

    report = retry_queryset(TaskExecution.objects.all(), limit=10)

    assert report.retried == 1
    assert sorted(report.refused.values()) == [1, 2]
    assert any("no longer in TASKS_REGISTRY" in reason for reason in report.refused)
    assert any("Kill switch for echo is off" in reason for reason in report.refused)
    assert list(TaskExecution.objects.filter(trigger=Trigger.RETRY)) == list(good.retries.all())
    assert len(fake_publisher.published) == 1


def test_retry_queryset_over_the_cap_enqueues_nothing(fake_publisher):
    for _ in range(4):
        make_run("add", State.FAILED)

    with pytest.raises(RetryLimitExceeded, match="at most 3 .*TASKS_ADMIN_RETRY_LIMIT"):
        retry_queryset(TaskExecution.objects.all(), limit=3)

    assert fake_publisher.published == []
    assert TaskExecution.objects.count() == 4


def test_retry_queryset_cap_defaults_to_the_setting(fake_publisher):
    for _ in range(3):
        make_run("add", State.FAILED)
    assert tasks_settings.TASKS_ADMIN_RETRY_LIMIT == 1000

    with override_settings(TASKS_ADMIN_RETRY_LIMIT=2):
        with pytest.raises(RetryLimitExceeded, match="at most 2 "):
            retry_queryset(TaskExecution.objects.all())
    with override_settings(TASKS_ADMIN_RETRY_LIMIT=3):
        assert retry_queryset(TaskExecution.objects.all()).retried == 3


@pytest.mark.parametrize("value", ["lots", 0, -5])
def test_a_bad_retry_limit_setting_says_how_to_fix_it(value):
    from django.core.exceptions import ImproperlyConfigured

    with override_settings(TASKS_ADMIN_RETRY_LIMIT=value):
        with pytest.raises(ImproperlyConfigured, match="positive whole number"):
            _ = tasks_settings.TASKS_ADMIN_RETRY_LIMIT


def test_a_failed_publish_in_a_bulk_retry_marks_exactly_that_run():
    use_publisher(PickyPublisher())
    try:
        before = make_run("echo", State.FAILED, args=["good-1"])
        bad = make_run("echo", State.FAILED, args=["bad"])
        after = make_run("echo", State.FAILED, args=["good-2"])
        seen = []

        report = retry_queryset(TaskExecution.objects.all(), limit=10, on_retried=seen.extend)
    finally:
        from django.tasks import task_backends

        task_backends["default"].__dict__.pop("publisher", None)

    assert (report.retried, report.publish_failed) == (2, 1)
    [bad_retry] = bad.retries.all()
    assert bad_retry.status == State.FAILED
    assert "not allowed to publish this one" in bad_retry.errors[0]["traceback"]
    for run in (before, after):
        assert [r.status for r in run.retries.all()] == [State.READY]
    # The failed retry is not picked up again by the same bulk retry.
    assert TaskExecution.objects.filter(trigger=Trigger.RETRY).count() == 3
    assert [r.published for r in seen if r.original_id == bad.pk] == [False]


@IMMEDIATE_REGISTRY
def test_retry_queryset_on_the_immediate_backend_goes_one_by_one():
    runs = [make_run("immediate_add", State.FAILED, args=[i, 1]) for i in range(3)]
    seen = []

    report = retry_queryset(TaskExecution.objects.all(), limit=5, on_retried=seen.extend)

    assert report.retried == 3
    for i, run in enumerate(runs):
        [new] = run.retries.all()
        assert (new.status, new.return_value, new.trigger) == (
            State.SUCCESSFUL, i + 1, Trigger.RETRY)
    assert sorted(r.new_id for r in seen) == sorted(
        TaskExecution.objects.filter(trigger=Trigger.RETRY).values_list("pk", flat=True))


def test_a_registry_that_cannot_be_loaded_refuses_with_a_sentence(settings):
    from gyrinx_tasks.registry import clear_cache
    from gyrinx_tasks.retry import route_refusal

    settings.TASKS_REGISTRY = "tests.no_such_registry_module"
    clear_cache()
    try:
        route, reason = route_refusal("add")
    finally:
        clear_cache()
    assert route is None
    assert "registry cannot be loaded" in reason and "no_such_registry_module" in reason


def test_retry_queryset_publish_timeout_leaves_the_retry_ready_and_unconfirmed():
    # As enqueue_many(): a publish that timed out may still reach Pub/Sub, so the retry stays
    # READY (its delivery would start it) and says so; the other retries are published.
    # Every publish of a message whose first argument is "slow" times out unconfirmed.
    use_publisher(PickyPublisher("slow", TimeoutError("no answer within publish_timeout")))
    slow = make_run("echo", State.FAILED, args=["slow"])
    fine = make_run("echo", State.FAILED, args=["fine"])
    try:
        report = retry_queryset(TaskExecution.objects.all(), limit=10)
    finally:
        task_backends["default"].__dict__.pop("publisher", None)

    assert (report.retried, report.publish_failed) == (1, 1)
    slow_retry = TaskExecution.objects.get(retry_of=slow)
    assert slow_retry.status == State.READY
    assert slow_retry.status_detail == PUBLISH_UNCONFIRMED
    assert slow_retry.errors[-1]["exception_class_path"] == "builtins.TimeoutError"
    assert TaskExecution.objects.get(retry_of=fine).errors == []
