"""Old code and new side by side: the ratios issue 16 sets targets for, in one command.

    benchmarks/compare.sh                           # old = 637e7c2, 2 pairs (at most 8 min)
    benchmarks/compare.sh --old-tree /work/wt-old   # an existing checkout of the old commit
    benchmarks/compare.sh --pairs 1                 # about 3 minutes

The old code runs from its own checkout with its own virtualenv (``--old-tree``, made with
``git worktree add --detach`` and scripts/bootstrap.sh when missing). Both sides run THIS
tree's benchmark scripts (copied next to the old checkout's code for the old side), so the
same cases are measured the same way on both, on a durable PostgreSQL (benchmarks/_common.py).

Each pair runs (no new pair starts that would end after BUDGET seconds, so the whole takes
at most about 8 minutes), alternating which side goes first: ``benchmarks.enqueue`` (one confirmed
Publish request, single ``enqueue()``, ``publish_on_commit`` and its floor) and
``benchmarks.push_server --rate-only`` (pushes per second against the bare view). Printed:
each run's ratios, with the 1-minute load average before it, then the medians:

- publish_on_commit / floor (target at least 0.8), for each side;
- push path / bare view (target at least 0.7), for each side;
- single enqueue(), new / old: the two rates, and the same for each rate divided by one
  confirmed Publish request measured in its own run (less sensitive to the load of the
  moment; target: not below 1);
- the enqueue ratios by CPU per call (the caller's thread and its PostgreSQL backend), which
  waiting for a core on a loaded machine does not inflate.

Only 127.0.0.1 is contacted (and the package index of scripts/bootstrap.sh, once).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, load_average, table  # noqa: E402

OLD_COMMIT = "637e7c2"  # main before issue 16's engine work
ENQUEUE = ["--bulk", "2000", "--single", "500", "--rounds", "3",
           "--cases", "raw-request,single,commit,floor"]
PUSH = ["--rate-only", "--requests", "600", "--rounds", "3"]
TIME_LIMIT = 300  # seconds per benchmark run
BUDGET = 450  # seconds: no new pair starts unless it is expected to end within this


def old_checkout(path: Path, commit: str) -> Path:
    """The old commit's checkout with its virtualenv, made if missing."""
    python = path / ".venv" / "bin" / "python"
    if not path.exists():
        print(f"making {path} at {commit} ...", file=sys.stderr, flush=True)
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(path),
                        commit], check=True, capture_output=True, text=True)
    if not python.exists():
        print(f"bootstrapping {path} ...", file=sys.stderr, flush=True)
        subprocess.run(["bash", "-c", "source scripts/bootstrap.sh"], cwd=path, check=True)
    return python


def overlay(old: Path) -> Path:
    """A directory holding a copy of this tree's benchmarks/, to run them against ``old``'s
    code (found through PYTHONPATH)."""
    root = Path(tempfile.mkdtemp(prefix="gyrinx-compare-"))
    shutil.copytree(REPO_ROOT / "benchmarks", root / "benchmarks",
                    ignore=shutil.ignore_patterns("results", "__pycache__"))
    return root


def run(side: dict[str, Any], module: str, args: list[str]) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix=f"gyrinx-{module}-", suffix=".json")[1])
    load = load_average()
    began = time.monotonic()
    done = subprocess.run([str(side["python"]), "-m", f"benchmarks.{module}", *args,
                           "--json", str(out)], cwd=side["cwd"], env=side["env"],
                          capture_output=True, text=True, timeout=TIME_LIMIT)
    if done.returncode:
        sys.exit(f"{side['name']}: benchmarks.{module} failed (exit {done.returncode}):\n"
                 f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    figures = json.loads(out.read_text())
    out.unlink()
    return {"load": load, "seconds": time.monotonic() - began, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-tree", default=str(REPO_ROOT / ".cache" / "bench-old"),
                        help="checkout of the old commit (made there if missing)")
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--pairs", type=int, default=2,
                        help="old/new pairs of runs, alternating which goes first (2)")
    args = parser.parse_args()
    old_tree = Path(args.old_tree).resolve()
    old_python = old_checkout(old_tree, args.old_commit)
    root = overlay(old_tree)
    env = {key: value for key, value in os.environ.items()
           if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    sides = {
        "new": {"name": "new", "python": REPO_ROOT / ".venv" / "bin" / "python",
                "cwd": REPO_ROOT, "env": env},
        "old": {"name": "old", "python": old_python, "cwd": root,
                "env": {**env, "PYTHONPATH": str(old_tree)}},
    }
    began = time.monotonic()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"enqueue": [], "push": []} for name in sides}
    try:
        for pair in range(args.pairs):
            elapsed = time.monotonic() - began
            if pair and elapsed + elapsed / pair > BUDGET:
                print(f"stopping after {pair} pair(s): another would end after {BUDGET} s",
                      file=sys.stderr, flush=True)
                break
            order = ["new", "old"] if pair % 2 == 0 else ["old", "new"]
            for name in order:
                print(f"pair {pair + 1}: {name} enqueue ...", file=sys.stderr, flush=True)
                results[name]["enqueue"].append(run(sides[name], "enqueue", ENQUEUE))
            for name in reversed(order):
                print(f"pair {pair + 1}: {name} push_server ...", file=sys.stderr, flush=True)
                results[name]["push"].append(run(sides[name], "push_server", PUSH))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(results, args, time.monotonic() - began))


