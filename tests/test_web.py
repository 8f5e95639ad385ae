"""The dashboard's static files: shipped as package data, self-contained, fetching only the
control server's JSON routes. (The page in a browser: test_browser.py.)"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "autoloop_daemon" / "web" / "static"
FILES = ("index.html", "dashboard.js", "dashboard.css")


def test_every_dashboard_file_is_shipped_as_package_data() -> None:
    """pyproject's package-data covers each file of web/static/ (the page, script, styles)."""
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(FILES)
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    patterns = [
        f"{package.replace('.', '/')}/{pattern}"
        for package, globs in package_data.items()
        for pattern in globs
    ]
    for name in FILES:
        path = f"autoloop_daemon/web/static/{name}"
        assert any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is not package data"


def test_the_page_needs_no_internet_and_reads_only_its_routes() -> None:
    """No absolute URL besides the SVG namespace; the page loads its script and styles from
    static/ and the script fetches api/status, api/reviews and each target's history, and
    posts only review verdicts, all relative to the page (so it works behind a prefix)."""
    for name in FILES:
        text = (STATIC / name).read_text()
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg\b)", text) == [], name
    page = (STATIC / "index.html").read_text()
    assert set(re.findall(r'(?:src|href)="([^"]+)"', page)) == {
        "static/dashboard.css",
        "static/dashboard.js",
        "data:,",
    }
    script = (STATIC / "dashboard.js").read_text()
    assert set(re.findall(r'getJSON\("([^"]+)"', script)) == {"api/status", "api/reviews"}
    assert script.count('method: "POST"') == 1
    assert '"api/targets/" + encodeURIComponent(target) + "/review"' in script
    assert '"api/targets/" + encodeURIComponent(t.target) + "/history"' in script
