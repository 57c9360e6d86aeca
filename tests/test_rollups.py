"""Hourly rollups (issue 19 items 2 and 4): counts and histograms per task and hour, the
overview's 30- and 90-day windows read from them, before and after pruning, on SQLite and
PostgreSQL."""

import random
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from gyrinx_tasks import retention, rollups, stats
from gyrinx_tasks.models import RollupMark, ShownStatus, State, TaskExecution, TaskRollup, Trigger

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

NOW = datetime(2026, 11, 23, 12, 34, 56, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def run(task_name="add", status=State.SUCCESSFUL, created=None, ran=None, waited=None):
    created = created or NOW - timedelta(minutes=5)
    fields = {}
    if waited is not None:
        fields["started_at"] = created + timedelta(seconds=waited)
        if ran is not None:
            fields["finished_at"] = fields["started_at"] + timedelta(seconds=ran)
    execution = TaskExecution(task_name=task_name, task_path=f"tests.tasks.{task_name}",
                              created_at=created, trigger=Trigger.ENQUEUE, **fields)
    execution.task_id = execution.result_id
    execution.save()
    TaskExecution.objects.filter(pk=execution.pk).update(status=status)
    return execution


def test_buckets_are_fixed_and_cover_zero_to_forever():
    assert rollups.bucket_of(0) == 0 and rollups.bucket_of(-1) == 0  # clock skew
    assert rollups.bucket_of(0.001) == 1
    assert rollups.bucket_of(0.35) == rollups.EDGES.index(0.5)
    assert rollups.bucket_of(10**9) == rollups.BUCKETS - 1
    assert rollups.bucket_bounds(rollups.BUCKETS - 1)[1] == float("inf")


def test_tally_counts_per_task_and_hour_in_the_database():
    hour = datetime(2026, 11, 23, 9, tzinfo=UTC)
    run("add", State.SUCCESSFUL, hour + timedelta(minutes=1), ran=0.3, waited=0.004)
    run("add", State.FAILED, hour + timedelta(minutes=59, seconds=59), ran=40, waited=3)
    run("add", State.READY, hour + timedelta(minutes=30))
    run("add", State.RUNNING, hour + timedelta(minutes=30), waited=600)
    run("add", State.SKIPPED, hour + timedelta(hours=1), waited=1, ran=0)
    run("echo", State.SUCCESSFUL, hour, ran=1, waited=1)

    found = rollups.tally(TaskExecution.objects.all())

    add = found[("add", hour)]
    assert add.counts == {State.SUCCESSFUL: 1, State.FAILED: 1, State.READY: 1,
                          State.RUNNING: 1}
    # Durations of successful and failed runs only; time in queue of every run that started.
    assert {i: n for i, n in enumerate(add.durations) if n} == {
        rollups.bucket_of(0.3): 1, rollups.bucket_of(40): 1}
    assert {i: n for i, n in enumerate(add.queued) if n} == {
        rollups.bucket_of(0.004): 1, rollups.bucket_of(3): 1, rollups.bucket_of(600): 1}
    next_hour = found[("add", hour + timedelta(hours=1))]
    assert next_hour.counts == {State.SKIPPED: 1} and not any(next_hour.durations)
    assert found[("echo", hour)].counts == {State.SUCCESSFUL: 1}


def test_tally_counts_failing_runs_that_will_retry_apart_from_final_failures():
    # The long windows read rollups; they must tell "Failing, will retry" from "Failed" as the
    # short windows do (models.SHOWN_STATUS), so a rollup counts by the status staff see.
    hour = datetime(2026, 11, 23, 9, tzinfo=UTC)
    failing = run("add", State.FAILED, hour + timedelta(minutes=1), ran=1, waited=1)
    given_up = run("add", State.FAILED, hour + timedelta(minutes=2), ran=1, waited=1)
    TaskExecution.objects.filter(pk=failing.pk).update(attempts=1, message_id="7")
    TaskExecution.objects.filter(pk=given_up.pk).update(attempts=3, message_id="8", gave_up=True)

    add = rollups.tally(TaskExecution.objects.all())[("add", hour)]

    assert add.counts == {ShownStatus.WILL_RETRY: 1, ShownStatus.FAILED: 1}


def spread_runs(count: int, days: int, seed: int = 19) -> list[TaskExecution]:
    """Runs over ``days`` days, log-normal durations and waits, a few failures and retries."""
    rng = random.Random(seed)
    runs = []
    for _ in range(count):
        created = NOW - timedelta(seconds=rng.uniform(0, days * 86400))
        status = rng.choices([State.SUCCESSFUL, State.FAILED, State.SKIPPED], [90, 8, 2])[0]
        task_name = rng.choice(["add", "echo"])
        waited = rng.lognormvariate(-1, 1.5)
        ran = rng.lognormvariate(0, 1.2) if status != State.SKIPPED else None
        runs.append(run(task_name, status, created, ran=ran, waited=waited))
    return runs


def by_name(overview):
    return {task.name: task for task in overview.tasks}


@pytest.mark.parametrize("key", ["30d", "90d"])
def test_histogram_percentiles_agree_with_the_exact_ones_within_one_bucket(key):
    spread_runs(600, days=25)
    rollups.refresh(hours=48)  # the first refresh counts every stored run
    since, until = stats.get_window(key).bounds(NOW)
    exact = stats.timing_percentiles(TaskExecution.objects.filter(created_at__gte=since,
                                                                   created_at__lt=until))
    found = by_name(stats.overview(key, now=NOW))
    for name in ("add", "echo"):
        estimates = {"run": [found[name].p50, found[name].p95],
                     "queue": [found[name].queue_p50, found[name].queue_p95]}
        for kind in ("run", "queue"):
            for estimate, truth in zip(estimates[kind], exact[name][kind], strict=True):
                assert estimate is not None and truth is not None
                low, high = rollups.bucket_bounds(rollups.bucket_of(truth))
                # Within one bucket: the estimate is no further from the exact value than
                # the width of the bucket that holds it, and at most a bucket over.
                assert abs(estimate - truth) <= high - low, (name, kind, estimate, truth)
                assert abs(rollups.bucket_of(estimate) - rollups.bucket_of(truth)) <= 1


def test_long_windows_show_the_same_before_and_after_pruning(settings):
    settings.TASKS_RETENTION = timedelta(days=7)
    spread_runs(300, days=60, seed=7)
    rollups.refresh()
    before = {key: by_name(stats.overview(key, now=NOW)) for key in ("30d", "90d")}

    report = retention.prune()

    assert report.deleted > 150
    assert TaskExecution.objects.count() == 300 - report.deleted
    assert TaskRollup.objects.filter(pruned=True).exists()
    for key in ("30d", "90d"):
        after = by_name(stats.overview(key, now=NOW))
        for name in ("add", "echo"):
            assert after[name].counts == before[key][name].counts
            assert after[name].per_minute == pytest.approx(before[key][name].per_minute)
            assert (after[name].p50, after[name].p95, after[name].queue_p50,
                    after[name].queue_p95) == (
                before[key][name].p50, before[key][name].p95, before[key][name].queue_p50,
                before[key][name].queue_p95)


def test_ninety_days_holds_what_thirty_days_cannot():
    run("add", State.SUCCESSFUL, NOW - timedelta(days=45), ran=1, waited=1)
    run("add", State.FAILED, NOW - timedelta(days=2), ran=1, waited=1)
    rollups.refresh()
    retention.prune()  # the 45-day-old run goes; its rollup stays
    assert by_name(stats.overview("90d", now=NOW))["add"].counts == {
        State.SUCCESSFUL: 1, State.FAILED: 1}
    assert by_name(stats.overview("30d", now=NOW))["add"].counts == {State.FAILED: 1}


def test_hours_after_the_mark_are_counted_from_the_runs():
    run("add", State.SUCCESSFUL, NOW - timedelta(days=3), ran=1, waited=1)
    rollups.refresh()
    assert RollupMark.objects.get().until == datetime(2026, 11, 23, 12, tzinfo=UTC)
    # Not rolled up yet: this hour's runs, read from the runs themselves.
    run("add", State.FAILED, NOW - timedelta(minutes=1), ran=1, waited=1)
    assert by_name(stats.overview("30d", now=NOW))["add"].counts == {
        State.SUCCESSFUL: 1, State.FAILED: 1}


def test_without_any_refresh_the_long_windows_count_the_runs():
    run("add", State.SUCCESSFUL, NOW - timedelta(days=20), ran=1, waited=1)
    assert not RollupMark.objects.exists()
    assert by_name(stats.overview("30d", now=NOW))["add"].counts == {State.SUCCESSFUL: 1}


def test_a_refresh_counts_runs_that_changed_since_and_is_idempotent():
    changing = run("add", State.RUNNING, NOW - timedelta(hours=3), waited=1)
    rollups.refresh()
    assert by_name(stats.overview("30d", now=NOW))["add"].counts == {State.RUNNING: 1}
    TaskExecution.objects.filter(pk=changing.pk).update(
        status=State.SUCCESSFUL, finished_at=NOW - timedelta(hours=2))
    rollups.refresh()
    rollups.refresh()
    assert list(TaskRollup.objects.values_list("counts", flat=True)) == [
        {State.SUCCESSFUL: 1}]


def test_a_refresh_catches_up_the_hours_it_missed():
    run("add", State.SUCCESSFUL, NOW - timedelta(days=10), ran=1, waited=1)
    rollups.refresh(hours=2)  # first refresh: every stored run
    later = NOW + timedelta(days=5)
    run("add", State.SUCCESSFUL, NOW + timedelta(days=1), ran=1, waited=1)
    with time_machine.travel(later, tick=False):
        done = rollups.refresh(hours=2)  # five days late: from the last mark, two hours back
        assert done.start == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert TaskRollup.objects.count() == 2


def test_a_run_left_ready_in_a_pruned_hour_is_counted_once_it_is_pruned_too():
    hour = NOW - timedelta(days=40)
    run("add", State.SUCCESSFUL, hour, ran=1, waited=1)
    stuck = run("add", State.READY, hour)
    retention.prune()
    assert TaskExecution.objects.get().pk == stuck.pk
    assert by_name(stats.overview("90d", now=NOW))["add"].counts == {
        State.SUCCESSFUL: 1, State.READY: 1}
    TaskExecution.objects.filter(pk=stuck.pk).update(
        status=State.SKIPPED, finished_at=NOW - timedelta(days=39))
    retention.prune()
    assert not TaskExecution.objects.exists()
    assert by_name(stats.overview("90d", now=NOW))["add"].counts == {
        State.SUCCESSFUL: 1, State.SKIPPED: 1}
    assert not TaskRollup.objects.filter(pruned=False).exists()


def test_long_windows_read_rollups_not_runs(django_assert_max_num_queries):
    spread_runs(50, days=20)
    rollups.refresh()
    # The mark, the rollup rows, the runs of this hour (two grouped queries), what is queued
    # or running now, and the recent failures: whatever the number of runs and hours.
    with django_assert_max_num_queries(6) as queries:
        stats.overview("90d", now=NOW)
    runs_read = [q["sql"] for q in queries.captured_queries
                 if "GROUP BY" in q["sql"] and "gyrinx_tasks_taskexecution" in q["sql"]
                 and "READY" not in q["sql"]]
    assert len(runs_read) == 2
    mark = "2026-11-23 12:00:00"
    assert all(mark in sql for sql in runs_read), runs_read


def test_the_overview_page_offers_the_long_windows_with_time_in_queue(client, admin_user):
    run("add", State.SUCCESSFUL, NOW - timedelta(days=50), ran=0.3, waited=4)
    run("add", State.SUCCESSFUL, NOW - timedelta(hours=20), ran=0.3, waited=4)
    retention.prune()
    client.force_login(admin_user)
    html = client.get("/admin/gyrinx_tasks/overview/?window=90d").content.decode()
    for label in ("Last hour", "Last 24 hours", "Last 7 days", "30 days", "90 days"):
        assert f">{label}</a>" in html
    assert 'aria-current="true">90 days</a>' in html
    assert "From hourly rollups, kept after runs are pruned" in html
    row = html.split('data-task="add"')[1].split("</tr>")[0]
    assert 'data-count="total">2<' in row
    # 4 s in queue lies in the [2 s, 5 s) bucket; both runs there, so p50 is inside it.
    queue = row.split('data-count="queue-p50">')[1].split("<")[0]
    assert queue.endswith(" s") and 2 <= float(queue.split()[0]) < 5
    day = client.get("/admin/gyrinx_tasks/overview/?window=24h").content.decode()
    assert "From hourly rollups" not in day
    assert 'data-count="queue-p50">4.0 s<' in day  # exact in the short windows


def test_the_rollup_command_counts_and_refuses_negative_hours():
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    run("add", State.SUCCESSFUL, NOW - timedelta(hours=5), ran=1, waited=1)
    out = StringIO()
    call_command("tasks_rollup", "--hours", "12", stdout=out)
    assert "Counted 12 hours (1 rollup rows), up to 2026-11-23 12:00 UTC." in out.getvalue()
    assert TaskRollup.objects.get().counts == {State.SUCCESSFUL: 1}
    with pytest.raises(CommandError, match="--hours must be 0 or more"):
        call_command("tasks_rollup", "--hours", "-1", stdout=StringIO())
