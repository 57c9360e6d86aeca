"""Apply each of a list of small code changes to a copy of the tree and run the tests meant to
catch it. Prints KILLED (the tests failed, as they should) or SURVIVED for each.

    .venv/bin/python scripts/mutation_check.py            # on SQLite
    GYRINX_TEST_DB=postgres .venv/bin/python scripts/mutation_check.py

The changes are the ones issue 9 listed as leaving the suite green; the tests that now catch
them live with the behaviour they hold (tests/test_claim.py, test_recording.py,
test_killswitches.py), each with a comment "Change caught: ...". This is a targeted check, not
a mutation-testing tool's full run: see docs/testing.md.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"

CLAIM, RECORDING = "tests/test_claim.py::", "tests/test_recording.py::"
CHANGED_BETWEEN = (CLAIM +
                   "test_a_run_changed_between_read_and_write_is_decided_again_under_the_lock")

# (name, file, text, replacement, the tests that must fail under the change)
MUTANTS = [
    ("only SUCCESSFUL counts as settled", "gyrinx_tasks/models.py",
     "SETTLED = (State.SUCCESSFUL, State.SKIPPED, State.REJECTED)",
     "SETTLED = (State.SUCCESSFUL,)",
     [CLAIM + "test_redelivery_of_a_skipped_run_does_not_run_it",
      CLAIM + "test_redelivery_of_a_rejected_run_does_not_run_it"]),
    ("the run read without FOR UPDATE NOWAIT", "gyrinx_tasks/claim.py",
     'execution = select_run(db, "result_id", delivery.task_id, lock=True,',
     'execution = select_run(db, "result_id", delivery.task_id, lock=False,',
     [CLAIM + "test_delivery_waits_for_a_run_locked_by_another_transaction"]),
    ("the transitions' compare-and-set without status", "gyrinx_tasks/models.py",
     'EXPECTED_FIELDS = ("status", "attempts", "timeline")',
     'EXPECTED_FIELDS = ("attempts", "timeline")', [CHANGED_BETWEEN]),
    ("the transitions' compare-and-set without the timeline", "gyrinx_tasks/models.py",
     'EXPECTED_FIELDS = ("status", "attempts", "timeline")',
     'EXPECTED_FIELDS = ("status", "attempts")',
     [CHANGED_BETWEEN, RECORDING + "test_the_outcome_keeps_a_note_written_while_the_task_ran"]),
    ("a late outcome forgotten before it is written", "gyrinx_tasks/claim.py",
     "            write(execution, db)\n            record.forget(late)",
     "            record.forget(late)\n            write(execution, db)",
     [RECORDING + "test_an_outcome_recorded_late_survives_a_race_of_the_unlocked_claim"]),
    ("record_rejection no longer finds the earlier record", "gyrinx_tasks/claim.py",
     "        if execution is None and message_id:", "        if False and message_id:",
     [CLAIM + "test_redelivered_malformed_message_is_recorded_once"]),
    ("environment switch word 'off' ignored", "gyrinx_tasks/killswitch.py",
     'frozenset({"0", "false", "no", "off"})', 'frozenset({"0", "false", "no"})',
     ["tests/test_killswitches.py::test_every_documented_off_word_turns_the_env_switch_off"]),
    ("recording failures not swallowed", "gyrinx_tasks/signals.py",
     "except DatabaseError:", "except ZeroDivisionError:",
     [RECORDING + "test_a_recording_failure_does_not_break_an_immediate_enqueue"]),
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
                    [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
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
