"""Shared pytest setup.

The real services the suite needs (PostgreSQL when GYRINX_TEST_DB=postgres, the Pub/Sub
emulator, Chromium) are fixtures in tests/infra/, loaded here as plugins. Fixtures that only
some tests need (tests/oidc.py, tests/fakes/) are loaded by those test modules themselves.
"""

pytest_plugins = ["tests.infra.postgres", "tests.infra.pubsub", "tests.infra.browser"]
