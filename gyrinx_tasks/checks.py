"""System checks for gyrinx_tasks. Every id is listed, with its fix, in docs/checks.md.

The registry is loaded once per check run; when it cannot be loaded only E001/E002 are
reported, because every route-level check needs the routes.
"""

import importlib
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from croniter import croniter
from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.tasks import Task, task_backends
from django.tasks.exceptions import InvalidTaskBackend
from django.utils.module_loading import import_string

from . import registry
from .conf import tasks_settings
from .exceptions import RegistryError
from .routes import TaskRoute

TAG = "gyrinx_tasks"
REGISTRY_HINT = "TASKS_REGISTRY must name a module defining `tasks = [TaskRoute(my_task), ...]`."
# The environment prefixes topic, subscription and scheduler job names, and "--" separates the
# parts of those names, so it must not contain "--" or end with "-". Pub/Sub reserves "goog".
ENVIRONMENT_RE = re.compile(r"^(?!goog)[A-Za-z](?:-?[A-Za-z0-9])*$")
ACK_DEADLINE_RANGE = (10, 600)  # Pub/Sub subscription ackDeadlineSeconds
RETRY_DELAY_RANGE = (0, 600)  # Pub/Sub RetryPolicy minimum/maximum backoff, in seconds
DELIVERY_ATTEMPTS_RANGE = (5, 100)  # Pub/Sub DeadLetterPolicy maxDeliveryAttempts


