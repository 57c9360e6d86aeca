"""Give up and retry a run stuck RUNNING past its ack deadline, in a real browser (Debian's
Chromium) on a live server: the run page's panel, its confirmation in place (htmx) and the
result; the stuck list's bulk action and its confirmation page; and what the confirm button
shows after an expired session, a 403 and a 500 (static/gyrinx_tasks/htmx-errors.js). At
1280 px (nav sidebar open) and 390 px, light and dark, each checked for layout problems and
axe-core's serious and critical violations.

The screenshots land in docs/screenshots/ as <name>-<width>.png and <name>-<width>-dark.png.
"""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import State, TaskExecution
from tests.helpers import FakePublisher, make_run
from tests.infra.browser import holds_up, log_in, shoot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True), pytest.mark.clock]

VIEWPORTS = {1280: 800, 390: 844}
RUNS = "admin:gyrinx_tasks_taskexecution_changelist"


def stuck_run(arg="hi", started_ago=timedelta(minutes=9)):
    """An echo run RUNNING at attempt 2, started ``started_ago`` (echo's deadline: 300 s)."""
    now = timezone.now()
    run = make_run("echo", State.RUNNING, args=[arg], message_id=f"m-{arg}")
    TaskExecution.objects.filter(pk=run.pk).update(
        attempts=2,
        worker_ids=["worker-a", "worker-b"],
        delivery_attempt=2,
        enqueued_at=now - timedelta(minutes=30),
        created_at=now - timedelta(minutes=30),
        started_at=now - timedelta(minutes=25),
        last_attempted_at=now - started_ago,
    )
    return TaskExecution.objects.get(pk=run.pk)


@pytest.fixture
def published(monkeypatch):
    """What the backends publish, in every thread (the live server's too): a class-level
    property wins over the per-instance cached publisher."""
    from gyrinx_tasks.backend import PubSubBackend

    fake = FakePublisher()
    monkeypatch.setattr(PubSubBackend, "publisher", property(lambda self: fake))
    return fake.published


def change_url(live_server, run):
    return live_server.url + reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])



