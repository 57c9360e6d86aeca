"""Dead letters: the messages Pub/Sub gave up on, per route, and Replay / Discard.

The page renders at once and loads the list from ``list/`` through HTMX; listing is a peek
(gyrinx_tasks/deadletters.py), so looking consumes nothing. ``act/`` replays or discards the
selected messages of one dead-letter subscription, for staff with "Can replay and discard dead
letters"; each replay's new run and each discard is written to the admin log.
"""

import json
import logging
from typing import Any

from django.contrib import messages
from django.contrib.admin.models import ADDITION, DELETION
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST
from google.api_core import exceptions as api_exceptions

from .. import deadletters
from ..exceptions import RegistryError
from ..models import DeadLetter, TaskExecution
from ..redaction import REDACTED, can_view_payload, is_redacted
from .base import HtmxHttpRequest, PageAdmin, audit, has_model_permission, page_context, require
from .provisioning import failure_sentence

logger = logging.getLogger("gyrinx_tasks")

TEMPLATES = "admin/gyrinx_tasks/deadletter"
PAYLOAD_CHARS = 300  # arguments shown per message before "…"
NO_SUBSCRIPTION = (
    "Our pull subscription on this dead-letter topic does not exist yet. Provision it (the "
    "Provisioning status page, or manage.py tasks_provision); Pub/Sub keeps a message for a "
    "subscription only from the moment it exists."
)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= PAYLOAD_CHARS else text[:PAYLOAD_CHARS] + "…"


def shown(letter: deadletters.Letter, user: Any) -> dict[str, Any]:
    """What a row shows of ``letter`` to ``user``: arguments redacted as a run's would be."""
    if letter.problem:
        # Not a task message: whether it holds personal data cannot be known.
        payload = letter.raw if can_view_payload(user) else REDACTED
        return {"letter": letter, "payload": payload, "redacted": payload == REDACTED}
    if is_redacted(letter.task_name, user):
        return {"letter": letter, "args": REDACTED, "kwargs": REDACTED, "redacted": True}
    return {
        "letter": letter,
        "args": _short(letter.args),
        "kwargs": _short(letter.kwargs),
        "redacted": False,
    }


