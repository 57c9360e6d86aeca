from django.urls import path

from . import health_view, views

app_name = "gyrinx_tasks"

urlpatterns = [
    path("pubsub/", views.pubsub_push, name="pubsub-push"),
    path("health/", health_view.health, name="health"),
]
