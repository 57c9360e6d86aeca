"""A task that no route lists (kept out of tests/tasks.py so check W005 stays quiet there)."""

from django.tasks import task


@task
def not_in_registry() -> None:
    return None
