"""A view that enqueues inside its request's transaction (ATOMIC_REQUESTS), then registers
another on_commit callback, as a shop's order view would: tests/test_enqueue_paths.py."""

from django.db import transaction
from django.http import HttpResponse
from django.urls import path

from tests import tasks


def order(request):
    result = tasks.add.enqueue(int(request.POST["x"]), int(request.POST["y"]))

    def confirm() -> None:
        request.confirmation_sent = True

    transaction.on_commit(confirm)
    return HttpResponse(result.id)


urlpatterns = [path("order/", order)]
