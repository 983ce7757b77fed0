"""Emotions of the faces in a video: stream it, track each face, smooth over time, write a timeline.

    fer video INPUT [--out annotated.mp4|.webm] [--csv timeline.csv] [--every N] [--smooth S]
                    [--checkpoint C | --run-dir RUN] [--max-faces N] [--detect-side PX] [--detector D]

- Reading (`VideoReader`): any file FFmpeg (PyAV's bundled build) decodes: mp4, mov, avi, webm, mkv.
  Frames are streamed one at a time (memory does not grow with the video's length), turned upright
  by the rotation metadata phones write, and stamped with their own presentation time, so a
  variable-frame-rate video gets true times. Anything unusable raises `VideoError` with one line for
  the user: not a video, a still image, damaged, no video stream, a codec this build cannot decode,
  no frames. A file that breaks off part way is processed up to the break, and the summary says so.
- Faces (`FaceTimeline`, shared with the demo's live camera): the photo demo's own detector and crop
  (`app.faces`, on a copy at most DETECT_SIDE pixels wide) and classifier (`app.predict.classify`),
  on every `--every`-th frame; the frames between show the last boxes. `IoUTracker` gives each face a
  stable id by box overlap with the boxes of the previous analysed frame. A face that is not seen for `max_gap_s` seconds (it left the
  picture, or the detector missed it) is forgotten: when it comes back it gets a NEW id, since
  nothing here recognises who a face is.
- Smoothing: each track's probabilities are an exponential moving average with a time constant of
  `--smooth` seconds (weights follow the real time between frames, so it means the same at any frame
  rate or `--every`); `--smooth 0` turns it off.
- Outputs (each written to a temporary file and renamed at the end, so an existing file is replaced
  only by a complete new one): the CSV timeline (one row per analysed frame and face: frame, time_s,
  face_id, x, y, w, h, prob_<class>, label, smooth_<class>, smoothed_label) and an annotated video
  (boxes, id, smoothed label, a bar of the probabilities per face) as H.264 in .mp4 or VP9 in .webm,
  yuv420p: both play in Chromium, Firefox and Safari (VP9 not in old Safari).

`expression_clip` makes a test clip with a known true label for every frame from a dataset's
validation faces (the video chapter scores the timeline against it).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..analysis.figures import emotion_colors
from ..data.explore import sample_faces
from ..paths import atomic_write
from . import faces as faces_mod
from .predict import add_model_arguments, classify, cpu_threads, positive_int, predictor_from_args

SMOOTH_S = 0.5        # EMA time constant (seconds): long enough to hide single-frame flips, short enough to follow
MAX_GAP_S = 0.5       # a track unseen this long is forgotten (a face that comes back later gets a new id)
IOU_MIN = 0.3         # least overlap with a track's last box for a detection to continue that track
# Detection runs on a copy of each frame at most this many pixels on its longest side: faces of 20 px
# and more in a 640 x 480 frame are found, at ~35 ms a frame with YuNet on one busy core (a photo gets
# up to 1600 px: there one picture may wait a second, a video may not).
DETECT_SIDE = 320
ENCODERS = {".mp4": ("mp4", "libx264", {"preset": "veryfast", "crf": "23"}),
            ".webm": ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1",
                                              "crf": "33", "b": "0"})}
STILL_FORMATS = ("image2", "_pipe", "apng")  # FFmpeg's demuxers for single images
TIME_BASE = Fraction(1, 1000)                # output timestamps in milliseconds, from the input's own times


class VideoError(ValueError):
    """The file cannot be used as a video; the message says why, in one line for the user."""


# -- reading ----------------------------------------------------------------------------------

@dataclass
class VideoFrame:
    index: int          # position in the decoded stream, from 0
    time_s: float       # presentation time from the file (not index / fps: variable frame rates exist)
    rgb: np.ndarray     # H x W x 3 uint8, upright


class VideoReader:
    """Open a video for streaming. `info` is known after opening; iterate for `VideoFrame`s.

    After the iteration, `decoded` is the number of frames read and `broken` a message when the file
    ended in an error or fewer frames than its header promised (a truncated download), else None."""

    def __init__(self, path: str | Path):
        import av

        self.path = Path(path)
        name = str(path)
        if not self.path.is_file():
            raise VideoError(f"{name}: " + ("not a file" if self.path.exists() else "no such file"))
        if self.path.stat().st_size == 0:
            raise VideoError(f"{name} is empty (0 bytes)")
        try:
            self.container = av.open(name, metadata_errors="ignore")
        except av.error.EOFError:  # a header and nothing after it
            raise VideoError(f"{name} has no frames: it ends before its first frame") from None
        except av.error.FFmpegError as err:
            raise VideoError(f"{name} is not a video that can be read ({_ffmpeg_reason(err)}): "
                             "use an mp4, mov, avi, webm or mkv file") from None
        fmt = self.container.format.name
        if any(s in fmt for s in STILL_FORMATS):
            self.container.close()
            raise VideoError(f"{name} is a still image ({fmt}), not a video: use `fer predict` for photos")
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{name} has no video stream (a {fmt} file with "
                             f"{len(self.container.streams.audio)} audio stream(s))")
        self.stream = self.container.streams.video[0]
        if self.stream.codec_context is None:
            self.container.close()
            raise VideoError(f"{name} uses a video codec that this FFmpeg build cannot decode: "
                             "convert it to H.264 (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
        self.stream.thread_type = "AUTO"
        self.codec = self.stream.codec_context.name
        rate = self.stream.average_rate or self.stream.base_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.frames_expected = int(self.stream.frames or 0)  # for the progress bar: 0 when unknown
        # The duration the header declares. A truncated file is told by its last frame's time falling short
        # of it (a frame count is no test: AVI counts time slots, so a variable-rate source seems to lose frames).
        if self.stream.duration:
            self.duration_s = float(self.stream.duration * self.stream.time_base)
        else:
            self.duration_s = self.container.duration / 1e6 if self.container.duration else None
        self.last_s: float | None = None
        self.decoded = 0
        self.broken: str | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.container.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        import av

        step = 1.0 / self.fps if self.fps > 0 else 1 / 30
        last = -math.inf
        damaged, reason = 0, ""

        def packets():
            nonlocal damaged, reason
            try:
                yield from self.container.demux(self.stream)  # ends with an empty packet, which flushes
            except av.error.FFmpegError as err:  # the file breaks off: flush what the decoder holds
                damaged, reason = damaged + 1, _ffmpeg_reason(err)
                yield None

        for packet in packets():
            try:
                frames = packet.decode() if packet is not None else self.stream.codec_context.decode(None)
            except av.error.FFmpegError as err:  # one damaged packet: skip it, count it, go on
                damaged, reason = damaged + 1, _ffmpeg_reason(err)
                continue
            for frame in frames:
                rgb = frame.to_ndarray(format="rgb24")
                turns = round((frame.rotation or 0) / 90) % 4  # counterclockwise quarter turns to upright
                if turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, turns))
                t = frame.time if frame.time is not None else last + step
                last = t = max(t, last + 1e-3)  # strictly increasing, even for a muddled file
                self.last_s = float(t)
                yield VideoFrame(self.decoded, float(t), rgb)
                self.decoded += 1
        problems = []
        start = float(self.stream.start_time * self.stream.time_base) if self.stream.start_time else 0.0
        if self.decoded and self.duration_s and start + self.duration_s - (self.last_s + step) > max(0.5, 3 * step):
            problems.append(f"it should last {self.duration_s:.2f} s, decoding stopped at {self.last_s - start:.2f} s "
                            f"({self.decoded} frames)")
        if damaged:
            problems.append(f"{damaged} damaged packet(s) skipped ({reason})")
        if problems:
            self.broken = f"{self.path} is truncated or damaged: " + "; ".join(problems)
        elif self.decoded == 0:
            self.broken = f"{self.path} has no frames"


def _ffmpeg_reason(err) -> str:
    """FFmpeg's reason without the path it repeats."""
    return str(getattr(err, "strerror", None) or err).split(":")[0]