@register(TAG)
def check_registry(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        routes = registry.get_routes()
    except RegistryError as exc:
        if not tasks_settings.TASKS_REGISTRY:
            return [
                Error(
                    "TASKS_REGISTRY is not set, so gyrinx_tasks has no task routes.",
                    hint="Set TASKS_REGISTRY to the dotted path of a module defining "
                    "`tasks = [TaskRoute(my_task), ...]`.",
                    id="gyrinx_tasks.E001",
                )
            ]
        return [Error(str(exc), hint=REGISTRY_HINT, id="gyrinx_tasks.E002")]
    messages = _check_duplicate_names(routes)
    timezones = zoneinfo.available_timezones()
    for route in routes:
        messages += _check_route(route, timezones)
    return (messages + _check_dead_letter_topics(routes) + _check_unrouted_tasks(routes)
            + _check_task_options(routes))


# Pub/Sub's rule for a topic id (its "resource name" rules), and a full topic path.
TOPIC_ID = re.compile(r"(?!goog)[A-Za-z][A-Za-z0-9._~%+-]{2,254}")
TOPIC_PATH = re.compile(r"projects/[^/]+/topics/(?P<id>[^/]+)")


def _check_dead_letter_topics(routes: Sequence[TaskRoute]) -> list[CheckMessage]:
    """A dead-letter topic must be a topic name Pub/Sub takes, and none of the routes' own
    topics: Pub/Sub would deliver a dead letter there as a new task message."""
    messages: list[CheckMessage] = []
    try:
        own = {route.topic_name for route in routes}
    except AttributeError:  # a route that is not a TaskRoute is reported elsewhere
        return messages
    for route in routes:
        topic = getattr(route, "dead_letter_topic", None)
        if not topic:
            continue
        path = TOPIC_PATH.fullmatch(topic) if isinstance(topic, str) else None
        topic_id = path["id"] if path else topic
        if not isinstance(topic_id, str) or not TOPIC_ID.fullmatch(topic_id):
            messages.append(Error(
                f"The route's dead_letter_topic {topic!r} is not a Pub/Sub topic id or path.",
                hint="Give a topic id of 3-255 letters, digits and - . _ ~ % + that starts "
                     "with a letter (not with 'goog'), e.g. 'myapp-dead-letters', or a full "
                     "path 'projects/PROJECT/topics/ID'.",
                obj=_label(route), id="gyrinx_tasks.E055"))
        elif topic_id in own:
            messages.append(Error(
                f"The route's dead_letter_topic {topic!r} is the topic of a route in "
                "TASKS_REGISTRY, so Pub/Sub would deliver its dead letters as new task "
                "messages.",
                hint="Name a topic of its own for dead letters, e.g. 'myapp-dead-letters'.",
                obj=_label(route), id="gyrinx_tasks.E056"))
    return messages


@register(TAG)
def check_environment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    env = tasks_settings.TASKS_ENVIRONMENT
    if ENVIRONMENT_RE.match(env):
        return []
    return [
        Error(
            f"TASKS_ENVIRONMENT {env!r} cannot prefix Pub/Sub and Cloud Scheduler resource names.",
            hint="Use a name that starts with a letter and has only letters, digits and single "
            "hyphens, does not end with a hyphen or start with 'goog', e.g. 'prod', "
            "'staging' or 'dev'.",
            id="gyrinx_tasks.E010",
        )
    ]


# Settings validated when read (conf.py): id, setting, what breaks without it, the hint.
VALIDATED_SETTINGS = (
    ("gyrinx_tasks.E020", "TASKS_SCHEDULE_TOLERANCE",
     "Without it, schedule health cannot judge whether scheduled runs are late.",
     "Set TASKS_SCHEDULE_TOLERANCE (setting or environment variable) to a whole number of "
     "seconds of at least 1, e.g. 300, or remove it to use 300."),
    ("gyrinx_tasks.E050", "TASKS_BACKLOG_CACHE_SECONDS",
     "Without it, the admin's backlog (read from Cloud Monitoring) cannot be shown.",
     "Set TASKS_BACKLOG_CACHE_SECONDS (setting or environment variable) to a whole number of "
     "seconds of at least 1, e.g. 60, or remove it to use 60."),
    ("gyrinx_tasks.E030", "TASKS_RETENTION",
     "Without it, tasks_prune cannot tell which runs to delete.",
     "Set TASKS_RETENTION to a timedelta of at least one hour, e.g. timedelta(days=30) (or "
     "the environment variable to a number of days), or remove it to keep runs for 30 days."),
)


def _invalid_settings(table: Any) -> list[CheckMessage]:
    """An Error for each (id, setting, consequence, hint) whose setting fails validation."""
    from django.core.exceptions import ImproperlyConfigured

    messages: list[CheckMessage] = []
    for id_, name, consequence, hint in table:
        try:
            getattr(tasks_settings, name)  # reading it validates it
        except ImproperlyConfigured as exc:
            messages.append(Error(f"{exc} {consequence}", hint=hint, id=id_))
    return messages


@register(TAG)
def check_validated_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return _invalid_settings(VALIDATED_SETTINGS)


# The health settings (gyrinx_tasks/health.py): id, setting, what it is for, the fix.
HEALTH_SETTINGS = (
    ("gyrinx_tasks.E040", "TASKS_HEALTH_FAILURE_RATE",
     "a share of finished runs from 0 to 1, e.g. 0.2 (20 %), or remove it to use 0.2"),
    ("gyrinx_tasks.E041", "TASKS_HEALTH_WINDOW",
     "a whole number of seconds of at least 1, e.g. 3600, or remove it to use 3600"),
    ("gyrinx_tasks.E042", "TASKS_HEALTH_MIN_RUNS",
     "a whole number of runs of at least 1, e.g. 5, or remove it to use 5"),
    ("gyrinx_tasks.E043", "TASKS_HEALTH_MAX_READY_AGE",
     "a whole number of seconds of at least 1, e.g. 600, or remove it to use 600"),
)
HEALTH_TOKEN_MIN_LENGTH = 32


@register(TAG)
def check_health_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.core.exceptions import ImproperlyConfigured

    messages = _invalid_settings(
        (id_, name, "Without it, GET /tasks/health/ and tasks_health answer 503 and 1 with a "
         "configuration reason.", f"Set {name} (setting or environment variable) to {fix}.")
        for id_, name, fix in HEALTH_SETTINGS)
    try:
        token = tasks_settings.TASKS_HEALTH_TOKEN
    except ImproperlyConfigured as exc:
        messages.append(Error(
            f"{exc} Machines cannot read GET /tasks/health/ with it.",
            hint="Set TASKS_HEALTH_TOKEN to a long random string, e.g. the output of "
            "`python -c \"import secrets; print(secrets.token_urlsafe(32))\"`, or remove it "
            "to let only staff read the endpoint.", id="gyrinx_tasks.E046"))
    else:
        if token and len(token) < HEALTH_TOKEN_MIN_LENGTH:
            messages.append(Warning(
                f"TASKS_HEALTH_TOKEN has {len(token)} characters, so it can be guessed more "
                "easily than a random token; it lets anyone holding it read task health.",
                hint=f"Use a random token of at least {HEALTH_TOKEN_MIN_LENGTH} characters, "
                "e.g. the output of `python -c \"import secrets; "
                "print(secrets.token_urlsafe(32))\"`.", id="gyrinx_tasks.W040"))
    if tasks_settings.TASKS_HEALTH_MAIL_ADMINS and not getattr(settings, "ADMINS", None):
        messages.append(Warning(
            "TASKS_HEALTH_MAIL_ADMINS is on but ADMINS is empty, so changes of task health "
            "are mailed to nobody.",
            hint='Add the people to mail to ADMINS (e.g. ADMINS = ["ops@example.com"]) and '
            "configure email (MAILERS on Django 6.1, EMAIL_BACKEND on 6.0), or turn "
            "TASKS_HEALTH_MAIL_ADMINS off.",
            id="gyrinx_tasks.W041"))
    return messages


HEALTH_OPTION_CHECKS = {
    "health_failure_rate": (
        "gyrinx_tasks.E044",
        "Set health_failure_rate to a share of finished runs from 0 to 1, e.g. 0.5 (1 never "
        "judges the task by its failures), or leave it unset (None) to use "
        "TASKS_HEALTH_FAILURE_RATE."),
    "health_max_ready_age": (
        "gyrinx_tasks.E045",
        "Set health_max_ready_age to a number of seconds such as 1800, or leave it unset "
        "(None) to use TASKS_HEALTH_MAX_READY_AGE."),
}


def _bad_retention(value: object) -> bool:
    from .conf import MIN_RETENTION

    return value is not None and (not isinstance(value, timedelta) or value < MIN_RETENTION)


@register(TAG)  # reads settings only, so not tagged "database" (which check skips)
def check_sqlite_transactions(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not _pubsub_backends():
        return []
    messages: list[CheckMessage] = []
    databases: dict[str, dict[str, Any]] = settings.DATABASES
    for alias, database in databases.items():
        if "sqlite3" not in str(database.get("ENGINE", "")):
            continue
        options: dict[str, Any] = database.get("OPTIONS") or {}
        mode = str(options.get("transaction_mode") or "DEFERRED")
        if mode.upper() != "IMMEDIATE":
            messages.append(Warning(
                f"The SQLite database {alias!r} uses {mode.upper()} transactions, so concurrent "
                "Pub/Sub pushes fail on its write lock and are retried after Pub/Sub's backoff.",
                hint=f'Add "OPTIONS": {{"transaction_mode": "IMMEDIATE"}} to '
                f"DATABASES[{alias!r}], so writers wait for the lock instead.",
                id="gyrinx_tasks.W014",
            ))
    return messages


@register(TAG)
def check_htmx_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    # The admin's pages answer HTMX requests with a fragment only when request.htmx says so;
    # without the middleware every button would swap a whole page into a table cell.
    from django_htmx.middleware import HtmxMiddleware

    if not apps.is_installed("django.contrib.admin"):
        return []
    for path in settings.MIDDLEWARE or []:
        try:
            middleware = import_string(path)
        except ImportError:
            continue  # Django reports a middleware that cannot be imported when it loads it
        if isinstance(middleware, type) and issubclass(middleware, HtmxMiddleware):
            return []
    return [
        Error(
            "django-htmx's HtmxMiddleware is not in MIDDLEWARE, so the gyrinx_tasks admin "
            "pages cannot tell HTMX requests from full page loads.",
            hint='Add "django_htmx.middleware.HtmxMiddleware" to MIDDLEWARE, and '
            '"django_htmx" to INSTALLED_APPS.',
            id="gyrinx_tasks.E016",
        )
    ]


@register(TAG, Tags.security, deploy=True)
def check_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    backends = _pubsub_backends()
    if not backends:
        return []  # e.g. ImmediateBackend only: nothing is published or pushed
    messages: list[CheckMessage] = []
    if not tasks_settings.TASKS_VERIFY_OIDC and not settings.DEBUG:
        messages.append(
            Error(
                "TASKS_VERIFY_OIDC is False while DEBUG is False, so anyone can POST tasks to "
                "the push endpoint.",
                hint="Remove TASKS_VERIFY_OIDC = False (or set it to True); turn it off only for "
                "the local Pub/Sub emulator with DEBUG = True.",
                id="gyrinx_tasks.E101",
            )
        )
    for backend in backends:
        if not backend.project_id:
            messages.append(
                Error(
                    f"TASKS[{backend.alias!r}] uses PubSubBackend but no Google Cloud project "
                    "is configured.",
                    hint=f"Set GCP_PROJECT_ID (setting or environment variable) or "
                    f"TASKS[{backend.alias!r}]['OPTIONS']['project_id'].",
                    id="gyrinx_tasks.E102",
                )
            )
    url = urlsplit(tasks_settings.CLOUD_RUN_SERVICE_URL)
    if url.scheme != "https" or not url.netloc:
        messages.append(
            Error(
                f"CLOUD_RUN_SERVICE_URL {tasks_settings.CLOUD_RUN_SERVICE_URL!r} is not an "
                "https:// URL, so Pub/Sub has no push endpoint to deliver tasks to.",
                hint="Set CLOUD_RUN_SERVICE_URL (setting or environment variable) to the "
                "service's URL, e.g. 'https://myservice-abc123-ew.a.run.app'.",
                id="gyrinx_tasks.E103",
            )
        )
    if "@" not in tasks_settings.TASKS_SERVICE_ACCOUNT:
        messages.append(
            Error(
                "TASKS_SERVICE_ACCOUNT is not set to a service account email, so push "
                "subscriptions have no identity to sign their OIDC tokens with.",
                hint="Set TASKS_SERVICE_ACCOUNT (setting or environment variable), e.g. "
                "'pubsub-invoker@my-project.iam.gserviceaccount.com'.",
                id="gyrinx_tasks.E104",
            )
        )
    return messages


def _pubsub_backends() -> list[Any]:
    from .backend import PubSubBackend  # imported late: the backend pulls in more modules

    found = []
    for alias in task_backends:
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend:
            continue  # Django's own task checks report an unloadable backend
        if isinstance(backend, PubSubBackend):
            found.append(backend)
    return found


def _label(route: TaskRoute) -> str:
    try:
        return route.path
    except AttributeError:  # func is not a function at all; E004 reports it
        return repr(route.func)


def _check_duplicate_names(routes: tuple[TaskRoute, ...]) -> list[CheckMessage]:
    by_name: dict[str, list[str]] = defaultdict(list)
    for route in routes:
        try:
            by_name[route.name].append(route.path)
        except AttributeError:
            continue
    return [
        Error(
            f"{len(paths)} routes are named {name!r} ({', '.join(paths)}); messages name their "
            "task, so the push endpoint could run the wrong one.",
            hint="Rename task functions so that every route in TASKS_REGISTRY has its own name.",
            obj=name,
            id="gyrinx_tasks.E003",
        )
        for name, paths in by_name.items()
        if len(paths) > 1
    ]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _outside(value: object, bounds: tuple[int, int]) -> bool:
    number = _number(value)
    return number is None or not bounds[0] <= number <= bounds[1]


def _check_route(route: TaskRoute, timezones: set[str]) -> list[CheckMessage]:
    label = _label(route)
    messages: list[CheckMessage] = []

    def error(id_: str, msg: str, hint: str) -> None:
        messages.append(Error(f"The route's {msg}", hint=hint, obj=label, id=id_))

    if not isinstance(route.func, Task):
        error(
            "gyrinx_tasks.E004",
            "func is not a Django Task, so it cannot be enqueued.",
            "Decorate the function with @task (from django.tasks import task).",
        )
    if _outside(route.ack_deadline, ACK_DEADLINE_RANGE):
        error(
            "gyrinx_tasks.E006",
            f"ack_deadline {route.ack_deadline!r} is outside the 10-600 seconds Pub/Sub allows.",
            "Set ack_deadline to a number from 10 to 600.",
        )
    for field in ("min_retry_delay", "max_retry_delay"):
        value = getattr(route, field)
        if _outside(value, RETRY_DELAY_RANGE):
            error(
                "gyrinx_tasks.E011",
                f"{field} {value!r} is outside the 0-600 seconds Pub/Sub allows.",
                f"Set {field} to a number from 0 to 600.",
            )
    low, high = _number(route.min_retry_delay), _number(route.max_retry_delay)
    if low is not None and high is not None and low > high:
        error(
            "gyrinx_tasks.E007",
            f"min_retry_delay ({low}) is greater than max_retry_delay ({high}).",
            "Make min_retry_delay less than or equal to max_retry_delay.",
        )
    if route.schedule and not _valid_cron(route.schedule):
        error(
            "gyrinx_tasks.E008",
            f"schedule {route.schedule!r} is not a valid 5-field cron expression.",
            "Use 'minute hour day-of-month month day-of-week', e.g. '0 3 * * *' for 03:00 daily.",
        )
    if not isinstance(route.schedule_timezone, str) or route.schedule_timezone not in timezones:
        error(
            "gyrinx_tasks.E009",
            f"schedule_timezone {route.schedule_timezone!r} is not a known IANA time zone.",
            "Use a tz database name such as 'UTC' or 'Europe/London'.",
        )
    tolerance = route.schedule_tolerance
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, int)
                                  or tolerance < 1):
        error(
            "gyrinx_tasks.E021",
            f"schedule_tolerance {tolerance!r} is not a whole number of seconds of at least 1.",
            "Set schedule_tolerance to a number of seconds such as 600, or leave it unset "
            "(None) to use TASKS_SCHEDULE_TOLERANCE.",
        )
    from .health import option_problem  # health imports the models

    for name, (id_, hint) in HEALTH_OPTION_CHECKS.items():
        value = getattr(route, name)
        problem = option_problem(name, value)
        if problem:
            error(id_, f"{name} {value!r} {problem}", hint)
    if _bad_retention(route.retention):
        error(
            "gyrinx_tasks.E031",
            f"retention {route.retention!r} is not a timedelta of at least one hour.",
            "Set retention to a timedelta such as timedelta(days=90), or leave it unset (None) "
            "to use the task's @task(retention=...) or TASKS_RETENTION.",
        )
    if route.dead_letter_topic and _outside(route.max_delivery_attempts, DELIVERY_ATTEMPTS_RANGE):
        error(
            "gyrinx_tasks.E013",
            f"max_delivery_attempts {route.max_delivery_attempts!r} is "
            "outside the 5-100 Pub/Sub allows with a dead_letter_topic.",
            "Set max_delivery_attempts to a number from 5 to 100.",
        )
    if route.max_attempts is not None and (
        isinstance(route.max_attempts, bool) or not isinstance(route.max_attempts, int)
        or route.max_attempts < 1
    ):
        # Checked here because the runner compares it on every delivery: a bad value would
        # answer 500 to each of them until retention runs out.
        error(
            "gyrinx_tasks.E015",
            f"max_attempts {route.max_attempts!r} is not a whole number of at least 1.",
            "Set max_attempts to a whole number such as 5, or leave it unset (None) to retry "
            "until the message's retention ends.",
        )
    elif (route.dead_letter_topic and route.max_attempts is not None
            and route.max_attempts != route.max_delivery_attempts):
        # Whichever limit is lower wins, and the other never applies: a lower max_attempts
        # acknowledges before Pub/Sub dead-letters; a higher one is never reached.
        fate = ("is acknowledged as given up before Pub/Sub forwards it, so nothing reaches "
                "the dead-letter topic" if _number(route.max_attempts) is not None
                and route.max_attempts < route.max_delivery_attempts else
                "is forwarded to the dead-letter topic first and never recorded as given up")
        messages.append(Warning(
            f"The route's max_attempts ({route.max_attempts!r}) differs from "
            f"max_delivery_attempts ({route.max_delivery_attempts!r}) with a "
            f"dead_letter_topic: a run that keeps failing {fate}.",
            hint="Set max_attempts equal to max_delivery_attempts, or leave max_attempts "
                 "unset to let the dead-letter policy decide.",
            obj=label, id="gyrinx_tasks.W015",
        ))
    return messages


