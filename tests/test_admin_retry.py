"""The admin's Retry button, its bulk action and confirmation page: permissions and audit."""

import html
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from gyrinx_tasks.models import KillSwitch, State, TaskExecution, Trigger
from tests.helpers import CHANGELIST, make_run, shown, staff_user

pytestmark = pytest.mark.django_db

RETRY_PERMS = ("view_taskexecution", "retry_taskexecution")


def change_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])


def retry_url(run):
    return reverse("admin:gyrinx_tasks_taskexecution_retry", args=[run.pk])


def action_post(client, runs, query="", **extra):
    data = {"action": "retry_selected", "index": "0",
            "_selected_action": [str(run.pk) for run in runs], **extra}
    return client.post(reverse(CHANGELIST) + query, data)


@pytest.fixture
def viewer(client):
    client.force_login(staff_user("viewer", "view_taskexecution"))
    return client


@pytest.fixture
def retrier(client):
    user = staff_user("retrier", *RETRY_PERMS)
    client.force_login(user)
    client.user = user
    return client


# --- Without the permission -----------------------------------------------------------------

def test_without_permission_no_button_and_a_forged_post_is_refused(viewer, fake_publisher):
    run = make_run("add", State.FAILED)

    page = viewer.get(change_url(run))
    assert page.status_code == 200
    assert "gyrinx-retry-button" not in page.content.decode()
    assert "retry_selected" not in viewer.get(reverse(CHANGELIST)).content.decode()

    assert viewer.post(retry_url(run)).status_code == 403
    assert viewer.post(retry_url(run), HTTP_HX_REQUEST="true").status_code == 403
    assert action_post(viewer, [run]).status_code == 403
    assert action_post(viewer, [run], select_across="1", confirm="yes").status_code == 403

    assert TaskExecution.objects.count() == 1
    assert fake_publisher.published == []
    assert not LogEntry.objects.exists()


# --- One run from its page ------------------------------------------------------------------

def test_button_shown_only_for_retryable_runs(retrier):
    for status in State:
        run = make_run("add", status)
        page = retrier.get(change_url(run)).content.decode()
        assert ("gyrinx-retry-button" in page) == (status in ("FAILED", "REJECTED", "SKIPPED"))
        if status == State.FAILED:
            assert f'hx-post="{retry_url(run)}"' in page
            assert f'action="{retry_url(run)}"' in page  # works without JavaScript too


def test_plain_post_retries_and_redirects_to_the_new_run(retrier, fake_publisher):
    run = make_run("add", State.FAILED, args=[1, 2])

    response = retrier.post(retry_url(run))

    new = TaskExecution.objects.get(retry_of=run)
    assert response.status_code == 302
    assert response["Location"] == change_url(new)
    assert (new.trigger, new.status) == (Trigger.RETRY, State.READY)
    assert len(fake_publisher.published) == 1
    [entry] = LogEntry.objects.all()
    assert (entry.user, entry.object_id) == (retrier.user, str(run.pk))
    assert entry.change_message == f"Retried as run {new.pk} ({new.result_id})."
    # The new run's page links back; the original's page lists it.
    page = retrier.get(change_url(new)).content.decode()
    assert change_url(run) in page
    assert change_url(new) in retrier.get(change_url(run)).content.decode()
    # The message names what happened and links to it (it used to print the raw result id).
    assert (f'Retried run <a href="{change_url(run)}">{run.result_id[:8]}</a> of add: this is '
            "the new run.") in page


def test_htmx_post_answers_the_panel_with_a_link_to_the_new_run(retrier, fake_publisher):
    run = make_run("add", State.REJECTED)

    response = retrier.post(retry_url(run), HTTP_HX_REQUEST="true")

    new = TaskExecution.objects.get(retry_of=run)
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="gyrinx-retry"')
    assert "<html" not in body
    assert f'href="{change_url(new)}"' in body and "Retried as" in body
    assert LogEntry.objects.get().object_id == str(run.pk)


