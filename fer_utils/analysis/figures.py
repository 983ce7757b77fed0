"""Plotly figures for the book. Each takes plain tables/arrays and returns a figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ..data.labels import EMOTIONS


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


def training_curves(history: pd.DataFrame, best_epoch: int, train_loss: str = "the training objective") -> go.Figure:
    """Three panels per epoch: train loss, val loss, and scores (train accuracy, val scores), with the best
    epoch (by val macro-F1) marked. The two losses get panels and axes of their own: the train loss is
    what training minimised (`train_loss` names it: class weights, label smoothing or an L1 term make it
    another quantity than the val loss, plain cross-entropy on unaugmented images), so one axis would
    invite a comparison the numbers do not support."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=(f"Train loss: {train_loss}",
                                                        "Val loss: plain cross-entropy",
                                                        "Val scores and train accuracy"))
    e = history["epoch"]
    fig.add_scatter(x=e, y=history["train_loss"], name="train loss", mode="lines+markers", line=dict(dash="dot"),
                    row=1, col=1)
    fig.add_scatter(x=e, y=history["val_loss"], name="val loss", mode="lines+markers", row=1, col=2)
    for name, col, dash in (("train accuracy", "train_accuracy", "dot"), ("val accuracy", "val_accuracy", None),
                            ("val balanced accuracy", "val_balanced_accuracy", None),
                            ("val macro-F1", "val_macro_f1", None)):
        fig.add_scatter(x=e, y=history[col], name=name, mode="lines+markers", line=dict(dash=dash), row=1, col=3)
    for col in (1, 2, 3):
        fig.add_vline(x=best_epoch, line=dict(color="gray", dash="dash"), row=1, col=col)
    fig.add_annotation(x=best_epoch, y=1.0, yref="y3 domain", xref="x3", text=f"best epoch {best_epoch}",
                       showarrow=False, yanchor="bottom")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(tickformat=".0%", row=1, col=3)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=420, legend=dict(orientation="h", y=-0.25))
    return fig


def train_val_gap(history: pd.DataFrame) -> go.Figure:
    """Train minus val accuracy per epoch: a growing gap is overfitting."""
    gap = history["train_accuracy"] - history["val_accuracy"]
    fig = px.bar(x=history["epoch"], y=gap, labels=dict(x="epoch", y="train − val accuracy"),
                 title="Train-validation accuracy gap")
    fig.update_yaxes(tickformat=".0%")
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


# -- evaluation and error analysis --------------------------------------------

def emotion_colors(names) -> dict[str, str]:
    """One fixed colour per emotion (AffectNet id order), so a class looks the same in every figure."""
    palette = px.colors.qualitative.Plotly
    order = list(EMOTIONS) + [n for n in names if n not in EMOTIONS]
    return {n: palette[order.index(n) % len(palette)] for n in names}


def confusion_matrices(cm: pd.DataFrame, title: str = "Confusion matrix") -> go.Figure:
    """Two panels: counts (left) and row-normalised shares = recall on the diagonal (right).
    `cm`: rows true class, columns predicted class (evaluate.confusion; cross_dataset.confusion_frame has
    fewer rows than columns). A class with no images shows an empty row on the right, said so in the hover."""
    from plotly.subplots import make_subplots

    classes, predicted = [str(c) for c in cm.index], [str(c) for c in cm.columns]
    counts = cm.to_numpy()
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    share_text = np.where(np.isnan(shares), "", np.vectorize(lambda v: f"{v:.0%}")(np.nan_to_num(shares)))
    hover_share = np.where(np.isnan(shares), "no images of this class",
                           np.vectorize(lambda v: f"{v:.1%} of the true class")(np.nan_to_num(shares)))
    custom = np.dstack([np.broadcast_to(totals, counts.shape), hover_share])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("Counts", "Share of each true class (row-normalised: diagonal = recall)"))
    hover = ("true <b>%{y}</b>, predicted <b>%{x}</b><br>%{z:,} images (%{customdata[1]})"
             "<br>%{customdata[0]:,} images of this true class<extra></extra>")
    fig.add_trace(go.Heatmap(z=counts, x=predicted, y=classes, colorscale="Blues", showscale=False,
                             text=counts.astype(str), texttemplate="%{text}", customdata=custom,
                             hovertemplate=hover), row=1, col=1)
    fig.add_trace(go.Heatmap(z=shares, x=predicted, y=classes, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                             text=share_text, texttemplate="%{text}", customdata=custom,
                             hovertemplate=hover.replace("%{z:,} images", "%{z:.1%}")), row=1, col=2)
    fig.update_yaxes(autorange="reversed", title_text="true class", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="predicted class", tickangle=-45)
    fig.update_layout(title=title, height=200 + 45 * len(classes), margin=dict(t=90))
    return fig


