"""Built-in synthetic facial-expression dataset: the project's default data when a user has none.

Faces are drawn procedurally (numpy + OpenCV anti-aliased polygons, nothing downloaded) with
the 8 AffectNet expression ids: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
6 anger, 7 contempt. Design:

* One face model in "face coordinates" (origin at the face centre, y down, half-height 1).
  Every feature (brows, eyes, nose, mouth, jaw) is a parametric curve; the 68 iBUG landmarks
  are points on those same curves, so the annotations match what is drawn.
* An expression is a set of parameter deltas from neutral (mouth-corner lift per side, mouth
  opening/width, upper-lip raise, brow height/slope/squeeze, upper/lower eyelid opening, nose
  wrinkle, smile folds) scaled by a per-image intensity in [0, 1] drawn from a Beta
  distribution. Each person also has a random resting face (a slight resting smile or frown,
  brow slope, eye openness), so weak expressions are genuinely ambiguous with neutral, and
  contempt (one-sided corner raise) is close to a weak happy.
* Nuisances: face shape, skin tone, hair, glasses, pose (in-plane rotation; yaw faked by
  wrapping features round a cylinder), scale, position, background clutter, lighting gradient,
  blur, noise, occasional partial occlusion (hand-like blob or object), some grayscale.
* Valence and arousal are not a function of the class: each face's point is drawn around its
  position on the circumplex, between neutral's point (intensity 0) and the class's (intensity
  1), with a spread of its own (VA_SPREAD), so two faces of one class and intensity differ and
  a weak happy face can have negative valence.
* Label noise, as in real annotation: AffectNet's annotators agree on about 60% of faces. With
  probability `label_noise` a face's label is replaced by one of the 7 other classes, uniformly.
  Two independent noisy labels of a face then agree with probability p^2 + (1-p)^2/7
  (p = 1 - label_noise); the default LABEL_NOISE = 0.23 gives 0.6005. Every split is noisy
  (val and test labels are annotations too); the label drawn (the clean one) is kept beside it.
* Output is the AffectNet "mini" layout (train_set/, val_set/ and test_set/ with
  images/<id>.jpg and annotations/<id>_{exp,val,aro,lnd}.npy as 0-d string arrays) so the real
  AffectNet reader reads it; <id>_exp_clean.npy holds the label before noise. Train follows
  AffectNet's class shares; val (the selection split) and test (the report split) are balanced
  in their clean labels.
* Calibrated so a small CNN does not saturate; contempt (vs neutral/happy) is the hardest class.
  The accuracy it reaches is measured by the book's training chapter, not stated here.
* Deterministic: image i of split s is drawn from PCG64 seeded by (seed, s, i) alone, so the
  bytes depend only on (seed, params), never on order or process; writes are atomic (temp
  sibling folder, then rename).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..machine import usable_cores

# Same order as data.labels.EMOTIONS (kept local: this module stands alone).
EMOTION_NAMES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")

# AffectNet (manually annotated training set) class shares as published (in percent). They
# are rounded to 0.1 and add up to 99.9, so class_counts normalises by their sum.
AFFECTNET_SHARES: dict[int, float] = {
    0: 0.260, 1: 0.467, 2: 0.089, 3: 0.049, 4: 0.022, 5: 0.013, 6: 0.086, 7: 0.013,
}
_SHARES_PERMILLE = {k: round(v * 1000) for k, v in AFFECTNET_SHARES.items()}  # exact integers

GENERATOR = "fer_utils.data.synthetic"
GENERATOR_VERSION = 3  # bump whenever the output changes, so cached datasets are regenerated
# 2: valence/arousal drawn around the circumplex (VA_SPREAD), label noise, test_set/
# 3: the camera's downsampling, blur and grayscale in fixed-order elementwise float32 arithmetic, not
#    OpenCV's and BLAS's SIMD kernels, which differ by CPU: version 2's faces differed between an AVX2 and
#    an AVX-512 machine in a few pixels
JPEG_QUALITY = 90
FACES_PER_WORKER = 500  # `_draw` starts a worker process per core only with at least this many faces each
SPLITS = (("train_set", 0), ("val_set", 1), ("test_set", 2))  # folder name, code mixed into the seed
LABEL_NOISE = 0.23  # two noisy labels of a face agree 0.77^2 + 0.23^2/7 = 60.05% of the time
VA_SPREAD = (0.15, 0.15)  # per-face standard deviation of valence, arousal around the class's point
META_FILE = "synthetic.json"

# Per-image intensity of non-neutral expressions: Beta(a, b), so a tail of images are so
# weak they are genuinely ambiguous with neutral (that tail sets the accuracy ceiling).
INTENSITY_BETA = (1.8, 1.1)
# Nuisance strengths (probabilities and ranges), recorded in synthetic.json with the params.
NUISANCE: dict[str, float] = dict(
    face_min=0.46, face_max=0.56,  # face half-height / image side (before fitting the landmarks in)
    rotation_deg=12.0, yaw=0.3,    # in-plane rotation range, fake yaw (radians)
    clutter=0.35,                  # chance of background rectangles
    glasses=0.08, occlusion=0.10,  # chances of glasses, of a hand/object over the face
    blur=0.5, blur_max=0.8,        # chance of Gaussian blur, its max sigma at 64 px
    noise_max=7.0, gray=0.08,      # max noise sigma (grey levels), chance of a grayscale photo
)

# Expression deltas at full intensity. Units: face half-height (mouth/brow offsets) or a
# relative change (width, eyelid opening). Missing keys are 0.
_ARCHETYPES: dict[int, dict[str, float]] = {
    0: {},
    1: dict(curve_l=0.15, curve_r=0.15, width=0.25, eye_up=-0.15, eye_lo=-0.6,
            fold_l=0.9, fold_r=0.9, brow_h=0.01),
    2: dict(curve_l=-0.11, curve_r=-0.11, width=-0.06, brow_in=0.10, brow_sq=0.02,
            eye_up=-0.4, eye_lo=0.0, lower_lip=0.025),
    3: dict(open=0.28, o_shape=1.0, width=-0.32, brow_h=0.13, brow_in=0.01, eye_up=0.9,
            eye_lo=0.3),
    4: dict(open=0.12, width=0.22, curve_l=-0.03, curve_r=-0.03, brow_h=0.08, brow_in=0.07,
            brow_sq=0.04, eye_up=0.8, eye_lo=0.2),
    5: dict(upper_raise=0.06, curve_l=-0.06, curve_r=-0.06, open=0.035, width=-0.06,
            brow_h=-0.05, brow_in=-0.03, brow_sq=0.025, eye_up=-0.4, eye_lo=-0.5,
            wrinkle=1.0, fold_l=0.8, fold_r=0.8),
    6: dict(curve_l=-0.035, curve_r=-0.035, width=-0.1, press=0.85, brow_h=-0.06,
            brow_in=-0.11, brow_sq=0.05, eye_up=-0.1, eye_lo=-0.4, glabella=1.0),
    7: dict(curve_r=0.16, width_r=0.2, fold_r=0.9, press=0.3, eye_lo=-0.1),
}
# Valence / arousal of each archetype at full intensity (roughly AffectNet's class means).
_VA = {0: (0.0, -0.05), 1: (0.72, 0.30), 2: (-0.66, -0.32), 3: (0.15, 0.72), 4: (-0.58, 0.70),
       5: (-0.62, 0.35), 6: (-0.60, 0.62), 7: (-0.45, 0.25)}

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 142, 100],
                  [160, 110, 75], [120, 80, 55], [88, 58, 40]], dtype=np.float64)
_HAIR = np.array([[20, 15, 12], [50, 35, 25], [90, 60, 35], [140, 100, 60], [200, 170, 110],
                  [150, 150, 150], [110, 40, 25]], dtype=np.float64)
_SHIFT = 4  # cv2 fixed-point fractional bits: sub-pixel accurate polygons


# ----------------------------------------------------------------------------- counts

def _check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def class_counts(n: int, balanced: bool) -> list[int]:
    """Images per class id 0..7 for a split of n images.

    balanced: n split as evenly as possible (lower ids get the remainder).
    otherwise: AffectNet's shares, largest-remainder rounding (exact integer arithmetic;
    ties go to the lower id), so the counts always sum to n.
    """
    n = _check_int("n", n, low=0)
    k = len(EMOTION_NAMES)
    if balanced:
        return [n // k + (1 if c < n % k else 0) for c in range(k)]
    total = sum(_SHARES_PERMILLE.values())
    counts = [n * _SHARES_PERMILLE[c] // total for c in range(k)]
    remainders = [n * _SHARES_PERMILLE[c] % total for c in range(k)]
    for c in sorted(range(k), key=lambda c: (-remainders[c], c))[: n - sum(counts)]:
        counts[c] += 1
    return counts


# ----------------------------------------------------------------------------- geometry

class _Frame:
    """Face coordinates -> hi-res pixel coordinates: fake yaw, scale, in-plane rotation, shift."""

    def __init__(self, cx, cy, scale, angle, yaw, radius):
        self.cx, self.cy, self.scale, self.yaw, self.radius = cx, cy, scale, yaw, radius
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def __call__(self, uv, warp: bool = True, depth: float = 0.0) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        u, v = uv[:, 0], uv[:, 1]
        if warp:  # features sit on a cylinder: turning it moves and foreshortens them
            th = np.arcsin(np.clip(u / self.radius, -1.0, 1.0))
            u = self.radius * np.sin(th + self.yaw) + depth * math.sin(self.yaw)
        x, y = u * self.scale, v * self.scale
        return np.stack([self.cx + self.cos * x - self.sin * y,
                         self.cy + self.sin * x + self.cos * y], axis=1)


def _fix(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * (1 << _SHIFT)).astype(np.int32)


def _fill(img, pts, color):
    cv2.fillPoly(img, [_fix(pts)], _col(color), cv2.LINE_AA, _SHIFT)


def _stroke(img, pts, color, thickness, closed=False):
    cv2.polylines(img, [_fix(pts)], closed, _col(color), max(1, int(round(thickness))),
                  cv2.LINE_AA, _SHIFT)


def _col(c) -> tuple:
    return tuple(int(round(min(255.0, max(0.0, float(x))))) for x in c)


def _mix(a, b, t):
    return np.asarray(a, float) * (1.0 - t) + np.asarray(b, float) * t


def _ellipse(cx, cy, rx, ry, n=36, t0=0.0, t1=2 * math.pi):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


# ----------------------------------------------------------------------------- expression

def _expression(label: int, k: float, rng: np.random.Generator) -> dict[str, float]:
    keys = ("curve_l", "curve_r", "open", "o_shape", "width", "width_l", "width_r",
            "upper_raise", "lower_lip", "press", "brow_h", "brow_in", "brow_sq", "eye_up",
            "eye_lo", "wrinkle", "glabella", "fold_l", "fold_r", "teeth_up", "teeth_lo")
    p = dict.fromkeys(keys, 0.0)
    arch = dict(_ARCHETYPES[label])
    if label == 1:  # closed smile .. broad open smile showing teeth
        g = rng.uniform(0.0, 1.0)
        arch["open"] = 0.08 * g
        arch["teeth_up"] = 1.0 if g > 0.3 else 0.0
    elif label == 6 and rng.random() < 0.4:  # snarl variant: open, bared teeth
        arch.update(open=0.07, press=0.0, teeth_up=1.0, teeth_lo=1.0, width=0.02)
    elif label == 4:
        arch["teeth_lo"] = 1.0 if rng.random() < 0.5 else 0.0
    elif label == 5 and rng.random() < 0.5:
        arch["teeth_up"] = 1.0
    for key, val in arch.items():
        # each person expresses an archetype a bit differently
        jitter = 1.0 if key.startswith("teeth") or key == "o_shape" else rng.uniform(0.75, 1.25)
        p[key] = val * k * jitter
    if label == 7 and rng.random() < 0.5:  # contempt: which side is raised is random
        p["curve_l"], p["curve_r"] = p["curve_r"], p["curve_l"]
        p["width_l"], p["width_r"] = p["width_r"], p["width_l"]
        p["fold_l"], p["fold_r"] = p["fold_r"], p["fold_l"]
    return p


def _valence_arousal(label: int, k: float, rng: np.random.Generator) -> tuple[float, float]:
    """A face's own valence and arousal: a draw with spread VA_SPREAD around the point between neutral's
    (intensity 0) and its class's circumplex position (intensity 1). The class and the intensity set the
    mean only, so valence and arousal carry information the class label does not."""
    centre = _mix(_VA[0], _VA[label], k)
    v, a = centre + rng.normal(0.0, 1.0, 2) * VA_SPREAD
    return float(np.clip(v, -1.0, 1.0)), float(np.clip(a, -1.0, 1.0))


# ----------------------------------------------------------------------------- rendering

def render_face(label: int, rng: np.random.Generator, size: int,
                intensity: float | None = None) -> tuple[np.ndarray, dict]:
    """Draw one face of expression `label` (AffectNet id 0..7).

    Returns (image, annotations): a size x size x 3 uint8 RGB array and a dict with
    valence, arousal (floats in [-1, 1]), landmarks ((68, 2) float64, iBUG order, pixel
    coordinates of the returned image) and intensity (0.0 for neutral; drawn from
    Beta(INTENSITY_BETA) when None).

    The steps below draw from `rng` in a fixed order, back to front: that order is part of
    the output (the same seed gives the same bytes), so reordering them, or the draws within
    one, is a new GENERATOR_VERSION.
    """
    label = _check_int("label", label, 0, 7)
    size = _check_int("size", size, 16, 4096)
    k = _intensity(label, intensity, rng)
    ss = 2 if size <= 256 else 1  # draw at 2x and area-downsample: smooth edges, cheap
    img = _background(rng, size * ss)
    F, taper = _place_face(rng, size * ss, ss)
    person = _person(label, k, rng)
    jaw = _draw_head(img, F, person, taper, rng)
    eye_lm, (ex, ey, ew) = _draw_eyes(img, F, person, rng)
    brow_lm, by = _draw_brows(img, F, person, rng, ex, ey, ew)
    nose_lm, base_y, nw = _draw_nose(img, F, person, rng, ey)
    _draw_wrinkles(img, F, person, ey, by)
    mouth_lm, my = _draw_mouth(img, F, person, rng, base_y, nw)
    _draw_glasses(img, F, rng, ex, ey, ew)
    _draw_occlusion(img, F, rng, ex, ey, my)
    image = _photometry(img, rng, size, ss)

    lm_hi = np.concatenate([jaw, brow_lm[0], brow_lm[1], nose_lm, eye_lm[0], eye_lm[1], mouth_lm])
    # hi-res -> output pixels; the framing keeps them inside, the clip is only a safety net
    landmarks = np.clip((lm_hi + 0.5) / ss - 0.5, 0.0, size - 1.0)
    valence, arousal = _valence_arousal(label, k, rng)
    return image, dict(valence=valence, arousal=arousal, landmarks=landmarks, intensity=k)


def _intensity(label: int, intensity: float | None, rng: np.random.Generator) -> float:
    """The expression intensity k: 0 for neutral, else the caller's or a Beta draw."""
    if label == 0:
        return 0.0
    if intensity is None:
        return float(rng.beta(*INTENSITY_BETA))
    k = float(intensity)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity!r}")
    return k


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """A new S x S image: a vertical two-colour gradient, sometimes with rectangles (clutter)
    so that a net cannot find the face by looking for the only structure in the image."""
    img = np.empty((S, S, 3), np.uint8)
    c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    ramp = np.linspace(0.0, 1.0, S)[:, None, None]
    img[:] = np.round(c1 * (1 - ramp) + c2 * ramp).astype(np.uint8)
    for _ in range(int(rng.integers(1, 3)) if rng.random() < NUISANCE["clutter"] else 0):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * S
        w, h = rng.uniform(0.1, 0.6, 2) * S
        _fill(img, np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]),
              rng.uniform(20, 235, 3))
    return img


