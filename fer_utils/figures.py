"""Plotly figures for the book. Each takes plain tables/arrays and returns a figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def class_bars(counts: pd.DataFrame) -> go.Figure:
    """Class shares per split as grouped bars; hover shows the count."""
    shares = counts / counts.sum()
    long = (shares.reset_index(names="emotion").melt(id_vars="emotion", var_name="split", value_name="share")
            .merge(counts.reset_index(names="emotion").melt(id_vars="emotion", var_name="split",
                                                             value_name="images")))
    fig = px.bar(long, x="emotion", y="share", color="split", barmode="group", hover_data=["images"],
                 labels=dict(share="share of split", emotion=""), title="Class shares per split")
    fig.update_yaxes(tickformat=".0%")
    return fig


def face_grid(faces: dict[str, list[np.ndarray]], size: int) -> go.Figure:
    """One row of sample faces per class, as a single image with the class names on the y axis."""
    per_row = max((len(v) for v in faces.values()), default=0)
    if per_row == 0:
        raise ValueError("face_grid: no faces to show")
    rgb = any(f.ndim == 3 for v in faces.values() for f in v)
    canvas = np.full((len(faces) * size, per_row * size, 3), 255, np.uint8)
    for r, row in enumerate(faces.values()):
        for c, face in enumerate(row):
            canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = face[..., None] if face.ndim == 2 else face
    fig = px.imshow(canvas if rgb else canvas[..., 0], binary_string=True,
                    color_continuous_scale=None if rgb else "gray")
    fig.update_yaxes(tickvals=[(i + 0.5) * size for i in range(len(faces))], ticktext=list(faces),
                     showgrid=False)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    fig.update_layout(title="Sample faces per class", height=max(300, 70 * len(faces)),
                      margin=dict(l=80, r=10, t=40, b=10))
    return fig


def valence_arousal(frame: pd.DataFrame, classes, limit: int = 4000, seed: int = 0) -> go.Figure:
    """Valence-arousal scatter coloured by class (a random subset when large)."""
    data = frame.dropna(subset=["valence", "arousal"])
    data = data.sample(min(limit, len(data)), random_state=seed)
    fig = px.scatter(data, x="valence", y="arousal", color="emotion", category_orders=dict(emotion=list(classes)),
                     opacity=0.6, render_mode="svg", hover_data=["location", "split"],
                     title=f"Valence and arousal by class ({len(data):,} images)")
    fig.update_xaxes(range=[-1.05, 1.05], zeroline=True)
    fig.update_yaxes(range=[-1.05, 1.05], zeroline=True, scaleanchor="x")
    return fig
