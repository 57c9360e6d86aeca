"""Scheduled test tasks, and a registry of them (TASKS_REGISTRY="tests.scheduling_tasks")."""

from django.tasks import task

from gyrinx_tasks import TaskRoute

RUNS: list[str] = []


@task(backend="immediate")
def hourly_ping() -> str:
    RUNS.append("hourly_ping")
    return "pong"


@task(backend="immediate")
def nightly_report() -> dict:
    RUNS.append("nightly_report")
    return {"rows": 3}


@task
def published_nightly() -> None:
    """Travels through PubSubBackend, so firing it publishes."""


@task(backend="immediate")
def on_demand() -> None:
    """Routed but not scheduled."""


tasks = [
    TaskRoute(hourly_ping, schedule="0 * * * *", schedule_timezone="Europe/London"),
    TaskRoute(nightly_report, schedule="30 1 * * *", schedule_timezone="Europe/London"),
    TaskRoute(published_nightly, schedule="0 3 * * *", schedule_timezone="Europe/London"),
    TaskRoute(on_demand),
]