def test_refusal_is_a_sentence_not_a_500(retrier, fake_publisher):
    KillSwitch.objects.create(task_name="add", enabled=False)
    run = make_run("add", State.FAILED)

    fragment = retrier.post(retry_url(run), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    assert "Kill switch for add is off" in fragment.content.decode()

    plain = retrier.post(retry_url(run), follow=True)
    assert plain.redirect_chain == [(change_url(run), 302)]
    assert "Kill switch for add is off" in plain.content.decode()

    assert TaskExecution.objects.count() == 1
    assert fake_publisher.published == []
    assert not LogEntry.objects.exists()


def test_retrying_a_successful_run_by_a_forged_post_is_refused(retrier, fake_publisher):
    run = make_run("add", State.SUCCESSFUL)
    response = retrier.post(retry_url(run), HTTP_HX_REQUEST="true")
    assert "only failed, rejected or skipped runs can be retried" in response.content.decode()
    assert TaskExecution.objects.count() == 1


def test_get_changes_nothing(retrier, fake_publisher):
    run = make_run("add", State.FAILED)
    assert retrier.get(retry_url(run)).status_code == 405
    assert TaskExecution.objects.count() == 1
    assert retrier.post(reverse("admin:gyrinx_tasks_taskexecution_retry",
                                args=[run.pk + 99])).status_code == 404


def test_a_run_with_many_retries_links_to_all_of_them(retrier):
    run = make_run("add", State.FAILED)
    retries = [make_run("add", State.FAILED, trigger=Trigger.RETRY, retry_of=run)
               for _ in range(21)]
    make_run("add", State.FAILED)  # not a retry of run

    page = retrier.get(change_url(run)).content.decode()
    assert page.count('class="gyrinx-status gyrinx-status-failed"') >= 20
    link = f"{reverse(CHANGELIST)}?retry_of={run.pk}"
    assert link in page

    listed = retrier.get(link)
    assert listed.status_code == 200
    assert sorted(shown(listed)) == sorted(r.result_id[:8] for r in retries)


# --- Bulk -----------------------------------------------------------------------------------

def test_retry_selected_retries_those_runs_and_logs_each(retrier, fake_publisher):
    chosen = [make_run("add", State.FAILED, args=[i, i]) for i in range(3)]
    other = make_run("add", State.FAILED)
    done = make_run("add", State.SUCCESSFUL)

    response = action_post(retrier, [*chosen, done])

    assert response.status_code == 302
    retried = TaskExecution.objects.filter(trigger=Trigger.RETRY)
    assert sorted(retried.values_list("retry_of_id", flat=True)) == [r.pk for r in chosen]
    assert not other.retries.exists() and not done.retries.exists()
    entries = LogEntry.objects.order_by("object_id")
    assert [e.object_id for e in entries] == [str(r.pk) for r in chosen]
    assert all(e.change_message.startswith("Retried as run ") for e in entries)
    page = retrier.get(reverse(CHANGELIST)).content.decode()
    assert "1 selected runs were not failed, rejected or skipped" in page
    # The message links to exactly the new runs, and the list says how it is narrowed.
    new = sorted(retried.values_list("pk", flat=True))
    link = re.search(r'Retried 3 runs as new runs: <a href="([^"]+)">see the 3 new runs</a>\.',
                     page)
    assert link, page
    listed = retrier.get(html.unescape(link.group(1)))
    assert sorted(shown(listed)) == sorted(r.result_id[:8] for r in retried)
    assert f"Run id from {new[0]} up to {new[-1]}" in listed.content.decode()


def test_retrying_one_run_in_bulk_links_to_its_page(retrier, fake_publisher):
    run = make_run("add", State.FAILED)

    action_post(retrier, [run])

    new = TaskExecution.objects.get(retry_of=run)
    page = retrier.get(reverse(CHANGELIST)).content.decode()
    change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[new.pk])
    assert f'Retried 1 run as a new run: <a href="{change}">see it</a>.' in page


def test_a_run_that_changes_during_a_bulk_retry_is_left_alone_and_counted(
        retrier, fake_publisher, monkeypatch):
    runs = [make_run("add", State.FAILED, args=[i, i]) for i in range(3)]
    real = TaskExecution.record_retried

    def delivered_meanwhile(run, *args, **kwargs):
        if run.pk == runs[1].pk:  # a delivery starts it after the bulk retry read it
            TaskExecution.objects.filter(pk=run.pk).update(status=State.RUNNING, attempts=1)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(TaskExecution, "record_retried", delivered_meanwhile)
    action_post(retrier, runs)

    assert [run.retries.count() for run in runs] == [1, 0, 1]
    page = retrier.get(reverse(CHANGELIST)).content.decode()
    assert "Retried 2 runs as new runs" in page
    assert "1 runs changed while they were being retried (a delivery, or another retry)" in page
    assert [e.object_id for e in LogEntry.objects.order_by("object_id")] == [
        str(runs[0].pk), str(runs[2].pk)]