def _place_face(rng: np.random.Generator, S: int, ss: int) -> tuple[_Frame, float]:
    """Face shape and pose: the frame mapping face units to pixels, and the jaw taper.

    The frame's radius is the face half-width (face units) and its scale the face
    half-height (pixels). Framed like an AffectNet crop: the landmark box, brows (raised:
    up to v = -0.7) to chin (v = 1), fills most of the image; it is centred on v = 0.15,
    half-height 0.85, and stays 2 hi-res pixels inside the border at any rotation.
    """
    a = rng.uniform(0.72, 0.86)                        # half-width / half-height
    taper = rng.uniform(0.05, 0.3)                     # jaw narrowing towards the chin
    angle = math.radians(rng.uniform(-1, 1) * NUISANCE["rotation_deg"])
    yaw = rng.uniform(-1, 1) * NUISANCE["yaw"]
    ca, sa = abs(math.cos(angle)), abs(math.sin(angle))
    ext_x, ext_y = ca * a + sa * 0.85, sa * a + ca * 0.85  # rotated half-extent, face units
    half_h = rng.uniform(NUISANCE["face_min"], NUISANCE["face_max"]) * S  # face half-height in pixels
    half_h = min(half_h, (0.5 * S - 2 * ss) / max(ext_x, ext_y))
    rx, ry = (max(0.0, 0.5 * S - 2 * ss - e * half_h) for e in (ext_x, ext_y))
    bx, by_ = 0.5 * S + rng.uniform(-rx, rx), 0.5 * S + rng.uniform(-ry, ry)
    # face centre = box centre minus the rotated (0, 0.15) offset
    cx = bx + math.sin(angle) * 0.15 * half_h
    cy = by_ - math.cos(angle) * 0.15 * half_h
    return _Frame(cx, cy, half_h, angle, yaw, a), taper


