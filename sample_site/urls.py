from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("enqueue/<str:name>/", views.enqueue, name="enqueue"),
    path("admin/", admin.site.urls),
    path("tasks/", include("gyrinx_tasks.urls")),
]
