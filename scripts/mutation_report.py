"""Turn mutmut's results into the figures of docs/testing.md and scripts/mutation/survivors.md.

    .venv/bin/mutmut run --max-children 2                  # fills mutants/ (see docs/testing.md)
    .venv/bin/python scripts/mutation_report.py save before   # or: save after
    .venv/bin/python scripts/mutation_report.py save before runner  # only runner.py's mutants
    .venv/bin/python scripts/mutation_report.py write         # the table and the survivor list

``save NAME`` keeps the status of every mutant (``mutmut results --all true``) in
scripts/mutation/NAME.json, with the mutated line of each one that was not killed (from
``mutmut show``), so a later run can be compared with it. Naming modules keeps only their
mutants and merges them into the snapshot (runner.py's "before" was taken later than the
others', after the lead's changes to it). ``write`` puts the before/after table
between the markers in docs/testing.md and lists every survivor of the "after" snapshot in
scripts/mutation/survivors.md, each with the reason given in scripts/mutation_survivors.toml
(a survivor without one is listed as "NOT ACCOUNTED FOR" and the command exits 1).
"""

import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = ROOT / ".venv" / "bin" / "mutmut"
SNAPSHOTS = ROOT / "scripts" / "mutation"
REASONS = ROOT / "scripts" / "mutation_survivors.toml"
TESTING = ROOT / "docs" / "testing.md"
SURVIVORS = ROOT / "scripts" / "mutation" / "survivors.md"
START, END = "<!-- mutation-table:start -->", "<!-- mutation-table:end -->"
MODULES = ["push", "auth", "views", "models", "runner"]
# mutmut's statuses that count as a kill: a test failed, the tests ran out of time (the mutant
# loops), or the type checker refused it.
KILLED = {"killed", "timeout", "caught by type check"}
LINE = re.compile(r"^    (\S+): (.+)$")


