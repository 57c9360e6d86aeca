"""Shared pytest setup.

The real services the suite needs (PostgreSQL when GYRINX_TEST_DB=postgres, the Pub/Sub
emulator, Chromium) are fixtures in tests/infra/, loaded here as plugins. Fixtures that only
some tests need (tests/oidc.py, tests/fakes/) are loaded by those test modules themselves.
"""

import os
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
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
    "tests/test_run_selection.py": "collects the suite in subprocesses; no database",
    "tests/test_suite_layout.py": "reads the test modules' source; no database",
    "tests/test_issue16_map.py": "reads docs/delivery.md; no database",
    "tests/test_clock_boundary.py": "the suite's clock moved to a boundary; no database",
}
# The Django 6.0 run (`--leave-out same-on-every-django`) runs only what ON_DJANGO_60 lists:
# where Django 6.0 and 6.1 differ for this app. Every test module is declared in ON_DJANGO_60
# (whole, or some of its tests) or in SAME_ON_EVERY_DJANGO (why the rest is left out), and
# tests/test_run_selection.py fails for a module in neither. Keys are files or test ids.
PAGE = "its admin page, rendered once on Django 6.0's admin templates and views"
ON_DJANGO_60 = {
    # django.tasks: Task, TaskResult, the backend API, signals, task_class options (changed in
    # 6.1: Task's fields and defaults, @task's **kwargs, pickling).
    "tests/test_backend.py": "PubSubBackend on django.tasks' BaseTaskBackend: enqueue, "
    "validation, get_result and the TaskResult it builds",
    "tests/test_enqueue_paths.py": "Task.enqueue, enqueue on commit, enqueue_many, ATOMIC_REQUESTS",
    "tests/test_enqueue_template.py": "a run built from a Task's own fields",
    "tests/test_signals_contract.py": "django.tasks' signals and the TaskResult they carry",
    "tests/test_other_backend_signals.py": "Django's own backends' runs, recorded from signals",
    "tests/test_delivery_life.py": "a delivery's whole life through the runner, which calls the "
    "task through Django's Task and task context; @task options (task_class kwargs)",
    "tests/test_retry.py": "retry through Django's Task and the ImmediateBackend",
    "tests/test_publish_on_commit_path.py": "Django's TaskResult built from a run's values "
    "(its fields changed in 6.1) and on_commit hooks dropped with a savepoint",
    "tests/test_publish_on_commit_batch.py": "runs held until the next statement or COMMIT "
    "through Django's execute_wrappers and its connection's private _commit/_rollback",
    "tests/test_retention_chunks.py": "the prune's DELETE through QuerySet._raw_delete, a "
    "private Django API, and the collector it stands in for",
    # Request handling, checks, the ORM, migrations.
    "tests/test_push.py": "the push view through Django's request handling (core.handlers and "
    "the view decorators changed in 6.1), one test per answer",
    "tests/test_checks.py": "system checks, ours beside Django's own task-backend check",
    "tests/test_statements.py": "the hot path's statements against the SQL Django's ORM compiles",
    "tests/test_models.py": "the models, their fields and transitions",
    "tests/test_stats.py": "the overview's figures: ORM aggregates and our expressions",
    "tests/test_migrations.py": "the models and the migrations agree on this Django's "
    "autodetector; our index operations on its schema editors (migrate back and forth)",
    "tests/test_rollups.py::test_tally_counts_per_task_and_hour_in_the_database":
        "the rollups' ORM aggregate",
    "tests/test_will_retry.py::test_the_expressions_agree_with_the_model_and_split_every_run_once":
        "the status expressions (Case/When) on this Django's ORM",
    # The admin: the run list (Django's ChangeList, filters, search, paging) in full, and each
    # other page once (Django's admin templates, CSS and views changed in 6.1).
    "tests/test_admin.py": "the run list and run page, built on Django's ChangeList, filters, "
    "search and paginator",
    "tests/test_dates.py": "dates on the run page, the run list, scheduled jobs and the overview",
    "tests/test_admin_audit.py": "the kill-switch page, Django's own change and delete views, a "
    "bulk action and the export, each writing Django's LogEntry",
    "tests/test_admin_overview.py::test_page_renders_with_zero_runs": PAGE,
    "tests/test_killswitches.py::test_page_lists_every_registry_task_as_on_without_rows": PAGE,
    "tests/test_admin_provisioning.py::test_page_renders_at_once_and_loads_the_plan_with_htmx":
        PAGE,
    "tests/test_deadletters.py::test_page_loads_the_list_and_lists_per_route_with_redaction":
        PAGE,
    "tests/test_export.py::test_export_page_states_the_filters_and_picks_csv": PAGE,
    "tests/test_admin_retry.py::test_select_across_asks_first_with_the_count_and_the_cap": PAGE,
    "tests/test_admin_retry.py::test_plain_post_retries_and_redirects_to_the_new_run":
        "the run page's retry button, a POST through the admin",
    "tests/test_admin_schedules.py::"
    "test_page_lists_each_scheduled_route_with_its_schedule_in_words_and_next_runs": PAGE,
    "tests/test_health.py::test_a_new_site_with_no_history_is_healthy": "the health view",
    "tests/test_health.py::test_a_change_is_announced_once_by_signal_error_log_and_mail":
        "mail to ADMINS through Django's logging and mail (core.mail changed in 6.1)",
    # Management commands (BaseCommand changed in 6.1), one each.
    "tests/test_retention.py::test_the_command_reports_and_dry_run_changes_nothing": "tasks_prune",
    "tests/test_rollups.py::test_the_rollup_command_counts_and_refuses_negative_hours":
        "tasks_rollup",
    "tests/test_health.py::test_the_command_prints_the_reasons_and_exits_one_when_unhealthy":
        "tasks_health",
}
# Why the rest is left out of the Django 6.0 run. The Django calls these tests make are the
# ones ON_DJANGO_60 runs there; what they add is this app's own logic, which does not change
# with Django's version.
OWN_PAGE = "the page's behaviour is our view code and permissions; the page runs on 6.0 once"
OWN_RUNNER = ("the runner's own logic; a delivery's whole life and the statements it sends run "
              "on 6.0 (test_delivery_life.py, test_statements.py)")
