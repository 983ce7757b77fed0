"""Faces in a user's photo: read an upload safely, find the faces, crop them as the model was trained.

- `read_image`: bytes, a path or a file object -> an RGB PIL image, with a pixel cap against
  decompression bombs, the EXIF orientation applied and every colour mode (grayscale, palette,
  RGBA, CMYK, 16-bit, float) converted to 8-bit RGB. Anything that is not a readable image
  (empty, not an image, truncated, corrupt, too large) raises `ImageError` with a message that
  can be shown to the user as it is.
- `detect_faces`: YuNet (the `yuface` wheel: libfacedetection's CNN with its weights compiled in,
  nothing downloaded) where it is installed, else OpenCV's frontal-face Haar cascade (shipped
  inside opencv-python-headless 4.x); `detector=` picks one. Each runs on a downscaled copy for
  speed, boxes mapped back to the photo. YuNet is the default because it finds far more faces:
  593 of 600 FER2013 training faces (enlarged to 192 px) against Haar's 291, and all 30 faces of
  ~48 px in a 1536 x 1280 group photo where Haar finds none (see DETECTORS, tests/test_faces.py). No face: the whole
  image is offered as one "face", and a message says so. Many faces: the largest `max_faces` are
  kept, and a message says so.
- `crop_face` / `model_input`: the square box around a detected face with the detector's own
  margin (each detector's box is a different part of the face), then the training code's own
  `images.to_array` (grayscale or RGB, resized to image_size with the same interpolation) and
  `engine.transforms.prepare_batch` (the same normalisation).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data import images
from ..engine.transforms import prepare_batch

MAX_PIXELS = 40_000_000   # 40 MP: larger than any phone photo, far below what would exhaust memory
MAX_FACES = 10
# Margin added on each side of the (square) Haar box. Measured on FER2013: the Haar cascade's box in
# a 48x48 training face (upscaled) has a median side of 1/1.185 of the image, centred, so the
# training faces extend ~9% beyond the detector's box on every side.
MARGIN = 0.09
DETECT_SIDE = 400         # Haar runs on a copy whose longest side is at most this (pixels)
MIN_FACE = 20             # smallest face Haar searches for, in pixels of that copy (5% of its side)
CASCADE_FILE = "haarcascade_frontalface_default.xml"
# Per detector: the longest side of the copy it runs on, the smallest face searched for (pixels of that
# copy) and the crop margin. YuNet's box (max of w, h) is 0.979 of a FER2013 training face's side
# (median of 593 faces upscaled to 192 px, centred within 1.5%), hence a 1% margin. YuNet finds faces
# down to ~10 px and runs on a copy up to 1600 px: in a 1536 x 1280 group photo of 30 ~48 px faces it
# found 30 at full size but 23 on a 960 px copy (Haar: 0). (yuface's wrapper warns above 960 px; measured,
# larger only helped.)
DETECTORS = {
    "haar": dict(side=DETECT_SIDE, min_face=MIN_FACE, margin=MARGIN),
    "yunet": dict(side=1600, min_face=10, margin=0.01),
}
YUNET_MIN_CONFIDENCE = 60  # yuface scores 0..100; its own examples keep faces above ~50-60


def default_detector() -> str:
    """"yunet" where the yuface wheel is installed, else "haar"."""
    import importlib.util

    return "yunet" if importlib.util.find_spec("yuface") is not None else "haar"


class ImageError(ValueError):
    """The upload cannot be used as a photo; the message says why, in words for the user."""


@dataclass
class Face:
    """One face: `box` is (x, y, w, h) in the (EXIF-rotated) photo's pixels. `detected` is False
    when the box is the whole image (detection skipped or no face found)."""
    box: tuple[int, int, int, int]
    detected: bool = True
    margin: float = MARGIN    # the crop margin that suits the detector that found it


@dataclass
class Detection:
    """The faces to classify (largest first), how many the detector found, and messages for the user."""
    faces: list[Face]
    found: int
    messages: list[str] = field(default_factory=list)


# -- reading --------------------------------------------------------------------

def _read_bytes(source, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "upload"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: " + ("not a file" if path.exists() else "no such file"))
        try:
            return path.read_bytes(), name or str(path)
        except OSError as err:
            raise ImageError(f"{path} cannot be read: {err.strerror or err}") from None
    if hasattr(source, "read"):
        return source.read(), name or getattr(source, "name", "upload")
    raise TypeError(f"read_image takes bytes, a path or a file object, not {type(source).__name__}")


def read_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded image as an 8-bit RGB PIL image, upright (EXIF orientation applied).

    `source`: bytes, a path or a binary file object; `name` is used in messages. Raises ImageError
    for an empty file, a file that is not an image, a truncated or corrupt image, or one with more
    than `max_pixels` pixels (checked from the header, before anything is decoded)."""
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageError(f"{name} is empty (0 bytes): upload a photo (JPEG, PNG, WebP, ...)")
    # Pillow's own bomb check uses the global Image.MAX_IMAGE_PIXELS; ours is local. Its warning is
    # turned into an error (when our cap is below its limit) so that nothing huge is ever decoded.
    pil_limit = Image.MAX_IMAGE_PIXELS or float("inf")
    too_big = (f"{name} is too large to process safely: more than {max_pixels / 1e6:.0f} megapixels "
               "(a decompression bomb or a huge scan). Downscale it first.")
    with warnings.catch_warnings():
        warnings.simplefilter("error" if max_pixels <= pil_limit else "ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(too_big + f" It is {width} x {height} pixels.")
            if width == 0 or height == 0:
                raise ImageError(f"{name} has no pixels ({width} x {height})")
            im.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(too_big) from None
        except UnidentifiedImageError:
            raise ImageError(f"{name} is not an image that can be read{_what_it_is(data)}. "
                             f"Upload a JPEG, PNG, WebP, GIF, BMP or TIFF photo.") from None
        except MemoryError:
            raise ImageError(too_big) from None
        except Exception as err:  # truncated or corrupt data raises anything from OSError to struct.error
            raise ImageError(f"{name} is a damaged or truncated image and cannot be decoded "
                             f"({type(err).__name__}: {err})") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block: keep the pixels as stored rather than reject the photo
        pass
    try:
        return to_rgb(im)
    except (ValueError, OSError) as err:
        raise ImageError(f"{name}: colour mode {im.mode} cannot be converted to RGB ({err})") from None


def _what_it_is(data: bytes) -> str:
    """A hint about a file Pillow cannot read."""
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif"):
        return " (an HEIC/HEIF/AVIF photo, as iPhones save them: export or convert it to JPEG first)"
    if data[:5] == b"%PDF-":
        return " (it is a PDF document)"
    head = data[:512]
    try:
        if b"\0" in head:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "binary")
        head.decode("utf-8")
        return " (it is a text file)" if head.strip() else ""
    except UnicodeDecodeError:
        return f" ({len(data):,} bytes of unknown format)"


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer and float pixels -> 0..255."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16"):
        arr = arr / 257.0
    elif mode == "F" and arr.size and arr.min() >= 0 and arr.max() <= 1:
        arr = arr * 255.0
    elif arr.size and (arr.min() < 0 or arr.max() > 255):
        if mode == "I" and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr / 257.0  # 16-bit data read as 32-bit ints
        else:
            lo, hi = arr.min(), arr.max()
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB: 16-bit/float scaled (not clipped), transparency composited on
    white, CMYK through its ICC profile when it has one."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    if mode == "CMYK" and im.info.get("icc_profile"):
        try:
            from PIL import ImageCms
            source = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # an unusable profile: fall back to Pillow's plain conversion
            pass
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


