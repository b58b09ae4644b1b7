"""Open a local HTML page in headless Chromium and report what happened: console errors, network requests,
and whether every Vega chart drew. Talks the DevTools protocol over a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so it needs no client library.

    >>> result = open_page(Path("reports/index.html"), shots / "report.png")   # doctest: +SKIP
    >>> result.console_errors, result.requests, [c["marks"] for c in result.charts]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", "--window-size=1400,1000"]

# Every vega-embed container: does it hold drawn marks? SVG: data marks (role-mark groups) with a size;
# canvas: pixels in colour (axes and text are grey, marks use the scheme's colours).
CHARTS_JS = r"""
(() => Array.from(document.querySelectorAll('.vega-embed')).map((e, i) => {
  const id = e.id || ('chart-' + i);
  const svg = e.querySelector('svg.marks');
  if (svg) {
    const marks = Array.from(svg.querySelectorAll('g.role-mark path, g.role-mark rect, g.role-mark line'))
      .filter(m => { const b = m.getBoundingClientRect(); return b.width > 0 || b.height > 0; }).length;
    return {id: id, kind: 'svg', marks: marks};
  }
  const canvas = e.querySelector('canvas.marks');
  if (canvas) {
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let k = 0; k < d.length; k += 4) {
      if (d[k + 3] > 0 && (Math.abs(d[k] - d[k + 1]) > 24 || Math.abs(d[k + 1] - d[k + 2]) > 24)) coloured++;
    }
    return {id: id, kind: 'canvas', marks: coloured};
  }
  return {id: id, kind: 'none', marks: 0};
}))()
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class PageResult:
    charts: list[dict] = field(default_factory=list)  # [{"id", "kind", "marks"}]
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, beyond itself
    status: dict | None = None  # window.evolforgeCharts, on the report page


class Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int):
        self.proc, self.write_fd, self.reader = proc, write_fd, os.fdopen(read_fd, "rb", buffering=0)
        self.next_id, self.buffer, self.events = 0, b"", []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = self.reader.read(65536)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)


def open_page(page: Path, screenshot: Path, timeout: float = 60) -> PageResult:
    """Load ``page`` (a local file) and wait until its charts drew (or ``timeout``); save a full-page PNG."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="evolforge-chromium-")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def fds() -> None:  # in the child: the protocol's fixed descriptors 3 (commands in) and 4 (replies out)
        a, b = os.dup(to_browser_r), os.dup(from_browser_w)  # copies first: either pipe end may already be 3 or 4
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                            preexec_fn=fds, pass_fds=(3, 4),  # close_fds runs after preexec_fn
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = Pipe(proc, to_browser_w, from_browser_r)
    result = PageResult()
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        url = page.resolve().as_uri()
        pipe.call("Page.navigate", {"url": url}, session=session)

        def evaluate(expr: str):
            return pipe.call("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                             session=session)["result"].get("value")

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if evaluate("document.readyState") != "complete":
                continue
            result.status = evaluate("window.evolforgeCharts || null")
            result.charts = evaluate(CHARTS_JS) or []
            expected = evaluate("document.querySelectorAll('.vega-embed, .chart[id], div[id] > script').length")
            done = result.status is None or result.status["drawn"] + len(result.status["errors"]) >= result.status["expected"]
            if done and result.charts and all(c["marks"] > 0 for c in result.charts) and len(result.charts) >= (
                    result.status["expected"] if result.status else 1) and expected:
                break
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        for ev in pipe.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                result.console_errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                result.console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                req = params.get("request", {}).get("url", "")
                if req != url:
                    result.requests.append(req)
        return result
    finally:
        proc.kill()
        proc.wait()
        os.close(to_browser_w)
        pipe.reader.close()
        shutil.rmtree(profile, ignore_errors=True)
