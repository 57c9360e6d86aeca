"""manage.py tasks_export: run history as CSV, streamed from the database (cron, backups)."""

import os

from django.core.management.base import BaseCommand, CommandError

from gyrinx_tasks.export import ExportFilterError, filter_runs, parse_moment, write_csv


class Command(BaseCommand):
    help = (
        "Write task runs as CSV, newest first, row by row from the database so memory stays "
        "flat at any size. Args, kwargs and return values are left out unless "
        "--include-payload is given (they can hold personal data); for tasks whose route "
        "has redact=True they read [redacted] unless --include-redacted is given too."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "-o", "--output", metavar="PATH", default="-",
            help="File to write (replaced only once the export is complete); '-' or absent "
                 "for standard output.")
        parser.add_argument("--include-payload", action="store_true",
                            help="Add the args, kwargs and return_value columns.")
        parser.add_argument(
            "--include-redacted", action="store_true",
            help="With --include-payload: also write the payload of tasks whose route has "
                 "redact=True (personal data) instead of [redacted].")
        parser.add_argument("--status", action="append", default=[], metavar="STATUS",
                            help="Only runs in this status (e.g. FAILED, which is final; "
                                 "WILL_RETRY for failing runs Pub/Sub delivers again); "
                                 "repeat for several.")
        parser.add_argument("--task", action="append", default=[], metavar="NAME",
                            help="Only runs of this task name; repeat for several.")
        parser.add_argument("--since", metavar="WHEN",
                            help="Only runs created at or after this ISO date or date-time.")
        parser.add_argument("--until", metavar="WHEN",
                            help="Only runs created before this ISO date or date-time.")

    def handle(self, *args, output, include_payload, include_redacted, status, task, since,
               until, **options):
        if include_redacted and not include_payload:
            raise CommandError(
                "--include-redacted only applies to the payload columns; add --include-payload "
                "as well, or leave --include-redacted out.")
        self.reveal_redacted = include_redacted
        try:
            queryset = filter_runs(
                statuses=status, tasks=task,
                since=parse_moment(since, "--since") if since else None,
                until=parse_moment(until, "--until") if until else None,
            )
        except ExportFilterError as exc:
            raise CommandError(str(exc)) from exc

        if output == "-":
            self.stdout.ending = ""  # the CSV brings its own line endings
            count = write_csv(self.stdout, queryset, include_payload, include_redacted)
            where = "standard output"
        else:
            count = self._write_file(output, queryset, include_payload)
            where = output
        self.stderr.write(f"Wrote {count} run{'' if count == 1 else 's'} to {where}.")

    def _write_file(self, output, queryset, include_payload):
        directory = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(directory):
            raise CommandError(
                f"The directory {directory} does not exist; create it or choose another "
                "--output path.")
        partial = f"{output}.part"
        try:
            # newline="" keeps csv's own \r\n line endings, as RFC 4180 wants.
            with open(partial, "w", newline="", encoding="utf-8") as out:
                count = write_csv(out, queryset, include_payload, self.reveal_redacted)
            os.replace(partial, output)
        except OSError as exc:
            raise CommandError(f"Could not write {output}: {exc.strerror or exc}.") from exc
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return count
