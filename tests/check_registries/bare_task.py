from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [*good_routes_except("add"), jobs.add]  # a Task, not TaskRoute(jobs.add)
