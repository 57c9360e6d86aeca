"""Retry in a real browser (Debian's Chromium), on a live server, through the Pub/Sub emulator.

The retried runs are published to the emulator, which pushes them back to the live server's
endpoint, where they run: the whole path a retry takes in production, minus OIDC.
"""

import secrets
import time

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from gyrinx_tasks.models import State, TaskExecution, Trigger
from tests.helpers import CHANGELIST, make_run
from tests.infra.browser import save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.emulator,
              pytest.mark.django_db(transaction=True)]


@pytest.fixture
def wired(settings, pubsub_emulator, live_server, emulator_push):
    """The add task routed through the emulator to the live server, in a fresh namespace."""
    from django.tasks import task_backends

    settings.TASKS_ENVIRONMENT = "retry" + secrets.token_hex(4)
    settings.TASKS_VERIFY_OIDC = False  # the emulator sends no token
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    emulator_push("add", f"{live_server.url}/tasks/pubsub/")
    yield
    task_backends["default"].__dict__.pop("publisher", None)


def wait_until(check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not done within {timeout}s")


def failed_run(i):
    return make_run("add", State.FAILED, args=[i, 1], errors=[{
        "exception_class_path": "builtins.RuntimeError", "attempt": 1,
        "traceback": "Traceback (most recent call last):\nRuntimeError: database went away"}])


def test_retry_a_failed_run_from_its_page_without_a_reload(wired, admin_page, live_server):
    page = admin_page
    run = failed_run(41)
    make_run("add", State.SUCCESSFUL)

    # Filter the list down to failed runs and open the one there.
    page.goto(f"{live_server.url}{reverse(CHANGELIST)}")
    page.click("#changelist-filter a[href='?status=FAILED']")
    page.wait_for_url("**/?status=FAILED")
    assert page.locator("#result_list tbody tr").count() == 1
    page.click(f"#result_list a:has-text('{run.result_id[:8]}')")
    page.wait_for_selector(".gyrinx-retry-button")

    page.evaluate("window.__marker = 1")
    page.click(".gyrinx-retry-button")
    page.wait_for_selector(".gyrinx-retry-done")

    # The panel swapped in place: same document, no navigation.
    assert page.evaluate("window.__marker") == 1
    new = TaskExecution.objects.get(retry_of=run)
    link = page.locator(".gyrinx-retry-done a")
    assert link.get_attribute("href") == reverse(
        "admin:gyrinx_tasks_taskexecution_change", args=[new.pk])
    assert page.locator(".gyrinx-retry-button").count() == 0
    assert LogEntry.objects.get().change_message.startswith(f"Retried as run {new.pk} ")
    save_screenshot(page, "run-detail-retry")
    save_screenshot(page, "run-detail-retry", dark=True)

    # The retry went through Pub/Sub and ran; its page links back to the original.
    wait_until(lambda: TaskExecution.objects.get(pk=new.pk).status == State.SUCCESSFUL)
    assert TaskExecution.objects.get(pk=new.pk).return_value == 42
    link.click()
    page.wait_for_selector(".gyrinx-retry-of")
    assert run.result_id in page.inner_text(".gyrinx-retry-of")
    assert page.locator(".gyrinx-retry-button").count() == 0  # successful: nothing to retry


def test_bulk_retry_of_every_failed_run_through_the_confirmation(wired, admin_page,
                                                                live_server):
    page = admin_page
    runs = [failed_run(i) for i in range(55)]  # more than one page of 50
    make_run("add", State.SUCCESSFUL)
    make_run("echo", State.FAILED)

    page.goto(f"{live_server.url}{reverse(CHANGELIST)}")
    save_screenshot(page, "runs-changelist")
    save_screenshot(page, "runs-changelist", dark=True)
    # Nothing is cut off at 1280 px with the nav sidebar open: the table fits its container.
    widths = page.evaluate("""() => [document.querySelector('#result_list').scrollWidth,
        document.querySelector('#changelist .results').clientWidth]""")
    assert widths[0] <= widths[1], widths

    page.click("#changelist-filter a[href='?status=FAILED']")
    page.click("#changelist-filter a[href='?status=FAILED&task_name=add']")
    page.wait_for_url("**/?status=FAILED&task_name=add")
    page.check("#action-toggle")
    page.click(".actions .question a")  # "Select all 55 task executions"
    page.select_option("select[name=action]", "retry_selected")
    page.click(".actions button[type=submit]")

    page.wait_for_selector(".gyrinx-confirm")
    text = page.inner_text(".gyrinx-confirm")
    assert "Runs matching: 55." in text
    assert "to be retried as new runs: 55." in text
    assert "at most 1,000 runs" in text
    assert TaskExecution.objects.filter(trigger=Trigger.RETRY).count() == 0
    save_screenshot(page, "retry-confirm")
    save_screenshot(page, "retry-confirm", dark=True)

    page.click(".gyrinx-confirm input[type=submit]")
    page.wait_for_selector(".messagelist")
    assert "Retried 55 runs as new runs: see the 55 new runs." in page.inner_text(
        ".messagelist")
    assert page.url.endswith("?status=FAILED&task_name=add")
    retried = TaskExecution.objects.filter(trigger=Trigger.RETRY)
    assert sorted(retried.values_list("retry_of_id", flat=True)) == [r.pk for r in runs]
    assert LogEntry.objects.count() == 55
    wait_until(lambda: retried.filter(status=State.SUCCESSFUL).count() == 55, timeout=120)


def test_the_panel_follows_a_retry_until_it_settles(admin_page, live_server, monkeypatch):
    from gyrinx_tasks.admin import executions

    monkeypatch.setattr(executions, "RETRY_POLL_SECONDS", 1)
    run = failed_run(7)
    retry = make_run("add", State.READY, trigger=Trigger.RETRY, retry_of=run)
    page = admin_page
    change = reverse("admin:gyrinx_tasks_taskexecution_change", args=[run.pk])
    page.goto(f"{live_server.url}{change}")
    badge = page.locator(".gyrinx-retries .gyrinx-status")
    assert badge.inner_text() == "Ready"

    for status, label in ((State.RUNNING, "Running"), (State.SUCCESSFUL, "Successful")):
        TaskExecution.objects.filter(pk=retry.pk).update(status=status)
        page.wait_for_function(
            "label => document.querySelector('.gyrinx-retries .gyrinx-status')"
            ".textContent.trim() === label", arg=label, timeout=10_000)
    assert page.locator("#gyrinx-retry").get_attribute("data-polling") == "false"
    assert page.locator("#gyrinx-retry").get_attribute("hx-trigger") is None
