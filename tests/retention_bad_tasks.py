"""A task with a retention that is no timedelta: system check gyrinx_tasks.E032 (Django 6.1)."""

from django.tasks import task


@task(retention=30)  # days meant, but not a timedelta
def counted_in_days() -> None:
    pass
