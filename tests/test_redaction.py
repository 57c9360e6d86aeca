"""Personal data and secrets: redact=True routes and tokens, on every surface that shows them.

A route with ``redact=True`` stores its args, kwargs and return value for the run, but the
admin (run page: payload, raw message, tracebacks) and the exports (import-export, the
admin's stream, ``manage.py tasks_export``) show "[redacted]" to staff without
``view_payload_taskexecution``, and no log line carries them. Push tokens never reach logs.
"""

import io
import logging

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.tasks import task
from django.urls import reverse

from gyrinx_tasks import TaskRoute
from gyrinx_tasks.export import TaskExecutionPayloadResource, stream_csv
from gyrinx_tasks.models import State, TaskExecution
from gyrinx_tasks.redaction import REDACTED, can_view_payload, is_redacted
from gyrinx_tasks.registry import clear_cache
from tests.helpers import envelope, export_form, make_run, parse_csv, staff_user

pytest_plugins = ["tests.oidc"]
pytestmark = pytest.mark.django_db

EMAIL = "alice.personal@example.com"
SECRET_NAME = "Alice Confidential"
CHANGE = "admin:gyrinx_tasks_taskexecution_change"
EXPORT = "admin:gyrinx_tasks_taskexecution_export"
STREAM_PAYLOAD = "admin:gyrinx_tasks_taskexecution_export_stream_payload"


@task
def welcome_member(email: str, name: str = "") -> dict:
    return {"sent_to": email, "greeting": f"Hello {name}"}


@task
def close_account(email: str) -> None:
    raise LookupError(f"no account for {email}")


@task
def public_add(x: int, y: int) -> int:
    return x + y


# This module is the registry of these tests (TASKS_REGISTRY below).
tasks = [
    TaskRoute(welcome_member, redact=True),
    TaskRoute(close_account, redact=True, min_retry_delay=1, max_retry_delay=2),
    TaskRoute(public_add),
]


@pytest.fixture(autouse=True)
def registry(settings):
    settings.TASKS_REGISTRY = "tests.test_redaction"
    settings.TASKS_VERIFY_OIDC = False
    clear_cache()
    yield
    clear_cache()


def test_a_name_shared_by_a_redacted_and_a_plain_route_stays_redacted(monkeypatch):
    # The registry's system check refuses two routes of one name; should such a registry be
    # loaded anyway, redaction still fails closed for that name.
    from tests import tasks as sample
    from tests.check_registries import same_name_tasks

    monkeypatch.setitem(globals(), "tasks", [TaskRoute(sample.add, redact=True),
                                             TaskRoute(same_name_tasks.add)])
    clear_cache()
    assert TaskRoute(same_name_tasks.add).name == TaskRoute(sample.add).name == "add"
    assert is_redacted("add")


def redacted_run(status=State.SUCCESSFUL, **fields):
    return make_run("welcome_member", status, args=[EMAIL], kwargs={"name": SECRET_NAME},
                    return_value={"sent_to": EMAIL}, **fields)


def public_run():
    return make_run("public_add", State.SUCCESSFUL, args=[EMAIL], kwargs={"y": 2},
                    return_value=7)


def viewer(client, *extra):
    user = staff_user("viewer", "view_taskexecution", *extra)
    client.force_login(user)
    return user


def leaks(text: str) -> bool:
    return EMAIL in text or SECRET_NAME in text


# --- The option and the permission ---------------------------------------------------------

def test_redact_is_off_by_default_and_per_route():
    assert TaskRoute(public_add).redact is False
    assert is_redacted("welcome_member") and is_redacted("close_account")
    assert not is_redacted("public_add")


def test_the_permission_exists_and_superusers_hold_it(django_user_model):
    assert Permission.objects.filter(codename="view_payload_taskexecution").exists()
    admin = django_user_model.objects.create_superuser("root", password="pw")
    assert can_view_payload(admin) and not is_redacted("welcome_member", admin)
    staff = staff_user("staff", "view_taskexecution")
    assert not can_view_payload(staff) and is_redacted("welcome_member", staff)
    allowed = staff_user("allowed", "view_taskexecution", "view_payload_taskexecution")
    assert can_view_payload(allowed) and not is_redacted("welcome_member", allowed)


def test_an_unreadable_registry_redacts_everything(settings):
    settings.TASKS_REGISTRY = "tests.no_such_registry_module"
    clear_cache()
    assert is_redacted("public_add") and is_redacted("anything")


