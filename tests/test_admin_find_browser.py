"""Finding a failure in a real browser (Debian's Chromium): the run list's search, columns,
filter and chips, a run's attempts, the overview's recent failures, the kill switch on the
scheduled jobs, and the kill-switch page's note, at 1280 px and 390 px, light and dark.

The screenshots land in docs/screenshots/ as <name>-<width>.png and <name>-<width>-dark.png.
"""

from datetime import timedelta
from itertools import count
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import KillSwitch, State, SwitchMode, TaskExecution, Trigger
from tests.infra.browser import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# A laptop with the nav sidebar open, and a phone.
VIEWPORTS = {1280: 800, 390: 844}
CHANGELIST = "admin:gyrinx_tasks_taskexecution_changelist"
MESSAGE_IDS = count(1700000000001)


def run(task, status, minutes_ago, error_class="", trigger=Trigger.ENQUEUE, retry_of=None,
        attempts=1, workers=("tasks-00042-abc/instance-1",), gave_up=False):
    created = timezone.now() - timedelta(minutes=minutes_ago)
    started = created + timedelta(seconds=2)
    timeline = [{"at": created.isoformat(), "from": "", "to": "READY", "note": "enqueued"}]
    errors = []
    at = started
    for number in range(1, attempts + 1):
        worker = workers[(number - 1) % len(workers)]
        timeline.append({"at": at.isoformat(), "from": "READY" if number == 1 else "FAILED",
                         "to": "RUNNING", "note": f"attempt {number} on {worker}"})
        end = at + timedelta(milliseconds=180 + 40 * number)
        last = number == attempts
        outcome = status if last else State.FAILED
        if outcome == State.FAILED:
            errors.append({"exception_class_path": error_class or "builtins.RuntimeError",
                           "attempt": number, "at": end.isoformat(),
                           "traceback": "Traceback (most recent call last):\n  ...\n"
                                        f"{error_class}: upstream said no"})
        timeline.append({"at": end.isoformat(), "from": "RUNNING", "to": outcome,
                         "note": f"attempt {number}: {error_class}" if outcome == "FAILED"
                         else ""})
        at = end + timedelta(seconds=10 * number)
    execution = TaskExecution.objects.create(
        task_name=task, task_path=f"tests.tasks.{task}", status=status, trigger=trigger,
        retry_of=retry_of, created_at=created, enqueued_at=created, attempts=attempts,
        started_at=started, finished_at=at, errors=errors, timeline=timeline,
        worker_ids=list(workers[:attempts]), message_id=str(next(MESSAGE_IDS)),
        gave_up=gave_up)
    execution.task_id = execution.result_id
    execution.save(update_fields=["task_id"])
    return execution


@pytest.fixture
def incident():
    """An hour of runs with a few failures: some retried (one recovered), some not. A
    FAILED run Pub/Sub still redelivers is failing (will retry); one retried by staff, or
    given up, has failed for good."""
    runs = {}
    for minute in range(2, 60, 3):
        run("add", State.SUCCESSFUL, minute)
    runs["timeout"] = run("flaky", State.FAILED, 12, "requests.exceptions.ReadTimeout",
                          attempts=3, workers=("tasks-00042-abc/instance-1",
                                               "tasks-00042-abc/instance-4"))
    runs["recovered"] = run("explode", State.FAILED, 40, "builtins.RuntimeError",
                            gave_up=True)
    runs["retry"] = run("explode", State.SUCCESSFUL, 30, trigger=Trigger.RETRY,
                        retry_of=runs["recovered"])
    runs["pending"] = run("explode", State.FAILED, 8, "builtins.RuntimeError", gave_up=True)
    runs["failed_retry"] = run("explode", State.FAILED, 5, "builtins.RuntimeError",
                               trigger=Trigger.RETRY, retry_of=runs["pending"])
    run("echo", State.FAILED, 25, "myapp.payments.PaymentDeclined", gave_up=True)
    return runs


