"""A minimal W3C WebDriver client (urllib only) for headless Chromium through chromedriver.

CI installs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run``); tests that
use this fail, not skip, when they are missing.
"""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
        "--disable-sync", "--disable-default-apps", "--no-first-run", "--disable-dev-shm-usage",
        "--window-size=1280,2000"]
INSTALL = ("headless Chromium is needed for this test: install it with `apt-get update && apt-get install -y "
           "--no-install-recommends chromium chromium-driver` (CI does this in .ci/run)")


def _binary() -> str:
    for path in CHROMIUM:
        if Path(path).exists():
            return path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, INSTALL
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """One WebDriver session: ``call(method, path, body)`` relative to the session."""

    def __init__(self, base: str, session_id: str):
        self.base, self.id = base, session_id

    def call(self, method: str, path: str = "", body: dict | None = None):
        url = f"{self.base}/session/{self.id}{path}"
        return _request(method, url, body)

    def navigate(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def script(self, source: str):
        return self.call("POST", "/execute/sync", {"script": source, "args": []})

    def browser_log(self) -> list[dict]:
        return self.call("POST", "/se/log", {"type": "browser"})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))
        return path


def _request(method: str, url: str, body: dict | None = None, timeout: float = 60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())["value"]
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"WebDriver {method} {url} failed: {exc.read().decode()[:2000]}") from None


@contextmanager
def chromium_session():
    """A headless Chromium session driven by chromedriver (both must be installed)."""
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    assert driver, INSTALL
    binary = _binary()
    port = _free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _request("GET", f"{base}/status", timeout=5).get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "chromedriver did not start within 30 s"
            time.sleep(0.2)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": binary, "args": ARGS}}}}
        value = _request("POST", f"{base}/session", caps, timeout=120)
        session = Session(base, value["sessionId"])
        try:
            yield session
        finally:
            try:
                session.call("DELETE")
            except AssertionError:
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
