"""The documentation stays inside the repository and in step with the code it describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoloop_daemon import exit_codes
from autoloop_daemon.cli.parser import build_parser
from autoloop_daemon.config.settings import BudgetSettings, DaemonSettings, _TargetTable
from autoloop_daemon.vocab import TargetStatus

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", DOCS / "design.md", DOCS / "config.md", REPO / "deploy" / "README.md"]
PACKAGE = REPO / "autoloop_daemon"

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page` (repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for heading in _HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository_and_resolve(page: Path) -> None:
    """Every relative link points at a file of this repository, and at a heading that exists."""
    text = page.read_text()
    assert "../shared" not in text
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # an absolute URL (none is needed today)
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        assert resolved.is_relative_to(REPO), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: no heading for #{anchor}"


def _documented(text: str, name: str) -> bool:
    return f"`{name}`" in text or f"`{name} " in text


def test_config_reference_has_every_key_and_flag() -> None:
    """docs/config.md names every key of every table and every flag of the command line."""
    text = (DOCS / "config.md").read_text()
    keys = [*DaemonSettings.model_fields, *BudgetSettings.model_fields]
    keys += list(_TargetTable.model_fields)
    missing = [key for key in keys if not _documented(text, key)]
    assert missing == [], f"keys missing from docs/config.md: {missing}"
    flags = [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [flag for flag in flags if flag not in text]
    assert missing == [], f"flags missing from docs/config.md: {missing}"


def test_design_has_every_status_and_exit_code() -> None:
    """docs/design.md explains every status of models.py and every exit code of the CLI."""
    text = (DOCS / "design.md").read_text()
    statuses = [s.value for s in TargetStatus]
    assert statuses
    missing = [s for s in statuses if f"| `{s}` |" not in text]
    assert missing == [], f"statuses missing from docs/design.md: {missing}"
    codes = sorted({v for k, v in vars(exit_codes).items() if k.startswith("EXIT_")})
    missing_codes = [c for c in codes if not re.search(rf"^\| {c} \|", text, re.M)]
    assert missing_codes == [], f"exit codes missing from docs/design.md: {missing_codes}"


def test_design_module_table_lists_every_module() -> None:
    """The Architecture section has a row for every module of the package."""
    text = (DOCS / "design.md").read_text()
    modules = [
        path.relative_to(PACKAGE).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if not (path.name == "__init__.py" and path.parent != PACKAGE)
    ]
    missing = [m for m in modules if f"| `{m}` |" not in text]
    assert missing == [], f"add a row to docs/design.md's module table for: {missing}"


def test_readme_quick_start_keeps_its_two_commands() -> None:
    """The Quick start section still shows the run and the test commands."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q . && "
        ".venv/bin/autoloopd --config config.example.toml"
    ) in section
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    ) in section