# --- Admin: the run page -------------------------------------------------------------------

def test_run_page_hides_the_payload_from_staff_without_the_permission(client):
    run = redacted_run()
    viewer(client)
    page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert not leaks(page)
    assert page.count(REDACTED) >= 3  # args, kwargs, return value
    assert "Can see arguments and results of redacted tasks" in page
    # The run is stored whole: the task needed its arguments.
    run.refresh_from_db()
    assert run.args == [EMAIL] and run.return_value == {"sent_to": EMAIL}


def test_run_page_shows_the_payload_with_the_permission(client):
    run = redacted_run()
    viewer(client, "view_payload_taskexecution")
    page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert EMAIL in page and SECRET_NAME in page and REDACTED not in page


def test_superuser_sees_the_payload(admin_client):
    run = redacted_run()
    page = admin_client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert EMAIL in page and REDACTED not in page


def test_routes_without_redact_show_their_payload(client):
    run = public_run()
    viewer(client)
    page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert EMAIL in page and REDACTED not in page


def test_raw_message_and_tracebacks_of_redacted_runs_are_hidden(client):
    run = make_run(
        "close_account", State.FAILED, args=[EMAIL], attempts=1,
        raw_message=f'{{"task_name": "close_account", "args": ["{EMAIL}"]}}',
        errors=[{"exception_class_path": "builtins.LookupError", "attempt": 1,
                 "traceback": f"LookupError: no account for {EMAIL}"}])
    viewer(client, "retry_taskexecution")
    page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert not leaks(page)
    assert "builtins.LookupError" in page  # what failed stays visible
    assert "Retry" in page  # the retry panel is there, and prints no arguments either


