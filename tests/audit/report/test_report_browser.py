"""The report in a real browser: headless Chromium through playwright's sync API.

Proves what string checks cannot: the page loads nothing but itself, logs no error, runs none
of the hostile plan's markup (no dialog opens), fits an A4-wide window and prints to an A4
PDF. Leaves test-artifacts/audit-report.{html,png,pdf} at the repository root for a human.

Needs Debian's chromium and the playwright package: run .ci/install-system.sh. Without them
the test fails, unless FLOPGATE_SKIP_BROWSER=1 (then it is skipped).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from report_cases import HOSTILE

from audit.report import render_audit_html

REPO_ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
A4_WIDTH_PX = 794   # 210 mm at 96 px per inch
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")


def chromium_or_fail() -> str:
    """Path of the chromium binary; fails (or skips, when asked to) if anything is missing."""
    missing = []
    executable = shutil.which("chromium") or (str(DEBIAN_CHROMIUM) if DEBIAN_CHROMIUM.exists() else None)
    if executable is None:
        missing.append("the chromium browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        message = (f"browser test needs {' and '.join(missing)}: run .ci/install-system.sh as root "
                   "(or set FLOPGATE_SKIP_BROWSER=1 to skip this test)")
        if os.environ.get("FLOPGATE_SKIP_BROWSER") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return executable


class Recorder:
    """Everything a page asks of the outside world or complains about."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.mark.browser
def test_report_in_headless_chromium(review_case, hostile_case, tmp_path):
    executable = chromium_or_fail()
    from playwright.sync_api import expect, sync_playwright

    review_file = tmp_path / "audit.html"
    review_file.write_text(render_audit_html(review_case, signer_fingerprint="SHA256:abc123",
                                             verification={"ok": True, "reason": "1 of 1 signatures"}),
                           encoding="utf-8")
    hostile_file = tmp_path / "hostile.html"
    hostile_file.write_text(render_audit_html(hostile_case, signer_fingerprint=HOSTILE["fingerprint"],
                                              verification={"ok": False, "reason": HOSTILE["reason"]}),
                            encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            seen = Recorder(page)
            page.goto(review_file.as_uri(), wait_until="load")

            verdict = page.get_by_text("Review required before training: 1 unmet obligation")
            expect(verdict).to_be_visible()
            expect(page.locator("#verdict")).to_contain_text("The training gate stays closed")
            chart = page.locator("svg.chart").bounding_box()
            assert chart and chart["width"] > 600 and chart["height"] > 150
            page.screenshot(path=str(ARTIFACTS / "audit-report.png"), full_page=True)

            page.set_viewport_size({"width": A4_WIDTH_PX, "height": 1123})
            assert page.evaluate("document.documentElement.scrollWidth") <= A4_WIDTH_PX, "page wider than A4"
            pdf = page.pdf(format="A4", print_background=True)
            assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
            (ARTIFACTS / "audit-report.pdf").write_bytes(pdf)
            shutil.copyfile(review_file, ARTIFACTS / "audit-report.html")
            assert seen.requests == [review_file.as_uri()]
            assert seen.errors == [] and seen.dialogs == []

            page = browser.new_page()
            seen = Recorder(page)
            page.goto(hostile_file.as_uri(), wait_until="load")
            expect(page.locator("#verification-warning")).to_be_visible()
            expect(page.locator("#verification-warning")).to_contain_text(HOSTILE["reason"])
            expect(page.locator("#summary")).to_contain_text(HOSTILE["student"])
            expect(page.locator("#summary")).to_contain_text(HOSTILE["purpose"])
            assert page.locator("script, img, iframe").count() == 0
            page.wait_for_timeout(200)   # give any injected handler a moment to fire
            assert seen.requests == [hostile_file.as_uri()]
            assert seen.errors == [] and seen.dialogs == []
        finally:
            browser.close()


def _without_browser(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(sys.modules[__name__], "DEBIAN_CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)   # makes the import fail


def test_missing_browser_fails_and_names_the_install_script(monkeypatch, tmp_path):
    _without_browser(monkeypatch, tmp_path)
    monkeypatch.delenv("FLOPGATE_SKIP_BROWSER", raising=False)
    with pytest.raises(pytest.fail.Exception) as failed:
        chromium_or_fail()
    message = str(failed.value)
    assert ".ci/install-system.sh" in message
    assert "the chromium browser" in message and "the playwright Python package" in message


def test_missing_browser_skips_only_when_asked(monkeypatch, tmp_path):
    _without_browser(monkeypatch, tmp_path)
    monkeypatch.setenv("FLOPGATE_SKIP_BROWSER", "1")
    with pytest.raises(pytest.skip.Exception, match="install-system.sh"):
        chromium_or_fail()
