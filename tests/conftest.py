"""Shared pytest setup.

The real services the suite needs (PostgreSQL when GYRINX_TEST_DB=postgres, the Pub/Sub
emulator, Chromium) are fixtures in tests/infra/, loaded here as plugins. Fixtures that only
some tests need (tests/oidc.py, tests/fakes/) are loaded by those test modules themselves.
"""

import pytest

pytest_plugins = ["tests.infra.postgres", "tests.infra.pubsub", "tests.infra.browser"]


@pytest.fixture
def fake_publisher():
    """The default backend publishes into a FakePublisher (tests/helpers.py) for one test."""
    from django.tasks import task_backends

    from tests.helpers import FakePublisher, use_publisher

    publisher = FakePublisher()
    use_publisher(publisher)
    yield publisher
    task_backends["default"].__dict__.pop("publisher", None)