def test_retry_panel_after_an_htmx_retry_shows_no_payload(client, fake_publisher):
    run = make_run("close_account", State.FAILED, args=[EMAIL], attempts=1)
    viewer(client, "retry_taskexecution")
    response = client.post(reverse("admin:gyrinx_tasks_taskexecution_retry", args=[run.pk]),
                           headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert TaskExecution.objects.filter(retry_of=run).exists()
    assert not leaks(response.content.decode())


# --- Exports -------------------------------------------------------------------------------

def payload_cells(rows, task_name):
    return [(row["args"], row["kwargs"], row["return_value"]) for row in rows
            if row["task_name"] == task_name]


def test_import_export_redacts_without_the_permission(client):
    redacted_run()
    public_run()
    viewer(client, "export_taskexecution")
    response = client.post(reverse(EXPORT), export_form(resource=1))
    assert response.status_code == 200
    rows = parse_csv(response.content.decode())
    assert payload_cells(rows, "welcome_member") == [(REDACTED, REDACTED, REDACTED)]
    assert payload_cells(rows, "public_add") == [(f'["{EMAIL}"]', '{"y": 2}', "7")]


def test_import_export_reveals_with_the_permission(client):
    redacted_run()
    viewer(client, "export_taskexecution", "view_payload_taskexecution")
    response = client.post(reverse(EXPORT), export_form(resource=1))
    rows = parse_csv(response.content.decode())
    assert payload_cells(rows, "welcome_member") == [
        (f'["{EMAIL}"]', f'{{"name": "{SECRET_NAME}"}}', f'{{"sent_to": "{EMAIL}"}}')]


def test_resource_and_stream_agree_cell_for_cell():
    from import_export.formats.base_formats import CSV

    redacted_run()
    public_run()
    queryset = TaskExecution.objects.all()
    for reveal in (False, True):
        dataset = TaskExecutionPayloadResource(reveal_redacted=reveal).export(queryset)
        streamed = "".join(stream_csv(queryset, include_payload=True, reveal_redacted=reveal))
        assert CSV().export_data(dataset) == streamed
        cells = payload_cells(parse_csv(streamed), "welcome_member")
        assert (cells == [(REDACTED, REDACTED, REDACTED)]) is not reveal
        assert (f'["{EMAIL}"]' in cells[0]) is reveal
    # Hidden unless asked for: the default of every caller that does not know the user.
    default = "".join(stream_csv(queryset, include_payload=True))
    assert payload_cells(parse_csv(default), "welcome_member") == [(REDACTED, REDACTED, REDACTED)]


def test_admin_stream_redacts_without_the_permission(client):
    redacted_run()
    viewer(client, "export_taskexecution")
    response = client.post(reverse(STREAM_PAYLOAD))
    text = b"".join(response.streaming_content).decode()
    assert not leaks(text)
    assert payload_cells(parse_csv(text), "welcome_member") == [(REDACTED, REDACTED, REDACTED)]


def test_admin_stream_reveals_with_the_permission(client):
    redacted_run()
    viewer(client, "export_taskexecution", "view_payload_taskexecution")
    text = b"".join(client.post(reverse(STREAM_PAYLOAD)).streaming_content).decode()
    assert EMAIL in text and SECRET_NAME in text


def export_command(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("tasks_export", *args, stdout=out, stderr=err)
    return out.getvalue()


def test_command_redacts_unless_include_redacted():
    redacted_run()
    public_run()
    text = export_command("--include-payload")
    assert payload_cells(parse_csv(text), "welcome_member") == [(REDACTED, REDACTED, REDACTED)]
    assert payload_cells(parse_csv(text), "public_add") == [(f'["{EMAIL}"]', '{"y": 2}', "7")]
    revealed = export_command("--include-payload", "--include-redacted")
    assert payload_cells(parse_csv(revealed), "welcome_member") == [
        (f'["{EMAIL}"]', f'{{"name": "{SECRET_NAME}"}}', f'{{"sent_to": "{EMAIL}"}}')]


def test_command_include_redacted_needs_include_payload():
    with pytest.raises(CommandError, match="add --include-payload"):
        export_command("--include-redacted")


def test_command_writes_redacted_files_too(tmp_path):
    redacted_run()
    target = tmp_path / "runs.csv"
    export_command("--include-payload", "-o", str(target))
    assert not leaks(target.read_text())
    export_command("--include-payload", "--include-redacted", "-o", str(target))
    assert EMAIL in target.read_text()


# --- Logs ----------------------------------------------------------------------------------

@pytest.fixture
def all_logs(caplog):
    """Every log record from every logger, DEBUG and up, formatted with tracebacks."""
    caplog.set_level(logging.DEBUG)
    # Loggers the project configures with their own level would otherwise drop DEBUG.
    for name in ("gyrinx_tasks", "django.tasks", "django.request"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def push(client, payload, message_id, **headers):
    return client.post("/tasks/pubsub/", envelope(payload, message_id),
                       content_type="application/json", headers=headers)


def test_redacted_payload_never_reaches_the_logs(client, all_logs):
    # Ran, redelivered, raised (twice: Django logs failed tasks with their exception), and
    # rejected because the arguments do not fit.
    ran = {"task_id": "t-ran", "task_name": "welcome_member", "args": [EMAIL],
           "kwargs": {"name": SECRET_NAME}}
    assert push(client, ran, "m-1").status_code == 200
    assert push(client, ran, "m-2").status_code == 200  # duplicate
    raised = {"task_id": "t-raised", "task_name": "close_account", "args": [EMAIL],
              "kwargs": {}}
    assert push(client, raised, "m-3").status_code == 500
    assert push(client, raised, "m-4").status_code == 500
    unfit = {"task_id": "t-unfit", "task_name": "welcome_member", "args": [EMAIL],
             "kwargs": {"nickname": SECRET_NAME}}
    assert push(client, unfit, "m-5").status_code == 200
    statuses = dict(TaskExecution.objects.values_list("task_id", "status"))
    assert statuses == {"t-ran": State.SUCCESSFUL, "t-raised": State.FAILED,
                        "t-unfit": State.REJECTED}
    # The records happened (so the check below looks at something) ...
    assert any(r.name == "django.tasks" and r.levelno == logging.ERROR
               for r in all_logs.records)
    assert any("Rejected Pub/Sub delivery" in r.getMessage() for r in all_logs.records)
    # ... and carry neither the arguments nor the exception quoting them.
    assert not leaks(all_logs.text)
    assert "not logged: the route has redact=True" in all_logs.text


def test_failed_tasks_of_other_routes_keep_their_traceback_in_the_log(client, all_logs):
    # The filter only touches redacted routes: others still log their exception.
    payload = {"task_id": "t-public", "task_name": "public_add", "args": ["a", 1], "kwargs": {}}
    assert push(client, payload, "m-9").status_code == 500
    assert "TypeError" in all_logs.text and "Traceback" in all_logs.text


@pytest.mark.parametrize("registry", ["no_such_module", "raises_on_import"])
def test_while_the_registry_cannot_be_loaded_no_failed_tasks_exception_is_logged(settings,
                                                                                registry):
    # Which routes are redacted cannot be known then, so the log filter fails closed. A module
    # that raises something other than ImportError (here AttributeError) is no exception: the
    # filter runs inside every "django.tasks" log call, so an error escaping it would break them.
    from gyrinx_tasks.redaction import RedactedTaskLogFilter

    settings.TASKS_REGISTRY = f"tests.check_registries.{registry}"
    clear_cache()
    error = LookupError(f"no account for {EMAIL}")
    record = logging.LogRecord("django.tasks", logging.ERROR, __file__, 1, "Task id=%s path=%s "
                               "state=%s", ("t-1", "tests.tasks.add", "FAILED"),
                               (LookupError, error, None))

    assert RedactedTaskLogFilter().filter(record)
    assert record.exc_info is None and "exception not logged" in record.getMessage()
    # And every run's payload is redacted, of whatever task.
    assert is_redacted("add") and is_redacted("public_add")


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda o, t: f"Bearer {t}", id="bearer, wrong audience"),
        pytest.param(lambda o, t: t, id="token without scheme"),
        pytest.param(lambda o, t: f"Token {t}", id="other scheme"),
        pytest.param(lambda o, t: f"Bearer {t} {t}", id="two tokens"),
        pytest.param(lambda o, t: f"Bearer {t[:-5]}", id="cut signature"),
        pytest.param(lambda o, t: f"Bearer {t.replace('.', '!', 1)}", id="not a JWT"),
    ],
)
def test_tokens_never_reach_the_logs(client, settings, oidc, all_logs, make_header):
    settings.TASKS_VERIFY_OIDC = True
    token = oidc.token(aud="https://other.example/tasks/pubsub/")
    payload = {"task_id": "t-token", "task_name": "public_add", "args": [1, 2], "kwargs": {}}
    response = client.post("/tasks/pubsub/", envelope(payload, "m-t"),
                           content_type="application/json",
                           headers={"Authorization": make_header(oidc, token)})
    assert response.status_code == 403
    assert all_logs.records  # the refusal was logged ...
    logged = all_logs.text
    # ... without the token, its signature, or its first 20 characters.
    header, claims, signature = token.split(".")
    for secret in (token, signature, claims, token[:20]):
        assert secret not in logged


