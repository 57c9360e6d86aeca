"""Parsing of Pub/Sub push envelopes into task deliveries.

Anyone can POST to the push endpoint, so parsing assumes nothing about the body: whatever it
holds ends as a Delivery whose every value can be stored (on SQLite and PostgreSQL) and run,
or as MalformedPush with a reason a person can act on. Nothing here touches the database.
"""

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest
from django.utils.dateparse import parse_datetime

# MessageTooLarge is documented as gyrinx_tasks.push.MessageTooLarge (configuration.md,
# security.md), so users may import it from here.
from .messages import MessageTooLarge, is_scheduled  # noqa: F401

# The largest push envelope Pub/Sub can send: 10,000,000 bytes of data is 13,333,336 in
# base64, plus at most 100 attributes (256-byte keys, 1,024-byte values; up to ~0.8 MB once
# JSON-escaped) and a few hundred bytes of envelope. 15 MiB is just above all of that.
DEFAULT_MAX_BODY_BYTES = 15 * 1024 * 1024
# A rejected message's raw body is kept for staff to read, up to this many characters.
RAW_MESSAGE_LIMIT = 64 * 1024
# Deeper JSON is refused: encoding it again to store it would exhaust Python's recursion limit.
MAX_JSON_DEPTH = 100
# Column sizes of TaskExecution (message_id, task_id, task_name) and delivery_attempt's range.
MAX_MESSAGE_ID = 100
MAX_TASK_ID = 255
MAX_TASK_NAME = 255
MAX_DELIVERY_ATTEMPT = 2**31 - 1


class MalformedPush(ValueError):
    """The push request body is not a Pub/Sub envelope carrying a task message."""

    def __init__(self, reason: str, payload: dict[str, Any] | None = None,
                 message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload or {}
        self.message_id = message_id


class BodyTooLarge(MalformedPush):
    """The request body is larger than TASKS_PUSH_MAX_BODY_BYTES; only its start was read."""

    def __init__(self, prefix: bytes, size: int | None, limit: int) -> None:
        told = f"{size:,} bytes" if size is not None else "more bytes"
        super().__init__(
            f"The request body is {told}, over the push endpoint's limit of {limit:,} bytes "
            f"(TASKS_PUSH_MAX_BODY_BYTES). Pub/Sub never sends envelopes that large; raise the "
            f"setting only if a proxy in front of the endpoint adds to the body."
        )
        self.prefix = prefix
        self.size = size


class LengthRequired(Exception):
    """A chunked body the WSGI server did not de-chunk: it cannot be read, so nothing is known.

    Not a MalformedPush: the message may be perfectly good, so it must not be acknowledged.
    """

    def __init__(self) -> None:
        super().__init__(
            "The request body was sent with 'Transfer-Encoding: chunked' and no Content-Length, "
            "and this WSGI server does not de-chunk request bodies, so it cannot be read. Send "
            "a Content-Length header (have the proxy in front buffer the body), or serve the "
            "endpoint with a server that de-chunks bodies (gunicorn, or an ASGI server)."
        )
        self.reason = str(self)


@dataclass(frozen=True)
class Delivery:
    """One push delivery: the task message plus Pub/Sub's metadata."""

    task_id: str
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    message_id: str
    enqueued_at: datetime | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    delivery_attempt: int | None = None

    @property
    def is_scheduled(self) -> bool:
        return is_scheduled(self.task_id)


def safe_text(value: str, limit: int | None = None) -> str:
    """``value`` with NUL and unpaired surrogates escaped, so any database can store it."""
    if "\x00" in value or not _encodable(value):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        value = value.replace("\x00", "\\x00")
    if limit is not None and len(value) > limit:
        value = value[: max(limit - 1, 0)] + "…"
    return value


def safe_raw(body: bytes, size: int | None = None) -> str:
    """A request body as text to keep with its rejection: escaped, NUL-free, size-capped.

    Bytes that are not UTF-8 become ``\\xNN``; ``size`` is the whole body's size when only a
    prefix was read.
    """
    size = len(body) if size is None else size
    text = body[:RAW_MESSAGE_LIMIT].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    if size > RAW_MESSAGE_LIMIT or len(text) > RAW_MESSAGE_LIMIT:
        text = text[:RAW_MESSAGE_LIMIT]
        text += f"\n… [truncated: the first {RAW_MESSAGE_LIMIT:,} of {size:,} bytes are kept]"
    return text


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The request body, read from the stream within ``limit`` bytes.

    Reading the stream ourselves, rather than ``request.body``, keeps Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default, for forms) from refusing Pub/Sub's
    messages of up to 10 MB with an HTML 400 that Pub/Sub would redeliver for days.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        # Only the start is worth reading: it is kept with the rejection.
        raise BodyTooLarge(request.read(RAW_MESSAGE_LIMIT), declared, limit)
    if isinstance(request, WSGIRequest) and not request.META.get("CONTENT_LENGTH"):
        # Django reads a WSGI body only up to CONTENT_LENGTH, so a chunked body without one
        # would read as empty, be rejected and acknowledged: the message lost.
        if request.environ.get("wsgi.input_terminated"):
            # The server de-chunked it and ends the stream at the body's end (PEP 3333's
            # extension; gunicorn sets it), so reading to EOF is safe.
            body = _read_upto(request.environ["wsgi.input"], limit + 1)
            if len(body) > limit:
                raise BodyTooLarge(body[:RAW_MESSAGE_LIMIT], None, limit)
            return body
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            raise LengthRequired()
    body = request.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(body[:RAW_MESSAGE_LIMIT], None, limit)
    return body


