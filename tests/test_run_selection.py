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
    for group in ("same-on-every-database", "same-on-every-django"):
        kept = collect(group, "tests/test_cancel_browser.py", "tests/test_cancel.py")
        files = {line.split("::", 1)[0] for line in kept.splitlines() if "::" in line}
        assert files == {"tests/test_cancel.py"}, group
