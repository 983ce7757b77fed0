"""Frames per second of the whole video path: decode, detect, track, classify, smooth, draw, encode.

    .venv/bin/python benchmarks/video_throughput.py [--checkpoint C] [--seconds 10] [--faces 1 5]
                                                    [--every 1 3] [--format .mp4] [--detector yunet]

For each face count, a 640 x 480, 30 fps clip of that many copies of scikit-image's astronaut (a real
face photo inside the wheel), drifting slowly, is made at start; then `fer video`'s own
`process_video` runs on it for each `--every`, writing the annotated video and the CSV, and the
frames per second (all frames decoded and encoded; every N-th analysed) are printed with what each
step costs per frame, measured separately on the same frames. Target: 30 frames/s with one face.
The model is the bundled one (or --checkpoint); the detector the default (or --detector).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fer_utils.app import faces, predict, video

TARGET_FPS = 30.0
SIZE = (640, 480)


def make_clip(path: Path, n_faces: int, seconds: float, fps: int = 30) -> Path:
    """n_faces astronaut heads (~45 px faces) in a row, drifting a few pixels, over a gray background."""
    import skimage.data

    head = np.asarray(Image.fromarray(skimage.data.astronaut()).crop((135, 25, 315, 205)).resize((110, 110)))
    width, height = SIZE
    writer = video.VideoWriter(path, path.suffix, width, height, fps)
    for i in range(int(seconds * fps)):
        frame = np.full((height, width, 3), 110, np.uint8)
        for k in range(n_faces):
            x = 15 + k * 125 + round(6 * np.sin(i / 20 + k))
            y = 60 + (k % 2) * 200 + round(6 * np.cos(i / 25 + k))
            frame[y:y + 110, x:x + 110] = head
        writer.write(frame, i / fps)
    writer.close()
    return path


def step_costs(clip: Path, predictor, detector: str | None, n: int = 60) -> dict[str, float]:
    """Milliseconds per frame of each step, on the first `n` frames (median)."""
    reader = video.VideoReader(clip)
    times = {k: [] for k in ("decode", "detect", "classify", "draw", "encode")}
    painter = video.Painter(predictor.classes, *SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        writer = video.VideoWriter(Path(tmp) / "x.mp4", ".mp4", *SIZE, 30)
        it = iter(reader)
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            image = Image.fromarray(frame.rgb)
            found = [f for f in faces.detect_faces(image, detect_side=video.DETECT_SIDE, detector=detector).faces
                     if f.detected]
            t2 = time.perf_counter()
            preds = predict.classify(predictor, image, found) if found else []
            t3 = time.perf_counter()
            shown = []
            for i, p in enumerate(preds):
                probs = np.array(list(p.probabilities.values()))
                shown.append(video.TrackedFace(i, p, probs, probs, p.label))
            painter.draw(frame.rgb, shown)
            t4 = time.perf_counter()
            writer.write(frame.rgb, frame.time_s)
            t5 = time.perf_counter()
            for key, a, b in (("decode", t0, t1), ("detect", t1, t2), ("classify", t2, t3), ("draw", t3, t4),
                              ("encode", t4, t5)):
                times[key].append(1000 * (b - a))
        writer.close()
    reader.close()
    return {k: float(np.median(v)) for k, v in times.items() if v}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: the bundled model")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s = 300 frames)")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--format", default=".mp4", choices=list(video.ENCODERS))
    parser.add_argument("--detector", choices=list(faces.DETECTORS), help=f"default {faces.default_detector()}")
    args = parser.parse_args(argv)
    predictor = predict.load_predictor(args.checkpoint)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads); model "
          f"{predictor.path.name}; detector {args.detector or faces.default_detector()} on a "
          f"{video.DETECT_SIDE} px copy; {SIZE[0]}x{SIZE[1]} clips, {args.seconds:g} s at 30 fps\n")
    with tempfile.TemporaryDirectory() as tmp:
        for n_faces in args.faces:
            clip = make_clip(Path(tmp) / f"faces{n_faces}.mp4", n_faces, args.seconds)
            costs = step_costs(clip, predictor, args.detector)
            print(f"{n_faces} face(s): per frame " + ", ".join(f"{k} {v:.1f} ms" for k, v in costs.items()))
            for every in args.every:
                summary = video.process_video(clip, predictor, Path(tmp) / f"out{args.format}", Path(tmp) / "t.csv",
                                              every=every, detector=args.detector, progress=False)
                ok = "meets" if summary.fps >= TARGET_FPS else "below"
                print(f"  --every {every}: {summary.fps:5.1f} frames/s ({summary.frames} frames, "
                      f"{summary.analysed} analysed, {len(summary.face_ids)} ids, {summary.rows} rows) "
                      f"[{ok} the {TARGET_FPS:g} fps target]")


if __name__ == "__main__":
    main()
