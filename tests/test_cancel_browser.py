"""Cancel in a real browser (Debian's Chromium), on a live server: a READY run's Cancel
button (htmx swaps the panel in place), a RUNNING run's page saying why it cannot be
cancelled, and the confirmation of "Cancel selected runs" across a filter, at 1280 px (nav
sidebar open) and 390 px, light and dark, each checked for layout problems and axe-core's
serious and critical violations.

The screenshots land in docs/screenshots/ as <name>-<width>.png and <name>-<width>-dark.png.
"""

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from gyrinx_tasks.models import State, TaskExecution
from tests.helpers import make_run
from tests.infra.browser import holds_up, shoot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {1280: 800, 390: 844}
CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"


def change_url(live_server, run):
    return live_server.url + reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])



def test_cancel_a_ready_run_from_its_page_in_place(admin_page, live_server):
    page = admin_page
    problems = []
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        run = make_run("echo", args=["never"])
        page.goto(change_url(live_server, run))
        button = page.locator(".gyrinx-cancel-button")
        assert button.is_visible()
        if width == 1280:
            assert page.locator("#nav-sidebar").is_visible()
        problems += holds_up(page, f"ready run at {width} px")
        shoot(page, "run-detail-cancel", width)

        page.evaluate("window.__marker = 1")
        button.click()
        page.wait_for_selector(".gyrinx-cancel-done")
        assert page.evaluate("window.__marker") == 1  # swapped in place, no navigation
        assert "Cancelled by admin before it started" in page.inner_text("#gyrinx-cancel")
        assert page.locator(".gyrinx-cancel-button").count() == 0
        assert TaskExecution.objects.get(pk=run.pk).status == State.CANCELLED
        problems += holds_up(page, f"cancelled in place at {width} px")
        shoot(page, "run-detail-cancelled", width)

        # Reloaded: the run is CANCELLED with the reason, and nothing more to cancel.
        page.reload()
        assert "Cancelled by admin before it started" in page.inner_text("#content")
        assert page.locator("#gyrinx-cancel").count() == 0
    assert (
        LogEntry.objects.filter(
            change_message="Cancelled before it started: the task will not run."
        ).count()
        == 2
    )
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_a_running_runs_page_says_why_it_cannot_be_cancelled(admin_page, live_server):
    page = admin_page
    run = make_run("echo", State.RUNNING, attempts=1)
    problems = []
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(change_url(live_server, run))
        refused = page.locator(".gyrinx-cancel-refused")
        assert refused.is_visible()
        assert "a task that has started cannot be stopped from here" in refused.inner_text()
        assert page.locator(".gyrinx-cancel-button").count() == 0
        problems += holds_up(page, f"running run at {width} px")
        shoot(page, "run-detail-running", width)
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_cancel_every_ready_run_of_a_task_through_the_confirmation(admin_page, live_server):
    page = admin_page
    ready = [make_run("echo", args=[i]) for i in range(55)]  # more than one page of 50
    running = make_run("echo", State.RUNNING, attempts=1)
    make_run("echo", State.SUCCESSFUL)
    other = make_run("add")
    problems = []
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{live_server.url}{reverse(CHANGELIST)}?task_name=echo")
        page.check("#action-toggle")
        page.click(".actions .question a")  # "Select all 57 task executions"
        page.select_option("select[name=action]", "cancel_selected")
        page.click(".actions button[type=submit]")

        page.wait_for_selector(".gyrinx-confirm")
        text = page.inner_text(".gyrinx-confirm")
        assert "Cancel every ready run matching this filter" in text
        assert "task_name=echo" in text
        assert "Runs matching: 57." in text
        assert "to be cancelled: 55." in text
        assert "Running, left alone because a task that has started cannot be stopped: 1." in text
        assert "at most 1,000 runs" in text
        assert not TaskExecution.objects.filter(status=State.CANCELLED).exists()
        problems += holds_up(page, f"cancel confirmation at {width} px")
        shoot(page, "cancel-confirm", width)
        if width == 1280:
            continue  # confirmed at the phone's width

        page.click("input[type=submit][value='Yes, cancel 55 runs']")
        page.wait_for_selector(".messagelist")
        messages = page.inner_text(".messagelist")
        assert "Cancelled 55 runs: their tasks will not run." in messages
        assert "1 selected runs were running and were left alone" in messages
    assert set(
        TaskExecution.objects.filter(status=State.CANCELLED).values_list("pk", flat=True)
    ) == {run.pk for run in ready}
    assert TaskExecution.objects.get(pk=running.pk).status == State.RUNNING
    assert TaskExecution.objects.get(pk=other.pk).status == State.READY
    assert LogEntry.objects.count() == 55
    assert not problems, "\n".join(dict.fromkeys(problems))
