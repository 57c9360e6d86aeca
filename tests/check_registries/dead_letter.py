from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo"),
    TaskRoute(jobs.add, dead_letter_topic="test--dead-letters", max_delivery_attempts=3),
    TaskRoute(jobs.echo, dead_letter_topic="test--dead-letters", max_delivery_attempts=5),
]
