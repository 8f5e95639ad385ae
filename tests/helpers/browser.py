"""Headless Chromium (Debian's package) driven by Playwright, or a clear skip without it.

Playwright cannot download its own browsers here, so it is pointed at /usr/bin/chromium
with the flags that keep a root, offline, sandbox-less Chromium quiet (PITFALLS.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skip the test, saying how to fix it, when the browser or Playwright is missing."""
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        pytest.skip("no /usr/bin/chromium: apt-get install chromium (the browser tests need it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")


@contextmanager
def browser_page(tmp_path: Path) -> Iterator[Any]:
    """A fresh page of a headless Chromium with its own profile under `tmp_path`; page
    errors (uncaught exceptions, console errors) are collected in `page.errors`."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium"))
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.errors = errors
            yield page
        finally:
            context.close()
