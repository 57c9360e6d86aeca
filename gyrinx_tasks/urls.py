from django.urls import path

from . import views

app_name = "gyrinx_tasks"

urlpatterns = [
    path("pubsub/", views.pubsub_push, name="pubsub-push"),
]
