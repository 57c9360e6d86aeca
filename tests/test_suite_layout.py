"""The test suite's own layout (docs/testing.md, "Where the tests are").

Test modules share fixtures and factories only through tests/conftest.py and tests/helpers.py:
no test module imports from another, and no module writes out again a fixture conftest.py
gives every test. Tests are named by behaviour, not by how they were found.
"""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# conftest.py's fixtures that a module must not define again under the same name.
CONFTEST_FIXTURES = {"no_oidc", "calls", "fake_publisher", "options_registry",
                     "fresh_unrecorded", "route_through_emulator", "sample_site_env"}


def module_paths() -> list[Path]:
    return sorted(TESTS.glob("test_*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_no_test_module_imports_from_another():
    found = [
        f"{path.name} imports {name}"
        for path in module_paths()
        for name in imported_modules(ast.parse(path.read_text()))
        if name.startswith("tests.test_")
    ]
    assert found == [], "move what is shared to tests/conftest.py or tests/helpers.py"


def test_the_shared_fixtures_are_defined_once_in_conftest():
    found = [
        f"{path.name} defines {node.name}"
        for path in module_paths()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name in CONFTEST_FIXTURES
    ]
    assert found == []
    conftest = {node.name for node in ast.parse((TESTS / "conftest.py").read_text()).body
                if isinstance(node, ast.FunctionDef)}
    assert CONFTEST_FIXTURES <= conftest


def test_no_test_file_is_named_after_how_its_tests_were_found():
    names = [path.name for path in module_paths()]
    assert [name for name in names
            if name.startswith("test_mutants") or name == "test_regressions.py"] == []


def test_every_test_module_is_in_the_behaviour_map_of_docs_testing():
    # A newcomer looks a behaviour up in docs/testing.md's table; a module missing from it is
    # a test nobody finds.
    guide = (TESTS.parent / "docs" / "testing.md").read_text()
    missing = [path.name for path in module_paths() if f"{path.name}`" not in guide]
    assert missing == []
