"""What `--leave-out` (tests/conftest.py) takes out of the PostgreSQL and Django 6.0 runs.

scripts/test.sh runs the whole suite on SQLite, then leaves out of the other two runs the tests
whose result cannot change there (docs/testing.md, "What CI runs").
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collect(group: str, *files: str) -> str:
    """Test ids pytest collects from ``files`` with ``--leave-out group``, one a line."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--leave-out", group, *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deselected" in done.stdout
    return done.stdout


def test_the_postgresql_run_leaves_out_what_brings_its_own_database():
    kept = collect("same-on-every-database",
                   "tests/test_docs.py", "tests/test_checks.py", "tests/test_push_chunked.py")
    assert "tests/test_docs.py::" not in kept and "tests/test_checks.py::" in kept
    # One test of the chunked-body file runs gunicorn on its own SQLite file; the rest stay.
    assert "test_gunicorn_runs_a_chunked_push_without_content_length" not in kept
    assert "tests/test_push_chunked.py::" in kept


def test_the_django_60_run_leaves_out_the_emulator_tests_and_keeps_the_admin():
    kept = collect("same-on-every-django",
                   "tests/test_e2e.py", "tests/test_admin.py", "tests/test_fresh_project.py")
    files = {line.split("::", 1)[0] for line in kept.splitlines() if "::" in line}
    assert files == {"tests/test_admin.py"}


def test_the_browser_tests_run_on_sqlite_with_the_newest_django_only():
    # Beside each browser module, an in-process module the run keeps.
    for group, other in (("same-on-every-database", "tests/test_cancel.py"),
                         ("same-on-every-django", "tests/test_admin.py")):
        kept = collect(group, "tests/test_cancel_browser.py", other)
        files = {line.split("::", 1)[0] for line in kept.splitlines() if "::" in line}
        assert files == {other}, group


def test_the_postgresql_run_keeps_the_clock_tests_of_listed_modules():
    # The PostgreSQL run is also the run with the clock a year ahead: a test that reads the
    # clock runs there even when its module is listed as the same on every database.
    kept = collect("same-on-every-database", "tests/test_auth.py", "tests/test_docs.py",
                   "tests/test_retention_browser.py")
    files = {line.split("::", 1)[0] for line in kept.splitlines() if "::" in line}
    assert files == {"tests/test_auth.py"}


def test_every_test_module_is_declared_for_the_django_60_run():
    from tests.conftest import ON_DJANGO_60, SAME_ON_EVERY_DJANGO, declared_for_django_60

    modules = sorted(f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py"))
    undeclared = [path for path in modules if not declared_for_django_60(path)]
    assert not undeclared, f"declare these in tests/conftest.py: {undeclared}"
    # A module run whole on Django 6.0 has nothing left out to give a reason for.
    whole = [key for key in ON_DJANGO_60 if "::" not in key]
    assert not set(whole) & set(SAME_ON_EVERY_DJANGO)
    # A module run in part says why the rest is left out.
    partial = {key.split("::", 1)[0] for key in ON_DJANGO_60 if "::" in key}
    assert partial <= set(SAME_ON_EVERY_DJANGO), partial - set(SAME_ON_EVERY_DJANGO)


def test_the_django_60_run_keeps_exactly_the_tests_listed_in_part_modules():
    from tests.conftest import ON_DJANGO_60

    partial = sorted({key.split("::", 1)[0] for key in ON_DJANGO_60 if "::" in key})
    kept = collect("same-on-every-django", *partial)
    ids = {line.split("[", 1)[0] for line in kept.splitlines() if "::" in line}
    listed = {key for key in ON_DJANGO_60 if "::" in key}
    assert ids == listed, (ids - listed, listed - ids)
