"""One test per system-check id (docs/checks.md), plus the good configuration passing clean."""

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django_htmx.middleware import HtmxMiddleware

from gyrinx_tasks import registry
from gyrinx_tasks.checks import import_tasks_module

REGISTRIES = "tests.check_registries"


@pytest.fixture(autouse=True)
def fresh_registry():
    # Routes are cached per registry path; tests that swap TASKS_REGISTRY start and end clean.
    registry.clear_cache()
    yield
    registry.clear_cache()


def ours(deploy=False):
    # databases=[]: Django's model checks would otherwise open a connection (JSONField).
    messages = checks.run_checks(include_deployment_checks=deploy, databases=[])
    return [m for m in messages if (m.id or "").startswith("gyrinx_tasks.")]


def ids(deploy=False):
    return sorted(m.id for m in ours(deploy))


def use_registry(settings, name):
    settings.TASKS_REGISTRY = f"{REGISTRIES}.{name}"


# --- the good configuration -----------------------------------------------------------------


def test_good_registry_reports_nothing(settings):
    assert settings.TASKS_REGISTRY == "tests.registry"
    assert ours() == []


def test_good_settings_pass_deploy_checks(settings):
    settings.DEBUG = False
    assert ours(deploy=True) == []


def test_immediate_backend_tasks_need_no_route():
    # tests.tasks binds immediate_add/immediate_explode to ImmediateBackend, unrouted on purpose.
    assert "tests.tasks.immediate_add" not in {r.path for r in registry.get_routes()}
    assert "gyrinx_tasks.W005" not in ids()


# --- registry loading -----------------------------------------------------------------------


def test_e001_registry_not_set(settings, monkeypatch):
    monkeypatch.delenv("TASKS_REGISTRY", raising=False)
    settings.TASKS_REGISTRY = ""
    [message] = ours()
    assert message.id == "gyrinx_tasks.E001"
    assert "TASKS_REGISTRY" in message.hint


@pytest.mark.parametrize(
    "name, expected",
    [
        ("does_not_exist", "cannot be imported"),
        ("single_route", "must define `tasks` as a list of TaskRoute"),
        ("bare_task", "which is not a TaskRoute"),
        ("raises_on_import", "raised AttributeError while loading"),
    ],
)
def test_e002_registry_cannot_be_loaded(settings, name, expected):
    use_registry(settings, name)
    [message] = ours()  # route-level checks are skipped, not crashed
    assert message.id == "gyrinx_tasks.E002"
    assert expected in message.msg
    assert message.hint


# --- route-level checks ---------------------------------------------------------------------


def test_e003_duplicate_route_names(settings):
    use_registry(settings, "duplicate_names")
    [message] = ours()
    assert message.id == "gyrinx_tasks.E003"
    assert "tests.tasks.add" in message.msg
    assert "tests.check_registries.same_name_tasks.add" in message.msg


def test_e004_route_func_is_not_a_task(settings):
    use_registry(settings, "plain_function")
    [message] = ours()
    assert message.id == "gyrinx_tasks.E004"
    assert message.obj == "tests.check_registries.plain_function.not_a_task"
    assert "@task" in message.hint


def test_w005_unrouted_pubsub_task(settings):
    use_registry(settings, "unrouted")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.W005"]
    [message] = messages
    assert message.level == checks.WARNING
    # forgotten_job is bound to the Pub/Sub backend; local_job to ImmediateBackend.
    assert message.obj == "tests.check_registries.unrouted_tasks.forgotten_job"
    assert "TaskRoute(forgotten_job)" in message.hint


def test_w005_covers_installed_apps_tasks_modules(settings):
    # The registry imports nothing from tests/tasks.py; the "tests" app's tasks are found anyway,
    # except the two bound to ImmediateBackend.
    use_registry(settings, "other_module_only")
    messages = ours()
    assert {m.id for m in messages} == {"gyrinx_tasks.W005"}
    assert {m.obj for m in messages} == {
        "tests.tasks.add",
        "tests.tasks.echo",
        "tests.tasks.explode",
        "tests.tasks.flaky",
        "tests.tasks.report_attempt",
        "tests.tasks.in_transaction",
        "tests.tasks.nightly_cleanup",
    }


