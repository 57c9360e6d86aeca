"""pytest plugin loaded only by mutmut runs (``[tool.mutmut] pytest_add_cli_args``).

mutmut forks one child per mutant from a process that has already imported tests.settings,
so every child would share the SQLite file named after the parent's pid; two children at once
would create and delete each other's test database. Each pytest session here gets a file of
its own instead.

It also leaves out the tests that need the Pub/Sub emulator or Chromium: they take seconds
each to start their real part and cover the push path no better than the in-process tests
(docs/testing.md, "Mutation testing").

The tests written to kill mutants live in the files of the behaviour they hold (each names its
mutants in a comment), all of them in pyproject's ``pytest_add_cli_args_test_selection``.
"""

import os
import tempfile

import pytest

SLOW_FIXTURES = {"pubsub_emulator", "emulator_push", "browser", "page", "admin_page"}
SLOW_MARKERS = {"emulator", "browser"}


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings
    from django.db import connections

    database = settings.DATABASES["default"]
    if not database["ENGINE"].endswith("sqlite3"):
        return
    name = os.path.join(tempfile.gettempdir(), f"gyrinx-tasks-mutmut-{os.getpid()}.sqlite3")
    # Changed in place: Django's connection objects share this dict with settings.
    database["NAME"] = name
    database.setdefault("TEST", {})["NAME"] = name
    connections.close_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = [
        item for item in items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
        or any(item.get_closest_marker(name) for name in SLOW_MARKERS)
    ]
    if slow:
        chosen = set(map(id, slow))
        items[:] = [item for item in items if id(item) not in chosen]
        config.hook.pytest_deselected(items=slow)