def mutmut(*args: str) -> str:
    run = subprocess.run([str(MUTMUT), *args], cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed:\n{run.stdout}{run.stderr}")
    return run.stdout


def module_of(name: str) -> str:
    return name.split(".")[1]  # gyrinx_tasks.<module>.x_function__mutmut_N


def mutated_line(name: str) -> str:
    """The first added line of the mutant's diff, stripped: what the mutant says instead."""
    for line in mutmut("show", name).splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def save(label: str, modules: list[str]) -> None:
    statuses = {}
    for line in mutmut("results", "--all", "true").splitlines():
        match = LINE.match(line)
        if match and (not modules or module_of(match[1]) in modules):
            statuses[match[1]] = match[2]
    unchecked = [name for name, status in statuses.items() if status == "not checked"]
    if unchecked:  # a run stopped at its time limit: the table says how many
        print(f"warning: {len(unchecked)} mutants are not checked (e.g. {unchecked[0]})")
    lines = {name: mutated_line(name) for name, status in statuses.items()
             if status not in KILLED and status != "not checked"}
    snapshot = {"status": statuses, "line": lines}
    if modules:  # merged: the other modules' mutants stay as they were saved
        old = load(label)
        snapshot = {key: {name: value for name, value in old[key].items()
                          if module_of(name) not in modules} | snapshot[key]
                    for key in snapshot}
        statuses = snapshot["status"]
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    path = SNAPSHOTS / f"{label}.json"
    path.write_text(json.dumps(snapshot, indent=1,
                               sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(statuses)} mutants, "
          f"{sum(s in KILLED for s in statuses.values())} killed")


def load(label: str) -> dict:
    path = SNAPSHOTS / f"{label}.json"
    return json.loads(path.read_text()) if path.exists() else {"status": {}, "line": {}}


def counts(statuses: dict[str, str], module: str | None) -> tuple[int, int, Counter]:
    """(mutants checked, killed, count by status) of one module, or of all."""
    chosen = [s for name, s in statuses.items() if module is None or module_of(name) == module]
    tally = Counter(chosen)
    return len(chosen) - tally["not checked"], sum(s in KILLED for s in chosen), tally


def score(statuses: dict[str, str], module: str | None) -> str:
    checked, killed, tally = counts(statuses, module)
    if not checked:
        return "not run"
    unchecked = f", {tally['not checked']} not checked" if tally["not checked"] else ""
    return f"{killed}/{checked} ({100 * killed / checked:.1f}%){unchecked}"


def table(before: dict, after: dict) -> str:
    rows = ["| module | before: killed/all | after: killed/all | after: survived | "
            "after: no test runs it |", "|---|---|---|---|---|"]
    for module in [*MODULES, None]:
        _, _, tally = counts(after["status"], module)
        rows.append(
            f"| {f'`{module}.py`' if module else '**all five**'} | "
            f"{score(before['status'], module)} | {score(after['status'], module)} | "
            f"{tally['survived']} | {tally['no tests']} |")
    return "\n".join(rows)


def reasons() -> tuple[dict[str, str], dict[str, str]]:
    data = tomllib.loads(REASONS.read_text())
    return data["categories"], data["mutants"]


def write() -> int:
    before, after = load("before"), load("after")
    text = TESTING.read_text()
    if START not in text or END not in text:
        sys.exit(f"{TESTING.relative_to(ROOT)} has no {START} ... {END} markers.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    categories, given = reasons()
    left = {name: status for name, status in after["status"].items()
            if status not in KILLED and status != "not checked"}
    by_category: Counter = Counter()
    entries, missing = [], 0
    for name in sorted(left, key=lambda n: (MODULES.index(module_of(n)), n)):
        category, _, note = given.get(name.removeprefix("gyrinx_tasks."), "").partition(":")
        if category not in categories:
            missing += 1
            category, note = "NOT ACCOUNTED FOR", ""
        by_category[category] += 1
        why = note.strip()
        code = after["line"].get(name, "").replace("|", "\\|")
        if len(code) > 90:
            code = code[:87] + "..."
        entries.append(f"| `{name.removeprefix('gyrinx_tasks.')}` | {left[name]} | "
                       f"`{code}` | {category} | {why} |")
    summary = ["| category | what it means | mutants |", "|---|---|---|"] + [
        f"| {category} | {categories.get(category, 'no reason given yet')} | {count} |"
        for category, count in by_category.most_common()]
    TESTING.write_text(f"{head}{START}\n{table(before, after)}\n\nThe survivors of the after "
                       f"run, by reason:\n\n" + "\n".join(summary) + f"\n{END}{tail}")
    SURVIVORS.write_text(
        "# Surviving mutants\n\nGenerated by `scripts/mutation_report.py write` from "
        "scripts/mutation/after.json and the reasons in scripts/mutation_survivors.toml; "
        "docs/testing.md (\"Mutation testing\") says how the run is made. Show one with "
        "`.venv/bin/mutmut show gyrinx_tasks.NAME` after a run.\n\n"
        "The categories, with how many survivors each holds (a mutant's note, where there is "
        "one, says more):\n\n" + "\n".join(
            f"- **{category}** ({count}): {categories.get(category, 'no reason given yet')}."
            for category, count in by_category.most_common()) + "\n\n"
        "| mutant | status | the mutated line | category | note |\n"
        "|---|---|---|---|---|\n" + "\n".join(entries) + "\n")
    # Modules with a "before" but no "after" yet (runner.py, see docs/testing.md): their
    # survivors are listed unclassified, for the follow-up.
    pending = sorted({module_of(n) for n in before["status"]}
                     - {module_of(n) for n in after["status"]}, key=MODULES.index)
    for module in pending:
        names = sorted(n for n, status in before["status"].items()
                       if module_of(n) == module and status not in KILLED
                       and status != "not checked")
        rows = [f"| `{n.removeprefix('gyrinx_tasks.')}` | {before['status'][n]} | "
                f"`{before['line'].get(n, '')[:87].replace('|', chr(92) + '|')}` |"
                for n in names]
        with SURVIVORS.open("a") as out:
            out.write(f"\n## {module}.py: survivors of the before run, not yet accounted "
                      f"for\n\n| mutant | status | the mutated line |\n|---|---|---|\n"
                      + "\n".join(rows) + "\n")
    print(table(before, after))
    print("\n".join(summary))
    stale = sorted(set(given) - {name.removeprefix("gyrinx_tasks.") for name in left})
    if stale:
        print(f"{len(stale)} entries of {REASONS.relative_to(ROOT)} are not survivors "
              f"(killed since, or renamed): {', '.join(stale)}")
    if missing:
        print(f"{missing} survivors are not accounted for in {REASONS.relative_to(ROOT)}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["save"] and len(argv) >= 2:
        save(argv[1], argv[2:])
        return 0
    if argv == ["write"]:
        return write()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
