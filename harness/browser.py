"""A real browser for the viewer's tests and benchmark: Debian's chromium, headless, driven by
Playwright (its own browser download cannot work offline)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from harness.helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "build" / "screenshots"  # test artifacts


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageErrors:
    """Console errors and uncaught exceptions of one page."""

    messages: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> PageErrors:
        def on_console(m: ConsoleMessage) -> None:
            if m.type == "error":
                self.messages.append(f"console: {m.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.messages.append(f"uncaught: {e}"))
        return self


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
