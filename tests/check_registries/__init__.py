"""Registries with one deliberate mistake each, for tests/test_checks.py.

Each starts from the good test registry and swaps one route for a misconfigured one, so a
test can assert that exactly the expected check ids, and nothing else, are reported.
"""

from tests.registry import tasks as GOOD_ROUTES


def good_routes_except(*names: str) -> list:
    return [route for route in GOOD_ROUTES if route.name not in names]