def test_e006_ack_deadline_out_of_range(settings):
    use_registry(settings, "ack_deadline")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.E006"] * 2
    assert {m.obj for m in messages} == {"tests.tasks.add", "tests.tasks.echo"}


def test_e007_min_retry_delay_above_max(settings):
    use_registry(settings, "retry_order")
    [message] = ours()
    assert message.id == "gyrinx_tasks.E007"
    assert message.obj == "tests.tasks.add"


def test_e008_invalid_cron(settings):
    use_registry(settings, "bad_cron")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.E008"] * 3
    assert {m.obj for m in messages} == {
        "tests.tasks.add",
        "tests.tasks.echo",
        "tests.tasks.nightly_cleanup",
    }


def test_e009_unknown_timezone(settings):
    use_registry(settings, "bad_timezone")
    [message] = ours()
    assert message.id == "gyrinx_tasks.E009"
    assert "Europe/Londn" in message.msg


@pytest.mark.parametrize("env", ["prod_eu", "1prod", "prod--eu", "prod-", "goog-prod", "pröd"])
def test_e010_environment_unusable_in_resource_names(settings, env):
    settings.TASKS_ENVIRONMENT = env
    assert ids() == ["gyrinx_tasks.E010"]


@pytest.mark.parametrize("env", ["prod", "staging", "dev", "eu-west-2", "Test1"])
def test_e010_accepts_ordinary_environment_names(settings, env):
    settings.TASKS_ENVIRONMENT = env
    assert ids() == []


def test_e011_retry_delay_out_of_range(settings):
    use_registry(settings, "retry_range")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.E011"] * 2
    assert {m.obj for m in messages} == {"tests.tasks.add", "tests.tasks.echo"}


def test_e012_unknown_backend_option(settings):
    settings.TASKS = {
        **settings.TASKS,
        "default": {
            "BACKEND": "gyrinx_tasks.backend.PubSubBackend",
            "OPTIONS": {"project_id": "test-project", "projcet_id": "typo"},
        },
    }
    [message] = ours()
    assert message.id == "gyrinx_tasks.E012"
    assert "projcet_id" in message.msg


def test_e013_dead_letter_attempts_out_of_range(settings):
    use_registry(settings, "dead_letter")
    [message] = ours()  # echo's 5 attempts are fine
    assert message.id == "gyrinx_tasks.E013"
    assert message.obj == "tests.tasks.add"


def test_e015_max_attempts_not_a_whole_number_of_at_least_one(settings):
    use_registry(settings, "bad_max_attempts")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.E015"] * 3
    assert {m.obj for m in messages} == {"tests.tasks.add", "tests.tasks.echo",
                                         "tests.tasks.explode"}


# --- deploy checks --------------------------------------------------------------------------


def test_e101_oidc_off_outside_debug(settings):
    settings.DEBUG = False
    settings.TASKS_VERIFY_OIDC = False
    assert ids(deploy=True) == ["gyrinx_tasks.E101"]
    settings.DEBUG = True  # the emulator set-up: allowed
    assert ids(deploy=True) == []


# "runs" too: the check command looks at every database alias (tests/settings.py has two,
# on one SQLite file, so without a transaction each: two would wait for each other).
@pytest.mark.django_db(transaction=True, databases=["default", "runs"])
def test_check_deploy_command_reports_e101(settings):
    settings.DEBUG = False
    settings.TASKS_VERIFY_OIDC = False
    with pytest.raises(SystemCheckError, match=r"gyrinx_tasks\.E101"):
        call_command("check", deploy=True)


def test_e102_no_gcp_project(settings, monkeypatch):
    monkeypatch.delenv("GCP_PROJECT_ID", raising=False)
    settings.GCP_PROJECT_ID = ""
    settings.TASKS = {
        **settings.TASKS,
        "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend"},
    }
    assert ids(deploy=True) == ["gyrinx_tasks.E102"]


def test_e102_gcp_project_setting_is_enough(settings):
    settings.TASKS = {
        **settings.TASKS,
        "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend"},
    }
    assert settings.GCP_PROJECT_ID == "test-project"
    assert ids(deploy=True) == []


