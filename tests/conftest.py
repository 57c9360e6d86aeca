"""Shared pytest setup.

The real services the suite needs (PostgreSQL when GYRINX_TEST_DB=postgres, the Pub/Sub
emulator, Chromium) are fixtures in tests/infra/, loaded here as plugins. Fixtures that only
some tests need (tests/oidc.py, tests/fakes/) are loaded by those test modules themselves.
"""

from pathlib import Path

import pytest

pytest_plugins = ["tests.infra.postgres", "tests.infra.pubsub", "tests.infra.browser"]

# What scripts/test.sh leaves out of a run because another run already gives the same result
# (docs/testing.md, "What CI runs"). Keys are test files or test ids, values say why.
SAME_ON_EVERY_DATABASE = {  # `--leave-out same-on-every-database`: the PostgreSQL run
    "tests/test_auth.py": "token verification; no database",
    "tests/test_scheduler_fake.py": "the Cloud Scheduler fake and Google's client; no database",
    "tests/test_docs.py": "README and the MkDocs build; no database",
    "tests/test_sample_site.py": "the sample site runs in subprocesses on its own SQLite file",
    "tests/test_fresh_project.py": "the fresh project has its own SQLite file and virtualenv",
    "tests/test_pg_exhaustion.py": "starts its own PostgreSQL, whatever GYRINX_TEST_DB says",
    "tests/test_push_chunked.py::test_gunicorn_runs_a_chunked_push_without_content_length":
        "gunicorn runs on its own SQLite file, whatever GYRINX_TEST_DB says",
    "tests/test_infra.py::test_postgres_server_starts_answers_and_is_removed":
        "starts its own PostgreSQL, whatever GYRINX_TEST_DB says",
    "tests/test_infra.py::test_stopping_an_emulator_leaves_no_process_behind":
        "the emulator's processes; no database",
}
SAME_ON_EVERY_DJANGO = {  # `--leave-out same-on-every-django`: the Django 6.0 run
    "tests/test_fresh_project.py": "installs the wheel's own requirements, so the newest Django",
    "tests/test_docs.py": "README and the MkDocs build; no Django",
    "tests/test_auth.py": "auth.py verifies tokens with google-auth and reads only settings",
    "tests/test_scheduler_fake.py": "the Cloud Scheduler fake and Google's client; no Django",
    "tests/test_infra.py": "the test parts themselves (PostgreSQL, emulator, Chromium)",
    "tests/test_sample_site.py": "the sample site's commands and pages call the code that the "
    "in-process tests cover on this Django too",
}
# Also left out of the PostgreSQL run: every browser test (fixture "browser"). What a browser
# test adds to the in-process tests of the same page is what Chromium shows: layout at 1280
# and 390 px, our scripts, axe. That does not change with the database; the page's queries
# and HTML are tested in-process, and those tests do run on PostgreSQL.
SAME_ON_EVERY_DATABASE_FIXTURES = {"browser"}
# Also left out of the Django 6.0 run: every test that uses the Pub/Sub emulator, and every
# browser test. The emulator's side of a delivery does not change with Django; the Django side
# (the push view, the runner, the ORM, signals, the admin's views and templates) is tested
# in-process, and those tests do run on 6.0. The browser tests run on the newest Django only:
# Django 6.0's own admin CSS is not looked at in Chromium (docs/testing.md says so).
SAME_ON_EVERY_DJANGO_FIXTURES = {"pubsub_emulator", "browser"}
LEAVE_OUT = {
    "same-on-every-database": (SAME_ON_EVERY_DATABASE, SAME_ON_EVERY_DATABASE_FIXTURES),
    "same-on-every-django": (SAME_ON_EVERY_DJANGO, SAME_ON_EVERY_DJANGO_FIXTURES),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--leave-out", action="append", default=[], choices=sorted(LEAVE_OUT),
        help="deselect the tests that another run of scripts/test.sh already runs with the same "
        "result (tests/conftest.py lists them, each with the reason)",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    # Under pytest-xdist the workers deselect, and the summary line does not count them.
    import django

    older = (["Django < 6.1: the tests marked django61 (Django 6.1's @task options) are not run"]
             if django.VERSION < (6, 1) else [])
    return older + [
        f"--leave-out {group}: the tests listed for it in tests/conftest.py are not run here"
        for group in config.getoption("leave_out")
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    leave_out_older_django(config, items)
    groups = config.getoption("leave_out")
    if not groups:
        return
    root = Path(config.rootpath)
    prefixes: list[str] = []
    fixtures: set[str] = set()
    for group in groups:
        listed, group_fixtures = LEAVE_OUT[group]
        for key in listed:
            if not (root / key.split("::", 1)[0]).is_file():
                raise pytest.UsageError(
                    f"tests/conftest.py leaves out {key!r} ({group}), but there is no such file. "
                    "Update the list to the test's new place."
                )
        prefixes += listed
        fixtures |= group_fixtures

    def left_out(item: pytest.Item) -> bool:
        nodeid = item.nodeid
        return any(nodeid == key or nodeid.startswith((key + "::", key + "["))
                   for key in prefixes) or bool(fixtures & set(getattr(item, "fixturenames", ())))

    deselected = [item for item in items if left_out(item)]
    if deselected:
        items[:] = [item for item in items if not left_out(item)]
        config.hook.pytest_deselected(items=deselected)


def leave_out_older_django(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) the tests marked ``django61`` on Django 6.0: they use what 6.1 added,
    such as ``@task(max_attempts=...)``, which Django 6.0's own ``task()`` refuses."""
    import django

    if django.VERSION >= (6, 1):
        return
    older = [item for item in items if item.get_closest_marker("django61")]
    if older:
        items[:] = [item for item in items if not item.get_closest_marker("django61")]
        config.hook.pytest_deselected(items=older)


@pytest.fixture
def options_registry(settings):
    """TASKS_REGISTRY = tests/task_options.py: the usual routes and tasks declared with
    PubSubBackend's own @task() options (Django 6.1)."""
    from gyrinx_tasks import registry

    registry.clear_cache()
    settings.TASKS_REGISTRY = "tests.task_options"
    yield
    registry.clear_cache()


@pytest.fixture
def fake_publisher():
    """The default backend publishes into a FakePublisher (tests/helpers.py) for one test."""
    from django.tasks import task_backends

    from tests.helpers import FakePublisher, use_publisher

    publisher = FakePublisher()
    use_publisher(publisher)
    yield publisher
    task_backends["default"].__dict__.pop("publisher", None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Make a worker's report sendable when its captured output holds a lone surrogate.

    Under pytest-xdist a worker sends each report to the controller as UTF-8, and the tests of
    hostile input log strings with unpaired surrogates, which would stop the whole run. Such
    characters are shown escaped (``\\ud800``) instead; a run without workers is untouched.
    """
    report = yield
    if hasattr(item.config, "workerinput"):
        report.sections = [
            (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
            for title, text in report.sections
        ]
    return report


@pytest.fixture
def no_oidc(settings):
    """Push requests are not asked for an OIDC token (TASKS_VERIFY_OIDC = False). Modules whose
    every test posts unsigned pushes use it with ``pytest.mark.usefixtures("no_oidc")``; the
    tests of tokens use tests/oidc.py instead."""
    settings.TASKS_VERIFY_OIDC = False


@pytest.fixture
def calls():
    """tests.tasks.CALLS, empty at the start and the end of the test: the calls of the test
    tasks that record them (echo and friends)."""
    from tests import tasks

    tasks.CALLS.clear()
    yield tasks.CALLS
    tasks.CALLS.clear()


@pytest.fixture
def fresh_unrecorded(monkeypatch):
    """Outcomes this process could not record (gyrinx_tasks/record.py), forgotten before and
    after the test, so that one test's remembered outcome is not found by another's
    redelivery."""
    from collections import OrderedDict

    from gyrinx_tasks import record

    monkeypatch.setattr(record, "_unrecorded", OrderedDict())


@pytest.fixture
def route_through_emulator(settings, pubsub_emulator, live_server, emulator_push):
    """Route the test tasks through the Pub/Sub emulator to the live server, in a fresh
    namespace: ``route_through_emulator(task_name, **options)`` makes the task's push
    subscription."""
    import secrets

    settings.TASKS_ENVIRONMENT = "e2e" + secrets.token_hex(4)
    settings.TASKS_VERIFY_OIDC = False  # the emulator sends no token
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    endpoint = f"{live_server.url}/tasks/pubsub/"

    def wire(name, **overrides):
        return emulator_push(name, endpoint, **overrides)

    return wire


@pytest.fixture
def sample_site_env(tmp_path):
    """The environment for running the sample site's manage.py in a subprocess
    (tests/helpers.py's ``manage`` and ``shell``), on a SQLite file of its own."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in {"PUBSUB_EMULATOR_HOST", "ENABLE_BACKFILL_SCHEDULER"}}
    env.update(DJANGO_SETTINGS_MODULE="sample_site.settings",
               SAMPLE_SITE_DB=str(tmp_path / "sample.sqlite3"), SAMPLE_REPORT_SECONDS="0")
    return env
