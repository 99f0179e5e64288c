"""Drive a real headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``): no extra Python
packages, no debugging port. Used by the browser test to send real mouse input (legend clicks, drags, double-clicks)
to the dashboard and read the page back.

The browser reads JSON messages, each ended by a NUL byte, on its file descriptor 3 and answers on 4.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any


class CDPError(RuntimeError):
    """The browser answered a command with an error, closed its pipe, or a condition never became true."""


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in it, `mouse` sends real input events."""

    def __init__(self, chromium: str, profile: Path, window: tuple[int, int], log: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def onto_3_and_4() -> None:  # runs in the child: the pipe ends become fds 3 and 4 whatever their numbers
            os.dup2(to_browser_r, 100)
            os.dup2(from_browser_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=onto_3_and_4, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._w, self._r = to_browser_w, from_browser_r
        self._buf = b""
        self._id = 0
        self.session: str | None = None
        self.console: list[str] = []  # console messages and uncaught exceptions of the page

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._w)
        os.close(self._r)
        self._log.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: dict | None = None, timeout_s: float = 60.0) -> dict:
        """Send one command (to the page once `open` attached it) and return its result."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                m = json.loads(raw)
                if m.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                                 for a in m["params"].get("args", [])))
                elif m.get("method") == "Runtime.exceptionThrown":
                    self.console.append(json.dumps(m["params"]["exceptionDetails"])[:2000])
                if m.get("id") == self._id:
                    if "error" in m:
                        raise CDPError(f"{method}: {m['error']}")
                    return m["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"{method}: no answer in {timeout_s} s")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise CDPError(f"{method}: Chromium closed its pipe (exit code {self.proc.poll()})")
                self._buf += chunk

    def open(self, url: str) -> None:
        """Open `url` in a new page and attach to it; console output is collected from then on."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Runtime.enable")
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable); a thrown error raises CDPError."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CDPError(f"{expression[:80]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_until(self, expression: str, timeout_s: float = 60.0, what: str = "") -> Any:
        """Evaluate `expression` until it is truthy (a condition, polled), and return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"waited {timeout_s} s for {what or expression}; last value {value!r}")
            time.sleep(0.05)

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0, click_count: int = 0) -> None:
        """One real mouse event at viewport CSS pixel (x, y): kind is mousePressed, mouseMoved or mouseReleased."""
        params: dict[str, Any] = {"type": kind, "x": x, "y": y, "buttons": buttons}
        if kind != "mouseMoved" or buttons:
            params["button"] = "left"
        if click_count:
            params["clickCount"] = click_count
        self.send("Input.dispatchMouseEvent", params)

    def click(self, x: float, y: float, count: int = 1) -> None:
        for n in range(1, count + 1):
            self.mouse("mousePressed", x, y, buttons=1, click_count=n)
            self.mouse("mouseReleased", x, y, click_count=n)

    def drag(self, x0: float, x1: float, y: float, steps: int = 8) -> None:
        self.mouse("mouseMoved", x0, y)
        self.mouse("mousePressed", x0, y, buttons=1, click_count=1)
        for i in range(1, steps + 1):
            self.mouse("mouseMoved", x0 + (x1 - x0) * i / steps, y, buttons=1)
        self.mouse("mouseReleased", x1, y, click_count=1)

