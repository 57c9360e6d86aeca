"""The push endpoint under hostile input: every body gets its defined answer, never a 500."""

import base64
import json
import os
from unittest import mock

import hypothesis
import pytest
from hypothesis import strategies as st

from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.push import RAW_MESSAGE_LIMIT
from gyrinx_tasks.views import ACK
from tests.helpers import envelope

pytest_plugins = ["tests.oidc"]  # the oidc fixtures
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_oidc")]
URL = "/tasks/pubsub/"


def post(client, body: bytes):
    return client.post(URL, body, content_type="application/json")


def wrap(data: bytes, message_id="m-1", **message) -> bytes:
    return json.dumps({"message": {"data": base64.b64encode(data).decode(),
                                   "messageId": message_id, **message}}).encode()


CASES = {
    "invalid utf-8 body": b'{"message": {"data": "\xff\xfe", "messageId": "m-\xc3"}}',
    "nul byte in body": b'{"message": {"data": "", "messageId": "m-\x00"}}',
    "nul in task id": envelope({"task_id": "t\x00", "task_name": "add", "args": [1, 2]}),
    "nul in task name": envelope({"task_id": "t-1", "task_name": "a\x00dd", "args": [1, 2]}),
    "nul in args": envelope({"task_id": "t-1", "task_name": "echo", "args": ["a\x00"]}),
    "nul in message id": envelope({"task_id": "t-1", "task_name": "add"}, message_id="m\x00"),
    "nul in attributes": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                  attributes={"k\x00": "v\x00"}),
    "lone surrogate in args": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": ["\\ud800"]}'),
    "invalid utf-8 in data": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": ["\xff"]}'),
    "deep json envelope": b"[" * 100_000 + b"]" * 100_000,
    "deep json payload": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": '
                              + b"[" * 5000 + b"]" * 5000 + b"}"),
    "NaN in args": wrap(b'{"task_id": "t-1", "task_name": "echo", "args": [NaN]}'),
    "huge delivery attempt": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                      delivery_attempt=10**30),
    "long message id": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]},
                                message_id="m" * 500),
    "long task name": envelope({"task_id": "t-1", "task_name": "a" * 500}),
    "impossible enqueued_at": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2],
                                        "enqueued_at": "2026-13-45T10:00:00+00:00"}),
    "year one enqueued_at": envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2],
                                      "enqueued_at": "0001-01-01T00:00:00+05:00"}),
}


@pytest.mark.parametrize("body", CASES.values(), ids=CASES.keys())
def test_hostile_body_is_acknowledged_and_recorded(client, body):
    response = post(client, body)

    assert response.status_code == ACK, response.content[:500]
    assert response["Content-Type"] == "application/json"
    assert response.json()["outcome"] == "rejected"
    execution = TaskExecution.objects.get()
    assert execution.status == State.REJECTED
    assert "\x00" not in execution.raw_message


def test_get_is_a_json_405(client):
    response = client.get(URL)

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json() == {"outcome": "method_not_allowed",
                               "detail": "The push endpoint accepts POST only, not GET."}
    assert not TaskExecution.objects.exists()


def test_bad_token_is_a_json_403_and_records_nothing(client, settings, oidc):
    settings.TASKS_VERIFY_OIDC = True
    body = envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]})

    for header in (oidc.header(iat="yesterday"), oidc.header(exp=float("nan")),
                   oidc.header(nbf=2**40), "Bearer not.a.jwt", ""):
        response = client.post(URL, body, content_type="application/json",
                               headers={"Authorization": header})
        assert response.status_code == 403, header
        assert response.json()["outcome"] == "forbidden"
    assert not TaskExecution.objects.exists()


def test_database_trouble_is_a_429_with_retry_after(client):
    from django.db import OperationalError, connection

    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection pool exhausted")

    with connection.execute_wrapper(refuse):
        response = post(client, envelope({"task_id": "t-1", "task_name": "add", "args": [1, 2]}))

    assert response.status_code == 429
    assert response["Retry-After"] == "10"
    assert response.json()["outcome"] == "database_unavailable"
    assert not TaskExecution.objects.exists()


