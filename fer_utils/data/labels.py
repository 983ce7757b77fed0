"""The canonical emotion label set and the name mapping every reader goes through.

AffectNet's ids are canonical. Other datasets map onto them *by name* (with the
usual synonyms), never by position, and a dataset keeps its own, possibly
shorter, class list: FER2013 has no contempt, so its models have 7 outputs.
"""
from __future__ import annotations

# AffectNet expression ids 0..7, in id order.
EMOTIONS: tuple[str, ...] = (
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
)
# AffectNet ids that are not emotions: dropped by readers and counted.
NON_EMOTIONS: dict[int, str] = {8: "none", 9: "uncertain", 10: "no-face"}

# FER2013's `emotion` column, by id.
FER2013_IDS: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_SYNONYMS = {
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
}


def canonical(name: str) -> str | None:
    """The canonical emotion for a class/column name (case-insensitive), or None."""
    return _SYNONYMS.get(str(name).strip().lower().replace("-", "").replace("_", ""))


def class_list(names) -> tuple[str, ...]:
    """A dataset's own classes: the canonical names present, in AffectNet id order."""
    present = {canonical(n) for n in names} - {None}
    return tuple(e for e in EMOTIONS if e in present)


def affectnet_name(label_id: int) -> str | None:
    """AffectNet id -> emotion name; None for non-emotions and unknown ids."""
    return EMOTIONS[label_id] if 0 <= label_id < len(EMOTIONS) else None