@dataclass(frozen=True)
class _Person:
    """Colours, expression and resting face of the person drawn (shared by all the parts)."""

    skin: np.ndarray
    hair: np.ndarray
    lip_col: np.ndarray
    line_col: np.ndarray   # creases and lid lines: darker skin
    expr: dict[str, float]  # _expression's parameter deltas, scaled by the intensity
    rest_curve: float       # resting smile (> 0) or frown of the mouth corners
    asym: float             # left/right difference of the corners
    rest_brow_h: float
    rest_brow_in: float
    eye_open: float         # resting eye opening, relative


def _person(label: int, k: float, rng: np.random.Generator) -> _Person:
    """Draw a person showing expression `label` at intensity k.

    The resting face (mouth corners, brows, eye opening) is not an expression: it varies
    between people so that weak expressions stay ambiguous with neutral.
    """
    skin = _skin_tone(rng)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.15)
    lip_col = _mix(skin, (150, 50, 60), rng.uniform(0.4, 0.65))
    expr = _expression(label, k, rng)
    rest_curve = rng.normal(0.0, 0.014)
    asym = rng.normal(0.0, 0.007)
    rest_brow_h, rest_brow_in = rng.normal(0.0, 0.018), rng.normal(0.0, 0.018)
    eye_open = rng.uniform(0.8, 1.2)
    return _Person(skin, hair, lip_col, skin * 0.55, expr, rest_curve, asym, rest_brow_h,
                   rest_brow_in, eye_open)


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    """A skin colour between two neighbouring tones of _SKIN, with a slight per-channel cast."""
    t = rng.uniform(0, len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    return _mix(_SKIN[i], _SKIN[i + 1], t - i) * rng.uniform(0.92, 1.05, 3)


def _draw_head(img, F: _Frame, p: _Person, taper: float, rng: np.random.Generator) -> np.ndarray:
    """Clothes, neck, hair, ears and the face outline; returns the jaw landmarks (0-16).

    Drawn unwarped (no fake yaw): they are the head's silhouette, and the jaw landmarks lie
    on the outline that is filled, so the annotation matches the drawing.
    """
    a, skin, hair = F.radius, p.skin, p.hair
    cloth = rng.uniform(20, 230, 3)
    _fill(img, F(_ellipse(0.0, 2.15, 1.9 * a + 0.4, 0.9, 40), warp=False), cloth)
    neck = np.array([[-0.42 * a, 0.55], [0.42 * a, 0.55], [0.48 * a, 1.6], [-0.48 * a, 1.6]])
    _fill(img, F(neck, warp=False), skin * 0.82)

    # long hair behind the head
    has_hair = rng.random() < 0.85
    if has_hair and rng.random() < 0.4:
        back = np.concatenate([_ellipse(0, 0.0, 1.12 * a, 1.1, 30, math.pi, 2 * math.pi),
                               [[1.15 * a, rng.uniform(0.5, 1.2)], [-1.15 * a, rng.uniform(0.5, 1.2)]]])
        _fill(img, F(back, warp=False), hair)

    for side in (-1, 1):  # ears
        _fill(img, F(_ellipse(side * (a - 0.02), 0.0, 0.1, 0.17, 20), warp=False), skin * 0.9)

    def outline(t):
        x, y = np.cos(t), np.sin(t)
        return np.stack([a * x * (1.0 - taper * np.clip(y, 0, None) ** 2), y], axis=1)

    t_face = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    _fill(img, F(outline(t_face), warp=False), skin)
    jaw = F(outline(np.linspace(math.pi + 0.17, -0.17, 17)), warp=False)

    # hair cap over the forehead
    if has_hair:
        hl = rng.uniform(-0.78, -0.5)
        part = rng.uniform(-0.3, 0.3)
        cap = np.concatenate([
            _ellipse(0.0, 0.0, 1.06 * a, 1.07, 28, math.pi - 0.1, 2 * math.pi + 0.1),
            [[0.93 * a, -0.12], [0.75 * a, hl + 0.12], [0.35 * a, hl + 0.02 * part],
             [part * a, hl + 0.06], [-0.35 * a, hl - 0.02 * part], [-0.75 * a, hl + 0.12],
             [-0.93 * a, -0.12]]])
        _fill(img, F(cap, warp=False), hair)
    return jaw


def _draw_eyes(img, F: _Frame, p: _Person, rng: np.random.Generator
               ) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    """Both eyes; returns their landmarks (36-41, 42-47) and the eye geometry (ex, ey, ew):
    centre x offset, height and half-width, which place the brows, nose, glasses and
    occluders.

    The lid openings carry the expression (eye_up, eye_lo: wide in surprise and fear,
    narrowed in happy, disgust and anger); skin bands over the iris hide it outside the lids.
    """
    skin, line_col, expr, px = p.skin, p.line_col, p.expr, F.scale
    ey = rng.uniform(-0.16, -0.08)
    ex = rng.uniform(0.28, 0.34)
    ew = rng.uniform(0.11, 0.14)
    up0, lo0 = 0.062 * ew / 0.125 * p.eye_open, 0.042 * ew / 0.125 * p.eye_open
    h_up = up0 * max(0.15, 1.0 + expr["eye_up"])
    h_lo = lo0 * max(0.15, 1.0 + expr["eye_lo"])
    tilt = rng.normal(0.0, 0.012)  # outer corners higher/lower
    iris_r = ew * rng.uniform(0.38, 0.45)
    iris_col = np.array([[60, 40, 25], [95, 65, 40], [70, 100, 140], [90, 110, 80]])[rng.integers(4)]
    gaze = rng.normal(0.0, 0.25, 2) * np.array([ew * 0.5, 0.01])
    s = np.linspace(-1.0, 1.0, 21)

    def at(sv, curve):
        return np.interp(sv, s, curve[:, 0]), np.interp(sv, s, curve[:, 1])

    eye_lm = []
    for side in (-1, 1):  # -1: image-left eye (subject's right, iBUG 36-41)
        xs = side * ex + ew * s
        corner = tilt * (s * side)  # outer end of each eye moved by the same tilt
        upper = np.stack([xs, ey - h_up * (1 - s ** 2) ** 0.8 - corner], 1)
        lower = np.stack([xs, ey + h_lo * (1 - s ** 2) ** 0.9 - corner], 1)
        _fill(img, F(np.concatenate([upper, lower[::-1]])), (238, 234, 228))
        ic = (side * ex + gaze[0], ey + gaze[1])
        _fill(img, F(_ellipse(*ic, iris_r, iris_r, 24)), iris_col)
        _fill(img, F(_ellipse(*ic, iris_r * 0.45, iris_r * 0.45, 16)), (15, 12, 12))
        band = iris_r + 0.03  # skin bands hide the iris outside the lids
        _fill(img, F(np.concatenate([upper, (upper - [0, band])[::-1]])), skin)
        _fill(img, F(np.concatenate([lower, (lower + [0, band])[::-1]])), skin)
        _stroke(img, F(upper), line_col * 0.5, 0.026 * px)
        _stroke(img, F(lower), _mix(skin, line_col, 0.6), 0.01 * px)
        crease = upper - [0, 0.035]
        _stroke(img, F(crease[3:-3]), _mix(skin, line_col, 0.35), 0.008 * px)
        # iBUG order, both eyes left to right: corner, upper, upper, corner, lower, lower
        pts = [at(-1, upper), at(-1 / 3, upper), at(1 / 3, upper), at(1, upper),
               at(1 / 3, lower), at(-1 / 3, lower)]
        eye_lm.append(F(np.array(pts)))
    return eye_lm, (ex, ey, ew)


def _draw_brows(img, F: _Frame, p: _Person, rng: np.random.Generator, ex: float, ey: float,
                ew: float) -> tuple[list[np.ndarray], float]:
    """Both brows above the eyes; returns their landmarks (17-21, 22-26) and the brow height by.

    Height, inner-end lift and squeeze carry the expression (raised in surprise and fear,
    inner ends up in sad, lowered and drawn together in anger), on top of the resting brows.
    """
    expr = p.expr
    by = ey - rng.uniform(0.15, 0.2)
    bthick = rng.uniform(0.04, 0.065)
    arch = rng.uniform(0.01, 0.04)
    bh = expr["brow_h"] + p.rest_brow_h
    bi = expr["brow_in"] + p.rest_brow_in
    x_in, x_out = rng.uniform(0.08, 0.13) - expr["brow_sq"], ex + ew * rng.uniform(1.0, 1.3)
    sb = np.linspace(0.0, 1.0, 13)  # 0: inner end, 1: outer end
    brow_lm = []
    brow_col = _mix(p.hair, p.skin * 0.4, 0.3)
    for side in (-1, 1):
        xs = side * (x_in + (x_out - x_in) * sb)
        yc = by - bh - bi * (1 - sb) - arch * np.sin(math.pi * np.clip(sb * 1.1, 0, 1)) + 0.02 * sb ** 2
        th = bthick * (1.0 - 0.45 * sb)
        poly = np.concatenate([np.stack([xs, yc - th / 2], 1), np.stack([xs, yc + th / 2], 1)[::-1]])
        _fill(img, F(poly), brow_col)
        idx = [0, 3, 6, 9, 12]
        pts = np.stack([xs[idx], yc[idx] - th[idx] / 2], 1)
        brow_lm.append(F(pts[::-1] if side == -1 else pts))  # iBUG: left-to-right in the image
    return brow_lm, by


def _draw_nose(img, F: _Frame, p: _Person, rng: np.random.Generator, ey: float
               ) -> tuple[np.ndarray, float, float]:
    """The nose from between the eyes to the tip; returns its landmarks (27-35), the height
    of its base (base_y) and its half-width nw, which place the mouth and smile folds.

    Its points have depth, so fake yaw moves them more than the face outline; the side
    turned away is shaded.
    """
    skin, px = p.skin, F.scale
    nose_tip = rng.uniform(0.2, 0.28)
    nw = rng.uniform(0.08, 0.12)
    shade = _mix(skin, p.line_col, 0.55)
    bridge = np.stack([np.zeros(4), np.linspace(ey, nose_tip, 4)], 1)
    flat = F(bridge, depth=0.0)  # the bridge sticks out more towards the tip
    bridge_px = flat + (F(bridge, depth=0.2) - flat) * np.linspace(0.3, 1, 4)[:, None]
    side_sh = 1 if F.yaw < 0 else -1  # shade the side turned away
    nose_side = np.stack([side_sh * np.linspace(0.05, nw * 0.85, 8), np.linspace(ey + 0.05, nose_tip, 8)], 1)
    _stroke(img, F(nose_side, depth=0.12), shade, 0.012 * px)
    base_y = nose_tip + 0.05
    base = np.stack([np.array([-nw, -nw / 2, 0, nw / 2, nw]),
                     base_y + np.array([-0.02, 0.0, 0.012, 0.0, -0.02])], 1)
    for side in (-1, 1):
        wing = _ellipse(side * nw * 0.85, base_y - 0.035, nw * 0.35, 0.04, 12,
                        -math.pi / 2 if side > 0 else 1.5 * math.pi, math.pi / 2)
        _stroke(img, F(wing, depth=0.15), shade, 0.012 * px)
        _fill(img, F(_ellipse(side * nw * 0.42, base_y - 0.005, nw * 0.22, 0.014, 12), depth=0.18),
              skin * 0.35)
    _stroke(img, F(base[1:4], depth=0.2), shade, 0.01 * px)
    return np.concatenate([bridge_px, F(base, depth=0.18)]), base_y, nw


def _draw_wrinkles(img, F: _Frame, p: _Person, ey: float, by: float) -> None:
    """Expression lines that tell classes apart beyond the mouth: horizontal wrinkles on the
    nose bridge (disgust) and vertical lines between the brows (anger), darker with intensity.
    """
    skin, line_col, expr, px = p.skin, p.line_col, p.expr, F.scale
    if expr["wrinkle"] > 0:
        wcol = _mix(skin, line_col * 0.8, min(1.0, expr["wrinkle"]))
        for j in range(3):
            yy = ey + 0.02 + 0.035 * j
            wr = np.stack([np.linspace(-0.07, 0.07, 7), yy - 0.012 * (1 - np.linspace(-1, 1, 7) ** 2)], 1)
            _stroke(img, F(wr, depth=0.1), wcol, 0.012 * px)
    if expr["glabella"] > 0:
        gcol = _mix(skin, line_col * 0.8, min(1.0, expr["glabella"]))
        for side in (-1, 1):
            gl = np.array([[side * 0.035, by - 0.02], [side * 0.025, by + 0.07]])
            _stroke(img, F(gl, depth=0.05), gcol, 0.012 * px)


def _draw_mouth(img, F: _Frame, p: _Person, rng: np.random.Generator, base_y: float, nw: float
                ) -> tuple[np.ndarray, float]:
    """Smile folds, lips, mouth opening and teeth; returns the landmarks (48-67) and the mouth
    height my.

    The mouth carries most of the expression: corner lift per side (contempt is one-sided),
    width, opening (round in surprise), raised upper lip (disgust), pressed lips (anger), plus
    the person's resting corners. Folds run from the nose wings past the mouth corners.
    """
    skin, line_col, lip_col, expr, px = p.skin, p.line_col, p.lip_col, p.expr, F.scale
    my = base_y + rng.uniform(0.2, 0.27)
    mw0 = rng.uniform(0.21, 0.26)
    mwl = mw0 * (1 + expr["width"] + expr["width_l"])
    mwr = mw0 * (1 + expr["width"] + expr["width_r"])
    t_up, t_lo = rng.uniform(0.025, 0.045), rng.uniform(0.035, 0.06)
    press = 1.0 - 0.6 * min(1.0, expr["press"])
    lift_l = expr["curve_l"] + p.rest_curve - p.asym
    lift_r = expr["curve_r"] + p.rest_curve + p.asym
    gap_max = expr["open"]
    pw = 1.0 - 0.55 * expr["o_shape"]
    sm = np.linspace(-1.0, 1.0, 41)
    xm = np.where(sm < 0, sm * mwl, sm * mwr)
    lift = np.where(sm < 0, lift_l, lift_r) * np.abs(sm) ** 2.2
    mid = my - lift
    gap = gap_max * (1 - sm ** 2) ** pw
    up_in = mid - 0.3 * gap - expr["upper_raise"] * 0.5 * (1 - sm ** 2)
    lo_in = mid + 0.7 * gap
    bow = 0.01 * np.exp(-(sm / 0.18) ** 2)
    up_out = up_in - (t_up * (1 - sm ** 2) ** 0.5 * press - bow) - expr["upper_raise"] * 0.6 * (1 - sm ** 4)
    up_out = np.minimum(up_out, up_in)
    lo_out = lo_in + (t_lo + expr["lower_lip"]) * (1 - sm ** 2) ** 0.6 * press
    # smile folds (nasolabial), darkness follows the expression
    for side, f in ((-1, expr["fold_l"]), (1, expr["fold_r"])):
        if f > 0.02:
            end = (xm[-1] if side > 0 else xm[0]) + side * 0.05
            fy = np.linspace(base_y - 0.03, my + 0.05, 8)
            fx = side * (nw + 0.03) + (end - side * (nw + 0.03)) * np.linspace(0, 1, 8) ** 1.5 \
                + side * 0.035 * np.sin(np.linspace(0, math.pi, 8))
            _stroke(img, F(np.stack([fx, fy], 1)), _mix(skin, line_col, min(1.0, f)), 0.014 * px)
    outer = np.concatenate([np.stack([xm, up_out], 1), np.stack([xm, lo_out], 1)[::-1]])
    _fill(img, F(outer), lip_col)
    if gap_max > 0.006:
        inner = np.concatenate([np.stack([xm, up_in], 1), np.stack([xm, lo_in], 1)[::-1]])
        _fill(img, F(inner), (70, 22, 28))
        tooth = min(0.05, 0.5 * gap_max)
        keep = np.abs(sm) < 0.8
        if expr["teeth_up"] > 0:
            tu = np.concatenate([np.stack([xm[keep], up_in[keep]], 1),
                                 np.stack([xm[keep], np.minimum(up_in + tooth, lo_in)[keep]], 1)[::-1]])
            _fill(img, F(tu), (240, 238, 228))
        if expr["teeth_lo"] > 0:
            tl = np.concatenate([np.stack([xm[keep], np.maximum(lo_in - tooth * 0.8, up_in)[keep]], 1),
                                 np.stack([xm[keep], lo_in[keep]], 1)[::-1]])
            _fill(img, F(tl), (225, 222, 212))
    else:
        _stroke(img, F(np.stack([xm, mid], 1)), _mix(lip_col, (40, 10, 15), 0.7), 0.015 * px)

    def mpt(sv, curve):
        return np.interp(sv, sm, xm), np.interp(sv, sm, curve)
    mouth_pts = [mpt(-1, mid), mpt(-0.6, up_out), mpt(-0.25, up_out), mpt(0, up_out), mpt(0.25, up_out),
                 mpt(0.6, up_out), mpt(1, mid), mpt(0.6, lo_out), mpt(0.25, lo_out), mpt(0, lo_out),
                 mpt(-0.25, lo_out), mpt(-0.6, lo_out),
                 mpt(-0.9, mid), mpt(-0.35, up_in), mpt(0, up_in), mpt(0.35, up_in), mpt(0.9, mid),
                 mpt(0.35, lo_in), mpt(0, lo_in), mpt(-0.35, lo_in)]
    return F(np.array(mouth_pts)), my


def _draw_glasses(img, F: _Frame, rng: np.random.Generator, ex: float, ey: float, ew: float) -> None:
    """Sometimes (NUISANCE["glasses"]) glasses over the eyes; a quarter of them are
    sunglasses, which hide the eyes' part of the expression."""
    px = F.scale
    if rng.random() < NUISANCE["glasses"]:
        gcol = rng.uniform(0, 120, 3)
        dark = rng.random() < 0.25
        for side in (-1, 1):
            lens = _ellipse(side * ex, ey + 0.01, ew * 1.35, ew * 0.95, 28)
            if dark:
                _fill(img, F(lens), gcol * 0.4)
            _stroke(img, F(lens), gcol, 0.015 * px, closed=True)
        _stroke(img, F(np.array([[-ex + ew * 1.3, ey - 0.01], [ex - ew * 1.3, ey - 0.01]])), gcol, 0.015 * px)


def _draw_occlusion(img, F: _Frame, rng: np.random.Generator, ex: float, ey: float, my: float) -> None:
    """Sometimes (NUISANCE["occlusion"]) a hand (palm and four fingers) or an object
    (rotated rectangle) over the mouth, an eye, the chin or a cheek, as in real face photos;
    the landmarks stay where the hidden features are."""
    px = F.scale
    if rng.random() < NUISANCE["occlusion"]:
        targets = np.array([[0.0, my], [-ex, ey], [ex, ey], [0.0, 0.8], [-0.45, 0.35], [0.45, 0.35]])
        tx, ty = targets[rng.integers(len(targets))] + rng.normal(0, 0.06, 2)
        if rng.random() < 0.6:  # hand: palm plus four fingers
            hand_col = _skin_tone(rng) * rng.uniform(0.85, 1.05)
            ang = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.17, 0.28)
            _fill(img, F(_ellipse(tx, ty, r, r * 0.85, 24), warp=False), hand_col)
            for j in range(4):
                fa = ang + (j - 1.5) * 0.32
                fx0, fy0 = tx + math.cos(fa) * r * 0.8, ty + math.sin(fa) * r * 0.8
                fl = r * rng.uniform(0.9, 1.3)
                seg = np.array([[fx0, fy0], [fx0 + math.cos(fa) * fl, fy0 + math.sin(fa) * fl]])
                _stroke(img, F(seg, warp=False), hand_col, r * 0.42 * px)
        else:  # object: rotated rectangle
            w, h = rng.uniform(0.2, 0.55), rng.uniform(0.15, 0.45)
            oa = rng.uniform(0, math.pi)
            rot = np.array([[math.cos(oa), -math.sin(oa)], [math.sin(oa), math.cos(oa)]])
            rect = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) @ rot.T + [tx, ty]
            _fill(img, F(rect, warp=False), rng.uniform(10, 245, 3))