def test_rejected_raw_message_is_escaped_and_capped(client):
    body = b'{"message": "\xff\x00' + b"x" * 200_000 + b'"}'

    response = post(client, body)

    assert response.status_code == ACK
    raw = TaskExecution.objects.get().raw_message
    assert raw.startswith('{"message": "\\xff\\x00xxx')
    assert raw.endswith(f"[truncated: the first {RAW_MESSAGE_LIMIT:,} of {len(body):,} bytes "
                        f"are kept]")
    assert len(raw) < RAW_MESSAGE_LIMIT + 100


# Property-based: whatever the body, the answer is one of the defined ones.

_any_char = st.characters(codec=None, exclude_categories=())  # NUL and surrogates included
_text = st.text(_any_char, max_size=12)
_clean_text = st.text(st.characters(exclude_characters="\x00"), max_size=12)


def _json_of(text, floats):
    leaf = st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63) | floats | text
    return st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c,
                                                                                  max_size=4),
                        max_leaves=12)


_json = _json_of(_text, st.floats())  # anything JSON can say, and NaN, Infinity, NUL, \ud800
_clean_json = _json_of(_clean_text, st.floats(allow_nan=False, allow_infinity=False))


def _mostly(good, bad=_json):
    """``good`` four times in five, else anything: deep paths get reached, edges still hit."""
    return st.integers(0, 4).flatmap(lambda i: bad if i == 4 else good)


def _maybe(good):
    return _mostly(st.just(good))


_payloads = st.fixed_dictionaries(
    {
        "task_id": _mostly(st.uuids().map(str) | _text),
        "task_name": _mostly(st.sampled_from(["add", "echo", "explode", "report_attempt",
                                              "nope"])),
    },
    optional={
        "args": _mostly(st.lists(_clean_json, max_size=3)),
        "kwargs": _mostly(st.dictionaries(_clean_text, _clean_json, max_size=3)),
        "enqueued_at": _mostly(st.datetimes(timezones=st.timezones() | st.none()).map(
            lambda d: d.isoformat())),
    },
)


def _data(payload, junk: bytes, choice: int, depth: int) -> str:
    encoded = json.dumps(payload).encode("utf-8", "surrogatepass")
    if choice == 1:
        encoded = junk  # any bytes at all
    elif choice == 2:
        encoded = encoded + junk
    elif choice == 3:  # deep arguments, around the nesting limit and past Python's
        encoded = (b'{"task_id": "deep", "task_name": "echo", "args": '
                   + b"[" * depth + b"]" * depth + b"}")
    return base64.b64encode(encoded).decode()


@st.composite
def _bodies(draw) -> bytes:
    data = _data(draw(_payloads), draw(st.binary(max_size=20)), draw(st.integers(0, 9)),
                 draw(st.integers(95, 5000)))
    message = draw(st.fixed_dictionaries(
        {"data": _maybe(data), "messageId": _maybe(str(draw(st.integers(1, 10**6))))},
        optional={"attributes": st.dictionaries(_text, _text, max_size=3) | _json,
                  "publishTime": _maybe("2026-11-23T10:00:00Z")}))
    envelope = draw(st.fixed_dictionaries(
        {"message": _maybe(message)},
        optional={"deliveryAttempt": _maybe(draw(st.integers(1, 5))), "subscription": _json}))
    body = json.dumps(envelope).encode("utf-8", "surrogatepass")
    mangle = draw(st.integers(0, 9))
    if mangle == 9:  # raw bytes around or instead of the JSON
        body = draw(st.binary(max_size=50)) + body[: draw(st.integers(0, len(body)))]
    elif mangle == 8:
        body = json.dumps(envelope, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return body


# Status -> outcomes it may carry (PRODUCT.md's table; acknowledgements are ACK, 200).
DEFINED = {200: {"ran", "rejected", "skipped", "duplicate"}, 429: {"busy", "held"},
           500: {"failed"}}


def _check_answer(response) -> dict:
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    assert response.status_code in DEFINED, answer
    assert answer["outcome"] in DEFINED[response.status_code], answer
    return answer


def _check_stored() -> None:
    for execution in TaskExecution.objects.all():
        for name in ("task_id", "task_name", "status_detail", "raw_message", "message_id"):
            value = getattr(execution, name) or ""
            assert "\x00" not in value, (name, value[:200])
            value.encode("utf-8")  # no unpaired surrogates
        assert len(execution.raw_message) < RAW_MESSAGE_LIMIT + 100


HYPOTHESIS = hypothesis.settings(
    max_examples=int(os.environ.get("GYRINX_HYPOTHESIS_EXAMPLES", "300")), deadline=None,
    database=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                                          hypothesis.HealthCheck.too_slow,
                                          hypothesis.HealthCheck.data_too_large])


