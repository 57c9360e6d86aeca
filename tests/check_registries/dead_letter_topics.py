from dataclasses import replace

from gyrinx_tasks import TaskRoute
from tests import tasks as jobs
from tests.check_registries import good_routes_except

tasks = [
    *good_routes_except("add", "echo", "report_attempt", "flaky"),
    TaskRoute(jobs.add, dead_letter_topic="goog-dead"),  # E055: Pub/Sub refuses "goog"
    TaskRoute(jobs.echo, dead_letter_topic="projects/p/topics/x y"),  # E055
    # E056: another route's topic (its id, or its full path).
    TaskRoute(jobs.report_attempt, dead_letter_topic="test--gyrinx.tasks--tests.tasks.flaky"),
    replace(
        TaskRoute(jobs.flaky),
        dead_letter_topic=("projects/test-project/topics/test--gyrinx.tasks--tests.tasks.flaky"),
    ),
]
