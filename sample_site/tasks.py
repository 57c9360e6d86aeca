"""Sample tasks, one of each kind a real project has."""

import os
import time
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.tasks import task
from django.utils import timezone


@task
def send_welcome_email(user_id: int) -> dict:
    """A typical on-demand task: look a row up by id and send an email (to the console)."""
    user = get_user_model().objects.get(pk=user_id)
    address = user.email or f"{user.get_username()}@example.com"
    send_mail(
        subject="Welcome to the sample site",
        message=f"Hello {user.get_username()}, your account is ready.",
        from_email=None,
        recipient_list=[address],
    )
    return {"user_id": user_id, "sent_to": address}


@task(takes_context=True)
def generate_report(context, report_id: str, rows: int = 10_000) -> dict:
    """A slow-ish task that wants more time (its route has a longer ack deadline)."""
    started = time.monotonic()
    # Stands in for real work; long enough to catch the run as RUNNING in the admin.
    time.sleep(float(os.environ.get("SAMPLE_REPORT_SECONDS", "1.0")))
    checksum = sum(i * i for i in range(rows)) % 1_000_003
    return {
        "report_id": report_id,
        "rows": rows,
        "checksum": checksum,
        "attempt": context.attempt,
        "seconds": round(time.monotonic() - started, 3),
    }


@task(takes_context=True)
def flaky_sync(context, source: str = "crm") -> dict:
    """Fails on its first attempt: through Pub/Sub the redelivery succeeds."""
    if context.attempt < 2:
        raise ConnectionError(
            f"{source} did not answer on attempt {context.attempt}; a redelivery will retry."
        )
    return {"source": source, "synced": 42, "attempt": context.attempt}


@task
def cleanup_old_data(days: int = 30) -> dict:
    """Scheduled nightly: delete finished runs older than ``days`` days."""
    from gyrinx_tasks.models import TaskExecution

    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = TaskExecution.objects.filter(finished_at__lt=cutoff).delete()
    return {"deleted": deleted, "older_than_days": days}


@task
def backfill_statistics(batch_size: int = 500) -> dict:
    """Scheduled every five minutes; ENABLE_BACKFILL_SCHEDULER=false switches it off."""
    users = get_user_model().objects.count()
    return {"batch_size": batch_size, "users_seen": users}
