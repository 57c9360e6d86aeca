"""The soak's task: it writes its side effects to a table of its own, soak_effect.

Each attempt that reaches the task writes a 'start' row, then a 'raise' row (the planned
failure of a first attempt) or a 'done' row (success) in autocommit, outside the run's own
bookkeeping. Counting 'done' rows per task, not only runs, is what shows a double run.
"""

import os
import time

from django.db import connection
from django.tasks import task

# The task's work. Every LONG_EVERY-th task works for LONG_SECONDS instead, so that the soak
# can SIGKILL a worker while it is surely inside a task, before the task's side effect. With
# SOAK_WORK_AFTER_EFFECT=1 (soak.py --kill-after-side-effect) that long work comes after the
# side effect instead, as in a task that sends an e-mail and then does something slow.
WORK_SECONDS = 0.05
LONG_EVERY = 50
LONG_SECONDS = 1.5


def _effect(n: int, attempt: int, kind: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO soak_effect (n, attempt, kind, pid) VALUES (%s, %s, %s, %s)",
            [n, attempt, kind, os.getpid()],
        )


@task(takes_context=True)
def soak_step(context, n: int, fail_first: bool) -> int:
    long = n % LONG_EVERY == 0
    after = long and os.environ.get("SOAK_WORK_AFTER_EFFECT") == "1"
    _effect(n, context.attempt, "start")
    time.sleep(LONG_SECONDS if long and not after else WORK_SECONDS)
    if fail_first and context.attempt == 1:
        _effect(n, context.attempt, "raise")
        raise RuntimeError(f"soak task {n} fails its first attempt on purpose")
    _effect(n, context.attempt, "done")
    if after:
        time.sleep(LONG_SECONDS)
    return n
