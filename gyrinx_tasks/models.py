"""Task runs (a django-fsm state machine) and the database kill switches."""

import copy
import uuid
from typing import Any, cast

from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from django.tasks import TaskResultStatus
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django_fsm import FSMField, transition

from .expressions import LastErrorClassName
from .messages import SCHEDULED_PREFIX


class State(models.TextChoices):
    READY = "READY", _("Ready")
    RUNNING = "RUNNING", _("Running")
    SUCCESSFUL = "SUCCESSFUL", _("Successful")
    FAILED = "FAILED", _("Failed")
    SKIPPED = "SKIPPED", _("Skipped")
    REJECTED = "REJECTED", _("Rejected")
    CANCELLED = "CANCELLED", _("Cancelled")


class Trigger(models.TextChoices):
    ENQUEUE = "enqueue", _("Enqueued")
    SCHEDULE = "schedule", _("Schedule")
    RETRY = "retry", _("Retry")
    RUN_NOW = "run_now", _("Run now")


# status_detail of a READY run whose publish timed out: Pub/Sub may still deliver it.
PUBLISH_UNCONFIRMED = ("Publishing was not confirmed in time: Pub/Sub may still deliver the "
                       "task, and the run starts if it does.")

# Runs that need a successful retry before they count as recovered (the run list's filter).
NEEDS_RECOVERY = (State.FAILED, State.REJECTED)

# A redelivery of a run in one of these states does not run it (FAILED runs that gave up too).
SETTLED = (State.SUCCESSFUL, State.SKIPPED, State.REJECTED, State.CANCELLED)

# What staff see: a run's state, with FAILED told apart. A failed attempt that Pub/Sub will
# redeliver is "failing, will retry" (WILL_RETRY); FAILED is final: it gave up, or nothing
# redelivers it (a publish refused, a run of another backend, an original settled by a
# retry). The dashboard's counts, the run list's status filter and badge, and the CSV export
# all read this, through shown_status_q() and SHOWN_STATUS below (TaskExecution.will_retry
# is the same test in Python).
class ShownStatus(models.TextChoices):
    READY = "READY", _("Ready")
    RUNNING = "RUNNING", _("Running")
    SUCCESSFUL = "SUCCESSFUL", _("Successful")
    WILL_RETRY = "WILL_RETRY", _("Failing, will retry")
    FAILED = "FAILED", _("Failed")
    SKIPPED = "SKIPPED", _("Skipped")
    REJECTED = "REJECTED", _("Rejected")
    CANCELLED = "CANCELLED", _("Cancelled")


# FAILED by an attempt that Pub/Sub redelivers: not given up, and delivered (it has a message
# id and an attempt; runs of other backends, and publishes that failed, never are).
WILL_RETRY = (Q(status=State.FAILED, gave_up=False, attempts__gt=0, message_id__isnull=False)
              & ~Q(message_id=""))
# FAILED for good: the rest of FAILED, written out so that no NOT over a NULL hides a row.
FAILED_FOR_GOOD = Q(status=State.FAILED) & (Q(gave_up=True) | Q(attempts=0)
                                            | Q(message_id__isnull=True) | Q(message_id=""))
# What the run list's recovery filters look at: failed for good, or rejected. A failed
# attempt Pub/Sub delivers again (WILL_RETRY) may still succeed on its own, so it is not
# "not yet recovered" until it gives up. The condition of the partial index that serves them
# (gyrinx_exec_unrecovered), written the same way so the planner matches it.
NEEDS_RECOVERY_Q = Q(status__in=NEEDS_RECOVERY) & (Q(status=State.REJECTED) | FAILED_FOR_GOOD)


def shown_status_q(*values: str) -> Q:
    """The runs staff see in any of ``values`` (ShownStatus); ValueError for another value."""
    found = Q()
    for value in map(ShownStatus, values):
        if value == ShownStatus.WILL_RETRY:
            found |= WILL_RETRY
        elif value == ShownStatus.FAILED:
            found |= FAILED_FOR_GOOD
        else:
            found |= Q(status=value)
    return found


# A run's ShownStatus in the database (the export's status column).
SHOWN_STATUS = models.Case(models.When(WILL_RETRY, then=models.Value(ShownStatus.WILL_RETRY)),
                           default=F("status"), output_field=models.CharField())


# Our states in the terms of Django's TaskResultStatus. SKIPPED, REJECTED and CANCELLED runs
# never started, which Django calls FAILED ("unable to start"); Django has no CANCELLED.
DJANGO_STATUS = {
    State.READY: TaskResultStatus.READY,
    State.RUNNING: TaskResultStatus.RUNNING,
    State.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    State.FAILED: TaskResultStatus.FAILED,
    State.SKIPPED: TaskResultStatus.FAILED,
    State.REJECTED: TaskResultStatus.FAILED,
    State.CANCELLED: TaskResultStatus.FAILED,
}

