"""Dead letters: the messages Pub/Sub gave up on, and replaying or discarding them.

A route with ``dead_letter_topic`` has its undeliverable messages forwarded there by Pub/Sub
after ``max_delivery_attempts``; provisioning makes one pull subscription of ours on each such
topic (provisioning/pubsub.py). This module reads those subscriptions for the admin's "Dead
letters" page:

- ``peek()`` lists messages without consuming them: it pulls, then gives every message back
  at once (``modify_ack_deadline`` 0). It is a look, not a lock: Pub/Sub may show the same
  message again later, and one pull returns what Pub/Sub chooses to (up to PEEK_LIMIT).
- ``act()`` replays or discards selected messages. Ack ids expire, so it pulls afresh and acts
  only on the selected messages that pull holds (the others are given back at once). A replay
  is a new run of the task, linked to the original run where one exists; its result id is
  derived from the dead-letter topic, the message id and the original's id, so two replays of
  one message (two staff at once, or a replay whose acknowledgement was lost) make one run.
  Then the message is acknowledged. A discard only acknowledges it.
"""

import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, router, transaction
from django.tasks import task_backends
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import clients
from .backend import PubSubBackend
from .messages import is_scheduled
from .models import State, TaskExecution, Trigger
from .registry import get_routes
from .retry import CHANGED, ORIGINAL_FIELDS, live_retry_refusal, route_refusal
from .retry import _pending as pending_for  # the retry's message: same format, same attributes
from .routes import TaskRoute

logger = logging.getLogger("gyrinx_tasks")

PEEK_LIMIT = 100  # messages listed per dead-letter subscription
PULL_ROUNDS = 5  # pulls per look; each returns what Pub/Sub has ready, up to the rest
PULL_WAIT = 2.0  # seconds a pull waits for messages; an empty subscription costs this long
CALL_TIMEOUT = 3.0  # seconds for any other call (give back, acknowledge), retries included
ACK_CHUNK = 500  # ack ids per request (Pub/Sub takes 512 kB requests)

# Attributes Pub/Sub adds to each message it forwards to a dead-letter topic.
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_PROJECT = "CloudPubSubDeadLetterSourceSubscriptionProject"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_PUBLISH_TIME = "CloudPubSubDeadLetterSourceTopicPublishTime"

REPLAY_NAMESPACE = uuid.UUID("6f1f7c1e-3d7a-4f0e-9a53-2f2b7d4c8e10")
PEEK_NOTE = (
    "Listing is a peek: the messages are pulled and given straight back, so nothing "
    "is consumed, and Pub/Sub may show the same message again later. One look shows "
    f"up to {PEEK_LIMIT} messages per dead-letter topic, in the order Pub/Sub hands "
    "them out."
)


@dataclass(frozen=True)
class Source:
    """A dead-letter topic, our pull subscription on it, and the routes that name it."""

    topic: str
    subscription: str
    routes: tuple[TaskRoute, ...]

    @property
    def short_name(self) -> str:
        return self.subscription.rsplit("/", 1)[-1]


def sources(project: str | None = None, routes: Iterable[TaskRoute] | None = None) -> list[Source]:
    """One Source per dead-letter topic of the registry's routes, in registry order."""
    from .provisioning.config import default_project
    from .provisioning.pubsub import dead_letter_subscription_path

    project = project or default_project()
    found: dict[str, list[TaskRoute]] = {}
    for route in get_routes() if routes is None else routes:
        if route.dead_letter_topic:
            topic = route.dead_letter_topic
            if not topic.startswith("projects/"):
                topic = f"projects/{project}/topics/{topic}"
            found.setdefault(topic, []).append(route)
    return [
        Source(topic, dead_letter_subscription_path(project, topic), tuple(routes))
        for topic, routes in found.items()
    ]


@dataclass
class Letter:
    """One dead-lettered message as pulled: ours (a task message) or not (``problem``)."""

    message_id: str
    ack_id: str
    data: bytes
    attributes: dict[str, str]
    dead_lettered_at: datetime | None  # its publish time on the dead-letter topic
    published_at: datetime | None = None  # first published, on the task's topic
    delivery_attempts: int | None = None  # made to the route's subscription before it gave up
    source_subscription: str = ""
    task_id: str = ""
    task_name: str = ""
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    problem: str = ""  # why this is not a task message of ours; "" when it is
    route: TaskRoute | None = None
    original: Any = None  # the run the message was published for, when it is recorded
    replayed_as: str = ""  # result id of a replay made earlier (not yet acknowledged)

    @property
    def raw(self) -> str:
        """The message's bytes as text, cut short, for a message that is not ours."""
        text = self.data[:2000].decode("utf-8", errors="replace")
        return text + ("…" if len(self.data) > 2000 else "")