# -- writing ----------------------------------------------------------------------------------

class VideoWriter:
    """An H.264 (.mp4) or VP9 (.webm) yuv420p file that browsers play, written frame by frame with the
    input's own timestamps. Odd widths/heights lose their last pixel row/column (yuv420p needs even)."""

    def __init__(self, path: str | Path, suffix: str, width: int, height: int, fps: float):
        import av

        fmt, codec, options = ENCODERS[suffix]
        self.container = av.open(str(path), "w", format=fmt,
                                 options={"movflags": "+faststart"} if fmt == "mp4" else {})
        self.stream = self.container.add_stream(codec, rate=Fraction(fps or 30).limit_denominator(1001),
                                                options=options)
        self.width, self.height = width - width % 2, height - height % 2
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.codec_context.time_base = TIME_BASE
        self._last_pts = -1

    def write(self, rgb: np.ndarray, time_s: float) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:self.height, :self.width]), format="rgb24")
        self._last_pts = frame.pts = max(round(time_s / TIME_BASE), self._last_pts + 1)
        frame.time_base = TIME_BASE
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


# -- tracking and smoothing -------------------------------------------------------------------

def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed over time: its id, last box and time seen, and smoothed probabilities."""
    id: int
    box: tuple
    last_s: float
    smoothed: np.ndarray | None = None

    def smooth(self, probs: np.ndarray, tau_s: float, dt_s: float) -> np.ndarray:
        """EMA with weight exp(-dt/tau) on the past: the same decay per second at any frame rate."""
        if self.smoothed is None or tau_s <= 0:
            self.smoothed = np.asarray(probs, dtype=np.float64).copy()
        else:
            keep = math.exp(-dt_s / tau_s)
            self.smoothed = keep * self.smoothed + (1 - keep) * np.asarray(probs, dtype=np.float64)
        return self.smoothed


@dataclass
class IoUTracker:
    """Greedy IoU matching of each analysed frame's boxes to the live tracks (highest overlap first).

    A detection overlapping no live track by `iou_min` starts a new track with the next id; a track not
    matched for more than `max_gap_s` seconds is dropped, so a face that leaves and comes back later
    gets a new id (documented behaviour: there is no face recognition here)."""
    iou_min: float = IOU_MIN
    max_gap_s: float = MAX_GAP_S
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def update(self, boxes: list, time_s: float) -> list[tuple[Track, float]]:
        """The track of each box (in the boxes' order), with the seconds since that track was last seen
        (0 for a new track)."""
        self.tracks = [t for t in self.tracks if time_s - t.last_s <= self.max_gap_s]
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        assigned: dict[int, int] = {}
        used = set()
        for overlap, ti, bi in pairs:
            if overlap < self.iou_min:
                break
            if bi in assigned or ti in used:
                continue
            assigned[bi] = ti
            used.add(ti)
        out = []
        for bi, box in enumerate(boxes):
            if bi in assigned:
                track = self.tracks[assigned[bi]]
                gap = time_s - track.last_s
            else:
                track = Track(self.next_id, tuple(box), time_s)
                self.next_id += 1
                self.tracks.append(track)
                gap = 0.0
            track.box, track.last_s = tuple(box), time_s
            out.append((track, gap))
        return out


@dataclass
class TrackedFace:
    """One face of one analysed frame: its track id, the classifier's answer, the smoothed probabilities."""
    id: int
    prediction: object        # predict.FacePrediction: box, label, probabilities, crop
    raw: np.ndarray           # probabilities in the model's class order
    smoothed: np.ndarray
    label: str                # the smoothed label


class FaceTimeline:
    """The per-frame step shared by video files and the live camera: detect, track, classify, smooth.

    `analyse(image, time_s)` -> a TrackedFace per face found (largest first); times are seconds on
    any clock that only moves forward (a file's timestamps, or time.monotonic() for a camera)."""

    def __init__(self, predictor, smooth_s: float = SMOOTH_S, max_faces: int = faces_mod.MAX_FACES,
                 detect_side: int = DETECT_SIDE, detector: str | None = None, max_gap_s: float = MAX_GAP_S):
        self.predictor, self.classes = predictor, list(predictor.classes)
        self.smooth_s, self.max_faces, self.detect_side, self.detector = smooth_s, max_faces, detect_side, detector
        self.tracker = IoUTracker(max_gap_s=max_gap_s)

    def analyse(self, image, time_s: float) -> list[TrackedFace]:

        found = [f for f in faces_mod.detect_faces(image, max_faces=self.max_faces, detect_side=self.detect_side,
                                                   detector=self.detector).faces if f.detected]
        predictions = classify(self.predictor, image, found) if found else []
        out = []
        for (track, gap), pred in zip(self.tracker.update([f.box for f in found], time_s), predictions):
            raw = np.array([pred.probabilities[c] for c in self.classes])
            smoothed = track.smooth(raw, self.smooth_s, gap).copy()
            out.append(TrackedFace(track.id, pred, raw, smoothed, self.classes[int(np.argmax(smoothed))]))
        return out


# -- drawing ----------------------------------------------------------------------------------

def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


class Painter:
    """Boxes, `#id label p%` and a stacked probability bar (one colour per class, as in the book's
    figures) under each face, and a colour legend in the top-left corner."""

    def __init__(self, classes: list[str], width: int, height: int):
        import cv2


        self.classes = classes
        self.colors = [_rgb(c) for c in emotion_colors(classes).values()]
        self.scale = max(0.4, min(width, height) / 900)
        self.thick = max(1, round(2 * self.scale))
        line = round(22 * self.scale)
        legend = np.zeros((line * len(classes) + 6, round(130 * self.scale), 3), np.uint8)
        for i, (name, color) in enumerate(zip(classes, self.colors)):
            y = 4 + i * line
            cv2.rectangle(legend, (4, y + 3), (4 + line - 6, y + line - 3), color, -1)
            cv2.putText(legend, name, (line + 2, y + line - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * self.scale,
                        (255, 255, 255), 1, cv2.LINE_AA)
        self.legend = legend[:height, :width]

    def draw(self, rgb: np.ndarray, faces: list[TrackedFace]) -> np.ndarray:
        """Draw each face's box, id, smoothed label and probability bar onto `rgb` (in place); returns it."""
        import cv2

        h, w = self.legend.shape[:2]
        rgb[:h, :w] = (rgb[:h, :w] // 3 + self.legend)  # darkened background keeps the legend readable
        for face in faces:
            face_id, (x, y, bw, bh), probs = face.id, face.prediction.box, face.smoothed
            k = int(np.argmax(probs))
            color = self.colors[k]
            cv2.rectangle(rgb, (x, y), (x + bw, y + bh), color, self.thick)
            text = f"#{face_id} {self.classes[k]} {probs[k]:.0%}"
            font = 0.6 * self.scale
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            top = max(0, y - th - base - 4)
            cv2.rectangle(rgb, (x, top), (x + tw + 4, top + th + base + 4), color, -1)
            cv2.putText(rgb, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
            bar_y, bar_h, left = y + bh + 2, max(4, round(8 * self.scale)), x
            for p, c in zip(probs, self.colors):
                right = left + p * bw
                if round(right) > round(left):
                    cv2.rectangle(rgb, (round(left), bar_y), (round(right) - 1, bar_y + bar_h), c, -1)
                left = right
        return rgb


# -- the whole path ---------------------------------------------------------------------------

@dataclass
class VideoSummary:
    """What one run did: counts, speed and messages for the user (`broken`: the file broke off)."""
    frames: int
    analysed: int
    rows: int
    face_ids: list[int]
    seconds: float
    fps: float
    codec: str
    broken: str | None = None
    messages: list[str] = field(default_factory=list)


def timeline_columns(classes: list[str]) -> list[str]:
    return (["frame", "time_s", "face_id", "x", "y", "w", "h"] + [f"prob_{c}" for c in classes] + ["label"]
            + [f"smooth_{c}" for c in classes] + ["smoothed_label"])


def process_video(source: str | Path, predictor, out: str | Path | None = None, csv_path: str | Path | None = None,
                  every: int = 1, smooth_s: float = SMOOTH_S, max_faces: int = faces_mod.MAX_FACES,
                  detect_side: int = DETECT_SIDE, detector: str | None = None, progress: bool = True) -> VideoSummary:
    """Decode, detect, track, classify, smooth, draw and encode, one frame at a time.

    `out` (.mp4 or .webm) and `csv_path` are each written to a temporary file first and renamed when the
    whole video is done; on an error before that, files already there are left as they were. Raises
    VideoError for an unusable input (nothing is written then)."""
    import time

    from PIL import Image
    from tqdm import tqdm

    if every < 1:
        raise ValueError(f"every must be 1 or more, not {every}")
    if smooth_s < 0:
        raise ValueError(f"smooth must be 0 (off) or a positive number of seconds, not {smooth_s}")
    out = Path(out) if out is not None else None
    if out is not None and out.suffix.lower() not in ENCODERS:
        raise VideoError(f"{out}: the annotated video must end in {' or '.join(ENCODERS)}")
    classes = list(predictor.classes)
    reader = VideoReader(source)  # raises VideoError before anything is written
    targets = [Path(p) for p in (out, csv_path) if p is not None]
    problem = None
    for p in targets:
        if p.resolve() == reader.path.resolve():
            problem = f"{p} is the input video: choose another output name"
        elif not p.parent.is_dir():
            problem = f"{p}: the folder {p.parent} does not exist"
    if len(targets) == 2 and targets[0].resolve() == targets[1].resolve():
        problem = f"{out} is given as both the annotated video and the CSV: choose two names"
    if problem:
        reader.close()
        raise VideoError(problem)

    def run(tmp_video: Path | None, tmp_csv: Path | None) -> VideoSummary:
        analyser = FaceTimeline(predictor, smooth_s, max_faces, detect_side, detector,
                                max_gap_s=max(MAX_GAP_S, 2.5 * every / (reader.fps or 30)))
        writer = painter = None
        rows, analysed, shown, ids = 0, 0, [], set()
        started = time.perf_counter()
        csv_file = open(tmp_csv, "w", newline="") if tmp_csv else None
        try:
            table = csv.writer(csv_file) if csv_file else None
            if table:
                table.writerow(timeline_columns(classes))
            bar = tqdm(total=reader.frames_expected or None, unit="frame", disable=not progress,
                       desc=reader.path.name, file=sys.stderr, dynamic_ncols=True)
            for frame in reader:
                if frame.index % every == 0:
                    analysed += 1
                    shown = analyser.analyse(Image.fromarray(frame.rgb), frame.time_s)
                    for face in shown:
                        ids.add(face.id)
                        if table:
                            table.writerow([frame.index, f"{frame.time_s:.4f}", face.id, *face.prediction.box,
                                            *(f"{p:.5f}" for p in face.raw), face.prediction.label,
                                            *(f"{p:.5f}" for p in face.smoothed), face.label])
                            rows += 1
                if tmp_video:
                    if writer is None:
                        height, width = frame.rgb.shape[:2]
                        writer = VideoWriter(tmp_video, out.suffix.lower(), width, height, reader.fps)
                        painter = Painter(classes, width, height)
                    writer.write(painter.draw(frame.rgb, shown), frame.time_s)
                bar.update(1)
            bar.close()
            if writer is not None:
                writer.close()
                writer = None
        finally:
            if csv_file:
                csv_file.close()
            if writer is not None:  # an error part way: close the partial file (atomic_write removes it)
                try:
                    writer.container.close()
                except Exception:
                    pass
        if reader.decoded == 0:  # `broken` says why; the temporary outputs are removed
            raise VideoError(reader.broken)
        seconds = time.perf_counter() - started
        messages = []
        if not ids:
            messages.append(f"No face was found in any of the {analysed} analysed frames: the timeline has no rows.")
        return VideoSummary(frames=reader.decoded, analysed=analysed, rows=rows, face_ids=sorted(ids),
                            seconds=seconds, fps=reader.decoded / seconds if seconds > 0 else 0.0,
                            codec=reader.codec, broken=reader.broken, messages=messages)


    # One torch thread for the whole video: classify() runs each frame's few faces on one thread anyway,
    # and switching the thread count twice a frame cost ~3.5 ms of a ~50 ms frame (2 busy cores).
    try:
        with cpu_threads(1):
            if out is not None and csv_path is not None:
                box = {}
                atomic_write(out, lambda tv: atomic_write(csv_path, lambda tc: box.setdefault("s", run(tv, tc))))
                return box["s"]
            if out is not None or csv_path is not None:
                box = {}
                atomic_write(out or csv_path, lambda t: box.setdefault("s", run(t, None) if out else run(None, t)))
                return box["s"]
            return run(None, None)
    finally:
        reader.close()


def read_timeline(path: str | Path):
    """A timeline CSV as a DataFrame (the column types fixed, also for one without rows)."""
    import pandas as pd

    frame = pd.read_csv(path)
    return frame.astype({"frame": int, "time_s": float, "face_id": int})


# -- a clip with known truth --------------------------------------------------------------------

def expression_clip(faces: list[tuple[str, np.ndarray]], path: str | Path, hold_s: float = 1.6, fade_s: float = 0.8,
                    fps: float = 15, size: tuple[int, int] = (480, 360), face_px: int = 160,
                    crossfade: bool = True, motion_px: float = 6.0, seed: int = 0):
    """Write a clip of one face per (label, image) in turn, and return its truth: a DataFrame with
    frame, time_s and label for every frame.

    Each face is shown for `hold_s` seconds; with `crossfade` the next one blends in over `fade_s`
    seconds (the true label switches when the new face's weight passes one half), without it the
    faces cut. The face drifts a few pixels (`motion_px`) and breathes in size by a few percent, as a
    hand-held close-up would, over a soft gradient background."""
    import cv2
    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix not in ENCODERS:
        raise ValueError(f"{path}: a clip must end in {' or '.join(ENCODERS)}")
    width, height = size
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * math.pi, 3)
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([90 + 40 * xs / width, 100 + 30 * ys / height, 110 + 0 * xs], -1).astype(np.uint8)
    rgb_faces = [np.asarray(f if f.ndim == 3 else np.repeat(f[..., None], 3, 2), np.uint8) for _, f in faces]
    period = hold_s + (fade_s if crossfade else 0)
    total = period * len(faces) - (fade_s if crossfade else 0)
    n_frames = int(round(total * fps))
    truth = []

    def write(tmp: Path) -> None:
        writer = VideoWriter(tmp, suffix, width, height, fps)
        for i in range(n_frames):
            t = i / fps
            k = min(int(t // period), len(faces) - 1)
            into = t - k * period
            mix = 0.0
            if crossfade and into > hold_s and k + 1 < len(faces):
                mix = (into - hold_s) / fade_s
                mix = mix * mix * (3 - 2 * mix)  # smoothstep: no jump in speed at either end
            side = round(face_px * (1 + 0.04 * math.sin(2 * math.pi * t / 3.7 + phases[0])))
            face = cv2.resize(rgb_faces[k], (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            if mix > 0:
                face = (1 - mix) * face + mix * cv2.resize(rgb_faces[k + 1], (side, side),
                                                           interpolation=cv2.INTER_LINEAR)
            x = round(width / 2 - side / 2 + motion_px * math.sin(2 * math.pi * t / 2.9 + phases[1]))
            y = round(height / 2 - side / 2 + motion_px * math.cos(2 * math.pi * t / 4.1 + phases[2]))
            frame = background.copy()
            frame[y:y + side, x:x + side] = np.clip(face, 0, 255).astype(np.uint8)
            writer.write(frame, t)
            truth.append(dict(frame=i, time_s=round(t, 4), label=faces[k + (mix >= 0.5)][0]))
        writer.close()

    atomic_write(path, write)
    return pd.DataFrame(truth)


def dataset_faces(ds, per_class: int = 1, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """One (or `per_class`) validation face per class, in the dataset's class order, for `expression_clip`."""

    split = "val" if "val" in ds.splits else ds.splits[-1]
    sampled = sample_faces(ds, split, per_class, size=160, seed=seed)
    return [(label, face) for label in ds.classes for face in sampled.get(label, [])]


# -- command line -----------------------------------------------------------------------------

def main(argv: list[str] | None = None, prog: str | None = None) -> int:

    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.app.video",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("input", metavar="INPUT", help="a video file (mp4, mov, avi, webm, mkv)")
    parser.add_argument("--out", help="annotated video to write: .mp4 (H.264) or .webm (VP9)")
    parser.add_argument("--csv", help="timeline CSV to write (default: INPUT's name + .timeline.csv in the "
                        "current folder, unless only --out is given)")
    parser.add_argument("--every", type=int, default=1, help="analyse every N-th frame (default 1: all); "
                        "the others show the last boxes")
    parser.add_argument("--smooth", type=float, default=SMOOTH_S,
                        help=f"EMA time constant in seconds (default {SMOOTH_S}; 0: off)")
    parser.add_argument("--max-faces", type=positive_int, default=faces_mod.MAX_FACES,
                        help="classify at most this many faces per frame, largest first "
                             f"(default {faces_mod.MAX_FACES})")
    parser.add_argument("--detect-side", type=int, default=DETECT_SIDE,
                        help=f"detect faces on a copy at most this many pixels wide/high (default {DETECT_SIDE})")
    parser.add_argument("--detector", choices=list(faces_mod.DETECTORS),
                        help=f"face detector (default {faces_mod.default_detector()})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be 1 or more")
    if args.smooth < 0:
        parser.error("--smooth must be 0 (off) or a positive number of seconds")
    csv_path = args.csv if args.csv or args.out else f"{Path(args.input).stem}.timeline.csv"
    predictor = predictor_from_args(args)
    if predictor is None:
        return 2
    try:
        summary = process_video(args.input, predictor, args.out, csv_path, every=args.every, smooth_s=args.smooth,
                                max_faces=args.max_faces, detect_side=args.detect_side, detector=args.detector,
                                progress=not args.no_progress)
    except VideoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for message in summary.messages:
        print(message, file=sys.stderr)
    wrote = " and ".join(str(p) for p in (csv_path, args.out) if p)
    print(f"{summary.frames} frames ({summary.analysed} analysed), {len(summary.face_ids)} face id(s), "
          f"{summary.rows} timeline rows, {summary.fps:.1f} frames/s; wrote {wrote}", file=sys.stderr)
    if summary.broken:
        print(f"error: {summary.broken}; the outputs cover the frames before that", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
