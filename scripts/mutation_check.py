"""Apply each of a list of small code changes to a copy of the tree and run the tests meant to
catch it. Prints KILLED (the tests failed, as they should) or SURVIVED for each.

    .venv/bin/python scripts/mutation_check.py            # on SQLite
    GYRINX_TEST_DB=postgres .venv/bin/python scripts/mutation_check.py

The changes are the ones issue 9 listed as leaving the suite green; tests/test_regressions.py
holds the tests that now catch them. This is a targeted check, not a mutation-testing tool's
full run: see docs/testing.md.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"

# (name, file, text, replacement, pytest -k expression in tests/test_regressions.py)
MUTANTS = [
    ("only SUCCESSFUL counts as settled", "gyrinx_tasks/models.py",
     "SETTLED = (State.SUCCESSFUL, State.SKIPPED, State.REJECTED)",
     "SETTLED = (State.SUCCESSFUL,)", "redelivery_of"),
    ("the run read without FOR UPDATE NOWAIT", "gyrinx_tasks/claim.py",
     'execution = select_run(db, "result_id", delivery.task_id, lock=True,',
     'execution = select_run(db, "result_id", delivery.task_id, lock=False,',
     "locked_by_another"),
    ("the transitions' compare-and-set without status", "gyrinx_tasks/models.py",
     'EXPECTED_FIELDS = ("status", "attempts", "timeline")',
     'EXPECTED_FIELDS = ("attempts", "timeline")', "changed_between"),
    ("the transitions' compare-and-set without the timeline", "gyrinx_tasks/models.py",
     'EXPECTED_FIELDS = ("status", "attempts", "timeline")',
     'EXPECTED_FIELDS = ("status", "attempts")', "changed_between or note_written_while"),
    ("a late outcome forgotten before it is written", "gyrinx_tasks/claim.py",
     "            write(execution, db)\n            record.forget(late)",
     "            record.forget(late)\n            write(execution, db)", "recorded_late"),
    ("record_rejection no longer finds the earlier record", "gyrinx_tasks/claim.py",
     "        if execution is None and message_id:", "        if False and message_id:",
     "malformed_message_is_recorded_once"),
    ("environment switch word 'off' ignored", "gyrinx_tasks/killswitch.py",
     'frozenset({"0", "false", "no", "off"})', 'frozenset({"0", "false", "no"})',
     "documented_off_word"),
    ("recording failures not swallowed", "gyrinx_tasks/signals.py",
     "except DatabaseError:", "except ZeroDivisionError:", "recording_failure"),
]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="gyrinx-mutants-"))
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            source = ROOT / name
            if source.is_file() and not source.is_symlink():
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, work / name)
        survived = 0
        for label, path, old, new, tests in MUTANTS:
            target = work / path
            original = target.read_text()
            if original.count(old) != 1:
                print(f"NOT APPLIED: {label}: the text to change is not in {path} exactly once")
                survived += 1
                continue
            target.write_text(original.replace(old, new))
            try:
                run = subprocess.run(
                    [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "tests/test_regressions.py", "-k", tests],
                    cwd=work, capture_output=True, text=True, env=dict(os.environ))
            finally:
                target.write_text(original)
            last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
            killed = run.returncode not in (0, 5)
            survived += not killed
            print(f"{'KILLED' if killed else 'SURVIVED'}: {label}: {last}", flush=True)
        return 1 if survived else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
