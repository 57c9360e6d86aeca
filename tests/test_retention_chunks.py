"""How tasks_prune deletes a chunk (issue 19, the 10M-run benchmark): each statement covers the
chunk's range of created_at with a few parameters, whatever the chunk's size; retries are
unlinked in one UPDATE and the runs deleted in one DELETE; delete signals still reach their
receivers; a run that changes while its chunk is deleted leaves the rollups exact; and the
first rollup refresh steps through sparse and busy hours alike."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import signals
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gyrinx_tasks import retention, rollups
from gyrinx_tasks.models import State, TaskExecution, TaskRollup
from tests.helpers import make_run

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

TABLE = '"gyrinx_tasks_taskexecution"'


def run(status=State.SUCCESSFUL, age=timedelta(days=40), **fields):
    created = timezone.now() - age
    if status != State.READY:
        fields.setdefault("started_at", created + timedelta(seconds=0.2))
    if status in (State.SUCCESSFUL, State.FAILED, State.SKIPPED, State.REJECTED):
        fields.setdefault("finished_at", fields["started_at"] + timedelta(seconds=0.5))
    return make_run(fields.pop("task_name", "add"), status, created_at=created, **fields)


def statements_on_runs(queries, verb):
    return [q["sql"] for q in queries.captured_queries
            if q["sql"].startswith(verb) and TABLE in q["sql"].split(" WHERE")[0]]


def test_a_chunk_is_one_update_and_one_delete_with_few_parameters():
    originals = [run(status=State.FAILED, gave_up=True) for _ in range(30)]
    retries = [run(age=timedelta(days=1), retry_of=original) for original in originals[:5]]
    with CaptureQueriesContext(connection) as queries:
        report = retention.prune(chunk=1000)
    assert report.deleted == 30
    deletes = statements_on_runs(queries, "DELETE FROM")
    updates = statements_on_runs(queries, "UPDATE")
    assert len(deletes) == 1 and len(updates) == 1
    assert "retry_of_id" in updates[0]
    # No statement lists the chunk's ids: each names the range of created_at (and id).
    for sql in deletes + updates:
        assert not re.search(r"\d+, \d+", sql), sql
    for retry in retries:
        retry.refresh_from_db()
        assert retry.retry_of_id is None
    assert set(TaskExecution.objects.values_list("pk", flat=True)) == {r.pk for r in retries}


def test_chunks_keep_to_their_size_and_leave_the_kept_runs_between_them():
    pruned = []
    for index in range(7):
        pruned.append(run(age=timedelta(days=40, minutes=index)))
        # Interleaved in created_at: never deleted, whichever chunk's range they fall in.
        run(status=State.READY if index % 2 else State.RUNNING,
            age=timedelta(days=40, minutes=index, seconds=30))
    seen = []
    report = retention.prune(chunk=3, progress=lambda group: seen.append(group.deleted))
    assert seen == [3, 6, 7] and report.deleted == 7
    assert not TaskExecution.objects.filter(pk__in=[r.pk for r in pruned]).exists()
    assert set(TaskExecution.objects.values_list("status", flat=True)) == {State.READY,
                                                                          State.RUNNING}


def test_delete_receivers_still_get_every_pruned_run():
    runs = [run() for _ in range(4)]
    heard = []

    def receiver(sender, instance, **kwargs):
        heard.append(instance.pk)

    signals.post_delete.connect(receiver, sender=TaskExecution)
    try:
        report = retention.prune(chunk=3)
    finally:
        signals.post_delete.disconnect(receiver, sender=TaskExecution)
    assert report.deleted == 4 and sorted(heard) == sorted(r.pk for r in runs)


def test_a_run_that_changes_during_its_chunk_is_counted_as_it_is_deleted(monkeypatch,
                                                                         time_machine):
    """A READY run inside a chunk's range is cancelled after the chunk was counted and before
    it is deleted: the delete would take a run the rollups did not count, so the chunk is
    rolled back and done again, and the pruned rollups count exactly what went."""
    # The three runs, two minutes apart, share one rollup hour: the clock stands at half past
    # (in the first minutes of an hour they straddled two, and two rollup rows were found).
    time_machine.move_to(timezone.now().replace(minute=30, second=0, microsecond=0))
    run(age=timedelta(days=40, minutes=2))
    waiting = run(status=State.READY, age=timedelta(days=40, minutes=1))
    run(age=timedelta(days=40))
    tally = rollups.tally
    calls = []

    def tally_then_cancel(runs):
        found = tally(runs)
        calls.append(1)
        if len(calls) == 1:  # the chunk's own tally, on the first attempt only
            TaskExecution.objects.filter(pk=waiting.pk).update(status=State.CANCELLED)
        return found

    monkeypatch.setattr(rollups, "tally", tally_then_cancel)
    report = retention.prune(chunk=10)
    assert report.deleted == 3 and not TaskExecution.objects.exists()
    (row,) = TaskRollup.objects.filter(pruned=True)
    assert row.counts == {State.SUCCESSFUL: 2, State.CANCELLED: 1}
    assert not TaskRollup.objects.filter(pruned=False).exists()


def test_the_first_refresh_steps_by_runs_not_by_a_fixed_number_of_hours(monkeypatch):
    now = timezone.now()
    # Sparse months, with three busy days (four runs an hour) in the middle.
    for days in range(80, 2, -5):
        run(age=timedelta(days=days))
    for minutes in range(0, 3 * 24 * 60, 15):
        run(age=timedelta(days=20, minutes=minutes))
    monkeypatch.setattr(rollups, "REFRESH_STEP_RUNS", 10)
    steps = []
    done = rollups.refresh(now, progress=lambda d: steps.append(d.hours))
    sizes = [b - a for a, b in zip([0, *steps], steps, strict=False)]
    assert max(sizes) == rollups.REFRESH_MAX_STEP_HOURS  # sparse hours: a week a step
    # The busy days: shorter steps than the first one, whose size suits no data.
    assert min(sizes) < rollups.REFRESH_STEP_HOURS
    assert done.hours == sum(sizes)
    counted = sum(sum(row.counts.values()) for row in TaskRollup.objects.all())
    assert counted == TaskExecution.objects.count()
