"""Run every benchmark, one after another, and write benchmarks/results/latest.md.

    benchmarks/run.sh            # bounded full sizes (about 30-40 minutes on two cores)
    benchmarks/run.sh --quick    # each benchmark's small sizes (about 10 minutes)
    benchmarks/run.sh --only enqueue --only push_server --out /tmp/b.md
    benchmarks/run.sh --only enqueue --update   # rerun one section of benchmarks/results/latest.md

Each benchmark runs as its own process (``python -m benchmarks.NAME ARGS``) with a time
limit; its report (machine lines and tables, with each figure's reference and ratio measured
in that same run) is copied into the output under its own heading, with the exact command.
A benchmark that fails or times out is reported as such, with the end of its output; the
others still run. Nothing here times anything itself.
"""

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO_ROOT, code_version, machine_lines  # noqa: E402

PYTHON = sys.executable

# name: (what it measures, full-size arguments, --quick arguments, time limit in seconds)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], int]] = {
    "enqueue": (
        "Enqueue against the Pub/Sub emulator on PostgreSQL: raw client, gyrinx_tasks' "
        "paths and django-tasks-pubsub 0.5.0 side by side.",
        [], ["--quick"], 1800),
    "push_server": (
        "The push path under gunicorn: the emulator's pushes per worker type, and pushes "
        "per second through /tasks/pubsub/ (OIDC on) against a bare Django view.",
        # Five alternating rounds: the median ratio moves less from run to run than with three.
        ["--rounds", "5"], ["--quick"], 1800),
    "push_endpoint": (
        "The push endpoint in-process on SQLite and PostgreSQL (and through runserver "
        "in the full run).",
        ["--http", "--requests", "2000"], ["--db", "postgres", "--requests", "500"], 1800),
    "push_parsing": (
        "Strict push parsing against a naive parse.",
        ["--rounds", "50"], ["--rounds", "10"], 900),
    "admin_changelist": (
        "The admin run list at scale against Django's stock admin.",
        ["--rows", "1000000"], ["--quick"], 1800),
    "overview": (
        "The Overview page at 1k and 1M runs per window.",
        ["--sizes", "1000,1000000"], ["--sizes", "1000,100000", "--repeat", "5"], 1800),
    "export": (
        "Export at scale: stream_csv, the admin stream view and django-import-export.",
        ["--rows", "1000000"], ["--quick"], 2400),
    "retry_all": (
        "Retry-all: the chunked retry against a naive loop.",
        ["--rows", "200000", "--small", "10000"], ["--quick"], 2400),
    "soak": (
        "Soak: thousands of tasks through the emulator and gunicorn on PostgreSQL, with "
        "failures, duplicate publishes and a worker killed mid-run; nothing lost or run twice.",
        ["--tasks", "5000"], ["--tasks", "500"], 1200),
}


def versions() -> list[str]:
    def version(module: str) -> str:
        try:
            from importlib.metadata import version as get

            return get(module)
        except Exception:  # noqa: BLE001 - reported as unknown
            return "?"

    def command(*args: str) -> str:
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return "?"
        return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"

    return [
        f"- Python {platform.python_version()}, Django {version('django')}, "
        f"google-cloud-pubsub {version('google-cloud-pubsub')}, psycopg {version('psycopg')}, "
        f"gunicorn {version('gunicorn')}",
        f"- PostgreSQL: {command('bash', '-c', 'ls -d /usr/lib/postgresql/*/bin | head -1')}"
        " (a throwaway cluster, tests/infra/postgres.py, with PostgreSQL's default durability:"
        " fsync, synchronous_commit and full_page_writes on; see benchmarks/_common.py)",
        f"- Pub/Sub emulator: {command('gcloud', 'version')} "
        "(`gcloud beta emulators pubsub start`)",
    ]


def machine() -> list[str]:
    return [f"- {line}" for line in machine_lines()]


