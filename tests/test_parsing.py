"""Parsing a push (gyrinx_tasks/push.py): reading the body within its limit, the envelope, the
task message and its values; what cannot be parsed is a REJECTED run with a reason, never a 500.

The tests were written from mutmut's survivors (docs/testing.md, "Mutation testing"); each
comment names the mutants it kills. Hostile input in bulk: tests/test_hostile.py; sizes near
Pub/Sub's limit: tests/test_push_size.py.
"""

import base64
import io
import json
import time
from datetime import UTC, datetime

import pytest
from django.core.handlers.asgi import ASGIRequest

from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.push import MAX_JSON_DEPTH, MAX_MESSAGE_ID, RAW_MESSAGE_LIMIT, safe_text
from gyrinx_tasks.views import ACK, pubsub_push
from tests.helpers import envelope, push

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_oidc")]
URL = "/tasks/pubsub/"


def raw(text: bytes, message_id: str = "m-raw") -> bytes:
    """An envelope whose message data is exactly ``text`` (JSON that json.dumps cannot make)."""
    return envelope(None, message_id=message_id, raw_data=base64.b64encode(text).decode())


class CountingStream(io.BytesIO):
    """A request body that remembers how many bytes were read from it."""

    taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def rejection(response) -> str:
    assert response.status_code == ACK, response.content[:300]
    answer = response.json()
    assert answer["outcome"] == "rejected", answer
    assert TaskExecution.objects.get(result_id=answer["result_id"]).status == State.REJECTED
    return answer["detail"]


# MalformedPush.__init__ mutant 5, parse_envelope mutants 25, 27, 112, 115 (the message id
# not kept): a redelivered message that cannot be parsed into a task must settle its one
# record, found again by its message id.
@pytest.mark.parametrize("data", [["not", "a", "task", "message"], {"task_name": "add"}])
def test_a_redelivered_unparseable_message_is_one_rejected_run_with_its_message_id(client,
                                                                                  data):
    body = envelope(data, message_id="m-list")

    first, second = push(client, body), push(client, body)

    assert (first.status_code, second.status_code) == (ACK, ACK)
    execution = TaskExecution.objects.get()
    assert execution.message_id == "m-list"
    assert [step["to"] for step in execution.timeline].count(State.REJECTED) == 1


