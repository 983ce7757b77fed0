"""Reading uploads safely, finding faces, cropping them as in training (fer_utils.app.faces)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from fer_utils.app import faces
from fer_utils.data import images
from fer_utils.engine import transforms
from fer_utils.app.faces import Face, ImageError
from photos import FACE, astronaut, encode, face_tiles, iou, noise, png_header


# -- bad uploads ------------------------------------------------------------------

def test_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        faces.read_image(b"", "empty.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        faces.read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("data", [b"hello, I am a text file\n", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", b"\0" * 1000])
def test_non_image_is_a_clear_error(data):
    with pytest.raises(ImageError, match="not an image"):
        faces.read_image(data, "notes.txt")


def test_unreadable_formats_get_a_hint():
    with pytest.raises(ImageError, match="text file"):
        faces.read_image(b"hello\n", "a.jpg")
    with pytest.raises(ImageError, match="HEIC.*convert it to JPEG"):
        faces.read_image(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100, "IMG_0001.HEIC")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_a_clear_error(fmt):
    data = encode(astronaut(), fmt)
    with pytest.raises(ImageError, match="damaged or truncated"):
        faces.read_image(data[: len(data) // 3], f"cut.{fmt.lower()}")


def test_corrupt_png_data_is_a_clear_error():
    data = bytearray(encode(astronaut(), "PNG"))
    data[5000:5400] = b"\xff" * 400  # garbage in the compressed pixel data (the CRC no longer matches)
    with pytest.raises(ImageError, match="damaged or truncated"):
        faces.read_image(bytes(data), "corrupt.png")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        faces.read_image(tmp_path / "nope.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_header(30000, 30000)  # 900 megapixels claimed by a 100-byte file
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(ImageError, match="too large"):
        faces.read_image(bomb, "bomb.png")
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ImageError, match="too large"):  # above our 40 MP cap, below Pillow's own limit
        faces.read_image(png_header(7000, 7000), "big.png")


def test_pixel_cap_is_a_parameter_and_global_limit_untouched():
    before = Image.MAX_IMAGE_PIXELS
    data = encode(astronaut())
    with pytest.raises(ImageError, match=r"too large.*512 x 512"):
        faces.read_image(data, "photo.png", max_pixels=100_000)
    assert faces.read_image(data, max_pixels=512 * 512).size == (512, 512)
    assert Image.MAX_IMAGE_PIXELS == before


# -- colour modes and orientation ------------------------------------------------

def _converted(im: Image.Image, fmt: str = "PNG", **kw) -> Image.Image:
    out = faces.read_image(encode(im, fmt, **kw), f"x.{fmt.lower()}")
    assert out.mode == "RGB"
    return out


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"),
                                       ("LA", "PNG"), ("RGB", "WEBP"), ("L", "TIFF"), ("RGB", "BMP")])
def test_colour_modes_become_rgb_and_the_face_is_found(mode, fmt):
    im = _converted(astronaut().convert(mode), fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    assert im.size == (512, 512)
    found = faces.detect_faces(im)
    assert found.found >= 1 and iou(found.faces[0].box, FACE) > 0.6, found


def test_cmyk_colours_are_right():
    rgb = np.asarray(_converted(astronaut().convert("CMYK"), "JPEG", quality=95), dtype=float)
    assert np.abs(rgb - np.asarray(astronaut(), dtype=float)).mean() < 12


def test_transparency_is_composited_on_white():
    im = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    im.paste((200, 10, 10, 255), (10, 10, 20, 20))
    arr = np.asarray(_converted(im))
    assert (arr[0, 0] == 255).all() and tuple(arr[15, 15]) == (200, 10, 10)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.info["transparency"] = 0
    assert (np.asarray(_converted(pal)) == 255).all()


def test_16bit_grayscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    arr = np.asarray(_converted(im))[..., 0].astype(int)
    assert arr.min() == 0 and arr.max() == 255
    assert abs(int(arr[32, 0]) - 128) <= 2  # mid-ramp is mid-gray, not white
    assert (np.diff(arr.ravel()) >= 0).all()


def test_float_and_32bit_images_become_8bit():
    f = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F")
    arr = np.asarray(faces.to_rgb(f))
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("orientation, stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                 (3, Image.Transpose.ROTATE_180)])
def test_exif_rotated_photo_is_turned_upright(orientation, stored):
    # A camera stores the sensor's pixels and says in EXIF how to turn them; a wide (non-square) photo
    # shows that width and height come back the right way round.
    upright = astronaut().crop((0, 0, 512, 400))
    want = faces.detect_faces(upright).faces[0].box
    raw = upright.transpose(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(raw, "JPEG", quality=95, exif=exif.tobytes())
    im = faces.read_image(data, "phone.jpg")
    assert im.size == (512, 400)
    found = faces.detect_faces(im)
    assert found.found == 1 and found.faces[0].detected
    assert iou(found.faces[0].box, want) > 0.6, (found.faces[0].box, want)


# -- detection --------------------------------------------------------------------

def _installed(detector: str) -> str:
    if detector == "yunet" and faces.default_detector() != "yunet":
        pytest.skip("yuface is not installed on this platform (requirements.txt installs it on Linux x86_64)")
    return detector


DETECTORS = [pytest.param("haar"), pytest.param("yunet")]


def test_yunet_is_the_default_where_it_is_installed():
    import importlib.util

    assert faces.default_detector() == ("yunet" if importlib.util.find_spec("yuface") else "haar")


def test_an_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown face detector 'mtcnn': choose one of haar, yunet"):
        faces.detect_faces(astronaut(), detector="mtcnn")


@pytest.mark.parametrize("detector", DETECTORS)
def test_the_astronauts_face_is_found(detector):
    found = faces.detect_faces(astronaut(), detector=_installed(detector))
    assert found.found == 1 and found.messages == []
    assert iou(found.faces[0].box, FACE) > 0.7
    assert found.faces[0].margin == faces.DETECTORS[detector]["margin"]


@pytest.mark.parametrize("detector", DETECTORS)
def test_boxes_are_mapped_back_from_the_downscaled_copy(detector):
    big = astronaut().resize((1536, 1536), Image.Resampling.BICUBIC)  # detected on a 400 px copy
    box = faces.detect_faces(big, detector=_installed(detector), detect_side=400).faces[0].box
    assert iou(box, tuple(3 * v for v in FACE)) > 0.7, box


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("image", [noise(), Image.new("RGB", (300, 200), (120, 130, 140))], ids=["noise", "flat"])
def test_no_face_offers_the_whole_image(image, detector):
    found = faces.detect_faces(image, detector=_installed(detector))
    assert found.found == 0
    assert found.faces == [Face((0, 0, image.width, image.height), detected=False)]
    assert "No face was found" in found.messages[0] and "whole image" in found.messages[0]


@pytest.mark.parametrize("detector", DETECTORS)
def test_many_faces_are_capped_largest_first(detector):
    found = faces.detect_faces(face_tiles(12), detector=_installed(detector))
    assert found.found == 12 and len(found.faces) == faces.MAX_FACES
    assert "12 faces were found" in found.messages[0] and "10 largest" in found.messages[0]
    areas = [f.box[2] * f.box[3] for f in found.faces]
    assert areas == sorted(areas, reverse=True)
    assert len(faces.detect_faces(face_tiles(12), max_faces=3).faces) == 3


def test_yunet_detection_does_not_leak_memory():
    """yuface.detect leaks its 36 KB result buffer per call (1.3 GB an hour of 30 fps video); faces.py calls
    libfacedetection with a buffer of its own instead."""
    _installed("yunet")
    from test_video import _rss_anon_mib

    small = astronaut().resize((200, 200))
    for _ in range(20):
        faces.detect_faces(small, detector="yunet")
    before = _rss_anon_mib()
    for _ in range(300):
        assert faces.detect_faces(small, detector="yunet").found == 1
    assert _rss_anon_mib() - before < 3  # the leak measured 10.5 MiB for 300 calls


def group_photo(n: int = 30, face: int = 48, size=(1536, 1280), seed: int = 0) -> tuple[Image.Image, list]:
    """n astronaut faces of about `face` px (0.8-1.25x), one per cell of a 6-column grid, and their boxes."""
    import cv2

    rng = np.random.default_rng(seed)
    head = np.asarray(astronaut().crop((165, 55, 283, 173)))  # about the face and a little around it
    width, height = size
    cols, rows = 6, -(-n // 6)
    canvas = np.full((height, width, 3), 110, np.uint8)
    boxes = []
    for i in range(n):
        side = int(face * rng.uniform(0.8, 1.25))
        cw, ch = width // cols, height // rows
        x, y = (i % cols) * cw + int(rng.integers(0, cw - side)), (i // cols) * ch + int(rng.integers(0, ch - side))
        canvas[y:y + side, x:x + side] = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
        boxes.append((x, y, side, side))
    return Image.fromarray(canvas), boxes


def test_yunet_finds_the_small_faces_of_a_group_photo():
    """30 faces of ~48 px in a 1536 x 1280 photo: YuNet finds them all, Haar (on its 400 px copy, where they
    are ~12 px) none; measured with real FER2013 faces in the same layout: YuNet 18 of 30, Haar 0."""
    _installed("yunet")
    photo, truth = group_photo()
    yunet = faces.detect_faces(photo, max_faces=100, detector="yunet")
    haar = faces.detect_faces(photo, max_faces=100, detector="haar")
    matched = sum(any(iou(f.box, t) > 0.3 for f in yunet.faces) for t in truth)
    assert yunet.found >= 28 and matched >= 28, (yunet.found, matched)
    assert haar.found <= 5


def test_detection_can_be_skipped():
    found = faces.detect_faces(astronaut(), detect=False)
    assert found.faces == [Face((0, 0, 512, 512), detected=False)] and "off" in found.messages[0]


# -- crops as in training ---------------------------------------------------------

def test_crop_is_a_square_box_with_margin():
    face = Face((100, 50, 80, 80))
    x, y, w, h = faces.crop_box(face, margin=0.1)
    assert (w, h) == (96, 96) and (x + w / 2, y + h / 2) == (140, 90)
    assert faces.crop_box(Face((100, 50, 80, 100), margin=0.01))[2:] == (102, 102)  # the detector's own margin
    assert faces.crop_box(Face((0, 0, 30, 20), detected=False)) == (0, 0, 30, 20)


@pytest.mark.parametrize("channels", [1, 3])
def test_crops_use_the_training_decoder_and_normalisation(channels):
    im = astronaut()
    whole = Face((0, 0, 512, 512), detected=False)
    crop = faces.crop_face(im, whole, 48, channels)
    assert crop.shape == (channels, 48, 48) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, images.to_array(im, 48, channels))
    crops, x = faces.model_input(im, [whole, whole], 48, channels)
    assert crops.shape == (2, channels, 48, 48)
    torch.testing.assert_close(x, transforms.prepare_batch(torch.from_numpy(crops)))
    assert -1 <= x.min() and x.max() <= 1


def test_face_at_the_border_keeps_its_proportions():
    im = astronaut()
    crop = faces.crop_face(im, Face((0, 0, 100, 100)), 64, 3)  # the margin reaches outside the photo
    assert crop.shape == (3, 64, 64)
    # edge pixels are repeated into the margin, not black
    assert crop[:, 0, 0].tolist() == crop[:, 3, 3].tolist() or crop.min() > 0