def _photometry(img: np.ndarray, rng: np.random.Generator, size: int, ss: int) -> np.ndarray:
    """The camera: lighting gradient, gain and colour cast, downsample to `size`, sometimes
    blur and grayscale, then sensor noise; returns the final uint8 image.

    These vary what a net must ignore (exposure, white balance, focus, noise) independently
    of the expression. Every step is elementwise float32 arithmetic in a fixed order, so each
    pixel is the same on every CPU: a library kernel picks its SIMD code by CPU (OpenCV's float
    resize and blur, BLAS's matrix product), which moves a result by a last bit, and that moves
    a rounded pixel now and then.
    """
    S = img.shape[0]
    out = img.astype(np.float32)
    g = np.linspace(-1.0, 1.0, S, dtype=np.float32)
    la = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.45) * (math.cos(la) * g[None, :] + math.sin(la) * g[:, None])
    out *= (light * rng.uniform(0.7, 1.15))[:, :, None]
    out *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # colour cast
    if ss > 1:
        out = _block_mean(out, ss)
    if rng.random() < NUISANCE["blur"]:
        out = _gaussian_blur(out, rng.uniform(0.3, NUISANCE["blur_max"]) * size / 64.0)
    if rng.random() < NUISANCE["gray"]:  # some photos are grayscale
        gray = out[..., 0] * np.float32(0.299) + out[..., 1] * np.float32(0.587) + out[..., 2] * np.float32(0.114)
        out[:] = gray[..., None]
    out += rng.normal(0.0, rng.uniform(1.0, NUISANCE["noise_max"]), out.shape).astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _block_mean(img: np.ndarray, ss: int) -> np.ndarray:
    """The mean of each ss x ss block (an area downsample by an integer factor, as cv2.INTER_AREA),
    summed in a fixed order."""
    total = img[0::ss, 0::ss].copy()
    for dy in range(ss):
        for dx in range(ss):
            if dy or dx:
                total += img[dy::ss, dx::ss]
    return total * np.float32(1.0 / (ss * ss))


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur (radius 4 sigma, mirrored border without repeating the edge, as
    cv2.GaussianBlur's default for float images), its taps summed in a fixed order."""
    radius = max(1, round(4 * sigma))
    taps = np.array([math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)])
    taps = (taps / taps.sum()).astype(np.float32)

    def along_rows(a: np.ndarray) -> np.ndarray:
        padded = np.pad(a, [(radius, radius)] + [(0, 0)] * (a.ndim - 1), mode="reflect")
        n = a.shape[0]
        out = taps[0] * padded[:n]
        for i in range(1, len(taps)):
            out += taps[i] * padded[i:i + n]
        return out
    return along_rows(along_rows(img).swapaxes(0, 1)).swapaxes(0, 1)


