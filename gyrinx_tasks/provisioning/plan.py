"""The plan: one action per resource, saying what provisioning will do to it and why."""

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..routes import TaskRoute
from .config import ProvisioningConfig

UNSET = "(unset)"


class Kind(StrEnum):
    TOPIC = "topic"
    SUBSCRIPTION = "subscription"
    SCHEDULER_JOB = "scheduler job"


class Verb(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"
    ORPHAN = "orphan"  # ours by name, declared by no route, and deliberately kept
    CONFLICT = "conflict"  # differs in a way provisioning must not fix by itself


KIND_TITLES = {
    Kind.TOPIC: "Pub/Sub topics",
    Kind.SUBSCRIPTION: "Pub/Sub subscriptions",
    Kind.SCHEDULER_JOB: "Cloud Scheduler jobs",
}


@dataclass(frozen=True)
class FieldChange:
    field: str
    current: str
    desired: str

    def __str__(self) -> str:
        return f"{self.field}: {self.current} -> {self.desired}"


@dataclass(frozen=True)
class Desired:
    """A resource as the registry wants it: the request body and its comparable fields."""

    kind: Kind
    name: str  # full resource path
    body: dict[str, Any]
    fields: dict[str, str]  # flattened "a.b" -> display value, compared with the actual
    route: TaskRoute | None = None


@dataclass
class Action:
    kind: Kind
    name: str  # full resource path, e.g. projects/p/topics/t
    verb: Verb
    changes: list[FieldChange] = field(default_factory=list)
    desired: Desired | None = None
    note: str = ""  # why, for orphans and conflicts
    state: str = ""  # a scheduler job's state (ENABLED, PAUSED, ...) when it exists
    result: str = ""  # what applying did, filled in by apply_plan()
    error: str = ""  # why applying failed, filled in by apply_plan()

    @property
    def short_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def route(self) -> TaskRoute | None:
        return self.desired.route if self.desired else None

    @property
    def update_mask(self) -> list[str]:
        return sorted({change.field.split(".")[0] for change in self.changes})

    def describe(self) -> str:
        """One line: verb, resource id, and the field changes or the note."""
        line = f"{self.verb.value:<10} {self.short_name}"
        if self.state and self.state != "ENABLED":
            line += f" [{self.state.lower()}]"
        detail = "; ".join(str(change) for change in self.changes) or self.note
        return f"{line} ({detail})" if detail else line


@dataclass
class Plan:
    config: ProvisioningConfig
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    clients: Any = None  # the Clients the plan was read with; apply_plan() reuses them

    def close(self) -> None:
        """Close the clients the plan built for itself; given ones are the caller's."""
        if self.clients is not None:
            self.clients.close()

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def counts(self) -> Counter[Verb]:
        return Counter(action.verb for action in self.actions)

    @property
    def has_changes(self) -> bool:
        return any(a.verb in (Verb.CREATE, Verb.UPDATE, Verb.DELETE) for a in self.actions)

    def by_kind(self) -> list[tuple[Kind, list[Action]]]:
        return [(kind, [a for a in self.actions if a.kind == kind]) for kind in Kind
                if any(a.kind == kind for a in self.actions)]

    def for_route(self, route: TaskRoute) -> list[Action]:
        return [a for a in self.actions if a.route is not None and a.route.path == route.path]

    def summary(self) -> str:
        counts = self.counts()
        text = (f"{counts[Verb.CREATE]} to create, {counts[Verb.UPDATE]} to update, "
                f"{counts[Verb.DELETE]} to delete, {counts[Verb.UNCHANGED]} unchanged")
        if counts[Verb.ORPHAN]:
            text += f", {counts[Verb.ORPHAN]} orphaned (kept)"
        if counts[Verb.CONFLICT]:
            text += f", {counts[Verb.CONFLICT]} needing attention"
        return text + "."

    def lines(self) -> list[str]:
        """The plan as readable lines, grouped by resource kind."""
        out = []
        for kind, actions in self.by_kind():
            title = KIND_TITLES[kind]
            if kind == Kind.SCHEDULER_JOB:
                title += f" in {self.config.location}"
            out.append(f"{title}:")
            out += [f"  {action.describe()}" for action in actions]
        return out + [f"Summary: {self.summary()}"]


def diff(desired: dict[str, str], actual: dict[str, str]) -> list[FieldChange]:
    """Field changes that turn ``actual`` into ``desired``, in a stable order."""
    keys = list(desired) + [key for key in actual if key not in desired]
    return [
        FieldChange(key, actual.get(key, UNSET), desired.get(key, UNSET))
        for key in keys
        if actual.get(key, UNSET) != desired.get(key, UNSET)
    ]


def seconds(value: Any) -> str:
    """A protobuf Duration (a timedelta in proto-plus) as "10s"."""
    total = value.total_seconds() if hasattr(value, "total_seconds") else float(value or 0)
    return f"{total:g}s"
