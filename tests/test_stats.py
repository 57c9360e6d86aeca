"""Overview aggregates (gyrinx_tasks/stats.py) on constructed data, on SQLite and PostgreSQL.

The expected numbers are written out, so the same test passing on both databases shows that
PostgreSQL's percentile_cont and the Python fallback agree.
"""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from gyrinx_tasks import stats
from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import postgresql_plan

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

NOW = datetime(2026, 11, 23, 12, 34, 56, 789000, tzinfo=UTC)
# The 1h window at NOW: bars are whole minutes, so it is [11:35:00, 12:35:00).
SINCE_1H = datetime(2026, 11, 23, 11, 35, tzinfo=UTC)


def run(task_name="add", status=State.SUCCESSFUL, created=None, duration=None, **fields):
    created = created or NOW - timedelta(minutes=5)
    if duration is not None:
        fields.setdefault("started_at", created + timedelta(milliseconds=40))
        fields.setdefault("finished_at", fields["started_at"] + timedelta(seconds=duration))
    execution = TaskExecution(task_name=task_name, task_path=f"tests.tasks.{task_name}",
                              created_at=created, trigger=Trigger.ENQUEUE, **fields)
    execution.task_id = execution.result_id
    execution.save()
    TaskExecution.objects.filter(pk=execution.pk).update(status=status)
    return execution


def by_name(overview):
    return {task.name: task for task in overview.tasks}


def test_window_bounds_align_to_whole_bars():
    window = stats.get_window("1h")
    assert window.bounds(NOW) == (SINCE_1H, SINCE_1H + timedelta(hours=1))
    since, until = stats.get_window("24h").bounds(NOW)
    assert (since, until) == (datetime(2026, 11, 22, 12, 45, tzinfo=UTC),
                              datetime(2026, 11, 23, 12, 45, tzinfo=UTC))
    since, until = stats.get_window("7d").bounds(NOW)
    assert until == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    assert until - since == timedelta(days=7)
    assert [stats.WINDOWS[key].buckets for key in ("1h", "24h", "7d")] == [60, 96, 84]


def test_unknown_window_names_the_choices():
    with pytest.raises(stats.UnknownWindow) as caught:
        stats.get_window("2w")
    assert str(caught.value) == ("There is no time window called '2w'; choose one of 1h, 24h, "
                                 "7d, 30d, 90d.")
    assert stats.get_window(None).key == stats.DEFAULT_WINDOW == "24h"


def test_counts_and_failure_rate_per_task():
    for _ in range(6):
        run("add", State.SUCCESSFUL, duration=0.2)
    for _ in range(2):
        run("add", State.FAILED, duration=0.5)
    run("add", State.SKIPPED)
    run("add", State.REJECTED)
    run("echo", State.SUCCESSFUL, duration=0.1)

    found = by_name(stats.overview("1h", now=NOW))

    add = found["add"]
    assert add.counts == {State.SUCCESSFUL: 6, State.FAILED: 2, State.SKIPPED: 1,
                          State.REJECTED: 1}
    assert add.total == 10
    # Failures over finished runs; skipped and rejected runs neither succeed nor fail here.
    assert add.failure_rate == 2 / 8
    assert found["echo"].failure_rate == 0.0
    # Registered tasks without runs are listed, with nothing to divide by.
    assert found["explode"].total == 0 and found["explode"].failure_rate is None
    assert found["explode"].p50 is None
    assert [task.name for task in stats.overview("1h", now=NOW).tasks][:3] == [
        "add", "echo", "explode"]


def test_window_boundaries_are_inclusive_at_since_and_exclusive_at_until():
    run("add", State.SUCCESSFUL, created=SINCE_1H)  # the first instant of the window
    run("add", State.FAILED, created=SINCE_1H - timedelta(microseconds=1))  # just before
    run("add", State.SKIPPED, created=SINCE_1H + timedelta(hours=1))  # the next bar
    run("add", State.REJECTED, created=SINCE_1H + timedelta(hours=1) - timedelta(microseconds=1))

    add = by_name(stats.overview("1h", now=NOW))["add"]
    assert add.counts == {State.SUCCESSFUL: 1, State.REJECTED: 1}
    # The wider window takes in the run from just before the hour.
    assert by_name(stats.overview("24h", now=NOW))["add"].count(State.FAILED) == 1


def test_percentiles_are_postgresqls_percentile_cont():
    for seconds in (0.1, 0.2, 0.3, 0.4, 1.0):
        run("add", State.SUCCESSFUL, duration=seconds)
    run("add", State.FAILED, duration=2.0)
    # Not timed: never started, or still going.
    run("add", State.REJECTED, finished_at=NOW - timedelta(minutes=1))
    run("add", State.RUNNING, started_at=NOW - timedelta(minutes=30))
    run("echo", State.SUCCESSFUL, duration=0.25)

    found = by_name(stats.overview("1h", now=NOW))

    # Six durations [0.1, 0.2, 0.3, 0.4, 1.0, 2.0]: p50 sits halfway between 0.3 and 0.4,
    # p95 at 0.95 * 5 = 4.75, three quarters of the way from 1.0 to 2.0.
    assert (found["add"].p50, found["add"].p95) == (0.35, 1.75)
    assert (found["echo"].p50, found["echo"].p95) == (0.25, 0.25)


