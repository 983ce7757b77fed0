"""The upload demo end to end: Voila serves notebooks/06_demo.py, headless Chromium uploads a photo and a
file that is not an image through the FileUpload widget, and the answers must appear on the page.

Needs Debian's chromium (/usr/bin/chromium; .ci/run installs it). Skips without it, except where
FER_REQUIRE_BROWSER=1 (.ci/run sets it): there a missing browser fails. Screenshots go to
test-artifacts/ (gitignored).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from browser import PageWatch, chromium_or_skip, free_port, launch, start_server, stop_server
from fer_utils.app import demo
from photos import astronaut, noise, tiny_checkpoint

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SERVER_START_S = 60
PAGE_LOAD_S = 180   # Voila runs the whole notebook (torch import, model load, the example) before the page shows
ANSWER_S = 90
# Voila's page asks a CDN for Font Awesome (harmless: the icons are decoration); nothing else may leave the host.
ALLOW_OFFHOST = r"font-?awesome|fontawesome"
# jupyterlab-plotly draws a figure, then tries to cache a PNG of it in the output's model, which Voila's
# read-only outputs lack: the figure is shown, only the cache fails. Any other page error fails the test.
KNOWN_PAGE_ERRORS = ("JavaScript error: r.setData is not a function",)

pytestmark = pytest.mark.slow


@pytest.fixture
def voila_demo(tmp_path):
    """The demo served by Voila on a free localhost port, with a tiny checkpoint as 'this run's' model."""
    chromium_or_skip()  # before the slow server start
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tiny_checkpoint(run_dir / "best.pt")
    notebook = demo.prepare_notebook(tmp_path / "nb", run_dir=run_dir)
    url = f"http://127.0.0.1:{free_port()}/"
    log = tmp_path / "voila.log"
    # start_server: its own process group, waits until the server answers; stop_server ends that group
    proc = start_server(demo.voila_command(notebook, int(url.rsplit(":", 1)[1].strip("/"))), url + "api",
                        cwd=tmp_path, log=log, timeout=SERVER_START_S)
    try:
        yield url, log
    finally:
        stop_server(proc)


def _upload(page, path: Path) -> None:
    # ipywidgets 8 keeps the <input type=file> out of the DOM: click the button, answer the file chooser
    with page.expect_file_chooser() as chooser:
        page.click(".widget-upload")
    chooser.value.set_files(str(path))


def test_upload_a_photo_and_a_bad_file(voila_demo, tmp_path):
    from playwright.sync_api import expect

    url, log = voila_demo
    photo = tmp_path / "astronaut.png"
    astronaut().save(photo)
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is a text file, not a photo\n")
    big = tmp_path / "static.png"  # > 10 MiB (tornado's default websocket cap) and no face in it
    noise(2200, 1700).save(big, compress_level=1)
    assert big.stat().st_size > 10.5 * 2 ** 20
    ARTIFACTS.mkdir(exist_ok=True)
    with launch() as browser:
        # Voila scrolls inside the page, so a full-page screenshot is the window: make it tall
        page = browser.new_page(viewport=dict(width=1100, height=2400))
        watch = PageWatch(page, allow_offhost=ALLOW_OFFHOST)
        page.goto(url, timeout=PAGE_LOAD_S * 1000, wait_until="domcontentloaded")
        try:
            page.wait_for_selector(".widget-upload", timeout=PAGE_LOAD_S * 1000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "demo-load-failed.png"), full_page=True)
            raise AssertionError("the demo page never showed the upload button; voila log:\n"
                                 + log.read_text()[-3000:]) from None
        app = page.locator(".fer-demo")
        expect(page.get_by_text("this run's checkpoint").first).to_be_visible()

        _upload(page, photo)
        summary = app.locator(".fer-summary")
        expect(summary).to_contain_text("1 face classified: face 1:", timeout=ANSWER_S * 1000)
        expect(summary).to_contain_text("%")
        plots = app.locator(".js-plotly-plot")
        expect(plots).to_have_count(2, timeout=ANSWER_S * 1000)        # the photo, and face 1's bars
        expect(plots.first.locator(".shapelayer path")).to_have_count(1)  # one face box on the photo
        expect(plots.first).to_contain_text("1")                          # its number
        bars = plots.nth(1)
        expect(bars.locator(".bars .point")).to_have_count(7)           # one bar per class
        for emotion in ("happy", "sad", "neutral"):
            expect(bars).to_contain_text(emotion)
        expect(bars).to_contain_text("%")
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

        _upload(page, bad)
        error = app.locator(".fer-error")
        expect(error).to_contain_text("holiday.jpg", timeout=ANSWER_S * 1000)
        expect(error).to_contain_text("is not an image that can be read")
        expect(app.locator(".fer-summary")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "demo-bad-file.png"), full_page=True)

        _upload(page, big)
        expect(app.locator(".fer-note")).to_contain_text("No face was found", timeout=ANSWER_S * 1000)
        expect(app.locator(".fer-result h3")).to_have_text("static.png")

        page.get_by_role("button", name="Try the sample photo").click()
        expect(app.locator(".fer-result h3")).to_have_text("astronaut.png", timeout=ANSWER_S * 1000)
        expect(app.locator(".fer-error")).to_have_count(0)
        app.get_by_role("checkbox").check()  # "Skip face detection": re-runs the last photo as one cropped face
        expect(app.locator(".js-plotly-plot").nth(1)).to_contain_text("whole image", timeout=ANSWER_S * 1000)
        problems = [p for p in watch.problems() if p not in KNOWN_PAGE_ERRORS]
        assert not problems, "\n".join(problems)
