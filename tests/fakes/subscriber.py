"""A stand-in for pubsub_v1.SubscriberClient's pull, modify_ack_deadline and acknowledge.

It keeps Pub/Sub's lease rules as the dead-letter page relies on them (checked against the
real emulator in tests/test_deadletters.py): a pulled message is not handed out again while
its lease lasts; giving it back (ack deadline 0) makes it pullable at once; every pull gives
a new ack id, and only the newest acknowledges it. Returns the real proto-plus types.
"""

import itertools
from dataclasses import dataclass, field
from datetime import datetime

from google.api_core import exceptions
from google.pubsub_v1 import types


@dataclass
class Held:
    message: types.PubsubMessage
    ack_id: str = ""  # the newest ack id while leased; "" while pullable


@dataclass
class FakeSubscriber:
    messages: dict[str, list[Held]] = field(default_factory=dict)  # subscription -> messages
    fail_acknowledge: Exception | None = None
    empty_pull: str = "deadline"  # what a pull of nothing does: raise like a timed-out wait
    calls: list[tuple[str, dict]] = field(default_factory=list)
    closed: bool = False
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def add(
        self,
        subscription: str,
        data: bytes,
        message_id: str,
        attributes: dict[str, str] | None = None,
        publish_time: datetime | None = None,
    ) -> None:
        message = types.PubsubMessage(
            data=data, message_id=message_id, attributes=attributes or {}, publish_time=publish_time
        )
        self.messages.setdefault(subscription, []).append(Held(message))

    def _held(self, subscription: str) -> list[Held]:
        if subscription not in self.messages:
            raise exceptions.NotFound(f"Subscription does not exist: {subscription}")
        return self.messages[subscription]

    def pull(self, request: dict, retry=None, timeout=None) -> types.PullResponse:
        self.calls.append(("pull", request))
        free = [held for held in self._held(request["subscription"]) if not held.ack_id]
        if not free and self.empty_pull == "deadline":
            raise exceptions.DeadlineExceeded("no message within the wait")
        received = []
        for held in free[: request["max_messages"]]:
            held.ack_id = f"ack-{next(self._ids)}"
            received.append(types.ReceivedMessage(ack_id=held.ack_id, message=held.message))
        return types.PullResponse(received_messages=received)

    def modify_ack_deadline(self, request: dict, retry=None, timeout=None) -> None:
        self.calls.append(("modify_ack_deadline", request))
        assert request["ack_deadline_seconds"] == 0
        for held in self._held(request["subscription"]):
            if held.ack_id and held.ack_id in request["ack_ids"]:
                held.ack_id = ""

    def acknowledge(self, request: dict, retry=None, timeout=None) -> None:
        self.calls.append(("acknowledge", request))
        if self.fail_acknowledge is not None:
            raise self.fail_acknowledge
        held = self._held(request["subscription"])
        held[:] = [h for h in held if not (h.ack_id and h.ack_id in request["ack_ids"])]

    def waiting(self, subscription: str) -> list[str]:
        """Message ids still in the subscription, leased or not."""
        return [str(h.message.message_id) for h in self.messages.get(subscription, [])]

    def leased(self, subscription: str) -> list[str]:
        return [str(h.message.message_id) for h in self.messages.get(subscription, []) if h.ack_id]

    def close(self) -> None:
        self.closed = True