def test_expired_and_badly_signed_tokens_are_not_logged(client, settings, oidc, all_logs):
    settings.TASKS_VERIFY_OIDC = True
    payload = {"task_id": "t-token", "task_name": "public_add", "args": [1, 2], "kwargs": {}}
    tokens = [oidc.token(iat=1_600_000_000, exp=1_600_003_600), oidc.other_key_token(),
              oidc.token(email="someone@else.iam.gserviceaccount.com")]
    for token in tokens:
        response = client.post("/tasks/pubsub/", envelope(payload, "m-t"),
                               content_type="application/json",
                               headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403
        assert token not in all_logs.text and token.split(".")[2] not in all_logs.text
    assert len(all_logs.records) >= len(tokens)


# --- In the browser ------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_browser_run_page_of_a_redacted_task(page, live_server):
    from tests.infra.browser import log_in, save_screenshot

    run = make_run(
        "close_account", State.FAILED, args=[EMAIL], kwargs={"reason": SECRET_NAME},
        attempts=1, message_id="2001",
        errors=[{"exception_class_path": "builtins.LookupError", "attempt": 1,
                 "at": "2026-11-23T10:00:01+00:00",
                 "traceback": f"Traceback ...\nLookupError: no account for {EMAIL}"}])
    staff_user("support", "view_taskexecution", "retry_taskexecution")
    log_in(page, live_server.url, "support", "pw")
    page.goto(f"{live_server.url}{reverse(CHANGE, args=[run.pk])}")
    text = page.inner_text("#content")
    assert not leaks(text)
    assert text.count(REDACTED) >= 3 and "builtins.LookupError" in text
    assert page.locator(".gyrinx-retry-button").count() == 1  # retrying needs no payload
    # Nothing is cut off at 1400 px: the redaction note wraps inside its box.
    overflow = page.evaluate("""() => [...document.querySelectorAll('.gyrinx-pre')]
        .filter(el => el.scrollWidth > el.clientWidth + 1).length""")
    assert overflow == 0
    save_screenshot(page, "run-detail-redacted")
    save_screenshot(page, "run-detail-redacted", dark=True)


def test_an_unreadable_registry_redacts_every_export(settings):
    # The exports must fail closed too, not only the run page.
    redacted_run()
    public_run()
    settings.TASKS_REGISTRY = "tests.no_such_registry_module"
    clear_cache()
    streamed = "".join(stream_csv(TaskExecution.objects.all(), include_payload=True))
    assert not leaks(streamed)
    assert payload_cells(parse_csv(streamed), "public_add") == [(REDACTED, REDACTED, REDACTED)]


@pytest.mark.parametrize("lookup", [
    f"kwargs__name={SECRET_NAME}", "args__icontains=example", "return_value__contains=x",
    "raw_message__icontains=a", "errors__icontains=Error", "timeline__icontains=enqueued",
])
def test_payload_columns_cannot_be_filtered_through_the_url(client, lookup):
    # Otherwise staff without the permission could test a redacted value guess by guess.
    redacted_run()
    viewer(client, "export_taskexecution")
    changelist = reverse("admin:gyrinx_tasks_taskexecution_changelist")
    for url, method in ((changelist, client.get), (reverse(STREAM_PAYLOAD), client.post)):
        response = method(f"{url}?{lookup}")
        assert response.status_code in (302, 400), (url, response.status_code)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert not leaks(body.decode())


# --- Failing closed: runs of no route in the registry (issue 17, item 9) ---------------------
# Before: only names listed with redact=True were hidden, so a run rejected before its name
# was read, or of a route since renamed or removed, showed its payload to every viewer.

def orphan_runs():
    """A rejected run without a task name, and a run of a route renamed since it ran."""
    nameless = make_run("", State.REJECTED, raw_message=f'{{"args": ["{EMAIL}"]}}',
                        status_detail="The task message has no usable 'task_name'.")
    renamed = make_run("send_welcome_v1", State.SUCCESSFUL, args=[EMAIL],
                       kwargs={"name": SECRET_NAME}, return_value={"sent_to": EMAIL})
    return nameless, renamed


@pytest.mark.parametrize("name", ["", None, "not_in_the_registry", "welcome_member_old"])
def test_runs_of_no_registered_route_are_redacted(name, django_user_model):
    assert is_redacted(name)
    allowed = staff_user("allowed", "view_taskexecution", "view_payload_taskexecution")
    assert not is_redacted(name, allowed)


def test_run_page_redacts_runs_of_no_registered_route(client):
    nameless, renamed = orphan_runs()
    viewer(client)
    for run in (nameless, renamed):
        page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
        assert not leaks(page), run.task_name
        assert "is not in TASKS_REGISTRY" in page
        assert "Can see arguments and results of redacted tasks" in page


def test_run_page_shows_runs_of_no_registered_route_with_the_permission(client):
    nameless, renamed = orphan_runs()
    viewer(client, "view_payload_taskexecution")
    assert EMAIL in client.get(reverse(CHANGE, args=[nameless.pk])).content.decode()
    assert SECRET_NAME in client.get(reverse(CHANGE, args=[renamed.pk])).content.decode()


def test_exports_redact_runs_of_no_registered_route(client):
    orphan_runs()
    public_run()
    viewer(client, "export_taskexecution")
    exported = client.post(reverse(EXPORT), export_form(resource=1)).content.decode()
    streamed = b"".join(client.post(reverse(STREAM_PAYLOAD)).streaming_content).decode()
    command = export_command("--include-payload")
    for text in (exported, streamed, command):
        rows = parse_csv(text)
        for name in ("", "send_welcome_v1"):
            assert payload_cells(rows, name) == [(REDACTED, REDACTED, REDACTED)], name
        # A registered route without redact is still shown.
        assert payload_cells(rows, "public_add") == [(f'["{EMAIL}"]', '{"y": 2}', "7")]
    revealed = export_command("--include-payload", "--include-redacted")
    assert SECRET_NAME in revealed


def test_an_unreadable_registry_names_itself_on_the_run_page(client, settings):
    run = public_run()
    settings.TASKS_REGISTRY = "tests.no_such_registry_module"
    clear_cache()
    viewer(client)
    page = client.get(reverse(CHANGE, args=[run.pk])).content.decode()
    assert not leaks(page) and "TASKS_REGISTRY cannot be loaded" in page