def test_select_across_asks_first_with_the_count_and_the_cap(retrier, fake_publisher):
    failed = [make_run("add", State.FAILED) for _ in range(4)]
    make_run("echo", State.FAILED)
    make_run("add", State.SUCCESSFUL)

    page = action_post(retrier, failed[:1], query="?task_name=add", select_across="1")

    body = page.content.decode()
    assert page.status_code == 200
    assert "Runs matching: 5." in body
    assert "to be retried as new runs: 4." in body
    assert "at most 1,000 runs" in body
    assert "<code>task_name=add</code>" in body
    assert 'name="confirm" value="yes"' in body
    assert TaskExecution.objects.count() == 6  # nothing enqueued yet
    assert fake_publisher.published == []

    confirmed = action_post(retrier, failed[:1], query="?task_name=add", select_across="1",
                            confirm="yes")

    assert confirmed.status_code == 302
    assert sorted(TaskExecution.objects.filter(trigger=Trigger.RETRY)
                  .values_list("retry_of_id", flat=True)) == [r.pk for r in failed]
    assert LogEntry.objects.count() == 4


@override_settings(TASKS_ADMIN_RETRY_LIMIT=2)
def test_select_across_over_the_cap_says_so_and_enqueues_nothing(retrier, fake_publisher):
    runs = [make_run("add", State.FAILED) for _ in range(3)]

    page = action_post(retrier, runs[:1], select_across="1").content.decode()
    assert "to be retried as new runs: more than 2." in page
    assert "one click may retry at most 2 (the TASKS_ADMIN_RETRY_LIMIT setting)" in page
    assert 'name="confirm"' not in page

    # A forged confirmation is refused the same way.
    forged = action_post(retrier, runs[:1], select_across="1", confirm="yes")
    assert forged.status_code == 302
    follow = retrier.get(forged["Location"]).content.decode()
    assert "one click may retry at most 2" in follow
    assert TaskExecution.objects.count() == 3
    assert fake_publisher.published == []
    assert not LogEntry.objects.exists()


@override_settings(TASKS_ADMIN_RETRY_LIMIT=2)
def test_select_across_of_exactly_the_cap_says_how_many_and_may_go_ahead(retrier,
                                                                          fake_publisher):
    runs = [make_run("add", State.FAILED) for _ in range(2)]

    page = action_post(retrier, runs[:1], select_across="1").content.decode()

    assert "to be retried as new runs: 2." in page and "more than 2" not in page
    assert 'name="confirm" value="yes"' in page


def test_a_bulk_retry_that_retried_nothing_says_so_as_a_warning(retrier, fake_publisher):
    KillSwitch.objects.create(task_name="add", enabled=False)
    run = make_run("add", State.FAILED)

    action_post(retrier, [run])

    page = retrier.get(reverse(CHANGELIST)).content.decode()
    assert '<li class="warning">Retried 0 runs as new runs.</li>' in page
    assert "1 not retried: Kill switch for add is off" in page
    assert not run.retries.exists() and fake_publisher.published == []


# --- The retry panel follows its retries until they settle -----------------------------------

