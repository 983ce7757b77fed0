"""A video's emotion timeline (the CSV `fer video` writes): figures, time shares, and scores against
a known truth.

- `timeline_figure`: per face id, each emotion's probability over time (smoothed: solid, raw: dotted)
  above a band coloured by the smoothed label (and the true label, when known).
- `time_shares`: the share of time each face spends in each (smoothed) emotion. Each analysed
  frame stands for the time until the next one, so a variable frame rate or `--every` is weighed
  right.
- `score_against_truth`: per-frame accuracy, flicker (label changes per second) with and without
  smoothing, and the delay smoothing adds after each true change of expression.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import emotion_colors


def _durations(times: pd.Series) -> np.ndarray:
    """Seconds each row stands for: the gap to the next row; the last row gets the median gap."""
    t = times.to_numpy(dtype=float)
    if len(t) == 0:
        return t
    gaps = np.diff(t)
    last = float(np.median(gaps)) if len(gaps) else 0.0
    return np.append(gaps, last)


def _runs(times: np.ndarray, labels: np.ndarray, durations: np.ndarray) -> list[tuple[str, float, float]]:
    """(label, start, length) of each run of equal labels."""
    out = []
    for i, label in enumerate(labels):
        if out and out[-1][0] == label:
            out[-1][2] += durations[i]
        else:
            out.append([label, times[i], durations[i]])
    return [tuple(r) for r in out]


def timeline_figure(timeline: pd.DataFrame, classes, face_id: int, truth: pd.DataFrame | None = None,
                    title: str | None = None) -> go.Figure:
    """One face's probabilities over time and its label band(s); `truth` (frame, time_s, label) adds
    a band of the true label."""
    rows = timeline[timeline["face_id"] == face_id].sort_values("time_s")
    if rows.empty:
        raise ValueError(f"face id {face_id} is not in the timeline")
    colors = emotion_colors(list(classes))
    bands = [("smoothed", rows["time_s"].to_numpy(), rows["smoothed_label"].to_numpy(), _durations(rows["time_s"]))]
    if truth is not None:
        bands.insert(0, ("true", truth["time_s"].to_numpy(), truth["label"].to_numpy(), _durations(truth["time_s"])))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22], vertical_spacing=0.04)
    for c in classes:
        fig.add_trace(go.Scatter(x=rows["time_s"], y=rows[f"smooth_{c}"], name=c, legendgroup=c, mode="lines",
                                 line=dict(color=colors[c], width=2),
                                 hovertemplate=f"{c} (smoothed) %{{y:.0%}} at %{{x:.2f}} s<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=rows["time_s"], y=rows[f"prob_{c}"], name=c, legendgroup=c, showlegend=False,
                                 mode="lines", line=dict(color=colors[c], width=1, dash="dot"), opacity=0.6,
                                 hovertemplate=f"{c} (raw) %{{y:.0%}} at %{{x:.2f}} s<extra></extra>"), 1, 1)
    for name, times, labels, durations in bands:
        for label, start, length in _runs(times, labels, durations):
            fig.add_trace(go.Bar(x=[length], base=[start], y=[name], orientation="h", marker_color=colors.get(label, "#999"),
                                 showlegend=False, legendgroup=label, width=0.8,
                                 hovertemplate=f"{name}: {label} from {start:.2f} s for {length:.2f} s<extra></extra>"),
                          2, 1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title="probability", row=1, col=1)
    fig.update_xaxes(title="time (s)", row=2, col=1)
    fig.update_layout(title=title or f"Face #{face_id}: emotion over time (solid: smoothed, dotted: raw)",
                      barmode="overlay", height=460, margin=dict(l=60, r=10, t=50, b=40),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    return fig


def time_shares(timeline: pd.DataFrame, classes) -> pd.DataFrame:
    """Share of each face's time (rows: face id) spent in each smoothed emotion (columns), and seconds seen."""
    out = {}
    for face_id, rows in timeline.sort_values("time_s").groupby("face_id"):
        weights = pd.Series(_durations(rows["time_s"]), index=rows.index)
        total = weights.sum()
        shares = weights.groupby(rows["smoothed_label"]).sum() / total if total > 0 else weights * 0
        out[face_id] = {**{c: float(shares.get(c, 0.0)) for c in classes}, "seconds": float(total)}
    table = pd.DataFrame.from_dict(out, orient="index", columns=[*classes, "seconds"])
    table.index.name = "face_id"
    return table


