"""The dashboard's static files: present as package data, self-contained, fetching only the
control server's JSON routes. (The page in a browser: test_browser.py.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from autoloop_daemon.web.assets import STATIC_DIR, STATIC_FILES, static_file

REPO = Path(__file__).resolve().parent.parent


def test_every_dashboard_file_is_served_and_shipped() -> None:
    """Each listed file exists with its content type, and pyproject ships web/static/."""
    for name, content_type in STATIC_FILES.items():
        data, served_type = static_file(name)
        assert data and served_type == content_type
    assert {p.name for p in STATIC_DIR.iterdir()} == set(STATIC_FILES)
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["autoloop_daemon.web"]
    assert {f"static/*{Path(n).suffix}" for n in STATIC_FILES} <= set(package_data)


def test_unknown_names_are_refused_without_touching_the_disk() -> None:
    """Only the listed names are served: no path from a request reaches the file system."""
    for name in ("../assets.py", "/etc/passwd", "static/index.html", ""):
        with pytest.raises(KeyError):
            static_file(name)


def test_the_page_needs_no_internet_and_reads_only_the_two_routes() -> None:
    """No absolute URL besides the SVG namespace; the script fetches api/status and the
    per-target history, relative to the page (so it works behind a path prefix)."""
    for name in STATIC_FILES:
        text = static_file(name)[0].decode()
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg\b)", text) == [], name
    script = static_file("dashboard.js")[0].decode()
    assert set(re.findall(r'getJSON\("([^"]+)"', script)) == {"api/status"}
    assert '"api/targets/" + encodeURIComponent(t.target) + "/history"' in script
