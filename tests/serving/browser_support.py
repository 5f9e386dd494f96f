"""Headless Chromium with the network cut off: Debian's /usr/bin/chromium driven by Playwright
(never a downloaded browser). Every request that would leave 127.0.0.1 is aborted and recorded,
so a test can assert that a page or report needs nothing from the internet."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.serving.serving_support import REPO

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: `apt-get install -y chromium`
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-file-access-from-files",  # reports are opened as files, as a user would
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome-error"}


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


@dataclass
class OfflineBrowser:
    """A browser context whose requests never leave the machine; ``outside`` lists the URLs
    that tried."""

    context: Any  # playwright.sync_api.BrowserContext
    outside: list[str] = field(default_factory=list)

    def _guard(self, route: Any) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort("internetdisconnected")

    def new_page(self, timeout_ms: int) -> tuple[Any, list[str]]:
        """A page and the problems seen on it: script errors and every request not local."""
        page = self.context.new_page()
        page.set_default_timeout(timeout_ms)
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "request",
            lambda r: None if is_local(r.url) else problems.append(f"left the machine: {r.url}"),
        )
        page.on(
            "requestfailed",
            lambda r: problems.append(f"request failed: {r.url}") if is_local(r.url) else None,
        )
        return page, problems


@contextmanager
def offline_browser() -> Iterator[OfflineBrowser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            offline=False,  # loopback must work; the route below cuts everything else
        )
        browser = OfflineBrowser(context)
        context.route("**/*", browser._guard)
        try:
            yield browser
        finally:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
