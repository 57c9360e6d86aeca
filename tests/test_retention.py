"""Retention (issue 19 item 1): tasks_prune deletes finished runs past their retention in
chunks, keeps what must stay, and adds what it deletes to the hourly rollups first."""

from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gyrinx_tasks import checks, retention, rollups
from gyrinx_tasks.models import State, TaskExecution, TaskRollup
from gyrinx_tasks.routes import TaskRoute
from tests import tasks as test_tasks
from tests.helpers import make_run

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

DAY = timedelta(days=1)


def run(task_name="add", status=State.SUCCESSFUL, age=timedelta(days=40), ran=0.5,
        waited=0.2, **fields):
    created = timezone.now() - age
    if status not in (State.READY,):
        fields.setdefault("started_at", created + timedelta(seconds=waited))
    if status in (State.SUCCESSFUL, State.FAILED, State.SKIPPED, State.REJECTED):
        fields.setdefault("finished_at", fields["started_at"] + timedelta(seconds=ran))
    return make_run(task_name, status, created_at=created, **fields)


@pytest.fixture
def retention_registry(settings):
    from gyrinx_tasks import registry

    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.retention_tasks"
    yield
    registry.clear_cache()


def test_prunes_finished_runs_older_than_the_retention_and_keeps_what_must_stay():
    old_done = [run(status=s) for s in (State.SUCCESSFUL, State.FAILED, State.SKIPPED,
                                        State.REJECTED)]
    given_up = run(status=State.FAILED, gave_up=True,
                   last_attempted_at=timezone.now() - timedelta(days=2))
    ready = run(status=State.READY)
    running = run(status=State.RUNNING)
    # Failed with attempts left, attempted two days ago: Pub/Sub may still redeliver it.
    redelivered = run(status=State.FAILED, last_attempted_at=timezone.now() - timedelta(days=2))
    # Failed with attempts left, but last attempted longer ago than Pub/Sub keeps messages.
    expired = run(status=State.FAILED, last_attempted_at=timezone.now() - timedelta(days=8))
    recent = run(age=timedelta(days=29))

    report = retention.prune()

    left = set(TaskExecution.objects.values_list("pk", flat=True))
    assert left == {ready.pk, running.pk, redelivered.pk, recent.pk}
    assert report.deleted == len(old_done) + 2 == report.found
    assert given_up.pk not in left and expired.pk not in left


def test_dry_run_only_counts():
    for _ in range(3):
        run()
    run(age=timedelta(days=1))
    report = retention.prune(dry_run=True)
    assert (report.found, report.deleted) == (3, 0)
    assert TaskExecution.objects.count() == 4
    assert not TaskRollup.objects.exists()


def test_cutoff_is_a_whole_hour_so_an_hour_is_pruned_at_once():
    with time_machine.travel(timezone.now().replace(minute=30), tick=False):
        inside = run(age=timedelta(days=30, minutes=20))  # same hour as the cutoff: kept
        before = run(age=timedelta(days=30, minutes=40))  # the hour before: pruned
        report = retention.prune()
    assert report.groups[-1].cutoff.minute == 0
    assert list(TaskExecution.objects.values_list("pk", flat=True)) == [inside.pk]
    assert before.pk != inside.pk


def test_deletes_in_chunks_each_in_its_own_transaction_with_progress():
    for _ in range(5):
        run()
    seen = []
    with CaptureQueriesContext(connection) as queries:
        report = retention.prune(chunk=2, progress=lambda g: seen.append(g.deleted))
    assert seen == [2, 4, 5]
    assert report.deleted == 5 and not TaskExecution.objects.exists()
    deletes = [q["sql"] for q in queries.captured_queries
               if q["sql"].startswith('DELETE FROM "gyrinx_tasks_taskexecution"')]
    assert len(deletes) == 3
    # Each chunk's ids are read with a LIMIT, so memory is one chunk whatever the backlog.
    assert sum(1 for q in queries.captured_queries
               if 'LIMIT 2' in q["sql"] and "gyrinx_tasks_taskexecution" in q["sql"]) >= 3


def test_max_seconds_stops_and_the_next_prune_goes_on():
    for _ in range(4):
        run()
    report = retention.prune(chunk=1, max_seconds=0)
    assert not report.finished and TaskExecution.objects.count() == 4
    assert retention.prune(chunk=1).deleted == 4


def test_retries_of_pruned_runs_stay_and_lose_only_the_link():
    original = run(status=State.FAILED, gave_up=True)
    retry = run(age=DAY, retry_of=original)
    retention.prune()
    retry.refresh_from_db()
    assert retry.retry_of_id is None


def test_per_route_retention_wins_over_the_setting(settings):
    settings.TASKS_RETENTION = timedelta(days=10)
    routes = (TaskRoute(test_tasks.add), TaskRoute(test_tasks.echo, retention=DAY * 60))
    found = {route.name: retention.retention_for(route) for route in routes}
    assert found == {"add": DAY * 10, "echo": DAY * 60}