def _read_upto(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes from ``stream``; PEP 3333 lets one read() return fewer."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate, from a \ud800-style escape
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity, which JSON cannot say again
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _loads(text: bytes, what: str, kind: str = "JSON") -> Any:
    """Strict JSON: no NaN, Infinity or numbers too large for a float."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise MalformedPush(f"{what} is nested too deeply to parse.") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise MalformedPush(f"{what} is not {kind} ({safe_text(str(exc), 200)}).") from exc


# In valid UTF-8 JSON, a NUL or an unpaired surrogate can only come from a \u escape. Without
# one, no string needs looking at (an escaped backslash before "u0000" is a false alarm, which
# only costs the slow check).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _nesting(text: bytes) -> int:
    """How deeply valid JSON ``text`` nests arrays and objects (an upper bound when small)."""
    opening = text.count(b"[") + text.count(b"{")
    if opening <= MAX_JSON_DEPTH:
        return opening
    # Count brackets outside strings, in C: strings removed, the rest reduced to brackets.
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _storage_problem(value: Any, text: bytes) -> str:
    """Why parsed JSON ``value`` (from ``text``) cannot be stored and run, or "" if it can."""
    if _SUSPECT_ESCAPE.search(text) is None and _nesting(text) <= MAX_JSON_DEPTH:
        return ""  # the common case, decided without visiting the parsed value
    return _unstorable(value)


def text_problem(value: Any) -> str:
    """Why JSON-ready ``value`` cannot be stored: NUL, unpaired surrogates, NaN, Infinity."""
    try:
        text = json.dumps(value, allow_nan=False).encode()
    except ValueError:
        return "carries NaN or Infinity, which JSON (and PostgreSQL's jsonb) cannot hold."
    if _SUSPECT_ESCAPE.search(text) is None:
        return ""
    return _unstorable(value, max_depth=None)


def _unstorable(value: Any, max_depth: int | None = MAX_JSON_DEPTH) -> str:
    """Why ``value`` (parsed JSON) cannot be stored and run, or "" if it can."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()  # depth: how many containers hold item
        where = f" at {path or 'the top'}"
        if max_depth is not None and depth >= max_depth and isinstance(item, dict | list):
            return f"is nested more than {MAX_JSON_DEPTH} levels deep{where}."
        if isinstance(item, str):
            if "\x00" in item:
                return (f"carries a NUL character{where}, which PostgreSQL cannot store; "
                        f"send the data base64-encoded instead.")
            if not _encodable(item):
                return f"carries an unpaired UTF-16 surrogate (not Unicode text){where}."
        elif isinstance(item, float) and not math.isfinite(item):
            return f"carries a number too large for JSON{where}."
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key or not _encodable(key):
                    return f"carries a key with a NUL character or an unpaired surrogate{where}."
                stack.append((child, f"{path}.{safe_text(key, 40)}" if path
                              else safe_text(key, 40), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return ""


def _message_id(message: dict[str, Any]) -> str:
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise MalformedPush("The message has no 'messageId'.")
    if len(message_id) > MAX_MESSAGE_ID or "\x00" in message_id or not _encodable(message_id):
        raise MalformedPush(
            f"The message's 'messageId' is not a Pub/Sub message id (a string of at most "
            f"{MAX_MESSAGE_ID} characters without NUL).")
    return message_id


def parse_envelope(body: bytes) -> Delivery:
    """Parse a push request body, raising MalformedPush with a reason a person can act on."""
    envelope = _loads(body, "The request body")
    if _nesting(body) > MAX_JSON_DEPTH:
        raise MalformedPush(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise MalformedPush("The envelope has no 'message' object.")
    message = envelope["message"]
    message_id = _message_id(message)

    def bad_envelope(reason: str) -> MalformedPush:
        return MalformedPush(reason, message_id=message_id)

    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(v, str) for v in attributes.values()
    ):
        raise bad_envelope("The message 'attributes' is not an object of strings.")
    delivery_attempt = envelope.get("deliveryAttempt")
    if delivery_attempt is not None and (
        isinstance(delivery_attempt, bool) or not isinstance(delivery_attempt, int)
        or not 1 <= delivery_attempt <= MAX_DELIVERY_ATTEMPT
    ):
        raise bad_envelope("'deliveryAttempt' is not a positive integer.")

    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise bad_envelope("The message has no base64 'data'.")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_envelope(f"The message data is not base64-encoded JSON ({exc}).") from exc
    try:
        payload = _loads(decoded, "The message data", "base64-encoded JSON")
    except MalformedPush as exc:
        raise bad_envelope(exc.reason) from exc
    problem = _storage_problem(payload, decoded)
    if problem:
        raise bad_envelope(f"The message data {problem}")
    if not isinstance(payload, dict):
        raise bad_envelope("The task message is not a JSON object.")

    def bad(reason: str) -> MalformedPush:
        return MalformedPush(reason, payload=payload, message_id=message_id)

    task_id, task_name = payload.get("task_id"), payload.get("task_name")
    if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_TASK_ID:
        raise bad(f"The task message has no usable 'task_id' (a string of 1-{MAX_TASK_ID} "
                  f"characters).")
    if not isinstance(task_name, str) or not task_name or len(task_name) > MAX_TASK_NAME:
        raise bad(f"The task message has no usable 'task_name' (a string of 1-{MAX_TASK_NAME} "
                  f"characters).")
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(args, list):
        raise bad("The task message's 'args' is not a list.")
    if not isinstance(kwargs, dict):
        raise bad("The task message's 'kwargs' is not an object.")
    enqueued_at = _enqueued_at(payload.get("enqueued_at"), bad)
    # The envelope's other fields are only kept in the raw message of a rejection.
    problem = _storage_problem(envelope, body)
    if problem:
        raise bad(f"The request body {problem}")
    return Delivery(
        task_id=task_id, task_name=task_name, args=args, kwargs=kwargs,
        message_id=message_id, enqueued_at=enqueued_at, attributes=dict(attributes),
        delivery_attempt=delivery_attempt,
    )


def _enqueued_at(value: Any, bad: Any) -> datetime | None:
    if value is None:
        return None
    problem = "The task message's 'enqueued_at' is not an ISO 8601 datetime."
    if not isinstance(value, str):
        raise bad(problem)
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            raise bad(problem)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # our messages carry an offset; assume UTC
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # e.g. month 13, or year 1 east of UTC
        raise bad(problem) from exc
