"""The README and docs/ a reader follows: the README's two commands are what CI runs, it stays a short
entry page, and every relative link (file and anchor) in README.md, docs/ and recipes/ leads somewhere."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "recipes").rglob("README.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_gives_the_two_commands_ci_runs_and_stays_an_entry_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_command = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert f"\n{test_command}\n" in readme and f"\n{test_command}\n" in ci
    assert "bash scripts/setup.sh && HF_HUB_OFFLINE=1 .venv/bin/hf-idsel select builtin" in readme
    assert len(readme.splitlines()) < 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def test_every_test_the_docs_name_exists():
    """docs/testing.md maps each promise to the tests that guard it; a renamed test must not leave a dead name."""
    defined, files = set(), set()
    for path in (REPO / "tests").glob("test_*.py"):
        files.add(path.name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined |= {(path.name, n.name) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    names = {name for _, name in defined}
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        missing += [m.group(0) for m in re.finditer(r"(test_\w+\.py)::(test_\w+)", text) if m.groups() not in defined]
        missing += [m.group(1) for m in re.finditer(r"`(test_\w+)`", text) if m.group(1) not in names and f"{m.group(1)}.py" not in files]
        missing += [m.group(1) for m in re.finditer(r"\b(test_\w+\.py)\b", text) if m.group(1) not in files]
    assert not missing, f"tests named in the docs that do not exist: {sorted(set(missing))}"