OWN_FIGURES = "our own figures and conditions; the ORM expressions run on 6.0 (test_stats.py)"
BROWSER = "browser tests run with the newest Django only"
GOOGLE = "Google's clients against the emulator or a fake; no Django difference"
SAME_ON_EVERY_DJANGO = {  # `--leave-out same-on-every-django`: the Django 6.0 run
    "tests/test_fresh_project.py": "installs the wheel's own requirements, so the newest Django",
    "tests/test_docs.py": "README and the MkDocs build; no Django",
    "tests/test_auth.py": "auth.py verifies tokens with google-auth and reads only settings",
    "tests/test_scheduler_fake.py": "the Cloud Scheduler fake and Google's client; no Django",
    "tests/test_infra.py": "the test parts themselves (PostgreSQL, emulator, Chromium)",
    "tests/test_sample_site.py": "the sample site's commands and pages call the code that the "
    "in-process tests cover on this Django too",
    "tests/test_suite_layout.py": "reads the test modules' source",
    "tests/test_run_selection.py": "what this table selects; the same on every Django",
    "tests/test_issue16_map.py": "reads docs/delivery.md",
    "tests/test_clock_boundary.py": "the suite's clock moved to a boundary (time-machine)",
    "tests/test_e2e.py": "the emulator's side of a delivery (every emulator test is left out)",
    "tests/test_hold_e2e.py": "the emulator's side of a delivery (every emulator test is left out)",
    "tests/test_pg_exhaustion.py": "PostgreSQL out of connections; the database's behaviour",
    "tests/test_parsing.py": "our parser of the push body and envelope (json, base64); the "
    "push view runs on 6.0 (test_push.py)",
    "tests/test_hostile.py": "hostile input in bulk against our parser (test_parsing.py's reason)",
    "tests/test_push_size.py": "our body-size limits; the push view runs on 6.0 (test_push.py)",
    "tests/test_push_chunked.py": "chunked bodies under runserver and gunicorn: the servers and "
    "our body reader",
    "tests/test_push_oidc.py": "token checks at the endpoint are auth.py's (google-auth)",
    "tests/test_claim.py": OWN_RUNNER,
    "tests/test_recording.py": OWN_RUNNER,
    "tests/test_attempts.py": OWN_RUNNER,
    "tests/test_races.py": "races between threads on the database's locks; " + OWN_RUNNER,
    "tests/test_live_concurrency.py": "concurrent requests on the database's locks; " + OWN_RUNNER,
    "tests/test_enqueue_transitions.py": "our transitions' conditions; the models run on 6.0",
    "tests/test_retry_transitions.py": "our transitions' conditions; the models run on 6.0",
    "tests/test_cancel.py": "cancel is our transition and view; Django's task_finished runs on "
    "6.0 in test_signals_contract.py",
    "tests/test_stuck_recovery.py": "give up and retry is our transition and view; a retry "
    "through Django's Task runs on 6.0 in test_retry.py",
    "tests/test_recovery_filter.py": OWN_FIGURES,
    "tests/test_will_retry.py": OWN_FIGURES,
    "tests/test_stuck_runs.py": OWN_FIGURES,
    "tests/test_health.py": OWN_FIGURES,
    "tests/test_schedule_health.py": OWN_FIGURES,
    "tests/test_admin_schedule_health.py": OWN_FIGURES,
    "tests/test_rollups.py": OWN_FIGURES,
    "tests/test_retention.py": "our pruning in chunks and transactions; " + OWN_FIGURES,
    "tests/test_spans.py": OWN_FIGURES,
    "tests/test_admin_overview.py": OWN_PAGE,
    "tests/test_killswitches.py": OWN_PAGE,
    "tests/test_admin_provisioning.py": OWN_PAGE,
    "tests/test_deadletters.py": OWN_PAGE,
    "tests/test_export.py": OWN_PAGE + "; django-import-export is the same",
    "tests/test_admin_retry.py": OWN_PAGE,
    "tests/test_admin_schedules.py": OWN_PAGE,
    "tests/test_redaction.py": "who sees payloads: our permission checks and redaction",
    "tests/test_backlog.py": GOOGLE,
    "tests/test_provisioning.py": GOOGLE,
    "tests/test_provisioning_scheduler.py": GOOGLE,
    "tests/test_provisioning_terraform.py": "the Terraform we write; no Django",
    "tests/test_scheduling.py": "schedule arithmetic (cron, zoneinfo) is ours",
    "tests/test_traces.py": "trace context and spans: our code and the logging module",
    "tests/test_cloud_logging.py": "log records as Cloud Logging reads them; the logging module",
    "tests/test_admin_layout.py": BROWSER,
    "tests/test_admin_find_browser.py": BROWSER,
    "tests/test_admin_retry_browser.py": BROWSER,
    "tests/test_admin_htmx_errors.py": BROWSER,
    "tests/test_cancel_browser.py": BROWSER,
    "tests/test_deadletters_browser.py": BROWSER,
    "tests/test_retention_browser.py": BROWSER,
    "tests/test_stuck_recovery_browser.py": BROWSER,
}
# Also left out of the PostgreSQL run: every browser test (fixture "browser"). What a browser
# test adds to the in-process tests of the same page is what Chromium shows: layout at 1280
# and 390 px, our scripts, axe. That does not change with the database; the page's queries
# and HTML are tested in-process, and those tests do run on PostgreSQL.
SAME_ON_EVERY_DATABASE_FIXTURES = {"browser"}
# Also left out of the Django 6.0 run: every test that uses the Pub/Sub emulator, and every
# browser test. The emulator's side of a delivery does not change with Django; the Django side
# (the push view, the runner, the ORM, signals, the admin's views and templates) is tested
# in-process, and the tests of it ON_DJANGO_60 lists do run on 6.0. The browser tests run on
# the newest Django only: Django 6.0's own admin CSS is not looked at in Chromium.
SAME_ON_EVERY_DJANGO_FIXTURES = {"pubsub_emulator", "browser"}
# Kept in a run whatever its list says: the Django 6.0 run keeps what ON_DJANGO_60 lists, even
# in a module SAME_ON_EVERY_DJANGO lists for the rest of its tests.
KEEP_LISTED = {"same-on-every-django": ON_DJANGO_60}
LEAVE_OUT = {
    "same-on-every-database": (SAME_ON_EVERY_DATABASE, SAME_ON_EVERY_DATABASE_FIXTURES),
    "same-on-every-django": (SAME_ON_EVERY_DJANGO, SAME_ON_EVERY_DJANGO_FIXTURES),
}


