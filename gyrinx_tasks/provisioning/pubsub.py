"""Pub/Sub topics and subscriptions: desired state, actual state, and the calls.

Each route has a push subscription on its topic; each dead-letter topic the routes name has
one pull subscription of ours, which the admin's "Dead letters" page reads (gyrinx_tasks/
deadletters.py)."""

import hashlib
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..routes import TaskRoute, topic_name_for
from .config import ProvisioningConfig
from .plan import Action, Desired, Kind, Verb, diff, seconds

TOPIC_ORPHAN_NOTE = (
    "no route declares it; kept, because deleting a topic detaches its subscription. "
    "Delete it by hand once nothing publishes to it"
)
SUBSCRIPTION_ORPHAN_NOTE = (
    "no route declares it; kept, because deleting it loses undelivered messages. "
    "Delete it by hand once it has drained"
)


def dead_letter_topic_path(config: ProvisioningConfig, route: TaskRoute) -> str:
    topic = route.dead_letter_topic or ""
    return topic if topic.startswith("projects/") else config.topic_path(topic)


# The dead-letter subscription's lease on the messages a replay or a discard pulls. What
# nobody acknowledges is kept for Pub/Sub's default message retention (7 days).
DEAD_LETTER_ACK_DEADLINE = 60
SUBSCRIPTION_ID_LIMIT = 255  # Pub/Sub's limit on a subscription id


def dead_letter_subscription_path(project: str, dead_letter_topic: str) -> str:
    """Our pull subscription on ``dead_letter_topic`` (a full topic path), in ``project``.

    Named with the environment's prefix, so one no route needs any more is reported as an
    orphan like the others: ``{env}--gyrinx.tasks--dead-letters--{topic id}``, with the
    topic's project before its id when that is another project. A route's own names never
    hold "dead-letters--" (a dash is not part of a Python dotted path).
    """
    parts = dead_letter_topic.split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "topics":
        topic_project, topic_id = parts[1], parts[3]
    else:  # not a topic path (check gyrinx_tasks.E055 says so): still a usable name
        topic_project, topic_id = project, dead_letter_topic.replace("/", ".")
    where = topic_id if topic_project == project else f"{topic_project}.{topic_id}"
    name = f"{topic_name_for('')}dead-letters--{where}"
    if len(name) > SUBSCRIPTION_ID_LIMIT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:SUBSCRIPTION_ID_LIMIT - 13]}-{digest}"
    return f"projects/{project}/subscriptions/{name}"


def dead_letter_topics(config: ProvisioningConfig, routes: Iterable[TaskRoute]) -> list[str]:
    """The full paths of the dead-letter topics the routes name, each once, in order."""
    found = {dead_letter_topic_path(config, route): None
             for route in routes if route.dead_letter_topic}
    return list(found)


def desired_dead_letter_subscription(config: ProvisioningConfig, topic: str) -> Desired:
    """A pull subscription (no push_config, no retry policy: a message given back is at
    once pullable again) on the dead-letter topic ``topic``."""
    path = dead_letter_subscription_path(config.project, topic)
    body: dict[str, Any] = {"name": path, "topic": topic,
                            "ack_deadline_seconds": DEAD_LETTER_ACK_DEADLINE}
    fields = {"topic": topic, "ack_deadline_seconds": str(DEAD_LETTER_ACK_DEADLINE)}
    if not config.emulator:
        body["expiration_policy"] = {}
        fields["expiration_policy.ttl"] = "never"
    return Desired(Kind.SUBSCRIPTION, path, body, fields)


def desired_topics(config: ProvisioningConfig, routes: Iterable[TaskRoute]) -> list[Desired]:
    """Each route's topic, then any dead-letter topics (which must exist before use)."""
    found: dict[str, Desired] = {}
    for route in routes:
        path = config.topic_path(route.topic_name)
        found.setdefault(path, Desired(Kind.TOPIC, path, {"name": path}, {}, route))
    for route in routes:
        if route.dead_letter_topic:
            path = dead_letter_topic_path(config, route)
            found.setdefault(path, Desired(Kind.TOPIC, path, {"name": path}, {}))
    return list(found.values())


