"""The "Dead letters" page in a real browser (Debian's Chromium) on a live server.

The dead-letter subscription is a FakeSubscriber (tests/fakes/subscriber.py; the emulator's
behaviour is checked in tests/test_deadletters.py). At 1280 px with the nav sidebar open and
at 390 px, light and dark: no sideways scrolling, axe-core finds nothing serious, and the
screenshots docs/screenshots/dead-letters[-390][-dark].png. Then Replay through HTMX.
"""

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks import clients, deadletters, registry
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.provisioning.pubsub import dead_letter_subscription_path
from tests import deadletter_tasks
from tests.fakes.subscriber import FakeSubscriber
from tests.helpers import FakePublisher, make_run, staff_user
from tests.infra.browser import (
    PHONE,
    VIEWPORT,
    axe_violations,
    layout_problems,
    log_in,
    save_screenshot,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TOPIC = f"projects/test-project/topics/{deadletter_tasks.DEAD_LETTER_TOPIC}"
SUBSCRIPTION = dead_letter_subscription_path("test-project", TOPIC)


@pytest.fixture
def letters(settings, monkeypatch):
    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.deadletter_tasks"
    fake = FakeSubscriber()
    fake.messages[SUBSCRIPTION] = []
    monkeypatch.setattr(deadletters, "open_subscriber", lambda: fake)
    original = make_run(
        "fails_until_fixed", State.FAILED, attempts=5, args=["invoice-2291"], message_id="4411"
    )

    def add(message_id, data, task="", count="5"):
        route = task and registry.get_route(task)
        attributes = {
            deadletters.DELIVERY_COUNT: count,
            deadletters.SOURCE_PUBLISH_TIME: "2026-11-30T09:58:12.020Z",
        }
        if route:
            attributes[deadletters.SOURCE_SUBSCRIPTION] = route.subscription_name
        fake.add(SUBSCRIPTION, data, message_id, attributes, publish_time=timezone.now())

    def message(task, args, task_id="3f9c2b1e-0c1d-4c55-9a51-6f0e2d7c9b11", **kwargs):
        return json.dumps(
            {"task_id": task_id, "task_name": task, "args": args, "kwargs": kwargs}
        ).encode()

    add(
        "17263548011",
        message("fails_until_fixed", ["invoice-2291"], task_id=original.result_id),
        "fails_until_fixed",
    )
    add(
        "17263548012",
        message("fails_until_fixed", ["invoice-2292"], retry=True, note="a long argument " * 12),
        "fails_until_fixed",
    )
    add("17263548013", message("charge_card", ["alice@example.com", 1999]), "charge_card")
    add("17263548014", b'{"task": "renamed_by_hand", "payload": "alice@example.com"}')
    yield fake, original
    registry.clear_cache()


def look(page, problems, where):
    page.add_style_tag(content="*, *::before { transition: none !important; }")
    for dark in (False, True):
        page.emulate_media(color_scheme="dark" if dark else "light")
        scheme = "dark" if dark else "light"
        problems.extend(f"{where}, {scheme}: {p}" for p in layout_problems(page))
        problems.extend(f"{where}, {scheme}: axe {v}" for v in axe_violations(page))
    page.emulate_media(color_scheme="light")


def test_dead_letters_page_at_both_widths_then_replay(letters, page, live_server, monkeypatch):
    fake, original = letters
    # The live server's thread builds its own backend; every backend takes this publisher.
    fake_publisher = FakePublisher()
    monkeypatch.setattr(clients, "shared_publisher", lambda client_options=None: fake_publisher)
    staff_user("ops", "view_deadletter", "replay_deadletter", "view_taskexecution")
    log_in(page, live_server.url, "ops", "pw")
    url = f"{live_server.url}{reverse('admin:gyrinx_tasks_deadletter_changelist')}"
    problems: list[str] = []

    for viewport, name in ((VIEWPORT, "dead-letters"), (PHONE, "dead-letters-390")):
        page.set_viewport_size(viewport)
        page.goto(url)
        page.locator("tr.gyrinx-deadletter").first.wait_for(timeout=30_000)
        assert page.title().startswith("Dead letters")
        if viewport == VIEWPORT:
            assert page.locator("#nav-sidebar").is_visible()
        assert page.locator("tr.gyrinx-deadletter").count() == 4
        text = page.locator("#gyrinx-deadletters").inner_text()
        assert "alice" not in text  # redacted route, and the message that is not ours
        assert "Not a task message" in text and "peek" in page.content()
        look(page, problems, f"{viewport['width']} px")
        save_screenshot(page, name)
        save_screenshot(page, name, dark=True)
    assert not problems, "\n".join(dict.fromkeys(problems))
    assert fake.leased(SUBSCRIPTION) == []  # looking consumed nothing

    page.set_viewport_size(VIEWPORT)
    page.locator('tr[data-message="17263548011"] input[type=checkbox]').check()
    page.get_by_role("button", name="Replay selected").click()
    outcome = page.locator(".gyrinx-deadletter-outcomes")
    outcome.wait_for(timeout=30_000)
    assert page.url == url  # swapped in place by HTMX, no navigation

    new = TaskExecution.objects.get(retry_of=original)
    assert f"replayed as run {new.result_id}" in outcome.inner_text()
    assert page.locator("tr.gyrinx-deadletter").count() == 3  # acknowledged, gone
    assert fake.waiting(SUBSCRIPTION) == ["17263548012", "17263548013", "17263548014"]
    assert fake_publisher.published[0][1]["args"] == ["invoice-2291"]
    assert LogEntry.objects.get().object_id == str(new.pk)

    # Discard asks once more, in place, then acknowledges without a run.
    page.locator('tr[data-message="17263548014"] input[type=checkbox]').check()
    page.get_by_role("button", name="Discard selected").click()
    page.get_by_role("button", name="Yes, discard 1 message").click()
    page.locator(".gyrinx-deadletter-outcomes").get_by_text("discarded").wait_for()
    assert fake.waiting(SUBSCRIPTION) == ["17263548012", "17263548013"]
    assert TaskExecution.objects.count() == 2
