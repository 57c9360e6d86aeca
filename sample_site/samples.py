"""Example arguments for each sample task (home page, ``sample_setup``) and sample history."""

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.tasks import TaskResult
from django.utils import timezone

from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.registry import get_route, get_routes
from gyrinx_tasks.scheduling.cron import next_fire_time


def sample_kwargs(name: str, user: Any = None) -> dict[str, Any]:
    """Keyword arguments that make a sensible run of the named task."""
    if name == "send_welcome_email":
        if user is None or not getattr(user, "pk", None):
            user = get_user_model().objects.order_by("pk").first()
        if user is None:
            raise ValueError(
                "send_welcome_email needs a user; run `manage.py sample_setup` to create one."
            )
        return {"user_id": user.pk}
    if name == "generate_report":
        return {"report_id": f"rpt-{uuid.uuid4().hex[:8]}", "rows": 20_000}
    if name == "flaky_sync":
        return {"source": "crm"}
    if name == "cleanup_old_data":
        return {"days": 30}
    return {}


def enqueue_sample(name: str, user: Any = None) -> TaskResult:
    """Enqueue the registry's task ``name`` with sample arguments (UnknownTask if absent)."""
    route = get_route(name)
    return route.task.enqueue(**sample_kwargs(name, user))


# --- A few hours of past runs, so the admin's overview has something to show ------------

HISTORY_WORKER = "sample-history"
# (task, runs in the last three hours, typical seconds, share that failed, the error)
HISTORY_PLAN = [
    ("send_welcome_email", 36, 0.08, 0.0, ""),
    ("generate_report", 12, 1.6, 0.17, "builtins.TimeoutError"),
    ("flaky_sync", 18, 0.4, 0.34, "builtins.ConnectionError"),
]
BACKFILL_EVERY = timedelta(minutes=5)


def _history_run(route: Any, status: str, created: datetime, seconds: float, error: str = "",
                 trigger: str = "enqueue", task_id: str = "") -> TaskExecution:
    started = created + timedelta(milliseconds=35)
    finished = started + timedelta(seconds=seconds)
    run = TaskExecution(
        task_name=route.name, task_path=route.path, status=status, trigger=trigger,
        created_at=created, enqueued_at=created, started_at=started,
        last_attempted_at=started, finished_at=finished, attempts=1,
        worker_ids=[HISTORY_WORKER], kwargs=sample_kwargs(route.name) if not task_id else {},
        status_detail="Recorded by sample_setup as sample history; it did not run.",
        timeline=[
            {"at": created.isoformat(), "from": "", "to": "READY", "note": "sample history"},
            {"at": started.isoformat(), "from": "READY", "to": "RUNNING",
             "note": f"attempt 1 on {HISTORY_WORKER}"},
            {"at": finished.isoformat(), "from": "RUNNING", "to": status},
        ],
    )
    run.task_id = task_id or run.result_id
    if status == State.FAILED:
        run.errors = [{
            "exception_class_path": error, "attempt": 1, "at": finished.isoformat(),
            "traceback": f"Traceback (most recent call last):\n  ...\n{error.split('.')[-1]}: "
                         "sample failure recorded by sample_setup\n",
        }]
    return run


def record_history(now: datetime | None = None) -> int:
    """Record the last three hours of runs of every registered task; return how many.

    Marked as sample history (worker ``sample-history`` and a note on each run). Scheduled
    routes get runs at their schedule's times: ``backfill_statistics`` every five minutes,
    ``cleanup_old_data`` once at its last 03:00 if that falls within a day.
    """
    now = now or timezone.now()
    rng = random.Random(8)  # the same picture every time
    runs = []
    for name, count, seconds, failing, error in HISTORY_PLAN:
        route = get_route(name)
        failures = set(rng.sample(range(count), round(count * failing)))
        for i in range(count):
            created = now - timedelta(minutes=rng.uniform(2, 180))
            status = State.FAILED if i in failures else State.SUCCESSFUL
            runs.append(_history_run(route, status, created, seconds * rng.uniform(0.6, 1.8),
                                     error))
    for route in get_routes():
        if not route.is_scheduled:
            continue
        times = []
        if route.name == "backfill_statistics":
            mark = now - timedelta(seconds=now.timestamp() % BACKFILL_EVERY.total_seconds())
            times = [mark - BACKFILL_EVERY * i for i in range(1, 37)]
        else:
            previous = _last_fire_time(route, now)
            if previous is not None:
                times = [previous]
        for created in times:
            runs.append(_history_run(route, State.SUCCESSFUL, created, rng.uniform(0.2, 0.9),
                                     trigger="schedule", task_id=route.scheduled_task_id))
    TaskExecution.objects.bulk_create(runs)
    return len(runs)


def _last_fire_time(route: Any, now: datetime) -> datetime | None:
    """The route's last scheduled time within the past day, if any."""
    fire = next_fire_time(route, now - timedelta(days=1))
    return fire if fire <= now else None
