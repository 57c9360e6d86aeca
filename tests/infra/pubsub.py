"""The official Pub/Sub emulator for the session, and push subscriptions on it.

Fixtures:
  pubsub_emulator  session-scoped; starts ``gcloud beta emulators pubsub start`` on a free
                   port and sets PUBSUB_EMULATOR_HOST, which the Google clients honour.
  emulator_push    ``emulator_push(route, push_endpoint)`` creates the route's topic and a
                   push subscription to ``push_endpoint`` with the route's retry policy,
                   and deletes them after the test.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from . import free_port, tail

PROJECT = "test-project"  # the GCP_PROJECT_ID of tests/settings.py
START_TIMEOUT = 90  # seconds; a cold JVM on a busy two-core machine can be slow
STOP_TIMEOUT = 10


class EmulatorStartError(RuntimeError):
    """The Pub/Sub emulator did not start or did not answer in time."""


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@dataclass
class PubSubEmulator:
    """A running emulator. ``host`` is what PUBSUB_EMULATOR_HOST must hold."""

    host: str
    project: str
    process: subprocess.Popen
    workdir: Path

    @property
    def log(self) -> Path:
        return self.workdir / "emulator.log"

    def output_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def topic_path(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription_path(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    @classmethod
    def start(cls, project: str = PROJECT, timeout: float = START_TIMEOUT) -> "PubSubEmulator":
        gcloud = shutil.which("gcloud")
        if not gcloud:
            raise EmulatorStartError(
                "The Google Cloud CLI (gcloud) is not on PATH, so the Pub/Sub emulator cannot "
                "start. Install google-cloud-cli and google-cloud-cli-pubsub-emulator, or run "
                "scripts/test.sh, which checks for them."
            )
        workdir = Path(tempfile.mkdtemp(prefix="gyrinx-pubsub-"))
        (workdir / "data").mkdir()  # gcloud fails late if --data-dir does not exist
        host = f"127.0.0.1:{free_port()}"
        env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1",
                   CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1")
        env.pop("PUBSUB_EMULATOR_HOST", None)
        with open(workdir / "emulator.log", "wb") as log:
            # Its own session (and so process group): gcloud starts java as a child, and
            # stop() must be able to end both with one signal.
            process = subprocess.Popen(
                [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}",
                 f"--project={project}", f"--data-dir={workdir / 'data'}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        emulator = cls(host=host, project=project, process=process, workdir=workdir)
        try:
            emulator._wait_until_ready(timeout)
        except BaseException:
            emulator.stop()
            raise
        return emulator

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorStartError(
                    f"The Pub/Sub emulator exited with code {self.process.returncode} before "
                    f"answering on {self.host}. Its output ends:\n{self.output_tail()}"
                )
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        raise EmulatorStartError(
            f"The Pub/Sub emulator did not answer on {self.host} within {timeout:.0f} s. "
            f"Check that Java 17+ is installed (java -version). Its output ends:\n"
            f"{self.output_tail()}"
        )

    def stop(self) -> None:
        """End gcloud and the java it started; raise if any of them survives SIGKILL."""
        pgid = self.process.pid  # start_new_session makes the leader's pid the group id
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                self.process.poll()  # reap gcloud so it does not linger as a zombie
                if not group_members(pgid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        self.process.poll()
        survivors = group_members(pgid)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if survivors:
            raise RuntimeError(
                f"Pub/Sub emulator processes {survivors} survived SIGKILL of group {pgid}."
            )


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    try:
        emulator = PubSubEmulator.start()
    except (EmulatorStartError, OSError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:  # failed outside the except block, so the report shows one message
        pytest.fail(problem, pytrace=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        try:
            yield emulator
        finally:
            emulator.stop()


@dataclass
class PushSubscription:
    """A topic and its push subscription on the emulator (full resource paths)."""

    topic: str
    subscription: str
    push_endpoint: str
    publisher: Any = field(repr=False)

    def publish(self, message: dict | bytes, **attributes: str) -> str:
        """Publish raw bytes, or a dict as JSON, and return the message id."""
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        return self.publisher.publish(self.topic, data, **attributes).result(timeout=30)


@pytest.fixture
def emulator_push(pubsub_emulator: PubSubEmulator) -> Iterator[Callable[..., PushSubscription]]:
    """Make ``emulator_push(route, push_endpoint, **overrides)`` for this test.

    ``route`` is a TaskRoute or a route name from TASKS_REGISTRY. Overrides: ``min_backoff``,
    ``max_backoff``, ``ack_deadline`` (seconds), and any other Subscription field by name.
    """
    from google.api_core.exceptions import AlreadyExists, NotFound

    from gyrinx_tasks import clients
    from gyrinx_tasks.registry import get_route

    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    subscriptions: list[str] = []
    topics: list[str] = []

    def create(
        route: Any, push_endpoint: str, *, min_backoff: float | None = None,
        max_backoff: float | None = None, ack_deadline: int | None = None, **fields: Any,
    ) -> PushSubscription:
        if isinstance(route, str):
            route = get_route(route)
        topic = pubsub_emulator.topic_path(route.topic_name)
        subscription = pubsub_emulator.subscription_path(route.subscription_name)
        min_backoff = route.min_retry_delay if min_backoff is None else min_backoff
        max_backoff = route.max_retry_delay if max_backoff is None else max_backoff
        try:
            publisher.create_topic(name=topic)
            topics.append(topic)
        except AlreadyExists:
            pass  # someone else's topic: use it, and leave it to them to delete
        try:
            # A subscription left over points somewhere else; this test's endpoint wins.
            subscriber.delete_subscription(subscription=subscription)
        except NotFound:
            pass
        subscriber.create_subscription(request={
            "name": subscription,
            "topic": topic,
            "push_config": {"push_endpoint": push_endpoint},
            "ack_deadline_seconds": ack_deadline or route.ack_deadline,
            "retry_policy": {
                "minimum_backoff": timedelta(seconds=min_backoff),
                "maximum_backoff": timedelta(seconds=max_backoff),
            },
            **fields,
        })
        subscriptions.append(subscription)
        return PushSubscription(topic, subscription, push_endpoint, publisher)

    yield create
    # Subscriptions first, so nothing is pushed to a test that has finished.
    for subscription in subscriptions:
        try:
            subscriber.delete_subscription(subscription=subscription)
        except NotFound:
            pass
    for topic in topics:
        try:
            publisher.delete_topic(topic=topic)
        except NotFound:
            pass
    subscriber.close()
    publisher.stop()
