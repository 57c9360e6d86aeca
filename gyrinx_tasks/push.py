"""Parsing of Pub/Sub push envelopes into task deliveries."""

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

SCHEDULED_PREFIX = "scheduled-"


class MalformedPush(ValueError):
    """The push request body is not a Pub/Sub envelope carrying a task message."""

    def __init__(self, reason: str, payload: dict[str, Any] | None = None,
                 message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload or {}
        self.message_id = message_id


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
    subscription: str = ""

    @property
    def is_scheduled(self) -> bool:
        return self.task_id.startswith(SCHEDULED_PREFIX)


def parse_envelope(body: bytes) -> Delivery:
    """Parse a push request body, raising MalformedPush with a reason a person can act on."""
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPush(f"The request body is not JSON ({exc}).") from exc
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise MalformedPush("The envelope has no 'message' object.")
    message = envelope["message"]
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise MalformedPush("The message has no 'messageId'.")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise MalformedPush("The message 'attributes' is not an object.", message_id=message_id)
    delivery_attempt = envelope.get("deliveryAttempt")
    if delivery_attempt is not None and (
        not isinstance(delivery_attempt, int) or delivery_attempt < 1
    ):
        raise MalformedPush("'deliveryAttempt' is not a positive integer.",
                            message_id=message_id)

    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise MalformedPush("The message has no base64 'data'.", message_id=message_id)
    try:
        payload = json.loads(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MalformedPush(f"The message data is not base64-encoded JSON ({exc}).",
                            message_id=message_id) from exc
    if not isinstance(payload, dict):
        raise MalformedPush("The task message is not a JSON object.", message_id=message_id)

    def bad(reason: str) -> MalformedPush:
        return MalformedPush(reason, payload=payload, message_id=message_id)

    task_id, task_name = payload.get("task_id"), payload.get("task_name")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        raise bad("The task message has no usable 'task_id' (a string of 1-255 characters).")
    if not isinstance(task_name, str) or not task_name:
        raise bad("The task message has no 'task_name'.")
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    if not isinstance(args, list):
        raise bad("The task message's 'args' is not a list.")
    if not isinstance(kwargs, dict):
        raise bad("The task message's 'kwargs' is not an object.")
    enqueued_at = None
    if payload.get("enqueued_at") is not None:
        enqueued_at = parse_datetime(str(payload["enqueued_at"]))
        if enqueued_at is None:
            raise bad("The task message's 'enqueued_at' is not an ISO 8601 datetime.")
    return Delivery(
        task_id=task_id, task_name=task_name, args=args, kwargs=kwargs,
        message_id=message_id, enqueued_at=enqueued_at,
        attributes={str(k): str(v) for k, v in attributes.items()},
        delivery_attempt=delivery_attempt, subscription=str(envelope.get("subscription", "")),
    )
