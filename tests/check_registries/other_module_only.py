from gyrinx_tasks import TaskRoute
from tests.check_registries import same_name_tasks

tasks = [TaskRoute(same_name_tasks.add)]  # routes nothing from the "tests" app's tasks.py
