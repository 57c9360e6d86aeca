"""What `--leave-out` (tests/conftest.py) takes out of the PostgreSQL and Django 6.0 runs.

scripts/test.sh runs the whole suite on SQLite, then leaves out of the other two runs the tests
whose result cannot change there (docs/testing.md, "What CI runs").
"""

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ON_DJANGO_60, SAME_ON_EVERY_DJANGO, declared_for_django_60

ROOT = Path(__file__).resolve().parent.parent
# Each collection is a pytest process of its own (seconds of CPU), so each group collects once,
# from every file the tests below look at, and the tests share it on one worker.
pytestmark = pytest.mark.xdist_group("run_selection")
PARTIAL = sorted({key.split("::", 1)[0] for key in ON_DJANGO_60 if "::" in key})
FILES = {
    "same-on-every-database": [
        "tests/test_docs.py", "tests/test_checks.py", "tests/test_push_chunked.py",
        "tests/test_cancel_browser.py", "tests/test_cancel.py",
    ],
    "same-on-every-django": [
        "tests/test_e2e.py", "tests/test_admin.py", "tests/test_fresh_project.py",
        "tests/test_cancel_browser.py", *PARTIAL,
    ],
}


@functools.cache
def kept_ids(group: str) -> tuple[str, ...]:
    """The test ids pytest collects from the group's FILES with ``--leave-out group``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--leave-out", group, *FILES[group]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deselected" in done.stdout
    return tuple(line for line in done.stdout.splitlines() if "::" in line)


def kept_files(group: str, *files: str) -> set[str]:
    """Which of ``files`` keep at least one test in the group's run."""
    found = {test_id.split("::", 1)[0] for test_id in kept_ids(group)}
    return found & set(files)


def test_the_postgresql_run_leaves_out_what_brings_its_own_database():
    kept = kept_ids("same-on-every-database")
    assert kept_files("same-on-every-database", "tests/test_docs.py", "tests/test_checks.py") == {
        "tests/test_checks.py"}
    # One test of the chunked-body file runs gunicorn on its own SQLite file; the rest stay.
    assert not any("test_gunicorn_runs_a_chunked_push_without_content_length" in t for t in kept)
    assert any(t.startswith("tests/test_push_chunked.py::") for t in kept)


def test_the_django_60_run_leaves_out_the_emulator_tests_and_keeps_the_admin():
    assert kept_files("same-on-every-django", "tests/test_e2e.py", "tests/test_admin.py",
                      "tests/test_fresh_project.py") == {"tests/test_admin.py"}


def test_the_browser_tests_run_on_sqlite_with_the_newest_django_only():
    # Beside the browser module, an in-process module each run keeps.
    for group, other in (("same-on-every-database", "tests/test_cancel.py"),
                         ("same-on-every-django", "tests/test_admin.py")):
        assert kept_files(group, "tests/test_cancel_browser.py", other) == {other}, group


def test_every_test_module_is_declared_for_the_django_60_run():
    modules = sorted(f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py"))
    undeclared = [path for path in modules if not declared_for_django_60(path)]
    assert not undeclared, f"declare these in tests/conftest.py: {undeclared}"
    # A module run whole on Django 6.0 has nothing left out to give a reason for.
    whole = [key for key in ON_DJANGO_60 if "::" not in key]
    assert not set(whole) & set(SAME_ON_EVERY_DJANGO)
    # A module run in part says why the rest is left out.
    assert set(PARTIAL) <= set(SAME_ON_EVERY_DJANGO), set(PARTIAL) - set(SAME_ON_EVERY_DJANGO)


def test_the_django_60_run_keeps_exactly_the_tests_listed_in_part_modules():
    ids = {test_id.split("[", 1)[0] for test_id in kept_ids("same-on-every-django")
           if test_id.split("::", 1)[0] in PARTIAL}
    listed = {key for key in ON_DJANGO_60 if "::" in key}
    assert ids == listed, (ids - listed, listed - ids)
