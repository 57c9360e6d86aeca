"""A registry whose routes set health thresholds of their own (TASKS_REGISTRY =
"tests.health_registry"), for tests/test_health.py and tests/test_stuck_runs.py."""

from gyrinx_tasks import TaskRoute
from tests import tasks

tasks = [
    # Stricter and looser than the defaults (ack_deadline 300 s, max READY age 600 s,
    # failure rate 0.2).
    TaskRoute(tasks.add, ack_deadline=60, health_max_ready_age=120, health_failure_rate=0.5),
    TaskRoute(tasks.echo, health_max_ready_age=3600),
    TaskRoute(tasks.explode),
    TaskRoute(tasks.flaky),
]
