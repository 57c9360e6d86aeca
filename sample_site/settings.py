"""Settings for the sample site. Everything can be changed with environment variables.

By default tasks run at once, in the request, on Django's ImmediateBackend, and runs are
recorded through task signals. With PUBSUB_EMULATOR_HOST set (scripts/sample-emulator.sh)
they travel through the official Pub/Sub emulator, which pushes them back to runserver.
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in {"", "0", "false", "no", "off"}


SECRET_KEY = env("DJANGO_SECRET_KEY", "sample-site-only-not-secret")
DEBUG = env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "sample_site.urls"
WSGI_APPLICATION = "sample_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = env("TIME_ZONE", "Europe/London")

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
    "sample_site",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("SAMPLE_SITE_DB", str(BASE_DIR / "sample_site" / "db.sqlite3")),
        # Pushes arrive concurrently in emulator mode; IMMEDIATE makes writers queue for
        # SQLite's lock instead of failing at once (see docs/performance.md).
        "OPTIONS": {"transaction_mode": "IMMEDIATE"},
    }
}

# Mail (health alerts, ADMINS) is printed, not sent. Django 6.1 configures it with MAILERS and
# deprecates EMAIL_BACKEND (the two together are an error there); Django 6.0 has only
# EMAIL_BACKEND.
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "sample-site@example.com"

# gyrinx_tasks
TASKS_REGISTRY = "sample_site.task_registry"
GCP_PROJECT_ID = env("GCP_PROJECT_ID", "sample-project")
TASKS_ENVIRONMENT = env("TASKS_ENVIRONMENT", "dev")
# Where push subscriptions deliver: runserver itself when running locally.
CLOUD_RUN_SERVICE_URL = env("CLOUD_RUN_SERVICE_URL", f"http://127.0.0.1:{env('PORT', '8000')}")
SCHEDULER_LOCATION = env("SCHEDULER_LOCATION", "europe-west2")

PUBSUB_EMULATOR_HOST = env("PUBSUB_EMULATOR_HOST")
if PUBSUB_EMULATOR_HOST:
    TASKS = {
        "default": {
            "BACKEND": "gyrinx_tasks.backend.PubSubBackend",
            "OPTIONS": {"project_id": GCP_PROJECT_ID},
        }
    }
    # The emulator sends no OIDC tokens. Only this local path may turn verification off.
    TASKS_VERIFY_OIDC = False
else:
    TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"gyrinx_tasks": {"handlers": ["console"], "level": "INFO"}},
}