def desired_subscription(config: ProvisioningConfig, route: TaskRoute) -> Desired:
    path = config.subscription_path(route.subscription_name)
    topic = config.topic_path(route.topic_name)
    push: dict[str, Any] = {"push_endpoint": config.push_endpoint}
    fields = {"topic": topic, "push_config.push_endpoint": config.push_endpoint}
    if config.service_account:
        push["oidc_token"] = {"service_account_email": config.service_account,
                              "audience": config.audience}
        fields["push_config.oidc_token.service_account_email"] = config.service_account
        fields["push_config.oidc_token.audience"] = config.audience
    low, high = timedelta(seconds=route.min_retry_delay), timedelta(seconds=route.max_retry_delay)
    body: dict[str, Any] = {
        "name": path, "topic": topic, "push_config": push,
        "ack_deadline_seconds": route.ack_deadline,
        "retry_policy": {"minimum_backoff": low, "maximum_backoff": high},
    }
    fields["ack_deadline_seconds"] = str(route.ack_deadline)
    fields["retry_policy.minimum_backoff"] = seconds(low)
    fields["retry_policy.maximum_backoff"] = seconds(high)
    if route.dead_letter_topic:
        dead_letter = dead_letter_topic_path(config, route)
        body["dead_letter_policy"] = {"dead_letter_topic": dead_letter,
                                      "max_delivery_attempts": route.max_delivery_attempts}
        fields["dead_letter_policy.dead_letter_topic"] = dead_letter
        fields["dead_letter_policy.max_delivery_attempts"] = str(route.max_delivery_attempts)
    if not config.emulator:
        # Unset, Pub/Sub deletes a subscription after 31 days without traffic, and a rarely
        # used task would silently stop being delivered. Set but empty means "never".
        # (The emulator cannot update this field, and nothing expires there anyway.)
        body["expiration_policy"] = {}
        fields["expiration_policy.ttl"] = "never"
    return Desired(Kind.SUBSCRIPTION, path, body, fields, route)


def desired_subscriptions(config: ProvisioningConfig,
                          routes: Iterable[TaskRoute]) -> list[Desired]:
    """Each route's push subscription, then a pull subscription per dead-letter topic."""
    routes = list(routes)
    return ([desired_subscription(config, route) for route in routes]
            + [desired_dead_letter_subscription(config, topic)
               for topic in dead_letter_topics(config, routes)])


def subscription_fields(sub: Any, emulator: bool) -> dict[str, str]:
    """The fields of an existing subscription that desired_subscription() manages."""
    fields = {"topic": sub.topic}
    push = sub.push_config
    if push.push_endpoint:
        fields["push_config.push_endpoint"] = push.push_endpoint
    if "oidc_token" in push:
        fields["push_config.oidc_token.service_account_email"] = (
            push.oidc_token.service_account_email)
        fields["push_config.oidc_token.audience"] = push.oidc_token.audience
    fields["ack_deadline_seconds"] = str(sub.ack_deadline_seconds)
    if "retry_policy" in sub:
        fields["retry_policy.minimum_backoff"] = seconds(sub.retry_policy.minimum_backoff)
        fields["retry_policy.maximum_backoff"] = seconds(sub.retry_policy.maximum_backoff)
    if "dead_letter_policy" in sub and sub.dead_letter_policy.dead_letter_topic:
        policy = sub.dead_letter_policy
        fields["dead_letter_policy.dead_letter_topic"] = policy.dead_letter_topic
        fields["dead_letter_policy.max_delivery_attempts"] = str(policy.max_delivery_attempts)
    if not emulator:
        if "expiration_policy" not in sub:
            fields["expiration_policy.ttl"] = "31 days (the default)"
        elif sub.expiration_policy.ttl:
            fields["expiration_policy.ttl"] = seconds(sub.expiration_policy.ttl)
        else:
            fields["expiration_policy.ttl"] = "never"
    return {key: value for key, value in fields.items() if value != ""}