def _parse_time(value: str) -> datetime | None:
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def _problem(payload: Any) -> str:
    if not isinstance(payload, dict):
        return "The message is JSON but not an object, so it is not a task message."
    if not isinstance(payload.get("task_name"), str) or not payload["task_name"]:
        return "The message has no task_name, so it is not a task message."
    if not isinstance(payload.get("task_id", ""), str):
        return "The message's task_id is not a string."
    if not isinstance(payload.get("args", []), list):
        return "The message's args is not a list."
    if not isinstance(payload.get("kwargs", {}), dict):
        return "The message's kwargs is not an object."
    return ""


def read_letter(received: Any, source: Source) -> Letter:
    """A pulled ReceivedMessage as a Letter; never raises for what the message holds."""
    message = received.message
    attributes = dict(message.attributes)
    publish_time = message.publish_time
    letter = Letter(
        message_id=str(message.message_id),
        ack_id=received.ack_id,
        data=bytes(message.data),
        attributes=attributes,
        dead_lettered_at=publish_time if publish_time else None,
        published_at=_parse_time(attributes.get(SOURCE_PUBLISH_TIME, "")),
        source_subscription=attributes.get(SOURCE_SUBSCRIPTION, ""),
    )
    count = attributes.get(DELIVERY_COUNT, "")
    letter.delivery_attempts = int(count) if count.isdigit() else None
    try:
        payload = json.loads(letter.data)
    except ValueError:
        letter.problem = "The message is not JSON, so it is not a task message."
    else:
        letter.problem = _problem(payload)
        if not letter.problem:
            letter.task_name = payload["task_name"]
            letter.task_id = payload.get("task_id", "")
            letter.args = payload.get("args", [])
            letter.kwargs = payload.get("kwargs", {})
    letter.route = _route_of(letter, source)
    return letter


def _route_of(letter: Letter, source: Source) -> TaskRoute | None:
    """The route whose subscription gave the message up (Pub/Sub names it), else the route
    of the task the message names, among those using this dead-letter topic."""
    for route in source.routes:
        if letter.source_subscription and route.subscription_name == letter.source_subscription:
            return route
    for route in source.routes:
        if letter.task_name and route.name == letter.task_name:
            return route
    return None


def replay_result_id(source: Source, letter: Letter) -> str:
    """The result id of the run replaying ``letter``: the same for every replay of it."""
    key = f"{source.topic}\n{letter.message_id}\n{letter.task_id}"
    return str(uuid.uuid5(REPLAY_NAMESPACE, key))


# --- Talking to Pub/Sub ---------------------------------------------------------------------


def open_subscriber() -> Any:
    """A SubscriberClient (tests replace this); the caller closes it."""
    return clients.subscriber_client()


def _call_options() -> dict[str, Any]:
    from google.api_core import retry as retries

    retry = retries.Retry(
        predicate=retries.if_transient_error,
        initial=0.2,
        maximum=1.0,
        multiplier=2.0,
        timeout=CALL_TIMEOUT,
    )
    return {"retry": retry, "timeout": CALL_TIMEOUT}


def pull(
    subscriber: Any, subscription: str, limit: int = PEEK_LIMIT, wanted: set[str] | None = None
) -> list[Any]:
    """Pull up to ``limit`` messages (stopping early once every id in ``wanted`` is held).
    The caller must acknowledge or give back every message returned; on an error the
    messages pulled so far are given back before it is raised."""
    from google.api_core import exceptions

    received: list[Any] = []
    seen: set[str] = set()
    try:
        for _ in range(PULL_ROUNDS):
            want = limit - len(received)
            if want <= 0 or (wanted is not None and wanted <= seen):
                break
            try:
                response = subscriber.pull(
                    request={"subscription": subscription, "max_messages": want},
                    retry=None,
                    timeout=PULL_WAIT,
                )
            except exceptions.DeadlineExceeded:
                break  # nothing more came within PULL_WAIT
            if not response.received_messages:
                break
            for message in response.received_messages:
                received.append(message)
                seen.add(str(message.message.message_id))
    except BaseException:
        give_back(subscriber, subscription, [m.ack_id for m in received], quiet=True)
        raise
    return received


