from django.urls import include, path

urlpatterns = [path("tasks/", include("gyrinx_tasks.urls"))]
