from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "explode"),
    # Disagree with the dead-letter policy, lower and higher: W015 twice.
    TaskRoute(jobs.add, dead_letter_topic="test--dead-letters", max_delivery_attempts=5,
              max_attempts=3),
    TaskRoute(jobs.echo, dead_letter_topic="test--dead-letters", max_delivery_attempts=5,
              max_attempts=8),
    # Agreeing, or without a dead-letter policy: fine.
    TaskRoute(jobs.explode, dead_letter_topic="test--dead-letters", max_delivery_attempts=6,
              max_attempts=6),
]
