"""The task message: what is published, how it is encoded, its attributes and size limit.

Every publisher (enqueue, retry, scheduled firings) builds its message here, and the push
endpoint reads the same names back, so the format has one definition.
"""

import json
import re
from typing import Any

# Scheduled messages carry a task id with this prefix, fixed per job; each delivery of one
# is its own run, identified by its Pub/Sub message id.
SCHEDULED_PREFIX = "scheduled-"

# Message attributes. RECORDED: our backend recorded the run before publishing, so a delivery
# of such a message never creates the run's row itself (that could run a rolled-back
# enqueue). TRIGGER: why the run exists (a Trigger value), read if the delivery creates the
# row. REQUESTED_BY: who pressed "Run now", written into the run's first timeline note.
RECORDED_ATTRIBUTE = "gyrinx_recorded"
TRIGGER_ATTRIBUTE = "trigger"
REQUESTED_BY_ATTRIBUTE = "requested_by"
REQUESTED_BY_LIMIT = 150  # a username's length in django.contrib.auth
# TRACEPARENT: the enqueuing caller's W3C trace context (traces.py); the run joins its trace.
TRACEPARENT_ATTRIBUTE = "traceparent"

# Pub/Sub refuses a publish request larger than 10,000,000 bytes (topic, data and attributes
# together; google-cloud-pubsub's _SERVER_PUBLISH_MAX_BYTES).
PUBSUB_MAX_PUBLISH_BYTES = 10_000_000


class MessageTooLarge(ValueError):
    """enqueue() was given a task whose message Pub/Sub would refuse as too large."""


def build_message(task_id: str, task_name: str, args: Any, kwargs: Any,
                  enqueued_at: Any = None) -> dict[str, Any]:
    """The JSON message a task travels as. Scheduled messages carry no enqueued_at."""
    message: dict[str, Any] = {
        "task_id": task_id, "task_name": task_name, "args": list(args), "kwargs": dict(kwargs),
    }
    if enqueued_at is not None:
        message["enqueued_at"] = enqueued_at.isoformat()
    return message


def trace_attributes() -> dict[str, str]:
    """The caller's trace context as message attributes ({} outside any trace)."""
    from .traces import current_traceparent

    traceparent = current_traceparent()
    return {TRACEPARENT_ATTRIBUTE: traceparent} if traceparent else {}


def encode_message(message: dict[str, Any]) -> bytes:
    """A task message's bytes as published. ValueError for NaN or Infinity, which are not
    JSON."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def encode_json(value: Any) -> str:
    """A value as it appears inside an encoded message (compact, ASCII). ValueError for NaN
    or Infinity."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def encode_task_message(task_id: str, task_name: str, args_json: str, kwargs_json: str,
                        enqueued_at: Any) -> bytes:
    """encode_message(build_message(task_id, task_name, args, kwargs, enqueued_at)), from
    the arguments' encode_json() text: the same bytes, without encoding them again."""
    return (f'{{"task_id":{_quoted(task_id)},"task_name":{_quoted(task_name)},'
            f'"args":{args_json},"kwargs":{kwargs_json},'
            f'"enqueued_at":{_quoted(enqueued_at.isoformat())}}}').encode()


def _quoted(text: str) -> str:
    """json.dumps(text): quoted as it is when nothing in it needs an escape."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


# In the message's JSON (ASCII, every other character escaped), a NUL or a lone surrogate can
# only be one of these escapes; a match (also a paired surrogate, or an escaped backslash
# before "u0000") only costs the full check.
SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def is_scheduled(task_id: str) -> bool:
    return task_id.startswith(SCHEDULED_PREFIX)


def check_publish_size(task_name: str, topic_path: str, data: bytes,
                       attributes: dict[str, str]) -> None:
    """Raise MessageTooLarge if Pub/Sub would refuse to publish ``data`` to ``topic_path``."""
    rough = len(data) + len(topic_path) + sum(len(k) + len(v) for k, v in attributes.items())
    if rough + 1024 <= PUBSUB_MAX_PUBLISH_BYTES:
        return  # far enough below the limit that protobuf's framing cannot cross it
    from google.pubsub_v1 import PublishRequest, PubsubMessage

    # proto-plus's public Message.pb() hands over the protobuf message, whose ByteSize()
    # counts the serialized request without building it.
    size = PublishRequest.pb(PublishRequest(topic=topic_path, messages=[
        PubsubMessage(data=data, attributes=attributes)])).ByteSize()
    if size > PUBSUB_MAX_PUBLISH_BYTES:
        raise MessageTooLarge(
            f"Task {task_name!r} was not enqueued: its message is {len(data):,} bytes of JSON "
            f"and Pub/Sub refuses publish requests over {PUBSUB_MAX_PUBLISH_BYTES:,} bytes "
            f"(this one would be {size:,}). Pass a reference instead (a database id or a "
            f"storage path) and load the data inside the task."
        )
