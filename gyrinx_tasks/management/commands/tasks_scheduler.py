"""manage.py tasks_scheduler: the local stand-in for Cloud Scheduler."""

import time

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from gyrinx_tasks.exceptions import UnknownTask
from gyrinx_tasks.models import Trigger
from gyrinx_tasks.registry import get_route, get_routes
from gyrinx_tasks.scheduling.cron import describe_schedule, next_fire_time, schedule_zone
from gyrinx_tasks.scheduling.firing import Fired, LocalScheduler, fire_scheduled


class Command(BaseCommand):
    help = (
        "Fire the registry's scheduled tasks on their cron schedules, as Cloud Scheduler does "
        "in production. Runs until interrupted; fires nothing that was missed before it started."
    )

    # Tests replace these to drive the loop without waiting.
    clock = staticmethod(timezone.now)
    sleep = staticmethod(time.sleep)

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval", type=float, default=15, help="Seconds between checks (default 15)."
        )
        parser.add_argument(
            "--max-iterations",
            type=int,
            default=None,
            help="Stop after this many checks (default: run until interrupted).",
        )
        parser.add_argument(
            "--run-now",
            metavar="TASK_NAME",
            help="Fire this scheduled task once, immediately, and exit.",
        )

    def handle(self, *args, interval, max_iterations, run_now, **options):
        if interval <= 0:
            raise CommandError("--interval must be a positive number of seconds.")
        try:
            if run_now:
                return self._run_now(run_now)
            scheduler = LocalScheduler(
                interval=interval, clock=self.clock, sleep=self.sleep, report=self._report
            )
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self._banner(scheduler)
        try:
            count = scheduler.run(max_iterations=max_iterations)
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
            return
        self.stdout.write(f"Stopped after {max_iterations} checks; {count} fired.")

    def _run_now(self, name):
        try:
            route = get_route(name)
        except UnknownTask as exc:
            raise CommandError(f"{exc} Scheduled tasks: {self._names()}.") from exc
        if not route.is_scheduled:
            raise CommandError(
                f"{name!r} has no schedule; call .enqueue() to run it. "
                f"Scheduled tasks: {self._names()}."
            )
        ident = fire_scheduled(route, trigger=Trigger.RUN_NOW)
        self.stdout.write(self.style.SUCCESS(f"Fired {route.name} now: {ident}"))

    def _names(self):
        return ", ".join(route.name for route in get_routes() if route.is_scheduled) or "none"

    def _banner(self, scheduler):
        if not scheduler.routes:
            self.stdout.write(
                self.style.WARNING(
                    "No task in TASKS_REGISTRY has a schedule; add schedule='0 3 * * *' to a "
                    "TaskRoute to have one fired here."
                )
            )
        now = self.clock()
        self.stdout.write(
            f"Checking {len(scheduler.routes)} scheduled task(s) every "
            f"{scheduler.interval:g} s. Press Ctrl-C to stop."
        )
        for route in scheduler.routes:
            upcoming = next_fire_time(route, now).astimezone(schedule_zone(route))
            self.stdout.write(
                f"  {route.name}: {describe_schedule(route)} "
                f"({route.schedule_timezone}); next {upcoming:%Y-%m-%d %H:%M %Z}"
            )

    def _report(self, fired: Fired):
        style = self.style.ERROR if fired.error is not None else self.style.SUCCESS
        self.stdout.write(style(fired.describe()))