def run_one(name: str, args: list[str], limit: int) -> tuple[str, float, str]:
    """(status, seconds, output) of one benchmark."""
    began = time.monotonic()
    try:
        out = subprocess.run([PYTHON, "-m", f"benchmarks.{name}", *args], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout or b""  # bytes even with text=True, on some Pythons
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        return f"timed out after {limit} s", time.monotonic() - began, output[-3000:]
    seconds = time.monotonic() - began
    if out.returncode:
        return (f"failed (exit {out.returncode})", seconds,
                (out.stdout[-2000:] + "\n" + out.stderr[-3000:]).strip())
    return "ok", seconds, out.stdout.strip()


def sections(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first benchmark's section, and each benchmark's section by name."""
    head, found, name, body = [], {}, None, []
    for line in text.splitlines():
        title = line[3:].strip() if line.startswith("## ") else None
        if title in BENCHMARKS:
            if name:
                found[name] = "\n".join(body).rstrip() + "\n"
            name, body = title, [line]
        elif name:
            body.append(line)
        else:
            head.append(line)
    if name:
        found[name] = "\n".join(body).rstrip() + "\n"
    return "\n".join(head).rstrip() + "\n", found


def merged(old: str, new: str, names: list[str], started: datetime, mode: str) -> str:
    """``old`` with the sections in ``names`` replaced by ``new``'s, in BENCHMARKS order."""
    head, kept = sections(old)
    # Only the latest rerun is noted: each section carries its own date and commit anyway.
    head = "\n".join(line for line in head.splitlines()
                     if not line.startswith("Sections rerun on ")).rstrip() + "\n"
    _new_head, fresh = sections(new)
    kept.update({name: fresh[name] for name in names if name in fresh})
    note = (f"\nSections rerun on {started:%Y-%m-%d %H:%M} UTC from {code_version()} "
            f"(`benchmarks/run.sh{' --quick' if mode == '--quick' else ''} "
            + " ".join(f"--only {name}" for name in names) + " --update`): "
            + ", ".join(names) + ". The others are from the run above.\n")
    body = "\n".join(kept[name] for name in BENCHMARKS if name in kept)
    return head.rstrip() + "\n" + note + "\n" + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's small sizes")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS),
                        help="run only these (repeatable)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "latest.md"))
    parser.add_argument("--update", action="store_true",
                        help="with --only: replace just those sections of --out, keeping the "
                             "others (each section says when and from which commit it ran)")
    args = parser.parse_args()
    if args.update and not args.only:
        parser.error("--update needs --only: without it every section is run anyway")
    names = args.only or list(BENCHMARKS)
    mode = "--quick" if args.quick else "full"
    started = datetime.now(UTC)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.sh" + (" --quick" if args.quick else "") + "` on "
        f"{started:%Y-%m-%d %H:%M} UTC from {code_version()}. Do not edit by hand: run it "
        "again. Each section is one benchmark's own report, with the command that made it; "
        "every ratio in it compares figures measured side by side in that run.",
        "",
        "## Machine and versions",
        "",
        *machine(),
        *versions(),
        "",
        "## How to reproduce",
        "",
        "```",
        "benchmarks/run.sh            # bounded full sizes",
        "benchmarks/run.sh --quick    # small sizes",
        "benchmarks/run.sh --only enqueue --only push_server",
        "```",
        "",
        "Needs the dev environment (`uv sync`), PostgreSQL's server binaries, the Google Cloud "
        "CLI with the Pub/Sub emulator and Java, and pyenv's Python 3.13 for the "
        "django-tasks-pubsub virtualenv (made under `.cache/bench-peer` on first use). Only "
        "127.0.0.1 is contacted, apart from PyPI for that virtualenv.",
        "",
    ]
    for name in names:
        what, full, quick, limit = BENCHMARKS[name]
        bench_args = quick if args.quick else full
        print(f"running {name} ({mode}) ...", file=sys.stderr, flush=True)
        status, seconds, output = run_one(name, bench_args, limit)
        print(f"  {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
        command = " ".join([".venv/bin/python -m", f"benchmarks.{name}", *bench_args])
        lines += [f"## {name}", "", what, "", f"`{command}`: {status}, {seconds:.0f} s.", ""]
        if status == "ok":
            lines += [output, ""]
        else:
            lines += ["The end of its output:", "", "```", output[-4000:], "```", ""]
    text = "\n".join(lines).rstrip() + "\n"
    if args.update and Path(args.out).exists():
        text = merged(Path(args.out).read_text(), text, names, started, mode)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