def give_back(
    subscriber: Any, subscription: str, ack_ids: Sequence[str], quiet: bool = False
) -> None:
    """Return messages to Pub/Sub at once (ack deadline 0), so they are pullable again."""
    try:
        for start in range(0, len(ack_ids), ACK_CHUNK):
            subscriber.modify_ack_deadline(
                request={
                    "subscription": subscription,
                    "ack_ids": list(ack_ids[start : start + ACK_CHUNK]),
                    "ack_deadline_seconds": 0,
                },
                **_call_options(),
            )
    except Exception:
        if not quiet:
            raise
        # Their lease runs out by itself after the subscription's ack deadline.
        logger.warning(
            "Giving back %s dead letters on %s failed", len(ack_ids), subscription, exc_info=True
        )


def acknowledge(subscriber: Any, subscription: str, ack_ids: Sequence[str]) -> None:
    for start in range(0, len(ack_ids), ACK_CHUNK):
        subscriber.acknowledge(
            request={
                "subscription": subscription,
                "ack_ids": list(ack_ids[start : start + ACK_CHUNK]),
            },
            **_call_options(),
        )


def _dedupe(received: list[Any]) -> tuple[list[Any], list[str]]:
    """One ReceivedMessage per message id, and the ack ids of the repeats."""
    first: dict[str, Any] = {}
    repeats = []
    for message in received:
        key = str(message.message.message_id)
        if key in first:
            repeats.append(message.ack_id)
        else:
            first[key] = message
    return list(first.values()), repeats


def _annotate(letters: list[Letter], source: Source) -> None:
    """Find each letter's original run and any replay of it already made."""
    ids = {
        letter.task_id for letter in letters if letter.task_id and not is_scheduled(letter.task_id)
    }
    keys = {replay_result_id(source, letter): letter for letter in letters if not letter.problem}
    runs = {
        run.result_id: run
        for run in TaskExecution.objects.filter(result_id__in=ids | set(keys)).only(
            "pk", "result_id", "task_name", "status"
        )
    }
    for key, letter in keys.items():
        if key in runs:
            letter.replayed_as = key
    for letter in letters:
        # The run the message was published for: its task_id is the run's result id.
        run = runs.get(letter.task_id) if letter.task_id in ids else None
        letter.original = run if run is not None and run.task_name == letter.task_name else None


def peek(subscriber: Any, source: Source, limit: int = PEEK_LIMIT) -> list[Letter]:
    """The messages on ``source``'s subscription, given straight back (nothing consumed)."""
    received = pull(subscriber, source.subscription, limit)
    give_back(subscriber, source.subscription, [m.ack_id for m in received])
    unique, _repeats = _dedupe(received)
    letters = [read_letter(message, source) for message in unique]
    _annotate(letters, source)
    return letters


# --- Replay and discard ---------------------------------------------------------------------

REPLAY, DISCARD = "replay", "discard"


@dataclass
class Outcome:
    """What happened to one selected message."""

    message_id: str
    done: str = ""  # "replayed", "already replayed", "discarded"; "" when left alone
    reason: str = ""  # why it was left alone, or what went wrong after
    letter: Letter | None = None
    run: Any = None  # the replay's run (new, or made earlier)
    published: bool = True


def _who(user: Any) -> str:
    return getattr(user, "get_username", lambda: "")() if user is not None else ""


