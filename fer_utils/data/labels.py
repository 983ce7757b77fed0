"""The canonical emotion label set and the name mapping every reader goes through.

AffectNet's ids are canonical. Other datasets map onto them *by name* (with the
usual synonyms), never by position, and a dataset keeps its own, possibly
shorter, class list: FER2013 has no contempt, so its models have 7 outputs.
"""
from __future__ import annotations

import numpy as np

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



# FER+ label rules (Barsoum et al. 2016, "Training deep networks for facial expression recognition with
# crowd-sourced label distribution"; microsoft/FERPlus `_process_data`).
FERPLUS_RULES = ("majority", "plurality")
FERPLUS_NO_MAJORITY = "no FER+ majority (top vote not above half once single votes are dropped)"


def ferplus_winner(votes, columns: list[str], n_emotions: int, rule: str) -> tuple[int, str | None]:
    """One face's FER+ label under `rule`, from its crowd votes: (winning column, None) or (-1, reason).

    votes: counts per column; the first `n_emotions` columns are emotions, the rest non-emotions
    (unknown, not-a-face), named in `columns` for the reasons.
    "majority" (the FER+ paper's rule): votes of 1 are dropped as outliers, then the top column must hold
    more than half of the remaining votes (so a tie never wins).
    "plurality": the arg-max of the raw votes; a tied top is dropped.
    Either way a non-emotion winner is dropped. The reasons name the rule, so `Dataset.skipped` says
    which rule dropped a face.
    """
    if rule not in FERPLUS_RULES:
        raise ValueError(f"FER+ rule must be one of {FERPLUS_RULES}, got {rule!r}")
    row = np.asarray(votes, dtype=np.float64)
    if row.sum() <= 0:
        return -1, "no votes"
    if rule == "majority":
        row = np.where(row <= 1, 0.0, row)
        top = int(row.argmax())
        if row[top] <= 0.5 * row.sum():  # also all-single votes: nothing left (0 <= 0)
            return -1, FERPLUS_NO_MAJORITY
    else:
        top = int(row.argmax())
        if (row == row[top]).sum() > 1:
            return -1, "tied plurality vote"
    if top >= n_emotions:
        return -1, f"{rule} vote is not an emotion: {columns[top]}"
    return top, None