# ----------------------------------------------------------------------------- writing

_USER_KEYS = ("n_train", "n_val", "n_test", "size", "seed", "label_noise")  # the rest are the generator's
_N_KEY = {"train_set": "n_train", "val_set": "n_val", "test_set": "n_test"}
_ANNOTATIONS = ("exp", "exp_clean", "val", "aro", "lnd")  # files per image: annotations/<id>_<kind>.npy


def _params(n_train, n_val, n_test, size, seed, label_noise) -> dict:
    return dict(generator=GENERATOR, version=GENERATOR_VERSION, n_train=n_train, n_val=n_val, n_test=n_test,
                size=size, seed=seed, label_noise=label_noise, jpeg_quality=JPEG_QUALITY,
                intensity_beta=list(INTENSITY_BETA), va_spread=list(VA_SPREAD), nuisance=dict(NUISANCE))


def _read_meta(out: Path) -> dict | None:
    """The synthetic.json of a folder we wrote, else None."""
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _complete(out: Path, params: dict) -> bool:
    meta = _read_meta(out)
    if meta is None or meta.get("params") != params:
        return False
    for split, _ in SPLITS:
        n = params[_N_KEY[split]]
        try:
            n_img = sum(1 for _ in os.scandir(out / split / "images"))
            n_ann = sum(1 for _ in os.scandir(out / split / "annotations"))
        except OSError:
            return False
        if n_img != n or n_ann != len(_ANNOTATIONS) * n:
            return False
    return (out / "README.md").is_file()


