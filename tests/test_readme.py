"""The README and docs/ tell the truth: docs/usage.md's --help is the program's, the README's commands are the
ones CI runs, the README stays a short front door that links every docs/ page, and no link points nowhere."""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # also run as a script, to refresh docs/usage.md

import main  # noqa: E402

HELP_BLOCK = re.compile(r"<!-- main.py --help[^\n]*-->\n```\n(.*?)```\n<!-- end of --help -->", re.S)
USAGE = REPO / "docs" / "usage.md"
README_MAX_LINES = 250
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def current_help(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal; the docs are 100 wide
    return main.get_args_parser().format_help()


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_usage_shows_the_current_help(monkeypatch):
    block = HELP_BLOCK.search(USAGE.read_text(encoding="utf-8"))
    assert block, "docs/usage.md lost its --help block"
    assert block.group(1) == current_help(monkeypatch), (
        "docs/usage.md's --help is out of date: run  python tests/test_readme.py  to refresh it")


def test_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES, (
        f"README.md has {len(readme.splitlines())} lines: move reference material to docs/")
    linked = {(REPO / target.split("#")[0]).resolve() for target in LINK.findall(readme)}
    unlinked = [page.name for page in sorted((REPO / "docs").glob("*.md")) if page.resolve() not in linked]
    assert unlinked == [], f"README.md links no docs page {unlinked}"


def test_every_relative_link_reaches_a_file_and_heading():
    broken = []
    for page in markdown_files():
        for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
                continue
            name, _, anchor = target.partition("#")
            dest = (page.parent / name).resolve() if name else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text()
    command = "pip install -r requirements.txt -r requirements-dev.txt && python -m pytest"
    assert f"```\n{command}\n```" in readme and command in ci
    assert "```\npip install -r requirements.txt && python main.py --demo\n```" in readme


def test_main_py_stays_the_command_line_only():
    """The layout docs/layout.md describes: main.py is a script of a few hundred lines that
    no program or library module imports (the tests may)."""
    assert len((REPO / "main.py").read_text().splitlines()) < 400
    importers = [str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
                 if not {"tests", "site-packages"} & set(path.relative_to(REPO).parts)
                 and not path.relative_to(REPO).parts[0].startswith(".")  # .venv, .git
                 and re.search(r"^\s*(import main\b|from main import)", path.read_text(), re.M)]
    assert importers == []


if __name__ == "__main__":  # refresh docs/usage.md's --help block
    import os

    os.environ["COLUMNS"] = "100"
    text = USAGE.read_text(encoding="utf-8")
    help_text = main.get_args_parser().format_help()
    new = HELP_BLOCK.sub(lambda m: m.group(0).replace(m.group(1), help_text), text)
    USAGE.write_text(new, encoding="utf-8")
    print("docs/usage.md --help block", "updated" if new != text else "already current")
