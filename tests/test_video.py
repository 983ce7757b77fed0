"""`fer video`: the timeline CSV and a browser-playable annotated video from a clip, ids kept by the tracker,
smoothing in real time, and every kind of bad input refused with one line (or processed and reported),
without losing an output that was already there.

Clips are made at test time from scikit-image's astronaut (a real face photo inside the wheel); files a
normal encoder would not make (rotation metadata, a codec FFmpeg does not know) are made with the ffmpeg
binary that imageio-ffmpeg ships.
"""
from __future__ import annotations

import subprocess
import threading
import time

import av
import numpy as np
import pandas as pd
import pytest

from fer_utils.analysis import timeline as timeline_mod
from fer_utils.app import video
from fer_utils.app.video import IoUTracker, Track, VideoWriter
from photos import FER2013_CLASSES, astronaut, tiny_checkpoint

HEAD = np.asarray(astronaut().resize((256, 256)))  # the face is ~50 px wide at this size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def make_clip(path, frames=24, size=(320, 240), fps=24, face=True, times=None, step=2, turn=0):
    """A clip of the astronaut sliding right by `step` px a frame (or a plain gray one without `face`),
    stored turned clockwise by `turn` quarter turns (as a phone stores a portrait video)."""
    width, height = size
    head = HEAD[::2, ::2] if min(size) <= 240 else HEAD
    writer = VideoWriter(path, path.suffix, *((height, width) if turn % 2 else (width, height)), fps)
    for i in range(frames):
        frame = np.full((height, width, 3), 120, np.uint8)
        if face:
            x = 10 + step * i
            frame[10:10 + head.shape[0], x:x + head.shape[1]] = head
        writer.write(np.rot90(frame, -turn), times[i] if times is not None else i / fps)
    writer.close()
    return path


def ffmpeg(*args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True)


