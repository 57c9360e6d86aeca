"""Kill switches, in one place: whether a task is switched off, why, and turning it on or off.

Two switches per task. The environment variable a route names (``enabled_env_var``) is for
deploys and always skips. The database switch (``KillSwitch``) is for staff, without a
deploy, and either skips deliveries or holds them in Pub/Sub (``SwitchMode``).
"""

import os
from typing import Any

from django.db import router, transaction
from django.utils import timezone

from .models import KillSwitch, SwitchMode, TaskExecution
from .statements import SWITCH, off_mode

# Values of a route's environment variable that switch its task off (any case, trimmed).
ENV_OFF_WORDS = frozenset({"0", "false", "no", "off"})


def env_value_off(value: str | None) -> bool:
    """Whether an environment variable's value switches its task off (unset is on)."""
    return value is not None and value.strip().lower() in ENV_OFF_WORDS


def env_switch_enabled(env_var: str | None) -> bool:
    return not (env_var and env_value_off(os.environ.get(env_var)))


def kill_switch_state(route: Any, execution: TaskExecution | None = None) -> tuple[str, str]:
    """(SwitchMode, why) when the route is switched off, or ("", "") when it is on.

    The environment-variable switch wins and always skips: it is for deploys, where holding
    messages for an unknown time is rarely what was meant. One database query, or none when
    ``execution`` was read with its switch (statements.select_run's ``switch_for``).
    """
    if not env_switch_enabled(route.enabled_env_var):
        return SwitchMode.SKIP, f"Kill switch {route.enabled_env_var} is off."
    if execution is not None and hasattr(execution, SWITCH):
        mode = getattr(execution, SWITCH) or ""
    else:
        mode = off_mode(route.name)
    if mode == SwitchMode.HOLD:
        return mode, (f"Kill switch for {route.name} is off in the database (hold): "
                      "Pub/Sub keeps the message until it is switched on.")
    if mode:
        return SwitchMode.SKIP, f"Kill switch for {route.name} is off in the database."
    return "", ""


def kill_switch_reason(route: Any) -> str:
    """Why the route is switched off (environment variable or database), or "" if it is on."""
    return kill_switch_state(route)[1]


def turn_off(task_name: str, reason: str, mode: str, username: str) -> tuple[KillSwitch, str]:
    """Switch a task off in ``mode``; return the switch and what changed ("" if nothing)."""
    with transaction.atomic(using=router.db_for_write(KillSwitch)):
        switch, _created = KillSwitch.objects.select_for_update().get_or_create(
            task_name=task_name)
        if not switch.enabled and switch.mode == mode and switch.reason == reason:
            return switch, ""
        if switch.enabled or switch.mode != mode:
            # A hold starts now: messages skipped before it are gone, so retention counts
            # from here (off_since), also when switching from skip to hold.
            switch.off_since = timezone.now()
        switch.enabled, switch.mode, switch.reason = False, mode, reason
        switch.updated_by = username
        switch.save()
    label = SwitchMode(mode).name.lower()
    return switch, f"Turned off ({label}): {reason}"


def turn_on(task_name: str, username: str) -> tuple[KillSwitch | None, str]:
    """Switch a task on; return its switch (None if it never had one) and what changed."""
    with transaction.atomic(using=router.db_for_write(KillSwitch)):
        switch = KillSwitch.objects.select_for_update().filter(task_name=task_name).first()
        if switch is None or switch.enabled:
            return switch, ""
        switch.enabled, switch.reason, switch.off_since = True, "", None
        switch.updated_by = username
        switch.save()
    return switch, "Turned on."