# BodyTooLarge.__init__ mutants 3, 5, 6, read_body mutants 19-21, 23-27. Under ASGI a chunked
# body declares no length, so its size is unknown when the limit is crossed: the rejection must
# still be a sentence, not a 500, and the body is read no further than one byte past the limit.
def test_an_undeclared_body_over_the_limit_is_rejected_not_crashed(settings):
    settings.TASKS_PUSH_MAX_BODY_BYTES = 1_000
    body = envelope({"task_id": "t-chunked", "task_name": "echo", "args": ["c" * 5_000]})
    scope = {"type": "http", "method": "POST", "path": URL, "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    stream = CountingStream(body)

    response = pubsub_push(ASGIRequest(scope, stream))

    assert stream.taken == 1_001

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


# safe_text mutants 1-4: text any database stores, NUL and unpaired surrogates escaped. (The
# push path refuses such messages before recording them; the runner uses safe_text for the
# tracebacks and exception texts of tasks, which may hold anything.)
@pytest.mark.parametrize(("text", "kept"), [
    ("a\x00b", "a\\x00b"),
    ("\ud800", "\\ud800"),
    ("\ud800 and \x00", "\\ud800 and \\x00"),
    ("plain é\u2603", "plain é\u2603"),
])
def test_safe_text_escapes_what_databases_refuse(text, kept):
    assert safe_text(text) == kept
    assert safe_text(text).encode("utf-8")  # no unpaired surrogate left


# safe_text mutants 34, 35, 37 (through record_rejection): what a rejected message named is
# cut to its column; mutant 27: a value that fits exactly is kept whole.
@pytest.mark.parametrize(("task_name", "kept"), [
    ("n" * 300, "n" * 254 + "…"),
    ("n" * 255, "n" * 255),
])
def test_a_rejected_message_keeps_its_task_name_as_storable_text(client, task_name, kept):
    text = json.dumps({"task_id": "t-name", "task_name": task_name}).encode()

    rejection(push(client, raw(text)))

    assert TaskExecution.objects.get().task_name == kept


# safe_raw mutant 18: a NUL byte in a body kept for staff is escaped; mutants 21, 22: a body
# of exactly RAW_MESSAGE_LIMIT bytes is kept whole, without a truncation note.
def test_a_rejected_body_is_kept_escaped_and_whole_up_to_the_limit(client):
    rejection(push(client, b"not json \x00 here"))
    assert TaskExecution.objects.get().raw_message == "not json \\x00 here"

    TaskExecution.objects.all().delete()
    rejection(push(client, b"x" * RAW_MESSAGE_LIMIT))
    assert TaskExecution.objects.get().raw_message == "x" * RAW_MESSAGE_LIMIT


# read_body mutants 10, 20, 22: a body exactly at TASKS_PUSH_MAX_BODY_BYTES is accepted.
def test_a_body_exactly_at_the_limit_runs(client, settings):
    body = envelope({"task_id": "t-exact", "task_name": "add", "args": [2, 3]})
    settings.TASKS_PUSH_MAX_BODY_BYTES = len(body)

    response = push(client, body)

    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(result_id="t-exact").return_value == 5


# read_body mutant 8: a Content-Length that is not a number is not a crash.
def test_a_content_length_that_is_not_a_number_is_rejected_not_crashed(client):
    response = client.post(URL, b"", content_type="application/json", CONTENT_LENGTH="lots")

    assert rejection(response).startswith("The request body is not JSON")


# read_body mutant 17: a body declared larger than the limit is not read past the start kept
# with its rejection (a 10 GB Content-Length must not be read into memory).
def test_a_body_declared_too_large_is_read_only_as_far_as_the_part_kept(settings):
    from django.core.handlers.wsgi import WSGIRequest
    from django.test import RequestFactory

    settings.TASKS_PUSH_MAX_BODY_BYTES = 1_000
    stream = CountingStream(b"y" * (RAW_MESSAGE_LIMIT * 3))
    environ = RequestFactory().post(URL).environ
    environ.update({"CONTENT_LENGTH": str(RAW_MESSAGE_LIMIT * 3), "wsgi.input": stream})

    response = pubsub_push(WSGIRequest(environ))

    assert response.status_code == ACK
    assert stream.taken == RAW_MESSAGE_LIMIT
    assert TaskExecution.objects.get().raw_message.startswith("y" * RAW_MESSAGE_LIMIT)


# _nesting mutants 18, 20: brackets that are all inside a string are no nesting at all.
def test_brackets_inside_a_string_are_not_nesting(client):
    detail = rejection(push(client, raw(json.dumps("[" * 150).encode())))

    assert detail == "The task message is not a JSON object."


# _message_id mutants 7, 8, 9: Pub/Sub's push body carries the id as message_id as well as
# messageId; either is enough.
def test_the_message_id_may_come_as_message_id(client):
    body = json.loads(envelope({"task_id": "t-snake", "task_name": "add", "args": [1, 1]}))
    body["message"]["message_id"] = body["message"].pop("messageId")

    response = push(client, json.dumps(body).encode())

    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(result_id="t-snake").message_id == "m-1"


# _message_id mutants 17, 19, 20: a message id with NUL is refused (it could not be stored on
# PostgreSQL); one of exactly MAX_MESSAGE_ID characters is a message id.
def test_message_ids_are_held_to_their_column(client):
    detail = rejection(push(client, envelope({"task_id": "t-nul"}, message_id="m\x00")))
    assert detail.startswith("The message's 'messageId' is not a Pub/Sub message id")

    longest = "m" * MAX_MESSAGE_ID
    response = push(client, envelope({"task_id": "t-long", "task_name": "add", "args": [1, 2]},
                                     message_id=longest))
    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(result_id="t-long").message_id == longest


# _enqueued_at mutants 3, 4, 11: a text that is no datetime at all is refused with the sentence.
def test_an_enqueued_at_that_is_no_datetime_is_rejected_with_the_reason(client):
    detail = rejection(push(client, envelope({"task_id": "t-when", "task_name": "add",
                                              "enqueued_at": "yesterday"})))

    assert detail == "The task message's 'enqueued_at' is not an ISO 8601 datetime."


# _enqueued_at mutants 13, 14: a datetime without an offset is UTC, whatever the server's
# local time zone is.
def test_an_enqueued_at_without_an_offset_is_utc(client, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        response = push(client, envelope({"task_id": "t-naive", "task_name": "add",
                                          "args": [1, 2], "enqueued_at": "2026-11-23T10:00:00"}))
    finally:
        monkeypatch.undo()
        time.tzset()

    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(result_id="t-naive").enqueued_at == datetime(
        2026, 11, 23, 10, 0, tzinfo=UTC)


# parse_envelope mutants 10, 11: "more than MAX_JSON_DEPTH levels" - exactly that many is fine,
# one more is refused with the sentence.
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
def test_envelope_nesting_is_limited_to_max_json_depth(client, depth):
    body = json.loads(add_message("t-deep"))
    body["extra"] = json.loads("[" * (depth - 1) + "]" * (depth - 1))  # inside the envelope
    text = json.dumps(body).encode()

    response = push(client, text)

    if depth == MAX_JSON_DEPTH:
        assert response.status_code == 200, response.content[:300]
        assert TaskExecution.objects.get(result_id="t-deep").status == State.SUCCESSFUL
    else:
        assert rejection(response) == (
            f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")


# parse_envelope mutants 52-54: deliveryAttempt runs from 1 (the first delivery under a
# dead-letter policy) to the column's largest value.
@pytest.mark.parametrize("attempt", [1, 2**31 - 1])
def test_every_delivery_attempt_pubsub_can_send_is_accepted(client, attempt):
    response = push(client, envelope({"task_id": "t-attempt", "task_name": "add",
                                      "args": [1, 2]}, delivery_attempt=attempt))

    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(result_id="t-attempt").delivery_attempt == attempt


def add_message(task_id: str) -> bytes:
    return envelope({"task_id": task_id, "task_name": "add", "args": [1, 2]})


# parse_envelope mutants 123, 127, 129, 130, 133: task_id and task_name are non-empty strings
# of at most 255 characters; 255 is allowed.
@pytest.mark.parametrize(("message", "reason"), [
    ({"task_id": "", "task_name": "add"}, "The task message has no usable 'task_id'"),
    ({"task_id": "t-name", "task_name": ""}, "The task message has no usable 'task_name'"),
    ({"task_id": "t-name", "task_name": 5}, "The task message has no usable 'task_name'"),
    ({"task_id": "t-name", "task_name": "n" * 255}, "No route in TASKS_REGISTRY is named"),
])
def test_task_ids_and_names_are_checked(client, message, reason):
    assert rejection(push(client, envelope(message))).startswith(reason)


def test_a_task_id_of_255_characters_runs(client):
    response = push(client, envelope({"task_id": "i" * 255, "task_name": "add", "args": [1, 2]}))

    assert response.status_code == 200, response.content[:300]
    assert TaskExecution.objects.get(task_id="i" * 255).status == State.SUCCESSFUL


# parse_envelope mutants 80, 82, 83: data with characters outside base64's alphabet is refused,
# not decoded with them dropped.
def test_data_with_characters_outside_base64_is_rejected(client):
    body = json.loads(add_message("t-b64"))
    data = body["message"]["data"]
    body["message"]["data"] = data[:8] + "*" + data[8:]

    detail = rejection(push(client, json.dumps(body).encode()))

    assert detail.startswith("The message data is not base64-encoded JSON (")
