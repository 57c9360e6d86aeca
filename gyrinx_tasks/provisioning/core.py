"""Build the plan from the registry and GCP, and apply it safely and idempotently."""

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as api_exceptions

from .. import clients
from ..registry import get_routes
from ..routes import TaskRoute
from .config import DOCS, ProvisioningConfig, ProvisioningError
from .plan import Action, Desired, Kind, Plan, Verb, diff
from .pubsub import (
    SubscriptionHandler,
    TopicHandler,
    conflict_note,
    desired_subscriptions,
    desired_topics,
    plan_pubsub,
)
from .scheduler import JobHandler, desired_jobs, plan_scheduler

logger = logging.getLogger("gyrinx_tasks")

PARTS = ("pubsub", "scheduler")
# Re-read and retry an update this often when another instance changes the resource under us.
ATTEMPTS = 3
LOCAL_SCHEDULER_NOTE = (
    "Scheduler jobs are not created against the Pub/Sub emulator: run `manage.py "
    "tasks_scheduler` to fire scheduled routes locally ({count} scheduled)."
)


@dataclass
class Clients:
    """The Google clients a plan is read and applied with; missing ones are built on use,
    and only those built here are closed by ``close()``."""

    publisher: Any = None
    subscriber: Any = None
    scheduler: Any = None
    owned: set[str] = field(default_factory=set)

    def _get(self, name: str, factory: Callable[[], Any]) -> Any:
        if getattr(self, name) is None:
            try:
                setattr(self, name, factory())
            except Exception as exc:  # in practice: no Google credentials found
                raise ProvisioningError(
                    f"Could not create the {name} client: {exc} Outside the Pub/Sub emulator "
                    "provisioning needs Google credentials: on Cloud Run the service's "
                    "service account, elsewhere `gcloud auth application-default login`."
                ) from exc
            self.owned.add(name)
        return getattr(self, name)

    def get_publisher(self) -> Any:
        return self._get("publisher", clients.publisher_client)

    def get_subscriber(self) -> Any:
        return self._get("subscriber", clients.subscriber_client)

    def get_scheduler(self) -> Any:
        return self._get("scheduler", clients.scheduler_client)

    def close(self) -> None:
        """Release the gRPC channels of the clients built here (a page view must not leak)."""
        for name in sorted(self.owned):
            getattr(self, name).transport.close()
            setattr(self, name, None)
        self.owned.clear()

    def handler(self, kind: Kind, config: ProvisioningConfig) -> Any:
        if kind == Kind.TOPIC:
            return TopicHandler(self.get_publisher(), config)
        if kind == Kind.SUBSCRIPTION:
            return SubscriptionHandler(self.get_subscriber(), config)
        return JobHandler(self.get_scheduler(), config)


