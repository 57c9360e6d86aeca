"""The test infrastructure itself: the database, the Pub/Sub emulator and the browser."""

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.signals import request_started
from django.db import connection

from gyrinx_tasks import TaskRoute, clients
from tests import tasks
from tests.infra.postgres import PostgresServer
from tests.infra.pubsub import PubSubEmulator, group_members


@pytest.mark.django_db
def test_database_is_the_one_GYRINX_TEST_DB_names():
    expected = "postgresql" if os.environ.get("GYRINX_TEST_DB") == "postgres" else "sqlite"
    assert connection.vendor == expected
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_postgres_server_starts_answers_and_is_removed():
    import psycopg

    server = PostgresServer.start()
    try:
        dsn = f"host={server.host} port={server.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        assert version.startswith("15.")
    finally:
        server.stop()
    assert not server.root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)


class RecordingServer:
    """A tiny HTTP server on 127.0.0.1 that records pushes and answers with given statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses  # one per delivery; the last one repeats
        self.deliveries: list[tuple[float, dict]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                recorder.deliveries.append((time.monotonic(), body))
                index = min(len(recorder.deliveries), len(recorder.statuses)) - 1
                self.send_response(recorder.statuses[index])
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest's output clean

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/push"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.deliveries) >= count, (
            f"expected {count} pushes within {timeout} s, got {len(self.deliveries)}"
        )
        return list(self.deliveries)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recording_server(request) -> Iterator[RecordingServer]:
    server = RecordingServer(getattr(request, "param", [204]))
    yield server
    server.close()


@pytest.mark.emulator
def test_emulator_publish_and_pull_round_trip(pubsub_emulator):
    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host
    publisher, subscriber = clients.publisher_client(), clients.subscriber_client()
    topic = pubsub_emulator.topic_path("infra-round-trip")
    subscription = pubsub_emulator.subscription_path("infra-round-trip-sub")
    publisher.create_topic(name=topic)
    try:
        subscriber.create_subscription(name=subscription, topic=topic)
        message_id = publisher.publish(topic, b'{"hello": "emulator"}', kind="probe").result(30)
        received = []
        deadline = time.monotonic() + 15
        while not received and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
            received = list(response.received_messages)
        assert received, "the emulator delivered nothing to a pull subscription"
        message = received[0].message
        assert (message.message_id, message.data) == (message_id, b'{"hello": "emulator"}')
        assert dict(message.attributes) == {"kind": "probe"}
        subscriber.acknowledge(subscription=subscription, ack_ids=[received[0].ack_id])
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic)
        subscriber.close()


@pytest.mark.emulator
def test_push_subscription_delivers_to_a_local_http_server(emulator_push, recording_server):
    route = TaskRoute(tasks.add)
    push = emulator_push(route, recording_server.url)
    message_id = push.publish({"task_name": "add", "args": [1, 2]})

    (_, envelope), = recording_server.wait_for(1, timeout=30)
    assert envelope["subscription"] == push.subscription
    assert push.subscription.endswith(route.subscription_name)
    assert envelope["message"]["messageId"] == message_id
    payload = json.loads(base64.b64decode(envelope["message"]["data"]))
    assert payload == {"task_name": "add", "args": [1, 2]}


@pytest.mark.emulator
@pytest.mark.parametrize("recording_server", [[500, 500, 204]], indirect=True)
def test_emulator_redelivers_a_500_with_the_subscriptions_backoff(
    emulator_push, recording_server
):
    min_backoff = 2
    push = emulator_push(TaskRoute(tasks.flaky), recording_server.url,
                         min_backoff=min_backoff, max_backoff=3)
    message_id = push.publish(b"retry me")

    deliveries = recording_server.wait_for(3, timeout=45)
    assert {body["message"]["messageId"] for _, body in deliveries} == {message_id}
    # The emulator retries the first failure after about a second whatever the policy says;
    # later retries wait at least minimum_backoff. Without a retry policy every gap is ~1 s,
    # so this gap shows the policy reached the emulator.
    (_, _), (second, _), (third, _) = deliveries[:3]
    assert third - second >= min_backoff - 0.2
    time.sleep(min_backoff + 1)
    assert len(recording_server.deliveries) == 3, "a message answered with 204 came back"


@pytest.mark.emulator
def test_emulator_pushes_reach_live_server(emulator_push, live_server):
    seen: list[str] = []

    def record(sender, environ, **kwargs):
        seen.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")

    request_started.connect(record)
    try:
        push = emulator_push(TaskRoute(tasks.echo), f"{live_server.url}/tasks/pubsub/")
        push.publish(b"infra probe: not a task message")
        deadline = time.monotonic() + 30
        while "POST /tasks/pubsub/" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        request_started.disconnect(record)
    assert "POST /tasks/pubsub/" in seen


@pytest.mark.emulator
def test_stopping_an_emulator_leaves_no_process_behind():
    emulator = PubSubEmulator.start(project="infra-stop-test")
    pgid = emulator.process.pid
    members = group_members(pgid)
    commands = [_command(pid) for pid in members]
    assert any("java" in command for command in commands), commands
    emulator.stop()
    assert group_members(pgid) == []
    assert not emulator.workdir.exists()


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.browser
def test_browser_logs_in_to_the_admin_on_live_server(page, live_server, django_user_model):
    django_user_model.objects.create_superuser("infra", "infra@example.com", "pw-infra-123")
    page.goto(f"{live_server.url}/admin/login/")
    assert "Log in" in page.title()
    page.fill("#id_username", "infra")
    page.fill("#id_password", "pw-infra-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    assert "Site administration" in page.title()
