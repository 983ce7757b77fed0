"""The demo's live camera and video upload end to end: Voila serves notebooks/06_demo.py, Chromium plays a clip
made at test time from scikit-image's astronaut as its (fake) camera, the user presses *Start camera*, and a face
box with an id and a label must come back over the picture; then a video file uploaded below must give a
timeline figure, and a file that is not a video a one-line error.

Needs Debian's chromium; skips without it, except where FER_REQUIRE_BROWSER=1 (.ci/run): there it fails.
Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pytest

from browser import CHROMIUM_ARGS, PageWatch, chromium_or_skip
from photos import astronaut
from test_video import make_clip
from test_demo_browser import ALLOW_OFFHOST, ANSWER_S, ARTIFACTS, KNOWN_PAGE_ERRORS, PAGE_LOAD_S, voila_demo  # noqa: F401

pytestmark = pytest.mark.slow
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def write_y4m(path, frames: int = 30, size=(640, 480)) -> None:
    """A raw YUV4MPEG2 clip (what Chromium's fake camera reads): the astronaut drifting over gray."""
    width, height = size
    head = np.asarray(astronaut().resize((300, 300)))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            frame = np.full((height, width, 3), 120, np.uint8)
            x = 150 + round(10 * np.sin(i / 5))
            frame[60:360, x:x + 300] = head
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


@contextlib.contextmanager
def camera_browser(clip):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_or_skip(), headless=True,
                                     args=CHROMIUM_ARGS + FAKE_CAMERA + [f"--use-file-for-fake-video-capture={clip}"])
        try:
            yield browser
        finally:
            browser.close()


def test_the_camera_shows_a_face_box_and_label(voila_demo, tmp_path):  # noqa: F811 (the imported fixture)
    from playwright.sync_api import expect

    url, log = voila_demo
    clip = tmp_path / "camera.y4m"
    write_y4m(clip)
    ARTIFACTS.mkdir(exist_ok=True)
    with camera_browser(clip) as browser:
        page = browser.new_page(viewport=dict(width=1100, height=2400))
        watch = PageWatch(page, allow_offhost=ALLOW_OFFHOST)
        page.goto(url, timeout=PAGE_LOAD_S * 1000, wait_until="domcontentloaded")
        try:
            page.wait_for_selector(".fer-camera-start", timeout=PAGE_LOAD_S * 1000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "camera-load-failed.png"), full_page=True)
            raise AssertionError("the demo page never showed the camera; voila log:\n" + log.read_text()[-3000:]) from None
        expect(page.locator(".fer-camera-note")).to_contain_text("only on localhost or over HTTPS")
        page.click(".fer-camera-start")
        status = page.locator(".fer-camera-status")
        expect(status).to_contain_text("#1 ", timeout=ANSWER_S * 1000)
        assert any(c in status.inner_text() for c in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"))
        expect(status).to_contain_text("ms in the kernel")
        drawn = page.evaluate("""() => {
            const c = document.querySelector('.fer-camera-overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
        }""")
        assert drawn > 100, "no face box was drawn over the camera picture"
        page.screenshot(path=str(ARTIFACTS / "camera.png"), full_page=True)
        page.click(".fer-camera-stop")
        expect(status).to_have_text("Camera off.")

        live = page.locator(".fer-live")
        for path in (make_clip(tmp_path / "walk.mp4"), tmp_path / "notes.mp4"):
            if not path.exists():
                path.write_text("not a video\n")
            with page.expect_file_chooser() as chooser:
                live.locator(".widget-upload").click()
            chooser.value.set_files(str(path))
            if path.name == "walk.mp4":
                expect(live.locator(".fer-video-summary")).to_contain_text("walk.mp4: 24 frames, 1 face id(s)",
                                                                          timeout=ANSWER_S * 1000)
                expect(live.locator(".js-plotly-plot")).to_have_count(1, timeout=ANSWER_S * 1000)
                expect(live.locator(".js-plotly-plot")).to_contain_text("Face #1")
                page.screenshot(path=str(ARTIFACTS / "video-upload.png"), full_page=True)
        expect(live.locator(".fer-error")).to_contain_text("notes.mp4 is not a video that can be read",
                                                           timeout=ANSWER_S * 1000)
        expect(live.locator(".fer-video-summary")).to_have_count(0)
        problems = [p for p in watch.problems() if p not in KNOWN_PAGE_ERRORS]
        assert not problems, "\n".join(problems)