@HYPOTHESIS
@hypothesis.given(body=_bodies())
def test_any_envelope_gets_a_defined_answer(client, body):
    TaskExecution.objects.all().delete()  # each example on its own, not a redelivery
    answer = _check_answer(post(client, body))

    hypothesis.event(answer["outcome"] + answer["detail"][:50])
    if answer["outcome"] == "rejected":
        assert TaskExecution.objects.get(result_id=answer["result_id"]).status == State.REJECTED
    _check_stored()


@HYPOTHESIS
@hypothesis.given(body=st.binary(max_size=400))
def test_any_bytes_get_a_defined_answer(client, body):
    answer = _check_answer(post(client, body))

    assert answer["outcome"] == "rejected"
    _check_stored()


@pytest.mark.parametrize("suspect", ["", "\\ud83d\\ude00"], ids=["fast check", "full walk"])
def test_nesting_limit_is_the_same_on_both_checks(suspect):
    from gyrinx_tasks.push import MAX_JSON_DEPTH, MalformedPush, parse_envelope

    def body(levels: int) -> bytes:
        # An escaped emoji (a valid surrogate pair) makes the fast check defer to the walk.
        args = "[" * (levels - 1) + f'"{suspect}"' + "]" * (levels - 1)
        return wrap(f'{{"task_id": "t", "task_name": "echo", "args": {args}}}'.encode())

    # The task message's object is the first level, its args the second.
    assert parse_envelope(body(MAX_JSON_DEPTH)).args
    with pytest.raises(MalformedPush, match=f"nested more than {MAX_JSON_DEPTH} levels deep"):
        parse_envelope(body(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    ("value", "detail"),
    [({"v": ["a\x00b"]}, "The task's return value carries a NUL character at v[0]"),
     ({"v": "\ud800"},
      "The task's return value carries an unpaired UTF-16 surrogate (not Unicode text) at v"),
     ({"v": [1.5, float("nan")]}, "The task's return value carries NaN or Infinity")],
    ids=["nul", "surrogate", "nan"],
)
def test_task_output_that_cannot_be_stored_is_the_task_failing(client, value, detail):
    # The message is clean; the task itself makes the bad text, as one decoding binary data
    # might. That is the task failing (500, retried), not a 500 of ours with the run stuck.
    with mock.patch("django.tasks.base.Task.call", return_value=value):
        response = post(client, envelope({"task_id": "out-1", "task_name": "echo"}))

    assert response.status_code == 500
    assert response.json()["outcome"] == "failed"
    execution = TaskExecution.objects.get(result_id="out-1")
    assert execution.status == State.FAILED
    assert detail in execution.errors[0]["traceback"]


def test_exception_text_that_cannot_be_stored_is_escaped(client):
    with mock.patch("django.tasks.base.Task.call", side_effect=RuntimeError("bad \x00 \ud800")):
        response = post(client, envelope({"task_id": "out-3", "task_name": "explode"}))

    assert response.status_code == 500
    assert response.json()["outcome"] == "failed"
    traceback = TaskExecution.objects.get(result_id="out-3").errors[0]["traceback"]
    assert "RuntimeError: bad \\x00 \\ud800" in traceback
