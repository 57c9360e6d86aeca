"""pytest plugin loaded only by mutmut runs (``[tool.mutmut] pytest_add_cli_args``).

mutmut forks one child per mutant from a process that has already imported tests.settings,
so every child would share the SQLite file named after the parent's pid; two children at once
would create and delete each other's test database. Each pytest session here gets a file of
its own instead.

It also leaves out the tests that need the Pub/Sub emulator or Chromium: they take seconds
each to start their real part and cover the push path no better than the in-process tests
(docs/testing.md, "Mutation testing").

The test files written to kill mutants are added to the run here (ADDED_TEST_FILES) rather
than in pyproject's ``pytest_add_cli_args_test_selection``: changing that list makes mutmut
discard every verdict and start again, while files added here are picked up as new tests and
only the mutants asked for are run again. With MUTMUT_BASELINE=1 in the environment they are
left out, for a "before" score of a module the suite as it was.
"""

import os
import tempfile
import tomllib
from pathlib import Path

import pytest

# Suite files written after pyproject's list was fixed (kept out of it for the same reason).
LATER_SUITE_FILES = ["tests/test_statements.py"]
ADDED_TEST_FILES = [
    "tests/test_parsing.py",
    "tests/test_mutants_runner.py",
]
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

    # mutmut's own runs over the whole selection (listing tests, stats, the clean run) name
    # every file of it; a run of one mutant names test ids, and is left alone.
    pyproject = tomllib.loads((Path(config.rootpath) / "pyproject.toml").read_text())
    selection = pyproject["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    if set(selection) <= set(config.args):
        added = LATER_SUITE_FILES
        if not os.environ.get("MUTMUT_BASELINE"):
            added = added + ADDED_TEST_FILES
        config.args.extend(name for name in added if name not in config.args)


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
