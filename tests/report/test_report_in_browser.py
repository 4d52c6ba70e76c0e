"""The report opens in headless Chromium: every image loads, the page logs no errors; a screenshot is kept.

Needs the Debian packages chromium and chromium-driver (installed by .ci/run); the test fails, not
skips, without them. Screenshots (top of the page, and the VPC section) go to pytest's tmp path
and to ``test-artifacts/report.png`` and ``test-artifacts/report_vpc.png`` at the repository root.
"""
import shutil
from pathlib import Path

from webdriver_client import chromium_session

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

_IMAGES = """
return Array.from(document.images).map(img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth}));
"""
_SECTIONS = "return Array.from(document.querySelectorAll('section[id]')).map(s => s.id);"


def test_report_renders_in_headless_chromium(theo_report, tmp_path):
    diag, paths = theo_report
    html = paths[0]
    with chromium_session() as browser:
        browser.navigate(html.resolve().as_uri())
        assert browser.script("return document.readyState;") == "complete"
        images = browser.script(_IMAGES)
        assert len(images) == sum(len(v) for v in diag.figures().values()) >= 8
        broken = [img["alt"] for img in images if not (img["complete"] and img["width"] > 0)]
        assert not broken, f"images that did not load: {broken}"
        sections = browser.script(_SECTIONS)
        assert {"run", "data", "status", "parameters", "diagnostics", "figures"} <= set(sections)
        title = browser.script("return document.title;")
        assert title.startswith("pmxgen report")
        errors = [entry for entry in browser.browser_log() if entry.get("level") == "SEVERE"]
        assert not errors, f"the page logged errors: {errors}"
        shot = browser.screenshot(tmp_path / "report.png")
        browser.script("document.getElementById('fig-visual-predictive-check').scrollIntoView(); return 0;")
        vpc_shot = browser.screenshot(tmp_path / "report_vpc.png")
        # the checks can fail: a page with a broken image and a console error is caught by both
        bad = tmp_path / "bad.html"
        bad.write_text("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
                       "<img alt='broken' src='data:image/png;base64,AAAA'>"
                       "<script>console.error('deliberate error')</script></body></html>")
        browser.navigate(bad.as_uri())
        assert [img["width"] for img in browser.script(_IMAGES)] == [0]
        assert any("deliberate error" in e.get("message", "") for e in browser.browser_log()
                   if e.get("level") == "SEVERE")
    for png in (shot, vpc_shot):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(png, ARTIFACTS / png.name)