def _flicker(labels: np.ndarray, seconds: float) -> float:
    changes = int((labels[1:] != labels[:-1]).sum()) if len(labels) > 1 else 0
    return changes / seconds if seconds > 0 else 0.0


def _delays(times: np.ndarray, predicted: np.ndarray, changes: list[tuple[float, str, float]]) -> list[float]:
    """Seconds from each true change (time, new label, end of that segment) until the prediction first
    equals the new label within that segment; NaN when it never does."""
    out = []
    for start, label, end in changes:
        hit = np.flatnonzero((times >= start) & (times < end) & (predicted == label))
        out.append(float(times[hit[0]] - start) if len(hit) else float("nan"))
    return out


def score_against_truth(timeline: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How the timeline of a one-face clip compares with its true labels.

    Per frame, the largest face found is the clip's face; frames without one count as wrong. Returns:
    frames, found (share of frames with a face), accuracy / smoothed_accuracy (share of all frames),
    flicker_raw / flicker_smoothed / flicker_true (label changes per second), the true changes, and
    delay_raw_s / delay_smoothed_s (median seconds to follow a true change, over the changes both
    followed), delay_added_s (their difference) and followed_raw / followed_smoothed (changes followed
    at all)."""
    truth = truth.sort_values("frame")
    face = (timeline.assign(area=timeline["w"] * timeline["h"]).sort_values("area", ascending=False)
            .drop_duplicates("frame").set_index("frame"))
    merged = truth.set_index("frame").join(face[["label", "smoothed_label"]].rename(columns={"label": "raw"}))
    seen = merged.dropna(subset=["raw"])
    t = truth["time_s"].to_numpy(dtype=float)
    seconds = float(t[-1] - t[0] + np.median(np.diff(t))) if len(t) > 1 else 0.0
    true_labels = merged["label"].to_numpy()
    change_at = np.flatnonzero(true_labels[1:] != true_labels[:-1]) + 1
    ends = list(t[change_at[1:]]) + [t[-1] + 1e-9] if len(change_at) else []
    changes = [(t[i], true_labels[i], end) for i, end in zip(change_at, ends)]
    times = seen.index.map(dict(zip(truth["frame"], truth["time_s"]))).to_numpy(dtype=float)
    raw = _delays(times, seen["raw"].to_numpy(), changes)
    smooth = _delays(times, seen["smoothed_label"].to_numpy(), changes)
    both = [(r, s) for r, s in zip(raw, smooth) if not (np.isnan(r) or np.isnan(s))]
    delay_raw = float(np.median([r for r, _ in both])) if both else float("nan")
    delay_smooth = float(np.median([s for _, s in both])) if both else float("nan")
    return dict(
        frames=len(merged), found=len(seen) / len(merged) if len(merged) else 0.0,
        accuracy=float((merged["raw"] == merged["label"]).mean()),
        smoothed_accuracy=float((merged["smoothed_label"] == merged["label"]).mean()),
        flicker_raw=_flicker(seen["raw"].to_numpy(), seconds),
        flicker_smoothed=_flicker(seen["smoothed_label"].to_numpy(), seconds),
        flicker_true=_flicker(true_labels, seconds), changes=len(changes),
        followed_raw=int(np.sum(~np.isnan(raw))), followed_smoothed=int(np.sum(~np.isnan(smooth))),
        delay_raw_s=delay_raw, delay_smoothed_s=delay_smooth, delay_added_s=delay_smooth - delay_raw,
        seconds=seconds)
