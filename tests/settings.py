"""Settings for the test suite. GYRINX_TEST_DB=postgres runs it on PostgreSQL."""

import os
import tempfile

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "import_export",
    "gyrinx_tasks",
    "tests",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"
# Email: Django 6.1 sends through MAILERS (its "default" entry; without one it warns that
# Django 2028 will not have a default mailer), Django 6.0 ignores the setting. The test
# runner puts the in-memory backend (mail.outbox) in place of every mailer on both.
MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}

if os.environ.get("GYRINX_TEST_DB") == "postgres":
    # Host and port are filled in by tests/infra/postgres.py, which starts its own server.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "gyrinx_tasks",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("GYRINX_TEST_PG_PORT", "5432"),
        }
    }
else:
    # A file, not :memory:, so live-server threads use their own connections like real ones.
    _sqlite = os.path.join(tempfile.gettempdir(), f"gyrinx-tasks-test-{os.getpid()}.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite,
            "TEST": {"NAME": _sqlite},
            "OPTIONS": {"transaction_mode": "IMMEDIATE"},
        }
    }

# A second alias on the same database, for projects that route the runs' table elsewhere
# (tests/test_delivery_life.py routes TaskExecution to it). Only tests that list it in
# django_db(databases=...) may use it.
DATABASES["runs"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}

TASKS = {
    "default": {
        "BACKEND": "gyrinx_tasks.backend.PubSubBackend",
        "OPTIONS": {"project_id": "test-project"},
    },
    "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
}
TASKS_REGISTRY = "tests.registry"
GCP_PROJECT_ID = "test-project"
TASKS_ENVIRONMENT = "test"
CLOUD_RUN_SERVICE_URL = "https://tasks-test.example.run.app"
TASKS_SERVICE_ACCOUNT = "pubsub-invoker@test-project.iam.gserviceaccount.com"
TASKS_VERIFY_OIDC = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"gyrinx_tasks": {"handlers": ["console"], "level": "WARNING"}},
}