def decoded(path):
    """(codec name, number of frames, (width, height)) of a video, by decoding all of it."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return s.codec_context.name, n, (s.width, s.height)


def run_cli(args, capsys):
    code = video.main([*map(str, args), "--no-progress"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


# -- what it makes ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, codec", [(".mp4", "h264"), (".webm", "vp9")])
def test_cli_writes_the_timeline_and_a_playable_video(tmp_path, checkpoint, capsys, suffix, codec):
    clip = make_clip(tmp_path / "clip.mp4")
    out, csv = tmp_path / f"annotated{suffix}", tmp_path / "timeline.csv"
    code, errors, _ = run_cli([clip, "--out", out, "--csv", csv, "--checkpoint", checkpoint], capsys)
    assert code == 0 and not errors
    got_codec, n, size = decoded(out)
    assert (got_codec, n, size) == (codec, 24, (320, 240))
    table = pd.read_csv(csv)
    assert list(table.columns) == video.timeline_columns(FER2013_CLASSES)
    assert len(table) >= 20 and set(table["face_id"]) == {1}  # one face, one id all along
    probs = table[[f"prob_{c}" for c in FER2013_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-3)
    assert np.allclose(table["time_s"], table["frame"] / 24, atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("container", [".mov", ".avi", ".mkv", ".webm"])
def test_cli_reads_the_common_containers(tmp_path, checkpoint, capsys, container):
    if container == ".webm":
        clip = make_clip(tmp_path / "clip.webm")
    else:
        clip = tmp_path / f"clip{container}"
        ffmpeg("-i", make_clip(tmp_path / "clip.mp4"), "-c", "copy", clip)
    csv = tmp_path / "t.csv"
    assert run_cli([clip, "--csv", csv, "--checkpoint", checkpoint], capsys)[:2] == (0, [])
    table = pd.read_csv(csv)
    assert len(table) >= 20 and table["frame"].max() == 23 and set(table["face_id"]) == {1}


def test_outputs_that_cannot_be_written_are_refused_first(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "clip.mp4")
    for args, expect in (([clip, "--csv", clip], "is the input video"),
                         ([clip, "--csv", tmp_path / "no" / "t.csv"], "does not exist"),
                         ([clip, "--out", tmp_path / "a.mp4", "--csv", tmp_path / "a.mp4"], "choose two names"),
                         ([clip, "--out", tmp_path / "a.gif"], "must end in .mp4 or .webm")):
        code, errors, _ = run_cli([*args, "--checkpoint", checkpoint], capsys)
        assert code == 1 and len(errors) == 1 and expect in errors[0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_every_n_analyses_every_nth_frame_and_still_writes_all(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=30)
    out, csv = tmp_path / "a.mp4", tmp_path / "t.csv"
    assert run_cli([clip, "--out", out, "--csv", csv, "--every", "3", "--checkpoint", checkpoint], capsys)[0] == 0
    table = pd.read_csv(csv)
    assert set(table["frame"]) <= set(range(0, 30, 3)) and len(table) >= 8
    assert decoded(out)[1] == 30


def test_smoothing_zero_leaves_the_probabilities_raw(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "clip.mp4")
    for smooth, same in (("0", True), ("0.5", False)):
        csv = tmp_path / f"t{smooth}.csv"
        assert run_cli([clip, "--csv", csv, "--smooth", smooth, "--checkpoint", checkpoint], capsys)[0] == 0
        table = pd.read_csv(csv)
        raw = table[[f"prob_{c}" for c in FER2013_CLASSES]].to_numpy()
        smoothed = table[[f"smooth_{c}" for c in FER2013_CLASSES]].to_numpy()
        assert np.allclose(raw, smoothed, atol=1e-5) == same


def test_ema_weighs_real_time_not_frames():
    """The same time gap decays the past by the same amount, whatever the frame rate."""
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    fast, slow = Track(1, (0, 0, 1, 1), 0.0), Track(2, (0, 0, 1, 1), 0.0)
    fast.smooth(a, 0.5, 0)
    slow.smooth(a, 0.5, 0)
    for _ in range(10):
        fast.smooth(b, 0.5, 0.1)
    slow.smooth(b, 0.5, 1.0)
    np.testing.assert_allclose(fast.smoothed, slow.smoothed)
    np.testing.assert_allclose(slow.smoothed, [np.exp(-2), 1 - np.exp(-2)])


# -- tracking -----------------------------------------------------------------------------------

def test_tracker_keeps_ids_of_moving_faces_in_any_order():
    tracker = IoUTracker()
    ids = []
    for i in range(20):
        left, right = (10 + 3 * i, 50, 60, 60), (300 - 3 * i, 60, 50, 50)
        boxes = [left, right] if i % 2 else [right, left]  # the detector's order changes
        got = {b: t.id for b, (t, _) in zip(boxes, tracker.update(boxes, i / 25))}
        ids.append((got[left], got[right]))
    assert set(ids) == {(1, 2)} or set(ids) == {(2, 1)}


def test_a_face_that_leaves_and_comes_back_gets_a_new_id():
    """Documented: nothing recognises who a face is, so after MAX_GAP_S away it is a new face."""
    tracker = IoUTracker()
    box = (100, 100, 50, 50)
    first = [tracker.update([box], t / 25)[0][0].id for t in range(10)]
    assert tracker.update([], 0.5) == []
    short_gap = tracker.update([box], 0.6)[0][0].id      # missed for 0.24 s: the same face
    back = tracker.update([box], 0.6 + video.MAX_GAP_S + 0.1)[0][0].id
    assert set(first) == {1} and short_gap == 1 and back == 2


def test_cli_gives_a_returning_face_a_new_id(tmp_path, checkpoint, capsys):
    width, height, fps = 320, 240, 10
    writer = VideoWriter(tmp_path / "away.mp4", ".mp4", width, height, fps)
    head = HEAD[::2, ::2]
    for i in range(30):  # face, 1.5 s without it, face again
        frame = np.full((height, width, 3), 120, np.uint8)
        if not 10 <= i < 25:
            frame[10:138, 40:168] = head
        writer.write(frame, i / fps)
    writer.close()
    csv = tmp_path / "t.csv"
    assert run_cli([tmp_path / "away.mp4", "--csv", csv, "--checkpoint", checkpoint], capsys)[0] == 0
    table = pd.read_csv(csv)
    assert table.groupby("face_id")["frame"].agg(["min", "max"]).values.tolist() == [[0, 9], [25, 29]]


# -- bad input ----------------------------------------------------------------------------------

@pytest.fixture
def old_outputs(tmp_path):
    """Outputs from an earlier run that a failed run must leave alone."""
    out, csv = tmp_path / "old.mp4", tmp_path / "old.csv"
    out.write_bytes(b"earlier video")
    csv.write_text("earlier timeline\n")
    return out, csv


def _refused(tmp_path, source, checkpoint, capsys, old_outputs, expect):
    out, csv = old_outputs
    code, errors, _ = run_cli([source, "--out", out, "--csv", csv, "--checkpoint", checkpoint], capsys)
    assert code == 1 and len(errors) == 1 and expect in errors[0], errors
    assert out.read_bytes() == b"earlier video" and csv.read_text() == "earlier timeline\n"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_file_that_is_not_a_video_is_refused(tmp_path, checkpoint, capsys, old_outputs):
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is a text file, not a video\n")
    _refused(tmp_path, bad, checkpoint, capsys, old_outputs, "is not a video that can be read")


def test_a_photo_is_refused_as_a_still_image(tmp_path, checkpoint, capsys, old_outputs):
    photo = tmp_path / "astronaut.png"
    astronaut().save(photo)
    _refused(tmp_path, photo, checkpoint, capsys, old_outputs, "is a still image")


def test_a_video_without_frames_is_refused(tmp_path, checkpoint, capsys, old_outputs):
    empty = VideoWriter(tmp_path / "empty.webm", ".webm", 64, 64, 25)
    empty.container.start_encoding()  # the header, then no frame at all
    empty.close()
    _refused(tmp_path, tmp_path / "empty.webm", checkpoint, capsys, old_outputs, "has no frames")


def test_an_unknown_codec_is_refused(tmp_path, checkpoint, capsys, old_outputs):
    ffmpeg("-i", make_clip(tmp_path / "clip.mp4"), "-c", "copy", tmp_path / "clip.mkv")
    data = (tmp_path / "clip.mkv").read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "odd.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QWERT/ISO/XYZ"))  # a codec id no one knows
    _refused(tmp_path, tmp_path / "odd.mkv", checkpoint, capsys, old_outputs, "cannot decode")


def test_a_truncated_file_without_its_index_is_refused(tmp_path, checkpoint, capsys, old_outputs):
    # ffmpeg's plain mp4 keeps the index (moov) at the end: a cut-off download has none
    ffmpeg("-i", make_clip(tmp_path / "clip.mp4", frames=48), "-c", "copy", tmp_path / "plain.mp4")
    data = (tmp_path / "plain.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    _refused(tmp_path, tmp_path / "cut.mp4", checkpoint, capsys, old_outputs, "is not a video that can be read")


def test_a_truncated_file_is_processed_up_to_the_break_and_reported(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=48)  # faststart: the index comes first
    with av.open(str(clip)) as c:
        at = [p.pos for p in c.demux(video=0) if p.size][24]  # cut in the middle of the 25th frame
    (tmp_path / "cut.mp4").write_bytes(clip.read_bytes()[:at + 10])
    out, csv = tmp_path / "a.mp4", tmp_path / "t.csv"
    code, errors, _ = run_cli([tmp_path / "cut.mp4", "--out", out, "--csv", csv, "--checkpoint", checkpoint], capsys)
    assert code == 1 and len(errors) == 1 and "truncated" in errors[0] and "should last 2.00 s" in errors[0], errors
    n = decoded(out)[1]
    assert 15 < n < 48 and pd.read_csv(csv)["frame"].max() < n


def test_no_face_in_any_frame_gives_an_empty_timeline_and_a_message(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "gray.mp4", face=False)
    csv = tmp_path / "t.csv"
    code, errors, err = run_cli([clip, "--csv", csv, "--checkpoint", checkpoint], capsys)
    assert code == 0 and not errors and "No face was found in any of the 24 analysed frames" in err
    table = video.read_timeline(csv)
    assert table.empty and list(table.columns) == video.timeline_columns(FER2013_CLASSES)


def test_variable_frame_rate_uses_the_files_timestamps(tmp_path, checkpoint, capsys):
    times = np.cumsum([0] + [0.04, 0.1] * 11 + [0.04])[:24]  # alternating 25 and 10 fps
    clip = make_clip(tmp_path / "vfr.mp4", times=times)
    csv = tmp_path / "t.csv"
    assert run_cli([clip, "--csv", csv, "--checkpoint", checkpoint], capsys)[0] == 0
    table = pd.read_csv(csv)
    np.testing.assert_allclose(table["time_s"], times[table["frame"]], atol=2e-3)


def test_phone_rotation_metadata_is_applied(tmp_path, checkpoint, capsys):
    clip = make_clip(tmp_path / "clip.mp4", size=(240, 320), turn=1)  # portrait, stored lying on its side
    ffmpeg("-display_rotation", "90", "-i", clip, "-c", "copy", tmp_path / "phone.mp4")
    reference = tmp_path / "upright.png"
    ffmpeg("-i", tmp_path / "phone.mp4", "-frames:v", "1", reference)  # ffmpeg's own auto-rotation
    first = next(iter(video.VideoReader(tmp_path / "phone.mp4"))).rgb
    from PIL import Image
    assert first.shape == (320, 240, 3)
    assert np.abs(first.astype(int) - np.asarray(Image.open(reference)).astype(int)).mean() < 2
    out, csv = tmp_path / "a.mp4", tmp_path / "t.csv"
    assert run_cli([tmp_path / "phone.mp4", "--out", out, "--csv", csv, "--checkpoint", checkpoint], capsys)[0] == 0
    assert decoded(out)[2] == (240, 320)
    table = pd.read_csv(csv)
    assert len(table) >= 20 and (table["x"] + table["w"] <= 240).all() and (table["y"] + table["h"] <= 320).all()


def _rss_anon_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


@pytest.mark.slow
def test_memory_stays_flat_on_a_long_video(tmp_path, checkpoint):
    frames = 3000  # 100 s at 30 fps
    clip = make_clip(tmp_path / "long.mp4", frames=frames, size=(240, 180), fps=30, step=0)
    from fer_utils.app.predict import load_predictor

    predictor = load_predictor(checkpoint)
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append(_rss_anon_mib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        summary = video.process_video(clip, predictor, tmp_path / "a.mp4", tmp_path / "t.csv", every=10,
                                      progress=False)
    finally:
        done.set()
        sampler.join()
    assert summary.frames == frames and summary.analysed == frames // 10 and summary.rows > 0
    quarter = len(samples) // 4
    growth = max(samples[-quarter:]) - max(samples[quarter:2 * quarter])
    assert growth < 5, f"RssAnon grew by {growth:.1f} MiB over the second half of {frames} frames"


# -- figures and scores -------------------------------------------------------------------------

def test_expression_clip_truth_and_scores(tmp_path):
    """The clip's truth follows its faces; a timeline equal to the truth scores perfectly, with no delay."""
    gray = np.full((48, 48), 100, np.uint8)
    faces = [("happy", gray), ("sad", gray + 50), ("anger", gray + 100)]
    truth = video.expression_clip(faces, tmp_path / "clip.mp4", hold_s=1.0, fade_s=0.5, fps=10, size=(160, 120),
                                  face_px=64)
    assert len(truth) == decoded(tmp_path / "clip.mp4")[1] == 40
    assert truth["label"].tolist() == ["happy"] * 13 + ["sad"] * 15 + ["anger"] * 12  # switch at mid-fade
    rows = truth.assign(face_id=1, x=0, y=0, w=10, h=10, smoothed_label=truth["label"])
    score = timeline_mod.score_against_truth(rows, truth)
    assert score["accuracy"] == score["smoothed_accuracy"] == score["found"] == 1.0
    assert score["changes"] == 2 and score["delay_added_s"] == 0 and score["flicker_raw"] == score["flicker_true"]
    late = rows.assign(smoothed_label=rows["label"].shift(3).fillna("happy"))
    assert timeline_mod.score_against_truth(late, truth)["delay_added_s"] == pytest.approx(0.3)