def build_plan(publisher: Any = None, subscriber: Any = None, scheduler: Any = None, *,
               config: ProvisioningConfig | None = None,
               routes: Iterable[TaskRoute] | None = None,
               parts: Collection[str] = PARTS) -> Plan:
    """Compare the registry with GCP and say, per resource, what applying would do.

    Clients not given are built from ``gyrinx_tasks.clients``. ``parts`` limits the plan to
    "pubsub" (topics and subscriptions) or "scheduler" (Cloud Scheduler jobs).
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"Unknown plan parts {sorted(unknown)}; use 'pubsub' and 'scheduler'.")
    config = config or ProvisioningConfig.from_settings()
    routes = list(get_routes() if routes is None else routes)
    held = Clients(publisher, subscriber, scheduler)
    plan = Plan(config, clients=held)
    try:
        if "pubsub" in parts:
            plan.actions += plan_pubsub(config, routes, held.get_publisher(),
                                        held.get_subscriber())
        if "scheduler" in parts and config.uses_cloud_scheduler:
            plan.actions += plan_scheduler(config, routes, held.get_scheduler())
    except api_exceptions.GoogleAPIError as exc:  # RetryError (a timeout) is not a CallError
        held.close()
        message = f"Reading the current state from GCP failed: {_explain(exc)}"
        raise ProvisioningError(message) from exc
    except BaseException:
        held.close()
        raise
    if "scheduler" in parts and not config.uses_cloud_scheduler:
        count = sum(1 for route in routes if route.is_scheduled)
        plan.notes.append(LOCAL_SCHEDULER_NOTE.format(count=count))
    return plan


def desired_state(config: ProvisioningConfig, routes: Iterable[TaskRoute] | None = None,
                  parts: Collection[str] = PARTS) -> list[Desired]:
    """Every resource the registry wants, as build_plan() compares them: topics (dead-letter
    topics included), subscriptions, then scheduler jobs (none against the emulator). Reads
    the registry and ``config`` only; no GCP call is made."""
    routes = list(get_routes() if routes is None else routes)
    wanted: list[Desired] = []
    if "pubsub" in parts:
        wanted += desired_topics(config, routes) + desired_subscriptions(config, routes)
    if "scheduler" in parts and config.uses_cloud_scheduler:
        wanted += desired_jobs(config, routes)
    return wanted


def apply_plan(plan: Plan, progress: Callable[[Action], Any] | None = None) -> Plan:
    """Make every create, update and delete in ``plan``; raise ProvisioningError at the end
    if any failed (the others are still made). ``progress`` is called after each one."""
    held = plan.clients or Clients()
    order = {Kind.TOPIC: 0, Kind.SUBSCRIPTION: 1, Kind.SCHEDULER_JOB: 2}
    todo = [a for a in plan.actions if a.verb in (Verb.CREATE, Verb.UPDATE, Verb.DELETE)]
    # Topics before the subscriptions and jobs that point at them; deletions last.
    todo.sort(key=lambda a: (a.verb == Verb.DELETE, order[a.kind]))
    failed = []
    for action in todo:
        try:
            action.result = _apply_one(action, held.handler(action.kind, plan.config))
        except (api_exceptions.GoogleAPIError, ProvisioningError) as exc:
            action.error = _explain(exc)
            failed.append(action)
            logger.error("Provisioning %s %s failed: %s", action.kind, action.name, action.error)
        if progress is not None:
            progress(action)
    if failed:
        details = " ".join(f"{a.verb} {a.kind} {a.short_name}: {a.error}" for a in failed)
        raise ProvisioningError(f"{len(failed)} of {len(todo)} changes failed. {details}")
    return plan


def provision(**kwargs: Any) -> Plan:
    """Build the plan and apply it, then close the clients built for it."""
    with build_plan(**kwargs) as plan:
        return apply_plan(plan)


def _apply_one(action: Action, handler: Any) -> str:
    if action.verb == Verb.DELETE:
        try:
            handler.delete(action.name)
        except api_exceptions.NotFound:
            return "already gone"
        return "deleted"
    desired = action.desired
    assert desired is not None
    if action.verb == Verb.CREATE:
        try:
            handler.create(desired)
        except api_exceptions.AlreadyExists:
            # Another instance created it first: make sure it matches, as for an update.
            return "already existed; " + _converge(desired, handler)
        return "created"
    return _converge(desired, handler)


def _converge(desired: Desired, handler: Any) -> str:
    """Re-read the resource and update the fields that differ, retrying on a race."""
    for _ in range(ATTEMPTS):
        try:
            actual = handler.get(desired.name)
        except api_exceptions.NotFound:  # deleted since the plan was read
            try:
                handler.create(desired)
            except api_exceptions.AlreadyExists:
                continue
            return "created"
        changes = diff(desired.fields, handler.fields(actual))
        if any(change.field in handler.immutable for change in changes):
            raise ProvisioningError(conflict_note(desired, changes) + ".")
        if not changes:
            return "up to date"
        paths = sorted({change.field.split(".")[0] for change in changes})
        try:
            handler.update(desired, paths)
        except (api_exceptions.NotFound, api_exceptions.Conflict):
            continue  # changed under us (Aborted is a Conflict): read it again
        return "updated " + "; ".join(str(change) for change in changes)
    raise ProvisioningError(
        f"{desired.name} kept changing while it was being updated (another instance is "
        "provisioning at the same time). Run tasks_provision again."
    )


def _explain(exc: Exception) -> str:
    if isinstance(exc, api_exceptions.PermissionDenied):
        return (f"{exc.message} Grant the identity running tasks_provision the roles listed "
                f"in {DOCS}.")
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, api_exceptions.RetryError):
        last = exc.cause
        detail = f" The last error was {type(last).__name__}: {last}" if last else ""
        return f"No answer in time ({exc.message}).{detail}"
    return str(exc)
