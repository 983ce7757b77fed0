"""Where does the model look? Grad-CAM heat maps, occlusion as the fallback, and how much of each map
falls on the mouth and on the eyes.

Grad-CAM (Selvaraju et al., 2017) weights the channels of a feature map by the
mean gradient of the class score over each channel, keeps the positive part and
upsamples it to the image. The feature map (`feature_layer`) is the last one
that everything the logits see passes through: the small ResNet's (or
pool_resnet's) last block after its skip connection is added, torchvision
ResNet-18's layer4, the plain CNNs' last convolution. (The last Conv2d of a ResNet lies inside the residual
branch, before its batch norm and before the skip is added, so a map taken
there ignores everything the identity path carries.) With `flip`, as in flip
test-time augmentation, the score is that of the averaged logits of the face
and its mirror image, and the two views' maps are combined, the mirror's
mirrored back.

Occlusion sensitivity needs no gradients and no convolution: a gray patch
slides over the face and the map is the drop in the class probability. It is
used for models without a convolution, when asked for, or for an image whose
Grad-CAM is all zero (no positive evidence in the feature map).

Six pictures prove little: `region_shares` measures, from the 68 iBUG landmarks
(the synthetic faces have them; so does AffectNet), the share of each map's
mass on the mouth and on the eyes, and `region_summary` averages it per class,
beside the share of the image those regions cover (what a uniform map gives).

Maps are (N, H, W) float arrays at the input size, each scaled to [0, 1].
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from ..engine.models import GlobalPoolClassifier
from ..engine.runtime import unwrap_model
from ..engine.transforms import prepare_batch


def feature_layer(model: nn.Module) -> nn.Module | None:
    """The module whose output Grad-CAM weighs: the last one that everything the logits see passes
    through. In a ResNet that is the last block (its output is after the skip is added): the small
    ResNet's last BasicBlock, pool_resnet's last ResidualPair, torchvision ResNet's layer4. In the plain
    CNNs it is their last Conv2d (batch norm, ReLU, max-pool and the dense head follow it, nothing
    bypasses it); their conv stage output after the max-pool would do too, but its maps were empty
    (no positive evidence) for 457 of the 800 synthetic val faces with the default model (flip TTA),
    the last Conv2d's for 4: the dense head's weights change sign from cell to cell, so the
    per-channel mean gradient cancels there.
    Another model: its last Conv2d; None without one."""
    model = unwrap_model(model)
    if isinstance(model, GlobalPoolClassifier):
        return model.stages[-1][-1]
    if isinstance(model, ResNet):
        return model.layer4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _views(x: torch.Tensor, flip: bool) -> list[torch.Tensor]:
    """The batch, and with `flip` its mirror image: the views flip test-time augmentation averages."""
    return [x, x.flip(-1)] if flip else [x]


def _normalise(maps: torch.Tensor) -> np.ndarray:
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    top = maps.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
    return (maps / top).clamp(0, 1).cpu().numpy()


def grad_cam(model: nn.Module, x_uint8, targets=None, device="cpu", layer: nn.Module | None = None,
             batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for uint8 images (N, C, H, W) and target classes (default: the
    predicted ones) at `layer` (default: `feature_layer`).

    flip=True explains the flip test-time-augmented prediction: the score is the target's average logit
    over the face and its mirror image (so the default targets are the TTA answers), each view's
    weighted feature map is computed, the mirror's is mirrored back, and the two are added before the
    ReLU: the map of the evidence for the score the model actually gave."""
    model = unwrap_model(model).to(device).eval()
    layer = layer or feature_layer(model)
    if layer is None:
        raise ValueError("the model has no nn.Conv2d: use occlusion()")
    x = torch.as_tensor(x_uint8)
    stored = []

    def keep(_module, _inputs, output):
        stored.append(output)

    # In-place ReLUs after the hooked layer would overwrite the stored activation: switch them off.
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in relus:
        m.inplace = False
    handle = layer.register_forward_hook(keep)
    out = []
    try:
        with torch.enable_grad():
            for start in range(0, len(x), batch_size):
                xb = prepare_batch(x[start:start + batch_size].to(device), memory_format=torch.contiguous_format)
                stored.clear()
                views = _views(xb, flip)
                logits = sum(model(v) for v in views) / len(views)
                t = (logits.argmax(1) if targets is None
                     else torch.as_tensor(np.asarray(targets)[start:start + batch_size], device=logits.device))
                score = logits.gather(1, t.long()[:, None]).sum()
                grads = torch.autograd.grad(score, stored)
                cams = [(g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True) for g, a in zip(grads, stored)]
                cam = F.relu(cams[0] + cams[1].flip(-1) if flip else cams[0]).detach()
                cam = F.interpolate(cam, size=xb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                out.append(cam.cpu())
    finally:
        handle.remove()
        for m in relus:
            m.inplace = True
    return _normalise(torch.cat(out)) if out else np.zeros((0, *x.shape[-2:]), np.float32)


@torch.no_grad()
def occlusion(model: nn.Module, x_uint8, targets=None, device="cpu", patch: int | None = None,
              stride: int | None = None, batch_size: int = 256, flip: bool = False) -> np.ndarray:
    """Occlusion maps (N, H, W) in [0, 1]: the drop in the target class's probability when a mid-gray patch
    (default: 1/6 of the side, stride half of it) covers each position, averaged over the patches covering
    each pixel. Occluded copies are scored `batch_size` at a time. flip=True scores with flip TTA (the
    softmax of the logits averaged over each copy and its mirror image)."""
    model = unwrap_model(model).to(device).eval()
    x = prepare_batch(torch.as_tensor(x_uint8).to(device), memory_format=torch.contiguous_format)
    n, _, h, w = x.shape
    patch = patch or max(2, min(h, w) // 6)
    stride = stride or max(1, patch // 2)

    def probs(xs):
        views = _views(xs, flip)
        return torch.softmax(sum(model(v).float() for v in views) / len(views), 1)

    base = probs(x)
    t = base.argmax(1) if targets is None else torch.as_tensor(np.asarray(targets), device=x.device).long()
    p0 = base.gather(1, t[:, None])[:, 0]
    tops = sorted(set(range(0, h - patch + 1, stride)) | {h - patch})
    lefts = sorted(set(range(0, w - patch + 1, stride)) | {w - patch})
    positions = [(top, left) for top in tops for left in lefts]
    # Every (position, image) pair is one occluded copy: score them in large batches.
    pairs = [(k, i) for k in range(len(positions)) for i in range(n)]
    drop = torch.empty(len(pairs), device=x.device)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        xo = x[[i for _, i in chunk]].clone()
        for j, (k, _) in enumerate(chunk):
            top, left = positions[k]
            xo[j, :, top:top + patch, left:left + patch] = 0.0  # 0 = mid-gray after normalisation
        idx = torch.as_tensor([i for _, i in chunk], device=x.device)
        p = probs(xo).gather(1, t[idx][:, None])[:, 0]
        drop[start:start + len(chunk)] = (p0[idx] - p).clamp(min=0)
    heat = torch.zeros(n, h, w, device=x.device)
    cover = torch.zeros(h, w, device=x.device)
    for k, (top, left) in enumerate(positions):
        heat[:, top:top + patch, left:left + patch] += drop[k * n:(k + 1) * n][:, None, None]
        cover[top:top + patch, left:left + patch] += 1
    return _normalise(heat / cover.clamp(min=1))


def saliency(model: nn.Module, x_uint8, targets=None, device="cpu", method: str = "auto", flip: bool = False):
    """Heat maps for a few images: returns (maps (N, H, W) in [0, 1], method used per image).

    method 'auto': Grad-CAM at `feature_layer`, occlusion for images whose Grad-CAM is all zero or for
    models without a convolution; 'gradcam' or 'occlusion' force one. flip: explain the flip
    test-time-augmented prediction (see grad_cam)."""
    if method not in ("auto", "gradcam", "occlusion"):
        raise ValueError(f"method must be auto, gradcam or occlusion, not {method!r}")
    n = len(x_uint8)
    if method == "occlusion" or (method == "auto" and feature_layer(model) is None):
        return occlusion(model, x_uint8, targets, device, flip=flip), ["occlusion"] * n
    maps = grad_cam(model, x_uint8, targets, device, flip=flip)
    used = ["Grad-CAM"] * n
    if method == "auto":
        empty = np.flatnonzero(maps.reshape(n, -1).max(1) <= 0)
        if len(empty):
            sub_targets = None if targets is None else np.asarray(targets)[empty]
            maps[empty] = occlusion(model, np.asarray(x_uint8)[empty], sub_targets, device, flip=flip)
            for i in empty:
                used[i] = "occlusion"
    return maps, used


# -- where the maps fall: mouth and eyes, from the 68 iBUG landmarks ----------------------------------

# Landmark indices (0-based iBUG order, as the synthetic faces and AffectNet store them) of each region's
# parts: the two eye contours, and the outer lip contour (the inner one, 60-67, lies within it).
REGIONS: dict[str, tuple[range, ...]] = {"mouth": (range(48, 60),), "eyes": (range(36, 42), range(42, 48))}


def region_masks(landmarks, size: int, source_size: int | None = None, pad: float = 0.25) -> dict[str, np.ndarray]:
    """(size, size) bool masks of REGIONS for one face's (68, 2) landmarks (x, y).

    Each part is the bounding box of its landmarks grown on every side by `pad` times the distance
    between the eye centres (at 48 px an eye is ~2 px tall: its bare contour would miss the lids, and
    the maps are coarse: 3x3 cells for the small ResNet at 48 px). Landmarks in pixel-centre
    coordinates of a `source_size` image (default `size`) are rescaled as an area resize does (for a
    face-box crop, subtract the box's corner and pass its side). A pixel belongs to a
    region when its centre is inside; the eyes give way to the mouth where they would overlap, so the
    regions are disjoint."""
    lnd = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(lnd) != 68:
        raise ValueError(f"expected 68 iBUG landmarks, got {len(lnd)}")
    lnd = (lnd + 0.5) * (size / (source_size or size)) - 0.5
    margin = pad * np.linalg.norm(lnd[36:42].mean(0) - lnd[42:48].mean(0))
    centres = np.arange(size, dtype=np.float64)
    masks = {}
    for name, parts in REGIONS.items():
        mask = np.zeros((size, size), bool)
        for part in parts:
            (x0, y0), (x1, y1) = lnd[part].min(0) - margin, lnd[part].max(0) + margin
            mask |= ((centres[:, None] >= y0) & (centres[:, None] <= y1)
                     & (centres[None, :] >= x0) & (centres[None, :] <= x1))
        masks[name] = mask
    masks["eyes"] &= ~masks["mouth"]
    return masks


def region_shares(maps, landmarks, source_size: int | None = None, pad: float = 0.25) -> pd.DataFrame:
    """Per image: the share of the map's mass on the mouth, on the eyes and elsewhere ("other"; the three
    add up to 1), and the share of the image each region covers ("mouth_area", "eyes_area": what a
    uniform map would give, the baseline to compare with). `maps`: (N, H, W), square; `landmarks`: N
    arrays (68, 2) in `source_size` pixel coordinates (see region_masks). An image without landmarks
    (None) or with an all-zero map gets NaN."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be (N, H, W) with H == W, got {maps.shape}")
    if len(landmarks) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(landmarks)} landmark sets")
    rows = []
    for heat, lnd in zip(maps, landmarks):
        total = heat.sum()
        if lnd is None or not total > 0:
            rows.append(dict.fromkeys(("mouth", "eyes", "other", "mouth_area", "eyes_area"), np.nan))
            continue
        masks = region_masks(lnd, heat.shape[0], source_size, pad)
        row = {name: heat[mask].sum() / total for name, mask in masks.items()}
        row["other"] = 1.0 - sum(row.values())
        row.update({f"{name}_area": mask.mean() for name, mask in masks.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["mouth", "eyes", "other", "mouth_area", "eyes_area"])


def region_summary(shares: pd.DataFrame, labels, classes=None) -> pd.DataFrame:
    """One row per class (in `classes` order if given): images measured, and the mean of each column of
    `region_shares` over them; images with NaN shares (no landmarks, empty map) are not counted."""
    frame = shares.assign(label=np.asarray(labels)).dropna(subset=["mouth"])
    table = frame.groupby("label", sort=classes is None).mean()
    table.insert(0, "images", frame.groupby("label", sort=classes is None).size())
    if classes is not None:
        table = table.reindex([c for c in classes if c in table.index])
    table.index.name = "class"
    return table
