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
# A laptop with Django's nav sidebar open (the sidebar shows from 768 px up), and a phone.
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


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

    Dark mode is the admin's own: it follows ``prefers-color-scheme``, emulated here. The
    page is left in light mode afterwards.
    """
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, f"{name}{'-dark' if dark else ''}.png")
    page.emulate_media(color_scheme="dark" if dark else "light")
    page.screenshot(path=path, full_page=True)
    page.emulate_media(color_scheme="light")
    return os.path.abspath(path)


# What a page must hold to at any width: measured in the page, reported as readable lines.
LAYOUT_PROBLEMS_JS = r"""() => {
    const root = document.scrollingElement || document.documentElement;
    const width = root.clientWidth;
    const problems = [];
    const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
        (typeof el.className === 'string' && el.className.trim()
            ? '.' + el.className.trim().split(/\s+/).join('.') : '');
    const scrollsInside = (el) => {
        for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
            const overflow = getComputedStyle(up).overflowX;
            if (overflow === 'auto' || overflow === 'scroll') return true;
        }
        return false;
    };
    const visible = (el) => {
        const box = el.getBoundingClientRect();
        return box.width > 0 && box.height > 0 && getComputedStyle(el).visibility !== 'hidden';
    };
    if (root.scrollWidth > width) {
        const wide = [...document.body.querySelectorAll('*')]
            .filter((el) => visible(el) && !scrollsInside(el) &&
                    el.getBoundingClientRect().right > width + 1)
            .slice(-3).map(name);
        problems.push(`the page scrolls sideways: scrollWidth ${root.scrollWidth} > ` +
                      `clientWidth ${width} (widest: ${wide.join(', ')})`);
    }
    // Buttons and links styled as buttons can be reached: on screen, or in a box that scrolls.
    for (const el of document.querySelectorAll(
            '#content button, #content .button, #content input[type=submit], ' +
            '#content summary')) {
        if (!visible(el) || scrollsInside(el)) continue;
        const box = el.getBoundingClientRect();
        if (box.left < 0 || box.right > width + 1) {
            problems.push(`${name(el)} "${el.textContent.trim()}" is off-screen ` +
                          `(${Math.round(box.left)}..${Math.round(box.right)} of ${width})`);
        }
    }
    // Form fields fit the screen even inside a box that scrolls: half a select is no use.
    for (const el of document.querySelectorAll(
            '#content select, #content textarea, #content input:not([type=hidden])')) {
        if (!visible(el)) continue;
        const box = el.getBoundingClientRect();
        if (box.left < 0 || box.right > width + 1) {
            problems.push(`${name(el)} is cut off at the screen's edge ` +
                          `(${Math.round(box.left)}..${Math.round(box.right)} of ${width})`);
        }
    }
    // No word squeezed until it breaks: a word of letters laid out on more than one line.
    // Identifiers (dots, dashes, digits: task paths, resource names) may wrap anywhere.
    const walker = document.createTreeWalker(
        document.getElementById('content') || document.body, NodeFilter.SHOW_TEXT);
    const range = document.createRange();
    const broken = new Set();
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const parent = node.parentElement;
        if (!parent || parent.closest('pre, code, script, style, svg')) continue;
        const re = /(^|\s)([A-Za-z\u00c0-\u024f]{3,}[,.:;!?)]?)(?=\s|$)/g;
        let match;
        while ((match = re.exec(node.data)) !== null) {
            const start = match.index + match[1].length;
            range.setStart(node, start);
            range.setEnd(node, start + match[2].length);
            const lines = new Set([...range.getClientRects()]
                .filter((r) => r.width > 0).map((r) => Math.round(r.top)));
            if (lines.size > 1) broken.add(`"${match[2]}" in ${name(parent)}`);
        }
    }
    for (const word of [...broken].slice(0, 5)) problems.push(`word broken across lines: ${word}`);
    return problems;
}"""


def layout_problems(page: Any) -> list[str]:
    """What is wrong with the layout of ``page`` as it is now: sideways scrolling,
    unreachable buttons, words broken letter by letter. Empty when it holds up."""
    return list(page.evaluate(LAYOUT_PROBLEMS_JS))


def settle(page: Any) -> None:
    """Make ``page`` hold still for a check: the pointer off every element (a hovered link or
    header has its own colours), and CSS transitions and animations off (Django's admin fades
    link colours, and a resize starts fades that axe would otherwise sample halfway)."""
    page.mouse.move(0, 0)
    page.add_style_tag(content="*, *::before, *::after { transition: none !important; "
                               "animation: none !important; }")


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of ``impacts`` on ``page`` as readable lines (rule, impact, help,
    the first elements). axe-core comes from the axe-playwright-python package, which bundles
    axe.min.js; nothing is fetched at run time."""
    from axe_playwright_python.sync_playwright import Axe

    settle(page)
    results = Axe().run(page).response
    lines = []
    for violation in results["violations"]:
        if violation.get("impact") not in impacts:
            continue
        targets = [", ".join(map(str, node["target"])) for node in violation["nodes"][:3]]
        summary = violation["nodes"][0].get("failureSummary", "").replace("\n", " ")
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} "
                     f"at {targets}; {summary[:300]}")
    return lines



def holds_up(page: Any, where: str) -> list[str]:
    """Layout and accessibility problems of ``page`` as it is now, light and dark, each line
    starting with ``where`` and the colour scheme. Empty when the page holds up."""
    settle(page)
    problems = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        problems += [f"{where}, {scheme}: {p}" for p in layout_problems(page)]
        problems += [f"{where}, {scheme}: axe {v}" for v in axe_violations(page)]
    page.emulate_media(color_scheme="light")
    return problems


def shoot(page: Any, name: str, width: int) -> None:
    """The screenshots of ``page`` at ``width``, light and dark (``name-width[-dark].png``)."""
    save_screenshot(page, f"{name}-{width}")
    save_screenshot(page, f"{name}-{width}", dark=True)

@pytest.fixture
def admin_page(page: Any, live_server: Any, django_user_model: Any) -> Any:
    """A page logged in to the live server's admin as a superuser, 1400 px wide.

    Needs ``@pytest.mark.django_db(transaction=True)`` so the server thread sees the rows.
    """
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    log_in(page, live_server.url, "admin", "admin-pw")
    return page
