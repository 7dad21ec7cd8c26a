"""Real-browser helpers: Playwright driving Debian's chromium, offline.

A test module makes its fixtures from ``launch`` (one browser per module) and
``open_tab`` (a fresh context, so an empty sessionStorage, per test); the plugin
tests put this folder on ``sys.path`` first. Screenshots go to
``$SOPHON_TEST_ARTIFACTS`` or ``<repo>/artifacts/``.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("SOPHON_CHROMIUM", "/usr/bin/chromium"))
# No background traffic: the test network is closed, and waiting on it makes runs slow and flaky.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 15_000
REPO = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SOPHON_TEST_ARTIFACTS") or REPO / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def no_junk(page) -> None:
    """The page shows no stray ``null``, ``undefined`` or ``[object ...]`` (a script bug)."""
    text = page.locator("body").inner_text()
    assert not re.search(r"\bnull\b|\bundefined\b|\[object |\bNaN\b", text), text


def screenshot(page, name: str) -> Path:
    """A full-page PNG named ``name`` in the artifacts folder (after checking the page for junk)."""
    no_junk(page)
    path = artifacts_dir() / name
    page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.contextmanager
def launch() -> Iterator:
    """A headless chromium. A missing chromium fails the test: these tests are not optional."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium: apt-get install chromium "
                    "(./dev test does this)", pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """What a test needs from one tab: the Playwright page plus what the tab reported."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []  # uncaught exceptions and console errors (CSP violations among them)
        page.set_default_timeout(TIMEOUT_MS)
        page.set_default_navigation_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, msg) -> None:
        # an HTTP error status the test provokes (401, 404, 422) is logged as "Failed to load resource"
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {msg.text}")


@contextlib.contextmanager
def open_tab(browser) -> Iterator[Page]:
    """A fresh context (empty sessionStorage, no cookies) and page. At the end, no script error
    or CSP violation may have happened and the page shows no junk."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        tab = Page(context.new_page())
        yield tab
        assert tab.errors == [], tab.errors
        no_junk(tab.page)
    finally:
        context.close()