# -- detection ------------------------------------------------------------------

@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face detector is missing ({path}); opencv-python-headless 4.x ships it")
    return cascade


@lru_cache(maxsize=1)
def _openmp():
    """yuface's OpenMP threads spin-wait for each other: on 2 busy cores one 320 px frame took ~500 ms
    with both threads and ~35 ms with one, so each call runs with one (threadpoolctl, which
    scikit-learn already installs)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _haar(image: Image.Image, scale: float, min_face: int) -> list[tuple[int, int, int, int]]:
    gray = np.asarray(image.convert("L"))
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    # No histogram equalisation: on FER2013 faces and the test photos it cost recall and added false faces.
    boxes = _cascade().detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5, minSize=(min_face, min_face))
    return boxes.tolist() if len(boxes) else []


YUNET_BUFFER = 0x9000      # libfacedetection's result buffer (DETECT_BUFFER_SIZE): a count, then 16 shorts a face


@lru_cache(maxsize=1)
def _facedetect_cnn():
    """libfacedetection's own `facedetect_cnn`, from the library inside the yuface wheel.

    Called directly (ctypes) rather than through `yuface.detect`, which leaks its 36 KB result buffer on
    every call (measured: RssAnon +10.5 MiB per 300 calls, +1.3 GB an hour of 30 fps video); with a
    buffer of our own the memory stays flat and the faces are the same."""
    import ctypes

    import yuface  # loads the library's own dependencies (its OpenMP runtime)

    lib = ctypes.CDLL(str(Path(yuface.__file__).with_name("libfacedetection.so")))
    try:
        fn = lib._Z14facedetect_cnnPhS_iii  # int* facedetect_cnn(uchar* buffer, uchar* bgr, int w, int h, int step)
    except AttributeError:
        raise RuntimeError("this yuface wheel has no facedetect_cnn: install yuface==2023.5.1") from None
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return fn


def _yunet(image: Image.Image, scale: float, min_face: int) -> list[tuple[int, int, int, int]]:
    bgr = np.asarray(image)[..., ::-1]
    if scale < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         interpolation=cv2.INTER_AREA)
    bgr = np.ascontiguousarray(bgr)
    buffer = np.zeros(YUNET_BUFFER, np.uint8)
    with _openmp().limit(limits=1, user_api="openmp"):
        _facedetect_cnn()(buffer.ctypes.data, bgr.ctypes.data, bgr.shape[1], bgr.shape[0], bgr.strides[0])
    n = int(buffer[:4].view(np.int32)[0])
    rows = buffer[4:4 + 32 * n].view(np.int16).reshape(n, 16).astype(int)  # score (0..100), x, y, w, h, landmarks
    return [tuple(int(v) for v in r[1:5]) for r in rows
            if r[0] >= YUNET_MIN_CONFIDENCE and min(r[3], r[4]) >= min_face]


def whole_image(image: Image.Image) -> Face:
    return Face((0, 0, image.width, image.height), detected=False)


def detect_faces(image: Image.Image, detect: bool = True, max_faces: int = MAX_FACES,
                 detect_side: int | None = None, min_face: int | None = None,
                 detector: str | None = None) -> Detection:
    """Faces in an RGB image, largest first, at most `max_faces`.

    `detector`: "yunet" or "haar" (default: `default_detector()`). It runs on a copy whose longest
    side is at most `detect_side` pixels (faces smaller than `min_face` pixels of that copy are
    dropped); both default to the detector's DETECTORS entry. detect=False (a photo already cropped
    to one face) or no face found: the whole image is the one face."""
    if not detect:
        return Detection([whole_image(image)], 0, ["Face detection is off: the whole image is treated as one face."])
    detector = detector or default_detector()
    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector '{detector}': choose one of {', '.join(DETECTORS)}")
    settings = DETECTORS[detector]
    scale = min(1.0, (detect_side or settings["side"]) / max(image.size))
    find = _yunet if detector == "yunet" else _haar
    mapped = []
    for x, y, w, h in find(image, scale, min_face or settings["min_face"]):  # back to the photo's pixels
        x0, y0 = max(0, round(x / scale)), max(0, round(y / scale))
        x1, y1 = min(image.width, round((x + w) / scale)), min(image.height, round((y + h) / scale))
        if x1 > x0 and y1 > y0:  # YuNet may report a face reaching past the border
            mapped.append((x0, y0, x1 - x0, y1 - y0))
    mapped.sort(key=lambda b: (-b[2] * b[3], b[1], b[0]))  # largest first; ties top-left first
    faces = [Face(box, margin=settings["margin"]) for box in mapped[:max_faces]]
    messages = []
    if not faces:
        faces = [whole_image(image)]
        messages.append("No face was found, so the whole image is shown to the model as one face. "
                        "The answer is only meaningful if the image is a close-up of one face: crop it to "
                        "the face, or switch detection off for a photo that already is one.")
    elif len(mapped) > max_faces:
        messages.append(f"{len(mapped)} faces were found; only the {max_faces} largest are classified.")
    return Detection(faces, len(mapped), messages)


# -- cropping as in training ----------------------------------------------------

def crop_box(face: Face, margin: float | None = None) -> tuple[int, int, int, int]:
    """The region (x, y, w, h) cut out for the model: a detected face's box made square and widened by
    `margin` (default: the face's detector's) of its side on every side (it may reach outside the
    photo); the whole image as it is."""
    x, y, w, h = face.box
    if not face.detected:
        return face.box
    margin = face.margin if margin is None else margin
    side = round(max(w, h) * (1 + 2 * margin))
    return round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side, side


def crop_face(image: Image.Image, face: Face, size: int, channels: int, margin: float | None = None) -> np.ndarray:
    """The model's view of one face: C x size x size uint8, made by the training code's `to_array`.

    Parts of the square box outside the photo are filled by repeating the edge pixels (a face at
    the border keeps its proportions instead of being stretched)."""
    x, y, w, h = crop_box(face, margin)
    arr = np.asarray(image)
    height, width = arr.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    region = arr[y0:y1, x0:x1]
    pads = (y0 - y, y + h - y1, x0 - x, x + w - x1)
    if any(pads):
        region = cv2.copyMakeBorder(np.ascontiguousarray(region), *pads, borderType=cv2.BORDER_REPLICATE)
    return images.to_array(Image.fromarray(np.ascontiguousarray(region)), size, channels)


def model_input(image: Image.Image, faces: list[Face], size: int, channels: int, margin: float | None = None):
    """(crops uint8 [N, C, size, size], float tensor [N, C, size, size] normalised as in training)."""
    import torch

    crops = np.stack([crop_face(image, f, size, channels, margin) for f in faces])
    return crops, prepare_batch(torch.from_numpy(crops), memory_format=torch.contiguous_format)
