"""Prepare the sample site after ``migrate``: an admin login and a few runs to look at."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.tasks.exceptions import TaskException

from gyrinx_tasks.models import TaskExecution
from sample_site.samples import enqueue_sample

USERNAME = PASSWORD = "admin"
SAMPLES = ("send_welcome_email", "generate_report", "flaky_sync", "cleanup_old_data")


class Command(BaseCommand):
    help = (
        "Create the sample site's superuser (admin / admin) if it is missing and, when no "
        "runs are recorded yet, enqueue a few sample tasks. Safe to run again."
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
        if failures:
            raise CommandError(
                "Some sample tasks could not be enqueued. With the Pub/Sub emulator, run "
                "`manage.py tasks_provision` first so the topics exist.\n" + "\n".join(failures)
            )

    def ensure_admin(self):
        User = get_user_model()
        user = User.objects.filter(username=USERNAME).first()
        if user is not None:
            return user, False
        user = User.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)
        return user, True
