"""Tasks of the package itself, for a project's registry.

``roll_up_and_prune`` keeps the hourly rollups current and deletes runs past their retention,
as ``manage.py tasks_prune`` does. List it in TASKS_REGISTRY with a schedule to run it through
Pub/Sub like any other task::

    from gyrinx_tasks.maintenance import roll_up_and_prune
    tasks = [..., TaskRoute(roll_up_and_prune, schedule="17 * * * *")]

Each firing stops after ``MAX_SECONDS``, well inside the route's default ack deadline, and the
next firing goes on where it stopped.
"""

from typing import Any

from django.tasks import task

# Under the default ack_deadline (300 s), so Pub/Sub does not deliver it again meanwhile.
MAX_SECONDS = 240


@task
def roll_up_and_prune() -> dict[str, Any]:
    from .retention import prune

    report = prune(max_seconds=MAX_SECONDS)
    return {
        "deleted": report.deleted,
        "prunable": report.found,
        "finished": report.finished,
        "rollup_rows": report.refreshed.rows if report.refreshed else 0,
    }