def views(page, url, name, check):
    """Open ``url`` at each width, run ``check(page, width)``, take both screenshots."""
    for width, height in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(url)
        check(page, width)
        save_screenshot(page, f"{name}-{width}")
        save_screenshot(page, f"{name}-{width}", dark=True)


def fits(page, selector):
    """Whether every element matching ``selector`` ends inside the viewport's width."""
    return page.evaluate(
        """s => [...document.querySelectorAll(s)].every(
            e => e.getBoundingClientRect().right <= document.documentElement.clientWidth + 1)""",
        selector)


def test_run_list_search_columns_recovery_filter_and_chip(admin_page, live_server, incident):
    page = admin_page
    now = timezone.now()
    window = {"created_at__gte": (now - timedelta(hours=1)).isoformat(),
              "created_at__lt": (now + timedelta(minutes=1)).isoformat()}
    url = f"{live_server.url}{reverse(CHANGELIST)}?{urlencode(window)}"

    def check(page, width):
        # The overview's window shows as a chip, within the screen at both widths.
        chip = page.locator(".gyrinx-chip")
        assert chip.count() == 1 and chip.first.is_visible()
        assert chip.first.inner_text().startswith("Created from ")
        assert fits(page, ".gyrinx-chip")
        # Search by exception class: the class column says what failed.
        page.fill("#searchbar", "RuntimeError")
        page.press("#searchbar", "Enter")
        page.wait_for_url("**q=RuntimeError**")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 3
        assert page.locator("#result_list .gyrinx-error-class").all_inner_texts() == [
            "RuntimeError"] * 3
        # Which were retried, and by what; then only what is not yet recovered.
        recovered = page.locator("#result_list tr", has_text=incident["recovered"].result_id[:8])
        assert "retried as" in recovered.locator(".field-status_badge").inner_text()
        # A failed attempt Pub/Sub redelivers reads "Failing, will retry", apart from "Failed".
        retrying = page.locator("#result_list tr",
                                has_text=incident["failed_retry"].result_id[:8])
        assert retrying.locator(".gyrinx-status").first.inner_text() == "Failing, will retry"
        assert recovered.locator(".gyrinx-status").first.inner_text() == "Failed"
        assert "Successful" in recovered.locator(".gyrinx-retried").inner_text()
        page.locator("#changelist-filter a", has_text="Not yet recovered").click()
        page.wait_for_url("**recovery=pending**")
        # The failing one is not there yet: Pub/Sub delivers it again, it may still succeed.
        assert page.locator("#result_list tbody th a").all_inner_texts() == [
            incident["pending"].result_id[:8]]
        assert page.locator(".gyrinx-chip").count() == 1  # the window is still applied

    views(page, url, "runs-find", check)

    # Removing the chip removes the window and keeps the search.
    page.locator(".gyrinx-chip-remove").click()
    page.wait_for_selector("#result_list")
    assert page.locator(".gyrinx-chip").count() == 0
    assert "created_at__gte" not in page.url and "q=RuntimeError" in page.url


def test_task_name_search_finds_the_failures_of_a_task(admin_page, live_server, incident):
    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server.url}{reverse(CHANGELIST)}")
    page.fill("#searchbar", "flak")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**q=flak**")
    assert page.locator("#result_list tbody th a").all_inner_texts() == [
        incident["timeout"].result_id[:8]]
    assert page.locator("#result_list .gyrinx-error-class").inner_text() == "ReadTimeout"


def test_run_page_shows_the_attempts_on_the_first_screen(admin_page, live_server, incident):
    target = incident["timeout"]
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_taskexecution_change', args=[target.pk])}"

    def check(page, width):
        table = page.locator(".gyrinx-attempts")
        assert table.is_visible()
        assert page.locator(".gyrinx-attempt").count() == 3
        first = page.locator(".gyrinx-attempt").first.inner_text()
        assert "ReadTimeout" in first and "tasks-00042-abc/instance-1" in first
        if width == 1280:
            # Whole on the first screen of a laptop, before the tracebacks and the timeline.
            last = page.locator(".gyrinx-attempt").last.bounding_box()
            assert last["y"] + last["height"] < 800
        assert (table.bounding_box()["y"] < page.locator(".gyrinx-errors").bounding_box()["y"]
                < page.locator(".gyrinx-timeline").bounding_box()["y"])
        # The table scrolls inside its own box rather than out of the screen.
        assert fits(page, ".gyrinx-attempts-wrap")

    views(page := admin_page, url, "run-attempts", check)
    assert page.locator(".gyrinx-attempts").count() == 1