def panel_url(run, **query):
    url = reverse("admin:gyrinx_tasks_taskexecution_retry_panel", args=[run.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def test_panel_polls_while_a_retry_is_queued_or_running_and_stops_once_it_settles(viewer):
    original = make_run("add", State.FAILED)
    retry = make_run("add", State.READY, trigger=Trigger.RETRY, retry_of=original)

    page = viewer.get(change_url(original)).content.decode()
    panel = page[page.index('id="gyrinx-retry"'):]
    assert f'hx-get="{panel_url(original)}"' in panel.split(">")[0]
    assert 'data-polling="true"' in panel.split(">")[0]

    for status, badge in ((State.RUNNING, "gyrinx-status-running"),
                          (State.SUCCESSFUL, "gyrinx-status-successful")):
        TaskExecution.objects.filter(pk=retry.pk).update(status=status)
        response = viewer.get(panel_url(original), headers={"HX-Request": "true"})
        assert response.status_code == 200
        body = response.content.decode()
        assert body.lstrip().startswith('<div id="gyrinx-retry"') and "<html" not in body
        assert badge in body
    # Settled: the panel no longer asks to be polled, so htmx stops.
    assert 'data-polling="false"' in body and "hx-trigger" not in body.split(">")[0]


def test_panel_polls_while_any_of_its_retries_is_unsettled(viewer):
    original = make_run("add", State.FAILED)
    make_run("add", State.FAILED, trigger=Trigger.RETRY, retry_of=original)
    make_run("add", State.RUNNING, trigger=Trigger.RETRY, retry_of=original)

    body = viewer.get(panel_url(original), headers={"HX-Request": "true"}).content.decode()

    assert 'data-polling="true"' in body.split(">")[0]


def test_panel_after_a_retry_click_keeps_saying_retried_as(retrier):
    original = make_run("add", State.FAILED)
    retry = make_run("add", State.READY, trigger=Trigger.RETRY, retry_of=original)
    body = retrier.get(panel_url(original, new=retry.pk),
                       headers={"HX-Request": "true"}).content.decode()
    assert "Retried as" in body and retry.result_id in body
    assert f'hx-get="{panel_url(original, new=retry.pk)}"' in body
    # Only a retry of this run is named so; another run's id is ignored.
    other = make_run("add", State.READY)
    body = retrier.get(panel_url(original, new=other.pk),
                       headers={"HX-Request": "true"}).content.decode()
    assert "Retried as" not in body


def test_panel_changes_nothing_and_needs_view_permission(client, viewer):
    original = make_run("add", State.FAILED)
    assert viewer.post(panel_url(original)).status_code == 405
    # Without HTMX, the run's page.
    assert viewer.get(panel_url(original))["Location"] == change_url(original)
    client.force_login(staff_user("nobody"))
    assert client.get(panel_url(original), headers={"HX-Request": "true"}).status_code == 403
    assert TaskExecution.objects.count() == 1 and not LogEntry.objects.exists()


# --- Off the happy path: a failed publish, a retry of a retry, a bulk retry's queries --------

@pytest.mark.parametrize("error, status, said", [
    (PermissionError("not allowed to publish"), State.FAILED,
     "Publishing it failed; the new run is FAILED."),
    # Timed out: Pub/Sub may have the message, so the new run stays READY.
    (TimeoutError("publish timed out"), State.READY,
     "Publishing it was not confirmed; the new run stays READY and runs if Pub/Sub "
     "delivers it."),
])
@pytest.mark.parametrize("how", ["button", "bulk"])
def test_a_retry_whose_publish_failed_is_audited_with_the_new_runs_state(
        retrier, fake_publisher, error, status, said, how):
    fake_publisher.error = error
    run = make_run("add", State.FAILED)

    if how == "button":
        body = retrier.post(retry_url(run), HTTP_HX_REQUEST="true").content.decode()
        assert "but publishing it failed" in body
    else:
        action_post(retrier, [run])
        page = retrier.get(reverse(CHANGELIST)).content.decode()
        assert "Publishing failed for 1 retries; those new runs are recorded as FAILED" in page

    new = TaskExecution.objects.get(retry_of=run)
    assert new.status == status
    [entry] = LogEntry.objects.all()
    assert (entry.user, entry.object_id) == (retrier.user, str(run.pk))
    assert entry.change_message == f"Retried as run {new.pk} ({new.result_id}). {said}"


def test_a_retry_of_a_retry_links_to_the_run_it_retried(retrier, fake_publisher):
    first = make_run("add", State.FAILED, args=[1, 2])
    second = make_run("add", State.FAILED, trigger=Trigger.RETRY, retry_of=first, args=[1, 2])

    retrier.post(retry_url(second))

    third = TaskExecution.objects.get(retry_of=second)
    assert (third.trigger, third.args) == (Trigger.RETRY, [1, 2])
    assert list(first.retries.all()) == [second]  # not a second retry of the first run
    assert third.timeline[0]["note"].startswith(f"retry of {second.result_id} by retrier")
    assert LogEntry.objects.get().object_id == str(second.pk)
    # The new run's page links back to the run that was retried, not to the first.
    panel = retrier.get(change_url(third)).content.decode()
    panel = panel[panel.index('id="gyrinx-retry"'):]
    assert change_url(second) in panel and change_url(first) not in panel


def test_a_bulk_retry_reads_6_runs_in_as_many_queries_as_2(retrier, fake_publisher):
    # The changelist's queryset defers the payload and the timeline; a bulk retry must not
    # then read them one query per run (only() does not undo a defer()). Each original is
    # marked by its own conditional UPDATE (models.py's transitions), so those grow with N.
    counts = []
    for count in (1, 2, 6):  # the first warms the caches (session, content type)
        runs = [make_run("add", State.FAILED, args=[i, i]) for i in range(count)]
        with CaptureQueriesContext(connection) as captured:
            response = action_post(retrier, runs)
        assert response.status_code == 302
        assert TaskExecution.objects.filter(retry_of__in=runs).count() == count
        sql = [query["sql"] for query in captured.captured_queries]
        marks = sum(text.startswith('UPDATE "gyrinx_tasks_taskexecution"') for text in sql)
        counts.append((marks, len(sql) - marks))

    assert [marks for marks, _ in counts] == [1, 2, 6]
    assert counts[1][1] == counts[2][1], counts
    assert len(fake_publisher.published) == 9
