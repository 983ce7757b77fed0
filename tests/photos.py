"""Test photos made on the fly from scikit-image's astronaut (a real, public-domain face photo that
ships inside the scikit-image wheel: nothing is downloaded)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# The astronaut's face as the Haar cascade finds it in the 512 x 512 photo (x, y, w, h), roughly.
FACE = (174, 64, 100, 100)


def astronaut() -> Image.Image:
    import skimage.data
    return Image.fromarray(skimage.data.astronaut())


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def face_tiles(n: int, cols: int = 4) -> Image.Image:
    """n copies of the astronaut's head (with some margin) in a grid."""
    head = astronaut().crop((135, 25, 315, 205))  # 180 x 180 around FACE
    rows = -(-n // cols)
    canvas = Image.new("RGB", (cols * 180, rows * 180), (128, 128, 128))
    for i in range(n):
        canvas.paste(head, ((i % cols) * 180, (i // cols) * 180))
    return canvas


def noise(width: int = 400, height: int = 300, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


FER2013_CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def tiny_checkpoint(path, dataset: str = "folders", model: str = "resnet", width: int = 4, seed: int = 0,
                    channels: int = 1, image_size: int = 48, classes=FER2013_CLASSES, valence_arousal: bool = False):
    """An untrained checkpoint in the training engine's own format (create_model + save_checkpoint)."""
    import torch

    from fer_utils.engine.models import create_model
    from fer_utils.config.params import DEFAULTS
    from fer_utils.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(seed)
    net = create_model(model, len(classes), channels, image_size, width=width, valence_arousal=valence_arousal)
    params = dict(DEFAULTS, dataset=dataset, model=model, width=width, run_name="tiny", epochs=1, channels=channels,
                  image_size=image_size)
    history = dict(epoch=[1], train_loss=[1.9], train_accuracy=[0.2], val_loss=[1.9], val_accuracy=[0.2],
                   val_balanced_accuracy=[0.15], val_macro_f1=[0.1], lr=[0.0], epoch_time_s=[1.0],
                   train_images_per_s=[100.0])
    save_checkpoint(dict(format=CHECKPOINT_FORMAT, model_config=net.config, model=net.state_dict(), params=params,
                         classes=list(classes), fingerprint="tiny", epoch=1, best_epoch=1, best_metric=0.1,
                         history=history, finished=True), path)
    return path
