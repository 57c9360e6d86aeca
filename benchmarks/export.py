"""Exporting a million runs: the streaming CSV writer against django-import-export's export.

Run from the repository root. At the default million rows it takes about eight minutes,
most of it django-import-export; ``--quick`` (100,000 rows) about a minute:

    .venv/bin/python -m benchmarks.export             # 1,000,000 rows
    .venv/bin/python -m benchmarks.export --quick     # 100,000 rows

It starts a throwaway PostgreSQL cluster (the test suite's, see tests/infra/postgres.py),
migrates, and loads ``--rows`` runs with benchmarks/admin_changelist.py's generator (a year
of runs; failed ones carry a traceback in ``errors``). Then each exporter runs once, in a
subprocess of its own, so that its peak resident memory (``ru_maxrss``) is its own:

- ``stream_csv``: gyrinx_tasks.export.stream_csv(), ``csv.writer`` over
  ``.values_list(...).iterator(chunk_size=2000)`` (a server-side cursor), to a file;
- ``admin stream view``: the same through the admin's StreamingHttpResponse view, read by
  Django's test client as a browser would download it, to a file;
- ``import-export``: TaskExecutionResource().export() (the admin's Export button), which
  builds a tablib Dataset of every row, then CSV().export_data() and a write to a file.

Every exporter writes the same columns (no payload) for the same rows in the same order;
each child reports a SHA-256 of its file and the script stops if they differ. The output is
a Markdown table of rows per second, wall time, peak and baseline (after Django set-up)
resident memory, and the ratios. Only 127.0.0.1 is contacted; every query is capped at 120 s.
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    REPO_ROOT,
    configure_django,
    machine_lines,
    postgres_database,
    start_postgres,
    table,
)

# Filled in by the admin-view child once Django is set up.
urlpatterns: list = []

EXPORTERS = {
    "stream": "stream_csv",
    "view": "admin stream view",
    "import-export": "import-export",
}


def rss_mb() -> float:
    """Current resident memory of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(kind: str, port: str, out_path: str) -> None:
    """Run one exporter and print its figures as JSON (the parent reads the last line)."""
    configure_django(postgres_database(port), root_urlconf=__name__)
    from django.db import connection

    from gyrinx_tasks.export import TaskExecutionResource, write_csv
    from gyrinx_tasks.models import TaskExecution

    connection.ensure_connection()
    baseline = rss_mb()
    queryset = TaskExecution.objects.all()
    began = time.perf_counter()
    if kind == "stream":
        with open(out_path, "w", newline="", encoding="utf-8") as out:
            rows = write_csv(out, queryset)
    elif kind == "view":
        rows = _through_the_admin(out_path)
    elif kind == "import-export":
        from import_export.formats.base_formats import CSV

        dataset = TaskExecutionResource().export(queryset)
        rows = len(dataset)
        with open(out_path, "w", newline="", encoding="utf-8") as out:
            out.write(CSV().export_data(dataset))
    else:
        raise SystemExit(f"Unknown exporter {kind!r}; use one of {', '.join(EXPORTERS)}.")
    elapsed = time.perf_counter() - began
    peak = peak_mb()  # before hashing, which must not count
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_mb": peak,
                      "baseline_mb": baseline, "sha256": sha256(out_path),
                      "bytes": Path(out_path).stat().st_size}))


def sha256(file_path: str) -> str:
    digest = hashlib.sha256()
    with open(file_path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _through_the_admin(out_path: str) -> int:
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import path, reverse

    urlpatterns[:] = [path("admin/", admin.site.urls)]
    user, _ = User.objects.get_or_create(username="bench", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    # The stream exports on POST only (the test client skips the CSRF check).
    response = client.post(reverse("admin:gyrinx_tasks_taskexecution_export_stream"))
    if response.status_code != 200 or not response.streaming:
        raise SystemExit(f"The stream view answered {response.status_code}; expected a "
                         "streamed 200.")
    lines = 0
    with open(out_path, "wb") as out:
        for piece in response.streaming_content:
            out.write(piece)
            lines += piece.count(b"\n")
    return lines - 1  # the header


def run_child(kind: str, port: int, workdir: str) -> dict:
    out_path = os.path.join(workdir, f"{kind}.csv")
    print(f"  exporting with {EXPORTERS[kind]} ...", file=sys.stderr)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", "--child", kind, "--port", str(port),
         "--out", out_path],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
    )
    if result.returncode:
        raise SystemExit(f"The {kind} exporter failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    os.remove(out_path)
    print(f"    {figures['rows']:,} rows in {figures['seconds']:.1f} s, peak "
          f"{figures['peak_mb']:.0f} MB", file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="runs to load")
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--only", choices=list(EXPORTERS), action="append",
                        help="run only this exporter (repeatable)")
    parser.add_argument("--child", choices=list(EXPORTERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.out)
        return
    if args.quick:
        args.rows = 100_000

    server = start_postgres()
    try:
        configure_django(postgres_database(server.port), root_urlconf=__name__)
        from django.core.management import call_command
        from django.db import connection, connections

        from benchmarks.admin_changelist import load_rows

        call_command("migrate", verbosity=0)
        print(f"Loading {args.rows:,} runs into PostgreSQL on port {server.port} ...",
              file=sys.stderr)
        load_rows(args.rows)
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]
        connections.close_all()

        kinds = args.only or list(EXPORTERS)
        with tempfile.TemporaryDirectory(prefix="gyrinx-export-bench-") as workdir:
            results = {kind: run_child(kind, server.port, workdir) for kind in kinds}

        digests = {figures["sha256"] for figures in results.values()}
        if len(digests) != 1:
            raise SystemExit("The exporters wrote different files: "
                             + ", ".join(f"{k} {v['sha256'][:12]}" for k, v in results.items()))
        first = results[kinds[0]]
        if first["rows"] != args.rows:
            raise SystemExit(f"{first['rows']:,} rows exported, {args.rows:,} loaded.")

        headers = ["exporter", "rows/s", "wall s", "peak RSS MB", "baseline RSS MB",
                   "peak - baseline MB"]
        rows = [[EXPORTERS[kind], f"{figures['rows'] / figures['seconds']:,.0f}",
                 f"{figures['seconds']:.1f}", f"{figures['peak_mb']:.0f}",
                 f"{figures['baseline_mb']:.0f}",
                 f"{figures['peak_mb'] - figures['baseline_mb']:.0f}"]
                for kind, figures in results.items()]
        print(f"\nExport of {args.rows:,} runs ({first['bytes'] / 1e6:.0f} MB of CSV, "
              f"identical from every exporter), PostgreSQL {pg_version}\n")
        print(table(headers, rows))
        if "stream" in results and "import-export" in results:
            stream, ie = results["stream"], results["import-export"]
            above = ((ie["peak_mb"] - ie["baseline_mb"])
                     / max(stream["peak_mb"] - stream["baseline_mb"], 1))
            print(f"\nimport-export / stream_csv: {ie['seconds'] / stream['seconds']:.1f}x the "
                  f"time, {ie['peak_mb'] / stream['peak_mb']:.1f}x the peak memory "
                  f"({above:.0f}x above the baseline).")
        print()
        for line in machine_lines({"postgresql": pg_version, "rows": f"{args.rows:,}"}):
            print(f"- {line}")
    finally:
        from django.db import connections

        connections.close_all()
        server.stop()


if __name__ == "__main__":
    main()
