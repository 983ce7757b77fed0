"""Shared helpers for browser tests: Debian's Chromium driven by Playwright, local servers.

    from browser import (chromium_or_skip, launch, free_port, serve_dir, start_server, stop_server,
                         wait_http, PageWatch, is_local)

- chromium_or_skip() -> str: path of the Chromium binary; pytest.skip (or fail, when the
  environment sets FER_REQUIRE_BROWSER=1, as .ci/run does) when it is not installed.
- launch() -> context manager yielding a playwright Browser (headless Chromium, CHROMIUM_ARGS).
- free_port() -> int: a free TCP port on 127.0.0.1.
- start_server(cmd, url, cwd=None, env=None, log=None, timeout=60) -> Popen: runs `cmd` in its own
  process group and waits until `url` answers; stop_server(proc) ends that group (SIGTERM, then SIGKILL).
- serve_dir(directory) -> context manager yielding the base URL ("http://127.0.0.1:PORT/") of
  `python -m http.server` serving `directory`, stopped on exit.
- PageWatch(page, allow_offhost=None) records, for one page: failed local requests (network errors and
  HTTP >= 400 from 127.0.0.1/localhost/file:), JavaScript errors, console errors and requests to
  other hosts (aborted, so a test never waits on the network). `allow_offhost` is a regex of
  off-host URLs to tolerate; the browser's own /favicon.ico request is ignored.
  watch.problems() -> list of strings, empty when the page is clean; watch.take() returns them
  and starts afresh (several pages in one tab).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium_path() -> str | None:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium")


def chromium_or_skip() -> str:
    path = chromium_path()
    if path is None:
        reason = ("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it); "
                  "never `playwright install`")
        if os.environ.get("FER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and FER_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    return path


@contextlib.contextmanager
def launch(**kwargs):
    """Yields a headless Chromium Browser (playwright sync API)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True, **kwargs)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until `url` answers (any HTTP status below 500); fails early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
            last = err
        except OSError as err:
            last = err
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer in {timeout} s ({last})")


def stop_server(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process group `proc` leads (started by start_server), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # children left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def start_server(cmd, url: str, cwd=None, env=None, log: Path | None = None, timeout: float = 60):
    """Start `cmd` in a new process group (stdout and stderr to `log`) and wait for `url`."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    if log:
        out.close()
    try:
        wait_http(url, proc, timeout)
    except BaseException as err:
        stop_server(proc)
        tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"{err}\n--- server log tail ---\n{tail}") from None
    return proc


@contextlib.contextmanager
def serve_dir(directory: Path, log: Path | None = None):
    """Serve `directory` over HTTP on 127.0.0.1; yields the base URL (ending in '/')."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    proc = start_server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                         "--directory", str(directory)], base, log=log, timeout=30)
    try:
        yield base
    finally:
        stop_server(proc)


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("file", "data", "blob", "about") or (parts.hostname or "") in LOCAL_HOSTS


class PageWatch:
    """Collects what went wrong while one page loaded and ran (see the module docstring)."""

    def __init__(self, page, allow_offhost: str | None = None):
        self.page = page
        self.allow = re.compile(allow_offhost) if allow_offhost else None
        self.failed, self.http_errors, self.js_errors, self.console_errors = [], [], [], []
        self.offhost, self.offhost_allowed = [], []
        self._offhost_seen: set[str] = set()  # kept across take(): their console errors are not news
        page.route("**/*", self._route)
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)
        page.on("pageerror", lambda err: self.js_errors.append(str(err)))
        page.on("console", self._console)

    def _route(self, route):
        url = route.request.url
        if is_local(url):
            route.continue_()
            return
        (self.offhost_allowed if self.allow and self.allow.search(url) else self.offhost).append(url)
        self._offhost_seen.add(url)
        route.abort("blockedbyclient")

    @staticmethod
    def _browser_own(url: str) -> bool:
        """The browser asks every server for /favicon.ico by itself; a static book has none."""
        return urlsplit(url).path == "/favicon.ico"

    def _request_failed(self, request):
        if is_local(request.url) and not self._browser_own(request.url):
            self.failed.append(f"{request.url} ({request.failure})")

    def _response(self, response):
        if response.status >= 400 and is_local(response.url) and not self._browser_own(response.url):
            self.http_errors.append(f"{response.url} -> HTTP {response.status}")

    def _console(self, msg):
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if url in self._offhost_seen or self._browser_own(url):
            return  # reported (or tolerated) as off-host, or the browser's own favicon request
        self.console_errors.append(f"{msg.text} ({url})")

    def problems(self) -> list[str]:
        return ([f"failed request: {x}" for x in self.failed] + [f"HTTP error: {x}" for x in self.http_errors]
                + [f"JavaScript error: {x}" for x in self.js_errors]
                + [f"console error: {x}" for x in self.console_errors]
                + [f"off-host request: {x}" for x in self.offhost])

    def take(self) -> list[str]:
        """problems(), then forget them (to check page after page in one tab)."""
        found = self.problems()
        for seen in (self.failed, self.http_errors, self.js_errors, self.console_errors, self.offhost):
            seen.clear()
        return found
