"""docs/delivery.md maps each of issue 16's behaviours to tests: every test it names exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Issue 16's behaviours and the tests that show them"


def named_tests() -> dict[int, list[tuple[str, str]]]:
    """Per behaviour, the (file, test name) pairs the table names; name "" for a whole file."""
    section = (ROOT / "docs" / "delivery.md").read_text().split(HEADING, 1)[1]
    found: dict[int, list[tuple[str, str]]] = {}
    for line in section.splitlines():
        row = re.match(r"\| (\d+) \|", line)
        if not row:
            continue
        current = ""
        for token in re.findall(r"`([^`]+)`", line.rsplit(" | ", 1)[1]):
            if token.startswith("::"):
                found.setdefault(int(row.group(1)), []).append((current, token[2:]))
            elif token.endswith(".py") or "::" in token:
                current, _, name = token.partition("::")
                found.setdefault(int(row.group(1)), []).append((current, name))
    return found


def test_every_behaviour_names_tests_that_exist():
    found = named_tests()
    assert sorted(found) == list(range(1, 17))
    for behaviour, tests in found.items():
        for path, name in tests:
            source = ROOT / "tests" / path
            assert source.exists(), f"behaviour {behaviour}: no {path}"
            defined = {node.name for node in ast.walk(ast.parse(source.read_text()))
                       if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
            assert defined, f"behaviour {behaviour}: {path} has no tests"
            assert not name or name in defined, f"behaviour {behaviour}: no {path}::{name}"
