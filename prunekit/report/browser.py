"""A real browser for the report: headless Chromium driven over the DevTools protocol, without a driver library.

`open_page(page, width, height, probe)` loads a page at a viewport size, evaluates a JavaScript probe and
takes a screenshot, and says what went wrong on the way (console errors, uncaught exceptions, dialogs,
network requests). The report's real-browser tests and analyses/report_screenshots.py use it; Debian's
`chromium` package provides the browser.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


def _above_9(fd: int) -> int:
    """`fd` moved to a number above 9, so that the browser's fds 3 and 4 cannot clash with it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Chromium driven through the DevTools protocol over --remote-debugging-pipe: JSON messages ending in
    NUL, read by the browser on its fd 3 and written on its fd 4. Events are kept in `events`."""

    def __init__(self, executable: str, profile: Path, log: Path, timeout: float = 90):
        to_browser, self._to = map(_above_9, os.pipe())
        self._from, from_browser = map(_above_9, os.pipe())
        redirect = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(["bash", "-c", redirect, executable, *FLAGS,
                                             f"--user-data-dir={profile}", "about:blank"],
                                            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                            pass_fds=(to_browser, from_browser))
        os.close(to_browser)
        os.close(from_browser)
        self.deadline = time.monotonic() + timeout
        self.events, self._buffer, self._id = [], b"", 0

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], max(0.0, self.deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._to, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def wait_for(self, event: str) -> None:
        while not any(e["method"] == event for e in self.events):
            self._receive()

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._to)
            os.close(self._from)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, dialogs, and requests that would need the network."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                     for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append("log: " + params["entry"]["text"])
            elif method == "Page.javascriptDialogOpening":
                found.append("dialog: " + params.get("message", ""))
            elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(("data:", "file:")):
                found.append("network request: " + params["request"]["url"])
        return found


@dataclass(frozen=True)
class Page:
    """What opening a page gave: the problems seen, the probe's value and the screenshot's PNG bytes."""

    problems: list[str]
    value: object
    screenshot: bytes


def executable() -> str | None:
    """The Chromium on this machine (None when there is none)."""
    return shutil.which("chromium")


def open_page(page: Path, width: int = 1280, height: int = 2000, probe: str = "null", full_page: bool = False,
              log: Path | None = None) -> Page:
    """Open `page` in headless Chromium at `width` x `height` CSS pixels (a phone's viewport when `width` is
    small: mobile emulation), evaluate `probe` (a JavaScript expression) after load, and screenshot the viewport
    (or the whole page with `full_page`). Chromium's own log goes to `log`."""
    chromium = executable()
    if chromium is None:
        raise PrunekitError("Chromium is missing: install Debian's chromium (apt-get install chromium).")
    with tempfile.TemporaryDirectory(prefix="prunekit-chromium-") as profile:
        browser = DevTools(chromium, Path(profile), log or Path(profile) / "chromium.log")
        try:
            target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session)
            browser.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                         deviceScaleFactor=1, mobile=width < 600)
            browser.send("Page.navigate", session, url=page.resolve().as_uri())
            browser.wait_for("Page.loadEventFired")
            value = browser.send("Runtime.evaluate", session, expression=probe, returnByValue=True)["result"].get("value")
            capture = {"format": "png"}
            if full_page:
                size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
                capture.update(captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
            shot = base64.b64decode(browser.send("Page.captureScreenshot", session, **capture)["data"])
        finally:
            browser.close()
    return Page(browser.problems(), value, shot)
