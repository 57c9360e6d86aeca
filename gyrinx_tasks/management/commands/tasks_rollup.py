"""manage.py tasks_rollup: count recent hours of stored runs into the hourly rollups."""

from django.core.management.base import BaseCommand, CommandError

from gyrinx_tasks.rollups import DEFAULT_REFRESH_HOURS, Refreshed, refresh


class Command(BaseCommand):
    help = (
        "Count the stored runs of recent complete hours into the hourly rollups that the "
        "overview's 30- and 90-day windows read (tasks_prune does this first too). The first "
        "run counts every stored run; later ones also catch up the hours since the last."
    )

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=int, default=DEFAULT_REFRESH_HOURS,
                            help=f"Complete hours to count again (default "
                                 f"{DEFAULT_REFRESH_HOURS}).")

    def handle(self, *args, hours, **options):
        if hours < 0:
            raise CommandError("--hours must be 0 or more.")
        done = refresh(hours=hours, progress=self._progress)
        self.stdout.write(self.style.SUCCESS(
            f"Counted {done.hours} hours ({done.rows} rollup rows), up to "
            f"{done.end:%Y-%m-%d %H:00} UTC."))

    def _progress(self, done: Refreshed) -> None:
        self.stdout.write(f"  {done.hours} hours counted")