def test_give_up_and_retry_from_the_run_page_asks_first_in_place(
    admin_page, live_server, published
):
    page = admin_page
    problems = []
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        run = stuck_run(f"w{width}")
        page.goto(change_url(live_server, run))
        button = page.locator(".gyrinx-abandon-button")
        assert button.is_visible()
        assert "has recorded no outcome within its ack deadline" in page.inner_text(
            "#gyrinx-abandon"
        )
        if width == 1280:
            assert page.locator("#nav-sidebar").is_visible()
        problems += holds_up(page, f"stuck run at {width} px")
        shoot(page, "run-abandon", width)

        page.evaluate("window.__marker = 1")
        button.click()
        page.wait_for_selector(".gyrinx-abandon-confirm")
        text = page.inner_text("#gyrinx-abandon")
        assert "Give up attempt 2 as lost and retry the run?" in text
        assert "If its worker is still alive" in text and "the task then runs twice" in text
        assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING  # only asked
        problems += holds_up(page, f"confirmation at {width} px")
        shoot(page, "run-abandon-confirm", width)

        page.click(".gyrinx-abandon-confirm-button")
        page.wait_for_selector(".gyrinx-abandon-done")
        assert page.evaluate("window.__marker") == 1  # swapped in place, no navigation
        new = TaskExecution.objects.get(retry_of=run)
        assert new.result_id in page.inner_text("#gyrinx-abandon")
        assert TaskExecution.objects.get(pk=run.pk).status == State.FAILED
        assert page.locator("#gyrinx-cancel").count() == 0  # "running" no more
        problems += holds_up(page, f"given up at {width} px")
        shoot(page, "run-abandoned", width)

        # Reloaded: failed for good, the reason on the page, its retry listed, no button.
        page.reload()
        assert "Attempt 2 given up as lost by admin" in page.inner_text("#content")
        assert page.locator(".gyrinx-abandon-button").count() == 0
        assert new.result_id in page.inner_text("#gyrinx-retry")
    assert (
        LogEntry.objects.filter(
            change_message__startswith="Gave up the running attempt as lost"
        ).count()
        == 2
    )
    assert sorted(message["task_id"] for _topic, message, _attrs in published) == sorted(
        TaskExecution.objects.filter(retry_of__isnull=False).values_list("result_id", flat=True)
    )
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_give_up_the_stuck_runs_of_the_filtered_list_through_the_confirmation(
    admin_page, live_server, published
):
    page = admin_page
    problems = []
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        TaskExecution.objects.all().delete()
        stuck = [stuck_run(f"s{width}-{i}") for i in range(3)]
        page.goto(f"{live_server.url}{reverse(RUNS)}?stuck=running")
        assert page.locator("#result_list tbody tr").count() == 3
        page.check("#action-toggle")
        page.select_option("select[name=action]", "abandon_selected")
        page.click(".actions button[type=submit]")

        page.wait_for_selector(".gyrinx-abandon-confirm")
        text = page.inner_text(".gyrinx-abandon-confirm")
        assert "Runs selected: 3." in text
        assert "to be given up as lost and retried as new runs: 3." in text
        assert "that task then runs twice" in text
        assert not TaskExecution.objects.filter(retry_of__isnull=False).exists()
        problems += holds_up(page, f"bulk confirmation at {width} px")
        shoot(page, "runs-abandon-confirm", width)
        if width == 1280:
            continue  # confirmed at the phone's width

        page.click("input[type=submit][value='Yes, give up and retry 3 runs']")
        page.wait_for_selector(".messagelist")
        assert "Gave up 3 stuck runs and retried them as new runs" in page.inner_text(
            ".messagelist"
        )
        assert len(published) == 3
        for run in stuck:
            assert TaskExecution.objects.get(pk=run.pk).status == State.FAILED
            assert TaskExecution.objects.filter(retry_of=run).count() == 1
    assert not problems, "\n".join(dict.fromkeys(problems))


# --- What the confirm button shows when the request does not succeed -------------------------


def ask(page, live_server, run):
    page.goto(change_url(live_server, run))
    page.click(".gyrinx-abandon-button")
    page.wait_for_selector(".gyrinx-abandon-confirm-button")


def test_an_expired_session_goes_to_the_login_page_and_changes_nothing(admin_page, live_server):
    page = admin_page
    run = stuck_run()
    ask(page, live_server, run)
    Session.objects.all().delete()
    page.click(".gyrinx-abandon-confirm-button")
    page.wait_for_url("**/admin/login/?next=*")
    assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING
    assert not TaskExecution.objects.filter(retry_of=run).exists()


def test_refused_by_permission_says_so_next_to_the_button(page, live_server):
    user = User.objects.create_user("oncall", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_taskexecution", "retry_taskexecution"])
    )
    log_in(page, live_server.url, "oncall", "pw")
    run = stuck_run()
    ask(page, live_server, run)
    user.user_permissions.remove(Permission.objects.get(codename="retry_taskexecution"))

    page.click(".gyrinx-abandon-confirm-button")
    note = page.locator("#gyrinx-abandon .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text().startswith("Not allowed (403)")
    assert page.locator(".gyrinx-abandon-confirm-button").is_visible()  # nothing swapped
    assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING


def test_a_server_error_says_the_action_may_not_have_happened(admin_page, live_server, monkeypatch):
    from gyrinx_tasks.admin import executions

    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    page = admin_page
    run = stuck_run()
    ask(page, live_server, run)
    monkeypatch.setattr(executions, "abandon_run", broken)
    page.click(".gyrinx-abandon-confirm-button")
    note = page.locator("#gyrinx-abandon .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text().startswith("Server error (500): the action may not have happened.")
    assert "database on fire" not in page.content()
    assert TaskExecution.objects.get(pk=run.pk).status == State.RUNNING