def test_percentiles_agree_with_the_python_fallback_on_random_durations():
    rng = random.Random(8)
    durations = {name: [round(rng.lognormvariate(-1, 1.2), 6) for _ in range(rng.randint(1, 60))]
                 for name in ("add", "echo", "flaky")}
    for name, values in durations.items():
        for seconds in values:
            run(name, State.SUCCESSFUL, duration=seconds)

    found = stats.duration_percentiles(TaskExecution.objects.all(), (0.5, 0.95, 0.99))

    for name, values in durations.items():
        ordered = sorted(values)
        expected = [round(stats.percentile_cont(ordered, f), 6) for f in (0.5, 0.95, 0.99)]
        assert found[name] == pytest.approx(expected, abs=1e-6), name


@pytest.mark.parametrize(("values", "fraction", "expected"), [
    ([], 0.5, None),
    ([3.0], 0.95, 3.0),
    ([1.0, 2.0], 0.5, 1.5),
    ([1.0, 2.0, 3.0, 4.0], 0.95, 3.85),
    ([1.0, 2.0, 3.0, 4.0], 0.0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 1.0, 4.0),
])
def test_percentile_cont_interpolates_like_postgresql(values, fraction, expected):
    result = stats.percentile_cont(values, fraction)
    assert result == (None if expected is None else pytest.approx(expected))


def test_runs_per_minute_per_bar():
    run("add", created=SINCE_1H)  # bar 0
    run("add", created=SINCE_1H + timedelta(seconds=59, microseconds=999999))  # still bar 0
    run("add", State.FAILED, created=SINCE_1H + timedelta(minutes=1))  # bar 1
    for _ in range(3):
        run("echo", created=SINCE_1H + timedelta(minutes=59, seconds=30))  # the newest bar

    found = by_name(stats.overview("1h", now=NOW))
    assert found["add"].per_minute[:3] == [2.0, 1.0, 0.0]
    assert sum(found["add"].per_minute) == 3.0
    assert found["add"].failed_per_minute[:3] == [0.0, 1.0, 0.0]
    assert found["echo"].per_minute[-1] == 3.0
    assert len(found["explode"].per_minute) == 60

    # 24 hours: 15-minute bars, so runs per minute is the bar's count over 15.
    day = by_name(stats.overview("24h", now=NOW))
    assert day["echo"].per_minute[-1] == pytest.approx(3 / 15)
    assert sum(day["add"].per_minute) == pytest.approx(3 / 15)


def test_ready_and_running_are_counted_whenever_they_were_created():
    stuck = run("add", State.READY, created=NOW - timedelta(days=30))
    run("add", State.READY, created=NOW - timedelta(minutes=2))
    old_running = run("echo", State.RUNNING, created=NOW - timedelta(days=3),
                      started_at=NOW - timedelta(days=3))
    new_running = run("echo", State.RUNNING, started_at=NOW - timedelta(seconds=5))
    run("flaky", State.SUCCESSFUL, duration=1)

    overview = stats.overview("1h", now=NOW)
    found = by_name(overview)
    assert (found["add"].ready_now, found["add"].oldest_ready) == (2, stuck.created_at)
    assert found["echo"].running_now == 2
    assert [r.pk for r in overview.running] == [new_running.pk, old_running.pk]
    assert overview.active

    TaskExecution.objects.filter(status__in=stats.ACTIVE_STATES).update(status=State.SKIPPED)
    idle = stats.overview("1h", now=NOW)
    assert not idle.active and idle.running == []


def test_runs_of_tasks_outside_the_registry_are_shown():
    run("", State.REJECTED)
    run("retired_task", State.FAILED, duration=0.3)
    found = by_name(stats.overview("1h", now=NOW))
    assert found[""].count(State.REJECTED) == 1 and not found[""].registered
    assert found["retired_task"].failure_rate == 1.0
    assert found["add"].registered


def test_query_count_does_not_grow_with_tasks_or_runs():
    def count_queries():
        with CaptureQueriesContext(connection) as captured:
            stats.overview("7d", now=NOW)
        return len(captured.captured_queries)

    run("add", State.RUNNING, started_at=NOW)
    small = count_queries()
    for name in ("add", "echo", "flaky", "explode", "a", "b", "c", "d"):
        for status in State.values:
            run(name, status, duration=0.1, created=NOW - timedelta(hours=5))
    # One more once the window holds FAILED runs: which of them will retry.
    assert small == 4 and count_queries() == 5


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN output is PostgreSQL's")
def test_window_queries_can_use_the_indexes_on_postgresql():
    """With sequential scans priced out, every query the overview makes has an index to use."""
    for i in range(50):
        run("add", State.SUCCESSFUL, duration=0.1, created=NOW - timedelta(hours=i))
    run("add", State.RUNNING, started_at=NOW)
    with CaptureQueriesContext(connection) as captured:
        stats.overview("24h", now=NOW)
    for query in captured.captured_queries:
        plan = "\n".join(postgresql_plan(query["sql"]))
        assert "Seq Scan" not in plan, plan
        assert "gyrinx_exec_" in plan, plan