def _fmt(x: float, digits: int) -> str:
    s = f"{x:.{digits}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s  # no '-0.0000'


def _save_str(path: Path, text: str) -> None:
    np.save(path, np.array(text))  # 0-d unicode array, as AffectNet mini stores it


def _split_labels(seed: int, code: int, counts: list[int]) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, code, 0])))
    return rng.permutation(labels)  # ids must not reveal the class


def noisy_label(label: int, noise: float, rng: np.random.Generator) -> int:
    """The annotated label: with probability `noise` one of the other classes, uniformly, else `label`.
    Always two draws, so the stream's position does not depend on the outcome."""
    k = len(EMOTION_NAMES)
    flip, other = rng.random(), int(rng.integers(k - 1))
    return (label + 1 + other) % k if flip < noise else label


def _face_tasks(root: Path, seed: int, code: int, counts: list[int], size: int, label_noise: float) -> list[tuple]:
    """One split's folders, made, and its faces to draw: `_write_face`'s arguments, one tuple per face."""
    images, ann = root / "images", root / "annotations"
    images.mkdir(parents=True)
    ann.mkdir()
    labels = _split_labels(seed, code, counts)
    width = max(6, len(str(max(len(labels) - 1, 0))))
    return [(root, f"{i:0{width}d}", seed, code, i, int(label), size, label_noise) for i, label in enumerate(labels)]