def confusion_bars(cm: pd.DataFrame, title: str = "What each true class was predicted as") -> go.Figure:
    """Stacked bars: one bar per true class, split by the predicted class (counts; hover adds the share)."""
    long = cm.rename_axis(index="true", columns="predicted").stack().rename("images").reset_index()
    totals = long.groupby("true")["images"].transform("sum")
    long["share"] = np.where(totals > 0, long["images"] / totals.where(totals > 0, 1), 0.0)
    long = long[long["images"] > 0]
    classes = [str(c) for c in cm.index]
    fig = px.bar(long, x="true", y="images", color="predicted", barmode="stack",
                 category_orders=dict(true=classes, predicted=[str(c) for c in cm.columns]),
                 color_discrete_map=emotion_colors(classes), hover_data=dict(share=":.1%"),
                 labels=dict(true="true class", images="images", predicted="predicted as"), title=title)
    fig.update_layout(legend=dict(title="predicted as"))
    return fig


def per_class_bars(table: pd.DataFrame, title: str = "Precision, recall and F1 per class") -> go.Figure:
    """Grouped precision/recall/F1 bars per class (evaluate.per_class_table); hover: support, predicted count
    and a note where a value is undefined."""
    long = table.melt(id_vars=["emotion", "support", "predicted", "note"], value_vars=["precision", "recall", "f1"],
                      var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(dict(precision="precision", recall="recall", f1="F1"))
    fig = px.bar(long, x="emotion", y="value", color="metric", barmode="group",
                 hover_data=dict(support=":,", predicted=":,", note=True),
                 labels=dict(emotion="", value="score", support="images of the class",
                             predicted="images predicted as the class"), title=title)
    fig.update_yaxes(range=[0, 1.02])
    return fig


def reliability_diagram(curves: dict[str, pd.DataFrame], title: str = "Reliability diagram") -> go.Figure:
    """Accuracy per confidence bin (calibration.reliability tables, one bar series per entry, e.g. before and
    after temperature scaling) against the diagonal of perfect calibration; hover: images, mean confidence."""
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line=dict(color="gray", dash="dash"))
    for name, table in curves.items():
        used = table[table["count"] > 0]
        fig.add_bar(x=(used["lower"] + used["upper"]) / 2, y=used["accuracy"], name=name,
                    customdata=np.stack([used["count"], used["confidence"], used["lower"], used["upper"]], 1),
                    hovertemplate=("confidence %{customdata[2]:.0%}–%{customdata[3]:.0%}: %{customdata[0]:,} images"
                                   "<br>mean confidence %{customdata[1]:.1%}<br>accuracy %{y:.1%}"
                                   f"<extra>{name}</extra>"))
    width = float((curves[next(iter(curves))]["upper"] - curves[next(iter(curves))]["lower"]).iloc[0]) if curves \
        else 0.1
    fig.update_layout(barmode="group", bargap=0.05, title=title, legend=dict(orientation="h", y=-0.2), height=480)
    fig.update_xaxes(title_text="confidence (top class probability)", range=[0, 1], tickformat=".0%",
                     dtick=max(width, 0.1))
    fig.update_yaxes(title_text="accuracy", range=[0, 1], tickformat=".0%")
    return fig


def confidence_buckets(table: pd.DataFrame, title: str = "Accuracy by confidence") -> go.Figure:
    """Accuracy per confidence bucket (calibration.accuracy_by_confidence) with the bucket's mean confidence
    as a line; hover: images and their share."""
    fig = go.Figure()
    fig.add_bar(x=table["bucket"], y=table["accuracy"], name="accuracy",
                customdata=np.stack([table["count"], table["share"]], 1),
                hovertemplate="confidence %{x}: %{customdata[0]:,} images (%{customdata[1]:.1%})"
                              "<br>accuracy %{y:.1%}<extra></extra>")
    fig.add_scatter(x=table["bucket"], y=table["confidence"], name="mean confidence", mode="lines+markers",
                    hovertemplate="mean confidence %{y:.1%}<extra></extra>")
    fig.update_layout(title=title, height=420, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="model confidence (top class probability)")
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickformat=".0%")
    return fig


