"""Run by tests/test_clock_boundary.py in a pytest of its own, with GYRINX_TEST_CLOCK_AT set:
each test prints the clock it starts at. Not a test module of the suite (not ``test_*.py``)."""

import pytest
from django.utils import timezone


def test_moved():
    print(f"CLOCK moved {timezone.now().isoformat()}")


@pytest.mark.real_clock
def test_not_moved():
    print(f"CLOCK not-moved {timezone.now().isoformat()}")