def _write_face(root: Path, name: str, seed: int, code: int, i: int, label: int, size: int,
                label_noise: float) -> None:
    """Draw and write face `i` of a split. It is drawn from its clean label (stream (seed, code, 1, i)); the
    noise has a stream of its own (seed, code, 2, i), so the images do not depend on the noise level. Each
    face has its own streams, so faces can be drawn in any order, by any process, to the same bytes."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, code, 1, i])))
    image, a = render_face(label, rng, size)
    noise_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, code, 2, i])))
    ann = root / "annotations"
    Image.fromarray(image).save(root / "images" / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    _save_str(ann / f"{name}_exp.npy", str(noisy_label(label, label_noise, noise_rng)))
    _save_str(ann / f"{name}_exp_clean.npy", str(label))
    _save_str(ann / f"{name}_val.npy", _fmt(a["valence"], 4))
    _save_str(ann / f"{name}_aro.npy", _fmt(a["arousal"], 4))
    _save_str(ann / f"{name}_lnd.npy", ";".join(_fmt(v, 2) for v in a["landmarks"].ravel()))


def _write_faces(tasks: list[tuple]) -> None:
    for task in tasks:
        _write_face(*task)


def _draw(tasks: list[tuple]) -> None:
    """Write every face: in this process, or with FACES_PER_WORKER faces or more per core, in one spawned
    process per core (the default data's 5,600 faces: 40 s in one process, 23 s on 2 cores; a worker's
    start, about 0.5 s for numpy and OpenCV, would not pay for a test's few hundred faces). Spawned, not
    forked: the caller may already run torch's threads. The first error stops the rest and is raised here."""
    workers = min(usable_cores(), len(tasks) // FACES_PER_WORKER)
    if workers < 2:
        _write_faces(tasks)
        return
    chunks = [tasks[i:i + 100] for i in range(0, len(tasks), 100)]
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for _ in pool.map(_write_faces, chunks):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _readme(params: dict, counts: dict[str, list[int]]) -> str:
    nuisance = ", ".join(f"{k} {v}" for k, v in params["nuisance"].items())
    rows = "\n".join(f"| {c} | {EMOTION_NAMES[c]} | " + " | ".join(str(counts[s][c]) for s, _ in SPLITS) + " |"
                     for c in range(len(EMOTION_NAMES)))
    totals = " | ".join(str(sum(counts[s])) for s, _ in SPLITS)
    return f"""# Synthetic facial-expression dataset

Generated by `{GENERATOR}` (version {params['version']}): procedurally drawn faces, no real
people. Layout: AffectNet "mini" (`train_set/`, `val_set/`, `test_set/`, each with
`images/<id>.jpg` and `annotations/<id>_exp.npy`, `_exp_clean.npy`, `_val.npy`, `_aro.npy`,
`_lnd.npy`, 0-d string arrays; landmarks are 68 iBUG points as `x1;y1;...;x68;y68` in image
pixels).

Parameters: seed {params['seed']}, size {params['size']} px, JPEG quality {params['jpeg_quality']},
expression intensity ~ Beta{tuple(params['intensity_beta'])}, valence/arousal spread
{tuple(params['va_spread'])} around each face's circumplex point. Nuisances: {nuisance}.
Label noise {params['label_noise']}: `_exp.npy` is the annotated label (with that probability
another class, uniformly), `_exp_clean.npy` the label the face was drawn with.
Train follows AffectNet's class shares; val (selection) and test (report) are balanced in
their clean labels (the counts below). Regenerate with

    python -m fer_utils.data.synthetic --out DIR --n-train {params['n_train']} --n-val {params['n_val']} \\
        --n-test {params['n_test']} --size {params['size']} --seed {params['seed']} \\
        --label-noise {params['label_noise']}

| id | emotion | train | val | test |
| --- | --- | --- | --- | --- |
{rows}
| | total | {totals} |
"""


def generate(out: str | Path, n_train: int = 4000, n_val: int = 800, size: int = 64,
             seed: int = 0, overwrite: bool = False, *, n_test: int = 800,
             label_noise: float = LABEL_NOISE) -> Path:
    """Write the synthetic dataset to `out` (AffectNet-mini layout) and return its path.

    Returns at once if `out` already holds a complete dataset with the same parameters.
    One we wrote with the same user parameters (_USER_KEYS) but incomplete or from another
    generator version is rebuilt; one with other parameters is replaced only with
    overwrite=True; a folder that is not ours (no synthetic.json) and not empty is never
    touched. Raises ValueError for bad arguments, FileExistsError for refusals.
    """
    n_train = _check_int("n_train", n_train, low=1)
    n_val = _check_int("n_val", n_val, low=0)
    n_test = _check_int("n_test", n_test, low=0)
    size = _check_int("size", size, 32, 512)
    seed = _check_int("seed", seed, 0, 2 ** 63 - 1)
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be a number in [0, 1], got {label_noise!r}")
    out = Path(out).expanduser().absolute()
    params = _params(n_train, n_val, n_test, size, seed, float(label_noise))

    if out.exists():
        if not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder")
        if _complete(out, params):
            return out
        empty = not any(out.iterdir())
        ours = _read_meta(out) is not None
        if not empty and not ours:
            raise FileExistsError(
                f"{out} exists and is not a synthetic dataset (no {META_FILE} from {GENERATOR}); "
                "refusing to touch it: choose another --out or remove it yourself")
        if ours and not overwrite:
            old = _read_meta(out).get("params") or {}
            have = {key: old.get(key) for key in _USER_KEYS}
            asked = {key: params[key] for key in _USER_KEYS}
            if have != asked:
                raise FileExistsError(
                    f"{out} holds a synthetic dataset with other parameters ({have} instead of "
                    f"{asked}); pass overwrite=True (--overwrite) to replace it")
        # else: empty; or ours with the same user parameters but incomplete or from another
        # generator version (a cache of a deterministic function: safe to rebuild); or overwrite

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        counts = {"train_set": class_counts(n_train, balanced=False),
                  "val_set": class_counts(n_val, balanced=True),
                  "test_set": class_counts(n_test, balanced=True)}
        _draw([task for split, code in SPLITS
               for task in _face_tasks(tmp / split, seed, code, counts[split], size, params["label_noise"])])
        (tmp / "README.md").write_text(_readme(params, counts))
        # written last: its presence marks a finished dataset
        meta = dict(generator=GENERATOR, params=params, counts=counts, emotions=list(EMOTION_NAMES))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _install(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _install(tmp: Path, out: Path, params: dict) -> None:
    """Move the finished temp folder into place; the old dataset (ours, checked) goes last."""
    if out.exists():
        if _complete(out, params):  # a concurrent run finished first: keep its identical copy
            shutil.rmtree(tmp)
            return
        if not any(out.iterdir()):
            out.rmdir()
        elif _read_meta(out) is not None:
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "d")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
            return
        else:
            raise FileExistsError(f"{out} appeared while generating and is not a synthetic dataset")
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog or "python -m fer_utils.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (AffectNet-mini layout)")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=800, help="selection split (balanced)")
    ap.add_argument("--n-test", type=int, default=800, help="report split (balanced)")
    ap.add_argument("--label-noise", type=float, default=LABEL_NOISE,
                    help="share of labels replaced by another class, uniformly")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (32-512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset with other params")
    args = ap.parse_args(argv)
    try:
        path = generate(args.out, args.n_train, args.n_val, args.size, args.seed, args.overwrite,
                        n_test=args.n_test, label_noise=args.label_noise)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((path / META_FILE).read_text())
    print(f"synthetic dataset at {path}")
    print(f"{'id':>2}  {'emotion':<9} {'train':>6} {'val':>6} {'test':>6}")
    for c, name in enumerate(EMOTION_NAMES):
        print(f"{c:>2}  {name:<9} " + " ".join(f"{meta['counts'][s][c]:>6}" for s, _ in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