@pytest.mark.slow
def test_the_video_chapter_scores_its_clip(tmp_path):
    """notebooks/08_video.py on tiny synthetic params: the clip, the timeline and computed scores appear."""
    import nbformat

    from conftest import TINY
    from fer_utils.book import pipeline
    from fer_utils.paths import NOTEBOOK_DIR

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "params.yaml").write_text(TINY + f"data_dir: {tmp_path / 'synthetic'}\nrun_name: tiny\n")
    tiny_checkpoint(run_dir / "best.pt", dataset="synthetic")
    pipeline.execute(NOTEBOOK_DIR / "08_video.py", run_dir)
    texts = [o["data"].get("text/markdown", "") for c in nbformat.read(run_dir / "08_video.ipynb", 4).cells
             if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o]
    prose = "\n".join(texts)
    truth = pd.read_csv(run_dir / "video" / "truth.csv")
    score = timeline_mod.score_against_truth(video.read_timeline(run_dir / "video" / "timeline.csv"), truth)
    assert f"{len(truth)} frames" in prose and "cross-faded" in prose
    assert f"right {score['accuracy']:.0%} of the time" in prose
    assert f"the smoothed one {score['flicker_smoothed']:.2f} times" in prose
    assert "the model does not know the classes contempt" in prose  # the tiny model has FER2013's 7 classes
    assert decoded(run_dir / "video" / "annotated.mp4")[1] == len(truth)