def _valid_cron(expression: object) -> bool:
    # Cloud Scheduler documents five-field unix-cron; croniter alone would also accept
    # "@daily" and a sixth (seconds) field.
    return (
        isinstance(expression, str)
        and len(expression.split()) == 5
        and croniter.is_valid(expression)
    )


def _check_unrouted_tasks(routes: tuple[TaskRoute, ...]) -> list[CheckMessage]:
    routed = {route.path for route in routes if isinstance(route.func, Task)}
    pubsub_aliases = {backend.alias for backend in _pubsub_backends()}
    messages: list[CheckMessage] = []
    for path, found in sorted(_project_tasks(routes).items()):
        if path in routed or found.backend not in pubsub_aliases:
            continue
        messages.append(
            Warning(
                f"This task uses the Pub/Sub backend {found.backend!r} but no route in "
                "TASKS_REGISTRY lists it, so enqueueing it will fail.",
                hint=f"Add TaskRoute({found.name}) to {tasks_settings.TASKS_REGISTRY}, or bind the "
                "task to another backend with @task(backend=...).",
                obj=path,
                id="gyrinx_tasks.W005",
            )
        )
    return messages


def _check_task_options(routes: tuple[TaskRoute, ...]) -> list[CheckMessage]:
    """@task(...) options PubSubBackend does not know, or a max_attempts that is no count."""
    from .health import option_problem  # health imports the models
    from .task_class import TASK_OPTIONS

    found = _project_tasks(routes)
    for route in routes:
        if isinstance(route.func, Task):
            found.setdefault(route.path, route.func)
    messages: list[CheckMessage] = []
    for path, task_ in sorted(found.items()):
        unknown = [name for name, _value in getattr(task_, "unknown_options", ())]
        if unknown:
            messages.append(Error(
                f"@task() was given option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)} that PubSubBackend does not know.",
                hint=f"The options @task() takes on PubSubBackend, beyond Django's own, are: "
                f"{', '.join(TASK_OPTIONS)}. Delivery options (ack_deadline, min_retry_delay, "
                "max_retry_delay, schedule...) go on the task's TaskRoute in the registry.",
                obj=path, id="gyrinx_tasks.E017"))
        limit = getattr(task_, "max_attempts", None)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            messages.append(Error(
                f"@task(max_attempts={limit!r}) is not a positive whole number.",
                hint="Give max_attempts as a whole number of attempts, 1 or more, or leave it "
                "out to retry for as long as Pub/Sub keeps the message.",
                obj=path, id="gyrinx_tasks.E015"))
        for name, (id_, hint) in HEALTH_OPTION_CHECKS.items():
            value = getattr(task_, name, None)
            problem = option_problem(name, value)
            if problem:
                messages.append(Error(f"@task({name}={value!r}) {problem}", hint=hint,
                                      obj=path, id=id_))
        retention = getattr(task_, "retention", None)
        if _bad_retention(retention):
            messages.append(Error(
                f"@task(retention={retention!r}) is not a timedelta of at least one hour.",
                hint="Give retention as a timedelta such as timedelta(days=90), or leave it out "
                "to keep the task's runs for TASKS_RETENTION.",
                obj=path, id="gyrinx_tasks.E032"))
    return messages


def _project_tasks(routes: tuple[TaskRoute, ...]) -> dict[str, Task]:
    """Task objects defined in installed apps' ``tasks`` modules and in routed modules."""
    from django.apps import apps

    modules = []
    for app_config in apps.get_app_configs():
        if app_config.name.startswith("django.") or app_config.name == "gyrinx_tasks":
            continue
        module = import_tasks_module(app_config.name)
        if module is not None:
            modules.append(module)
    for route in routes:
        if isinstance(route.func, Task):
            modules.append(importlib.import_module(route.func.func.__module__))
    found: dict[str, Task] = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Task):
                found.setdefault(value.module_path, value)
    return found


def import_tasks_module(app_name: str) -> Any:
    """``<app>.tasks``, or None when the app has none; a tasks module that fails raises."""
    name = f"{app_name}.tasks"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
