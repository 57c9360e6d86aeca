"""Settings for the soak's gunicorn server and driver (benchmarks/soak.py sets the env vars).

PostgreSQL and the Pub/Sub emulator are started by the soak script; their ports arrive in
SOAK_PG_PORT and PUBSUB_EMULATOR_HOST (which the Google clients read themselves).
"""

import os

SECRET_KEY = "soak-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "benchmarks.soak_site.urls"
WSGI_APPLICATION = "benchmarks.soak_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_htmx",
    "import_export",
    "gyrinx_tasks",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("SOAK_PG_PORT", "5432"),
        # A connection per request, as on Cloud Run without a pooler: the harder case.
        "CONN_MAX_AGE": 0,
    }
}

PROJECT = "soak-project"
TASKS = {
    "default": {"BACKEND": "gyrinx_tasks.backend.PubSubBackend",
                "OPTIONS": {"project_id": PROJECT}},
}
TASKS_REGISTRY = "benchmarks.soak_site.registry"
GCP_PROJECT_ID = PROJECT
TASKS_ENVIRONMENT = "soak"
CLOUD_RUN_SERVICE_URL = "http://127.0.0.1"
TASKS_SERVICE_ACCOUNT = "soak@soak-project.iam.gserviceaccount.com"
# The emulator sends no OIDC token (as in local development).
TASKS_VERIFY_OIDC = False

# The 20% failing on purpose would print a traceback each; WARNING and up still show.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "gyrinx_tasks": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "CRITICAL"},
    },
}