def declared_for_django_60(path: str) -> bool:
    """Whether the test module ``path`` (``tests/test_x.py``) is declared in ON_DJANGO_60
    (whole or in part) or in SAME_ON_EVERY_DJANGO."""
    return path in SAME_ON_EVERY_DJANGO or any(
        key.split("::", 1)[0] == path for key in ON_DJANGO_60)


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
    at = clock_at()
    moved = ([f"GYRINX_TEST_CLOCK_AT={at[0]}: every test that can be moved starts "
              f"{describe_offsets(at[1])} the next {BOUNDARY_NAMES[at[0]]} "
              "(docs/testing.md, \"Time\")"] if at else [])
    return older + moved + [
        f"--leave-out {group}: the tests listed for it in tests/conftest.py are not run here"
        for group in config.getoption("leave_out")
    ]


def matches(nodeid: str, keys: Iterable[str]) -> bool:
    """Whether ``nodeid`` is one of ``keys`` (files or test ids) or a test or case of one."""
    return any(nodeid == key or nodeid.startswith((key + "::", key + "[")) for key in keys)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    leave_out_older_django(config, items)
    groups = config.getoption("leave_out")
    if not groups:
        return
    root = Path(config.rootpath)
    prefixes: list[str] = []
    fixtures: set[str] = set()
    kept_listed = [key for group in groups for key in KEEP_LISTED.get(group, {})]
    for group in groups:
        listed, group_fixtures = LEAVE_OUT[group]
        for key in [*listed, *KEEP_LISTED.get(group, {})]:
            if not (root / key.split("::", 1)[0]).is_file():
                raise pytest.UsageError(
                    f"tests/conftest.py lists {key!r} ({group}), but there is no such file. "
                    "Update the list to the test's new place."
                )
        prefixes += listed
        fixtures |= group_fixtures
    if "same-on-every-django" in groups:
        paths = {item.nodeid.split("::", 1)[0] for item in items}
        undeclared = sorted(path for path in paths if not declared_for_django_60(path))
        if undeclared:
            raise pytest.UsageError(
                f"{', '.join(undeclared)}: not declared for the Django 6.0 run. Add the module "
                "to ON_DJANGO_60 in tests/conftest.py (whole or the tests where Django 6.0 can "
                "differ, with why) or to SAME_ON_EVERY_DJANGO (with why it cannot)."
            )

    def left_out(item: pytest.Item) -> bool:
        if fixtures & set(getattr(item, "fixturenames", ())):
            return True
        if matches(item.nodeid, kept_listed):
            return False
        return matches(item.nodeid, prefixes)

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


