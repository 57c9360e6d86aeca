"""Push parsing (gyrinx_tasks/push.py): behaviour that mutmut showed no test held.

Each test names the mutants it kills (docs/testing.md, "Mutation testing"); the rest of
push.py's survivors are accounted for in docs/mutation-survivors.md.
"""

import base64
import io
import json

import pytest
from django.core.handlers.asgi import ASGIRequest
from google.pubsub_v1 import PublishRequest, PubsubMessage

from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.push import PUBSUB_MAX_PUBLISH_BYTES, MessageTooLarge, check_publish_size
from gyrinx_tasks.views import ACK, pubsub_push
from tests.helpers import envelope

pytestmark = pytest.mark.django_db
URL = "/tasks/pubsub/"


@pytest.fixture(autouse=True)
def no_oidc(settings):
    settings.TASKS_VERIFY_OIDC = False


def push(client, body: bytes):
    return client.post(URL, body, content_type="application/json")


def raw(text: bytes, message_id: str = "m-raw") -> bytes:
    """An envelope whose message data is exactly ``text`` (JSON that json.dumps cannot make)."""
    return envelope(None, message_id=message_id, raw_data=base64.b64encode(text).decode())


def rejection(response) -> str:
    assert response.status_code == ACK, response.content[:300]
    answer = response.json()
    assert answer["outcome"] == "rejected", answer
    assert TaskExecution.objects.get(result_id=answer["result_id"]).status == State.REJECTED
    return answer["detail"]


# MalformedPush.__init__ mutant 5 (the message id not kept): a redelivered message that cannot
# be parsed into a task must settle its one record, found again by its message id.
def test_a_redelivered_unparseable_message_is_one_rejected_run_with_its_message_id(client):
    body = envelope(["not", "a", "task", "message"], message_id="m-list")

    first, second = push(client, body), push(client, body)

    assert (first.status_code, second.status_code) == (ACK, ACK)
    execution = TaskExecution.objects.get()
    assert execution.message_id == "m-list"
    assert [step["to"] for step in execution.timeline].count(State.REJECTED) == 1


# BodyTooLarge.__init__ mutants 3, 5, 6. Under ASGI a chunked body declares no length, so its
# size is unknown when the limit is crossed: the rejection must still be a sentence, not a 500.
def test_an_undeclared_body_over_the_limit_is_rejected_not_crashed(settings):
    settings.TASKS_PUSH_MAX_BODY_BYTES = 1_000
    body = envelope({"task_id": "t-chunked", "task_name": "echo", "args": ["c" * 5_000]})
    scope = {"type": "http", "method": "POST", "path": URL, "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}

    response = pubsub_push(ASGIRequest(scope, io.BytesIO(body)))

    assert response.status_code == ACK, response.content[:300]
    answer = json.loads(response.content)
    assert answer["outcome"] == "rejected"
    assert answer["detail"].startswith(
        "The request body is more bytes, over the push endpoint's limit of 1,000 bytes")


# _finite_float mutants 3, 5 and _refuse_constant mutant 1: ordinary fractions run; a number
# too large for a float, and NaN, are refused with the reason naming them.
def test_fractional_arguments_run(client):
    response = push(client, envelope({"task_id": "t-float", "task_name": "add",
                                      "args": [1.5, 2.25]}))

    assert response.status_code == 200, response.content[:300]
    execution = TaskExecution.objects.get(result_id="t-float")
    assert (execution.status, execution.return_value) == (State.SUCCESSFUL, 3.75)


@pytest.mark.parametrize(("number", "reason"), [
    (b"1e400", "the number 1e400 is too large"),
    (b"NaN", "NaN is not valid JSON"),
    (b"-Infinity", "-Infinity is not valid JSON"),
])
def test_numbers_json_cannot_say_again_are_rejected_by_name(client, number, reason):
    text = b'{"task_id": "t-num", "task_name": "add", "args": [' + number + b', 1]}'

    detail = rejection(push(client, raw(text)))

    assert detail.startswith("The message data is not base64-encoded JSON")
    assert reason in detail


# _unstorable mutant 18: a backslash before "u0000" makes the parser look at every value (a
# false alarm); the finite numbers it meets on the way are fine.
def test_a_text_that_only_looks_like_a_nul_escape_runs_beside_a_fraction(client):
    args = [0.5, "\\u0000 is how JSON spells NUL"]
    body = envelope({"task_id": "t-alarm", "task_name": "echo", "args": args})
    assert b"\\\\u0000" in base64.b64decode(json.loads(body)["message"]["data"])

    response = push(client, body)

    assert response.status_code == 200, response.content[:300]
    execution = TaskExecution.objects.get(result_id="t-alarm")
    assert execution.status == State.SUCCESSFUL
    assert execution.return_value == {"args": args, "kwargs": {}}


# _unstorable mutants 20, 21: keys are checked like values (PostgreSQL's jsonb refuses NUL
# in either); SQLite would store them, so only the rejection shows the check.
@pytest.mark.parametrize("key", ["a\x00b", "\ud800"])
def test_a_key_postgresql_cannot_store_is_rejected(client, key):
    text = json.dumps({"task_id": "t-key", "task_name": "echo", "kwargs": {key: 1}}).encode()

    detail = rejection(push(client, raw(text)))

    assert detail == ("The message data carries a key with a NUL character or an unpaired "
                      "surrogate at kwargs.")


# _unstorable mutants 7, 8, 26, 29, 31, 32, 34, 36, 37: the reason says where the bad value
# is, keys cut to 40 characters.
@pytest.mark.parametrize(("data", "where"), [
    ({"task_id": "t", "task_name": "echo", "kwargs": {"outer": [0, {"inner": "a\x00"}]}},
     "kwargs.outer[1].inner"),
    ({"task_id": "t", "task_name": "echo", "kwargs": {"k" * 60: "\x00"}},
     "kwargs." + "k" * 39 + "…"),
    ({"task_id": "t", "task_name": "echo", "x" * 60: "\x00"}, "x" * 39 + "…"),
    ("\x00", "the top"),
])
def test_the_reason_says_where_the_unstorable_value_is(client, data, where):
    detail = rejection(push(client, raw(json.dumps(data).encode())))

    assert detail == (f"The message data carries a NUL character at {where}, which PostgreSQL "
                      f"cannot store; send the data base64-encoded instead.")


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
