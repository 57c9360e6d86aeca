"""The documentation: README's links and size, and the MkDocs site's strict build.

CI builds the site itself (scripts/test.sh, `mkdocs build --strict`); these tests show that the
configuration really fails that build on a broken link, a missing anchor or a page left out of
the nav, and keep README's copy of the push-endpoint table equal to the docs' one.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_short_and_its_relative_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md is a summary; move detail to docs/"
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            broken.append(target)
    assert not broken, f"README.md links to missing files: {broken}"


def push_table(path: Path) -> str:
    text = path.read_text()
    start = text.index("| situation | status | `outcome` |")
    return text[start : text.index("\n\n", start)]


def test_readme_push_table_is_the_docs_table():
    assert push_table(README) == push_table(ROOT / "docs" / "push-endpoint.md")


def build(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        # Not -q: mkdocs then drops warnings before strict mode can count them.
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "-f", str(site / "mkdocs.yml"), "-d", str(site / "site")],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def docs_copy(tmp_path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


@pytest.mark.parametrize(
    "change, complaint",
    [
        ("See [the gone page](no-such-page.md).", "no-such-page.md"),
        ("See [a section](checks.md#no-such-section).", "no-such-section"),
    ],
)
def test_strict_build_fails_on_a_broken_link(docs_copy, change, complaint):
    assert build(docs_copy).returncode == 0, "the docs as they are must build"
    index = docs_copy / "docs" / "index.md"
    index.write_text(index.read_text() + f"\n{change}\n")
    failed = build(docs_copy)
    assert failed.returncode != 0
    assert complaint in failed.stdout + failed.stderr


def test_strict_build_fails_on_a_page_left_out_of_the_nav(docs_copy):
    (docs_copy / "docs" / "orphan.md").write_text("# Nobody links here\n")
    failed = build(docs_copy)
    assert failed.returncode != 0
    assert "orphan.md" in failed.stdout + failed.stderr
