"""manage.py tasks_prune: delete finished runs past their retention, keeping hourly rollups."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from gyrinx_tasks.dates import format_when
from gyrinx_tasks.retention import DEFAULT_CHUNK, Group, prune
from gyrinx_tasks.rollups import DEFAULT_REFRESH_HOURS


class Command(BaseCommand):
    help = (
        "Delete finished task runs older than their retention (TaskRoute(retention=...), "
        "@task(retention=...), else TASKS_RETENTION), a chunk per short transaction, after "
        "adding them to the hourly rollups the overview's long windows read. READY and "
        "RUNNING runs, and failed runs Pub/Sub may still redeliver, are never deleted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true",
                            help="Only count the runs that would be deleted; change nothing.")
        parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, metavar="RUNS",
                            help=f"Runs deleted per transaction (default {DEFAULT_CHUNK}).")
        parser.add_argument("--max-seconds", type=float, default=None, metavar="SECONDS",
                            help="Stop after the chunk that passes this many seconds; the "
                                 "next prune goes on from there.")
        parser.add_argument("--refresh-hours", type=int, default=DEFAULT_REFRESH_HOURS,
                            metavar="HOURS",
                            help="Hours of stored runs counted again into the rollups first "
                                 f"(default {DEFAULT_REFRESH_HOURS}).")

    def handle(self, *args, dry_run, chunk, max_seconds, refresh_hours, **options):
        if chunk < 1:
            raise CommandError("--chunk must be a whole number of runs, 1 or more.")
        if refresh_hours < 0:
            raise CommandError("--refresh-hours must be 0 or more.")
        try:
            report = prune(dry_run=dry_run, chunk=chunk, max_seconds=max_seconds,
                           refresh_hours=refresh_hours, progress=self._progress)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if report.refreshed:
            self.stdout.write(f"Rollups: counted {report.refreshed.hours} hours of stored "
                              f"runs ({report.refreshed.rows} rows).")
        for group in report.groups:
            assert group.cutoff is not None
            verb = "would delete" if dry_run else "deleted"
            done = group.found if dry_run else group.deleted
            self.stdout.write(
                f"{group.label}: keep {_days(group.retention)}; {verb} {done:,} runs created "
                f"before {format_when(group.cutoff)}.")
        if dry_run:
            self.stdout.write(f"Dry run: {report.found:,} runs would be deleted; nothing was "
                              "changed.")
        elif not report.finished:
            self.stdout.write(self.style.WARNING(
                f"Stopped after --max-seconds with {report.deleted:,} of {report.found:,} runs "
                "deleted; run tasks_prune again to go on."))
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {report.deleted:,} runs."))

    def _progress(self, group: Group) -> None:
        self.stdout.write(f"  {group.label}: {group.deleted:,} of {group.found:,} deleted")


def _days(retention) -> str:
    days = retention.total_seconds() / 86400
    if days == int(days):
        return f"{int(days)} day{'s' if days != 1 else ''}"
    return f"{retention.total_seconds() / 3600:g} hours"
