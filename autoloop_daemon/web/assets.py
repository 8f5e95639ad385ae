"""The dashboard's static files, shipped as package data, and their content types.

The control server serves `index.html` at `/` and the others by name next to it; the page
needs nothing from the internet (no CDN): its script draws the plots as SVG itself.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

# name -> content type; the only files the dashboard consists of.
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def static_file(name: str) -> tuple[bytes, str]:
    """The bytes and content type of dashboard file `name`; KeyError for any other name."""
    content_type = STATIC_FILES[name]  # a fixed list: no path from a request reaches the disk
    return (STATIC_DIR / name).read_bytes(), content_type
