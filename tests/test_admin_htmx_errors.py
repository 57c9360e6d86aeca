"""HTMX requests that fail, in a real browser with DEBUG=False: one handler for every page.

static/gyrinx_tasks/htmx-errors.js: an expired session leads to the login page (a full
navigation, and back afterwards), never login markup pasted into a cell; 403, 409, 429, 5xx
and network failures show a sentence next to the button and leave the row as it was.
"""

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from gyrinx_tasks.models import KillSwitch, SwitchMode
from tests.infra.browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGE = "admin:gyrinx_tasks_killswitch_changelist"
ROW = "#killswitch-flaky"


@pytest.fixture
def held(settings):
    assert settings.DEBUG is False  # what production answers, not Django's debug pages
    return KillSwitch.objects.create(task_name="flaky", enabled=False, mode=SwitchMode.HOLD,
                                     reason="payments API down", updated_by="alice",
                                     off_since=timezone.now())


def staff(username, *codenames):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def open_page(page, live_server):
    page.goto(f"{live_server.url}{reverse(PAGE)}")
    page.locator(f"{ROW} .gyrinx-turn-on").wait_for()
    return page.locator(ROW).inner_html()


def test_expired_session_goes_to_the_login_page_and_back(held, admin_page, live_server):
    page = admin_page
    open_page(page, live_server)
    Session.objects.all().delete()  # the session expires while the page is open

    page.click(f"{ROW} .gyrinx-turn-on")
    page.wait_for_url("**/admin/login/?next=*")
    assert page.url.endswith("?next=" + reverse(PAGE).replace("/", "%2F"))
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{reverse(PAGE)}")
    # Back on the page; the click before the login changed nothing.
    assert page.locator(ROW).get_attribute("data-state") == "hold"
    held.refresh_from_db()
    assert held.enabled is False


def test_refused_by_permission_shows_a_sentence_and_leaves_the_row(held, page, live_server):
    user = staff("oncall", "view_killswitch", "change_killswitch")
    log_in(page, live_server.url, "oncall", "pw")
    before = open_page(page, live_server)
    user.user_permissions.remove(Permission.objects.get(codename="change_killswitch"))

    page.click(f"{ROW} .gyrinx-turn-on")
    note = page.locator(f"{ROW} .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text().startswith("Not allowed (403)")
    assert note.get_attribute("role") == "alert"
    assert page.locator(ROW).get_attribute("data-state") == "hold"
    note.evaluate("element => element.remove()")
    assert page.locator(ROW).inner_html() == before  # nothing swapped in
    held.refresh_from_db()
    assert held.enabled is False


def test_server_error_shows_a_sentence_and_the_next_try_clears_it(held, admin_page,
                                                                  live_server, monkeypatch):
    from gyrinx_tasks.admin import killswitches

    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    page = admin_page
    before = open_page(page, live_server)
    with monkeypatch.context() as patch:
        patch.setattr(killswitches, "turn_on", broken)
        page.click(f"{ROW} .gyrinx-turn-on")
        note = page.locator(f"{ROW} .gyrinx-htmx-error")
        note.wait_for()
        assert note.inner_text().startswith("Server error (500): the action may not have "
                                            "happened.")
        assert "database on fire" not in page.content()
        assert "Server Error" not in page.locator(ROW).inner_text()
        assert page.evaluate(f"document.querySelector('{ROW}').innerHTML.length") \
            == len(before) + len(note.evaluate("element => element.outerHTML"))

    # The same button works once the server does, and the sentence goes.
    page.click(f"{ROW} .gyrinx-turn-on")
    page.wait_for_selector(f'{ROW}[data-state="on"]')
    assert page.locator(".gyrinx-htmx-error").count() == 0
    held.refresh_from_db()
    assert held.enabled is True


@pytest.mark.parametrize(("status", "start"), [
    (409, "Conflict (409): this changed since the page was loaded."),
    (429, "The server is busy (429). Nothing was changed"),
    (502, "Server error (502): the action may not have happened."),
    (503, "Server error (503): the action may not have happened."),
])
def test_other_refusals_show_their_sentence(status, start, held, admin_page, live_server):
    """Statuses a proxy or a later view may answer: the handler does not depend on the view."""
    page = admin_page
    before = open_page(page, live_server)
    page.route("**/switch/flaky/on/", lambda route: route.fulfill(
        status=status, content_type="text/html", body="<html><body>upstream</body></html>"))
    page.click(f"{ROW} .gyrinx-turn-on")
    note = page.locator(f"{ROW} .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text().startswith(start)
    note.evaluate("element => element.remove()")
    assert page.locator(ROW).inner_html() == before


def test_a_plain_sentence_from_the_server_is_shown_as_it_is(held, admin_page, live_server):
    page = admin_page
    open_page(page, live_server)
    page.route("**/switch/flaky/on/", lambda route: route.fulfill(
        status=400, content_type="text/plain; charset=utf-8",
        body="Give a number of seconds below one day."))
    page.click(f"{ROW} .gyrinx-turn-on")
    note = page.locator(f"{ROW} .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text() == "Give a number of seconds below one day. (400)"


def test_network_failure_says_the_server_could_not_be_reached(held, admin_page, live_server):
    page = admin_page
    before = open_page(page, live_server)
    page.route("**/switch/flaky/on/", lambda route: route.abort("connectionrefused"))
    page.click(f"{ROW} .gyrinx-turn-on")
    note = page.locator(f"{ROW} .gyrinx-htmx-error")
    note.wait_for()
    assert note.inner_text().startswith("The server could not be reached: nothing was changed.")
    note.evaluate("element => element.remove()")
    assert page.locator(ROW).inner_html() == before


def test_every_page_of_ours_loads_the_handler(admin_page, live_server):
    page = admin_page
    for name in ("admin:gyrinx_tasks_overview_changelist",
                 "admin:gyrinx_tasks_killswitch_changelist",
                 "admin:gyrinx_tasks_scheduledjob_changelist",
                 "admin:gyrinx_tasks_provisioningstatus_changelist"):
        page.goto(f"{live_server.url}{reverse(name)}")
        assert page.locator('script[src$="gyrinx_tasks/htmx-errors.js"]').count() == 1, name
    page.goto(f"{live_server.url}{reverse('admin:app_list', args=['gyrinx_tasks'])}")
    assert page.locator('script[src$="gyrinx_tasks/htmx-errors.js"]').count() == 1