class DeadLetterAdmin(PageAdmin):
    """The page of DeadLetter (a proxy with no rows of its own)."""

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return has_model_permission(request, self.opts, "replay_deadletter")

    def get_urls(self) -> list:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("", view(self.changelist_view), name=f"{name}_changelist"),
            path("list/", view(require_GET(self.list_view)), name=f"{name}_list"),
            path("act/", view(require_POST(self.act_view)), name=f"{name}_act"),
        ]

    def _url(self, view: str) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}",
            current_app=self.admin_site.name,
        )

    def _detail(self, request: HttpRequest) -> bool:
        return bool(
            request.user.is_active
            and request.user.is_superuser
            or self.has_replay_permission(request)
        )

    def _failure(self, request: HttpRequest, exc: Exception) -> str:
        if isinstance(exc, api_exceptions.NotFound):
            return NO_SUBSCRIPTION
        if self._detail(request):
            return f"Reading it failed: {exc}"
        return failure_sentence(exc)

    def _sections(self, request: HttpRequest) -> tuple[list[dict[str, Any]], str]:
        """Per dead-letter subscription: its messages grouped by route, or why not."""
        try:
            found = deadletters.sources()
        except (ImproperlyConfigured, RegistryError) as exc:
            return [], str(exc) if self._detail(request) else failure_sentence(exc)
        if not found:
            return [], ""
        sections = []
        try:
            subscriber = deadletters.open_subscriber()
        except Exception as exc:  # no credentials: say so once, never a 500
            logger.warning("Building the Pub/Sub subscriber client failed: %s", exc)
            return [], self._failure(request, exc)
        try:
            for source in found:
                section: dict[str, Any] = {"source": source, "groups": [], "count": 0}
                try:
                    letters = deadletters.peek(subscriber, source)
                except Exception as exc:  # the page stays up; the log has the detail
                    logger.warning(
                        "Reading dead letters from %s failed: %s", source.subscription, exc
                    )
                    section["error"] = self._failure(request, exc)
                    sections.append(section)
                    continue
                section["count"] = len(letters)
                for route in [*source.routes, None]:
                    rows = [
                        shown(letter, request.user) for letter in letters if letter.route is route
                    ]
                    if rows or route is not None:
                        section["groups"].append({"route": route, "rows": rows})
                sections.append(section)
        finally:
            subscriber.close()
        return sections, ""

    def _render(
        self, request: HtmxHttpRequest, outcomes: list[dict[str, Any]] | None = None,
        status: int = 200,
    ) -> HttpResponse:
        sections, error = self._sections(request)
        context = {
            "sections": sections,
            "error": error,
            "outcomes": outcomes or [],
            "list_url": self._url("list"),
            "act_url": self._url("act"),
            "can_replay": self.has_replay_permission(request),
            "peek_note": deadletters.PEEK_NOTE,
        }
        if request.htmx:
            return TemplateResponse(request, f"{TEMPLATES}/_list.html", context, status=status)
        context = page_context(
            self, request, "Dead letters", fragment=f"{TEMPLATES}/_list.html", **context
        )
        return TemplateResponse(request, f"{TEMPLATES}/page.html", context, status=status)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        require(self.has_view_permission(request))
        context = page_context(
            self,
            request,
            "Dead letters",
            list_url=self._url("list"),
            peek_note=deadletters.PEEK_NOTE,
        )
        return TemplateResponse(request, f"{TEMPLATES}/page.html", context)

    def list_view(self, request: HtmxHttpRequest) -> HttpResponse:
        require(self.has_view_permission(request))
        return self._render(request)

    def act_view(self, request: HtmxHttpRequest) -> HttpResponse:
        require(self.has_replay_permission(request))
        action = request.POST.get("action", "")
        wanted = [value[:100] for value in request.POST.getlist("message") if value][:200]
        try:
            source = next(
                (
                    s
                    for s in deadletters.sources()
                    if s.short_name == request.POST.get("subscription")
                ),
                None,
            )
        except (ImproperlyConfigured, RegistryError):
            source = None
        problem = ""
        if action not in (deadletters.REPLAY, deadletters.DISCARD):
            problem = "Choose Replay or Discard."
        elif source is None:
            problem = (
                "That dead-letter subscription is not one the registry names any more; "
                "reload the page."
            )
        elif not wanted:
            problem = "Select one or more messages first."
        outcomes: list[deadletters.Outcome] = []
        if not problem and action == deadletters.DISCARD and not request.POST.get("confirm"):
            # Discarding cannot be undone: say what it does, and ask once more.
            assert source is not None
            context = page_context(
                self,
                request,
                "Dead letters",
                source=source,
                wanted=wanted,
                act_url=self._url("act"),
                page_url=self._url("changelist"),
                list_url=self._url("list"),
            )
            template = "_confirm.html" if request.htmx else "confirm.html"
            return TemplateResponse(request, f"{TEMPLATES}/{template}", context)
        if not problem:
            assert source is not None
            try:
                subscriber = deadletters.open_subscriber()
                try:
                    outcomes = deadletters.act(subscriber, source, wanted, action, request.user)
                finally:
                    subscriber.close()
            except Exception as exc:  # nothing acknowledged; say so in place
                logger.warning("Dead-letter %s on %s failed: %s", action, source.subscription, exc)
                problem = f"{action.capitalize()} failed. " + self._failure(request, exc)
            for outcome in outcomes:
                self._audit(request, source, outcome)
        said = [self._sentence(outcome) for outcome in outcomes]
        if problem:
            said.append({"text": problem, "ok": False})
        if not request.htmx:
            for line in said:
                messages.add_message(
                    request, messages.SUCCESS if line["ok"] else messages.WARNING, line["text"]
                )
            return HttpResponseRedirect(self._url("changelist"))
        return self._render(request, said)

    @staticmethod
    def _sentence(outcome: deadletters.Outcome) -> dict[str, Any]:
        what = f"Message {outcome.message_id}"
        run = outcome.run
        if outcome.done == "replayed":
            text = f"{what}: replayed as run {run.result_id}."
        elif outcome.done == "already replayed":
            text = (
                f"{what} was replayed before, as run {run.result_id}; it is acknowledged now."
                if run is not None
                else f"{what} was replayed before."
            )
        elif outcome.done == "discarded":
            text = f"{what}: discarded (acknowledged without a run)."
        else:
            text = f"{what}: left alone."
        text = f"{text} {outcome.reason}".strip()
        return {"text": text, "ok": bool(outcome.done) and outcome.published, "run": run}

    def _audit(
        self, request: HttpRequest, source: deadletters.Source, outcome: deadletters.Outcome
    ) -> None:
        letter = outcome.letter
        if not outcome.done or letter is None:
            return
        where = f"dead letter {letter.message_id} on {source.subscription}"
        if outcome.done == "replayed":
            run: TaskExecution = outcome.run
            text = f"Replayed {where} as this run"
            if run.retry_of_id:
                original = (
                    TaskExecution.objects.filter(pk=run.retry_of_id)
                    .values_list("result_id", flat=True)
                    .first()
                    or ""
                )
                text += f", a retry of run {original}"
            if not outcome.published:
                text += "; publishing it failed"
            audit(request, run, text + ".", action_flag=ADDITION, model=TaskExecution)
        elif outcome.done == "already replayed":
            run_id = outcome.run.result_id if outcome.run is not None else "?"
            audit(
                request,
                where,
                f"Acknowledged {where}: it was replayed before as run {run_id}.",
                model=DeadLetter,
            )
        else:
            task = letter.task_name or "a message that is not a task message"
            audit(
                request,
                where,
                f"Discarded {where} ({task}), acknowledged without a run.",
                action_flag=DELETION,
                model=DeadLetter,
            )