# The exception class a cancelled run's error entry names (exceptions.TaskCancelled), so
# Django's TaskResult.errors carries the reason.
CANCELLED_ERROR = "gyrinx_tasks.exceptions.TaskCancelled"
# The exception class of the error entry a RUNNING attempt staff gave up as lost gets (the
# same class a delivery records for an attempt that did not finish within its ack deadline).
ABANDONED_ERROR = "builtins.TimeoutError"


def new_result_id() -> str:
    return str(uuid.uuid4())


# A run redelivered for Pub/Sub's seven days gathers about a thousand attempts; its errors and
# timeline keep the first HISTORY_HEAD and the last HISTORY_TAIL entries and count the rest
# (errors_omitted, timeline_omitted), so a row and each rewrite of it stay small.
HISTORY_HEAD = 5
HISTORY_TAIL = 45


def capped(entries: list, entry: object, omitted: int) -> tuple[list, int]:
    """``entries`` with ``entry`` appended, cut to the head and the tail; the new count."""
    entries = [*entries, entry]
    extra = len(entries) - HISTORY_HEAD - HISTORY_TAIL
    if extra <= 0:
        return entries, omitted
    return entries[:HISTORY_HEAD] + entries[HISTORY_HEAD + extra:], omitted + extra


def _recoveries() -> list[models.Exists]:
    """One EXISTS per way a failed run counts as recovered by a successful retry: a retry
    of it, a retry of one of its retries, or another retry of the run it retries.

    Each reads only successful retries, through their own partial index
    (gyrinx_exec_recovered_by), so PostgreSQL can answer them per run with an index probe,
    or at once as an anti-join over that small index, but never by reading the whole table.
    """
    successful = TaskExecution.objects.filter(status=State.SUCCESSFUL, retry_of__isnull=False)
    return [
        models.Exists(successful.filter(retry_of=models.OuterRef("pk"))),
        models.Exists(successful.filter(retry_of__retry_of=models.OuterRef("pk"))),
        models.Exists(successful.filter(retry_of=models.OuterRef("retry_of"))
                      .exclude(pk=models.OuterRef("pk"))),
    ]


# What a delivery changes on an existing run. Writing only these keeps each attempt from
# rewriting the run's arguments (up to 10 MB) along with its state.
PROGRESS_FIELDS = ("status", "attempts", "worker_ids", "delivery_attempt", "started_at",
                   "last_attempted_at", "finished_at", "timeline", "timeline_omitted", "errors",
                   "errors_omitted", "status_detail", "return_value", "gave_up", "message_id",
                   "raw_message")
# What a delivery's write expects its row still to hold, as it was read. The timeline too:
# every change a delivery makes to a run appends to it, a superseded attempt's note included,
# so a note written meanwhile is never overwritten.
EXPECTED_FIELDS = ("status", "attempts", "timeline")


