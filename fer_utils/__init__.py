"""Facial emotion recognition, reproducible end to end: readers, models, training, metrics, figures, pipeline.

The emotions of the faces in a photo, with the model bundled in the package:

    import fer_utils
    predictor = fer_utils.load_predictor()            # or load_predictor("runs/NAME/best.pt")
    for face in fer_utils.predict_image("photo.jpg", predictor): print(face.box, face.label)

`load_predictor` and `predict_image` are `fer_utils.app.predict`'s (see there for the options); the
`fer` command (fer_utils.cli) runs every tool. The layers, each importing only those before it:
paths, metrics, config < data < engine < analysis < app < book, and cli on top.

The two functions are imported on first use (PEP 562 module `__getattr__`): `import fer_utils` and
the torch-free layers under it (`fer_utils.config.params`, `fer_utils.paths`) must not pay for
loading torch, which takes seconds, nor need it installed.
"""
from __future__ import annotations

import importlib

# The one place the version is written: pyproject.toml reads it from here ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "load_predictor": "fer_utils.app.predict",
    "predict_image": "fer_utils.app.predict",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
