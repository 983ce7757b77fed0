"""Where does the model look? Grad-CAM heat maps, with occlusion as the fallback.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of the last
convolution by the mean gradient of the class score over each map, keeps the
positive part and upsamples it to the image. The last convolution is found
generically (the last `nn.Conv2d` the model registers), so it works for the
plain CNNs, the small ResNet and torchvision's ResNet-18 alike.

Occlusion sensitivity needs no gradients and no convolution: a gray patch
slides over the face and the map is the drop in the class probability. It is
used for models without a convolution, when asked for, or for an image whose
Grad-CAM is all zero (no positive evidence at the last convolution).

Maps are (N, H, W) float arrays at the input size, each scaled to [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.runtime import unwrap_model
from ..engine.transforms import prepare_batch


def last_conv(model: nn.Module) -> nn.Conv2d | None:
    """The last nn.Conv2d in the model's registration order (None if it has none)."""
    convs = [m for m in unwrap_model(model).modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _normalise(maps: torch.Tensor) -> np.ndarray:
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    top = maps.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
    return (maps / top).clamp(0, 1).cpu().numpy()


def grad_cam(model: nn.Module, x_uint8, targets=None, device="cpu", layer: nn.Module | None = None,
             batch_size: int = 64) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] for uint8 images (N, C, H, W) and target classes (default: the
    predicted ones) at `layer` (default: the last Conv2d)."""
    model = unwrap_model(model).to(device).eval()
    layer = layer or last_conv(model)
    if layer is None:
        raise ValueError("the model has no nn.Conv2d: use occlusion()")
    x = torch.as_tensor(x_uint8)
    stored = {}

    def keep(_module, _inputs, output):
        stored["a"] = output

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
                logits = model(xb)
                t = (logits.argmax(1) if targets is None
                     else torch.as_tensor(np.asarray(targets)[start:start + batch_size], device=logits.device))
                score = logits.gather(1, t.long()[:, None]).sum()
                grads = torch.autograd.grad(score, stored["a"])[0]
                weights = grads.mean((2, 3), keepdim=True)
                cam = F.relu((weights * stored["a"]).sum(1, keepdim=True)).detach()
                cam = F.interpolate(cam, size=xb.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                out.append(cam.cpu())
    finally:
        handle.remove()
        for m in relus:
            m.inplace = True
    return _normalise(torch.cat(out)) if out else np.zeros((0, *x.shape[-2:]), np.float32)


@torch.no_grad()
def occlusion(model: nn.Module, x_uint8, targets=None, device="cpu", patch: int | None = None,
              stride: int | None = None, batch_size: int = 256) -> np.ndarray:
    """Occlusion maps (N, H, W) in [0, 1]: the drop in the target class's probability when a mid-gray patch
    (default: 1/6 of the side, stride half of it) covers each position, averaged over the patches covering
    each pixel. Occluded copies are scored `batch_size` at a time."""
    model = unwrap_model(model).to(device).eval()
    x = prepare_batch(torch.as_tensor(x_uint8).to(device), memory_format=torch.contiguous_format)
    n, _, h, w = x.shape
    patch = patch or max(2, min(h, w) // 6)
    stride = stride or max(1, patch // 2)
    base = torch.softmax(model(x).float(), 1)
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
        p = torch.softmax(model(xo).float(), 1).gather(1, t[idx][:, None])[:, 0]
        drop[start:start + len(chunk)] = (p0[idx] - p).clamp(min=0)
    heat = torch.zeros(n, h, w, device=x.device)
    cover = torch.zeros(h, w, device=x.device)
    for k, (top, left) in enumerate(positions):
        heat[:, top:top + patch, left:left + patch] += drop[k * n:(k + 1) * n][:, None, None]
        cover[top:top + patch, left:left + patch] += 1
    return _normalise(heat / cover.clamp(min=1))


def saliency(model: nn.Module, x_uint8, targets=None, device="cpu", method: str = "auto"):
    """Heat maps for a few images: returns (maps (N, H, W) in [0, 1], method used per image).

    method 'auto': Grad-CAM at the last Conv2d, occlusion for images whose Grad-CAM is all zero or for
    models without a convolution; 'gradcam' or 'occlusion' force one."""
    if method not in ("auto", "gradcam", "occlusion"):
        raise ValueError(f"method must be auto, gradcam or occlusion, not {method!r}")
    n = len(x_uint8)
    if method == "occlusion" or (method == "auto" and last_conv(model) is None):
        return occlusion(model, x_uint8, targets, device), ["occlusion"] * n
    maps = grad_cam(model, x_uint8, targets, device)
    used = ["Grad-CAM"] * n
    if method == "auto":
        empty = np.flatnonzero(maps.reshape(n, -1).max(1) <= 0)
        if len(empty):
            sub_targets = None if targets is None else np.asarray(targets)[empty]
            maps[empty] = occlusion(model, np.asarray(x_uint8)[empty], sub_targets, device)
            for i in empty:
                used[i] = "occlusion"
    return maps, used
