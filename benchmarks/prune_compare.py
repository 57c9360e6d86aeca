"""The prune and the first rollup refresh, old code against new, side by side on one table.

Run from the repository root (about ten minutes at the defaults):

    .venv/bin/python -m benchmarks.prune_compare                       # 1M runs, 60 days
    .venv/bin/python -m benchmarks.prune_compare --old 900b5c3 --rows 200000

``--old`` names a commit: its ``gyrinx_tasks/retention.py`` and ``gyrinx_tasks/rollups.py``
are read with ``git show`` into a temporary package that imports everything else (models,
settings) from this tree, so both sides run against the same schema and the same rows.

On a throwaway durable PostgreSQL (benchmarks/_common.py) it loads ``--rows`` runs over
``--span-days`` days (benchmarks/prune.py's loader), then:

1. the first rollup refresh (every stored run), old and new in turns, ``--refreshes`` times
   each, the rollups emptied before each;
2. ``prune()`` with ``TASKS_RETENTION`` 7 days, in slices of ``--slice-seconds`` (its
   ``max_seconds``), old and new in turns, until nothing is left to prune: each side's runs
   deleted a second over its own slices. Both sides delete from the same uniform table,
   oldest first, so turns share the machine's load.

Each slice starts with ``refresh_hours=0`` (no recount of recent hours), so the slices time
the deleting alone.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    REPO_ROOT,
    configure_django,
    load_average,
    machine_lines,
    median,
    postgres_database,
    start_postgres,
    table,
)

OLD_IMPORTS = {
    "from . import rollups": "import gyrinx_old_rollups as rollups",
    "from .": "from gyrinx_tasks.",
}


def old_modules(commit: str, folder: Path) -> tuple[ModuleType, ModuleType]:
    """The old commit's rollups and retention modules, importing the rest from this tree."""
    loaded = []
    for name in ("rollups", "retention"):
        source = subprocess.run(["git", "-C", str(REPO_ROOT), "show",
                                 f"{commit}:gyrinx_tasks/{name}.py"], check=True,
                                capture_output=True, text=True).stdout
        for old, new in OLD_IMPORTS.items():
            source = source.replace(old, new)
        path = folder / f"gyrinx_old_{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"gyrinx_old_{name}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded.append(module)
    return loaded[0], loaded[1]


def empty_rollups() -> None:
    from gyrinx_tasks.models import RollupMark, TaskRollup

    TaskRollup.objects.all().delete()
    RollupMark.objects.all().delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="900b5c3", help="the commit to compare with")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--span-days", type=float, default=60)
    parser.add_argument("--refreshes", type=int, default=2)
    parser.add_argument("--slice-seconds", type=float, default=30)
    parser.add_argument("--stuck-everywhere", action="store_true",
                        help="load with benchmarks/overview.py's loader instead, whose 2 %% "
                             "READY and RUNNING runs are spread over the whole span (the prune "
                             "must step over them)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), "tests.urls",
                         TASKS_RETENTION=timedelta(days=7))
        with tempfile.TemporaryDirectory() as folder:
            run(args, Path(folder))
    finally:
        server.stop()


def run(args: argparse.Namespace, folder: Path) -> None:
    from django.core.management import call_command

    from benchmarks.prune import load_runs
    from gyrinx_tasks import retention, rollups

    call_command("migrate", verbosity=0)
    machine = machine_lines()
    old_rollups, old_retention = old_modules(args.old, folder)
    sides = {"old": (old_rollups, old_retention), "new": (rollups, retention)}
    print(f"Loading {args.rows:,} runs ...", file=sys.stderr)
    if args.stuck_everywhere:
        from benchmarks.overview import load_rows

        load_rows(args.rows, args.span_days)
    else:
        load_runs(args.rows, args.span_days)
    loads = [load_average()]

    refresh: dict[str, list[float]] = {"old": [], "new": []}
    for turn in range(args.refreshes):
        for side in ("old", "new") if turn % 2 == 0 else ("new", "old"):
            empty_rollups()
            began = time.perf_counter()
            sides[side][0].refresh()
            refresh[side].append(time.perf_counter() - began)
            print(f"  refresh {side}: {refresh[side][-1]:.1f} s", file=sys.stderr)
    loads.append(load_average())

    pruned = {"old": [0, 0.0], "new": [0, 0.0]}
    slices = 0
    while True:
        side = ("old", "new")[slices % 2]
        began = time.perf_counter()
        report = sides[side][1].prune(max_seconds=args.slice_seconds, refresh_hours=0)
        pruned[side][0] += report.deleted
        pruned[side][1] += time.perf_counter() - began
        slices += 1
        loads.append(load_average())
        print(f"  prune {side}: {report.deleted:,} runs in {time.perf_counter() - began:.1f} s"
              f" (load {loads[-1]:.2f})", file=sys.stderr)
        if report.finished:
            break

    lines = [f"# Prune and first refresh, {args.old} against this tree "
             f"({args.rows:,} runs over {args.span_days:g} days)", ""]
    lines += [f"- {line}" for line in machine]
    lines += [f"- load average (1 min) over the run: {min(loads):.2f}-{max(loads):.2f}", "",
              f"`python -m benchmarks.prune_compare --old {args.old} --rows {args.rows} "
              f"--span-days {args.span_days:g} --refreshes {args.refreshes} --slice-seconds "
              f"{args.slice_seconds:g}{' --stuck-everywhere' if args.stuck_everywhere else ''}`",
              ""]
    rows = []
    for side in ("old", "new"):
        deleted, seconds = pruned[side]
        rows.append([side, ", ".join(f"{s:.1f} s" for s in refresh[side]),
                     f"{median(refresh[side]):.1f} s", f"{deleted:,} in {seconds:.0f} s",
                     f"{deleted / seconds:,.0f}" if seconds else "–"])
    lines += [table(["code", "first refresh, each turn", "median", "pruned (own slices)",
                     "runs/s"], rows), ""]
    old_rate = pruned["old"][0] / pruned["old"][1] if pruned["old"][1] else 0
    new_rate = pruned["new"][0] / pruned["new"][1] if pruned["new"][1] else 0
    if old_rate:
        lines.append(f"New prunes {new_rate / old_rate:.1f}x as many runs a second; the first "
                     f"refresh takes {median(refresh['new']) / median(refresh['old']):.2f} of "
                     "the old time.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
