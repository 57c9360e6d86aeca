"""The run: call a started run's task with the delivery's arguments, and say what happened.

Nothing here writes to the database; record.record_outcome writes what this returns.
"""

import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.tasks import TaskContext
from django.utils.json import normalize_json

from .models import TaskExecution
from .outcomes import OutcomeKind
from .push import Delivery, safe_text, text_problem
from .results import result_from_execution


@dataclass(frozen=True)
class Attempt:
    """An attempt's outcome, not yet recorded: ``apply`` makes it on a run."""

    kind: OutcomeKind
    apply: Callable[[TaskExecution], None]
    what: str  # for timeline notes and logs: "succeeded", "failed (module.Error)"
    detail: str = ""
    error: BaseException | None = None  # what the task raised

    @property
    def interrupt(self) -> bool:
        """A KeyboardInterrupt: raised again once the attempt is recorded."""
        return isinstance(self.error, KeyboardInterrupt)


@lru_cache(maxsize=1024)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    # A task's function never changes; inspect.signature costs more than the bind below.
    return inspect.signature(func)


def arguments_problem(task: Any, args: list, kwargs: dict) -> str:
    """Why ``args`` and ``kwargs`` do not fit the task's function, or "" if they do."""
    try:
        signature = _signature(task.func)
        if task.takes_context:
            signature.bind(None, *args, **kwargs)
        else:
            signature.bind(*args, **kwargs)
    except TypeError as exc:
        return f"The arguments do not fit {task.module_path}: {exc}."
    return ""


def run_attempt(execution: TaskExecution, delivery: Delivery, task: Any,
                max_attempts: int | None, give_up_reason: Callable[[int], str]) -> Attempt:
    """Call the task for the started run ``execution``; never raises (as Django's
    ImmediateBackend, whatever the task raises is the attempt's outcome)."""
    try:
        if task.takes_context:
            # The context's attempt is the run's attempt (results.PubSubTaskResult).
            context: Any = TaskContext(task_result=result_from_execution(execution, task))
            value = task.call(context, *delivery.args, **delivery.kwargs)
        else:
            value = task.call(*delivery.args, **delivery.kwargs)
        value = normalize_json(value)
        problem = text_problem(value)
        if problem:  # PostgreSQL could not record it; SQLite is held to the same rule
            raise ValueError(f"The task's return value {problem}")
    except BaseException as exc:  # SystemExit, cancellation... as ImmediateBackend
        path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        # The task's own text may hold what no database stores (NUL, unpaired surrogates).
        trace = safe_text("".join(traceback.format_exception(exc)))
        attempts = execution.attempts
        give_up = bool(max_attempts and attempts >= max_attempts)

        def failed(run: TaskExecution) -> None:
            run.fail(path, trace)
            if give_up:
                run.give_up(give_up_reason(attempts))

        return Attempt(OutcomeKind.GAVE_UP if give_up else OutcomeKind.FAILED, failed,
                       f"failed ({path})", f"{path}: {safe_text(str(exc), 2000)}", exc)

    def succeeded(run: TaskExecution) -> None:
        run.succeed(value)

    return Attempt(OutcomeKind.RAN, succeeded, "succeeded")
