"""The sample site: its settings load, its setup command, its home page.

Each test runs ``manage.py`` in a subprocess with ``sample_site.settings``, because the test
session itself runs on ``tests.settings``.
"""

import json
import sqlite3

from tests.helpers import manage, shell


def rows(env, sql):
    with sqlite3.connect(env["SAMPLE_SITE_DB"]) as db:
        return db.execute(sql).fetchall()


def test_settings_pass_the_system_checks(sample_site_env):
    result = manage(sample_site_env, "check")
    assert "System check identified no issues" in result.stdout


def test_tasks_run_immediately_by_default(sample_site_env):
    out = shell(sample_site_env, """
        from django.conf import settings
        print(settings.TASKS["default"]["BACKEND"], settings.TASKS_REGISTRY)
    """)
    assert out.split() == ["django.tasks.backends.immediate.ImmediateBackend",
                           "sample_site.task_registry"]


def test_emulator_mode_uses_pubsub_without_oidc(sample_site_env):
    sample_site_env.update(PUBSUB_EMULATOR_HOST="127.0.0.1:8085")
    sample_site_env.pop("GCP_PROJECT_ID", None)
    out = shell(sample_site_env, """
        import json
        from django.conf import settings
        from gyrinx_tasks.conf import tasks_settings
        print(json.dumps({"tasks": settings.TASKS, "oidc": tasks_settings.TASKS_VERIFY_OIDC,
                          "push": tasks_settings.push_endpoint}))
    """)
    found = json.loads(out)
    assert found["tasks"] == {"default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                                          "OPTIONS": {"project_id": "sample-project"}}}
    assert found["oidc"] is False
    assert found["push"] == "http://127.0.0.1:8000/tasks/pubsub/"
    assert "System check identified no issues" in manage(sample_site_env, "check").stdout


def test_registry_routes_the_sample_tasks(sample_site_env):
    out = shell(sample_site_env, """
        from gyrinx_tasks.registry import get_routes
        for r in get_routes():
            print(r.name, r.schedule or "-", r.schedule_timezone, r.enabled_env_var or "-")
    """)
    assert out.splitlines() == [
        "send_welcome_email - UTC -",
        "generate_report - UTC -",
        "flaky_sync - UTC -",
        "cleanup_old_data 0 3 * * * Europe/London -",
        "backfill_statistics */5 * * * * Europe/London ENABLE_BACKFILL_SCHEDULER",
    ]


def test_sample_setup_is_idempotent_and_creates_runs(sample_site_env):
    manage(sample_site_env, "migrate", "--verbosity", "0")

    first = manage(sample_site_env, "sample_setup")
    assert "Created the superuser 'admin' with password 'admin'." in first.stdout
    # The runs that really ran (apart from the sample history, which is marked as such).
    runs = rows(sample_site_env,
                "SELECT task_name, status, trigger FROM gyrinx_tasks_taskexecution "
                "WHERE worker_ids NOT LIKE '%sample-history%' "
                "ORDER BY task_name, trigger")
    assert runs == [("backfill_statistics", "SUCCESSFUL", "schedule"),
                    ("cleanup_old_data", "SUCCESSFUL", "enqueue"),
                    ("cleanup_old_data", "SUCCESSFUL", "schedule"),
                    ("flaky_sync", "FAILED", "enqueue"),
                    ("generate_report", "SUCCESSFUL", "enqueue"),
                    ("send_welcome_email", "SUCCESSFUL", "enqueue")]
    history = dict(rows(sample_site_env,
                        "SELECT task_name, COUNT(*) FROM gyrinx_tasks_taskexecution "
                        "WHERE worker_ids LIKE '%sample-history%' GROUP BY task_name"))
    assert history == {"backfill_statistics": 36, "cleanup_old_data": 1, "flaky_sync": 18,
                       "generate_report": 12, "send_welcome_email": 36}
    assert "Recorded 103 runs of sample history" in first.stdout
    errors = rows(sample_site_env, "SELECT errors FROM gyrinx_tasks_taskexecution "
                                   "WHERE task_name = 'flaky_sync' "
                                   "AND worker_ids NOT LIKE '%sample-history%'")
    assert json.loads(errors[0][0])[0]["exception_class_path"] == "builtins.ConnectionError"

    second = manage(sample_site_env, "sample_setup")
    assert "already exists" in second.stdout and "not enqueueing more" in second.stdout
    assert rows(sample_site_env, "SELECT username, is_superuser, is_staff FROM auth_user") == [
        ("admin", 1, 1)]
    assert rows(sample_site_env, "SELECT COUNT(*) FROM gyrinx_tasks_taskexecution") == [(109,)]

    manage(sample_site_env, "sample_setup", "--more")
    assert rows(sample_site_env, "SELECT COUNT(*) FROM gyrinx_tasks_taskexecution") == [(113,)]


def test_home_page_enqueues_a_task_and_the_admin_shows_it(sample_site_env):
    manage(sample_site_env, "migrate", "--verbosity", "0")
    manage(sample_site_env, "sample_setup")
    out = shell(sample_site_env, """
        from django.test import Client
        from django.test.utils import setup_test_environment
        from gyrinx_tasks.models import TaskExecution

        setup_test_environment()
        client = Client()
        home = client.get("/")
        print("home", home.status_code, home.content.decode().count("Enqueue</button>"))
        before = TaskExecution.objects.count()
        response = client.post("/enqueue/generate_report/", follow=True)
        print("enqueue", response.redirect_chain[0][1],
              TaskExecution.objects.count() - before,
              TaskExecution.objects.first().task_name,
              "Enqueued generate_report" in response.content.decode())
        print("unknown", client.post("/enqueue/not_a_task/").status_code)
        print("get", client.get("/enqueue/generate_report/").status_code)
        client.login(username="admin", password="admin")
        print("admin", client.get("/admin/gyrinx_tasks/taskexecution/").status_code,
              client.get("/admin/gyrinx_tasks/killswitch/add/").status_code)
    """)
    assert out.splitlines() == [
        "home 200 5",
        "enqueue 302 1 generate_report True",
        "unknown 404",
        "get 405",
        "admin 200 200",
    ]