class TaskExecutionQuerySet(models.QuerySet):
    def recovered(self):
        """Failed or rejected runs that a successful retry made good (see _recoveries)."""
        first, *others = _recoveries()
        found: Any = first
        for exists in others:
            found = found | exists
        return self.filter(NEEDS_RECOVERY_Q).filter(found)

    def not_recovered(self):
        """Runs that failed for good, or were rejected, that no successful retry has made
        good yet. A failed attempt Pub/Sub delivers again (WILL_RETRY) is not one yet: it may
        still succeed on its own (NEEDS_RECOVERY_Q)."""
        runs = self.filter(NEEDS_RECOVERY_Q)
        # One NOT EXISTS each, side by side, so that each can become an anti-join.
        for exists in _recoveries():
            runs = runs.filter(~exists)
        return runs

    def shown_status(self, *values: str):
        """Runs in any of the ShownStatus ``values`` (FAILED: final; WILL_RETRY: failing)."""
        return self.filter(shown_status_q(*values))

    # --- Enqueue and retry transitions (queryset side) ---

    def with_live_retry(self):
        """Annotate ``has_live_retry``: whether a retry of the run may still run or has run."""
        return self.annotate(has_live_retry=Exists(
            TaskExecution.objects.filter(LIVE_RETRY, retry_of=OuterRef("pk"))))

    def without_live_retry(self):
        """Runs no retry stands for: none, or only retries that ended without running."""
        return self.exclude(Exists(
            TaskExecution.objects.filter(LIVE_RETRY, retry_of=OuterRef("pk"))))

    # --- Delivery transitions ---
    # A delivery reads its run, applies a transition in memory (start, succeed, fail,
    # give_up, skip, reject, note), then writes it here: one conditional UPDATE of the fields
    # the transition changed, on the state the delivery read. Zero rows changed means
    # another writer got there first; the caller decides again on what the row holds now.

    def write_transition(self, run: "TaskExecution") -> bool:
        """Write what a transition changed on ``run`` if its row still holds the state it was
        read in (status, attempts, timeline); whether it did."""
        names = run.changed_progress()
        if not names:
            return True
        expected = run.progress_as_read()
        # On PostgreSQL and SQLite, the same UPDATE as
        #   self.filter(pk=run.pk, status=..., attempts=..., timeline=...).update(...)
        # built once from the model's fields and run on a cursor: the ORM's compilation of it
        # costs more than the statement itself on the push path (docs/performance.md). Other
        # databases run exactly that queryset.
        from .statements import update_run

        changed = update_run(self.db, run, names,
                             expect={name: expected[name] for name in EXPECTED_FIELDS})
        if changed:
            run.remember_progress()
        return bool(changed)

    # --- Other backends' transitions ---
    # Runs of other backends (Django's ImmediateBackend, say) are recorded from Django's task
    # signals (gyrinx_tasks/signals.py). Each signal is one transition of this kind, on the
    # attempt number it reports: a signal for an attempt already recorded, or for a run that
    # has ended, changes nothing, so duplicate and late signals never overwrite a later state.

    def record_other_started(self, result_id: str, attempt: int, worker_id: str) -> bool:
        """READY, or FAILED at an earlier attempt → RUNNING at ``attempt``; whether it did."""
        def change(run: "TaskExecution") -> bool:
            if run.status not in (State.READY, State.FAILED) or run.attempts >= attempt:
                return False
            run.start(worker_id, delivery_attempt=attempt)
            return True

        return self._write_signal(result_id, change)

    def record_other_finished(self, result_id: str, attempt: int, worker_id: str,
                              return_value: object = None,
                              error: tuple[str, str] | None = None) -> bool:
        """RUNNING at ``attempt`` → SUCCESSFUL, or FAILED with ``error`` (class path,
        traceback); from READY or an earlier attempt too, when the attempt's task_started
        was lost or comes late (it then changes nothing). Whether it did."""
        def change(run: "TaskExecution") -> bool:
            if run.status == State.RUNNING and run.attempts == attempt:
                pass
            elif run.status in (State.READY, State.FAILED, State.RUNNING) \
                    and run.attempts < attempt:
                run.start(worker_id, delivery_attempt=attempt)
            else:
                return False
            if error is None:
                run.succeed(return_value)
            else:
                run.fail(*error)
            return True

        return self._write_signal(result_id, change)

    def _write_signal(self, result_id: str, change, tries: int = 3) -> bool:
        # Read, decide, write on the state read; a lost race reads and decides again.
        for _attempt in range(tries):
            run = cast("TaskExecution | None", self.filter(result_id=result_id).first())
            if run is None or not change(run.remember_progress()):
                return False
            if self.write_transition(run):
                return True
        return False

    def create_run(self, run: "TaskExecution") -> "TaskExecution":
        """Insert a run a delivery made (a scheduled firing, a rejection, another producer's
        message); an IntegrityError if its identity is taken."""
        run.save(using=self.db, force_insert=True)
        return run.remember_progress()


