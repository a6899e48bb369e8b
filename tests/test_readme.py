"""The README tells the truth: its --help is the program's, and its commands are the ones CI runs."""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # also run as a script, to refresh the README

import main  # noqa: E402

HELP_BLOCK = re.compile(r"<!-- main.py --help[^\n]*-->\n```\n(.*?)```\n<!-- end of --help -->", re.S)


def current_help(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal; the README is 100 wide
    return main.get_args_parser().format_help()


def test_readme_shows_the_current_help(monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = HELP_BLOCK.search(readme)
    assert block, "README.md lost its --help block"
    assert block.group(1) == current_help(monkeypatch), (
        "README.md's --help is out of date: run  python tests/test_readme.py  to refresh it")


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text()
    command = "pip install -r requirements.txt -r requirements-dev.txt && python -m pytest"
    assert f"```\n{command}\n```" in readme and command in ci
    assert "```\npip install -r requirements.txt && python main.py --demo\n```" in readme


def test_main_py_stays_the_command_line_only():
    """The layout the README's Layout table describes: main.py is a script of a few hundred lines that
    no program or library module imports (the tests may)."""
    assert len((REPO / "main.py").read_text().splitlines()) < 400
    importers = [str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
                 if not {"tests", "site-packages"} & set(path.relative_to(REPO).parts)
                 and not path.relative_to(REPO).parts[0].startswith(".")  # .venv, .git
                 and re.search(r"^\s*(import main\b|from main import)", path.read_text(), re.M)]
    assert importers == []


if __name__ == "__main__":  # refresh the README's --help block
    import os

    os.environ["COLUMNS"] = "100"
    path = REPO / "README.md"
    text = path.read_text(encoding="utf-8")
    help_text = main.get_args_parser().format_help()
    new = HELP_BLOCK.sub(lambda m: m.group(0).replace(m.group(1), help_text), text)
    path.write_text(new, encoding="utf-8")
    print("README.md --help block", "updated" if new != text else "already current")
