from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo"),
    TaskRoute(jobs.add, ack_deadline=5),
    TaskRoute(jobs.echo, ack_deadline=601),
]