def _tile(face: np.ndarray, tile: int | None = None) -> np.ndarray:
    """Any face array (H x W, H x W x C or C x H x W) -> tile x tile x 3 uint8 (tile None: keep its size)."""
    import cv2

    face = np.asarray(face)
    if face.ndim == 3 and face.shape[0] in (1, 3) and face.shape[-1] not in (1, 3):
        face = face.transpose(1, 2, 0)  # C x H x W -> H x W x C
    if face.ndim == 3 and face.shape[-1] == 1:
        face = face[..., 0]
    if tile is not None and face.shape[:2] != (tile, tile):
        shrink = face.shape[0] > tile
        face = cv2.resize(face, (tile, tile), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.repeat(face[..., None], 3, 2) if face.ndim == 2 else face


def face_gallery(faces: list[np.ndarray], captions: list[str], title: str, per_row: int = 6, tile: int = 96,
                 caption_lines: int = 2) -> go.Figure:
    """Faces (grayscale H x W, RGB H x W x 3 or C x H x W uint8) in a grid, each with a caption above it
    (lines separated by <br>, e.g. true / predicted / confidence)."""
    if len(faces) == 0:
        raise ValueError("face_gallery: no faces to show")
    if len(captions) != len(faces):
        raise ValueError(f"face_gallery: {len(faces)} faces but {len(captions)} captions")
    per_row = min(per_row, len(faces))
    band, gap = 8 + 13 * caption_lines, 4
    rows = -(-len(faces) // per_row)
    cell_w, cell_h = tile + gap, tile + band
    canvas = np.full((rows * cell_h, per_row * cell_w - gap, 3), 255, np.uint8)
    for i, face in enumerate(faces):
        r, c = divmod(i, per_row)
        top, left = r * cell_h + band, c * cell_w
        canvas[top:top + tile, left:left + tile] = _tile(face, tile)
    fig = px.imshow(canvas, binary_string=True)
    for i, caption in enumerate(captions):
        r, c = divmod(i, per_row)
        fig.add_annotation(x=c * cell_w + tile / 2, y=r * cell_h + band - 2, text=caption, showarrow=False,
                           yanchor="bottom", font=dict(size=10), xref="x", yref="y")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=rows * cell_h + 70, width=max(per_row * cell_w + 40, 360),
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_traces(hoverinfo="skip", hovertemplate=None)
    return fig


def heat_overlay(face: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB uint8 image: the face in gray with a heat map (values in [0, 1]) blended over it, more opaque
    where the map is high (Inferno colours)."""
    import cv2
    from plotly.colors import sample_colorscale, unlabel_rgb

    face = _tile(face)
    gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32)
    heat = cv2.resize(np.asarray(heat, np.float32), gray.shape[::-1], interpolation=cv2.INTER_LINEAR)
    heat = np.clip(np.nan_to_num(heat), 0, 1)
    lut = np.array([unlabel_rgb(c) for c in sample_colorscale(px.colors.sequential.Inferno,
                                                              list(np.linspace(0, 1, 256)))], np.float32)
    colour = lut[(heat * 255).astype(np.int64)]
    a = (alpha * heat)[..., None]
    return np.clip(gray[..., None] * (1 - a) + colour * a, 0, 255).astype(np.uint8)


def saliency_gallery(faces: list[np.ndarray], maps: np.ndarray, captions: list[str], methods: list[str],
                     title: str = "Where the model looked", pairs_per_row: int = 3) -> go.Figure:
    """Each face next to its heat map overlay (Grad-CAM or occlusion, named in the caption)."""
    tiles, texts = [], []
    for face, heat, caption, method in zip(faces, maps, captions, methods):
        tiles += [face, heat_overlay(face, heat)]
        texts += [caption, f"{method}<br>(bright = evidence)"]
    lines = max(t.count("<br>") + 1 for t in texts)
    return face_gallery(tiles, texts, title, per_row=2 * pairs_per_row, caption_lines=lines)


def errors_valence_arousal(frame: pd.DataFrame, classes, title: str | None = None) -> go.Figure:
    """Correct answers (gray) and mistakes (coloured by true class) in valence-arousal space. `frame`: a
    predictions frame with valence and arousal columns."""
    data = frame.dropna(subset=["valence", "arousal"])
    wrong = data[data["true"] != data["predicted"]]
    right = data[data["true"] == data["predicted"]]
    fig = go.Figure()
    fig.add_scatter(x=right["valence"], y=right["arousal"], mode="markers", name=f"correct ({len(right):,})",
                      marker=dict(color="lightgray", size=5), text=right["true"],
                      hovertemplate="correct: %{text}<br>valence %{x:.2f}, arousal %{y:.2f}<extra></extra>")
    colors = emotion_colors(list(classes))
    for c in classes:
        sub = wrong[wrong["true"] == c]
        if len(sub):
            fig.add_scatter(
                x=sub["valence"], y=sub["arousal"], mode="markers", name=f"{c} mistaken ({len(sub):,})",
                marker=dict(color=colors[c], size=8, symbol="x"),
                customdata=np.stack([sub["predicted"], sub["confidence"], sub["location"]], 1),
                hovertemplate=(f"true <b>{c}</b>, predicted <b>%{{customdata[0]}}</b> "
                               "(%{customdata[1]:.0%})<br>valence %{x:.2f}, arousal %{y:.2f}"
                               "<br>%{customdata[2]}<extra></extra>"))
    fig.update_xaxes(title_text="valence (unpleasant → pleasant)", range=[-1.05, 1.05], zeroline=True)
    fig.update_yaxes(title_text="arousal (calm → excited)", range=[-1.05, 1.05], zeroline=True, scaleanchor="x")
    fig.update_layout(title=title or f"Mistakes in valence-arousal space ({len(wrong):,} of {len(data):,} images)",
                      height=560)
    return fig


def compare_confusions(cms: dict[str, pd.DataFrame], title: str = "Confusion matrices compared") -> go.Figure:
    """Several runs' row-normalised confusion matrices side by side (same colour scale; diagonal = recall)."""
    from plotly.subplots import make_subplots

    names = list(cms)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.04)
    for i, name in enumerate(names, 1):
        cm = cms[name]
        counts = cm.to_numpy()
        totals = counts.sum(1, keepdims=True)
        shares = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
        classes = [str(c) for c in cm.index]
        fig.add_trace(go.Heatmap(z=shares, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                                 showscale=i == len(names), customdata=counts, texttemplate="%{z:.0%}",
                                 hovertemplate=(f"{name}<br>true <b>%{{y}}</b>, predicted <b>%{{x}}</b>"
                                                "<br>%{z:.1%} (%{customdata:,} images)<extra></extra>")),
                      row=1, col=i)
        fig.update_yaxes(autorange="reversed", showticklabels=i == 1, row=1, col=i)
    fig.update_xaxes(tickangle=-45)
    fig.update_yaxes(title_text="true class", row=1, col=1)
    fig.update_layout(title=title, height=260 + 30 * len(cms[names[0]]) if names else 400)
    return fig


def compare_f1(tables: dict[str, pd.DataFrame], metric: str = "f1",
               title: str = "F1 per class, runs compared") -> go.Figure:
    """Grouped bars of one per-class metric (evaluate.per_class_table column) per run; hover: support."""
    long = pd.concat([t.assign(run=name) for name, t in tables.items()], ignore_index=True)
    fig = px.bar(long, x="emotion", y=metric, color="run", barmode="group", hover_data=dict(support=":,"),
                 labels={"emotion": "", metric: metric.replace("f1", "F1"), "support": "images of the class"},
                 title=title)
    fig.update_yaxes(range=[0, 1.02])
    return fig


def compare_curves(histories: dict[str, pd.DataFrame], metric: str = "val_macro_f1",
                   title: str = "Validation macro-F1 per epoch") -> go.Figure:
    """One line per run (or ablation variant): a history column (engine.train.HISTORY_COLUMNS) per epoch."""
    long = pd.concat([h[["epoch", metric]].assign(run=name) for name, h in histories.items()], ignore_index=True)
    fig = px.line(long, x="epoch", y=metric, color="run", markers=True, title=title,
                  labels={metric: metric.replace("_", " ").replace("f1", "F1"), "run": ""})
    return fig


def ablation_bars(table: pd.DataFrame, title: str = "Ablation on the selection split (val)") -> go.Figure:
    """Grouped bars per variant (ablation.summary_table rows that trained): validation accuracy, balanced
    accuracy, macro-F1, F1 of the rarest classes, and the train-val gap in balanced accuracy (train scored in
    eval mode without augmentation)."""
    columns = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
               **{c: f"F1 {c[3:]} (rare)" for c in table.columns if c.startswith("f1_")},
               "gap": "train - val balanced accuracy"}
    ok = table[table["status"] == "ok"]
    long = ok.melt(id_vars=["variant"], value_vars=list(columns), var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(columns)
    fig = px.bar(long, x="metric", y="value", color="variant", barmode="group", text_auto=".0%",
                 labels=dict(metric="", value="", variant=""), title=title)
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    return fig


def protocol_bars(table: pd.DataFrame, title: str = "What each number rewards: the model against always "
                                                     "answering the majority class") -> go.Figure:
    """Accuracy, balanced accuracy and macro-F1 of the model and of the majority-class guess, per split
    (evaluate.summary_table). On an imbalanced split the guess's accuracy is high and its balanced accuracy is
    1/K: the gap between the two bars is what imbalance adds to accuracy."""
    long = table.melt(id_vars=["split", "predictor"], value_vars=["accuracy", "balanced_accuracy", "macro_f1"],
                      var_name="metric", value_name="value")
    long["metric"] = long["metric"].map(dict(accuracy="accuracy", balanced_accuracy="balanced accuracy",
                                             macro_f1="macro-F1"))
    long["predictor"] = np.where(long["predictor"] == "model", "model", "majority guess: " + long["predictor"])
    fig = px.bar(long, x="metric", y="value", color="predictor", barmode="group", facet_col="split",
                 text_auto=".1%", labels=dict(metric="", value="", predictor=""), title=title)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    fig.for_each_annotation(lambda a: a.update(text=a.text.replace("split=", "split: ")))
    fig.update_layout(legend=dict(orientation="h", y=-0.2), height=430)
    return fig


# -- the image-upload demo ------------------------------------------------------

def _image_trace(image: np.ndarray, max_side: int = 900, scale_to: tuple[int, int] | None = None) -> go.Image:
    """An RGB (or gray) uint8 array as a go.Image embedded as JPEG/PNG, downscaled to at most `max_side`
    pixels but placed in the original pixel coordinates (boxes can be drawn in photo pixels)."""
    import base64
    import io

    from PIL import Image

    im = Image.fromarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    width, height = scale_to or im.size
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    small = min(im.size) < 128  # tiny images (a 48 px face crop): lossless
    buf = io.BytesIO()
    im.save(buf, "PNG" if small else "JPEG", **({} if small else dict(quality=85)))
    uri = f"data:image/{'png' if small else 'jpeg'};base64," + base64.b64encode(buf.getvalue()).decode()
    dx, dy = width / im.width, height / im.height
    return go.Image(source=uri, x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip")


def photo_faces(image: np.ndarray, boxes: list, labels: list[str], title: str = "") -> go.Figure:
    """The photo with a numbered box per face ((x, y, w, h) in photo pixels) and its label."""
    height, width = image.shape[:2]
    colors = emotion_colors(sorted({lab.split(" ")[0] for lab in labels}))
    fig = go.Figure(_image_trace(image))
    for i, ((x, y, w, h), label) in enumerate(zip(boxes, labels), 1):
        color = colors.get(label.split(" ")[0], "#ffcc00")
        fig.add_shape(type="rect", x0=x, y0=y, x1=x + w, y1=y + h, line=dict(color=color, width=3))
        fig.add_annotation(x=x, y=y, text=f"<b>{i}</b> {label}", showarrow=False, xanchor="left", yanchor="bottom",
                           font=dict(color="white", size=13), bgcolor=color, borderpad=2)
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    fig.update_layout(title=title or None, margin=dict(l=0, r=0, t=40 if title else 10, b=0),
                      height=min(600, max(300, 600 * height / max(width, 1))), dragmode=False)
    return fig


def face_probabilities(crop: np.ndarray, probabilities: dict[str, float], title: str) -> go.Figure:
    """One face: the crop the model saw (left) and its class probabilities (right), the top one marked."""
    from plotly.subplots import make_subplots

    names, values = list(probabilities), list(probabilities.values())
    top = names[int(np.argmax(values))]
    colors = emotion_colors(names)
    face = crop[0] if crop.shape[0] == 1 else crop.transpose(1, 2, 0)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.28, 0.72], horizontal_spacing=0.08,
                        subplot_titles=("what the model sees", "probability"))
    fig.add_trace(_image_trace(face), row=1, col=1)
    fig.add_bar(x=values, y=names, orientation="h", row=1, col=2, text=[f"{v:.0%}" for v in values],
                textposition="outside", cliponaxis=False, hovertemplate="%{y}: %{x:.1%}<extra></extra>",
                marker=dict(color=[colors[n] for n in names],
                            line=dict(color=["black" if n == top else "rgba(0,0,0,0)" for n in names], width=2)),
                showlegend=False)
    side = face.shape[0]
    fig.update_xaxes(visible=False, range=[0, side], row=1, col=1)
    fig.update_yaxes(visible=False, range=[side, 0], scaleanchor="x", row=1, col=1)
    fig.update_xaxes(range=[0, 1.15], tickformat=".0%", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=60, b=30), dragmode=False)
    return fig