@pytest.fixture
def on_commit_backend(settings):
    """The default backend with publish_on_commit, publishing into a FakePublisher (the
    settings first: changing TASKS makes the backends anew)."""
    from django.tasks import task_backends

    from tests.helpers import FakePublisher, use_publisher

    settings.TASKS = {
        **settings.TASKS,
        "default": {**settings.TASKS["default"],
                    "OPTIONS": {"project_id": "test-project", "publish_on_commit": True}},
    }
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


# --- Tests started at a boundary (docs/testing.md, "Time") --------------------------------
# GYRINX_TEST_CLOCK_AT=hour|midnight|newyear starts each test that can be moved a few seconds
# from the next full hour, UTC midnight, or 1 January 00:00 UTC at least a year ahead, all
# counted from the real clock (never a fixed date), with the clock ticking. Just after it, runs
# a test built "two minutes ago" fall in the hour (day, month, year) before the ones built now;
# just before it, runs built "in a minute", or a test that takes longer than the offset, cross
# it. GYRINX_TEST_CLOCK_OFFSET is where from the boundary, in seconds (-20: 20 s before it, 90:
# 90 s after): one number, or several separated by commas, of which each test takes one by its
# id (the same one in every run and worker, so a failure can be run again alone); offsets of
# whole hours more (3620: 20 s after the full hour after next) spread the tests over the day's
# hours, for what happens at one time of day (a daily job's fire time). A test that
# moves the clock itself (time_machine) travels from there; time_machine's travels nest.
BOUNDARY_NAMES = {"hour": "full hour", "midnight": "UTC midnight",
                  "newyear": "1 January 00:00 UTC a year ahead"}
