"""Cloud Scheduler jobs for scheduled routes: desired state, actual state, and the calls."""

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ..routes import TaskRoute, scheduler_job_prefix
from .config import ProvisioningConfig
from .plan import Action, Desired, Kind, Verb, seconds
from .pubsub import compare

# Cloud Scheduler's own default; the backoff bounds come from the route's retry delays.
MAX_DOUBLINGS = 5
ORPHAN_NOTE = "no route declares it any more"


def _canonical_json(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return repr(data)


def desired_job(config: ProvisioningConfig, route: TaskRoute) -> Desired:
    from ..models import Trigger
    from ..scheduling.firing import scheduled_message

    path = config.job_path(route.scheduler_job_name or "")
    topic = config.topic_path(route.topic_name)
    data = json.dumps(scheduled_message(route), separators=(",", ":")).encode()
    attributes = {"trigger": str(Trigger.SCHEDULE)}
    low, high = timedelta(seconds=route.min_retry_delay), timedelta(seconds=route.max_retry_delay)
    retry = {
        "retry_count": route.schedule_retry_count,
        "min_backoff_duration": low,
        "max_backoff_duration": high,
        "max_doublings": MAX_DOUBLINGS,
        "max_retry_duration": timedelta(0),  # zero: limited by retry_count alone
    }
    description = f"Fires gyrinx_tasks route {route.path}; managed by manage.py tasks_provision."
    body = {
        "name": path, "description": description,
        "schedule": route.schedule, "time_zone": route.schedule_timezone,
        "pubsub_target": {"topic_name": topic, "data": data, "attributes": attributes},
        "retry_config": retry,
    }
    fields = {
        "description": description,
        "schedule": str(route.schedule),
        "time_zone": route.schedule_timezone,
        "pubsub_target.topic_name": topic,
        "pubsub_target.data": _canonical_json(data),
        "pubsub_target.attributes": json.dumps(attributes, sort_keys=True),
        "retry_config.retry_count": str(route.schedule_retry_count),
        "retry_config.min_backoff_duration": seconds(low),
        "retry_config.max_backoff_duration": seconds(high),
        "retry_config.max_doublings": str(MAX_DOUBLINGS),
        "retry_config.max_retry_duration": seconds(timedelta(0)),
    }
    return Desired(Kind.SCHEDULER_JOB, path, body, fields, route)


def desired_jobs(config: ProvisioningConfig, routes: Iterable[TaskRoute]) -> list[Desired]:
    """One job per scheduled route."""
    return [desired_job(config, route) for route in routes if route.is_scheduled]


def job_fields(job: Any) -> dict[str, str]:
    """The fields of an existing job that desired_job() manages."""
    fields = {"description": job.description, "schedule": job.schedule,
              "time_zone": job.time_zone}
    if "pubsub_target" in job:
        target = job.pubsub_target
        fields["pubsub_target.topic_name"] = target.topic_name
        fields["pubsub_target.data"] = _canonical_json(target.data)
        fields["pubsub_target.attributes"] = json.dumps(dict(target.attributes), sort_keys=True)
    if "retry_config" in job:
        retry = job.retry_config
        fields["retry_config.retry_count"] = str(retry.retry_count)
        for name in ("min_backoff_duration", "max_backoff_duration", "max_retry_duration"):
            fields[f"retry_config.{name}"] = seconds(getattr(retry, name))
        fields["retry_config.max_doublings"] = str(retry.max_doublings)
    return {key: value for key, value in fields.items() if value != ""}


def job_state(job: Any) -> str:
    return getattr(job.state, "name", str(job.state))


class JobHandler:
    kind = Kind.SCHEDULER_JOB
    immutable: frozenset[str] = frozenset()

    def __init__(self, scheduler: Any, config: ProvisioningConfig) -> None:
        self.scheduler, self.config = scheduler, config

    def list_all(self) -> dict[str, Any]:
        return {job.name: job for job in self.scheduler.list_jobs(
            request={"parent": self.config.scheduler_parent}, **self.config.call_options())}

    def get(self, name: str) -> Any:
        return self.scheduler.get_job(request={"name": name}, **self.config.call_options())

    def fields(self, actual: Any) -> dict[str, str]:
        return job_fields(actual)

    def create(self, desired: Desired) -> None:
        self.scheduler.create_job(
            request={"parent": self.config.scheduler_parent, "job": desired.body},
            **self.config.call_options())

    def update(self, desired: Desired, paths: list[str]) -> None:
        # Only the masked fields are sent, so the job's state (a staff pause) is left alone.
        body = {"name": desired.name, **{k: desired.body[k] for k in paths if k in desired.body}}
        self.scheduler.update_job(request={"job": body, "update_mask": {"paths": paths}},
                                  **self.config.call_options())

    def delete(self, name: str) -> None:
        self.scheduler.delete_job(request={"name": name}, **self.config.call_options())


def plan_scheduler(config: ProvisioningConfig, routes: Iterable[TaskRoute],
                   scheduler: Any) -> list[Action]:
    handler = JobHandler(scheduler, config)
    actual = handler.list_all()
    actions = []
    declared = set()
    for desired in desired_jobs(config, routes):
        declared.add(desired.name)
        job = actual.get(desired.name)
        action = compare(desired, job, handler)
        action.state = job_state(job) if job is not None else ""
        actions.append(action)
    # Only this environment's jobs, in this location: never another environment's, never
    # jobs whose names do not carry our prefix (made by hand or by other tools).
    ours = config.job_path(scheduler_job_prefix())
    for name in sorted(set(actual) - declared):
        if name.startswith(ours):
            actions.append(Action(Kind.SCHEDULER_JOB, name, Verb.DELETE, note=ORPHAN_NOTE,
                                  state=job_state(actual[name])))
    return actions