@pytest.mark.parametrize("url", ["", "http://tasks.example.com", "tasks.example.com"])
def test_e103_service_url_missing(settings, monkeypatch, url):
    monkeypatch.delenv("CLOUD_RUN_SERVICE_URL", raising=False)
    settings.CLOUD_RUN_SERVICE_URL = url
    assert ids(deploy=True) == ["gyrinx_tasks.E103"]


def test_e104_service_account_missing(settings, monkeypatch):
    monkeypatch.delenv("TASKS_SERVICE_ACCOUNT", raising=False)
    settings.TASKS_SERVICE_ACCOUNT = ""
    assert ids(deploy=True) == ["gyrinx_tasks.E104"]


def test_deploy_checks_skip_projects_without_pubsub(settings):
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    settings.TASKS_VERIFY_OIDC = False
    settings.CLOUD_RUN_SERVICE_URL = ""
    assert "gyrinx_tasks.E101" not in ids(deploy=True)
    assert "gyrinx_tasks.E103" not in ids(deploy=True)


# --- helpers --------------------------------------------------------------------------------


def test_missing_tasks_module_is_skipped_but_broken_one_raises():
    assert import_tasks_module(REGISTRIES) is None
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        import_tasks_module(f"{REGISTRIES}.broken_app")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")  # only settings are read
def test_w014_sqlite_without_immediate_transactions(settings):
    settings.DATABASES = {
        "default": {**settings.DATABASES["default"], "ENGINE": "django.db.backends.sqlite3",
                    "OPTIONS": {}},
    }
    assert ids() == ["gyrinx_tasks.W014"]
    settings.DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
    assert ids() == []
    settings.DATABASES["default"]["OPTIONS"] = {}
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    assert "gyrinx_tasks.W014" not in ids()  # nothing is pushed without a PubSubBackend


def test_e021_schedule_tolerance_not_a_whole_number_of_seconds(settings):
    use_registry(settings, "bad_schedule_tolerance")
    messages = ours()
    assert [m.id for m in messages] == ["gyrinx_tasks.E021"] * 3
    assert {m.obj for m in messages} == {"tests.tasks.add", "tests.tasks.echo",
                                         "tests.tasks.explode"}
    assert all(m.hint and "TASKS_SCHEDULE_TOLERANCE" in m.hint for m in messages)


@pytest.mark.parametrize("value", [0, -5, "ten minutes", "1.5", True])
def test_e020_schedule_tolerance_setting_not_a_positive_number_of_seconds(settings, value):
    settings.TASKS_SCHEDULE_TOLERANCE = value
    [message] = ours()
    assert message.id == "gyrinx_tasks.E020"
    assert "TASKS_SCHEDULE_TOLERANCE" in message.msg and "300" in message.hint


@pytest.mark.parametrize("value", [1, 900, "600"])
def test_e020_accepts_a_positive_number_of_seconds(settings, value):
    settings.TASKS_SCHEDULE_TOLERANCE = value  # an environment variable arrives as text
    assert ids() == []


class ProjectHtmxMiddleware(HtmxMiddleware):
    """A project's own subclass, which sets request.htmx as the original does."""


def test_e016_htmx_middleware_missing(settings):
    htmx = "django_htmx.middleware.HtmxMiddleware"
    assert htmx in settings.MIDDLEWARE and "gyrinx_tasks.E016" not in ids()
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != htmx]
    [message] = [m for m in ours() if m.id == "gyrinx_tasks.E016"]
    assert isinstance(message, checks.Error)
    assert "HtmxMiddleware is not in MIDDLEWARE" in message.msg
    assert htmx in message.hint and '"django_htmx" to INSTALLED_APPS' in message.hint
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.ProjectHtmxMiddleware"]
    assert "gyrinx_tasks.E016" not in ids()


def test_e016_not_reported_without_the_admin(settings):
    settings.MIDDLEWARE = []
    assert "gyrinx_tasks.E016" in ids()
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django.contrib.admin"]
    assert "gyrinx_tasks.E016" not in ids()  # the push endpoint alone never reads request.htmx