class TaskExecution(models.Model):
    """One run of a task: from enqueue (or a scheduled delivery) to its outcome."""

    result_id = models.CharField(
        _("result id"), max_length=64, unique=True, default=new_result_id,
        help_text=_("The id Django's TaskResult carries; get_result() looks runs up by it."),
    )
    task_id = models.CharField(
        _("message task id"), max_length=255, blank=True,
        help_text=_("The task_id in the Pub/Sub message; fixed per job for scheduled runs."),
    )
    task_name = models.CharField(_("task name"), max_length=255, blank=True)
    task_path = models.CharField(_("task path"), max_length=500, blank=True)
    backend = models.CharField(_("backend alias"), max_length=100, default="default")
    queue_name = models.CharField(
        _("queue name"), max_length=100, default="default", db_default="default",
        help_text=_("The task's queue_name when it was enqueued; get_result() restores it."),
    )
    status = FSMField(_("status"), default=State.READY, choices=State.choices)
    trigger = models.CharField(
        _("trigger"), max_length=16, choices=Trigger.choices, default=Trigger.ENQUEUE
    )
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )

    args = models.JSONField(_("args"), default=list, blank=True)
    kwargs = models.JSONField(_("kwargs"), default=dict, blank=True)
    return_value = models.JSONField(_("return value"), null=True, blank=True)
    errors = models.JSONField(
        _("errors"), default=list, blank=True,
        help_text=_("One entry per failed attempt: exception class path and traceback."),
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    worker_ids = models.JSONField(_("workers"), default=list, blank=True)
    status_detail = models.TextField(_("detail"), blank=True)
    raw_message = models.TextField(
        _("raw message"), blank=True, help_text=_("Kept for rejected deliveries.")
    )

    # Unique within a topic only (one topic per task), as Pub/Sub guarantees: the emulator
    # starts again at "1", and two topics may share ids. Only a scheduled run is identified
    # by its message id (constraint gyrinx_exec_scheduled_message); an enqueued run is
    # identified by its result id, and its message id is only a record. NULL, not "", while
    # no message is known: existing rows hold NULL (it was unique before).
    message_id = models.CharField(  # noqa: DJ001
        _("Pub/Sub message id"), max_length=100, null=True, blank=True, db_index=True
    )
    delivery_attempt = models.PositiveIntegerField(_("delivery attempt"), null=True, blank=True)

    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    enqueued_at = models.DateTimeField(_("enqueued"), null=True, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    last_attempted_at = models.DateTimeField(_("last attempted"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    timeline = models.JSONField(
        _("timeline"), default=list, blank=True,
        help_text=_("Every state change: when, from, to, and a note."),
    )
    timeline_omitted = models.PositiveIntegerField(
        _("timeline entries omitted"), default=0, db_default=0,
        help_text=_("Entries dropped between the first and the last ones kept."),
    )
    errors_omitted = models.PositiveIntegerField(
        _("errors omitted"), default=0, db_default=0,
        help_text=_("Errors dropped between the first and the last ones kept."),
    )
    gave_up = models.BooleanField(
        _("gave up"), default=False, db_default=False,
        help_text=_("FAILED for good: the route's max_attempts was reached; not retried."),
    )

    # The three columns above have database defaults too, so rows inserted by raw SQL (bulk
    # loads, COPY) that predate them need not name them.

    objects = TaskExecutionQuerySet.as_manager()
    # For templates: where the omitted entries sit in the timeline.
    HISTORY_HEAD = HISTORY_HEAD

    class Meta:
        verbose_name = _("task execution")
        verbose_name_plural = _("task executions")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="gyrinx_exec_created"),
            models.Index(fields=["status", "-created_at"], name="gyrinx_exec_status"),
            models.Index(fields=["task_name", "-created_at"], name="gyrinx_exec_task"),
            models.Index(fields=["status", "task_name", "-created_at"],
                         name="gyrinx_exec_status_task"),
            models.Index(fields=["task_id"], name="gyrinx_exec_task_id"),
            # The overview's time windows (gyrinx_tasks/stats.py): its queries read only this
            # index, never the wide rows, however many runs a window holds. Plain key columns
            # rather than INCLUDE, which SQLite lacks (models.W040).
            models.Index(fields=["created_at", "task_name", "status", "started_at",
                                 "finished_at"], name="gyrinx_exec_window"),
            # The run list's search by exception class (gyrinx_tasks/search.py), newest
            # first, so a page of matches is read in order without sorting them all.
            models.Index(LastErrorClassName(), F("created_at").desc(), F("id").desc(),
                         name="gyrinx_exec_error_class"),
            # The run list's "not yet recovered" filter: failed and rejected runs, newest
            # first, in one ordered scan (two states cannot share the status index's order).
            # retry_of is in it too, so counting the matches needs no visit to the rows. Runs
            # failing with a retry to come are left out (NEEDS_RECOVERY_Q).
            models.Index(fields=["-created_at", "-id", "retry_of"],
                         condition=NEEDS_RECOVERY_Q,
                         name="gyrinx_exec_unrecovered"),
            # The successful retries, by the run they retry: what "recovered" looks up.
            models.Index(fields=["retry_of"],
                         condition=models.Q(status=State.SUCCESSFUL, retry_of__isnull=False),
                         name="gyrinx_exec_recovered_by"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task_name", "message_id"], name="gyrinx_exec_scheduled_message",
                condition=models.Q(task_id__startswith=SCHEDULED_PREFIX)),
        ]
        # Admin actions beyond Django's four: each is checked on the server per request.
        permissions = [
            ("retry_taskexecution", _("Can retry task executions")),
            ("export_taskexecution", _("Can export task executions")),
            ("cancel_taskexecution", _("Can cancel task executions")),
            # Payload of routes with redact=True (gyrinx_tasks/redaction.py).
            ("view_payload_taskexecution",
             _("Can see arguments and results of redacted tasks")),
        ]

    def __str__(self) -> str:
        return f"{self.task_name or '?'} [{self.status}] {self.result_id}"

    def remember_progress(self) -> "TaskExecution":
        """Remember the progress fields as they are now (as read, or as just written)."""
        values = self.__dict__  # each field keeps its value there, the FSM status too
        values["_progress_read"] = {name: values[name] for name in PROGRESS_FIELDS}
        return self

    def progress_as_read(self) -> dict:
        return self.__dict__["_progress_read"]

    def changed_progress(self) -> list[str]:
        """The progress fields a transition changed since remember_progress()."""
        values = self.__dict__
        read = values.get("_progress_read")
        if read is None:
            return list(PROGRESS_FIELDS)
        # Transitions assign new values (lists are rebuilt, never mutated in place).
        return [name for name in PROGRESS_FIELDS if values[name] != read[name]]

    @property
    def will_retry(self) -> bool:
        """FAILED by an attempt that Pub/Sub redelivers: not given up, and delivered (it has
        a message id; runs of other backends, and publishes that failed, never are). The
        same test as the WILL_RETRY expression, which the dashboard counts and filters by."""
        return (self.status == State.FAILED and not self.gave_up and bool(self.attempts)
                and bool(self.message_id))

    @property
    def shown_status(self) -> ShownStatus:
        """The run's state as staff see it: FAILED split into failing (will retry) and final."""
        return ShownStatus.WILL_RETRY if self.will_retry else ShownStatus(self.status)

    @property
    def django_status(self) -> TaskResultStatus:
        # Django documents READY as "ready to be executed again" and FAILED as final: a
        # failed attempt that will be retried is READY to Django (its errors stay visible).
        if self.will_retry:
            return TaskResultStatus.READY
        return DJANGO_STATUS[State(self.status)]

    def _log(self, source: str, target: str, note: str = "") -> None:
        entry = {"at": timezone.now().isoformat(), "from": source, "to": target}
        if note:
            entry["note"] = note
        self.timeline, self.timeline_omitted = capped(self.timeline, entry,
                                                      self.timeline_omitted)

    def _add_error(self, exception_class_path: str, traceback: str) -> None:
        self.errors, self.errors_omitted = capped(
            self.errors, self._error_entry(exception_class_path, traceback),
            self.errors_omitted)

    @property
    def settled(self) -> bool:
        """Whether a redelivery must change nothing: the run ended for good."""
        return self.status in SETTLED or (self.status == State.FAILED and self.gave_up)

    def note(self, text: str) -> None:
        """A timeline entry that changes no state (e.g. an attempt that lost a race)."""
        self._log(self.status, self.status, text)

    def _error_entry(self, exception_class_path: str, traceback: str) -> dict:
        return {
            "exception_class_path": exception_class_path,
            "traceback": traceback,
            "attempt": self.attempts,
            "at": timezone.now().isoformat(),
        }

    # Transitions. Each records itself in the timeline; callers save().

    @transition(field=status, source=[State.READY, State.FAILED, State.RUNNING],
                target=State.RUNNING)
    def start(self, worker_id: str, delivery_attempt: int | None = None) -> None:
        now = timezone.now()
        # A run found RUNNING again was cut off (crash, or the ack deadline passed).
        self.attempts = max(self.attempts + 1, delivery_attempt or 0)
        # Capped like the timeline; attempts keeps the true count.
        self.worker_ids = capped(self.worker_ids, worker_id, 0)[0]
        self.delivery_attempt = delivery_attempt
        if self.status_detail == PUBLISH_UNCONFIRMED:
            self.status_detail = ""  # the delivery confirms the publish
        self.started_at = self.started_at or now
        self.last_attempted_at = now
        self.finished_at = None
        self._log(self.status, State.RUNNING, f"attempt {self.attempts} on {worker_id}")

    @transition(field=status, source=State.RUNNING, target=State.SUCCESSFUL)
    def succeed(self, return_value: object) -> None:
        self.return_value = return_value
        self.finished_at = timezone.now()
        self._log(State.RUNNING, State.SUCCESSFUL)

    @transition(field=status, source=State.RUNNING, target=State.FAILED)
    def fail(self, exception_class_path: str, traceback: str) -> None:
        self._add_error(exception_class_path, traceback)
        self.finished_at = timezone.now()
        self._log(State.RUNNING, State.FAILED, f"attempt {self.attempts}: {exception_class_path}")

    def publish_unconfirmed(self, exception_class_path: str, traceback: str) -> None:
        """The publish timed out: the message may still arrive, so the run stays READY."""
        self._add_error(exception_class_path, traceback)
        self.status_detail = PUBLISH_UNCONFIRMED
        self.note(f"publish not confirmed ({exception_class_path}); waiting for a delivery")

    @transition(field=status, source=State.READY, target=State.FAILED)
    def fail_to_enqueue(self, exception_class_path: str, traceback: str) -> None:
        self._add_error(exception_class_path, traceback)
        self.status_detail = "Publishing to Pub/Sub failed; the task was never delivered."
        self.finished_at = timezone.now()
        self._log(State.READY, State.FAILED, "publish failed")

    @transition(field=status, source=[State.READY, State.FAILED, State.RUNNING],
                target=State.FAILED)
    def give_up(self, reason: str) -> None:
        """FAILED for good (max_attempts reached): redeliveries are acknowledged unrun."""
        self.gave_up = True
        self.status_detail = reason
        self.finished_at = timezone.now()
        self._log(self.status, State.FAILED, reason)

    @transition(field=status, source=[State.READY, State.FAILED], target=State.SKIPPED)
    def skip(self, reason: str) -> None:
        self.status_detail = reason
        self.finished_at = timezone.now()
        self._log(self.status, State.SKIPPED, reason)

    @transition(field=status, source=[State.READY, State.FAILED, State.RUNNING],
                target=State.REJECTED)
    def reject(self, reason: str, raw_message: str = "") -> None:
        self.status_detail = reason
        if raw_message:
            self.raw_message = raw_message
        self.finished_at = timezone.now()
        self._log(self.status, State.REJECTED, reason)

    @transition(field=status, source=State.READY, target=State.CANCELLED)
    def cancel(self, reason: str) -> None:
        """READY → CANCELLED: the task never runs; its deliveries are acknowledged unrun."""
        self._add_error(CANCELLED_ERROR, reason)
        self.status_detail = reason
        self.finished_at = timezone.now()
        self._log(State.READY, State.CANCELLED, reason)

    @transition(field=status, source=State.RUNNING, target=State.FAILED)
    def abandon(self, reason: str) -> None:
        """RUNNING past its ack deadline → FAILED for good: staff gave the attempt up as
        lost (its worker died) and retried the run as a new one (abandon.py). Its
        redeliveries are acknowledged unrun; a late outcome of the attempt is only noted."""
        self._add_error(ABANDONED_ERROR, reason)
        self.gave_up = True
        self.status_detail = reason
        self.finished_at = timezone.now()
        self._log(State.RUNNING, State.FAILED, reason)

    # --- Enqueue and retry transitions ---
    #
    # Each is one conditional UPDATE on the state the caller read (status, attempts and the
    # detail), through the public ORM; the number of rows it changed says whether it won. The
    # instance is changed only when it won: a loser's copy is stale and must not be written.

    def _apply(self, using: str, expect: dict, change, fields: tuple[str, ...],
               exclude: Q | Exists | None = None) -> bool:
        candidate = copy.copy(self)
        change(candidate)
        runs = type(self).objects.using(using).filter(result_id=self.result_id, **expect)
        if exclude is not None:
            runs = runs.exclude(exclude)
        if not runs.update(**{name: getattr(candidate, name) for name in fields}):
            return False
        for name in fields:
            setattr(self, name, getattr(candidate, name))
        return True

    def _as_enqueued(self) -> dict:
        # The enqueue side owns a run only until a delivery (or staff) changes it.
        return {"status": State.READY, "attempts": 0, "status_detail": self.status_detail}

    def record_publish_failure(self, using: str, exception_class_path: str, traceback: str,
                               unconfirmed: bool) -> bool:
        """READY → READY "publish unconfirmed" (Pub/Sub may have the message), or READY →
        FAILED "never delivered" (Pub/Sub refused it), only if no delivery has touched the run
        since it was enqueued. False: a delivery got there first, so the message did arrive
        and its record stands."""
        def change(run: "TaskExecution") -> None:
            if unconfirmed:
                run.publish_unconfirmed(exception_class_path, traceback)
            else:
                run.fail_to_enqueue(exception_class_path, traceback)

        return self._apply(using, self._as_enqueued(), change, (
            "status", "errors", "errors_omitted", "status_detail", "finished_at", "timeline",
            "timeline_omitted"))

    def record_republished(self, using: str, note: str) -> bool:
        """READY (publish unconfirmed, or never delivered) → READY, published again by staff.

        Safe however many messages of one run Pub/Sub holds: every delivery claims the same
        row, so the task runs once."""
        def change(run: "TaskExecution") -> None:
            if run.status_detail == PUBLISH_UNCONFIRMED:
                run.status_detail = ""
            run.note(note)

        return self._apply(using, self._as_enqueued(), change,
                           ("status_detail", "timeline", "timeline_omitted"))

    def record_retried(self, using: str, sentence: str, settle: bool) -> bool:
        """A FAILED, REJECTED or SKIPPED run is retried as a new run: the sentence is added
        to its detail and timeline. ``settle``: Pub/Sub still redelivers it (FAILED, attempts
        left), so it becomes FAILED for good and its next delivery is acknowledged unrun.

        Only if the run is as read and no other retry of it may still run (or has run): two
        staff retrying one run at once make one retry."""
        def change(run: "TaskExecution") -> None:
            run.status_detail = f"{run.status_detail} {sentence}".strip()
            if settle:
                run.gave_up = True
                run.finished_at = timezone.now()
            run.note(sentence)

        expect = {"status": self.status, "attempts": self.attempts,
                  "status_detail": self.status_detail, "gave_up": self.gave_up}
        return self._apply(using, expect, change, (
            "status_detail", "gave_up", "finished_at", "timeline", "timeline_omitted"),
            exclude=Exists(TaskExecution.objects.filter(LIVE_RETRY, retry_of=OuterRef("pk"))))

    def record_abandoned(self, using: str, reason: str) -> bool:
        """RUNNING, attempt N, past its ack deadline → FAILED, ``gave_up`` (``abandon``):
        staff gave the attempt up as lost and retried the run (abandon.abandon_run, in the
        transaction that records the new run). Only if the row is as read: RUNNING, the same
        attempt and the same timeline, as a delivery's claim and an outcome's write expect
        too; and only if no retry of it may still run (or has run). So:

        * a redelivery that started attempt N+1 first, or an outcome of attempt N written
          first, makes this change no row (the caller refuses: the run changed);
        * if this wins, the outcome's write of a worker that was only slow changes no row:
          record.py notes it on the run and logs it, and the run stays FAILED; a later
          redelivery finds the run settled and is acknowledged unrun.

        The caller checks that the attempt is past its ack deadline (abandon_refusal); the
        instance is changed only when it won."""
        expect = {"status": State.RUNNING, "attempts": self.attempts,
                  "timeline": self.timeline}
        return self._apply(using, expect, lambda run: run.abandon(reason), (
            "status", "gave_up", "errors", "errors_omitted", "status_detail", "finished_at",
            "timeline", "timeline_omitted"),
            exclude=Exists(TaskExecution.objects.filter(LIVE_RETRY, retry_of=OuterRef("pk"))))

    def record_cancelled(self, using: str, reason: str) -> bool:
        """READY → CANCELLED (staff, or gyrinx_tasks.cancel()), only if the run is still as
        read: READY, the same attempts and the same timeline, as a delivery's claim expects
        too. So a cancel and a delivery claiming the run at the same moment make one winner:
        if the claim wrote first, this changes no row (the run is RUNNING and cannot be
        cancelled); if this wrote first, the claim's write changes no row, it decides again
        on the CANCELLED row and acknowledges the delivery unrun. The instance is changed
        only when it won."""
        candidate = copy.copy(self)
        if "_progress_read" not in candidate.__dict__:
            candidate.remember_progress()
        candidate.cancel(reason)
        if not type(self).objects.using(using).write_transition(candidate):
            return False
        self.__dict__.update(candidate.__dict__)
        return True

    @property
    def redelivered_by_pubsub(self) -> bool:
        """Whether Pub/Sub will deliver this run again: it failed with attempts left."""
        return self.status == State.FAILED and not self.gave_up


# A retry that stands for its original: it may still run (READY, RUNNING, or FAILED with
# attempts left, which Pub/Sub redelivers) or it ran. A retry that was rejected, skipped or
# gave up does not: its original can be retried again.
LIVE_RETRY = (Q(status__in=[State.READY, State.RUNNING, State.SUCCESSFUL])
              | Q(status=State.FAILED, gave_up=False))


class SwitchMode(models.TextChoices):
    """What a switched-off task does with its deliveries."""

    SKIP = "skip", _("Skip: acknowledge and record as skipped")
    HOLD = "hold", _("Hold: keep the messages in Pub/Sub until switched on")


class KillSwitch(models.Model):
    """A database switch per task: on by default; off skips or holds its deliveries."""

    task_name = models.CharField(_("task name"), max_length=255, unique=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    mode = models.CharField(
        _("off mode"), max_length=8, choices=SwitchMode.choices, default=SwitchMode.SKIP,
        help_text=_("What deliveries do while the switch is off."),
    )
    reason = models.CharField(_("reason"), max_length=500, blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    updated_by = models.CharField(
        _("updated by"), max_length=150, blank=True,
        help_text=_("Username of whoever last changed the switch."),
    )
    off_since = models.DateTimeField(
        _("off since"), null=True, blank=True,
        help_text=_("When the switch was last turned off; empty while it is on."),
    )

    class Meta:
        verbose_name = _("kill switch")
        verbose_name_plural = _("kill switches")
        ordering = ["task_name"]

    def __str__(self) -> str:
        return f"{self.task_name}: {'on' if self.enabled else 'off'}"

    @classmethod
    def off_mode(cls, task_name: str) -> str:
        """The task's SwitchMode if the database switches it off, else "" (on), in one query."""
        modes = cls.objects.filter(task_name=task_name, enabled=False).values_list(
            "mode", flat=True)
        return next(iter(modes), "")


# Admin pages that are not lists of rows hang off proxy models, so that each appears in the
# app index, has its own view permission, and carries the permissions of its actions. No
# table of their own; their admins never list TaskExecution rows.


class Overview(TaskExecution):
    class Meta:
        proxy = True
        verbose_name = _("overview")
        verbose_name_plural = _("overview")
        default_permissions = ("view",)


class ScheduledJob(TaskExecution):
    class Meta:
        proxy = True
        verbose_name = _("scheduled job")
        verbose_name_plural = _("scheduled jobs")
        default_permissions = ("view",)
        permissions = [
            ("run_scheduledjob", _("Can run scheduled jobs now")),
            ("pause_scheduledjob", _("Can pause and resume scheduled jobs")),
        ]


class ProvisioningStatus(TaskExecution):
    class Meta:
        proxy = True
        verbose_name = _("provisioning status")
        verbose_name_plural = _("provisioning status")
        default_permissions = ("view",)
        permissions = [("provision_provisioningstatus", _("Can provision GCP resources"))]


class DeadLetter(TaskExecution):
    """The "Dead letters" page: messages Pub/Sub gave up on (gyrinx_tasks/deadletters.py)."""

    class Meta:
        proxy = True
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")
        default_permissions = ("view",)
        permissions = [("replay_deadletter", _("Can replay and discard dead letters"))]


class HealthState(models.Model):
    """The health the last check found (gyrinx_tasks/health_alerts.py): one row for the site.

    In the database rather than the cache so that every process and Cloud Run instance reads
    the same one, and a change is announced once: its writer wins a conditional update on
    ``version``. No row until the first time the site is found unhealthy.
    """

    version = models.PositiveIntegerField(_("version"), default=0)
    healthy = models.BooleanField(_("healthy"), default=True)
    reasons = models.JSONField(
        _("reasons"), default=list, blank=True,
        help_text=_("The reasons found when health last changed (empty while healthy)."))
    changed_at = models.DateTimeField(_("changed"), null=True, blank=True)

    class Meta:
        verbose_name = _("health state")
        verbose_name_plural = _("health state")
        default_permissions = ()

    def __str__(self) -> str:
        return "healthy" if self.healthy else f"unhealthy ({len(self.reasons)} reasons)"


# --- Hourly rollups (gyrinx_tasks/rollups.py) ---


class TaskRollup(models.Model):
    """Per task and hour (of the runs' created_at): runs by status and histograms of run
    duration and of time in queue, in the fixed buckets of gyrinx_tasks.rollups.EDGES.

    Two rows at most per task and hour. ``pruned=False``: the runs still stored, recounted by
    each refresh. ``pruned=True``: the runs tasks_prune deleted, only ever added to. Together
    they are the hour's runs, so the overview's long windows survive pruning.
    """

    task_name = models.CharField(_("task name"), max_length=255)
    hour = models.DateTimeField(_("hour"))
    pruned = models.BooleanField(_("of pruned runs"), default=False)
    counts = models.JSONField(_("runs by status"), default=dict)
    durations = models.JSONField(_("run duration histogram"), default=list)
    queued = models.JSONField(_("time in queue histogram"), default=list)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("task rollup")
        verbose_name_plural = _("task rollups")
        constraints = [
            models.UniqueConstraint(fields=["task_name", "hour", "pruned"],
                                    name="gyrinx_rollup_task_hour"),
        ]
        indexes = [models.Index(fields=["hour"], name="gyrinx_rollup_hour")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.hour:%Y-%m-%d %H:00}{' (pruned)' if self.pruned else ''}"


class RollupMark(models.Model):
    """How far the rollups of stored runs are current: hours before ``until`` were counted
    by a refresh; the overview counts later hours from the runs themselves. One row, also
    locked by each rollup and prune transaction so that two never interleave."""

    name = models.CharField(max_length=32, unique=True)
    until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.until}"
