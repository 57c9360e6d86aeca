"""manage.py tasks_health: the health endpoint's rules from a shell, cron or a scheduled job.

Exits 0 when healthy and 1 when not, printing the reasons; notices a change of health as the
endpoint does (health_alerts.py), so running it on a schedule also drives the alerts.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from gyrinx_tasks.health_alerts import check_health


class Command(BaseCommand):
    help = ("Check task health (failure rates, stuck runs, scheduled jobs) by the rules of "
            "GET /tasks/health/: print the reasons and exit 1 when unhealthy, 0 when healthy.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true",
                            help="Print the endpoint's JSON answer instead of sentences.")

    def handle(self, *args, **options):
        report = check_health()
        if options.get("json"):
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        elif report.healthy:
            self.stdout.write(f"Healthy: no failing tasks, no stuck runs, no missed "
                              f"schedules ({report.checked_at.isoformat()}).")
        else:
            for reason in report.reasons:
                self.stdout.write(f"{reason.kind} {reason.task or '(site)'}: {reason.detail}")
        if not report.healthy:
            count = len(report.reasons)
            raise CommandError(f"Unhealthy: {count} reason{'s' if count != 1 else ''}.",
                               returncode=1)
