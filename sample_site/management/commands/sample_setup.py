"""Prepare the sample site after ``migrate``: an admin login and runs to look at.

On a site with no runs yet: one run of each on-demand sample task (``flaky_sync`` fails its
first attempt), one firing of each scheduled task, and three hours of sample history so the
admin's overview and scheduled-jobs pages show something from the start.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.tasks.exceptions import TaskException

from gyrinx_tasks.models import TaskExecution
from gyrinx_tasks.registry import get_routes
from gyrinx_tasks.scheduling.firing import fire_scheduled
from sample_site.samples import enqueue_sample, record_history

USERNAME = PASSWORD = "admin"
SAMPLES = ("send_welcome_email", "generate_report", "flaky_sync", "cleanup_old_data")


class Command(BaseCommand):
    help = (
        "Create the sample site's superuser (admin / admin) if it is missing and, when no "
        "runs are recorded yet, enqueue a few sample tasks, fire the scheduled ones once and "
        "record three hours of sample history. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--more", action="store_true",
            help="Enqueue the sample tasks even if runs are already recorded.",
        )

    def handle(self, *args, more=False, **options):
        user, created = self.ensure_admin()
        if created:
            self.stdout.write(f"Created the superuser {USERNAME!r} with password {PASSWORD!r}.")
        else:
            self.stdout.write(f"The superuser {USERNAME!r} already exists; left unchanged.")

        existing = TaskExecution.objects.count()
        if existing and not more:
            self.stdout.write(
                f"{existing} runs are recorded already; not enqueueing more "
                "(pass --more to add another batch)."
            )
            return
        failures = []
        for name in SAMPLES:
            try:
                result = enqueue_sample(name, user)
            except TaskException as exc:
                failures.append(f"{name}: {exc}")
                continue
            self.stdout.write(f"Enqueued {name}: {result.id} ({result.status}).")
        if not existing:
            failures += self.fire_scheduled_tasks()
            recorded = record_history()
            self.stdout.write(f"Recorded {recorded} runs of sample history (the last three "
                              "hours) for the admin's overview.")
        if failures:
            raise CommandError(
                "Some sample tasks could not be enqueued. With the Pub/Sub emulator, run "
                "`manage.py tasks_provision` first so the topics exist.\n" + "\n".join(failures)
            )

    def fire_scheduled_tasks(self) -> list[str]:
        """Fire each scheduled route once, as its schedule would; return what failed."""
        failures = []
        for route in get_routes():
            if not route.is_scheduled:
                continue
            try:
                run_id = fire_scheduled(route)
            except TaskException as exc:
                failures.append(f"{route.name}: {exc}")
                continue
            self.stdout.write(f"Fired the scheduled task {route.name}: {run_id}.")
        return failures

    def ensure_admin(self):
        User = get_user_model()
        user = User.objects.filter(username=USERNAME).first()
        if user is not None:
            return user, False
        user = User.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
        return user, True
