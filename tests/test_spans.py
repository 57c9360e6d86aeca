"""A run's time as waiting, running and Pub/Sub backoff spans (issue 19 item 4), and the run
page that shows them."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from gyrinx_tasks import spans
from gyrinx_tasks.models import State
from tests.helpers import make_run

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def entry(seconds, source, target, note=""):
    found = {"at": at(seconds), "from": source, "to": target}
    if note:
        found["note"] = note
    return found


def retried_run(**fields):
    """Enqueued at 0; attempt 1 runs 2-3 s and fails; Pub/Sub redelivers at 13 s; attempt 2
    runs 13-13.5 s and succeeds."""
    timeline = [
        entry(0, "", State.READY, "enqueued"),
        entry(2, State.READY, State.RUNNING, "attempt 1 on w-1"),
        entry(3, State.RUNNING, State.FAILED, "attempt 1: builtins.ValueError"),
        entry(13, State.FAILED, State.RUNNING, "attempt 2 on w-2"),
        entry(13.5, State.RUNNING, State.SUCCESSFUL),
    ]
    return make_run("add", State.SUCCESSFUL, created_at=T0, enqueued_at=T0, timeline=timeline,
                    **fields)


def kinds(found):
    return [(span.kind, span.attempt, span.length.total_seconds(), span.open) for span in found]


def test_waiting_running_and_backoff_are_separate_spans():
    run = retried_run()
    found = spans.run_spans(run, now=T0 + timedelta(minutes=5))
    assert kinds(found) == [("waiting", None, 2.0, False), ("running", 1, 1.0, False),
                            ("backoff", 2, 10.0, False), ("running", 2, 0.5, False)]
    assert spans.totals(found) == {"waiting": timedelta(seconds=2),
                                   "running": timedelta(seconds=1.5),
                                   "backoff": timedelta(seconds=10)}


def test_an_attempt_cut_off_runs_until_the_next_and_a_note_is_no_attempt():
    run = make_run("add", State.RUNNING, created_at=T0, enqueued_at=T0, timeline=[
        entry(0, "", State.READY, "enqueued"),
        entry(1, State.READY, State.RUNNING, "attempt 1 on w-1"),
        entry(2, State.RUNNING, State.RUNNING, "a duplicate delivery lost the race"),
        entry(400, State.RUNNING, State.RUNNING, "attempt 2 on w-2"),
    ])
    found = spans.run_spans(run, now=T0 + timedelta(seconds=410))
    assert kinds(found) == [("waiting", None, 1.0, False), ("running", 1, 399.0, False),
                            ("running", 2, 10.0, True)]


def test_a_queued_run_is_waiting_and_a_failed_one_waits_for_its_redelivery():
    ready = make_run("add", State.READY, created_at=T0, enqueued_at=T0, timeline=[
        entry(0, "", State.READY, "enqueued")])
    assert kinds(spans.run_spans(ready, now=T0 + timedelta(seconds=30))) == [
        ("waiting", None, 30.0, True)]
    failing = make_run("add", State.FAILED, created_at=T0, enqueued_at=T0, message_id="7",
                       timeline=[entry(0, "", State.READY, "enqueued"),
                                 entry(1, State.READY, State.RUNNING, "attempt 1 on w"),
                                 entry(2, State.RUNNING, State.FAILED, "attempt 1: E")])
    assert kinds(spans.run_spans(failing, now=T0 + timedelta(seconds=12))) == [
        ("waiting", None, 1.0, False), ("running", 1, 1.0, False), ("backoff", 2, 10.0, True)]
    failing.gave_up = True  # nothing more will come
    assert [s.kind for s in spans.run_spans(failing, now=T0)] == ["waiting", "running"]


def test_the_run_page_shows_the_spans_to_scale(client, admin_user):
    run = retried_run()
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        client.force_login(admin_user)
        page = client.get(f"/admin/gyrinx_tasks/taskexecution/{run.pk}/change/")
    html = page.content.decode()
    assert "Time spent" in html
    assert html.count('class="gyrinx-span-row"') == 4
    assert 'data-kind="backoff"' in html
    # Widths are shares of the 13.5 s: the backoff 10 s is 74.074 %.
    assert 'gyrinx-span gyrinx-span-backoff" style="width: 74.074%"' in html
    assert "Pub/Sub backoff: <strong>10.0 s</strong>" in html

