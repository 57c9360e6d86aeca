"""A run's life as spans of time: waiting in the queue, running, and Pub/Sub's backoff
between attempts, read from its timeline (issue 19 item 4).

Run duration on the overview is first start to finish, so with retries it holds the backoff
too; the run page shows the three apart, so that a slow p95 that is mostly backoff says so.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .models import State

WAITING, RUNNING, BACKOFF = "waiting", "running", "backoff"
# The note of start(): "attempt 3 on worker-1". Other RUNNING → RUNNING entries are notes.
ATTEMPT_NOTE = re.compile(r"^attempt (\d+) on ")
LABELS = {WAITING: _("Waiting in queue"), RUNNING: _("Running"),
          BACKOFF: _("Pub/Sub backoff")}


@dataclass
class Span:
    kind: str
    start: datetime
    end: datetime
    open: bool = False  # still going: ends now
    attempt: int | None = None

    @property
    def length(self) -> timedelta:
        return max(self.end - self.start, timedelta(0))

    @property
    def label(self) -> Any:
        return LABELS[self.kind]


def _at(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def run_spans(run: Any, now: datetime | None = None) -> list[Span]:
    """The run's spans in order. An attempt that recorded no end (its worker died, or its
    ack deadline passed) runs until the next one starts; the time after a failed attempt
    until the next start is Pub/Sub's backoff (its retry policy, plus any wait for a free
    instance)."""
    now = now or timezone.now()
    found: list[Span] = []
    ready_since = _at(run.enqueued_at) or _at(run.created_at)
    previous_end: datetime | None = None
    current: Span | None = None
    attempt = 0
    for entry in run.timeline or []:
        if not isinstance(entry, dict):
            continue
        at = _at(entry.get("at"))
        if at is None:
            continue
        if entry.get("to") == State.RUNNING and ATTEMPT_NOTE.match(entry.get("note") or ""):
            attempt += 1
            if current is not None and current.open:
                current.end, current.open = at, False  # cut off: the next attempt began
            elif previous_end is not None:
                found.append(Span(BACKOFF, previous_end, at, attempt=attempt))
            elif ready_since is not None:
                found.append(Span(WAITING, ready_since, at))
            current = Span(RUNNING, at, now, open=True, attempt=attempt)
            found.append(current)
        elif (entry.get("from") == State.RUNNING and entry.get("to") != State.RUNNING
              and current is not None and current.open):
            current.end, current.open = at, False
            previous_end = at
            current = None
    if not found and run.status == State.READY and ready_since is not None:
        found.append(Span(WAITING, ready_since, now, open=True))
    elif (current is None and previous_end is not None and run.status == State.FAILED
          and not run.gave_up and run.message_id):
        found.append(Span(BACKOFF, previous_end, now, open=True, attempt=attempt + 1))
    return found


def totals(spans: list[Span]) -> dict[str, timedelta]:
    summed = {WAITING: timedelta(0), RUNNING: timedelta(0), BACKOFF: timedelta(0)}
    for span in spans:
        summed[span.kind] += span.length
    return summed