class TopicHandler:
    kind = Kind.TOPIC
    immutable: frozenset[str] = frozenset()

    def __init__(self, publisher: Any, config: ProvisioningConfig) -> None:
        self.publisher, self.config = publisher, config

    def list_all(self) -> dict[str, Any]:
        project = f"projects/{self.config.project}"
        return {topic.name: topic for topic in self.publisher.list_topics(
            request={"project": project}, **self.config.call_options())}

    def get(self, name: str) -> Any:
        return self.publisher.get_topic(request={"topic": name}, **self.config.call_options())

    def fields(self, actual: Any) -> dict[str, str]:
        return {}  # a topic has nothing we manage besides existing

    def create(self, desired: Desired) -> None:
        self.publisher.create_topic(request=desired.body, **self.config.call_options())

    def update(self, desired: Desired, paths: list[str]) -> None:
        raise AssertionError("Topics have no managed fields to update.")

    def delete(self, name: str) -> None:
        self.publisher.delete_topic(request={"topic": name}, **self.config.call_options())


class SubscriptionHandler:
    kind = Kind.SUBSCRIPTION
    immutable = frozenset({"topic"})  # Pub/Sub cannot move a subscription to another topic

    def __init__(self, subscriber: Any, config: ProvisioningConfig) -> None:
        self.subscriber, self.config = subscriber, config

    def list_all(self) -> dict[str, Any]:
        project = f"projects/{self.config.project}"
        return {sub.name: sub for sub in self.subscriber.list_subscriptions(
            request={"project": project}, **self.config.call_options())}

    def get(self, name: str) -> Any:
        return self.subscriber.get_subscription(request={"subscription": name},
                                                **self.config.call_options())

    def fields(self, actual: Any) -> dict[str, str]:
        return subscription_fields(actual, self.config.emulator)

    def create(self, desired: Desired) -> None:
        self.subscriber.create_subscription(request=desired.body, **self.config.call_options())

    def update(self, desired: Desired, paths: list[str]) -> None:
        # A path in the mask whose field is absent from the body clears it on the server.
        body = {"name": desired.name, **{k: desired.body[k] for k in paths if k in desired.body}}
        self.subscriber.update_subscription(
            request={"subscription": body, "update_mask": {"paths": paths}},
            **self.config.call_options())

    def delete(self, name: str) -> None:
        self.subscriber.delete_subscription(request={"subscription": name},
                                            **self.config.call_options())


def conflict_note(desired: Desired, changes: list) -> str:
    topic = next(change for change in changes if change.field == "topic")
    return (
        f"it is attached to {topic.current}, not {topic.desired}, and a subscription cannot "
        "change topic. Delete it by hand (undelivered messages are lost) and run "
        "tasks_provision again"
    )


def compare(desired: Desired, actual: Any, handler: Any) -> Action:
    """The action that turns ``actual`` (None when missing) into ``desired``."""
    if actual is None:
        return Action(desired.kind, desired.name, Verb.CREATE, desired=desired)
    changes = diff(desired.fields, handler.fields(actual))
    if any(change.field in handler.immutable for change in changes):
        return Action(desired.kind, desired.name, Verb.CONFLICT, changes, desired,
                      note=conflict_note(desired, changes))
    verb = Verb.UPDATE if changes else Verb.UNCHANGED
    return Action(desired.kind, desired.name, verb, changes, desired)


def plan_pubsub(config: ProvisioningConfig, routes: Iterable[TaskRoute], publisher: Any,
                subscriber: Any) -> list[Action]:
    routes = list(routes)
    topics, subs = TopicHandler(publisher, config), SubscriptionHandler(subscriber, config)
    actual_topics, actual_subs = topics.list_all(), subs.list_all()
    actions = []
    wanted_topics = desired_topics(config, routes)
    for desired in wanted_topics:
        actions.append(compare(desired, actual_topics.get(desired.name), topics))
    wanted_subs = desired_subscriptions(config, routes)
    for desired in wanted_subs:
        actions.append(compare(desired, actual_subs.get(desired.name), subs))
    # Orphans: named with this environment's prefix, declared by no route. Reported only.
    prefix = topic_name_for("")
    declared = {d.name for d in wanted_topics}
    for name in sorted(set(actual_topics) - declared):
        if name.startswith(config.topic_path(prefix)):
            actions.append(Action(Kind.TOPIC, name, Verb.ORPHAN, note=TOPIC_ORPHAN_NOTE))
    declared = {d.name for d in wanted_subs}
    for name in sorted(set(actual_subs) - declared):
        if name.startswith(config.subscription_path(prefix)):
            actions.append(Action(Kind.SUBSCRIPTION, name, Verb.ORPHAN,
                                  note=SUBSCRIPTION_ORPHAN_NOTE))
    return actions
