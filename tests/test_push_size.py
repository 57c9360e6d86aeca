"""Message size: up to Pub/Sub's 10 MB is accepted whatever DATA_UPLOAD_MAX_MEMORY_SIZE says,
larger bodies are acknowledged and rejected, and enqueue() refuses what Pub/Sub would refuse.
"""

import base64
import json
import secrets
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from google.pubsub_v1 import PublishRequest, PubsubMessage

from gyrinx_tasks.conf import tasks_settings
from gyrinx_tasks.messages import PUBSUB_MAX_PUBLISH_BYTES, MessageTooLarge, check_publish_size
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.push import DEFAULT_MAX_BODY_BYTES, RAW_MESSAGE_LIMIT
from gyrinx_tasks.views import ACK
from tests import tasks
from tests.helpers import envelope

URL = "/tasks/pubsub/"
NINE_MB = 9_000_000


def test_default_limit_is_above_the_largest_push_pubsub_can_send():
    largest_data = 4 * -(-PUBSUB_MAX_PUBLISH_BYTES // 3)  # base64 of 10,000,000 bytes
    assert largest_data == 13_333_336
    assert tasks_settings.TASKS_PUSH_MAX_BODY_BYTES == DEFAULT_MAX_BODY_BYTES == 15 * 1024 * 1024
    # Room for 100 attributes of 256 + 1,024 bytes, each character JSON-escaped (\\u0001).
    assert DEFAULT_MAX_BODY_BYTES - largest_data > 100 * (256 + 1024) * 6


@pytest.mark.django_db
def test_nine_mb_message_is_accepted_and_run_despite_data_upload_max_memory_size(
        client, settings, no_oidc):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # Django's default, stated
    big = "x" * NINE_MB
    body = envelope({"task_id": "big-1", "task_name": "echo", "args": [big]})
    assert len(body) > 12_000_000

    response = client.post(URL, body, content_type="application/json")

    assert response.status_code == 200, response.content[:300]
    execution = TaskExecution.objects.get(result_id="big-1")
    assert execution.status == State.SUCCESSFUL
    assert len(execution.args[0]) == NINE_MB
    assert execution.return_value["args"][0] == big


@pytest.mark.django_db
def test_body_over_the_limit_is_acknowledged_and_rejected_with_its_start_kept(
        client, settings, no_oidc):
    settings.TASKS_PUSH_MAX_BODY_BYTES = 1_000_000
    body = envelope({"task_id": "huge-1", "task_name": "echo", "args": ["y" * 1_000_000]})

    response = client.post(URL, body, content_type="application/json")

    assert response.status_code == ACK
    answer = response.json()
    assert answer["outcome"] == "rejected"
    assert f"is {len(body):,} bytes, over the push endpoint's limit of 1,000,000" in (
        answer["detail"])
    execution = TaskExecution.objects.get(result_id=answer["result_id"])
    assert execution.status == State.REJECTED
    assert execution.raw_message.startswith('{"message": {"data": "')
    assert execution.raw_message.endswith(
        f"[truncated: the first {RAW_MESSAGE_LIMIT:,} of {len(body):,} bytes are kept]")


@pytest.mark.django_db
def test_body_over_the_default_limit_is_acknowledged(client, no_oidc):
    data = base64.b64encode(b"z" * 12_000_000).decode()  # 16 MB: more than Pub/Sub sends
    body = json.dumps({"message": {"data": data, "messageId": "m-huge"}}).encode()
    assert len(body) > DEFAULT_MAX_BODY_BYTES

    response = client.post(URL, body, content_type="application/json")

    assert response.status_code == ACK
    assert response.json()["outcome"] == "rejected"
    assert TaskExecution.objects.get().status == State.REJECTED


@pytest.mark.parametrize("value", ["0", "lots", -5])
def test_bad_limit_setting_is_a_clear_error(settings, value):
    settings.TASKS_PUSH_MAX_BODY_BYTES = value
    with pytest.raises(ImproperlyConfigured, match="TASKS_PUSH_MAX_BODY_BYTES is"):
        assert not tasks_settings.TASKS_PUSH_MAX_BODY_BYTES  # raises first


@pytest.mark.django_db
def test_enqueue_refuses_a_message_pubsub_would_refuse_and_records_nothing(fake_publisher):
    with pytest.raises(MessageTooLarge, match=r"over 10,000,000 bytes .*Pass a reference"):
        tasks.echo.enqueue("x" * PUBSUB_MAX_PUBLISH_BYTES)

    assert not TaskExecution.objects.exists()
    assert fake_publisher.published == []


@pytest.mark.django_db
def test_enqueue_refuses_at_the_exact_publish_request_limit(fake_publisher):
    # Pub/Sub counts the whole publish request: topic, data and protobuf framing.
    overhead = len(b'{"task_id":"","task_name":"echo","args":[""],"kwargs":{},"enqueued_at":""}')
    fits = PUBSUB_MAX_PUBLISH_BYTES - overhead - 36 - 32 - 300  # id, time, topic and framing
    tasks.echo.enqueue("x" * fits)
    with pytest.raises(MessageTooLarge):
        tasks.echo.enqueue("x" * (PUBSUB_MAX_PUBLISH_BYTES - overhead))

    assert TaskExecution.objects.count() == 1
    assert len(fake_publisher.published) == 1


@pytest.mark.emulator
@pytest.mark.django_db(transaction=True)
def test_nine_mb_task_runs_end_to_end_through_the_emulator(settings, pubsub_emulator,
                                                          live_server, emulator_push):
    settings.TASKS_ENVIRONMENT = "size" + secrets.token_hex(4)
    settings.TASKS_VERIFY_OIDC = False  # the emulator sends no token
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"], "OPTIONS": {"project_id": pubsub_emulator.project}}}
    emulator_push("echo", f"{live_server.url}/tasks/pubsub/")

    result = tasks.echo.enqueue("e" * NINE_MB)

    deadline = time.monotonic() + 90
    execution = TaskExecution.objects.get(result_id=result.id)
    while execution.status != State.SUCCESSFUL and time.monotonic() < deadline:
        time.sleep(0.5)
        execution.refresh_from_db()
    assert execution.status == State.SUCCESSFUL, execution.timeline
    assert execution.attempts == 1
    assert len(execution.return_value["args"][0]) == NINE_MB


# Found by mutation testing (mutmut, docs/testing.md):
# check_publish_size mutants 2, 3, 5, 10, 12, 15, 17, 18: the limit is Pub/Sub's, on the
# whole publish request (topic, data, attributes and their framing), exact to the byte. The
# sizes come from the publish request itself, as Pub/Sub counts them.
def test_the_publish_size_limit_counts_topic_and_attributes_to_the_byte():
    # The longest topic path Pub/Sub allows (30-character project, 255-character topic) and
    # its most attributes: the quick estimate must still fall back to the exact size.
    topic = f"projects/{'p' * 30}/topics/{'t' * 255}"
    attributes = {f"key-{n:03}": "v" * 20 for n in range(100)}

    def request_size(data_length: int) -> int:
        message = PubsubMessage(data=b"d" * data_length, attributes=attributes)
        return PublishRequest(topic=topic, messages=[message])._pb.ByteSize()

    near = PUBSUB_MAX_PUBLISH_BYTES - 10_000
    fits = near + PUBSUB_MAX_PUBLISH_BYTES - request_size(near)
    assert request_size(fits) == PUBSUB_MAX_PUBLISH_BYTES

    check_publish_size("echo", topic, b"d" * fits, attributes)
    with pytest.raises(MessageTooLarge, match=r"this one would be 10,000,001\)"):
        check_publish_size("echo", topic, b"d" * (fits + 1), attributes)
