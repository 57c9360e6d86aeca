"""Tasks and a registry (``tasks``) whose routes send what Pub/Sub gives up on to one
dead-letter topic: TASKS_REGISTRY = "tests.deadletter_tasks" (tests/test_deadletters*.py)."""

from django.tasks import task

from gyrinx_tasks import TaskRoute
from tests import tasks as plain

DEAD_LETTER_TOPIC = "gyrinx-test-dead-letters"
BROKEN: set[str] = set()  # keys fails_until_fixed fails for


@task
def fails_until_fixed(key: str) -> str:
    if key in BROKEN:
        raise RuntimeError(f"{key} is broken")
    return f"fixed {key}"


@task
def charge_card(email: str, amount: int) -> int:
    return amount


tasks = [
    TaskRoute(
        fails_until_fixed,
        min_retry_delay=1,
        max_retry_delay=2,
        dead_letter_topic=DEAD_LETTER_TOPIC,
        max_delivery_attempts=5,
    ),
    TaskRoute(charge_card, redact=True, dead_letter_topic=DEAD_LETTER_TOPIC),
    TaskRoute(plain.add, dead_letter_topic=DEAD_LETTER_TOPIC, max_delivery_attempts=7),
    TaskRoute(plain.explode),  # no dead-letter topic
]
