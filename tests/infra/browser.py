"""Debian's Chromium driven by Playwright's sync API.

Fixtures:
  browser  session-scoped Playwright ``Browser`` (headless /usr/bin/chromium).
  page     a fresh context and page per test, closed afterwards.

Playwright's own browser downloads are not used (they cannot be fetched here); the system
Chromium is launched through ``executable_path``.
"""

import os
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the suite runs as root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}. Run scripts/test.sh, which installs "
            "Debian's chromium package, or run: apt-get install -y chromium.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop on this thread while it is alive, which
    # makes Django refuse ORM calls from tests ("cannot call this from an async context").
    # The tests are synchronous, so that guard would only be a false alarm here.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            # launch() gives every browser a fresh temporary profile (--user-data-dir) and
            # deletes it on close, so nothing leaks between runs.
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield chromium
            finally:
                chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


# --- The admin in a browser ---------------------------------------------------------------

SCREENSHOTS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "screenshots")
VIEWPORT = {"width": 1400, "height": 900}


def log_in(page: Any, base_url: str, username: str, password: str) -> None:
    """Log ``page`` in to the admin through its real login form."""
    page.set_viewport_size(VIEWPORT)
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


def save_screenshot(page: Any, name: str, *, dark: bool = False) -> str:
    """Save a full-page PNG under docs/screenshots/ (``name-dark.png`` in dark mode).

    Dark mode is the admin's own: it follows ``prefers-color-scheme``, emulated here.
    """
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, f"{name}{'-dark' if dark else ''}.png")
    page.emulate_media(color_scheme="dark" if dark else "light")
    page.screenshot(path=path, full_page=True)
    page.emulate_media(color_scheme="light")
    return os.path.abspath(path)


@pytest.fixture
def admin_page(page: Any, live_server: Any, django_user_model: Any) -> Any:
    """A page logged in to the live server's admin as a superuser, 1400 px wide.

    Needs ``@pytest.mark.django_db(transaction=True)`` so the server thread sees the rows.
    """
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    log_in(page, live_server.url, "admin", "admin-pw")
    return page