def test_overview_lists_recent_failures_with_links(admin_page, live_server, incident):
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_overview_changelist')}"

    def check(page, width):
        panel = page.locator(".gyrinx-failures")
        assert panel.is_visible()
        rows = panel.locator(".gyrinx-failure")
        assert rows.count() == 5
        # Each says whether it gave up or will retry (the failed retry and the timeout will).
        assert panel.locator(".gyrinx-failure .gyrinx-warn").count() == 2
        assert rows.first.locator(".gyrinx-error-class").inner_text() == "RuntimeError"
        assert fits(page, ".gyrinx-failures-wrap")

    views(admin_page, url, "overview-failures", check)
    page = admin_page
    page.locator(".gyrinx-failure a", has_text=incident["failed_retry"].result_id[:8]).click()
    page.wait_for_selector(".gyrinx-attempts")
    assert incident["failed_retry"].result_id in page.content()


def test_scheduled_jobs_show_the_kill_switch_and_run_now_links_the_run(
        admin_page, live_server, settings, monkeypatch):
    settings.TASKS_REGISTRY = "tests.scheduling_tasks"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # no Cloud Scheduler calls
    KillSwitch.objects.create(task_name="nightly_report", enabled=False, mode=SwitchMode.SKIP,
                              reason="report database migrating (incident 57)")
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_scheduledjob_changelist')}"

    def check(page, width):
        switches = page.locator(".gyrinx-schedule-switch")
        assert switches.count() == 3
        off = page.locator("[data-task=nightly_report] .gyrinx-schedule-switch")
        assert "Off · skipping" in off.inner_text() and "incident 57" in off.inner_text()
        assert "On" in page.locator("[data-task=hourly_ping] .gyrinx-schedule-switch").inner_text()

    views(admin_page, url, "scheduled-jobs-switches", check)

    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(url)
    page.locator("[data-task=hourly_ping] .gyrinx-run-now").click()
    cell = page.locator("#gyrinx-lastrun-hourly_ping")
    cell.locator("a", has_text="Open the run").wait_for()
    assert "Ran hourly_ping now through the 'immediate' backend" in cell.inner_text()
    cell.locator("a", has_text="Open the run").click()
    page.wait_for_selector(".gyrinx-attempts")
    assert TaskExecution.objects.get(task_name="hourly_ping").trigger == Trigger.RUN_NOW
    # The switch links to the kill-switch page, which says what it can and cannot stop here.
    page.go_back()
    page.locator("[data-task=nightly_report] .gyrinx-schedule-switch a").click()
    page.wait_for_selector(".gyrinx-backend-note")


def test_kill_switch_page_says_where_the_switch_has_no_effect(admin_page, live_server,
                                                              settings):
    settings.TASKS_REGISTRY = "tests.scheduling_tasks"
    KillSwitch.objects.create(task_name="hourly_ping", enabled=False, mode=SwitchMode.HOLD,
                              reason="pinging a host under maintenance")
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_killswitch_changelist')}"

    def check(page, width):
        note = page.locator(".gyrinx-backend-note")
        assert note.count() == 1 and note.is_visible()
        assert "No effect on .enqueue() for hourly_ping, nightly_report, on_demand" in (
            note.inner_text())
        assert fits(page, ".gyrinx-backend-note")
        assert page.locator("#killswitch-hourly_ping .gyrinx-unqueued").is_visible()
        assert page.locator("#killswitch-published_nightly .gyrinx-unqueued").count() == 0

    views(admin_page, url, "kill-switches-local", check)
