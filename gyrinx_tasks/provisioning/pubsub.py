"""Pub/Sub topics and push subscriptions: desired state, actual state, and the calls."""

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
    return [desired_subscription(config, route) for route in routes]


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