def replay(letter: Letter, source: Source, user: Any = None) -> Outcome:
    """Record and publish a new run of ``letter``'s task; the caller acknowledges it if
    ``done``. Refusals leave the message in the dead-letter subscription."""
    outcome = Outcome(letter.message_id, letter=letter)
    if letter.problem:
        outcome.reason = f"{letter.problem} It can only be discarded."
        return outcome
    result_id = replay_result_id(source, letter)
    made = TaskExecution.objects.filter(result_id=result_id).first()
    if made is not None:
        outcome.done, outcome.run = "already replayed", made
        return outcome
    route, reason = route_refusal(letter.task_name)
    if reason:
        outcome.reason = reason
        return outcome
    backend = task_backends[route.task.backend]
    if not isinstance(backend, PubSubBackend):
        outcome.reason = (
            f"Task {route.name!r} now runs on backend {backend.alias!r}, not "
            "on Pub/Sub, so its dead letters cannot be replayed here."
        )
        return outcome
    original = None
    if letter.task_id and not is_scheduled(letter.task_id):
        original = (
            TaskExecution.objects.filter(result_id=letter.task_id, task_name=letter.task_name)
            .only(*ORIGINAL_FIELDS)
            .first()
        )
    if original is not None:
        outcome.reason = live_retry_refusal(original)
        if outcome.reason:
            outcome.reason += " Discard this dead letter instead."
            return outcome
    who = _who(user)
    execution = TaskExecution(
        result_id=result_id,
        task_name=route.name,
        task_path=route.path,
        backend=backend.alias,
        args=letter.args,
        kwargs=letter.kwargs,
        enqueued_at=timezone.now(),
        trigger=Trigger.RETRY,
        retry_of_id=original.pk if original is not None else None,
    )
    execution.task_id = execution.result_id
    note = f"replay of dead letter {letter.message_id}"
    if original is not None:
        note += f" of run {original.result_id}"
    execution._log("", State.READY, note + (f" by {who}" if who else ""))
    using = router.db_for_write(TaskExecution)
    try:
        with transaction.atomic(using=using):
            if original is not None:
                settle = original.redelivered_by_pubsub
                sentence = (
                    f"Dead letter {letter.message_id} replayed as run {result_id}"
                    + (f" by {who}" if who else "")
                    + "."
                )
                if settle:
                    sentence += " Pub/Sub gave this run up; it counts as failed for good."
                if not original.record_retried(using, sentence, settle):
                    outcome.reason = CHANGED
                    return outcome
            # The row exists before the publish, as an enqueue's does (runner._claim).
            TaskExecution.objects.using(using).bulk_create([execution])
    except IntegrityError:  # another replay of this message made the run meanwhile
        outcome.done = "already replayed"
        outcome.run = TaskExecution.objects.filter(result_id=result_id).first()
        return outcome
    failed = backend.publish_executions([pending_for(execution, route)])
    outcome.done, outcome.run, outcome.published = "replayed", execution, not failed
    if failed:
        outcome.reason = (
            f"Run {result_id} was recorded, but publishing it failed; it is "
            f"{State(execution.status).label.lower()}. Retry it from its page."
        )
    return outcome


def act(
    subscriber: Any, source: Source, message_ids: Iterable[str], action: str, user: Any = None
) -> list[Outcome]:
    """Replay or discard the messages ``message_ids`` of ``source``, from a fresh pull.

    Messages replayed (or found replayed already) and discarded are acknowledged; the rest
    of the pull is given back at once. A selected message the pull did not return (another
    user holds it, it is gone, or Pub/Sub did not hand it out this time) is reported.
    """
    if action not in (REPLAY, DISCARD):
        raise ValueError(f"Unknown action {action!r}.")
    wanted = {str(message_id) for message_id in message_ids}
    received, repeats = _dedupe(pull(subscriber, source.subscription, PEEK_LIMIT, wanted))
    chosen = [m for m in received if str(m.message.message_id) in wanted]
    back = repeats + [m.ack_id for m in received if str(m.message.message_id) not in wanted]
    give_back(subscriber, source.subscription, back, quiet=True)
    outcomes = []
    to_ack: list[str] = []
    to_return: list[str] = []
    for message in chosen:
        letter = read_letter(message, source)
        try:
            if action == DISCARD:
                outcome = Outcome(letter.message_id, done="discarded", letter=letter)
            else:
                outcome = replay(letter, source, user)
        except Exception as exc:  # noqa: BLE001 - one message's failure stops no other
            logger.exception("Dead-letter %s of %s failed", action, letter.message_id)
            outcome = Outcome(
                letter.message_id,
                letter=letter,
                reason=(
                    f"{action.capitalize()} failed ({type(exc).__name__}); the message is left "
                    "where it is, and the server log has the detail."
                ),
            )
        (to_ack if outcome.done else to_return).append(letter.ack_id)
        outcomes.append(outcome)
    give_back(subscriber, source.subscription, to_return, quiet=True)
    if to_ack:
        try:
            acknowledge(subscriber, source.subscription, to_ack)
        except Exception as exc:  # noqa: BLE001 - the runs stand; the message may show again
            logger.warning("Acknowledging dead letters on %s failed: %s", source.subscription, exc)
            failure = f"Acknowledging it failed ({type(exc).__name__}), so it may be listed again"
            for outcome in outcomes:
                if outcome.done:
                    after = (
                        "; replaying it again finds the run made now."
                        if outcome.run
                        else "; discard it again."
                    )
                    outcome.reason = f"{outcome.reason} {failure}{after}".strip()
    found = {outcome.message_id for outcome in outcomes}
    for message_id in sorted(wanted - found):
        outcomes.append(
            Outcome(
                message_id,
                reason=(
                    "A fresh pull did not return it: another user may be handling it, it "
                    "may be gone already, or Pub/Sub did not hand it out this time. Reload "
                    "the list and try again."
                ),
            )
        )
    return outcomes