DEFAULT_CLOCK_OFFSETS = (-90, -20, -1, 1, 20, 90)
# Not moved: tests whose clock another part reads too. Another process: the emulator,
# Chromium and its live server, the sample site's commands. gRPC in this process (the fakes of
# tests/fakes/ and the clients that talk to them): its Python layer turns time.time(), which
# time_machine moves, into deadlines that its C core waits for on the real clock, so a server
# start or a call waits until the real clock catches up (an hour, a year). Marker
# ``real_clock`` for a test that uses gRPC, or compares its clock with another process's,
# without one of these fixtures.
UNMOVED_MARKERS = {"emulator", "browser", "real_clock"}
UNMOVED_FIXTURES = {"pubsub_emulator", "browser", "live_server", "sample_site_env",
                    "scheduler_fake", "monitoring_fake", "flaky_pubsub"}


def clock_at() -> tuple[str, tuple[int, ...]] | None:
    """GYRINX_TEST_CLOCK_AT and GYRINX_TEST_CLOCK_OFFSET read and checked: the boundary's name
    and the offsets in seconds, or None when the first is not set."""
    mode = os.environ.get("GYRINX_TEST_CLOCK_AT", "").strip()
    if not mode:
        return None
    if mode not in BOUNDARY_NAMES:
        raise pytest.UsageError(
            f"GYRINX_TEST_CLOCK_AT={mode!r}: expected one of {', '.join(BOUNDARY_NAMES)}.")
    raw = os.environ.get("GYRINX_TEST_CLOCK_OFFSET", "").strip()
    try:
        offsets = tuple(int(part) for part in raw.split(",")) if raw else DEFAULT_CLOCK_OFFSETS
    except ValueError:
        offsets = ()
    if not offsets or any(abs(offset) >= 86400 for offset in offsets):
        raise pytest.UsageError(
            f"GYRINX_TEST_CLOCK_OFFSET={raw!r}: expected whole seconds from the boundary, "
            "under a day either way, separated by commas (e.g. -20,90: 20 s before, 90 s "
            "after).")
    return mode, offsets


def describe_offsets(offsets: tuple[int, ...]) -> str:
    listed = ", ".join(f"{offset:+d}" for offset in offsets)
    return f"{listed} s from" + (" (one per test)" if len(offsets) > 1 else "")


def next_boundary(mode: str, now: datetime) -> datetime:
    """The next full hour, UTC midnight or 1 January 00:00 UTC (at least 365 days ahead)
    after ``now``."""
    now = now.astimezone(UTC)
    if mode == "hour":
        return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if mode == "midnight":
        return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return datetime((now + timedelta(days=365)).year + 1, 1, 1, tzinfo=UTC)


def clock_offset(nodeid: str, offsets: tuple[int, ...]) -> int:
    """The offset a test takes, by its id (crc32: the same in every run and worker)."""
    return offsets[zlib.crc32(nodeid.encode()) % len(offsets)]


@pytest.fixture(autouse=True)
def _clock_at_boundary(request):
    """Under GYRINX_TEST_CLOCK_AT, start the test next to the next boundary (above)."""
    at = clock_at()
    node = request.node
    if (at is None or any(node.get_closest_marker(name) for name in UNMOVED_MARKERS)
            or UNMOVED_FIXTURES & set(getattr(node, "fixturenames", ()))):
        yield
        return
    import time_machine

    mode, offsets = at
    offset = clock_offset(node.nodeid, offsets)
    destination = next_boundary(mode, datetime.now(UTC)) + timedelta(seconds=offset)
    # Shown with a failure ("Captured clock setup"): where the test's clock started.
    node.add_report_section("setup", "clock", f"GYRINX_TEST_CLOCK_AT={mode} "
                            f"GYRINX_TEST_CLOCK_OFFSET={offset}: {destination.isoformat()}")
    with time_machine.travel(destination, tick=True):
        yield

