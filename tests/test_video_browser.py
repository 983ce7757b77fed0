"""The annotated videos `fer video` writes play in Chromium: H.264 in .mp4 and VP9 in .webm, served over
HTTP as a user would open them, reach readyState >= 2 (a frame to show), play on (currentTime advances)
and raise no media error.

Needs Debian's chromium (/usr/bin/chromium); skips without it, except where FER_REQUIRE_BROWSER=1 (.ci/run):
there a missing browser fails.
"""
from __future__ import annotations

import pytest

from browser import PageWatch, chromium_or_skip, launch, serve_dir
from fer_utils.app import video
from photos import tiny_checkpoint
from test_video import make_clip

pytestmark = pytest.mark.slow

PAGE = """<!doctype html><meta charset="utf-8"><title>annotated</title>
<video id="v" src="{name}" muted playsinline preload="auto"></video>"""


@pytest.mark.parametrize("suffix, mime", [(".mp4", "video/mp4"), (".webm", "video/webm")])
def test_the_annotated_video_plays_in_chromium(tmp_path, suffix, mime):
    chromium_or_skip()
    from fer_utils.app.predict import load_predictor

    site = tmp_path / "site"
    site.mkdir()
    predictor = load_predictor(tiny_checkpoint(tmp_path / "tiny.pt"))
    out = site / f"annotated{suffix}"
    summary = video.process_video(make_clip(tmp_path / "clip.mp4", frames=72), predictor, out, None, progress=False)
    assert summary.frames == 72 and summary.face_ids == [1]
    (site / "index.html").write_text(PAGE.format(name=out.name))
    with serve_dir(site) as base, launch() as browser:
        page = browser.new_page()
        watch = PageWatch(page)
        page.goto(base + "index.html")
        assert page.evaluate(f"document.createElement('video').canPlayType('{mime}')") in ("maybe", "probably")
        page.wait_for_function("document.getElementById('v').readyState >= 2 || document.getElementById('v').error",
                               timeout=30_000)
        state = page.evaluate("""async () => {
            const v = document.getElementById('v');
            if (v.error) return {error: v.error.code + ' ' + v.error.message};
            const before = v.currentTime;
            await v.play();
            await new Promise(r => setTimeout(r, 1500));
            return {ready: v.readyState, before, after: v.currentTime, error: v.error && v.error.code,
                    width: v.videoWidth, height: v.videoHeight, duration: v.duration};
        }""")
        assert not state.get("error"), state
        assert state["ready"] >= 2 and state["after"] > state["before"] + 0.3, state
        assert (state["width"], state["height"]) == (320, 240) and state["duration"] == pytest.approx(3.0, abs=0.1)
        assert not watch.problems(), watch.problems()
