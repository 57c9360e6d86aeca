"""The registry's desired resources as Terraform JSON (``.tf.json``), for the hashicorp/google
provider: ``google_pubsub_topic``, ``google_pubsub_subscription``, ``google_cloud_scheduler_job``.

For teams whose runtime has no admin rights on Pub/Sub: ``manage.py tasks_provision --format
terraform > gyrinx_tasks.tf.json`` and let Terraform make them. The resources are translated
from the same desired state the plan compares (``desired_state()``), so names, endpoint, OIDC
identity, retries, dead letters and schedules are the plan's. No GCP call is made.
Argument names follow the provider's resource documentation (cited in docs/provisioning.md).
"""

import base64
import hashlib
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..conf import tasks_settings
from ..routes import TaskRoute
from .config import ProvisioningConfig
from .core import desired_state
from .plan import Desired, Kind

RESOURCE_TYPES = {
    Kind.TOPIC: "google_pubsub_topic",
    Kind.SUBSCRIPTION: "google_pubsub_subscription",
    Kind.SCHEDULER_JOB: "google_cloud_scheduler_job",
}
PATH_RE = re.compile(r"projects/(?P<project>[^/]+)/(?:locations/(?P<location>[^/]+)/)?"
                     r"(?:topics|subscriptions|jobs)/(?P<id>[^/]+)")


def literal(value: str) -> str:
    """A string Terraform reads as itself: JSON strings are templates, so escape ``${``
    and ``%{``."""
    return value.replace("${", "$${").replace("%{", "%%{")


def duration(value: timedelta) -> str:
    """A protobuf Duration as the provider writes one: seconds with an "s" ("10s", "0.5s")."""
    total = value.total_seconds()
    return f"{int(total)}s" if total == int(total) else f"{total:.9f}".rstrip("0") + "s"


def labels(names: Iterable[str]) -> dict[str, str]:
    """A Terraform block label for each resource path: its id, with every character an
    identifier may not hold made "_". Ids that collide after that (``a.b_c``, ``a_b.c``)
    each get a short hash of their path, so labels never depend on the registry's order."""
    names = list(names)
    plain = {}
    for name in names:
        label = re.sub(r"[^A-Za-z0-9_-]", "_", name.rsplit("/", 1)[-1])
        plain[name] = label if re.match(r"[A-Za-z_]", label) else f"_{label}"
    counts: dict[str, int] = {}
    for label in plain.values():
        counts[label] = counts.get(label, 0) + 1
    return {name: label if counts[label] == 1
            else f"{label}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            for name, label in plain.items()}


def _where(path: str) -> dict[str, str]:
    match = PATH_RE.fullmatch(path)
    if match is None:  # desired_state() only builds paths of this shape
        raise ValueError(f"{path!r} is not a Pub/Sub or Cloud Scheduler resource path.")
    return match.groupdict()


class _Translator:
    def __init__(self, wanted: list[Desired]) -> None:
        self.labels = {kind: labels(d.name for d in wanted if d.kind == kind) for kind in Kind}

    def topic_ref(self, path: str) -> str:
        """``${google_pubsub_topic.X.id}`` (its full path), so Terraform makes the topic
        first; a topic not declared here is named literally."""
        label = self.labels[Kind.TOPIC].get(path)
        return f"${{google_pubsub_topic.{label}.id}}" if label else literal(path)

    def resource(self, desired: Desired) -> dict[str, Any]:
        where, body = _where(desired.name), desired.body
        block: dict[str, Any] = {"project": literal(where["project"]),
                                 "name": literal(where["id"])}
        if desired.kind == Kind.SUBSCRIPTION:
            block |= self.subscription(body)
        elif desired.kind == Kind.SCHEDULER_JOB:
            block |= {"region": literal(where["location"] or "")} | self.job(body)
        return block

    def subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        block: dict[str, Any] = {"topic": self.topic_ref(body["topic"])}
        if "push_config" in body:
            push = body["push_config"]
            config: dict[str, Any] = {"push_endpoint": literal(push["push_endpoint"])}
            if "oidc_token" in push:
                token = push["oidc_token"]
                config["oidc_token"] = {
                    "service_account_email": literal(token["service_account_email"]),
                    "audience": literal(token["audience"]),
                }
            block["push_config"] = config
        if "ack_deadline_seconds" in body:
            block["ack_deadline_seconds"] = body["ack_deadline_seconds"]
        if "retry_policy" in body:
            retry = body["retry_policy"]
            block["retry_policy"] = {"minimum_backoff": duration(retry["minimum_backoff"]),
                                     "maximum_backoff": duration(retry["maximum_backoff"])}
        if "dead_letter_policy" in body:
            policy = body["dead_letter_policy"]
            block["dead_letter_policy"] = {
                "dead_letter_topic": self.topic_ref(policy["dead_letter_topic"]),
                "max_delivery_attempts": policy["max_delivery_attempts"],
            }
        if "expiration_policy" in body:
            # An empty ttl is the provider's "never expires" (an absent block means 31 days).
            ttl = body["expiration_policy"].get("ttl")
            block["expiration_policy"] = {"ttl": duration(ttl) if ttl else ""}
        return block

    def job(self, body: dict[str, Any]) -> dict[str, Any]:
        target, retry = body["pubsub_target"], body["retry_config"]
        # `paused` is left out: the provider then leaves a job that staff paused paused.
        return {
            "description": literal(body["description"]),
            "schedule": literal(body["schedule"]),
            "time_zone": literal(body["time_zone"]),
            "pubsub_target": {
                "topic_name": self.topic_ref(target["topic_name"]),
                "data": base64.b64encode(target["data"]).decode(),  # the provider wants base64
                "attributes": {key: literal(value)
                               for key, value in target["attributes"].items()},
            },
            "retry_config": {
                "retry_count": retry["retry_count"],
                "min_backoff_duration": duration(retry["min_backoff_duration"]),
                "max_backoff_duration": duration(retry["max_backoff_duration"]),
                "max_doublings": retry["max_doublings"],
                "max_retry_duration": duration(retry["max_retry_duration"]),
            },
        }


def terraform_config(config: ProvisioningConfig | None = None,
                     routes: Iterable[TaskRoute] | None = None) -> dict[str, Any]:
    """The desired topics, subscriptions and scheduler jobs as a Terraform JSON document.

    ``config`` defaults to the production settings (``ProvisioningConfig.from_settings(
    emulator=False)``, which names any missing setting), whatever PUBSUB_EMULATOR_HOST says:
    Terraform makes resources in Google Cloud, never on the emulator.
    """
    config = config or ProvisioningConfig.from_settings(emulator=False)
    wanted = desired_state(config, routes)
    translator = _Translator(wanted)
    resources: dict[str, dict[str, Any]] = {}
    for desired in wanted:
        label = translator.labels[desired.kind][desired.name]
        block = resources.setdefault(RESOURCE_TYPES[desired.kind], {})
        block[label] = translator.resource(desired)
    note = (f"Generated by `manage.py tasks_provision --format terraform` from TASKS_REGISTRY "
            f"for environment {tasks_settings.TASKS_ENVIRONMENT!r} in project "
            f"{config.project!r}. Regenerate it instead of editing it.")
    return {"//": note, "resource": resources}
