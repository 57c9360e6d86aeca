"""A hand-made mutation check of the admin and the modules behind it (issue 18, item 7).

    .venv/bin/python scripts/mutation_admin.py               # every mutant, 2 at a time
    .venv/bin/python scripts/mutation_admin.py --jobs 1 retry.defer   # chosen ones, by id

mutmut's full run over these modules (~3,800 lines) would take hours on the project's
two-core machine, so this applies a list of plausible one-line bugs instead (each a change a
person could make: a comparison flipped, a state left out of a set, a guard dropped), one at a
time to a copy of the tree, and runs only the test files of that behaviour (`-x`, without the
emulator and browser tests, which tests/mutmut_plugin.py leaves out as it does for mutmut).
KILLED means a test failed; SURVIVED means none did.
scripts/mutation/admin.md holds the last run's figures and why each survivor is harmless
(or which test now kills it); scripts/mutation/admin.json the verdict of each mutant.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
RESULTS = ROOT / "scripts" / "mutation" / "admin.json"

RETRY = ["tests/test_retry.py", "tests/test_retry_transitions.py", "tests/test_admin_retry.py"]
ADMIN_LIST = ["tests/test_admin.py"]
SCHEDULES = ["tests/test_admin_schedules.py"]
EXPORT = ["tests/test_export.py"]
STATS = ["tests/test_stats.py", "tests/test_admin_overview.py"]
REDACTION = ["tests/test_redaction.py", "tests/test_export.py"]
SWITCHES = ["tests/test_killswitches.py"]
CANCEL = ["tests/test_cancel.py"]

R, X, P, S = ("gyrinx_tasks/retry.py", "gyrinx_tasks/admin/executions.py",
              "gyrinx_tasks/admin/pagination.py", "gyrinx_tasks/admin/schedules.py")

# (id, file, text, replacement, test files)
MUTANTS = [
    # --- retry.py ---------------------------------------------------------------------------
    ("retry.skipped-not-retryable", R,
     "RETRYABLE = (State.FAILED, State.REJECTED, State.SKIPPED)",
     "RETRYABLE = (State.FAILED, State.REJECTED)", RETRY),
    ("retry.live-retry-ignored", R,
     "    if live is None:\n        return \"\"\n",
     "    if True:\n        return \"\"\n", RETRY),
    ("retry.one-run-skips-live-check", R,
     "reason = not_retryable_reason(execution.status) or live_retry_refusal(execution)",
     "reason = not_retryable_reason(execution.status)", RETRY),
    ("retry.failed-state-named-wrong", R,
     'state = ("FAILED" if new.status == State.FAILED else',
     'state = ("FAILED" if new.status != State.FAILED else', RETRY),
    ("retry.count-without-the-plus-one", R,
     "retryable=_retryable(queryset)[: limit + 1].count(),",
     "retryable=_retryable(queryset)[: limit].count(),", RETRY),
    ("retry.over-limit-at-the-limit", R,
     "return self.retryable > self.limit", "return self.retryable >= self.limit", RETRY),
    ("retry.top-is-the-lowest-id", R,
     'top = TaskExecution.objects.order_by("-pk")', 'top = TaskExecution.objects.order_by("pk")',
     RETRY),
    ("retry.defer-kept (N+1)", R,
     '.order_by("pk").defer(None)\n', '.order_by("pk")\n', RETRY),
    ("retry.never-settles-the-original", R,
     "settle = original.redelivered_by_pubsub", "settle = False", RETRY),
    ("retry.changed-not-counted", R,
     "report.changed += 1  # a delivery", "report.changed += 0  # a delivery", RETRY),
    ("retry.retry-of-a-retry-links-to-the-first (b)", R,
     "trigger=Trigger.RETRY, retry_of_id=original.pk,",
     "trigger=Trigger.RETRY, retry_of_id=original.retry_of_id or original.pk,", RETRY),
    ("retry.failed-publish-counted-as-published", R,
     "published = execution.result_id not in failed", "published = True", RETRY),
    ("retry.unconfirmed-never-said", R,
     "not published and execution.status == State.READY))",
     "False))", RETRY),
    ("retry.republish-stale-flipped", R,
     "stale = timezone.now() - since > timedelta(seconds=route.ack_deadline)",
     "stale = timezone.now() - since < timedelta(seconds=route.ack_deadline)", RETRY),
    ("retry.republish-of-a-delivered-record", R,
     "if execution.task_id != execution.result_id:", "if False:", RETRY),
    ("retry.republish-not-in-doubt", R,
     "[_pending(execution, route)], in_doubt=True)",
     "[_pending(execution, route)], in_doubt=False)", RETRY),
    # --- admin/executions.py ----------------------------------------------------------------
    ("executions.failed-publish-not-audited (a)", X,
     "        if new is not None:\n            audit(",
     "        if new is not None and not error:\n            audit(", RETRY),
    ("executions.audit-says-published", X,
     "    elif not published:\n", "    elif published:\n", RETRY),
    ("executions.panel-polls-only-if-all-unsettled", X,
     '"retry_polling": any(run.status in UNSETTLED for run in shown),',
     '"retry_polling": all(run.status in UNSETTLED for run in shown),', RETRY),
    ("executions.running-counts-as-settled", X,
     "UNSETTLED = (State.READY, State.RUNNING)", "UNSETTLED = (State.READY,)", RETRY),
    ("executions.button-despite-a-live-retry", X,
     '"can_retry": allowed and obj.status in RETRYABLE and not already,',
     '"can_retry": allowed and obj.status in RETRYABLE,', RETRY),
    ("executions.retry-view-needs-only-view", X,
     "        require(self.has_retry_permission(request))\n        if request.method != \"POST\":\n"
     "            return HttpResponseNotAllowed([\"POST\"])\n        original",
     "        require(self.has_view_permission(request))\n        if request.method != \"POST\":\n"
     "            return HttpResponseNotAllowed([\"POST\"])\n        original", RETRY),
    ("executions.panel-names-any-run-as-new", X,
     'new = original.retries.filter(pk=int(request.GET["new"])).first()',
     'new = TaskExecution.objects.filter(pk=int(request.GET["new"])).first()', RETRY),
    ("executions.retry-across-without-confirmation", X,
     '        across = request.POST.get("select_across") in ("1", "True")\n'
     '        if across and request.POST.get("confirm") != "yes":\n            # "All N',
     '        across = request.POST.get("select_across") in ("1", "True")\n'
     '        if across and request.POST.get("confirm") == "yes":\n            # "All N', RETRY),
    ("executions.one-new-run-linked-as-a-list", X,
     "    if len(new_ids) == 1:\n", "    if False:\n", RETRY),
    ("executions.report-level-always-success", X,
     "messages.SUCCESS if report.retried else messages.WARNING,",
     "messages.SUCCESS,", RETRY),
    ("executions.capped-count-at-the-limit", X,
     'return f"more than {limit:,}" if count > limit else f"{count:,}"',
     'return f"more than {limit:,}" if count >= limit else f"{count:,}"', RETRY),
    ("executions.payload-lookup-allowed-by-path", X,
     'if lookup.split("__", 1)[0] in HEAVY_FIELDS:', "if lookup in HEAVY_FIELDS:",
     REDACTION + ADMIN_LIST),
    ("executions.oldest-retry-shown-as-newest", X,
     'retries = TaskExecution.objects.filter(retry_of=OuterRef("pk")).order_by("-pk")',
     'retries = TaskExecution.objects.filter(retry_of=OuterRef("pk")).order_by("pk")',
     ADMIN_LIST),
    ("executions.traceback-shown-when-redacted", X,
     '"traceback": note if redact else error.get("traceback", ""),',
     '"traceback": error.get("traceback", ""),', REDACTION + ADMIN_LIST),
    ("executions.raw-message-shown-when-redacted", X,
     '"execution_raw_message": (note if redact and obj.raw_message',
     '"execution_raw_message": (note if False and obj.raw_message', REDACTION + ADMIN_LIST),
    ("executions.staff-may-delete-runs", X,
     "return request.user.is_active and request.user.is_superuser",
     "return request.user.is_active and request.user.is_staff", ADMIN_LIST),
    ("executions.cancel-button-despite-refusal", X,
     '"can_cancel": allowed and obj.status == State.READY and not reason,',
     '"can_cancel": allowed and obj.status == State.READY,', CANCEL),
    ("executions.recovery-filter-uncapped", X,
     "            paginator.count_cap = self.recovery_count_cap\n", "            pass\n",
     ADMIN_LIST),
    ("executions.cut-off-attempt-still-running", X,
     'current["outcome"] = "cut off"', 'current["outcome"] = "running"', ADMIN_LIST),
    # --- admin/pagination.py ----------------------------------------------------------------
    ("pagination.page-0-reaches-the-slice (d)", P,
     "        if number < 1:\n", "        if number < 0:\n", ADMIN_LIST),
    ("pagination.empty-page-boundary", P,
     "if bound is not None and bottom >= bound:", "if bound is not None and bottom > bound:",
     ADMIN_LIST),
    ("pagination.estimate-boundary", P,
     "if estimate is not None and estimate >= self.exact_below:",
     "if estimate is not None and estimate > self.exact_below:", ADMIN_LIST),
    ("pagination.capped-at-the-cap", P,
     "if capped > self.count_cap:", "if capped >= self.count_cap:", ADMIN_LIST),
    ("pagination.one-page-fewer-after", P,
     "yield from range(start, number + on_each_side + 1)",
     "yield from range(start, number + on_each_side)", ADMIN_LIST),
    # --- admin/schedules.py -----------------------------------------------------------------
    ("schedules.skipped-rejected-not-settled (c)", S,
     "SETTLED = {State.SUCCESSFUL, State.FAILED, State.SKIPPED, State.REJECTED, State.CANCELLED}",
     "SETTLED = {State.SUCCESSFUL, State.FAILED, State.CANCELLED}", SCHEDULES),
    ("schedules.watch-expires-for-a-found-run", S,
     "expired = polling and watched is None and time.time() - since > WATCH_LIMIT",
     "expired = polling and watched is not None and time.time() - since > WATCH_LIMIT",
     SCHEDULES),
    ("schedules.no-clock-skew", S,
     "not 0 <= since <= time.time() + CLOCK_SKEW:", "not 0 <= since <= time.time():",
     SCHEDULES),
    ("schedules.hold-shown-as-skip", S,
     "        if switch.mode == SwitchMode.HOLD:\n", "        if switch.mode != SwitchMode.HOLD:\n",
     SCHEDULES),
    ("schedules.run-now-needs-only-view", S,
     "require(self.has_run_permission(request))", "require(self.has_view_permission(request))",
     SCHEDULES),
    ("schedules.stop-polling-without-a-watch", S,
     'if context["watch"] and not context["polling"]:', 'if not context["polling"]:', SCHEDULES),
    # --- stats.py ---------------------------------------------------------------------------
    ("stats.failure-rate-over-all", "gyrinx_tasks/stats.py",
     "return self.count(State.FAILED) / finished if finished else None",
     "return self.count(State.FAILED) / self.total if finished else None", STATS),
    ("stats.bar-past-the-end", "gyrinx_tasks/stats.py",
     "if 0 <= index < window.buckets:", "if 0 <= index <= window.buckets:", STATS),
    ("stats.failed-bars-of-the-others", "gyrinx_tasks/stats.py",
     'if group["status"] == State.FAILED:', 'if group["status"] != State.FAILED:', STATS),
    ("stats.percentile-off-by-one", "gyrinx_tasks/stats.py",
     "position = fraction * (len(ordered) - 1)", "position = fraction * len(ordered)", STATS),
    ("stats.running-counted-as-ready", "gyrinx_tasks/stats.py",
     'if pending["status"] == State.READY:', 'if pending["status"] != State.READY:', STATS),
    ("stats.window-not-rounded-up", "gyrinx_tasks/stats.py",
     "epoch = math.floor(now.timestamp() / size) * size + size",
     "epoch = math.floor(now.timestamp() / size) * size", STATS),
    ("stats.recent-failures-include-until", "gyrinx_tasks/stats.py",
     "        TaskExecution.objects.filter(status=State.FAILED, created_at__gte=since,\n"
     "                                     created_at__lt=until)",
     "        TaskExecution.objects.filter(status=State.FAILED, created_at__gte=since,\n"
     "                                     created_at__lte=until)", STATS),
    # --- export.py and admin/exports.py -----------------------------------------------------
    ("export.at-sign-not-a-formula", "gyrinx_tasks/export.py",
     'FORMULA_TRIGGERS = ("=", "+", "-", "@", "\\t", "\\r")',
     'FORMULA_TRIGGERS = ("=", "+", "-", "\\t", "\\r")', EXPORT),
    ("export.bare-date-not-recognised", "gyrinx_tasks/export.py",
     "if len(text) == 10:", "if len(text) == 11:", EXPORT),
    ("export.equal-since-and-until-allowed", "gyrinx_tasks/export.py",
     "if since and until and since >= until:", "if since and until and since > until:", EXPORT),
    ("export.until-inclusive", "gyrinx_tasks/export.py",
     "queryset = queryset.filter(created_at__lt=until)",
     "queryset = queryset.filter(created_at__lte=until)", EXPORT),
    ("export.redacts-the-shown", "gyrinx_tasks/export.py",
     "if row[name_at] not in shown:", "if row[name_at] in shown:", EXPORT),
    ("export.reveal-flag-ignored", "gyrinx_tasks/export.py",
     "if reveal_redacted or not payload:", "if not payload:", REDACTION),
    ("exports.row-cap-at-the-cap", "gyrinx_tasks/admin/exports.py",
     "> self.export_max_rows:", ">= self.export_max_rows:", EXPORT),
    ("exports.items-at-the-limit", "gyrinx_tasks/admin/exports.py",
     "if len(items) > limit:", "if len(items) >= limit:", EXPORT),
    ("exports.non-ascii-digits-allowed", "gyrinx_tasks/admin/exports.py",
     "if not all(item.isascii() and item.isdigit() and len(item) <= 18 for item in items):",
     "if not all(item.isdigit() and len(item) <= 18 for item in items):", EXPORT),
    ("exports.export-without-view", "gyrinx_tasks/admin/exports.py",
     "return self.has_view_permission(request) and has_model_permission(",
     "return True and has_model_permission(", EXPORT),
    # --- redaction.py -----------------------------------------------------------------------
    ("redaction.shared-name-shown", "gyrinx_tasks/redaction.py",
     "return frozenset(route.name for route in routes if route.name not in redacted)",
     "return frozenset(route.name for route in routes if not route.redact)", REDACTION),
    ("redaction.inactive-user-sees-payload", "gyrinx_tasks/redaction.py",
     "user is not None and user.is_active and user.has_perm",
     "user is not None and user.has_perm", REDACTION),
    ("redaction.unknown-task-note-as-known", "gyrinx_tasks/redaction.py",
     "return REDACTED_NOTE if task_name in known else REDACTED_UNKNOWN_NOTE",
     "return REDACTED_NOTE", REDACTION),
    ("redaction.log-filter-open-on-unreadable-registry", "gyrinx_tasks/redaction.py",
     "if paths is None or record.args[1] in paths:",
     "if paths is not None and record.args[1] in paths:", REDACTION),
    ("redaction.unreadable-registry-shows-all", "gyrinx_tasks/redaction.py",
     "    except RegistryError:\n        return frozenset()\n",
     "    except RegistryError:\n        return frozenset({\"add\", \"echo\"})\n", REDACTION),
    # --- admin/killswitches.py --------------------------------------------------------------
    ("killswitches.hold-shown-as-skip", "gyrinx_tasks/admin/killswitches.py",
     'return "hold" if self.mode == SwitchMode.HOLD else "skip"',
     'return "hold" if self.mode != SwitchMode.HOLD else "skip"', SWITCHES),
    ("killswitches.blank-reason-accepted", "gyrinx_tasks/admin/killswitches.py",
     'not (cleaned.get("reason") or "").strip():', 'not (cleaned.get("reason") or ""):',
     SWITCHES),
    ("killswitches.off-since-kept-on-mode-change", "gyrinx_tasks/admin/killswitches.py",
     'elif obj.off_since is None or {"enabled", "mode"} & set(form.changed_data):',
     "elif obj.off_since is None:", SWITCHES),
    ("killswitches.retention-not-added", "gyrinx_tasks/admin/killswitches.py",
     "return since + MESSAGE_RETENTION if since else None", "return since if since else None",
     SWITCHES),
    ("killswitches.delete-without-change", "gyrinx_tasks/admin/killswitches.py",
     "return self.has_change_permission(request)  # deleting it turns the task on",
     "return True  # deleting it turns the task on", SWITCHES),
    # --- admin/base.py ----------------------------------------------------------------------
    ("base.action-refused-only-if-all-refused", "gyrinx_tasks/admin/base.py",
     "if any(name in known and name not in allowed for name in names):",
     "if all(name in known and name not in allowed for name in names):", RETRY + CANCEL),
]


def copy_tree(work: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
        elif source.is_symlink():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source), work / name)


def run_one(work: Path, mutant: tuple) -> dict:
    ident, path, old, new, tests = mutant
    target = work / path
    original = target.read_text()
    if original.count(old) != 1:
        return {"id": ident, "verdict": "NOT APPLIED", "detail": f"not once in {path}"}
    target.write_text(original.replace(old, new))
    started = time.monotonic()
    try:
        run = subprocess.run(
            # tests/mutmut_plugin.py leaves out the tests that need the emulator or Chromium
            # (by fixture as well as by marker) and gives the session a SQLite file of its own.
            [str(PYTHON), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             "-p", "tests.mutmut_plugin", "-m", "not emulator and not browser", *tests],
            cwd=work, capture_output=True, text=True, env=dict(os.environ))
    finally:
        target.write_text(original)
    lines = run.stdout.strip().splitlines() or ["(no output)"]
    # The first failing test (an "ERROR" line may be a captured log line, so those come last).
    failed = ([line for line in lines if line.startswith("FAILED ")]
              or [line for line in lines if line.startswith("ERROR tests/")])
    killed = run.returncode not in (0, 5)
    return {"id": ident, "file": path, "tests": tests,
            "verdict": "KILLED" if killed else "SURVIVED",
            "by": failed[0] if failed else "", "summary": lines[-1],
            "seconds": round(time.monotonic() - started)}


def main(argv: list[str]) -> int:
    jobs = 2
    if argv[:1] == ["--jobs"]:
        jobs, argv = int(argv[1]), argv[2:]
    chosen = [m for m in MUTANTS if not argv or any(m[0].startswith(a) for a in argv)]
    works = [Path(tempfile.mkdtemp(prefix="gyrinx-admin-mutants-")) for _ in range(jobs)]
    free = list(works)
    results: list[dict] = []
    try:
        for work in works:
            copy_tree(work)

        def job(mutant: tuple) -> dict:
            work = free.pop()
            try:
                result = run_one(work, mutant)
            finally:
                free.append(work)
            said = result.get("by") or result.get("summary", "")
            print(f"{result['verdict']}: {result['id']}: {said} ({result.get('seconds', 0)} s)",
                  flush=True)
            return result

        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(job, chosen))
    finally:
        for work in works:
            shutil.rmtree(work, ignore_errors=True)
    if not argv:  # a whole run: keep its verdicts
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    survived = sum(r["verdict"] != "KILLED" for r in results)
    print(f"{len(results)} mutants, {len(results) - survived} killed, {survived} survived")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