def report(results: dict[str, Any], args: argparse.Namespace, seconds: float) -> str:
    from benchmarks._common import machine_lines

    rows = []
    for name in ("new", "old"):
        for n, figures in enumerate(results[name]["enqueue"]):
            rates, ratios = figures["rates"], figures["ratios"]
            rows.append([name, f"enqueue {n + 1}", f"{figures['load']:.1f}",
                         f"{rates['ours, enqueue()']:,.0f}/s",
                         f"{rates['raw, one request each']:,.0f}/s",
                         f"{ratios['enqueue() / one request']:.2f}",
                         f"{ratios['publish_on_commit / floor']:.2f}", "-"])
        for n, figures in enumerate(results[name]["push"]):
            rows.append([name, f"push {n + 1}", f"{figures['load']:.1f}", "-", "-", "-", "-",
                         f"{figures['push / bare']:.2f}"])
    text = [
        "# Issue 16: old and new side by side",
        "",
        *[f"- {line}" for line in machine_lines({
            "old": f"{args.old_commit} ({args.old_tree})",
            "command": "benchmarks/compare.sh " + " ".join(sys.argv[1:]),
            "took": f"{seconds:.0f} s"})],
        "",
        "Each run, with the 1-minute load average before it:",
        "",
        table(["code", "run", "load", "enqueue()", "one request", "enqueue() / request",
               "publish_on_commit / floor", "push / bare"], rows),
        "",
    ]

    def med(name: str, kind: str, key: str, ratio: str | None = None) -> float:
        return statistics.median(
            figures["ratios"][ratio] if ratio else figures[key]
            for figures in results[name][kind])

    def cpu(name: str, ratio: str) -> str:
        values = [figures.get("cpu_ratios", {}).get(ratio)
                  for figures in results[name]["enqueue"]]
        found = [value for value in values if value is not None]
        return f"{statistics.median(found):.2f}" if found else "-"

    single = [new["rates"]["ours, enqueue()"] / old["rates"]["ours, enqueue()"]
              for new, old in zip(results["new"]["enqueue"], results["old"]["enqueue"],
                                  strict=True)]
    normalised = [new["ratios"]["enqueue() / one request"]
                  / old["ratios"]["enqueue() / one request"]
                  for new, old in zip(results["new"]["enqueue"], results["old"]["enqueue"],
                                      strict=True)]
    text += [
        "Medians (targets in brackets):",
        "",
        f"- publish_on_commit / floor (>= 0.8): new "
        f"{med('new', 'enqueue', '', 'publish_on_commit / floor'):.2f}, old "
        f"{med('old', 'enqueue', '', 'publish_on_commit / floor'):.2f}",
        f"- push / bare (>= 0.7): new {med('new', 'push', 'push / bare'):.2f}, old "
        f"{med('old', 'push', 'push / bare'):.2f}",
        f"- single enqueue(), new / old (>= 1): {statistics.median(single):.2f} "
        f"(pairs: {', '.join(f'{value:.2f}' for value in single)}); each divided by one "
        f"confirmed Publish request in its own run: {statistics.median(normalised):.2f} "
        f"(pairs: {', '.join(f'{value:.2f}' for value in normalised)})",
        "- by CPU per call (the caller's thread and its PostgreSQL backend; waiting for a "
        "core is not counted, so steadier under load): publish_on_commit / floor new "
        f"{cpu('new', 'publish_on_commit / floor')}, old "
        f"{cpu('old', 'publish_on_commit / floor')}; enqueue() / one request new "
        f"{cpu('new', 'enqueue() / one request')}, old {cpu('old', 'enqueue() / one request')}",
    ]
    return "\n".join(text)


if __name__ == "__main__":
    main()
