"""django-tasks-pubsub's enqueue, timed in its own virtualenv (run by benchmarks/enqueue.py).

Usage: PEER_PYTHON _peer_enqueue.py HOST PROJECT TOPIC COUNT. Prints one JSON line: the
seconds ``COUNT`` ``.enqueue()`` calls took to return. Its enqueue never waits for the
publish (nor exposes the future), so that is all there is to time. Not imported by anything
else; only the standard library and the peer's packages.
"""

import json
import os
import sys
import time

host, project, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.environ["PUBSUB_EMULATOR_HOST"] = host

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    INSTALLED_APPS=["django_tasks_pubsub"],
    TASKS={"default": {"BACKEND": "django_tasks_pubsub.backend.PubSubBackend"}},
    PUBSUB_PROJECT_ID=project,
    PUBSUB_DEFAULT_TOPIC_ID=topic,
    USE_TZ=True,
)
django.setup()

from django.tasks import task  # noqa: E402
from django_tasks_pubsub.publisher import get_publisher  # noqa: E402


@task
def add(x: int, y: int) -> int:
    return x + y


add.enqueue(0, 0)  # the client and its channel are built here, not timed
get_publisher().publish(f"projects/{project}/topics/{topic}", b"{}").result(timeout=30)

start = time.perf_counter()
for n in range(count):
    add.enqueue(n, 1)
returned = time.perf_counter() - start
get_publisher().stop()  # sends what is still batched before the process ends
print(json.dumps({"returned": returned, "count": count}))