@pytest.mark.django61
def test_route_and_task_retention_each_prune_their_own_task(retention_registry, settings):
    settings.TASKS_RETENTION = timedelta(days=30)
    old = timedelta(days=20)
    add = run("add", age=old)  # 30 days: kept
    echo = run("echo", age=timedelta(days=3))  # route: 2 days
    kept_long = run("kept_long", age=timedelta(days=60))  # @task: 90 days
    route_wins = run("route_wins", age=timedelta(days=6))  # route 5 days beats @task 90
    other = run("not_registered", age=timedelta(days=31))  # the setting

    report = retention.prune()

    assert set(TaskExecution.objects.values_list("pk", flat=True)) == {add.pk, kept_long.pk}
    assert [(g.label, g.retention, g.deleted) for g in report.groups] == [
        ("echo", DAY * 2, 1), ("kept_long", DAY * 90, 0), ("route_wins", DAY * 5, 1),
        ("every other task", DAY * 30, 1)]
    assert not TaskExecution.objects.filter(pk__in=[echo.pk, route_wins.pk, other.pk]).exists()


def test_the_command_reports_and_dry_run_changes_nothing():
    for _ in range(3):
        run()
    out = StringIO()
    call_command("tasks_prune", "--dry-run", stdout=out)
    assert "every task: keep 30 days; would delete 3 runs created before" in out.getvalue()
    assert "Dry run: 3 runs would be deleted; nothing was changed." in out.getvalue()
    assert TaskExecution.objects.count() == 3

    out = StringIO()
    call_command("tasks_prune", "--chunk", "2", stdout=out)
    text = out.getvalue()
    assert "  every task: 2 of 3 deleted" in text and "  every task: 3 of 3 deleted" in text
    assert "Deleted 3 runs." in text and not TaskExecution.objects.exists()


def test_the_command_refuses_a_bad_chunk_and_a_bad_setting(settings):
    with pytest.raises(CommandError, match="--chunk must be"):
        call_command("tasks_prune", "--chunk", "0", stdout=StringIO())
    settings.TASKS_RETENTION = timedelta(minutes=5)
    with pytest.raises(CommandError, match="TASKS_RETENTION is"):
        call_command("tasks_prune", stdout=StringIO())


def test_the_environment_variable_is_a_number_of_days(monkeypatch, settings):
    from gyrinx_tasks.conf import tasks_settings

    del settings.TASKS_RETENTION
    monkeypatch.setenv("TASKS_RETENTION", "45")
    assert tasks_settings.TASKS_RETENTION == DAY * 45


@pytest.mark.django61
def test_the_package_task_prunes_as_a_scheduled_route(retention_registry):
    from gyrinx_tasks.maintenance import roll_up_and_prune

    run()
    run(age=DAY)
    result = roll_up_and_prune.call()
    # The first refresh counts every stored run: both hours.
    assert result == {"deleted": 1, "prunable": 1, "finished": True, "rollup_rows": 2}
    # Routed with a schedule like any other task, and nothing to say about it or retention.
    assert [m for m in checks.check_registry()
            if "maintenance" in str(m.obj) or m.id.startswith("gyrinx_tasks.E03")] == []


# --- System checks ----------------------------------------------------------------------

def test_e030_bad_setting(settings):
    for bad in (timedelta(minutes=59), 30, "thirty", timedelta(0)):
        settings.TASKS_RETENTION = bad
        (message,) = checks.check_validated_settings()
        assert message.id == "gyrinx_tasks.E030"
        assert "TASKS_RETENTION is" in message.msg and "timedelta(days=30)" in message.hint
    settings.TASKS_RETENTION = timedelta(hours=1)
    assert checks.check_validated_settings() == []


def test_e031_bad_route_retention():
    timezones = {"UTC"}
    for bad in (timedelta(minutes=10), 30, "30d"):
        messages = checks._check_route(TaskRoute(test_tasks.add, retention=bad), timezones)
        assert [m.id for m in messages] == ["gyrinx_tasks.E031"]
        assert "retention" in messages[0].msg and "timedelta(days=90)" in messages[0].hint
    assert checks._check_route(TaskRoute(test_tasks.add, retention=DAY), timezones) == []


@pytest.mark.django61
def test_e032_bad_task_retention():
    from tests.retention_bad_tasks import counted_in_days

    messages = checks._check_task_options((TaskRoute(counted_in_days),))
    assert [m.id for m in messages] == ["gyrinx_tasks.E032"]
    assert "@task(retention=30)" in messages[0].msg


def test_pruned_runs_leave_their_rollups():
    run(status=State.SUCCESSFUL, ran=0.3, waited=2)
    run(status=State.FAILED, gave_up=True, ran=40)
    retention.prune()
    (row,) = TaskRollup.objects.all()
    assert row.pruned and row.counts == {State.SUCCESSFUL: 1, State.FAILED: 1}
    assert row.durations[rollups.bucket_of(0.3)] == 1 and row.durations[rollups.bucket_of(40)] == 1
    assert row.queued[rollups.bucket_of(2)] == 1 and row.queued[rollups.bucket_of(0.2)] == 1
